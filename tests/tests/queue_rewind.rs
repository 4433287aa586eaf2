//! A data directory restored from an older copy (a backup, a VM snapshot): the restored queue
//! reuses batch numbers the hub has already applied. Acknowledging those batches as resends
//! would drop the records they hold, so the agent must stop the resource and say what
//! happened and what to do (docs/OPERATIONS.md); following that advice (`exchange-agent
//! resync`, sync again) delivers everything.

use std::path::Path;

use exchange_tests::agent::{Agent, pulled};
use exchange_tests::rows::{assert_same, diff};
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;

const CODE: &str = "330100-RSJ-0001";

/// The stable part of the agent's message for a rewound queue.
const RESTORED: &str = "restored from an older copy";

/// Copies the files of `from` (recursively) into a new directory `to`.
/// Copies a directory tree keeping the directories' modes (as `cp -a` or a backup would).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let mode = std::fs::metadata(from).expect("mode").permissions();
    std::fs::set_permissions(to, mode).expect("keep the mode");
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
    {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| {
                panic!(
                    "copy {} to {}: {e}",
                    entry.path().display(),
                    target.display()
                )
            });
        }
    }
}

/// Replaces `data_dir` by the copy in `backup` (no agent runs meanwhile).
fn restore(data_dir: &Path, backup: &Path) {
    std::fs::remove_dir_all(data_dir)
        .unwrap_or_else(|e| panic!("remove {}: {e}", data_dir.display()));
    copy_dir(backup, data_dir);
}

/// A scene, a SQLite source with `rows` residents and an agent cutting batches of 10.
async fn setup(rows: i64) -> (Scene, SqliteSource, Agent) {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), rows);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(10)
            .source("rsj", "sqlite", &source.url())
            .resource(source.resource(CODE, "rsj")),
    );
    (scene, source, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_restored_from_an_older_copy_stops_instead_of_losing_rows() {
    let (scene, source, agent) = setup(100).await;
    let data_dir = scene.agent_config().data_dir;
    let backup = scene.dir.path().join("agent-data.backup");

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 100, "{out}");
    // The backup: batches 1..=10 applied, the next batch will be 11.
    copy_dir(&data_dir, &backup);

    source.insert(101, 50);
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 50, "{out}");
    // The hub has applied batches 11..=15 of this queue.
    let before = scene.hub.rows(CODE).await;
    assert_same(&before, &source.expected());

    restore(&data_dir, &backup);
    source.insert(151, 20);
    // The restored queue reads rows 101..=170 again into batches 11..=17; the hub has already
    // applied 11..=15 (with other rows), so acknowledging 11 as a resend would lose records.
    let out = agent.sync("20s").await;
    assert_ne!(
        out.code,
        Some(0),
        "a rewound queue must not sync successfully; {out}"
    );
    out.assert_mentions(&[RESTORED, &scene.hub.url()]);
    let status = agent.resource_status(CODE).await;
    assert_eq!(
        status["queued_records"], 70,
        "the records stay queued: {status}"
    );
    assert_eq!(status["pushed_records"], 100, "{status}");
    assert_same(&scene.hub.rows(CODE).await, &before);

    // Asking again does not wear the refusal down.
    let out = agent.sync("20s").await;
    assert_ne!(out.code, Some(0), "{out}");
    out.assert_mentions(&[RESTORED]);
    assert_eq!(agent.resource_status(CODE).await["queued_records"], 70);
    assert_same(&scene.hub.rows(CODE).await, &before);

    // The resource is stopped, and says what to run.
    let status = agent.resource_status(CODE).await;
    assert!(
        status["stopped"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("exchange-agent resync {CODE}"))),
        "{status}"
    );
    // The advice: resync. A new stream re-reads everything; the hub sweeps the old one.
    agent.cmd(&["resync", CODE, "--yes"]).await.assert_code(0);
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 170, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["queued_records"], 0, "{status}");
}

/// The copy is older by exactly one batch: the restored queue's first batch has the number of
/// the last batch the hub applied, but other content. A resend after a crash is byte-identical
/// (same seq, same digest); this batch is not, and acknowledging it as a resend drops the
/// records it holds that the hub's batch did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_queue_whose_first_batch_reuses_the_hubs_last_seq_loses_no_rows() {
    let (scene, source, agent) = setup(100).await;
    let data_dir = scene.agent_config().data_dir;
    let backup = scene.dir.path().join("agent-data.backup");

    agent.sync_ok().await;
    copy_dir(&data_dir, &backup);

    // Batch 11 at the hub: rows 101..=105.
    source.insert(101, 5);
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 5, "{out}");

    restore(&data_dir, &backup);
    // The restored queue's batch 11: rows 101..=110; batch 12: rows 111..=115.
    source.insert(106, 10);
    let out = agent.sync("20s").await;
    if out.code == Some(0) {
        if let Some(d) = diff(&scene.hub.rows(CODE).await, &source.expected()) {
            panic!(
                "the sync succeeded but rows are lost: batch 11 of the restored queue was acknowledged as a resend of the hub's batch 11, which held other rows.\n{d}\n{out}"
            );
        }
    } else {
        // Stopping with the advice is the other acceptable outcome.
        out.assert_mentions(&[RESTORED]);
        assert!(
            agent.resource_status(CODE).await["queued_records"]
                .as_u64()
                .is_some_and(|n| n > 0)
        );
    }
}
