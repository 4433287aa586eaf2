//! `exchange-agent run` as systemd runs it, with the real binary, a SQLite source and the
//! reference hub:
//! - `Type=notify`: READY=1 (with STATUS=) once it is up, then WATCHDOG=1 pings;
//! - reload: an invalid configuration (SIGHUP) keeps the old one running and says why; a
//!   valid one (written in place, seen by the file watcher) takes effect without a restart;
//!   a rotated client certificate is used by the next connections;
//! - SIGTERM while batches are being pushed: the agent exits in time and nothing is lost;
//! - the admin listener: `/metrics` parses as Prometheus text and its counts follow a sync,
//!   the last pull's statement is timed there and in `status`, `/health` answers.

use std::path::Path;
use std::time::Duration;

use exchange_protocol::pki::{Usage, Validity};
use exchange_tests::DEADLINE;
use exchange_tests::admin::{self, Sample, get, parse_prometheus, sample};
use exchange_tests::agent::{Agent, AgentConfig, terminate};
use exchange_tests::rows::assert_same;
use exchange_tests::scene::{NODE, Scene};
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::{wait_for, wait_until};

const CODE: &str = "330100-RSJ-0001";
const OTHER: &str = "330100-RSJ-0002";

fn config(scene: &Scene, source: &SqliteSource) -> AgentConfig {
    scene
        .agent_config()
        .source("biz", "sqlite", &source.url())
        .resource(source.resource(CODE, "biz"))
}

