//! Rows that cannot be delivered go to quarantine (key and reason, never a value) and the rest
//! of the resource keeps flowing:
//! - snapshot mode, PostgreSQL: a delivered row that becomes unconvertible (`NaN` float,
//!   `infinity` timestamp) is quarantined and the hub keeps its previous version (the delete
//!   sweep does not remove it); fixed, it is delivered; seen again while still bad, its
//!   quarantine entry counts the sighting (`times`) instead of adding an entry;
//! - SQLite, a key column that allows NULL: a NULL key is quarantined in snapshot and in
//!   incremental mode (where the key ends the cursor as a tiebreaker), also when there are more
//!   of them than a page (SQLite sorts NULL first, so a scan's first page would be all NULL
//!   keys: pages leave them out, and every run counts them), and a NULL in a cursor column
//!   read on the first page is quarantined under its key.

use chrono::{DateTime, Utc};
use exchange_tests::agent::{Agent, Resource, pulled};
use exchange_tests::db::PgDb;
use exchange_tests::rows::{self, Rows, assert_same};
use exchange_tests::scene::Scene;
use serde_json::{Value, json};

const CODE: &str = "330100-SJJ-0001";

/// The `recent_quarantine` entries of a resource's status.
fn quarantine_entries(status: &Value) -> Vec<Value> {
    status["recent_quarantine"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no recent_quarantine list: {status}"))
        .clone()
}

/// The quarantine entry with `key` (JSON null for an unknown key); fails the test if there is
/// none or more than one.
fn entry_for(status: &Value, key: Value) -> Value {
    let found: Vec<Value> = quarantine_entries(status)
        .into_iter()
        .filter(|e| e["key"] == key)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one quarantine entry with key {key}: {status}"
    );
    found.into_iter().next().unwrap()
}

/// Fails the test unless a quarantine entry holds only when, how often, the key, the reason
/// and (where the resource records one) the locator, its reason names `column`, and it
/// contains none of `values`.
#[track_caller]
fn assert_entry_names_column_without_values(entry: &Value, column: &str, values: &[&str]) {
    let fields: Vec<&str> = entry
        .as_object()
        .unwrap_or_else(|| panic!("a quarantine entry is an object: {entry}"))
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "locator")
        .collect();
    assert_eq!(fields, ["at", "times", "key", "reason"], "{entry}");
    let reason = entry["reason"].as_str().expect("a reason");
    assert!(
        reason.contains(&format!("`{column}`")),
        "the reason names the column `{column}`: {entry}"
    );
    let text = entry.to_string();
    for v in values {
        assert!(
            !text.contains(v),
            "a quarantine entry holds the value `{v}`: {entry}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL, snapshot mode: a delivered row becomes unconvertible.

const PG_TABLE: &str = "CREATE TABLE readings (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    score float8,
    seen_at timestamptz NOT NULL
)";

async fn pg_readings(db: &PgDb, from: i64, n: i64) {
    db.client
        .execute(
            "INSERT INTO readings (id, name, score, seen_at)
             SELECT g, '读数' || g, g + 0.25, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'
             FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) g",
            &[&from, &n],
        )
        .await
        .unwrap();
}

