//! The agent killed with SIGKILL at random moments, at least 20 times, while it delivers a
//! PostgreSQL table of 50,000 rows (no index on its cursor columns) that two writers keep
//! inserting into and updating. The hub runs throughout. Afterwards the hub holds exactly the
//! source's rows, nothing lost and
//! nothing applied twice:
//! - the export equals the source (every key, every field, the row versions included);
//! - no key appears twice in the export;
//! - instrumented with triggers on the hub's SQLite store: every batch sequence number was
//!   applied exactly once and in order, no row version was written twice, and the number of
//!   record writes equals what the agent says it pulled and pushed.
//!
//! The random choices come from a seed printed at the start; `EXCHANGE_TEST_SEED=<n>` replays
//! a run. The agent's log is `<test dir>/agent.log` (`EXCHANGE_TEST_KEEP=1` keeps it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use exchange_tests::agent::{Agent, Resource};
use exchange_tests::db::{PgDb, pg_connect};
use exchange_tests::hub_log::{INSTRUMENT, append, batches_applied, tail};
use exchange_tests::rows::{self, Rows, assert_same};
use exchange_tests::scene::Scene;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const CODE: &str = "330100-RSJ-0050";
const INITIAL_ROWS: i64 = 50_000;
const KILLS: usize = 30;
const MAX_ROUNDS: usize = 80;

/// What the writers did.
#[derive(Default)]
struct WriterStats {
    /// Transactions committed.
    commits: AtomicU64,
    /// Rows inserted (committed).
    inserted: AtomicU64,
    /// Row updates (committed).
    updated: AtomicU64,
    /// Transactions that failed (deadlock) and were rolled back.
    failed: AtomicU64,
}

