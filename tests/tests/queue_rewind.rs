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

/// Sets the name of resident `id` (its cursor position, `updated_at`, stays).
fn rename(source: &SqliteSource, id: i64, name: &str) {
    source
        .conn
        .execute(
            "UPDATE residents SET name = ?1 WHERE id = ?2",
            rusqlite::params![name, id],
        )
        .expect("rename a resident");
}

/// The data directory is copied while the queue is empty (batches 1..=10 acknowledged); after
/// the copy the hub applies batches 11 (rows 101..=110) and 12 (rows 111..=120). The restored
/// queue reads rows 101..=120 again, one of them changed: its batch 11 holds other records
/// than the hub's, its batch 12 is byte for byte the hub's. The hub answers batch 11
/// `duplicate` with mark 12 and the digest of batch 12 — which the restored queue holds, but
/// never sent: acknowledging would lose the change.
async fn restore_an_empty_queue_and_regenerate_the_hubs_last_batch()
-> (Scene, SqliteSource, Agent, exchange_tests::rows::Rows) {
    let (scene, source, agent) = setup(100).await;
    let data_dir = scene.agent_config().data_dir;
    let backup = scene.dir.path().join("agent-data.backup");
    agent.sync_ok().await;
    assert_eq!(agent.resource_status(CODE).await["queued_records"], 0);
    copy_dir(&data_dir, &backup);

    source.insert(101, 10);
    agent.sync_ok().await;
    source.insert(111, 10);
    agent.sync_ok().await;
    let before = scene.hub.rows(CODE).await;
    assert_same(&before, &source.expected());

    restore(&data_dir, &backup);
    rename(&source, 105, "居民一百零五");
    (scene, source, agent, before)
}

