//! Rows whose cursor column is NULL have no place in the cursor order: no page delivers them
//! (PostgreSQL's `(NULL, id) > (…)` is never true once a cursor is stored). They must not
//! vanish silently: every cycle counts them and keeps them in quarantine, with their key.

use exchange_tests::agent::Resource;
use exchange_tests::db::PgDb;
use exchange_tests::scene::Scene;

const CODE: &str = "330100-RSJ-0050";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_null_cursor_rows_beyond_the_first_page_are_quarantined_and_counted_every_cycle() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, note text NOT NULL, updated_at timestamptz);
             INSERT INTO events SELECT g, 'n' || g, now() - interval '1 hour' + g * interval '1 ms'
             FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(10)
            .source("hr", "postgres", &db.url)
            .resource(Resource::incremental(CODE, "hr", "events", "id").fields(&[
                ("id", "plain"),
                ("note", "plain"),
                ("updated_at", "plain"),
            ])),
    );
    agent.sync_ok().await;
    assert_eq!(scene.hub.rows(CODE).await.len(), 30);

    // The cursor is past the first pages now; three rows arrive without a timestamp.
    db.client
        .batch_execute(
            "INSERT INTO events VALUES (31, 'a', NULL), (32, 'b', NULL), (33, 'c', NULL)",
        )
        .await
        .unwrap();
    for cycle in 1..=2 {
        let out = agent.sync_ok().await;
        out.assert_mentions(&[&format!("{CODE}: pulled 0 records, quarantined 3 rows")]);
        let status = agent.resource_status(CODE).await;
        assert_eq!(status["quarantined"], 3, "cycle {cycle}: {status}");
        let recent = status["recent_quarantine"].as_array().unwrap();
        let mut keys: Vec<&str> = recent.iter().filter_map(|q| q["key"].as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["31", "32", "33"], "{status}");
        assert!(
            recent.iter().all(
                |q| q["times"] == cycle && q["reason"].as_str().unwrap().contains("updated_at")
            ),
            "{status}"
        );
    }
    assert_eq!(
        scene.hub.rows(CODE).await.len(),
        30,
        "nothing with a NULL cursor is delivered"
    );

    // Fixed at the source: delivered, and the quarantine can be cleared.
    db.client
        .batch_execute("UPDATE events SET updated_at = now() WHERE updated_at IS NULL")
        .await
        .unwrap();
    agent.sync_ok().await;
    assert_eq!(scene.hub.rows(CODE).await.len(), 33);
    agent
        .cmd(&["quarantine", "clear", CODE, "--yes"])
        .await
        .assert_code(0);
    assert_eq!(agent.resource_status(CODE).await["quarantined"], 0);
}
