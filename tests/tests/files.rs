//! What the agent leaves on disk: a data directory only its user may enter, files only its
//! user may read, and no raw identifier in `status.json` (the cursor's key tiebreaker is a
//! 公民身份号码 here).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use exchange_tests::agent::{Resource, terminate};
use exchange_tests::scene::Scene;
use exchange_tests::wait::wait_until;

const CODE: &str = "330100-RSJ-0060";
const IDS: [&str; 4] = [
    "11010519491231002X",
    "440524188001010014",
    "321083197812162119",
    "34052419800101001X",
];

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_is_owner_only_and_status_holds_no_identifier() {
    let scene = Scene::start().await;
    let db = scene.dir.path().join("people.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE people (id_no TEXT PRIMARY KEY, name TEXT NOT NULL, updated_at TEXT NOT NULL);",
    )
    .unwrap();
    for (i, id) in IDS.iter().enumerate() {
        conn.execute(
            "INSERT INTO people VALUES (?1, ?2, datetime('2024-01-01', '+' || ?3 || ' seconds'))",
            rusqlite::params![id, format!("居民{i}"), i],
        )
        .unwrap();
    }
    let config = scene
        .agent_config()
        .source("local", "sqlite", &format!("sqlite://{}", db.display()))
        .resource(
            Resource::incremental(CODE, "local", "people", "id_no").fields(&[
                ("id_no", "plain"),
                ("name", "plain"),
                ("updated_at", "plain"),
            ]),
        );
    let data_dir = config.data_dir.clone();
    let agent = scene.write_agent(&config);
    let log = scene.dir.path().join("agent.log");
    let mut daemon = agent.spawn_run(&log);
    let status_file = data_dir.join("status.json");
    wait_until(
        "the daemon delivered everything",
        Duration::from_secs(60),
        || {
            let status_file = status_file.clone();
            async move {
                std::fs::read_to_string(&status_file)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .is_some_and(|s| s["resources"][0]["pushed_records"] == IDS.len())
            }
        },
    )
    .await;

    assert_eq!(mode(&data_dir), 0o700);
    for file in [
        "queue.redb",
        "status.json",
        "control.sock",
        "audit.jsonl",
        "audit.head",
    ] {
        assert_eq!(mode(&data_dir.join(file)), 0o600, "{file}");
    }
    let status = std::fs::read_to_string(&status_file).unwrap();
    for id in IDS {
        assert!(
            !status.contains(id),
            "status.json shows the identifier {id}:\n{status}"
        );
    }
    let parsed: serde_json::Value = serde_json::from_str(&status).unwrap();
    // The service keeps it in both languages (`status` prints the reader's).
    let cursor = parsed["resources"][0]["cursor"]["en"].as_str().unwrap();
    assert!(cursor.starts_with("updated_at = 2024-01-01"), "{cursor}");
    assert!(cursor.contains("not shown"), "{cursor}");
    let zh = parsed["resources"][0]["cursor"]["zh"].as_str().unwrap();
    assert!(zh.contains("未显示"), "{zh}");
    terminate(&mut daemon).await;

    // An operator command leaves an owner-only audit log.
    agent
        .cmd(&["quarantine", "clear", CODE, "--yes"])
        .await
        .assert_code(0);
    assert_eq!(mode(&data_dir.join("audit.jsonl")), 0o600);
    let out = agent.status().await.to_string();
    for id in IDS {
        assert!(!out.contains(id), "status shows the identifier {id}: {out}");
    }
}