/// The rows the hub should hold for the convertible source rows, and the ids of the others
/// (NaN or infinite score, infinite `seen_at`).
async fn pg_expected(db: &PgDb) -> (Rows, Vec<String>) {
    let rows = db
        .client
        .query(
            "SELECT id, name, score, CASE WHEN isfinite(seen_at) THEN seen_at END FROM readings ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let mut good = Rows::new();
    let mut bad = Vec::new();
    for r in rows {
        let id: i64 = r.get(0);
        let score: Option<f64> = r.get(2);
        let seen_at: Option<DateTime<Utc>> = r.get(3);
        let (Some(seen_at), true) = (seen_at, score.is_none_or(f64::is_finite)) else {
            bad.push(id.to_string());
            continue;
        };
        let score = score
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number);
        good.insert(
            id.to_string(),
            rows::fields([
                ("id", json!(id)),
                ("name", Value::String(r.get(1))),
                ("score", score),
                ("seen_at", rows::timestamptz(seen_at)),
            ]),
        );
    }
    (good, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_becomes_unconvertible_is_quarantined_not_deleted() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client.batch_execute(PG_TABLE).await.unwrap();
    pg_readings(&db, 1, 300).await;
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(100)
            .source("sj", "postgres", &db.url)
            .resource(Resource::snapshot(CODE, "sj", "readings", "id").fields(&[
                ("id", "plain"),
                ("name", "plain"),
                ("score", "plain"),
                ("seen_at", "plain"),
            ])),
    );

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 300, "{out}");
    let (expected, bad) = pg_expected(&db).await;
    assert!(bad.is_empty());
    assert_same(&scene.hub.rows(CODE).await, &expected);
    let delivered = expected;

    // Two rows become unconvertible; in the same run one row changes, one is deleted, one is
    // added.
    db.client
        .batch_execute(
            "UPDATE readings SET score = 'NaN', name = '坏读数七' WHERE id = 7;
             UPDATE readings SET seen_at = 'infinity', name = '坏读数八' WHERE id = 8;
             UPDATE readings SET name = '改名十' WHERE id = 10;
             DELETE FROM readings WHERE id = 20;",
        )
        .await
        .unwrap();
    pg_readings(&db, 301, 1).await;
    let out = agent.sync_ok().await;
    assert_eq!(
        pulled(&out, CODE),
        3,
        "the update, the delete and the insert are sent; {out}"
    );
    out.assert_mentions(&["quarantined 2 rows"]);
    let (mut expected, bad) = pg_expected(&db).await;
    assert_eq!(bad, ["7", "8"]);
    // The hub keeps the last delivered version of the unconvertible rows.
    for key in &bad {
        expected.insert(key.clone(), delivered[key].clone());
    }
    assert_same(&scene.hub.rows(CODE).await, &expected);

    let status = agent.resource_status(CODE).await;
    assert_eq!(status["quarantined"], 2, "{status}");
    let nan = entry_for(&status, json!("7"));
    assert_entry_names_column_without_values(&nan, "score", &["NaN", "坏读数七"]);
    assert_eq!(nan["times"], 1, "{nan}");
    let infinity = entry_for(&status, json!("8"));
    assert_entry_names_column_without_values(&infinity, "seen_at", &["坏读数八"]);
    assert_eq!(infinity["times"], 1, "{infinity}");

    // Still bad at the next runs: the same entries, seen again; nothing else changes.
    for run in 2..=3 {
        let out = agent.sync_ok().await;
        assert_eq!(pulled(&out, CODE), 0, "{out}");
        assert_same(&scene.hub.rows(CODE).await, &expected);
        let status = agent.resource_status(CODE).await;
        assert_eq!(
            status["quarantined"], 2,
            "a row quarantined again for the same reason is not a new entry: {status}"
        );
        assert_eq!(quarantine_entries(&status).len(), 2, "{status}");
        assert_eq!(entry_for(&status, json!("7"))["times"], run, "{status}");
        assert_eq!(entry_for(&status, json!("8"))["times"], run, "{status}");
    }

    // Fixed: delivered at the next run.
    db.client
        .batch_execute(
            "UPDATE readings SET score = 99.5 WHERE id = 7;
             UPDATE readings SET seen_at = timestamptz '2025-06-01 12:00:00+00' WHERE id = 8;",
        )
        .await
        .unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 2, "{out}");
    let (expected, bad) = pg_expected(&db).await;
    assert!(bad.is_empty());
    assert_same(&scene.hub.rows(CODE).await, &expected);
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["quarantined"], 2, "{status}");
    assert_eq!(entry_for(&status, json!("7"))["times"], 3, "{status}");

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 0, "{out}");
    assert!(
        !out.stdout.contains("quarantined"),
        "nothing is quarantined any more; {out}"
    );
    let status = agent.resource_status(CODE).await;
    assert_eq!(entry_for(&status, json!("7"))["times"], 3, "{status}");
    assert_same(&scene.hub.rows(CODE).await, &expected);
}

// ---------------------------------------------------------------------------------------
// SQLite: a key column (and a cursor column) that allows NULL.

/// A SQLite file with `members (code, name, updated_at)`, `code` (the key) and `updated_at`
/// nullable.
struct Members {
    /// A read-write connection.
    conn: rusqlite::Connection,
    /// The `sqlite://` URL.
    url: String,
}

