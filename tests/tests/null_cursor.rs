//! Rows whose cursor column is NULL have no place in the cursor order: no page delivers them
//! (pages filter them out). They must not vanish silently, nor stop the resource: every cycle
//! counts them and keeps them in quarantine, with their key.

use exchange_tests::agent::{Mode, Resource, pulled};
use exchange_tests::db::PgDb;
use exchange_tests::rows::{self, Rows};
use exchange_tests::scene::Scene;
use serde_json::json;

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

/// A first read that meets nothing but NULL-cursor rows, more of them than a page: they are
/// quarantined and counted, and the resource keeps flowing (a page made wholly of them used to
/// stop it: "a whole page … has NULL cursor values").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_first_read_of_more_null_cursor_rows_than_a_page_keeps_the_resource_flowing() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    // A version column the application fills in later: NULL for now, on every row.
    db.client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, note text NOT NULL, version bigint);
             INSERT INTO events SELECT g, 'n' || g, NULL FROM generate_series(1, 25) g;",
        )
        .await
        .unwrap();
    let mut resource = Resource::incremental(CODE, "hr", "events", "id").fields(&[
        ("id", "plain"),
        ("note", "plain"),
        ("version", "plain"),
    ]);
    resource.mode = Mode::Incremental(vec!["version".into()]);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(10)
            .source("hr", "postgres", &db.url)
            .resource(resource),
    );

    for cycle in 1..=2 {
        if cycle == 2 {
            // Rows with a version arrive; the NULL ones are still there.
            db.client
                .batch_execute(
                    "INSERT INTO events SELECT g, 'n' || g, g FROM generate_series(26, 30) g",
                )
                .await
                .unwrap();
        }
        let out = agent.sync_ok().await;
        out.assert_mentions(&["quarantined 25 rows"]);
        assert_eq!(pulled(&out, CODE), if cycle == 1 { 0 } else { 5 }, "{out}");
        let status = agent.resource_status(CODE).await;
        assert_eq!(status["quarantined"], 25, "cycle {cycle}: {status}");
        assert!(status["stopped"].is_null(), "{status}");
        let recent = status["recent_quarantine"].as_array().unwrap();
        assert!(
            recent.iter().all(
                |q| q["times"] == cycle && q["reason"].as_str().unwrap().contains("`version`")
            ),
            "{status}"
        );
    }
    let hub = scene.hub.rows(CODE).await;
    let keys: Vec<&String> = hub.keys().collect();
    assert_eq!(
        keys,
        ["26", "27", "28", "29", "30"],
        "only rows with a version"
    );

    // Given a version, they are delivered.
    db.client
        .batch_execute("UPDATE events SET version = 100 + id WHERE version IS NULL")
        .await
        .unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 25, "{out}");
    let expected: Rows = db
        .client
        .query("SELECT id, note, version FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let fields = rows::fields([
                ("id", json!(id)),
                ("note", json!(r.get::<_, String>(1))),
                ("version", json!(r.get::<_, i64>(2))),
            ]);
            (id.to_string(), fields)
        })
        .collect();
    assert_eq!(expected.len(), 30);
    rows::assert_same(&scene.hub.rows(CODE).await, &expected);
}
