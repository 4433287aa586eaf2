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
    write_config_for(pki, "sqlite://hub.db", extra)
}

/// Writes `hub.toml` with the store at `url`.
fn write_config_for(pki: &Pki, url: &str, extra: &str) -> PathBuf {
    let dir = pki.dir.path();
    let rel = |p: &Path| p.strip_prefix(dir).unwrap().display().to_string();
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[store]\nurl = \"{url}\"\n{extra}",
        rel(&pki.hub_tls.ca),
        rel(&pki.hub_tls.cert),
        rel(&pki.hub_tls.key),
    );
    let path = dir.join("hub.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn run(args: &[&str]) -> (i32, String, String) {
    run_with_env(args, &[]).await
}

async fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = tokio::time::timeout(DEADLINE, command.output())
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

#[tokio::test]
async fn check_connect_reports_schema_version_and_counts_and_exits_3_when_unreachable() {
    let pki = Pki::new();
    let path = write_config(&pki, "");
    let (code, stdout, stderr) = run(&["check", "--connect", "-c", path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("reachable, schema version 3; 0 resources, 0 streams, 0 records"),
        "{stdout}"
    );
    let path = write_config_for(&pki, "postgres://postgres@127.0.0.1:1/nothing", "");
    let (code, _, stderr) = run(&["check", "--connect", "-c", path.to_str().unwrap()]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("Connection refused") || stderr.contains("connection refused"),
        "{stderr}"
    );
}

#[tokio::test]
async fn postgres_notices_stay_out_of_the_logs_and_logs_have_no_colour_off_a_terminal() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let path = write_config_for(&pki, &db.url(), "");
    let config = path.to_str().unwrap();
    // The first run creates the tables; the second meets them (`… already exists, skipping`).
    let (code, _, stderr) = run(&["check", "--connect", "-c", config]).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run(&["check", "--connect", "-c", config]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("schema version 3"), "{stdout}");
    assert!(
        stderr.is_empty(),
        "notices leaked at the default level: {stderr}"
    );
    // At debug level the notices are there, in plain text without ANSI colour codes…
    let debug = [("RUST_LOG", "exchange_hub=debug")];
    let (_, _, stderr) = run_with_env(&["check", "--connect", "-c", config], &debug).await;
    assert!(stderr.contains("Store notice."), "{stderr}");
    assert!(!stderr.contains('\x1b'), "ANSI codes on a pipe: {stderr:?}");
    // … or as one JSON object per line.
    let args = ["--log-format", "json", "check", "--connect", "-c", config];
    let (_, _, stderr) = run_with_env(&args, &debug).await;
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "Store notice."),
        "{stderr}"
    );
}

#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_fails_and_never_falls_back() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let path = write_config_for(&pki, &format!("{}?sslmode=require", db.url()), "");
    let (code, _, stderr) = run(&["check", "--connect", "-c", path.to_str().unwrap()]).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("TLS"), "{stderr}");
    // Nothing reached the database in plaintext: no table was created.
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT to_regclass('records') IS NULL", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
}

