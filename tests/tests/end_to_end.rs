//! End to end: a business table in PostgreSQL, MariaDB or SQLite → `exchange-agent sync` → the
//! reference hub; the hub's export equals the source exactly (keys and field values; the
//! dropped field never arrives). Also snapshot mode (updates and deletes) and many rows sharing
//! one timestamp.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use exchange_tests::agent::{Resource, pulled};
use exchange_tests::db::{MyDb, PgDb};
use exchange_tests::rows::{self, Rows, assert_same};
use exchange_tests::scene::Scene;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

const CODE: &str = "330100-RSJ-0001";
const FIELDS: &[(&str, &str)] = &[
    ("id", "plain"),
    ("name", "plain"),
    ("amount", "plain"),
    ("updated_at", "plain"),
    ("secret", "drop"),
];

/// `people` in PostgreSQL: `n` rows from id `from`, every fifth name NULL, Chinese names.
async fn pg_people(db: &PgDb, from: i64, n: i64) {
    db.client
        .execute(
            "INSERT INTO people (id, name, amount, updated_at, secret)
             SELECT g, CASE WHEN g % 5 = 0 THEN NULL ELSE '居民' || g || '号' END,
                    (g * 1.25)::numeric(12,2),
                    timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' + (g % 7) * interval '1 microsecond',
                    'secret ' || g
             FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) g",
            &[&from, &n],
        )
        .await
        .unwrap();
}

async fn pg_expected(db: &PgDb) -> Rows {
    let rows = db
        .client
        .query("SELECT id, name, amount::text, updated_at FROM people", &[])
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let fields = rows::fields([
                ("id", json!(id)),
                (
                    "name",
                    r.get::<_, Option<String>>(1)
                        .map_or(Value::Null, Value::String),
                ),
                ("amount", Value::String(r.get(2))),
                (
                    "updated_at",
                    rows::timestamptz(r.get::<_, DateTime<Utc>>(3)),
                ),
            ]);
            (id.to_string(), fields)
        })
        .collect()
}

const PG_TABLE: &str = "CREATE TABLE people (
    id bigint PRIMARY KEY,
    name text,
    amount numeric(12,2) NOT NULL,
    updated_at timestamptz NOT NULL,
    secret text
)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_table_arrives_at_the_hub_exactly() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client.batch_execute(PG_TABLE).await.unwrap();
    pg_people(&db, 1, 3000).await;
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("hr", "postgres", &db.url)
            .resource(Resource::incremental(CODE, "hr", "people", "id").fields(FIELDS)),
    );

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 3000, "{out}");
    let hub = scene.hub.rows(CODE).await;
    assert_same(&hub, &pg_expected(&db).await);
    assert!(
        hub.values().all(|f| !f.contains_key("secret")),
        "a dropped field reached the hub"
    );

    // Nothing new: nothing is pulled again.
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_sharing_one_timestamp_all_arrive_exactly_once() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client.batch_execute(PG_TABLE).await.unwrap();
    db.client
        .batch_execute(
            "INSERT INTO people (id, name, amount, updated_at, secret)
             SELECT g, '同一时刻' || g, g, timestamptz '2024-03-01 08:00:00+08', 's'
             FROM generate_series(1, 12000) g",
        )
        .await
        .unwrap();
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(1000)
            .source("hr", "postgres", &db.url)
            .resource(Resource::incremental(CODE, "hr", "people", "id").fields(FIELDS)),
    );

    let out = agent.sync_ok().await;
    assert_eq!(
        pulled(&out, CODE),
        12000,
        "every row read exactly once; {out}"
    );
    assert_same(&scene.hub.rows(CODE).await, &pg_expected(&db).await);
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["pulled_records"], 12000, "{status}");
    assert_eq!(status["pushed_records"], 12000, "{status}");

    // Rows added later with the same timestamp and higher ids are not lost either.
    db.client
        .batch_execute(
            "INSERT INTO people (id, name, amount, updated_at, secret)
             SELECT g, '同一时刻' || g, g, timestamptz '2024-03-01 08:00:00+08', 's'
             FROM generate_series(12001, 12500) g",
        )
        .await
        .unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 500, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &pg_expected(&db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_snapshot_delivers_updates_and_deletes() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client.batch_execute(PG_TABLE).await.unwrap();
    pg_people(&db, 1, 2000).await;
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(500)
            .source("hr", "postgres", &db.url)
            .resource(Resource::snapshot(CODE, "hr", "people", "id").fields(FIELDS)),
    );

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 2000, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &pg_expected(&db).await);

    let out = agent.sync_ok().await;
    assert_eq!(
        pulled(&out, CODE),
        0,
        "an unchanged table sends nothing; {out}"
    );

    // 100 updates (one of them only in the dropped field, which is not a change), 50 deletes,
    // 70 inserts.
    db.client
        .batch_execute(
            "UPDATE people SET name = '改名' || id, amount = amount + 1 WHERE id BETWEEN 101 AND 200;
             UPDATE people SET secret = 'changed' WHERE id = 300;
             DELETE FROM people WHERE id BETWEEN 1001 AND 1050;",
        )
        .await
        .unwrap();
    pg_people(&db, 5001, 70).await;
    let out = agent.sync_ok().await;
    assert_eq!(
        pulled(&out, CODE),
        100 + 50 + 70,
        "only the changes are sent; {out}"
    );
    assert_same(&scene.hub.rows(CODE).await, &pg_expected(&db).await);

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 0, "{out}");
}

