//! A transaction that commits late is not skipped: while a transaction that inserted a row
//! stamped `now()` is still open, rows committed after it must not move the agent's cursor
//! past the open transaction's timestamp. After it commits, the next sync delivers everything.

use std::time::Duration;

use chrono::NaiveDateTime;
use exchange_tests::agent::{Resource, pulled};
use exchange_tests::db::{MyDb, PgDb};
use exchange_tests::rows::{self, Rows, assert_same};
use exchange_tests::scene::Scene;
use mysql_async::prelude::Queryable;
use serde_json::json;

const CODE: &str = "330100-RSJ-0009";
const FIELDS: &[(&str, &str)] = &[("id", "plain"), ("note", "plain"), ("updated_at", "plain")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_late_commit_is_not_skipped() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, note text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO events (id, note, updated_at)
             SELECT g, 'early ' || g, now() - interval '1 hour' + g * interval '1 ms' FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("hr", "postgres", &db.url)
            .resource(Resource::incremental(CODE, "hr", "events", "id").fields(FIELDS)),
    );

    // A transaction opens and inserts a row stamped with its start; it stays open.
    let late = db.session().await;
    late.batch_execute("BEGIN; INSERT INTO events (id, note) VALUES (1000, 'late');")
        .await
        .unwrap();
    // Other transactions commit rows stamped after it.
    db.client
        .batch_execute("INSERT INTO events (id, note) SELECT g, 'after ' || g FROM generate_series(1001, 1010) g")
        .await
        .unwrap();

    // `sync` promises every row committed before it started: the open transaction holds
    // that back, so it waits, says for what, and fails when its wait runs out.
    let out = agent.cmd(&["sync", "--wait", "3s"]).await;
    assert_ne!(out.code, Some(0), "{out}");
    out.assert_mentions(&["held back by a transaction open on `hr` since"]);
    let hub = scene.hub.rows(CODE).await;
    let early: Rows = db
        .events()
        .await
        .into_iter()
        .filter(|(k, _)| k.parse::<i64>().unwrap() <= 100)
        .collect();
    assert_same(&hub, &early);
    assert_eq!(pulled(&out, CODE), 100, "the counts are true: {out}");

    // Still open: another sync moves nothing past it.
    let out = agent.cmd(&["sync", "--wait", "1s"]).await;
    assert_ne!(out.code, Some(0), "{out}");
    assert_eq!(pulled(&out, CODE), 0, "{out}");

    late.batch_execute("COMMIT").await.unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(
        pulled(&out, CODE),
        11,
        "the late row and the rows after it; {out}"
    );
    assert_same(&scene.hub.rows(CODE).await, &db.events().await);
}

async fn my_expected(db: &MyDb) -> Rows {
    let mut conn = db.conn().await;
    let rows: Vec<(i64, String, String)> = conn
        .query("SELECT id, note, DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%s.%f') FROM events")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    rows.into_iter()
        .map(|(id, note, at)| {
            let at = NaiveDateTime::parse_from_str(&at, "%Y-%m-%dT%H:%M:%S%.f").unwrap();
            (
                id.to_string(),
                rows::fields([
                    ("id", json!(id)),
                    ("note", json!(note)),
                    ("updated_at", rows::timestamp(at)),
                ]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_late_commit_is_not_skipped() {
    let scene = Scene::start().await;
    let db = MyDb::create().await;
    let mut conn = db.conn().await;
    conn.query_drop(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, note VARCHAR(64) NOT NULL, updated_at DATETIME(6) NOT NULL DEFAULT NOW(6)) ENGINE=InnoDB",
    )
    .await
    .unwrap();
    conn.query_drop(
        "INSERT INTO events (id, note, updated_at)
         SELECT seq, CONCAT('early ', seq), NOW(6) - INTERVAL 1 HOUR + INTERVAL seq MICROSECOND FROM seq_1_to_100",
    )
    .await
    .unwrap();
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("hr", "mysql", &db.url)
            .resource(Resource::incremental(CODE, "hr", "events", "id").fields(FIELDS)),
    );

    let mut late = db.conn().await;
    late.query_drop("START TRANSACTION").await.unwrap();
    late.query_drop("INSERT INTO events (id, note) VALUES (1000, 'late')")
        .await
        .unwrap();
    // Other transactions commit rows stamped after it.
    conn.query_drop(
        "INSERT INTO events (id, note) SELECT seq, CONCAT('after ', seq) FROM seq_1001_to_1010",
    )
    .await
    .unwrap();

    // The early rows arrive, but `sync` cannot promise the rows committed before it started
    // while the transaction is open: it fails when its wait runs out, naming the source.
    // (Another test's transaction on the same server may hold the horizon back too: sync
    // until the early rows are there.)
    let early: Rows = my_expected(&db)
        .await
        .into_iter()
        .filter(|(k, _)| k.parse::<i64>().unwrap() <= 100)
        .collect();
    let started = std::time::Instant::now();
    loop {
        let out = agent.cmd(&["sync", "--wait", "3s"]).await;
        assert_ne!(out.code, Some(0), "{out}");
        out.assert_mentions(&["held back by a transaction open on `hr` since"]);
        if rows::diff(&scene.hub.rows(CODE).await, &early).is_none() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the early rows did not arrive: {out}"
        );
    }
    // Neither the late row nor the rows after it got past the open transaction.
    let out = agent.cmd(&["sync", "--wait", "1s"]).await;
    assert_eq!(pulled(&out, CODE), 0, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &early);

    late.query_drop("COMMIT").await.unwrap();
    late.disconnect().await.unwrap();
    scene
        .sync_until_equal(
            &agent,
            CODE,
            &my_expected(&db).await,
            Duration::from_secs(90),
        )
        .await;
    let status = agent.resource_status(CODE).await;
    assert_eq!(
        status["pulled_records"], 111,
        "every row read exactly once: {status}"
    );
    conn.disconnect().await.unwrap();
}
