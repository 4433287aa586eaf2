//! A small SQLite business database, for tests whose subject is not the source (TLS, the hub
//! going away, the command line): no server needed.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::agent::Resource;
use crate::rows::{self, Rows};

/// A SQLite file with a table `residents (id, name, note, updated_at)`.
pub struct SqliteSource {
    /// The database file.
    pub path: PathBuf,
    /// A read-write connection.
    pub conn: rusqlite::Connection,
}

impl SqliteSource {
    /// Creates `<dir>/business.db` with `n` residents (ids 1..=n).
    pub fn create(dir: &Path, n: i64) -> SqliteSource {
        let path = dir.join("business.db");
        let conn = rusqlite::Connection::open(&path).expect("create the SQLite source");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE residents (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT, updated_at TEXT NOT NULL);",
        )
        .expect("create the residents table");
        let source = SqliteSource { path, conn };
        source.insert(1, n);
        source
    }

    /// Inserts ids `from..from+n`, stamped `2024-01-01 00:00:00 + id seconds` (in the past, so
    /// the horizon never holds them back).
    pub fn insert(&self, from: i64, n: i64) {
        let tx = self.conn.unchecked_transaction().expect("begin");
        {
            let mut stmt = tx
                .prepare("INSERT INTO residents (id, name, note, updated_at) VALUES (?1, ?2, ?3, datetime('2024-01-01 00:00:00', '+' || ?1 || ' seconds'))")
                .expect("prepare");
            for id in from..from + n {
                stmt.execute(rusqlite::params![
                    id,
                    format!("居民{id}"),
                    format!("internal {id}")
                ])
                .expect("insert a resident");
            }
        }
        tx.commit().expect("commit");
    }

    /// The `sqlite://` URL of the file.
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    /// The resource the tests read: key `id`, `note` dropped.
    pub fn resource(&self, code: &str, source: &str) -> Resource {
        Resource::incremental(code, source, "residents", "id").fields(&[
            ("id", "plain"),
            ("name", "plain"),
            ("updated_at", "plain"),
            ("note", "drop"),
        ])
    }

    /// The rows the hub should hold.
    pub fn expected(&self) -> Rows {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, updated_at FROM residents")
            .expect("prepare");
        stmt.query_map([], |r| {
            let id: i64 = r.get(0)?;
            Ok((
                id.to_string(),
                rows::fields([
                    ("id", json!(id)),
                    ("name", Value::String(r.get(1)?)),
                    ("updated_at", Value::String(r.get(2)?)),
                ]),
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("read the residents")
    }
}
