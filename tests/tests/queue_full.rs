//! A full queue pauses pulling and drops nothing: with the hub down, the daemon pulls until
//! `queue.max_bytes` is reached and then waits; once the hub is back it drains the queue and
//! pulls the rest, and the hub ends up with exactly the source's rows.

use std::path::Path;
use std::time::Duration;

use exchange_tests::agent::{Agent, terminate};
use exchange_tests::rows::assert_same;
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::{wait_for, wait_until};
use serde_json::Value;

const CODE: &str = "330100-RSJ-0001";

/// Rows in the source: the queue holds a few dozen, so many times fewer.
const ROWS: i64 = 1000;
/// `batch.max_records`: a page of the source is this many rows.
const MAX_RECORDS: u64 = 5;
/// `batch.max_bytes` (the smallest allowed). A page of 5 residents is about 500 bytes of
/// NDJSON, so one page makes exactly one batch (checked below from the status).
const BATCH_MAX_BYTES: u64 = 1024;
/// `queue.max_bytes` (the smallest allowed: twice `batch.max_bytes`).
const QUEUE_MAX_BYTES: u64 = 2 * BATCH_MAX_BYTES;

/// The most a stored batch of `raw` bytes of NDJSON can take in the queue: the 48-byte header
/// (records, length, time, SM3; agent/src/queue.rs) and the zstd frame, at most
/// `ZSTD_COMPRESSBOUND(raw)` (this form holds for `raw` below 128 KiB).
const fn stored_batch_bound(raw: u64) -> u64 {
    let zstd_bound = raw + (raw >> 8) + ((128 * 1024 - raw) >> 11);
    48 + zstd_bound
}

/// How full the queue may get. Before each page the pull stage waits until the queue has room
/// for one batch (`queued + batch.max_bytes <= queue.max_bytes`, agent/src/pull.rs
/// `wait_for_space`) and then commits the whole page: the bound is exceeded by at most one
/// page's batches (one resource, one batch per page here).
const QUEUED_BYTES_BOUND: u64 =
    QUEUE_MAX_BYTES - BATCH_MAX_BYTES + stored_batch_bound(BATCH_MAX_BYTES);

/// How many times the daemon said that the queue is full and pulling pauses (once per
/// pause), and then that it checked again and stays paused.
fn pauses(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.matches("Queue is full; pulling pauses").count()
        + text
            .matches("Queue is still full; pulling stays paused")
            .count()
}

/// The resource's entry of a status report.
fn resource(status: &Value) -> Value {
    status["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["code"] == CODE))
        .cloned()
        .unwrap_or_else(|| panic!("status has no resource {CODE}: {status}"))
}

/// The first status the daemon writes after this call (its status file is rewritten every
/// 2 s; `at` has a resolution of one second).
async fn next_status(agent: &Agent) -> Value {
    let previous = agent.try_status().await.map(|s| s["at"].clone());
    wait_for(
        "the daemon to write its status file again",
        exchange_tests::DEADLINE,
        || async {
            agent
                .try_status()
                .await
                .filter(|s| Some(&s["at"]) != previous.as_ref())
        },
    )
    .await
}

#[track_caller]
fn assert_within_bound(r: &Value) {
    let queued_bytes = r["queued_bytes"].as_u64().expect("queued_bytes");
    assert!(
        queued_bytes <= QUEUED_BYTES_BOUND,
        "the queue holds {queued_bytes} bytes, more than queue.max_bytes ({QUEUE_MAX_BYTES}) plus one page ({QUEUED_BYTES_BOUND} in all): {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_pauses_pulling_and_drops_nothing() {
    let mut scene = Scene::with_hub_down().await;
    let source = SqliteSource::create(scene.dir.path(), ROWS);
    let mut config = scene
        .agent_config()
        .max_records(MAX_RECORDS as usize)
        .source("rsj", "sqlite", &source.url())
        .resource(source.resource(CODE, "rsj"));
    config.max_bytes = format!("{BATCH_MAX_BYTES}B");
    config.queue_max_bytes = format!("{QUEUE_MAX_BYTES}B");
    let agent = scene.write_agent(&config);
    let log = scene.dir.path().join("agent.log");
    let mut daemon = agent.spawn_run(&log);

    wait_until(
        "the daemon says the queue is full",
        exchange_tests::DEADLINE,
        || async { pauses(&log) >= 1 },
    )
    .await;
    let full = next_status(&agent).await;
    assert_eq!(full["from_daemon"], true, "{full}");
    let full = resource(&full);
    assert_within_bound(&full);
    let queued_bytes = full["queued_bytes"].as_u64().unwrap();
    assert!(
        queued_bytes + BATCH_MAX_BYTES > QUEUE_MAX_BYTES,
        "pulling pauses only when a batch no longer fits: {full}"
    );
    let pulled = full["pulled_records"].as_u64().unwrap();
    assert!(
        pulled > 0 && pulled < ROWS as u64 / 4,
        "pulling stopped long before the end of the source: {full}"
    );
    assert_eq!(full["queued_records"], pulled, "nothing was pushed: {full}");
    assert_eq!(full["pushed_records"], 0, "{full}");
    assert_eq!(
        full["queued_records"].as_u64().unwrap(),
        MAX_RECORDS * full["queued_batches"].as_u64().unwrap(),
        "one full page per batch (the bound above assumes it): {full}"
    );

    // Still paused at the next check (the pull stage looks again every 5 s): nothing more
    // was pulled.
    wait_until(
        "the daemon says again that the queue is full",
        exchange_tests::DEADLINE,
        || async { pauses(&log) >= 2 },
    )
    .await;
    let still = resource(&next_status(&agent).await);
    for field in [
        "pulled_records",
        "queued_records",
        "queued_batches",
        "queued_bytes",
    ] {
        assert_eq!(still[field], full[field], "{field}: {still}");
    }
    assert!(
        still["push_error"]
            .as_str()
            .is_some_and(|e| e.contains(&scene.hub.url())),
        "the status says why nothing is pushed: {still}"
    );

    // The hub comes back: the daemon drains the queue and pulls the rest, the queue staying
    // within its bound all along.
    scene.hub.start_again().await;
    let expected = source.expected();
    wait_until(
        "the hub holds every row of the source and the queue is empty",
        Duration::from_secs(180),
        || async {
            let Some(status) = agent.try_status().await else {
                return false;
            };
            let r = resource(&status);
            assert_within_bound(&r);
            r["queued_records"] == 0
                && r["pulled_records"] == ROWS
                && scene.hub.rows(CODE).await == expected
        },
    )
    .await;
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon exited; see {}",
        log.display()
    );
    let exit = terminate(&mut daemon).await;
    assert!(
        exit.success(),
        "the daemon stops cleanly on SIGTERM ({exit}); see {}",
        log.display()
    );
    assert_same(&scene.hub.rows(CODE).await, &expected);
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["queued_records"], 0, "{status}");
    assert_eq!(status["queued_bytes"], 0, "{status}");
    assert_eq!(status["pulled_records"], ROWS, "{status}");
    assert_eq!(status["pushed_records"], ROWS, "{status}");
}
