//! The SQLite backend: one writer connection behind a mutex, used on blocking threads.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a committed batch survives a
//! power loss; exports open their own read-only connection and do not block writers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use exchange_protocol::batch::BatchId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::mpsc;

use super::{
    Batch, CatalogueRecord, Change, Counts, Evidence, Outcome, Proof, SCHEMA_VERSION, StoreError,
    StoredRecord, admission, evidence, schema,
};

/// The tables of the current schema version that SQLite writes its own way (the others are
/// [`schema::SHARED_TABLES`]); the columns older stores lack are added by [`migrate`].
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    resource   TEXT NOT NULL,
    key        TEXT NOT NULL,
    node       TEXT NOT NULL,
    fields     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    stream     TEXT,
    flags      TEXT,
    PRIMARY KEY (resource, key)
);
CREATE TABLE IF NOT EXISTS streams (
    node     TEXT NOT NULL,
    resource TEXT NOT NULL,
    stream   TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    last_digest TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (node, resource, stream)
);
";

/// Brings the tables to [`SCHEMA_VERSION`] in one transaction: creates what is missing, adds
/// the columns older versions lack, records the version. Refuses a newer store.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let found = version_in(&tx).map_err(|e| e.to_string())?;
    schema::refuse_newer(found)?;
    tx.execute_batch(SCHEMA).map_err(|e| e.to_string())?;
    tx.execute_batch(&evidence::table("BLOB", "INTEGER"))
        .map_err(|e| e.to_string())?;
    tx.execute_batch(schema::SHARED_TABLES)
        .map_err(|e| e.to_string())?;
    for added in &schema::ADDED_COLUMNS {
        let present: bool = tx
            .query_row(
                &format!(
                    "SELECT count(*) FROM pragma_table_info('{}') WHERE name = ?1",
                    added.table
                ),
                [added.column],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| e.to_string())?
            > 0;
        if !present {
            tx.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                added.table, added.column, added.definition
            ))
            .map_err(|e| e.to_string())?;
        }
    }
    tx.execute("DELETE FROM hub_schema", [])
        .map_err(|e| e.to_string())?;
    tx.execute(
        "INSERT INTO hub_schema (version) VALUES (?1)",
        [SCHEMA_VERSION],
    )
    .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())
}

