//! The certificate guide (docs/CERTIFICATES.md) as an administrator follows it: every block
//! marked `<!-- guide -->` runs with `sh -eu`, exactly as written, in a fresh directory; then
//! the real `exchange-hub serve` and `exchange-agent run` use only the files it made. The agent
//! pushes a batch the hub stores, and `exchange-hub verify` gets answers from the agent's
//! verification listener with each requester certificate of the guide: the hub's own client
//! certificate, the one certificate for both uses (no `[client]`), and a department CA's
//! requester. A wrong command in the guide fails here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use exchange_tests::agent::{self, Agent, AgentConfig, q, terminate};
use exchange_tests::pki::Pki;
use exchange_tests::scene::NODE;
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::wait_until;
use exchange_tests::{DEADLINE, TestDir, admin, bins, rows};

const CODE: &str = "330100-RSJ-0001";
const REQUESTER: &str = "city-hub";
const OTHER_REQUESTER: &str = "gjj-system";
const PURPOSE: &str = "社保资格认证";

/// The `sh` blocks that follow a `<!-- guide -->` line, in order.
fn guide_blocks() -> Vec<String> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CERTIFICATES.md");
    let text = std::fs::read_to_string(&doc)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", doc.display()));
    let mut blocks = Vec::new();
    for part in text.split("<!-- guide -->\n").skip(1) {
        let body = part
            .strip_prefix("```sh\n")
            .unwrap_or_else(|| panic!("a `<!-- guide -->` line not followed by ```sh:\n{part}"));
        let (block, _) = body
            .split_once("\n```\n")
            .expect("a guide block that ends with ```");
        blocks.push(block.to_owned());
    }
    blocks
}

/// Fails loudly when there is no openssl to run the guide with.
fn require_openssl() {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "this test runs the openssl commands of docs/CERTIFICATES.md and needs `openssl` \
             on PATH (Debian: apt-get install openssl); running it failed: {other:?}"
        ),
    }
}

/// Runs every guide block in `dir` with the variables of section 3 set for this machine.
fn run_guide(dir: &Path) {
    require_openssl();
    let blocks = guide_blocks();
    assert!(
        blocks.len() >= 8,
        "docs/CERTIFICATES.md has {} guide blocks; every role has one",
        blocks.len()
    );
    let out = Command::new("sh")
        .args(["-eu", "-c", &blocks.join("\n")])
        .current_dir(dir)
        .env("NODE_ID", NODE)
        .env("HUB_DNS", "localhost")
        .env("HUB_IP", "127.0.0.1")
        .env("REQUESTER", REQUESTER)
        .env("VERIFY_DNS", "localhost")
        .env("VERIFY_IP", "127.0.0.1")
        .env("OTHER_REQUESTER", OTHER_REQUESTER)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "the certificate guide's commands failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for key in [
        "ca.key",
        "hub.key",
        "hub-client.key",
        "hub-both.key",
        "node.key",
        "verify.key",
        "dept-ca.key",
        "dept-requester.key",
    ] {
        let mode = std::fs::metadata(dir.join(key))
            .unwrap_or_else(|e| panic!("the guide made no {key}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key} has mode {:o}", mode & 0o777);
    }
}

