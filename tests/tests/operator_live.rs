//! Every operator command against a running service (the real `exchange-agent run` daemon),
//! through its control socket: read-only commands answer beside the pulls and need no
//! `--yes`; changes need `--yes`, are audited, and are applied between pulls; the daemon never
//! stops, and verification answers before, between and after every change on the connection
//! it had.

use exchange_hub::verify::Verifier;
use exchange_protocol::verify::FieldResult;
use exchange_tests::agent::{Agent, Output, q};
use exchange_tests::verification::{Daemon, item, key_file, request, sqlite_setup, v};
use exchange_tests::wait::wait_until;
use std::time::Duration;

/// The verification fixture with [`DELIVERED`] added, checked.
async fn setup_with_delivered() -> (exchange_tests::TestDir, exchange_tests::verification::Setup) {
    let (source, setup) = sqlite_setup(&[]).await;
    // The delivered key leaves pseudonymized: its stored position is sealed.
    let seal = key_file(&setup.dir.path().join("keys"), "seal.key", 3);
    let text = std::fs::read_to_string(&setup.config).unwrap().replacen(
        "[policy]\n",
        &format!(
            "[policy]\nseal_key_file = {}\n",
            q(&seal.display().to_string())
        ),
        1,
    ) + DELIVERED;
    std::fs::write(&setup.config, text).unwrap();
    Agent::at(&setup.config).check(false).await.assert_code(0);
    (source, setup)
}

/// A delivered resource beside the verification fixture's: the hub it names does not
/// answer, so its batch stays queued for the commands to work on.
const DELIVERED: &str = r#"
[[resources]]
code = "R-OUT"
name = "交付资源"
share = "unconditional"
source = "src"
table = "people"
key = "id_no"
mode = "snapshot"
every = "1h"

[resources.fields]
id_no = { rule = "pseudonym", identifier = "citizen_id" }
name = "mask:name"
birth = "generalize:year"
"#;

async fn verified(verifier: &Verifier) {
    let (answer, _) = verifier
        .verify(&request(
            "R-SHOWN",
            vec![item("11010519491231002X", &[("name", v("张三"))])],
        ))
        .await
        .expect("verification answers");
    assert_eq!(answer.items[0].fields["name"], FieldResult::Match);
}

fn through_service(out: &Output) {
    out.assert_code(0);
    out.assert_mentions(&["The service holds the queue"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_command_works_on_a_running_service_while_verification_answers() {
    let (_source, setup) = setup_with_delivered().await;
    let mut daemon = Daemon::start(&setup).await;
    let agent = Agent::at(&setup.config);
    let verifier = Verifier::new(
        &setup.client_tls(&setup.client.0, &setup.client.1),
        &daemon.url,
    )
    .unwrap();
    verified(&verifier).await;

    // Read-only: answered by the service beside its loops, no --yes.
    wait_until(
        "the first scan of R-OUT is queued (its rows, then the batch completing the baseline)",
        Duration::from_secs(60),
        || async {
            let out = agent.cmd(&["queue", "list", "R-OUT"]).await;
            out.code == Some(0) && out.stdout.contains("R-OUT: 2 batches, 3 records")
        },
    )
    .await;
    let list = agent.cmd(&["queue", "list", "R-OUT"]).await;
    through_service(&list);
    let show = agent.cmd(&["cursor", "show", "R-OUT"]).await;
    through_service(&show);
    show.assert_mentions(&["R-OUT: snapshot generation"]);
    let file = setup.dir.path().join("batch-1.ndjson");
    let export = agent
        .cmd(&[
            "queue",
            "export",
            "R-OUT",
            "1",
            "--out",
            file.to_str().unwrap(),
        ])
        .await;
    through_service(&export);
    let records = std::fs::read_to_string(&file).unwrap();
    assert_eq!(records.lines().count(), 3, "{records}");
    assert!(!records.contains("11010519491231002X"), "{records}");
    through_service(&agent.cmd(&["quarantine", "list"]).await);
    let find = agent
        .cmd(&["quarantine", "find", "R-OUT", "--key", "11010519491231002X"])
        .await;
    through_service(&find);
    find.assert_mentions(&["No quarantine entry of `R-OUT` has this key"]);
    verified(&verifier).await;

    // Changes: refused without --yes (nothing changes), done with it.
    let refused = agent.cmd(&["queue", "discard", "R-OUT", "1"]).await;
    refused.assert_code(2);
    refused.assert_mentions(&["--yes"]);
    assert!(
        agent
            .cmd(&["queue", "list", "R-OUT"])
            .await
            .stdout
            .contains("2 batches, 3 records")
    );
    for (args, says) in [
        (
            &["queue", "discard", "R-OUT", "1", "--yes"][..],
            "Discarded the 3 records of batch 1",
        ),
        (&["cursor", "reset", "R-OUT", "--yes"], "is reset"),
        (&["quarantine", "clear", "R-OUT", "--yes"], "Cleared"),
        (&["accept-config", "R-OUT", "--yes"], "unchanged"),
        (
            &["resync", "R-OUT", "--yes"],
            "starts again on a new stream",
        ),
    ] {
        let out = agent.cmd(args).await;
        through_service(&out);
        out.assert_mentions(&[says]);
        // The same daemon, the same verification connection, between every two changes.
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "the daemon exited"
        );
        verified(&verifier).await;
    }
    let list = agent.cmd(&["queue", "list", "R-OUT"]).await;
    assert!(!list.stdout.contains("3 records queued"), "{list}");

    // Each change left an audit entry; the reads did not, except the export.
    let audit = setup.audit();
    for kind in [
        "queue.export",
        "queue.discard",
        "cursor.reset",
        "quarantine.clear",
        "accept-config",
        "resync",
    ] {
        assert!(
            audit
                .iter()
                .any(|e| e["action"] == kind && e["resource"] == "R-OUT"),
            "no {kind} entry in {audit:#?}"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_an_operator_in_the_operators_language() {
    let (_source, setup) = setup_with_delivered().await;
    let daemon = Daemon::start(&setup).await;
    let bin = exchange_tests::bins::agent();
    let config = setup.config.display().to_string();
    let zh = tokio::process::Command::new(&bin)
        .args(["-c", &config, "queue", "discard", "R-OUT", "1"])
        .env("EXCHANGE_LANG", "zh")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&zh.stderr);
    assert_eq!(zh.status.code(), Some(2), "{said}");
    assert!(said.contains("确认执行请加 --yes"), "{said}");
    let zh = tokio::process::Command::new(&bin)
        .args(["-c", &config, "cursor", "reset", "R-OUT", "--yes"])
        .env("EXCHANGE_LANG", "zh")
        .output()
        .await
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&zh.stdout),
        String::from_utf8_lossy(&zh.stderr),
    );
    assert_eq!(zh.status.code(), Some(0), "{out}{err}");
    assert!(err.contains("队列由正在运行的服务持有"), "{err}");
    assert!(out.contains("游标已重置"), "{out}");
    let status = tokio::process::Command::new(&bin)
        .args(["-c", &config, "status"])
        .env("EXCHANGE_LANG", "zh")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{said}");
    for label in ["节点 ", "游标", "排队", "已交付", "已隔离"] {
        assert!(said.contains(label), "no {label} in {said}");
    }
    daemon.stop().await;
}