/// The schema version of an open database: 0 when it has no tables, 1 before `hub_schema`.
fn version_in(conn: &Connection) -> Result<i64, rusqlite::Error> {
    let has = |table: &str| -> Result<bool, rusqlite::Error> {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    if has("hub_schema")? {
        conn.query_row(
            "SELECT coalesce(max(version), 0) FROM hub_schema",
            [],
            |r| r.get(0),
        )
    } else {
        Ok(schema::version_before_hub_schema(has("records")?))
    }
}

/// A SQLite database file.
pub(super) struct SqliteStore {
    /// The database file.
    path: PathBuf,
    /// `SQLite database <path>`, for messages.
    pub(super) target: String,
    /// The one connection that writes; held only on blocking threads.
    writer: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database, switches it to WAL and creates the tables.
    pub(super) async fn open(path: PathBuf) -> Result<Self, StoreError> {
        let target =
            exchange_protocol::tr!("SQLite database {}", "SQLite 数据库 {}", path.display());
        let open = {
            let path = path.clone();
            let target = target.clone();
            move || -> Result<Connection, StoreError> {
                let failed = |e: rusqlite::Error| StoreError::Open {
                    target: target.clone(),
                    reason: exchange_protocol::tr!(
                        "{e} (check that the directory exists and is writable by the service user)",
                        "{e}（请检查目录是否存在、服务用户能否写入）"
                    ),
                };
                let conn = Connection::open(&path).map_err(failed)?;
                let mode: String = conn
                    .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                    .map_err(failed)?;
                if !mode.eq_ignore_ascii_case("wal") {
                    return Err(StoreError::Open {
                        target: target.clone(),
                        reason: exchange_protocol::tr!(
                            "the database refused WAL mode (journal mode is `{mode}`); put it on a local file system",
                            "数据库拒绝 WAL 模式（日志模式为 `{mode}`）；请把它放在本地文件系统上"
                        ),
                    });
                }
                conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
                    .map_err(failed)?;
                let mut conn = conn;
                migrate(&mut conn).map_err(|reason| StoreError::Schema {
                    target: target.clone(),
                    reason: exchange_protocol::tr!(
                        "cannot create or migrate the tables: {reason}",
                        "无法创建或迁移数据表：{reason}"
                    ),
                })?;
                Ok(conn)
            }
        };
        let conn = blocking(&target, open).await??;
        Ok(SqliteStore {
            path,
            target,
            writer: Mutex::new(conn),
        })
    }

    /// Applies a batch in one transaction: applied, duplicate or gap.
    pub(super) async fn apply(self: Arc<Self>, batch: Batch) -> Result<Outcome, StoreError> {
        let target = self.target.clone();
        blocking(&target, move || {
            // A poisoned lock only means another apply panicked; its transaction rolled back.
            let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            apply_in(&mut conn, &batch).map_err(|e| self.error_of(e))
        })
        .await?
    }

    /// Streams the rows of `resource` into `tx` from a blocking thread.
    pub(super) fn export(
        self: Arc<Self>,
        resource: String,
        tx: mpsc::Sender<Result<StoredRecord, StoreError>>,
    ) {
        tokio::task::spawn_blocking(move || {
            let result = (|| -> Result<(), rusqlite::Error> {
                let conn = self.reader()?;
                let mut stmt = conn.prepare(
                    "SELECT resource, key, node, fields, updated_at, flags FROM records
                     WHERE resource = ?1 ORDER BY key",
                )?;
                let mut rows = stmt.query([&resource])?;
                while let Some(row) = rows.next()? {
                    let record = StoredRecord {
                        resource: row.get(0)?,
                        key: row.get(1)?,
                        node: row.get(2)?,
                        fields: row.get(3)?,
                        updated_at: row.get(4)?,
                        flags: row.get(5)?,
                    };
                    if tx.blocking_send(Ok(record)).is_err() {
                        break; // the consumer stopped reading
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(self.error(e)));
            }
        });
    }

    /// Every resource and its node.
    /// The batch that last wrote a record, with its evidence ([`evidence::PROOF`]).
    pub(super) async fn proof(
        self: Arc<Self>,
        resource: String,
        key: String,
    ) -> Result<Option<Proof>, StoreError> {
        let target = self.target.clone();
        blocking(&target, move || {
            let read = || -> Result<Option<Proof>, rusqlite::Error> {
                let conn = self.reader()?;
                conn.query_row(
                    &evidence::PROOF.replace('$', "?"),
                    params![resource, key],
                    |r| {
                        Ok(Proof {
                            node: r.get(0)?,
                            stream: r.get(1)?,
                            seq: r.get::<_, i64>(2)? as u64,
                            applied_at: r.get(3)?,
                            sm3: r.get(4)?,
                            evidence: Evidence {
                                signature: r.get(5)?,
                                certificate: r.get(6)?,
                                body: r.get(7)?,
                            },
                        })
                    },
                )
                .optional()
            };
            read().map_err(|e| self.error(e))
        })
        .await?
    }

    pub(super) async fn resources(self: Arc<Self>) -> Result<Vec<(String, String)>, StoreError> {
        let target = self.target.clone();
        blocking(&target, move || {
            let read = || -> Result<Vec<(String, String)>, rusqlite::Error> {
                let conn = self.reader()?;
                let mut stmt =
                    conn.prepare("SELECT resource, node FROM resources ORDER BY resource")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            };
            read().map_err(|e| self.error(e))
        })
        .await?
    }

    /// Stores a catalogue entry (ownership checked) in one transaction.
    pub(super) async fn record_catalogue(
        self: Arc<Self>,
        c: CatalogueRecord,
    ) -> Result<(), StoreError> {
        let target = self.target.clone();
        blocking(&target, move || {
            let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let result = (|| -> Result<(), ApplyError> {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                claim(&tx, &c.resource, &c.node)?;
                tx.execute(
                    "INSERT INTO catalogue (resource, node, entry, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (resource) DO UPDATE SET node = excluded.node, entry = excluded.entry,
                         updated_at = excluded.updated_at",
                    params![c.resource, c.node, c.entry, c.updated_at],
                )?;
                tx.commit()?;
                Ok(())
            })();
            result.map_err(|e| self.error_of(e))
        })
        .await?
    }

    /// Every catalogue entry.
    pub(super) async fn catalogue(self: Arc<Self>) -> Result<Vec<CatalogueRecord>, StoreError> {
        let target = self.target.clone();
        blocking(&target, move || {
            let read = || -> Result<Vec<CatalogueRecord>, rusqlite::Error> {
                let conn = self.reader()?;
                let mut stmt = conn.prepare(
                    "SELECT resource, node, entry, updated_at FROM catalogue ORDER BY resource",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(CatalogueRecord {
                        resource: r.get(0)?,
                        node: r.get(1)?,
                        entry: r.get(2)?,
                        updated_at: r.get(3)?,
                    })
                })?;
                rows.collect()
            };
            read().map_err(|e| self.error(e))
        })
        .await?
    }

    /// The schema version recorded in the database.
    pub(super) async fn schema_version(self: Arc<Self>) -> Result<i64, StoreError> {
        let target = self.target.clone();
        blocking(&target, move || {
            let conn = self.reader().map_err(|e| self.error(e))?;
            version_in(&conn).map_err(|e| self.error(e))
        })
        .await?
    }

    /// Row counts.
    pub(super) async fn counts(self: Arc<Self>) -> Result<Counts, StoreError> {
        let target = self.target.clone();
        blocking(&target, move || {
            let read = || -> Result<Counts, rusqlite::Error> {
                let conn = self.reader()?;
                let count = |table: &str| -> Result<u64, rusqlite::Error> {
                    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map(|n| n.max(0) as u64)
                };
                Ok(Counts {
                    resources: count("resources")?,
                    streams: count("streams")?,
                    records: count("records")?,
                })
            };
            read().map_err(|e| self.error(e))
        })
        .await?
    }

    /// A read-only connection of its own (WAL lets it read while the writer writes).
    fn reader(&self) -> Result<Connection, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    /// Sorts a SQLite failure into temporary (the agent retries after a pause) or not.
    fn error(&self, e: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode as C;
        let transient = matches!(
            e.sqlite_error_code(),
            Some(
                C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::DiskFull
                    | C::SystemIoFailure
                    | C::CannotOpen
                    | C::OutOfMemory
                    | C::FileLockingProtocolFailed
            )
        );
        StoreError::database(&self.target, transient, e.to_string())
    }
}

/// The transaction of one batch.
fn apply_in(conn: &mut Connection, batch: &Batch) -> Result<Outcome, ApplyError> {
    let id = &batch.id;
    let seq = admission::stored_seq(id.seq, "the batch").map_err(ApplyError::Refused)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // The transaction rolls back on drop: a refusal, a duplicate or a gap changes nothing.
    if let Some(answer) = admit(&tx, id, seq)? {
        return Ok(answer);
    }
    write_changes(&tx, batch)?;
    let swept = if batch.baseline {
        tx.execute(
            "DELETE FROM records WHERE resource = ?1 AND (stream IS NULL OR stream <> ?2)",
            params![id.resource, id.stream],
        )? as u64
    } else {
        0
    };
    tx.execute(
        "INSERT INTO streams (node, resource, stream, last_seq, last_digest) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (node, resource, stream) DO UPDATE SET last_seq = excluded.last_seq, last_digest = excluded.last_digest",
        params![id.node, id.resource, id.stream, seq, batch.digest],
    )?;
    if let Some(ev) = &batch.evidence {
        tx.execute(
            "INSERT INTO batch_evidence (resource, stream, seq, node, applied_at, sm3, signature, certificate, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
            params![id.resource, id.stream, seq, id.node, batch.now, batch.digest, ev.signature, ev.certificate, ev.body],
        )?;
    }
    tx.commit()?;
    Ok(Outcome::Applied {
        records: batch.changes.len() as u64,
        swept,
    })
}

/// Records `node` as the provider of `resource` if it has none; refuses another node's.
fn claim(tx: &Connection, resource: &str, node: &str) -> Result<(), ApplyError> {
    tx.execute(
        "INSERT OR IGNORE INTO resources (resource, node) VALUES (?1, ?2)",
        params![resource, node],
    )?;
    let owner: String = tx.query_row(
        "SELECT node FROM resources WHERE resource = ?1",
        [resource],
        |r| r.get(0),
    )?;
    admission::check_owner(resource, owner, node).map_err(ApplyError::Refused)
}

/// The checks before batch `seq` of `id` is written (owner, share, high-water mark): `None`
/// to write it, else the answer that changes nothing (duplicate, gap).
fn admit(tx: &Connection, id: &BatchId, seq: i64) -> Result<Option<Outcome>, ApplyError> {
    claim(tx, &id.resource, &id.node)?;
    let not_shared: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM catalogue WHERE resource = ?1 AND json_extract(entry, '$.share') = 'none')",
        [&id.resource],
        |r| r.get(0),
    )?;
    admission::check_shared(&id.resource, &id.node, not_shared).map_err(ApplyError::Refused)?;
    let (last_seq, last_digest): (i64, String) = tx
        .query_row(
            "SELECT last_seq, last_digest FROM streams WHERE node = ?1 AND resource = ?2 AND stream = ?3",
            params![id.node, id.resource, id.stream],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, String::new()));
    Ok(admission::against_mark(seq, last_seq, last_digest))
}