/// The actions in the agent's audit log, in order.
fn audit_actions(config: &AgentConfig) -> Vec<serde_json::Value> {
    std::fs::read_to_string(config.data_dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn send_signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the agent is running");
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{signal} {pid} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_notifies_ready_then_watchdog_with_a_status_line() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 20);
    let agent = scene.write_agent(&config(&scene, &source));
    let socket_path = scene.dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let log = scene.dir.path().join("agent.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = tokio::process::Command::new(exchange_tests::bins::agent())
        .args(["run", "--config", &agent.config.display().to_string()])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("RUST_LOG", "info")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut messages = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !messages.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = tokio::time::timeout(DEADLINE, socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no WATCHDOG=1 within {DEADLINE:?}; got {messages:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .unwrap();
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1 before WATCHDOG=1: {messages:?}"));
    assert!(
        messages[..ready].iter().all(|m| !m.contains("WATCHDOG=1")),
        "{messages:?}"
    );
    let status = messages[ready]
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("READY=1 without STATUS=: {messages:?}"));
    assert!(
        status.contains("1 resources") && status.contains("records queued"),
        "{status}"
    );
    // By then the control socket (a listener) is bound.
    assert!(
        agent_data(&agent).join("control.sock").exists(),
        "READY before the control socket"
    );
    send_signal(&child, "TERM");
    let exit = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let mut rest = Vec::new();
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
    {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        rest.iter().any(|m| m.contains("STOPPING=1")),
        "no STOPPING=1: {rest:?}"
    );
}

fn agent_data(agent: &Agent) -> std::path::PathBuf {
    agent.config.parent().unwrap().join("agent-data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_old_configuration_and_a_valid_one_takes_effect() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 50);
    let first = config(&scene, &source);
    let agent = scene.write_agent(&first);
    // The admin listener, in every version of the file (a reload cannot move it).
    let port = admin::free_port();
    let admin = admin::section(port);
    std::fs::write(&agent.config, first.to_toml() + &admin).unwrap();
    let log = scene.dir.path().join("agent.log");
    let mut child = agent.spawn_run(&log);
    let expected = source.expected();
    wait_until("the hub holds the first rows", DEADLINE, || async {
        scene.hub.rows(CODE).await == expected
    })
    .await;
    // (reloads, refused reloads): from /metrics, and counted in the audit log.
    let reloads = |samples: &[Sample]| {
        (
            sample(samples, "exchange_config_reloads_total", &[]),
            sample(samples, "exchange_config_reload_failures_total", &[]),
        )
    };
    let audited = || {
        let actions = audit_actions(&first);
        let count = |action: &str| actions.iter().filter(|e| e["action"] == action).count() as f64;
        (
            Some(count("config.reload")),
            Some(count("config.reload_failed")),
        )
    };
    let before = wait_for("the admin listener answers", DEADLINE, || async {
        admin::scrape(port).await
    })
    .await;
    assert_eq!(reloads(&before), (Some(0.0), Some(0.0)));

    // An invalid file (an unknown key), signalled with SIGHUP: refused, the agent goes on.
    let invalid = first.to_toml().replace("[batch]", "[batch]\nnot_a_key = 1") + &admin;
    std::fs::write(&agent.config, &invalid).unwrap();
    send_signal(&child, "HUP");
    wait_until("the refused reload is audited", DEADLINE, || async {
        audit_actions(&first)
            .iter()
            .any(|e| e["action"] == "config.reload_failed")
    })
    .await;
    let failed = audit_actions(&first)
        .into_iter()
        .find(|e| e["action"] == "config.reload_failed")
        .unwrap();
    assert!(
        failed["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("not_a_key"),
        "{failed}"
    );
    assert_eq!(failed["detail"]["config_sm3"].as_str().unwrap().len(), 64);
    assert!(child.try_wait().unwrap().is_none(), "the agent exited");
    // Counted as audited (the file watcher may have seen the change as well as SIGHUP).
    wait_until("the refused reload is counted", DEADLINE, || async {
        admin::scrape(port).await.is_some_and(|s| {
            let (ok, failed) = reloads(&s);
            ok == Some(0.0) && failed >= Some(1.0) && (ok, failed) == audited()
        })
    })
    .await;
    source.insert(51, 10);
    let expected = source.expected();
    wait_until(
        "rows added after the refused reload are delivered",
        DEADLINE,
        || async { scene.hub.rows(CODE).await == expected },
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Configuration not reloaded; the previous configuration keeps running."),
        "{text}"
    );

    // A valid file with a second resource, written in place: the watcher reloads it.
    let other = scene.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let second_source = SqliteSource::create(&other, 30);
    let second = first
        .clone()
        .source("other", "sqlite", &second_source.url())
        .resource(second_source.resource(OTHER, "other"));
    std::fs::write(&agent.config, second.to_toml() + &admin).unwrap();
    let expected_other = second_source.expected();
    wait_until(
        "the resource added by the reload is delivered",
        DEADLINE,
        || async { scene.hub.rows(OTHER).await == expected_other },
    )
    .await;
    let reload = audit_actions(&first)
        .into_iter()
        .find(|e| e["action"] == "config.reload")
        .expect("a config.reload audit entry");
    let digest = exchange_protocol::digest::sm3((second.to_toml() + &admin).as_bytes());
    assert_eq!(reload["detail"]["config_sm3"], hex::encode(digest));
    assert_eq!(reload["detail"]["trigger"], "file change");
    wait_until("the reload is counted as audited", DEADLINE, || async {
        admin::scrape(port).await.is_some_and(|s| {
            let (ok, failed) = reloads(&s);
            ok >= Some(1.0) && (ok, failed) == audited()
        })
    })
    .await;
    let started = audit_actions(&first);
    assert_eq!(started[0]["action"], "service.start");
    terminate(&mut child).await;
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_used_by_new_connections() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 40);
    // The node starts with a certificate the hub does not trust (another CA, same name).
    let (other, _) = scene.pki.other_ca("other-ca");
    let (bad_cert, bad_key) = scene.pki.issue(
        &other,
        NODE,
        &[],
        Usage::ClientAuth,
        Validity::Current,
        "node-untrusted",
    );
    let cert = scene.dir.path().join("node-current.pem");
    let key = scene.dir.path().join("node-current.key");
    copy_secret(&bad_cert, &cert);
    copy_secret(&bad_key, &key);
    let mut config = config(&scene, &source);
    config.cert = cert.clone();
    config.key = key.clone();
    let agent = scene.write_agent(&config);
    let log = scene.dir.path().join("agent.log");
    let mut child = agent.spawn_run(&log);
    wait_until(
        "the hub refuses the untrusted certificate",
        DEADLINE,
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Push failed")
        },
    )
    .await;
    assert!(scene.hub.rows(CODE).await.is_empty());
    // Rotation: the platform's certificate and key replace the files (new files renamed over
    // the old ones, as an editor or a deployment tool does); no signal.
    for (from, to) in [(&scene.pki.node_cert, &cert), (&scene.pki.node_key, &key)] {
        let tmp = to.with_extension("new");
        copy_secret(from, &tmp);
        std::fs::rename(&tmp, to).unwrap();
    }
    let expected = source.expected();
    wait_until(
        "the queued rows reach the hub with the rotated certificate",
        DEADLINE,
        || async { scene.hub.rows(CODE).await == expected },
    )
    .await;
    assert!(child.try_wait().unwrap().is_none(), "the agent exited");
    assert!(
        audit_actions(&config)
            .iter()
            .any(|e| e["action"] == "config.reload")
    );
    terminate(&mut child).await;
}

fn copy_secret(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_push_loses_nothing() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 20_000);
    // Small batches: the agent is in the middle of pushing when SIGTERM arrives.
    let config = config(&scene, &source).max_records(20);
    let agent = scene.write_agent(&config);
    let log = scene.dir.path().join("agent.log");
    let mut child = agent.spawn_run(&log);
    wait_until("the hub holds some rows", DEADLINE, || async {
        !scene.hub.rows(CODE).await.is_empty()
    })
    .await;
    let started = std::time::Instant::now();
    let exit = terminate(&mut child).await;
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped after {:?}, beyond TimeoutStopSec=30s",
        started.elapsed()
    );
    let held = scene.hub.rows(CODE).await.len();
    assert!(
        held < 20_000,
        "the push had finished before SIGTERM ({held} rows); the test proves nothing"
    );
    // After the restart everything arrives, once.
    let mut child = agent.spawn_run(&log);
    let expected = source.expected();
    wait_until("every row reaches the hub", DEADLINE * 2, || async {
        scene.hub.rows(CODE).await == expected
    })
    .await;
    terminate(&mut child).await;
    assert_same(&scene.hub.rows(CODE).await, &expected);
}