impl Members {
    /// Creates `<dir>/members.db` with members `M0001..=M<n>`.
    fn create(dir: &std::path::Path, n: i64) -> Members {
        let path = dir.join("members.db");
        let conn = rusqlite::Connection::open(&path).expect("create the SQLite source");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE members (code TEXT, name TEXT NOT NULL, updated_at TEXT);",
        )
        .expect("create the members table");
        let members = Members {
            conn,
            url: format!("sqlite://{}", path.display()),
        };
        for i in 1..=n {
            members.insert(Some(&format!("M{i:04}")), &format!("会员{i}"), Some(i));
        }
        members
    }

    /// The timestamp text of second `s` after 2024-01-01 (in the past, never held back by the
    /// horizon).
    fn stamp(s: i64) -> String {
        (chrono::NaiveDate::from_ymd_opt(2024, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            + chrono::TimeDelta::seconds(s))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
    }

    /// Inserts one member stamped at second `at` (NULL stamp for `None`).
    fn insert(&self, code: Option<&str>, name: &str, at: Option<i64>) {
        self.conn
            .execute(
                "INSERT INTO members (code, name, updated_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![code, name, at.map(Self::stamp)],
            )
            .expect("insert a member");
    }

    /// Runs SQL.
    fn exec(&self, sql: &str) {
        self.conn.execute_batch(sql).expect("change the members");
    }

    /// The rows the hub should hold: every member with a code and a stamp.
    fn expected(&self) -> Rows {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT code, name, updated_at FROM members
                 WHERE code IS NOT NULL AND updated_at IS NOT NULL",
            )
            .expect("prepare");
        stmt.query_map([], |r| {
            let code: String = r.get(0)?;
            Ok((
                code.clone(),
                rows::fields([
                    ("code", Value::String(code)),
                    ("name", Value::String(r.get(1)?)),
                    ("updated_at", Value::String(r.get(2)?)),
                ]),
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("read the members")
    }

    /// An agent on this file: resource `members`, key `code`, batches of 10.
    fn agent(&self, scene: &Scene, resource: Resource) -> Agent {
        scene.write_agent(
            &scene
                .agent_config()
                .max_records(10)
                .source("hy", "sqlite", &self.url)
                .resource(resource.fields(&[
                    ("code", "plain"),
                    ("name", "plain"),
                    ("updated_at", "plain"),
                ])),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_key_row_is_quarantined_and_the_rest_flow_in_snapshot_mode() {
    let scene = Scene::start().await;
    let members = Members::create(scene.dir.path(), 40);
    members.insert(None, "无编号会员", Some(20));
    let agent = members.agent(&scene, Resource::snapshot(CODE, "hy", "members", "code"));

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 40, "{out}");
    out.assert_mentions(&["quarantined 1 rows"]);
    assert_same(&scene.hub.rows(CODE).await, &members.expected());
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["quarantined"], 1, "{status}");
    let entry = entry_for(&status, Value::Null);
    assert_entry_names_column_without_values(&entry, "code", &["无编号会员"]);
    assert!(
        entry["reason"].as_str().unwrap().contains("NULL"),
        "{entry}"
    );

    // Every run reads the row again: the same entry, one more sighting; changes flow.
    members.exec("UPDATE members SET name = '改名' WHERE code = 'M0005'");
    members.insert(Some("M0041"), "会员41", Some(41));
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 2, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &members.expected());
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["quarantined"], 1, "{status}");
    assert_eq!(entry_for(&status, Value::Null)["times"], 2, "{status}");

    // Given a key, it is delivered.
    members.exec("UPDATE members SET code = 'M0099' WHERE code IS NULL");
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 1, "{out}");
    let expected = members.expected();
    assert_eq!(expected.len(), 42);
    assert_same(&scene.hub.rows(CODE).await, &expected);
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["quarantined"], 1, "{status}");
    assert_eq!(entry_for(&status, Value::Null)["times"], 2, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_null_keys_than_a_page_do_not_stop_a_snapshot_scan() {
    let scene = Scene::start().await;
    let members = Members::create(scene.dir.path(), 5);
    for i in 1..=25 {
        members.insert(None, &format!("无编号会员{i}"), Some(i));
    }
    // Batches of 10: the scan's first page (NULL sorts first) would hold only NULL keys.
    let agent = members.agent(&scene, Resource::snapshot(CODE, "hy", "members", "code"));
    for run in 1..=2 {
        let out = agent.sync_ok().await;
        assert_eq!(pulled(&out, CODE), if run == 1 { 5 } else { 0 }, "{out}");
        out.assert_mentions(&["quarantined 25 rows"]);
        assert_same(&scene.hub.rows(CODE).await, &members.expected());
        let status = agent.resource_status(CODE).await;
        assert!(status["stopped"].is_null(), "{status}");
        // Rows without a key share one entry per reason, which counts every row seen.
        assert_eq!(status["quarantined"], 1, "{status}");
        let entry = entry_for(&status, Value::Null);
        assert_entry_names_column_without_values(&entry, "code", &["无编号会员"]);
        assert_eq!(entry["times"], 25 * run, "{status}");
    }

    // Given keys, they are delivered; the scan goes on as before.
    members.exec("UPDATE members SET code = 'N' || rowid WHERE code IS NULL");
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 25, "{out}");
    let expected = members.expected();
    assert_eq!(expected.len(), 30);
    assert_same(&scene.hub.rows(CODE).await, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_key_row_is_quarantined_and_the_rest_flow_in_incremental_mode() {
    let scene = Scene::start().await;
    let members = Members::create(scene.dir.path(), 40);
    // Cursor (updated_at, code): the key ends the cursor as a tiebreaker.
    let agent = members.agent(&scene, Resource::incremental(CODE, "hy", "members", "code"));
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 40, "{out}");

    // A NULL key stamped after five new rows: read (its stamp is past the cursor), quarantined,
    // and, being the last row, the cursor stays before it.
    for i in 41..=45 {
        members.insert(Some(&format!("M{i:04}")), &format!("会员{i}"), Some(i));
    }
    members.insert(None, "无编号会员", Some(46));
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 5, "{out}");
    out.assert_mentions(&["quarantined 1 rows"]);
    assert_same(&scene.hub.rows(CODE).await, &members.expected());
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["quarantined"], 1, "{status}");
    let entry = entry_for(&status, Value::Null);
    assert_entry_names_column_without_values(&entry, "code", &["无编号会员"]);
    // Seen by every pull (a sync pulls until its horizon has passed its start).
    let seen = entry["times"].as_u64().unwrap();
    assert!(seen >= 1, "{entry}");

    // Read again by the next run: the same entry, more sightings.
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 0, "{out}");
    out.assert_mentions(&["quarantined 1 rows"]);
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["quarantined"], 1, "{status}");
    assert!(
        entry_for(&status, Value::Null)["times"].as_u64().unwrap() > seen,
        "{status}"
    );

    // Rows after it flow (and move the cursor past it).
    for i in 47..=49 {
        members.insert(Some(&format!("M{i:04}")), &format!("会员{i}"), Some(i));
    }
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 3, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &members.expected());
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["quarantined"], 1, "{status}");

    // Given a key and a new stamp, it is delivered.
    members.exec(&format!(
        "UPDATE members SET code = 'M0099', updated_at = '{}' WHERE code IS NULL",
        Members::stamp(50)
    ));
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 1, "{out}");
    let expected = members.expected();
    assert_eq!(expected.len(), 49);
    assert_same(&scene.hub.rows(CODE).await, &expected);
    assert_eq!(agent.resource_status(CODE).await["quarantined"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_cursor_value_on_the_first_read_is_quarantined_and_the_rest_flow() {
    let scene = Scene::start().await;
    let members = Members::create(scene.dir.path(), 40);
    members.insert(Some("M0500"), "无时间会员", None);
    let agent = members.agent(&scene, Resource::incremental(CODE, "hy", "members", "code"));

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 40, "{out}");
    out.assert_mentions(&["quarantined 1 rows"]);
    assert_same(&scene.hub.rows(CODE).await, &members.expected());
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["quarantined"], 1, "{status}");
    let entry = entry_for(&status, json!("M0500"));
    assert_entry_names_column_without_values(&entry, "updated_at", &["无时间会员"]);

    // Rows after it flow.
    members.insert(Some("M0041"), "会员41", Some(41));
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 1, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &members.expected());
    assert_eq!(agent.resource_status(CODE).await["quarantined"], 1);

    // Given a stamp, it is delivered.
    members.exec(&format!(
        "UPDATE members SET updated_at = '{}' WHERE code = 'M0500'",
        Members::stamp(42)
    ));
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 1, "{out}");
    let expected = members.expected();
    assert_eq!(expected.len(), 42);
    assert_same(&scene.hub.rows(CODE).await, &expected);
    assert_eq!(agent.resource_status(CODE).await["quarantined"], 1);
}