/// Writes the batch's changes in body order, one statement each.
fn write_changes(tx: &Connection, batch: &Batch) -> Result<(), rusqlite::Error> {
    let id = &batch.id;
    let mut upsert = tx.prepare_cached(
        "INSERT INTO records (resource, key, node, fields, updated_at, stream, flags)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (resource, key) DO UPDATE
         SET node = excluded.node, fields = excluded.fields, updated_at = excluded.updated_at,
             stream = excluded.stream, flags = excluded.flags",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM records WHERE resource = ?1 AND key = ?2")?;
    for change in &batch.changes {
        match change {
            Change::Upsert { key, fields, flags } => {
                upsert.execute(params![
                    id.resource,
                    key,
                    id.node,
                    fields,
                    batch.now,
                    id.stream,
                    flags
                ])?;
            }
            Change::Delete { key } => {
                delete.execute(params![id.resource, key])?;
            }
        }
    }
    Ok(())
}

/// Why a transaction did not commit.
enum ApplyError {
    /// The batch is refused (not the owner, not shared); the error is final.
    Refused(StoreError),
    /// The database failed.
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(e: rusqlite::Error) -> Self {
        ApplyError::Sqlite(e)
    }
}

impl SqliteStore {
    /// The store's error for a transaction that did not commit.
    fn error_of(&self, e: ApplyError) -> StoreError {
        match e {
            ApplyError::Refused(e) => e,
            ApplyError::Sqlite(e) => self.error(e),
        }
    }
}

/// Runs `f` on a blocking thread; a panic there becomes a store failure, not a crash.
async fn blocking<T: Send + 'static>(
    target: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Failed {
            target: target.to_owned(),
            reason: format!("internal error: {e}"),
        })
}