/// A hub configuration: `[listen]` with `listen_stem`.pem/.key, and `[client]` with
/// `client_stem`'s files when given.
fn hub_toml(
    dir: &Path,
    name: &str,
    addr: &str,
    listen_stem: &str,
    client: Option<&str>,
) -> PathBuf {
    let tls = dir.join("tls");
    let f = |n: &str| q(&tls.join(n).display().to_string());
    let mut text = format!(
        "[listen]\naddr = {}\nca = {}\ncert = {}\nkey = {}\n\n[store]\nurl = {}\n",
        q(addr),
        f("ca.pem"),
        f(&format!("{listen_stem}.pem")),
        f(&format!("{listen_stem}.key")),
        q(&format!("sqlite://{}", dir.join("hub.db").display())),
    );
    if let Some(stem) = client {
        text.push_str(&format!(
            "\n[client]\ncert = {}\nkey = {}\n",
            f(&format!("{stem}.pem")),
            f(&format!("{stem}.key"))
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The agent's configuration: the guide's node certificate towards the hub, its verification
/// certificate on `verify_port` trusting both requester CAs, and a grant for both requesters.
fn agent_toml(dir: &Path, hub_url: &str, source: &SqliteSource, ports: (u16, u16)) -> Agent {
    let tls = dir.join("tls");
    let unused = TestDir::new();
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let pseudonym = exchange_tests::verification::key_file(&keys, "pseudonym.key", 1);
    let grants = format!(
        "grants = [{{ requester = {}, fields = [\"name\"] }}, {{ requester = {}, fields = [\"name\"] }}]",
        q(REQUESTER),
        q(OTHER_REQUESTER)
    );
    let mut resource = source.resource(CODE, "rsj");
    resource.extra.push(grants);
    let mut config = AgentConfig::new(dir, &Pki::new(unused.path(), NODE), NODE, hub_url)
        .policy(&[&format!(
            "pseudonym_key_file = {}",
            q(&pseudonym.display().to_string())
        )])
        .source("rsj", "sqlite", &source.url())
        .resource(resource);
    config.ca = tls.join("ca.pem");
    config.cert = tls.join("node.pem");
    config.key = tls.join("node.key");
    let f = |n: &str| q(&tls.join(n).display().to_string());
    let text = format!(
        "{}[verify]\nlisten = \"127.0.0.1:{}\"\ncert = {}\nkey = {}\nclient_ca = {}\n{}",
        config.to_toml(),
        ports.0,
        f("verify.pem"),
        f("verify.key"),
        f("requesters-ca.pem"),
        admin::section(ports.1)
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    Agent::at(&path)
}

/// `exchange-hub verify` of resident 1's name with the hub configuration `config`; the
/// answer's `name` result.
async fn verify_name(config: &Path, agent_url: &str, name: &str) -> String {
    let out = agent::run(
        &bins::hub(),
        &[
            "verify",
            "-c",
            &config.display().to_string(),
            "--agent",
            agent_url,
            "--resource",
            CODE,
            "--purpose",
            PURPOSE,
            "--case-ref",
            "2024-0001",
            "--subject",
            "1",
            "--claim",
            &format!("name={name}"),
            "--json",
        ],
    )
    .await;
    out.assert_code(0);
    let answer: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("verify printed no JSON answer ({e}): {out}"));
    answer["items"][0]["fields"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no result for name: {out}"))
        .to_owned()
}

/// The hub's records of [`CODE`] as `exchange-hub export` prints them.
async fn exported(config: &Path) -> rows::Rows {
    let out = agent::run(
        &bins::hub(),
        &[
            "export",
            "-c",
            &config.display().to_string(),
            "--resource",
            CODE,
        ],
    )
    .await;
    if out.code != Some(0) {
        return rows::Rows::new();
    }
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    rows::from_export(&lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_made_by_the_guides_commands_carry_a_push_and_a_verification() {
    let dir = TestDir::new();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    run_guide(&tls);

    let hub_addr = format!("127.0.0.1:{}", admin::free_port());
    let hub = hub_toml(dir.path(), "hub.toml", &hub_addr, "hub", Some("hub-client"));
    let both = hub_toml(dir.path(), "hub-both.toml", &hub_addr, "hub-both", None);
    let dept = hub_toml(
        dir.path(),
        "dept.toml",
        &hub_addr,
        "hub",
        Some("dept-requester"),
    );
    for config in [&hub, &both, &dept] {
        let out = agent::run(
            &bins::hub(),
            &["check", "-c", &config.display().to_string()],
        )
        .await;
        out.assert_code(0);
        assert!(!out.stdout.contains("warning:"), "{out}");
    }
    let log = std::fs::File::create(dir.path().join("hub.log")).unwrap();
    let mut hub_process = tokio::process::Command::new(bins::hub())
        .args(["serve", "-c", &hub.display().to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until("the hub accepts connections", DEADLINE, || async {
        tokio::net::TcpStream::connect(&hub_addr).await.is_ok()
    })
    .await;

    let source = SqliteSource::create(dir.path(), 5);
    let ports = (admin::free_port(), admin::free_port());
    let agent = agent_toml(dir.path(), &format!("https://{hub_addr}"), &source, ports);
    agent
        .check(true)
        .await
        .assert_code(0)
        .assert_mentions(&["reachable over mutual TLS", NODE]);
    let mut daemon = agent.spawn_run(&dir.path().join("agent.log"));
    wait_until("the hub holds the rows", DEADLINE, || async {
        exported(&hub).await == source.expected()
    })
    .await;

    // The hub dials the agent by IP (hub-client, dept-requester) and by name (both).
    let by_ip = format!("https://127.0.0.1:{}", ports.0);
    let by_name = format!("https://localhost:{}", ports.0);
    assert_eq!(verify_name(&hub, &by_ip, "居民1").await, "match");
    assert_eq!(verify_name(&hub, &by_ip, "居民2").await, "mismatch");
    assert_eq!(verify_name(&both, &by_name, "居民1").await, "match");
    assert_eq!(verify_name(&dept, &by_ip, "居民1").await, "match");

    assert!(terminate(&mut daemon).await.success());
    assert!(terminate(&mut hub_process).await.success());
}