fn value(samples: &[Sample], name: &str, resource: &str) -> Option<f64> {
    sample(samples, name, &[("resource", resource)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_follow_a_sync() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 25);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = scene.write_agent(&config(&scene, &source));
    let mut text = std::fs::read_to_string(&agent.config).unwrap();
    text.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&agent.config, text).unwrap();
    let log = scene.dir.path().join("agent.log");
    let mut child = agent.spawn_run(&log);
    let pushed = wait_for("25 records counted as pushed", DEADLINE, || async {
        let (code, body) = get(port, "/metrics").await?;
        assert_eq!(code, 200, "{body}");
        let samples = parse_prometheus(&body);
        (value(&samples, "exchange_records_pushed_total", CODE)? >= 25.0).then_some(samples)
    })
    .await;
    assert_eq!(
        value(&pushed, "exchange_records_read_total", CODE),
        Some(25.0)
    );
    assert_eq!(value(&pushed, "exchange_queue_records", CODE), Some(0.0));
    assert!(value(&pushed, "exchange_last_push_timestamp_seconds", CODE).unwrap() > 0.0);
    let count = pushed
        .iter()
        .find(|s| s.0 == "exchange_push_latency_seconds_count")
        .unwrap()
        .2;
    assert!(count >= 1.0, "no push latency recorded");
    // The pull's statement was timed: to its first row, and whole.
    let phase = |samples: &[Sample], phase: &str| {
        sample(
            samples,
            "exchange_source_query_seconds",
            &[("resource", CODE), ("phase", phase)],
        )
        .unwrap_or_else(|| panic!("no exchange_source_query_seconds phase={phase}"))
    };
    let (first_row, total) = (phase(&pushed, "first_row"), phase(&pushed, "total"));
    assert!(0.0 < first_row && first_row <= total, "{first_row} {total}");
    // And `status` shows it, from the service's status file.
    let status = wait_for("status shows the statement's time", DEADLINE, || async {
        let status = agent.try_status().await?;
        let resource = status["resources"]
            .as_array()?
            .iter()
            .find(|r| r["code"] == CODE)?
            .clone();
        resource["source_query"]["total_seconds"]
            .as_f64()
            .is_some()
            .then_some(resource)
    })
    .await;
    assert!(
        status["source_query"]["first_row_seconds"]
            .as_f64()
            .is_some()
    );
    let text = agent.cmd(&["status"]).await;
    text.assert_code(0).assert_mentions(&["first row after"]);
    source.insert(26, 5);
    wait_until("the new rows are counted", DEADLINE, || async {
        let Some((_, body)) = get(port, "/metrics").await else {
            return false;
        };
        value(
            &parse_prometheus(&body),
            "exchange_records_pushed_total",
            CODE,
        ) == Some(30.0)
    })
    .await;
    let (code, body) = get(port, "/health").await.expect("GET /health");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    terminate(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_named_as_a_systemd_credential_is_read_from_credentials_directory() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 1);
    let credentials = scene.dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    copy_secret(&scene.pki.node_key, &credentials.join("node.key"));
    let agent = scene.write_agent(&config(&scene, &source));
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let key_line = format!(
        "key = {}",
        exchange_tests::agent::q(&scene.pki.node_key.display().to_string())
    );
    assert!(text.contains(&key_line), "{text}");
    std::fs::write(
        &agent.config,
        text.replace(&key_line, "key = \"${CREDENTIALS_DIRECTORY}/node.key\""),
    )
    .unwrap();
    let config = agent.config.display().to_string();
    let check = |dir: Option<&Path>| {
        let mut cmd = std::process::Command::new(exchange_tests::bins::agent());
        cmd.args(["check", "--config", &config])
            .env_remove("CREDENTIALS_DIRECTORY");
        if let Some(d) = dir {
            cmd.env("CREDENTIALS_DIRECTORY", d);
        }
        cmd.output().unwrap()
    };
    let ok = check(Some(&credentials));
    assert!(ok.status.success(), "{ok:?}");
    let missing = check(None);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(
        said.contains("hub.key") && said.contains("CREDENTIALS_DIRECTORY is not set"),
        "{said}"
    );
}