/// Fails the test unless the resource is stopped with the rewound-queue advice, its 20
/// re-read records still queued and the hub unchanged.
async fn assert_stopped_as_rewound(
    agent: &Agent,
    hub_rows: &exchange_tests::rows::Rows,
    scene: &Scene,
) {
    let status = agent.resource_status(CODE).await;
    assert!(
        status["stopped"].as_str().is_some_and(
            |s| s.contains(RESTORED) && s.contains(&format!("exchange-agent resync {CODE}"))
        ),
        "the resource stops with the advice: {status}"
    );
    assert_eq!(
        status["queued_records"], 20,
        "the records stay queued: {status}"
    );
    assert_same(&scene.hub.rows(CODE).await, hub_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_queue_that_regenerates_the_hubs_last_batch_byte_for_byte_stops() {
    let (scene, _source, agent, before) =
        restore_an_empty_queue_and_regenerate_the_hubs_last_batch().await;
    let out = agent.sync("20s").await;
    assert_ne!(
        out.code,
        Some(0),
        "batch 11 of the restored queue must not be acknowledged as a resend; {out}"
    );
    out.assert_mentions(&[RESTORED, &scene.hub.url()]);
    assert_stopped_as_rewound(&agent, &before, &scene).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_queue_that_first_meets_a_hub_that_is_down_still_stops_when_it_is_back() {
    let (mut scene, source, agent, before) =
        restore_an_empty_queue_and_regenerate_the_hubs_last_batch().await;
    scene.hub.stop().await;
    // The restored agent pulls and tries to send while the hub is away.
    let out = agent.sync("3s").await;
    assert_ne!(out.code, Some(0), "{out}");
    assert_eq!(
        agent.resource_status(CODE).await["queued_records"],
        20,
        "the re-read rows are queued"
    );
    scene.hub.start_again().await;
    let out = agent.sync("20s").await;
    assert_ne!(out.code, Some(0), "{out}");
    out.assert_mentions(&[RESTORED]);
    assert_stopped_as_rewound(&agent, &before, &scene).await;
    // The advice delivers everything, the change included.
    agent.cmd(&["resync", CODE, "--yes"]).await.assert_code(0);
    agent.sync_ok().await;
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
}

/// The hub's store (SQLite) opened beside the hub.
fn hub_db(scene: &Scene) -> rusqlite::Connection {
    let path = scene
        .hub
        .sqlite
        .as_ref()
        .expect("the scene's hub runs on SQLite");
    let conn = rusqlite::Connection::open(path).expect("open the hub's store");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

/// The hub's mark for the resource (0: no batch yet).
fn hub_mark(conn: &rusqlite::Connection) -> u64 {
    conn.query_row(
        "SELECT COALESCE(MAX(last_seq), 0) FROM streams WHERE resource = ?1",
        [CODE],
        |r| r.get::<_, i64>(0),
    )
    .expect("read the hub's mark") as u64
}

/// The hub's store is put back to an older copy (its mark for the stream falls to 1, below any window in flight) while
/// the agent drains a backlog with batches in flight: the next answers are gaps, and the
/// resource stops saying the hub lacks batches; nothing leaves the queue unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restored_while_batches_are_in_flight_stops_the_resource() {
    const ROWS: i64 = 5000;
    let (scene, _source, agent) = setup(ROWS).await;
    let conn = hub_db(&scene);
    let sync = {
        let agent = Agent::at(&agent.config);
        tokio::spawn(async move { agent.sync("120s").await })
    };
    // A loaded machine may take a while to start the agent: a longer deadline than usual.
    exchange_tests::wait::wait_until(
        "the hub applied 10 batches",
        3 * exchange_tests::DEADLINE,
        || {
            let mark = hub_mark(&conn);
            async move { mark >= 10 }
        },
    )
    .await;
    conn.execute(
        "UPDATE streams SET last_seq = 1 WHERE resource = ?1",
        [CODE],
    )
    .expect("rewind the hub's mark");
    let out = sync.await.expect("the sync task");
    assert_ne!(
        out.code,
        Some(0),
        "a hub that lost batches is not a delivery; {out}"
    );
    out.assert_mentions(&["missing at the hub"]);
    let status = agent.resource_status(CODE).await;
    assert!(
        status["stopped"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("exchange-agent resync {CODE}"))),
        "{status}"
    );
    let queued = status["queued_records"].as_u64().unwrap_or(0);
    let pushed = status["pushed_records"].as_u64().unwrap_or(0);
    assert!(queued > 0, "{status}");
    assert_eq!(queued + pushed, ROWS as u64, "nothing dropped: {status}");
}

/// The hub's store is locked for longer than the agent's request timeout while the agent
/// drains a backlog: requests in flight time out (the hub applies some of them later) and are
/// sent again, answered `duplicate` where they were applied. Nothing stops, nothing is lost,
/// and every batch is applied exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_that_time_out_are_resent_without_stopping_losing_or_applying_twice() {
    const ROWS: i64 = 3000;
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), ROWS);
    let mut config = scene
        .agent_config()
        .max_records(10)
        .source("rsj", "sqlite", &source.url())
        .resource(source.resource(CODE, "rsj"));
    config.hub_timeout = "1s".to_owned();
    let agent = scene.write_agent(&config);
    let conn = hub_db(&scene);
    conn.execute_batch(
        "CREATE TABLE test_batches (n INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
         CREATE TRIGGER test_stream_insert AFTER INSERT ON streams BEGIN
           INSERT INTO test_batches (seq) VALUES (NEW.last_seq);
         END;
         CREATE TRIGGER test_stream_update AFTER UPDATE ON streams BEGIN
           INSERT INTO test_batches (seq) VALUES (NEW.last_seq);
         END;",
    )
    .expect("instrument the hub's store");
    let sync = {
        let agent = Agent::at(&agent.config);
        tokio::spawn(async move { agent.sync("120s").await })
    };
    exchange_tests::wait::wait_until(
        "the hub applied 3 batches",
        exchange_tests::DEADLINE,
        || {
            let mark = hub_mark(&conn);
            async move { mark >= 3 }
        },
    )
    .await;
    // The hub's writes wait for the lock (its busy timeout is 5 s) longer than the agent's
    // requests may take: the delay is the fault injected, not a wait for a condition.
    conn.execute_batch("BEGIN IMMEDIATE")
        .expect("lock the hub's store");
    std::thread::sleep(std::time::Duration::from_secs(4));
    conn.execute_batch("COMMIT")
        .expect("unlock the hub's store");

    let out = sync.await.expect("the sync task");
    assert_eq!(out.code, Some(0), "{out}");
    let status = agent.resource_status(CODE).await;
    assert!(status["stopped"].is_null(), "{status}");
    assert_eq!(status["queued_records"], 0, "{status}");
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
    let applied: Vec<i64> = conn
        .prepare("SELECT seq FROM test_batches ORDER BY n")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("read the applied batches");
    let expected: Vec<i64> = (1..=applied.len() as i64).collect();
    assert_eq!(applied, expected, "every batch applied once, in order");
    assert_eq!(applied.len() as u64, hub_mark(&conn));
    assert!(applied.len() >= (ROWS / 10) as usize, "{}", applied.len());
}