// ---------------------------------------------------------------------------------------
// MariaDB

const MY_TABLE: &str = "CREATE TABLE people (
    id BIGINT PRIMARY KEY,
    name VARCHAR(64) CHARACTER SET utf8mb4,
    amount DECIMAL(12,2) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    secret VARCHAR(64),
    KEY (updated_at, id)
)";

/// `people` in MariaDB: ids `from..from+n`, every fifth name NULL, stamps in the past (so the
/// server-wide horizon of other tests' transactions does not hold them back).
async fn my_people(db: &MyDb, from: i64, n: i64) {
    let mut conn = db.conn().await;
    let mut values = Vec::new();
    for id in from..from + n {
        let name = if id % 5 == 0 {
            "NULL".to_owned()
        } else {
            format!("'居民{id}号'")
        };
        values.push(format!(
            "({id}, {name}, {}.{:02}, TIMESTAMP'2024-01-01 00:00:00' + INTERVAL {id} SECOND + INTERVAL {} MICROSECOND, 'secret {id}')",
            id * 5 / 4,
            (id * 25) % 100,
            id % 7
        ));
    }
    for chunk in values.chunks(1000) {
        conn.query_drop(format!(
            "INSERT INTO people (id, name, amount, updated_at, secret) VALUES {}",
            chunk.join(",")
        ))
        .await
        .unwrap();
    }
    conn.disconnect().await.unwrap();
}

async fn my_expected(db: &MyDb) -> Rows {
    let mut conn = db.conn().await;
    let rows: Vec<(i64, Option<String>, String, String)> = conn
        .query("SELECT id, name, CAST(amount AS CHAR), DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%s.%f') FROM people")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    rows.into_iter()
        .map(|(id, name, amount, updated_at)| {
            let fields = rows::fields([
                ("id", json!(id)),
                ("name", name.map_or(Value::Null, Value::String)),
                ("amount", Value::String(amount)),
                (
                    "updated_at",
                    rows::timestamp(
                        NaiveDateTime::parse_from_str(&updated_at, "%Y-%m-%dT%H:%M:%S%.f").unwrap(),
                    ),
                ),
            ]);
            (id.to_string(), fields)
        })
        .collect()
}

const MY_DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_table_arrives_at_the_hub_exactly() {
    let scene = Scene::start().await;
    let db = MyDb::create().await;
    db.conn().await.query_drop(MY_TABLE).await.unwrap();
    my_people(&db, 1, 3000).await;
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("hr", "mysql", &db.url)
            .resource(Resource::incremental(CODE, "hr", "people", "id").fields(FIELDS)),
    );

    scene
        .sync_until_equal(&agent, CODE, &my_expected(&db).await, MY_DEADLINE)
        .await;
    let hub = scene.hub.rows(CODE).await;
    assert!(
        hub.values().all(|f| !f.contains_key("secret")),
        "a dropped field reached the hub"
    );
    let status = agent.resource_status(CODE).await;
    assert_eq!(
        status["pulled_records"], 3000,
        "every row read exactly once: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_rows_sharing_one_timestamp_all_arrive_exactly_once() {
    let scene = Scene::start().await;
    let db = MyDb::create().await;
    let mut conn = db.conn().await;
    conn.query_drop(MY_TABLE).await.unwrap();
    conn.query_drop(
        "INSERT INTO people (id, name, amount, updated_at, secret)
         SELECT seq, CONCAT('同一时刻', seq), seq, '2024-03-01 08:00:00', 's' FROM seq_1_to_12000",
    )
    .await
    .unwrap();
    conn.disconnect().await.unwrap();
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(1000)
            .source("hr", "mysql", &db.url)
            .resource(Resource::incremental(CODE, "hr", "people", "id").fields(FIELDS)),
    );

    scene
        .sync_until_equal(&agent, CODE, &my_expected(&db).await, MY_DEADLINE)
        .await;
    let status = agent.resource_status(CODE).await;
    assert_eq!(
        status["pulled_records"], 12000,
        "every row read exactly once: {status}"
    );
    assert_eq!(status["pushed_records"], 12000, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_snapshot_delivers_updates_and_deletes() {
    let scene = Scene::start().await;
    let db = MyDb::create().await;
    db.conn().await.query_drop(MY_TABLE).await.unwrap();
    my_people(&db, 1, 2000).await;
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(500)
            .source("registry", "mysql", &db.url)
            .resource(Resource::snapshot(CODE, "registry", "people", "id").fields(FIELDS)),
    );

    // Snapshot mode reads without a horizon: one sync is exact.
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 2000, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &my_expected(&db).await);

    let mut conn = db.conn().await;
    conn.query_drop(
        "UPDATE people SET name = CONCAT('改名', id), amount = amount + 1 WHERE id BETWEEN 101 AND 200;
         UPDATE people SET secret = 'changed' WHERE id = 300;
         DELETE FROM people WHERE id BETWEEN 1001 AND 1050",
    )
    .await
    .unwrap();
    conn.disconnect().await.unwrap();
    my_people(&db, 5001, 70).await;
    let out = agent.sync_ok().await;
    assert_eq!(
        pulled(&out, CODE),
        100 + 50 + 70,
        "only the changes are sent; {out}"
    );
    assert_same(&scene.hub.rows(CODE).await, &my_expected(&db).await);

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 0, "{out}");
}

