//! Certificates as an administrator issues them: the openssl commands of the certificate
//! guide in docs/CERTIFICATES.md, run exactly as written, produce a CA, a hub certificate and a
//! node certificate that `check --connect` accepts and `sync` delivers with; `check` warns
//! about a certificate expiring within 30 days and refuses an expired one.

use std::path::Path;

use exchange_protocol::pki::{Usage, Validity};
use exchange_protocol::tls::{MinTlsVersion, MutualTls};
use exchange_tests::agent::AgentConfig;
use exchange_tests::hub::Hub;
use exchange_tests::pki::Pki;
use exchange_tests::scene::{NODE, Scene};
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::{DEADLINE, TestDir};

const CODE: &str = "330100-RSJ-0001";

/// The shell blocks that follow a `<!-- guide -->` line in docs/CERTIFICATES.md, joined.
fn guide() -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CERTIFICATES.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    let blocks: Vec<&str> = text
        .split("<!-- guide -->\n```sh\n")
        .skip(1)
        .map(|b| b.split_once("\n```").expect("the block ends").0)
        .collect();
    assert!(!blocks.is_empty(), "{} has no guide block", doc.display());
    blocks.join("\n")
}

/// Runs the guide's commands in `dir` for node `node` and a hub at localhost/127.0.0.1.
fn run_guide(dir: &Path, node: &str) {
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &guide()])
        .current_dir(dir)
        .env("NODE_ID", node)
        .env("HUB_DNS", "localhost")
        .env("HUB_IP", "127.0.0.1")
        .env("REQUESTER", "city-hub")
        .env("VERIFY_DNS", "localhost")
        .env("VERIFY_IP", "127.0.0.1")
        .env("OTHER_REQUESTER", "gjj-system")
        .output()
        .expect("run bash (and openssl)");
    assert!(
        out.status.success(),
        "the certificate guide's commands failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_issued_by_the_guides_openssl_commands_are_accepted() {
    exchange_protocol::tls::install_provider();
    let dir = TestDir::new();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    run_guide(&tls, NODE);
    let hub = Hub::start(
        MutualTls {
            ca: tls.join("ca.pem"),
            cert: tls.join("hub.pem"),
            key: tls.join("hub.key"),
            min_version: MinTlsVersion::Tls13,
            crls: Vec::new(),
        },
        dir.path(),
    )
    .await;
    // The harness's PKI only supplies the shape of the configuration; every TLS file is the
    // guide's.
    let unused = TestDir::new();
    let source = SqliteSource::create(dir.path(), 5);
    let mut config = AgentConfig::new(dir.path(), &Pki::new(unused.path(), NODE), NODE, &hub.url())
        .source("rsj", "sqlite", &source.url())
        .resource(source.resource(CODE, "rsj"));
    config.ca = tls.join("ca.pem");
    config.cert = tls.join("node.pem");
    config.key = tls.join("node.key");
    let agent = config.write(&dir.path().join("agent.toml"));
    agent.check(true).await.assert_code(0).assert_mentions(&[
        "reachable over mutual TLS",
        NODE,
        "valid until",
    ]);
    agent.sync_ok().await;
    exchange_tests::wait::wait_until("the hub holds the rows", DEADLINE, || async {
        hub.rows(CODE).await == source.expected()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_a_node_certificate_expiring_within_30_days() {
    let dir = TestDir::new();
    run_guide(dir.path(), NODE);
    // Re-issue the node certificate for 10 days, as step 3 of the guide with `-days 10`.
    let out = std::process::Command::new("openssl")
        .args([
            "x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        ])
        .args(["-CAcreateserial", "-days", "10", "-extfile", "node.ext"])
        .args(["-out", "node.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unused = TestDir::new();
    let source = SqliteSource::create(dir.path(), 1);
    let mut config = AgentConfig::new(
        dir.path(),
        &Pki::new(unused.path(), NODE),
        NODE,
        "https://127.0.0.1:1",
    )
    .source("rsj", "sqlite", &source.url())
    .resource(source.resource(CODE, "rsj"));
    config.ca = dir.path().join("ca.pem");
    config.cert = dir.path().join("node.pem");
    config.key = dir.path().join("node.key");
    let agent = config.write(&dir.path().join("agent.toml"));
    let out = agent.check(false).await;
    out.assert_code(0).assert_mentions(&[
        "warning: node certificate",
        &dir.path().join("node.pem").display().to_string(),
        "expires on",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_an_expired_node_certificate() {
    let scene = Scene::start().await;
    let (cert, key) = scene.pki.issue(
        &scene.pki.ca,
        NODE,
        &[],
        Usage::ClientAuth,
        Validity::Expired,
        "expired",
    );
    let source = SqliteSource::create(scene.dir.path(), 1);
    let mut config = scene
        .agent_config()
        .source("rsj", "sqlite", &source.url())
        .resource(source.resource(CODE, "rsj"));
    config.cert = cert.clone();
    config.key = key;
    let agent = scene.write_agent(&config);
    let out = agent.check(false).await;
    out.assert_code(2).assert_mentions(&[
        "node certificate",
        &cert.display().to_string(),
        "expired on",
        "cannot be used",
    ]);
    assert!(
        !out.text().contains("is valid"),
        "an expired certificate is not a valid configuration; {out}"
    );
}
