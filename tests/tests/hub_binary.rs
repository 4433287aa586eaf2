//! The reference hub as administrators run it: the `exchange-hub serve` binary with a
//! PostgreSQL store, fed by `exchange-agent sync`, read back with `exchange-hub export`, and
//! stopped with SIGTERM; a CRL taken on SIGHUP, its refusals counted on the admin listener.

use exchange_tests::admin;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_binary_takes_a_crl_on_sighup_and_refuses_the_revoked_node_from_then_on() {
    let dir = TestDir::new();
    let pki = Pki::new(dir.path(), NODE);
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hub_toml = dir.path().join("hub.toml");
    let listen = format!(
        "[listen]\naddr = {}\nca = {}\ncert = {}\nkey = {}\n",
        q(&addr.to_string()),
        q(&pki.ca_cert.display().to_string()),
        q(&pki.hub_cert.display().to_string()),
        q(&pki.hub_key.display().to_string()),
    );
    let admin_port = admin::free_port();
    let store = format!(
        "\n[store]\nurl = {}\n{}",
        q(&format!("sqlite://{}", dir.path().join("hub.db").display())),
        admin::section(admin_port)
    );
    std::fs::write(&hub_toml, format!("{listen}{store}")).unwrap();
    let log = std::fs::File::create(dir.path().join("hub.log")).unwrap();
    let mut hub = tokio::process::Command::new(bins::hub())
        .args(["serve", "--config", &hub_toml.display().to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until("the hub binary accepts connections", DEADLINE, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    // The node's certificate, which the CA is about to revoke.
    let issued = pki.ca.issue_client(NODE).unwrap();
    let (cert, key) = issued.write(&pki.dir, "node-revoked").unwrap();
    let source = SqliteSource::create(dir.path(), 10);
    let mut config = AgentConfig::new(dir.path(), &pki, NODE, &format!("https://{addr}"))
        .source("rsj", "sqlite", &source.url())
        .resource(source.resource(CODE, "rsj"));
    config.cert = cert;
    config.key = key;
    let agent = config.write(&dir.path().join("agent.toml"));
    agent.check(true).await.assert_code(0);
    // The CRL added to [listen], then SIGHUP (systemctl reload exchange-hub).
    let crl = pki.dir.join("ca.crl");
    pki.ca.write_crl(&crl, &[&issued.serial], 1).unwrap();
    std::fs::write(
        &hub_toml,
        format!("{listen}crl = [{}]\n{store}", q(&crl.display().to_string())),
    )
    .unwrap();
    let pid = i32::try_from(hub.id().unwrap()).unwrap();
    // SAFETY: kill(2) on our own child process.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    wait_until(
        "the revoked node is refused by the reloaded hub",
        DEADLINE,
        || async {
            let out = agent.check(true).await;
            out.code != Some(0) && out.text().contains("CertificateRevoked")
        },
    )
    .await;
    // Counted on the hub's admin listener.
    wait_until(
        "the hub counts the revoked handshakes",
        DEADLINE,
        || async {
            admin::scrape(admin_port).await.is_some_and(|s| {
                admin::sample(
                    &s,
                    "exchange_tls_handshake_failures_total",
                    &[("listener", "hub"), ("reason", "revoked")],
                )
                .is_some_and(|n| n >= 1.0)
            })
        },
    )
    .await;
    // A reload that cannot load (the CRL file gone) changes nothing and says so.
    std::fs::write(
        &hub_toml,
        format!(
            "{listen}crl = [{}]\n{store}",
            q(&pki.dir.join("missing.crl").display().to_string())
        ),
    )
    .unwrap();
    // SAFETY: kill(2) on our own child process.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    wait_until("the refused reload is flagged", DEADLINE, || async {
        admin::scrape(admin_port).await.is_some_and(|s| {
            admin::sample(&s, "exchange_hub_config_reload_failed", &[]) == Some(1.0)
        })
    })
    .await;
    let out = agent.check(true).await;
    assert!(
        out.code != Some(0) && out.text().contains("CertificateRevoked"),
        "the revocation stays in force: {out}"
    );
    // The node's own certificate, not listed, still connects: nothing else changed.
    AgentConfig::new(dir.path(), &pki, NODE, &format!("https://{addr}"))
        .source("rsj", "sqlite", &source.url())
        .resource(source.resource(CODE, "rsj"))
        .write(&dir.path().join("agent.toml"))
        .check(true)
        .await
        .assert_code(0);
    let exit = terminate(&mut hub).await;
    assert!(exit.success(), "the hub stops cleanly on SIGTERM ({exit})");
}
