//! The reference hub as administrators run it: the `exchange-hub serve` binary with a
//! PostgreSQL store, fed by `exchange-agent sync`, read back with `exchange-hub export`, and
//! stopped with SIGTERM.

use exchange_tests::agent::{self, AgentConfig, q, terminate};
use exchange_tests::db::PgDb;
use exchange_tests::pki::Pki;
use exchange_tests::rows::{self, assert_same};
use exchange_tests::scene::NODE;
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::wait_until;
use exchange_tests::{DEADLINE, TestDir, bins};

const CODE: &str = "330100-RSJ-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_binary_with_a_postgres_store_receives_exports_and_stops_on_sigterm() {
    let dir = TestDir::new();
    let pki = Pki::new(dir.path(), NODE);
    let store = PgDb::create().await;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hub_toml = dir.path().join("hub.toml");
    std::fs::write(
        &hub_toml,
        format!(
            "[listen]\naddr = {}\nca = {}\ncert = {}\nkey = {}\n\n[store]\nurl = {}\n",
            q(&addr.to_string()),
            q(&pki.ca_cert.display().to_string()),
            q(&pki.hub_cert.display().to_string()),
            q(&pki.hub_key.display().to_string()),
            q(&store.url)
        ),
    )
    .unwrap();
    let hub_config = hub_toml.display().to_string();
    agent::run(&bins::hub(), &["check", "--config", &hub_config])
        .await
        .assert_code(0);

    let log = std::fs::File::create(dir.path().join("hub.log")).unwrap();
    let mut hub = tokio::process::Command::new(bins::hub())
        .args(["serve", "--config", &hub_config])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until("the hub binary accepts connections", DEADLINE, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;

    let source = SqliteSource::create(dir.path(), 1500);
    let agent = AgentConfig::new(dir.path(), &pki, NODE, &format!("https://{addr}"))
        .max_records(400)
        .source("rsj", "sqlite", &source.url())
        .resource(source.resource(CODE, "rsj"))
        .write(&dir.path().join("agent.toml"));
    agent.check(true).await.assert_code(0);
    agent.sync_ok().await;

    let export = agent::run(
        &bins::hub(),
        &["export", "--config", &hub_config, "--resource", CODE],
    )
    .await;
    export.assert_code(0);
    let lines: Vec<serde_json::Value> = export
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("export line is not JSON ({e}): {l}"))
        })
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["resource"] == CODE && l["node"] == NODE),
        "{}",
        export.stdout
    );
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "the export is ordered by key, without duplicates"
    );
    assert_same(&rows::from_export(&lines), &source.expected());

    // An unknown resource is an error that lists what the hub has.
    let unknown = agent::run(
        &bins::hub(),
        &[
            "export",
            "--config",
            &hub_config,
            "--resource",
            "NO-SUCH-CODE",
        ],
    )
    .await;
    assert_ne!(unknown.code, Some(0), "{unknown}");
    unknown.assert_mentions(&["NO-SUCH-CODE", CODE]);

    let exit = terminate(&mut hub).await;
    assert!(exit.success(), "the hub stops cleanly on SIGTERM ({exit})");
}
