//! Signed batches (docs/PROTOCOL.md §4.6), checked with an independent tool: every batch the
//! agent sends carries its node's signature; the hub keeps it with the certificate and the
//! body; `exchange-hub prove` writes, for a record, the files and commands with which `openssl`
//! alone confirms that the node sent that record, and the commands, run as printed, do.

use std::path::Path;

use exchange_hub::config::StoreConfig;
use exchange_tests::agent::{self as agent_kit, q};
use exchange_tests::bins;
use exchange_tests::db::PgDb;
use exchange_tests::hub::Hub;
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;

const CODE: &str = "330100-RSJ-0001";

/// Runs a shell command line in `dir`; returns its standard output, failing the test on a
/// non-zero exit.
fn sh(dir: &Path, line: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "`{line}` failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prove_gives_for_a_record_the_nodes_signed_batch_and_openssl_confirms_it() {
    let scene = Scene::start().await;
    let store = format!(
        "sqlite://{}",
        scene.hub.sqlite.clone().expect("SQLite").display()
    );
    prove_and_check(&scene, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_store_keeps_the_evidence_prove_needs() {
    let mut scene = Scene::start().await;
    let db = PgDb::create().await;
    scene.hub.stop().await;
    scene.hub = Hub::start_with(scene.pki.hub_tls(), StoreConfig::postgres(&db.url).unwrap()).await;
    prove_and_check(&scene, &db.url).await;
}

/// Syncs 5 rows into the scene's hub, proves the third record with `exchange-hub prove` on
/// the hub's store at `store` (a `[store] url`), and runs the printed commands.
async fn prove_and_check(scene: &Scene, store: &str) {
    let source = SqliteSource::create(scene.dir.path(), 5);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("biz", "sqlite", &source.url())
            .resource(source.resource(CODE, "biz")),
    );
    agent.sync_ok().await;
    let rows = scene.hub.rows(CODE).await;
    let key = rows.keys().nth(2).expect("a record").clone();

    // The hub's configuration for its CLI: the store the test hub wrote.
    let pki = &scene.pki;
    let hub_toml = scene.dir.path().join("hub.toml");
    std::fs::write(
        &hub_toml,
        format!(
            "[listen]\naddr = \"127.0.0.1:1\"\nca = {}\ncert = {}\nkey = {}\n\n[store]\nurl = {}\n",
            q(&pki.ca_cert.display().to_string()),
            q(&pki.hub_cert.display().to_string()),
            q(&pki.hub_key.display().to_string()),
            q(store),
        ),
    )
    .unwrap();
    let out_dir = scene.dir.path().join("proof");
    let proof = agent_kit::run(
        &bins::hub(),
        &[
            "prove",
            "--config",
            &hub_toml.display().to_string(),
            "--resource",
            CODE,
            "--key",
            &key,
            "--out",
            &out_dir.display().to_string(),
        ],
    )
    .await;
    proof.assert_code(0);
    proof.assert_mentions(&[
        &format!("record `{key}`"),
        "batch 1",
        "rsj-node-01",
        "Verified OK",
    ]);

    // The commands as printed (after `cd`), with the platform CA in place of its placeholder.
    let commands: Vec<String> = proof
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("openssl") || l.starts_with("grep"))
        .map(|l| {
            l.split("   #")
                .next()
                .unwrap()
                .split("      #")
                .next()
                .unwrap()
                .trim()
                .to_owned()
        })
        .map(|l| l.replace("PLATFORM-CA.pem", &pki.ca_cert.display().to_string()))
        .collect();
    assert_eq!(commands.len(), 5, "{proof}");
    let message = std::fs::read_to_string(out_dir.join("message.txt")).unwrap();
    let sm3 = message.lines().last().unwrap();
    assert!(
        sh(&out_dir, &commands[0]).starts_with(sm3),
        "the batch's SM3 is the one signed"
    );
    assert_eq!(
        sh(&out_dir, &commands[1]).trim(),
        "1",
        "the record's line is in the batch"
    );
    sh(&out_dir, &commands[2]);
    assert!(sh(&out_dir, &commands[3]).contains("Verified OK"));
    assert!(sh(&out_dir, &commands[4]).contains("node.pem: OK"));
    let record = std::fs::read_to_string(out_dir.join("record.ndjson")).unwrap();
    assert!(record.contains(&format!("\"key\":\"{key}\"")), "{record}");

    // A batch changed after the fact no longer matches: openssl refuses the signature over
    // another record line's digest.
    std::fs::write(
        out_dir.join("message.txt"),
        message.replace(sm3, &"0".repeat(64)),
    )
    .unwrap();
    let forged = std::process::Command::new("sh")
        .arg("-c")
        .arg(&commands[3])
        .current_dir(&out_dir)
        .output()
        .unwrap();
    assert!(
        !forged.status.success(),
        "a changed message must not verify"
    );
}
