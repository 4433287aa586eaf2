//! The agent killed with SIGKILL at random moments, 20 times, while it reads dropped CSV files
//! (chunks of 40 rows, so most kills land inside a file: between a chunk's commit and the
//! next, between the last chunk's commit and the file's move to `done/`, or while batches are
//! pushed), with new files dropped every round. Afterwards:
//! - the hub holds exactly the rows of every file, no key twice in its export;
//! - instrumented with triggers on the hub's SQLite store: every batch was applied once, in
//!   order, and no row was written twice (the agent neither re-read a committed chunk nor
//!   re-sent an acknowledged batch as new records); as many writes as the agent pulled;
//! - every file is in `done/`, none left in the drop directory or rejected.
//!
//! `EXCHANGE_TEST_SEED=<n>` replays the random choices; the log is `<test dir>/agent.log`.

use std::path::Path;
use std::time::{Duration, Instant};

use exchange_tests::agent::Agent;
use exchange_tests::hub_log::{
    INSTRUMENT, append, assert_applied_once_in_order, batches_applied, tail,
};
use exchange_tests::rows::{self, Rows};
use exchange_tests::scene::Scene;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const CODE: &str = "330100-TJJ-0007";
const KILLS: usize = 20;
const MAX_ROUNDS: usize = 60;
const ROWS_PER_FILE: usize = 1000;

/// Drops file `n` (complete, written under another name and renamed, as a careful sender
/// does; `settle = "0s"`), and adds its rows to `expected`.
fn drop_file(dir: &Path, n: usize, expected: &mut Rows) {
    let mut text = String::from("编号,version,内容\n");
    for i in 0..ROWS_PER_FILE {
        let key = format!("F{n:03}-{i:04}");
        text.push_str(&format!("{key},{n},第{n}批第{i}行\n"));
        expected.insert(
            key.clone(),
            rows::fields([
                ("编号", json!(key)),
                ("version", json!(n)),
                ("内容", json!(format!("第{n}批第{i}行"))),
            ]),
        );
    }
    let tmp = dir.join(format!(".{n:03}.csv.part"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{n:03}.csv"))).unwrap();
}

fn agent(scene: &Scene) -> (Agent, std::path::PathBuf) {
    let drop = scene.dir.path().join("drop");
    let dir = drop.join("stats");
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = scene.agent_config().max_records(40).to_toml();
    toml.push_str(&format!(
        r#"
[[sources]]
name = "drop"
kind = "files"
path = "{}"
settle = "0s"

[[resources]]
code = "{CODE}"
name = "统计报表"
share = "unconditional"
source = "drop"
directory = "stats"
key = "编号"
mode = "upsert"
every = "1s"

[resources.fields]
"编号" = "plain"
"version" = {{ rule = "plain", type = "int" }}
"内容" = "plain"
"#,
        drop.display()
    ));
    let config = scene.dir.path().join("agent.toml");
    std::fs::write(&config, toml).unwrap();
    (Agent::at(&config), dir)
}

fn count(hub_db: &rusqlite::Connection, sql: &str) -> i64 {
    hub_db.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_while_reading_dropped_files_loses_and_duplicates_nothing() {
    let seed: u64 = std::env::var("EXCHANGE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("file drop sigkill seed: {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let scene = Scene::start().await;
    let hub_db = rusqlite::Connection::open(scene.hub.sqlite.clone().expect("SQLite")).unwrap();
    hub_db.busy_timeout(Duration::from_secs(10)).unwrap();
    hub_db.execute_batch(INSTRUMENT).unwrap();
    let (agent, dir) = agent(&scene);
    let log = scene.dir.path().join("agent.log");
    let mut expected = Rows::new();
    let mut files = 0;
    for _ in 0..4 {
        files += 1;
        drop_file(&dir, files, &mut expected);
    }

    let (mut kills, mut rounds) = (0, 0);
    while kills < KILLS {
        rounds += 1;
        assert!(
            rounds <= MAX_ROUNDS,
            "only {kills} kills; see {}",
            log.display()
        );
        for _ in 0..rng.random_range(0..3) {
            files += 1;
            drop_file(&dir, files, &mut expected);
        }
        let config = agent.config.display().to_string();
        let args: Vec<&str> = if rounds % 4 == 0 {
            vec!["sync", "--config", &config, "--timeout", "60s"]
        } else {
            vec!["run", "--config", &config]
        };
        append(&log, &format!("--- round {rounds}: {}\n", args[0]));
        let before = batches_applied(&hub_db);
        let mut child = agent.spawn(&args, &log);
        if rng.random_bool(0.5) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..800))).await;
        } else {
            let deadline = Instant::now() + Duration::from_secs(20);
            while batches_applied(&hub_db) == before && Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        }
        match child.try_wait().unwrap() {
            Some(status) => assert!(status.success(), "{status}:\n{}", tail(&log)),
            None => {
                child.kill().await.unwrap();
                kills += 1;
            }
        }
    }

    let out = agent.sync_until_complete(Duration::from_secs(120)).await;
    eprintln!(
        "{kills} kills in {rounds} rounds, {files} files; final sync: {}",
        out.stdout.trim()
    );
    let export = scene.hub.export(CODE).await;
    let hub = rows::from_export(&export);
    assert_eq!(export.len(), hub.len(), "the export holds a key twice");
    rows::assert_same(&hub, &expected);

    assert_applied_once_in_order(&hub_db);
    let writes = count(&hub_db, "SELECT count(*) FROM test_record_writes");
    assert_eq!(writes as usize, expected.len());
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["pulled_records"], writes, "{status}");
    assert_eq!(status["queued_records"], 0, "{status}");

    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "done" && n != "rejected")
        .collect();
    assert!(
        left.is_empty(),
        "files left in the drop directory: {left:?}"
    );
    assert_eq!(std::fs::read_dir(dir.join("done")).unwrap().count(), files);
    assert_eq!(std::fs::read_dir(dir.join("rejected")).unwrap().count(), 0);
}