#[tokio::test]
async fn export_into_a_closed_pipe_exits_0_quietly() {
    let pki = Pki::new();
    let path = write_config(&pki, "");
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let client = client(&pki.client(NODE));
    let filler = "x".repeat(200);
    let records: Vec<_> = (0..2000)
        .map(|i| upsert(&format!("k{i:05}"), &format!(r#"{{"f":"{filler}"}}"#)))
        .collect();
    ack(Push::new(NODE, RESOURCE, &new_stream(), 1, records)
        .send(&client, &hub)
        .await)
    .await;
    hub.stop().await.unwrap();
    // `exchange-hub export | head -1`: read one line, then close the pipe.
    let mut child = Command::new(BIN)
        .args(["export", "-c", path.to_str().unwrap(), "-r", RESOURCE])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).await.unwrap();
    assert!(line.contains("k00000"), "{line}");
    drop(stdout);
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[tokio::test]
async fn the_configuration_is_found_as_the_agent_finds_its_own() {
    let pki = Pki::new();
    let path = write_config(&pki, "");
    let file = path.to_str().unwrap();
    // `-c` before the command, `--config` after it, or the environment.
    for (args, env) in [
        (vec!["-c", file, "check"], vec![]),
        (vec!["check", "--config", file], vec![]),
        (vec!["check"], vec![("EXCHANGE_HUB_CONFIG", file)]),
    ] {
        let (code, stdout, stderr) = run_with_env(&args, &env).await;
        assert_eq!(code, 0, "{args:?}: {stdout}{stderr}");
    }
    // Nothing given: the file the package installs, named once with its reason.
    let mut command = Command::new(BIN);
    command.arg("check").env_remove("EXCHANGE_HUB_CONFIG");
    let out = command.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !std::path::Path::new("/etc/exchange-hub/hub.toml").exists() {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.starts_with("error: cannot read hub configuration /etc/exchange-hub/hub.toml"),
            "{stderr}"
        );
        assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
    }
}

#[tokio::test]
async fn a_client_certificate_without_client_auth_is_named_before_any_agent_refuses_it() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    // The default: [client] is [listen]'s server certificate. A hub may never verify, so
    // `check` passes, but says `verify` will not work, and `verify` refuses before connecting.
    let path = write_config(&pki, "");
    let file = path.to_str().unwrap();
    let (code, stdout, stderr) = run(&["check", "-c", file]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("warning:") && stdout.contains("clientAuth"),
        "{stdout}"
    );
    let (code, _, stderr) = run(&[
        "verify",
        "-c",
        file,
        "--agent",
        "https://127.0.0.1:9",
        "--resource",
        "R",
        "--purpose",
        "p",
        "--case-ref",
        "c",
        "--subject",
        "s",
        "--claim",
        "name=x",
    ])
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("clientAuth") && !stderr.contains("connection"),
        "{stderr}"
    );

    // A [client] certificate of its own that is a server certificate: an error.
    let (cert, key) = pki
        .ca
        .issue_server(&["hub-client.example"])
        .unwrap()
        .write(dir, "server-only")
        .unwrap();
    let client = format!(
        "\n[client]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let path = write_config(&pki, &client);
    let (code, stdout, stderr) = run(&["check", "-c", path.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("clientAuth"), "{stderr}");

    // A client certificate: no warning.
    let tls = pki.client("hub-client");
    let client = format!(
        "\n[client]\ncert = \"{}\"\nkey = \"{}\"\n",
        tls.cert.display(),
        tls.key.display()
    );
    let path = write_config(&pki, &client);
    let (code, stdout, stderr) = run(&["check", "-c", path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("warning:"), "{stdout}");
}

#[tokio::test]
async fn check_shows_certificate_expiry_in_days_and_refuses_an_expired_certificate() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    // A [client] certificate of its own: listed too.
    let (cert, key) = pki
        .ca
        .issue_client("city-hub")
        .unwrap()
        .write(dir, "client")
        .unwrap();
    let client = format!(
        "\n[client]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let path = write_config(&pki, &client);
    let file = path.to_str().unwrap();
    let (code, stdout, stderr) = run(&["check", "-c", file]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    for needle in [
        "[listen] cert `127.0.0.1` valid until",
        "[listen] ca `Test platform CA` valid until",
        "[client] cert `city-hub` valid until",
        "days left",
    ] {
        assert!(stdout.contains(needle), "expected `{needle}` in:\n{stdout}");
    }

    // The [listen] certificate past its end: named, and the file refused (exit 2).
    let expired = pki
        .ca
        .issue(
            "127.0.0.1",
            &["127.0.0.1"],
            exchange_protocol::pki::Usage::ServerAuth,
            exchange_protocol::pki::Validity::Expired,
        )
        .unwrap();
    expired.write(dir, "hub").unwrap();
    let (code, stdout, stderr) = run(&["check", "-c", file]).await;
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.contains("error: [listen] cert")
            && stderr.contains(&pki.hub_tls.cert.display().to_string())
            && stderr.contains("expired on"),
        "{stderr}"
    );
    assert!(!stdout.contains(": valid"), "{stdout}");
}
