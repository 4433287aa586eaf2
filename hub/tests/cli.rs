//! The `exchange-hub` binary: `check`, `serve` (stopped by SIGTERM) and `export`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use exchange_protocol::batch::AckStatus;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_exchange-hub");
const NODE: &str = "gtj-node-03";
const RESOURCE: &str = "330100-GTJ-0003";

/// Writes `hub.toml` next to the PKI's files, with paths relative to it.
fn write_config(pki: &Pki, extra: &str) -> PathBuf {
    let dir = pki.dir.path();
    let rel = |p: &Path| p.strip_prefix(dir).unwrap().display().to_string();
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[store]\nurl = \"sqlite://hub.db\"\n{extra}",
        rel(&pki.hub_tls.ca),
        rel(&pki.hub_tls.cert),
        rel(&pki.hub_tls.key),
    );
    let path = dir.join("hub.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn run(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(DEADLINE, Command::new(BIN).args(args).output())
        .await
        .expect("the command did not finish before the deadline")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_accepts_a_valid_file_and_exits_2_naming_file_line_and_key() {
    let pki = Pki::new();
    let path = write_config(&pki, "");
    let config = path.to_str().unwrap();
    let (code, stdout, stderr) = run(&["check", "--config", config]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": valid (listen 127.0.0.1:0"), "{stdout}");

    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("addr =", "adress ="),
    )
    .unwrap();
    let (code, _, stderr) = run(&["check", "--config", config]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: {config}:2:1: key `listen.adress`: unknown field `adress`, expected one of `addr`, `ca`, `cert`, `key`, `min_tls`"
        )),
        "{stderr}"
    );

    // A key file other users can read is a configuration error too.
    let path = write_config(&pki, "");
    let key = &pki.hub_tls.key;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = run(&["check", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");

    let (code, _, stderr) = run(&["check", "--config", "/nonexistent/hub.toml"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot read hub configuration /nonexistent/hub.toml"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_stops_on_sigterm_and_export_prints_records_by_key() {
    let pki = Pki::new();
    let path = write_config(&pki, "[limits]\nmax_batch_bytes = \"1MiB\"\n");
    let mut child = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: std::net::SocketAddr = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("Hub listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                return addr.trim_end_matches('.').to_owned();
            }
        }
        panic!("the hub exited before listening");
    })
    .await
    .expect("no \"Hub listening\" line before the deadline")
    .parse()
    .unwrap();

    let client = client(&pki.client(NODE));
    let push = Push::new(
        NODE,
        RESOURCE,
        &new_stream(),
        1,
        vec![upsert("k2", r#"{"v":"2.50"}"#), upsert("k1", r#"{"v":1}"#)],
    );
    let response = push
        .send_to(&client, &format!("https://{addr}"))
        .await
        .unwrap();
    assert_eq!(ack(response).await.status, AckStatus::Applied);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the hub did not exit before the deadline")
        .unwrap();
    assert!(status.success(), "{status:?}");

    let (code, stdout, stderr) = run(&[
        "export",
        "--config",
        path.to_str().unwrap(),
        "--resource",
        RESOURCE,
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["key"], "k1");
    assert_eq!(lines[1]["fields"], serde_json::json!({"v": "2.50"}));
    assert_eq!(lines[1]["node"], NODE);

    let (code, _, stderr) = run(&[
        "export",
        "--config",
        path.to_str().unwrap(),
        "--resource",
        "NOPE",
    ])
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no node has pushed resource `NOPE` to this hub; known resources: {RESOURCE}"
        )),
        "{stderr}"
    );
}
