//! Offline exchange (docs/PROTOCOL.md §12) with the agent killed by SIGKILL at random moments,
//! 15 times, while its service writes batch files and reads answers, and a gateway carries
//! files both ways all the while (every 250 ms the outbox to the hub's import and the import,
//! every eighth time the answers to the inbox), with `resend_after = "1s"`: unanswered
//! batches are written again, so the hub meets many copies. Afterwards, with the hub's SQLite
//! store instrumented by triggers:
//! - the hub holds exactly the source's rows;
//! - every batch was applied once, in order, and no row was written twice;
//! - the agent's queue is empty: every batch left it on the hub's answer;
//! - every copy the hub did not apply is in `rejected/` as a duplicate, none for another reason.
//!
//! `EXCHANGE_TEST_SEED=<n>` replays the random choices; the log is `<test dir>/agent.log`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use exchange_hub::import::{Outcome, import};
use exchange_protocol::offline::{self, Kind};
use exchange_tests::hub_log::{INSTRUMENT, append, assert_applied_once_in_order, tail};
use exchange_tests::rows::assert_same;
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::wait_until;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CODE: &str = "330100-MZJ-0009";
const KILLS: usize = 15;

/// Moves every file of `kind` from `from` to `to`; returns how many.
fn carry(from: &Path, to: &Path, kind: Kind) -> usize {
    let files = offline::list(from, kind).unwrap_or_default();
    for f in &files {
        let _ = std::fs::rename(f, to.join(f.file_name().unwrap()));
    }
    files.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_while_exchanging_offline_loses_and_duplicates_nothing() {
    let seed: u64 = std::env::var("EXCHANGE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("offline sigkill seed: {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let scene = Arc::new(Scene::start().await);
    let hub_db = rusqlite::Connection::open(scene.hub.sqlite.clone().expect("SQLite")).unwrap();
    hub_db.busy_timeout(Duration::from_secs(10)).unwrap();
    hub_db.execute_batch(INSTRUMENT).unwrap();
    let dirs: Vec<PathBuf> = ["outbox", "inbox", "import", "answers"]
        .iter()
        .map(|d| scene.dir.path().join(d))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let source = SqliteSource::create(scene.dir.path(), 100);
    let mut config = scene
        .agent_config()
        .max_records(20)
        .offline(&dirs[0], &dirs[1])
        .source("local", "sqlite", &source.url())
        .resource(source.resource(CODE, "local"));
    // Unanswered batches are written again every second: the hub meets many copies.
    config.hub_extra.push("resend_after = \"1s\"".to_owned());
    let agent = scene.write_agent(&config);
    let log = scene.dir.path().join("agent.log");

    // The gateway and the hub's import, all the while.
    let stop = Arc::new(AtomicBool::new(false));
    let gateway = {
        let (scene, dirs, stop) = (scene.clone(), dirs.clone(), stop.clone());
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut cycle = 0u32;
            while !stop.load(Ordering::Relaxed) {
                cycle += 1;
                carry(&dirs[0], &dirs[2], Kind::Batch);
                let report = import(&scene.hub.config, &scene.hub.store, &dirs[2], &dirs[3])
                    .await
                    .expect("import");
                outcomes.extend(report.files.into_iter().map(|f| f.outcome));
                // Answers travel more slowly than batches: batches the hub has are written
                // again by a restarted agent, and imported as duplicates.
                if cycle.is_multiple_of(8) {
                    carry(&dirs[3], &dirs[1], Kind::Answer);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            outcomes
        })
    };

    let mut next = 101;
    let mut kills = 0;
    let mut rounds = 0;
    while kills < KILLS {
        rounds += 1;
        assert!(rounds <= 40, "only {kills} kills; see {}", log.display());
        let n = rng.random_range(0..60);
        source.insert(next, n);
        next += n;
        append(&log, &format!("--- round {rounds}\n"));
        let mut child = agent.spawn_run(&log);
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..900))).await;
        match child.try_wait().unwrap() {
            Some(status) => panic!("the service ended: {status}:\n{}", tail(&log)),
            None => {
                child.kill().await.unwrap();
                kills += 1;
            }
        }
    }

    // Left running, the service and the gateway finish the exchange.
    let mut child = agent.spawn_run(&log);
    let expected = source.expected();
    wait_until(
        "the hub holds every row and the queue is empty",
        Duration::from_secs(90),
        || {
            let (scene, agent, expected) = (&scene, &agent, &expected);
            async move {
                scene.hub.rows(CODE).await.len() == expected.len()
                    && agent.queued_batches(CODE).await == Some(0)
            }
        },
    )
    .await;
    exchange_tests::agent::terminate(&mut child).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = gateway.await.unwrap();
    assert_same(&scene.hub.rows(CODE).await, &expected);

    let batches = assert_applied_once_in_order(&hub_db);
    let applied = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Applied { .. }))
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Duplicate { .. }))
        .count();
    let other: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| {
            !matches!(
                o,
                Outcome::Applied { .. } | Outcome::Duplicate { .. } | Outcome::Waiting { .. }
            )
        })
        .collect();
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(applied, batches);
    eprintln!(
        "{kills} kills in {rounds} rounds, {} rows; {applied} batches applied, {duplicates} copies imported as duplicates",
        expected.len()
    );
}