/// Inserts new rows (ids from `first_id`) and bumps random existing rows (`version + 1`,
/// `updated_at = now()`), in small transactions, some of them held open for a while, until
/// `stop`.
async fn writer(
    url: String,
    first_id: i64,
    seed: u64,
    stop: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
) {
    let mut client = pg_connect(&url).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_id = first_id;
    while !stop.load(Ordering::Relaxed) {
        let inserts: i64 = rng.random_range(0..=15);
        let mut ids: Vec<i64> = (0..rng.random_range(1..=15))
            .map(|_| rng.random_range(1..=INITIAL_ROWS))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let hold = rng
            .random_bool(0.08)
            .then(|| Duration::from_millis(rng.random_range(100..800)));
        let pause = Duration::from_millis(rng.random_range(5..40));
        let result: Result<(), tokio_postgres::Error> = async {
            let tx = client.transaction().await?;
            tx.execute(
                "INSERT INTO items (id, version, payload, secret)
                 SELECT g, 1, 'new ' || g, 'secret' FROM generate_series($1::int8, $2::int8) g",
                &[&next_id, &(next_id + inserts - 1)],
            )
            .await?;
            tx.execute(
                "UPDATE items SET version = version + 1, payload = 'v' || (version + 1) || ' of ' || id, updated_at = now()
                 WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
            if let Some(hold) = hold {
                // A transaction that stays open while others commit after it.
                tokio::time::sleep(hold).await;
            }
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => {
                next_id += inserts;
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.inserted.fetch_add(inserts as u64, Ordering::Relaxed);
                stats.updated.fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                // Two writers may deadlock on the same rows; PostgreSQL rolls one back.
                eprintln!("writer transaction rolled back: {e}");
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(pause).await;
    }
}

async fn expected(db: &PgDb) -> Rows {
    db.client
        .query("SELECT id, version, payload, updated_at FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            (
                id.to_string(),
                rows::fields([
                    ("id", json!(id)),
                    ("version", json!(r.get::<_, i32>(1))),
                    ("payload", json!(r.get::<_, String>(2))),
                    (
                        "updated_at",
                        rows::timestamptz(r.get::<_, DateTime<Utc>>(3)),
                    ),
                ]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_killed_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let started = Instant::now();
    let seed: u64 = std::env::var("EXCHANGE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("sigkill test seed: {seed} (EXCHANGE_TEST_SEED={seed} replays the same choices)");
    let mut rng = StdRng::seed_from_u64(seed);

    let scene = Scene::start().await;
    let hub_db_path = scene.hub.sqlite.clone().expect("a SQLite store");
    let hub_db = rusqlite::Connection::open(&hub_db_path).unwrap();
    hub_db.busy_timeout(Duration::from_secs(10)).unwrap();
    hub_db.execute_batch(INSTRUMENT).unwrap();

    let db = PgDb::create().await;
    db.client
        .batch_execute(&format!(
            "CREATE TABLE items (
                id bigint PRIMARY KEY,
                version int NOT NULL,
                payload text NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now(),
                secret text
             );
             -- No index on the cursor, as on most business tables: each pull is one
             -- statement, committed a chunk at a time, and the kills land inside them.
             -- Groups of up to 7 rows share a timestamp.
             INSERT INTO items (id, version, payload, updated_at, secret)
             SELECT g, 1, 'initial ' || g, now() - interval '1 hour' + (g / 7) * interval '1 ms', 'secret'
             FROM generate_series(1, {INITIAL_ROWS}) g;"
        ))
        .await
        .unwrap();

    let mut resource = Resource::incremental(CODE, "hr", "items", "id").fields(&[
        ("id", "plain"),
        ("version", "plain"),
        ("payload", "plain"),
        ("updated_at", "plain"),
        ("secret", "drop"),
    ]);
    resource.every = "1s".into();
    let agent: Agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(500)
            .source("hr", "postgres", &db.url)
            .resource(resource),
    );
    let log = scene.dir.path().join("agent.log");

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(WriterStats::default());
    let writers: Vec<_> = [1_000_000i64, 2_000_000]
        .into_iter()
        .map(|first| {
            tokio::spawn(writer(
                db.url.clone(),
                first,
                rng.random(),
                stop.clone(),
                stats.clone(),
            ))
        })
        .collect();

    let mut kills = 0;
    let mut kills_before_ack = 0;
    let mut rounds = 0;
    while kills < KILLS {
        rounds += 1;
        assert!(
            rounds <= MAX_ROUNDS,
            "only {kills} kills in {MAX_ROUNDS} rounds; see {}",
            log.display()
        );
        let config = agent.config.display().to_string();
        // Mostly the daemon; every third round a `sync` process.
        let args: Vec<&str> = if rounds % 3 == 0 {
            vec!["sync", "--config", &config, "--timeout", "60s"]
        } else {
            vec!["run", "--config", &config]
        };
        append(
            &log,
            &format!("--- round {rounds}: exchange-agent {}\n", args[0]),
        );
        let applied_before = batches_applied(&hub_db);
        let mut child = agent.spawn(&args, &log);
        // The moment of the kill: either any time in the first 1.5 s (start-up, pulling,
        // pushing), or shortly after the hub applied one of this process's batches (when the
        // next batch is in flight and acknowledgements are being recorded).
        if rng.random_bool(0.5) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(20..1500))).await;
        } else {
            let deadline = Instant::now() + Duration::from_secs(30);
            while batches_applied(&hub_db) == applied_before && Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..250))).await;
        }
        match child.try_wait().unwrap() {
            Some(status) => {
                // A sync may finish before the kill: fine if it succeeded.
                assert!(
                    status.success(),
                    "exchange-agent {} failed on its own ({status}):\n{}",
                    args[0],
                    tail(&log)
                );
            }
            None => {
                child.kill().await.unwrap();
                kills += 1;
                // Diagnostics: did this kill fall between the hub's commit of a batch and the
                // agent's recording of its acknowledgement? (The next run resends that batch
                // and the hub must deduplicate it.)
                let status = agent.resource_status(CODE).await;
                let writes: i64 = hub_db
                    .query_row("SELECT count(*) FROM test_record_writes", [], |r| r.get(0))
                    .unwrap();
                if status["pushed_records"].as_i64() < Some(writes) {
                    kills_before_ack += 1;
                }
            }
        }
        scene.hub.assert_running();
    }
    let kill_phase = started.elapsed();

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let commits = stats.commits.load(Ordering::Relaxed);
    let inserted = stats.inserted.load(Ordering::Relaxed);
    let updated = stats.updated.load(Ordering::Relaxed);
    eprintln!(
        "{kills} kills in {rounds} rounds ({kill_phase:?}), {kills_before_ack} of them after the hub committed a batch and before the agent recorded its acknowledgement; writers committed {commits} transactions: {inserted} inserts, {updated} updates ({} rolled back)",
        stats.failed.load(Ordering::Relaxed)
    );
    assert!(
        inserted > 0 && updated > 0,
        "the writers did not write concurrently"
    );

    // Everything the source holds now reaches the hub.
    let out = agent.sync_until_complete(Duration::from_secs(120)).await;
    eprintln!("final sync: {}", out.stdout.trim());
    let source = expected(&db).await;
    assert_eq!(source.len() as i64, INITIAL_ROWS + inserted as i64);
    let export = scene.hub.export(CODE).await;
    let hub = rows::from_export(&export); // fails on a duplicate key
    assert_eq!(export.len(), hub.len(), "the export holds a key twice");
    assert_same(&hub, &source);

    // One queue, whose batches were each applied exactly once, in order, without gaps.
    let streams: i64 = hub_db
        .query_row("SELECT count(*) FROM streams", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        streams, 1,
        "the agent's queue was recreated (a new stream id)"
    );
    let mut stmt = hub_db
        .prepare("SELECT seq FROM test_batches ORDER BY n")
        .unwrap();
    let seqs: Vec<i64> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let in_order: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert!(
        seqs == in_order,
        "batches were not applied exactly once each, in order: {} applications, first anomaly at position {:?}",
        seqs.len(),
        seqs.iter().zip(&in_order).position(|(a, b)| a != b)
    );

    // No row version written twice; as many writes as the agent pulled and pushed.
    let duplicates: i64 = hub_db
        .query_row(
            "SELECT count(*) FROM (SELECT key, version FROM test_record_writes GROUP BY key, version HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        duplicates, 0,
        "{duplicates} row versions were delivered more than once"
    );
    let writes: i64 = hub_db
        .query_row("SELECT count(*) FROM test_record_writes", [], |r| r.get(0))
        .unwrap();
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["queued_records"], 0, "{status}");
    assert_eq!(
        status["pulled_records"], writes,
        "records pulled vs written by the hub: {status}"
    );
    assert_eq!(
        status["pushed_records"], writes,
        "records acknowledged vs written by the hub: {status}"
    );
    eprintln!(
        "{writes} record writes in {} batches; total {:?}",
        seqs.len(),
        started.elapsed()
    );
}