// ---------------------------------------------------------------------------------------
// SQLite

fn sqlite_people(conn: &rusqlite::Connection, from: i64, n: i64) {
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO people (id, name, amount, updated_at, secret) VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        for id in from..from + n {
            let name = (id % 5 != 0).then(|| format!("居民{id}号"));
            let stamp = chrono::NaiveDate::from_ymd_opt(2024, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                + chrono::TimeDelta::seconds(id)
                + chrono::TimeDelta::milliseconds(id % 7);
            insert
                .execute(rusqlite::params![
                    id,
                    name,
                    id as f64 * 1.25,
                    stamp.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                    format!("secret {id}")
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn sqlite_expected(conn: &rusqlite::Connection) -> Rows {
    let mut stmt = conn
        .prepare("SELECT id, name, amount, updated_at FROM people")
        .unwrap();
    stmt.query_map([], |r| {
        let id: i64 = r.get(0)?;
        Ok((
            id.to_string(),
            rows::fields([
                ("id", json!(id)),
                (
                    "name",
                    r.get::<_, Option<String>>(1)?
                        .map_or(Value::Null, Value::String),
                ),
                ("amount", json!(r.get::<_, f64>(2)?)),
                ("updated_at", Value::String(r.get(3)?)),
            ]),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

const SQLITE_TABLE: &str = "CREATE TABLE people (
    id INTEGER PRIMARY KEY,
    name TEXT,
    amount REAL NOT NULL,
    updated_at TEXT NOT NULL,
    secret TEXT
)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_table_arrives_at_the_hub_exactly() {
    let scene = Scene::start().await;
    let path = scene.dir.path().join("business.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(SQLITE_TABLE).unwrap();
    sqlite_people(&conn, 1, 3000);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("rsj", "sqlite", &format!("sqlite://{}", path.display()))
            .resource(Resource::incremental(CODE, "rsj", "people", "id").fields(FIELDS)),
    );

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 3000, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &sqlite_expected(&conn));

    // Changed rows get a later stamp and arrive; the rest is not sent again.
    conn.execute_batch(
        "UPDATE people SET name = '改名' || id, updated_at = '2025-01-01 00:00:00.000' WHERE id <= 10",
    )
    .unwrap();
    sqlite_people(&conn, 10_001, 5);
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 15, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &sqlite_expected(&conn));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshot_delivers_updates_and_deletes() {
    let scene = Scene::start().await;
    let path = scene.dir.path().join("business.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(SQLITE_TABLE).unwrap();
    sqlite_people(&conn, 1, 2000);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(300)
            .source("rsj", "sqlite", &format!("sqlite://{}", path.display()))
            .resource(Resource::snapshot(CODE, "rsj", "people", "id").fields(FIELDS)),
    );

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 2000, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &sqlite_expected(&conn));

    conn.execute_batch(
        "UPDATE people SET name = '改名' || id WHERE id BETWEEN 101 AND 200;
         DELETE FROM people WHERE id BETWEEN 1001 AND 1050;",
    )
    .unwrap();
    sqlite_people(&conn, 5001, 70);
    let out = agent.sync_ok().await;
    assert_eq!(
        pulled(&out, CODE),
        100 + 50 + 70,
        "only the changes are sent; {out}"
    );
    assert_same(&scene.hub.rows(CODE).await, &sqlite_expected(&conn));
}
