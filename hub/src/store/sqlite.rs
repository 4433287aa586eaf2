//! The SQLite backend: one writer connection behind a mutex, used on blocking threads.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a committed batch survives a
//! power loss; exports open their own read-only connection and do not block writers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::mpsc;

use super::{Batch, CatalogueRecord, Change, Counts, SCHEMA_VERSION, StoreError, StoredRecord};

/// The tables of the current schema version; `records.stream` is added to older stores by
/// [`migrate`].
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
CREATE TABLE IF NOT EXISTS resources (
    resource TEXT NOT NULL PRIMARY KEY,
    node     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hub_schema (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS catalogue (
    resource   TEXT NOT NULL PRIMARY KEY,
    node       TEXT NOT NULL,
    entry      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
";

/// Brings the tables to [`SCHEMA_VERSION`] in one transaction: creates what is missing, adds
/// the columns older versions lack, records the version. Refuses a newer store.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    let found = version_in(&tx).map_err(|e| e.to_string())?;
    if found > SCHEMA_VERSION {
        return Err(format!(
            "the store has schema version {found}, newer than this hub's {SCHEMA_VERSION}; run the newer exchange-hub"
        ));
    }
    tx.execute_batch(SCHEMA).map_err(|e| e.to_string())?;
    for (table, column, ddl) in [
        (
            "records",
            "stream",
            "ALTER TABLE records ADD COLUMN stream TEXT",
        ),
        (
            "records",
            "flags",
            "ALTER TABLE records ADD COLUMN flags TEXT",
        ),
        (
            "streams",
            "last_digest",
            "ALTER TABLE streams ADD COLUMN last_digest TEXT NOT NULL DEFAULT ''",
        ),
    ] {
        let present: bool = tx
            .query_row(
                &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                [column],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| e.to_string())?
            > 0;
        if !present {
            tx.execute_batch(ddl).map_err(|e| e.to_string())?;
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
    } else if has("records")? {
        Ok(1)
    } else {
        Ok(0)
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
        let target = format!("SQLite database {}", path.display());
        let open = {
            let path = path.clone();
            let target = target.clone();
            move || -> Result<Connection, StoreError> {
                let failed = |e: rusqlite::Error| StoreError::Open {
                    target: target.clone(),
                    reason: format!(
                        "{e} (check that the directory exists and is writable by the service user)"
                    ),
                };
                let conn = Connection::open(&path).map_err(failed)?;
                let mode: String = conn
                    .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                    .map_err(failed)?;
                if !mode.eq_ignore_ascii_case("wal") {
                    return Err(StoreError::Open {
                        target: target.clone(),
                        reason: format!(
                            "the database refused WAL mode (journal mode is `{mode}`); put it on a local file system"
                        ),
                    });
                }
                conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
                    .map_err(failed)?;
                let mut conn = conn;
                migrate(&mut conn).map_err(|reason| StoreError::Schema {
                    target: target.clone(),
                    reason: format!("cannot create or migrate the tables: {reason}"),
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
    pub(super) async fn apply(self: Arc<Self>, batch: Batch) -> Result<super::Outcome, StoreError> {
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
            let result = (|| -> Result<Result<(), StoreError>, rusqlite::Error> {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "INSERT OR IGNORE INTO resources (resource, node) VALUES (?1, ?2)",
                    params![c.resource, c.node],
                )?;
                let owner: String = tx.query_row(
                    "SELECT node FROM resources WHERE resource = ?1",
                    [&c.resource],
                    |r| r.get(0),
                )?;
                if owner != c.node {
                    return Ok(Err(StoreError::NotOwner {
                        resource: c.resource.clone(),
                        owner,
                        node: c.node.clone(),
                    }));
                }
                tx.execute(
                    "INSERT INTO catalogue (resource, node, entry, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (resource) DO UPDATE SET node = excluded.node, entry = excluded.entry,
                         updated_at = excluded.updated_at",
                    params![c.resource, c.node, c.entry, c.updated_at],
                )?;
                tx.commit()?;
                Ok(Ok(()))
            })();
            result.map_err(|e| self.error(e))?
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
        let reason = e.to_string();
        if transient {
            StoreError::Unavailable {
                target: self.target.clone(),
                reason,
            }
        } else {
            StoreError::Failed {
                target: self.target.clone(),
                reason,
            }
        }
    }
}

/// The transaction of one batch.
fn apply_in(conn: &mut Connection, batch: &Batch) -> Result<super::Outcome, ApplyError> {
    let id = &batch.id;
    let seq = i64::try_from(id.seq).map_err(|_| ApplyError::Refused(seq_too_large(id.seq)))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT OR IGNORE INTO resources (resource, node) VALUES (?1, ?2)",
        params![id.resource, id.node],
    )?;
    let owner: String = tx.query_row(
        "SELECT node FROM resources WHERE resource = ?1",
        [&id.resource],
        |r| r.get(0),
    )?;
    if owner != id.node {
        return Err(ApplyError::Refused(StoreError::NotOwner {
            resource: id.resource.clone(),
            owner,
            node: id.node.clone(),
        }));
    }
    let not_shared: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM catalogue WHERE resource = ?1 AND json_extract(entry, '$.share') = 'none')",
        [&id.resource],
        |r| r.get(0),
    )?;
    if not_shared {
        return Err(ApplyError::Refused(StoreError::NotShared {
            resource: id.resource.clone(),
            node: id.node.clone(),
        }));
    }
    let (last_seq, last_digest): (i64, String) = tx
        .query_row(
            "SELECT last_seq, last_digest FROM streams WHERE node = ?1 AND resource = ?2 AND stream = ?3",
            params![id.node, id.resource, id.stream],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, String::new()));
    // The transaction rolls back on drop: a duplicate or a gap changes nothing.
    if seq <= last_seq {
        return Ok(super::Outcome::Duplicate {
            last_seq: last_seq.max(0) as u64,
            last_digest,
        });
    }
    if seq > last_seq + 1 {
        return Ok(super::Outcome::Gap {
            last_seq: last_seq.max(0) as u64,
        });
    }
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO records (resource, key, node, fields, updated_at, stream, flags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (resource, key) DO UPDATE
             SET node = excluded.node, fields = excluded.fields, updated_at = excluded.updated_at,
                 stream = excluded.stream, flags = excluded.flags",
        )?;
        let mut delete =
            tx.prepare_cached("DELETE FROM records WHERE resource = ?1 AND key = ?2")?;
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
    }
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
    tx.commit()?;
    Ok(super::Outcome::Applied {
        records: batch.changes.len() as u64,
        swept,
    })
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
    fn error_of(&self, e: ApplyError) -> StoreError {
        match e {
            ApplyError::Refused(e) => e,
            ApplyError::Sqlite(e) => self.error(e),
        }
    }
}

fn seq_too_large(seq: u64) -> StoreError {
    StoreError::Failed {
        target: "the batch".into(),
        reason: format!("sequence number {seq} is larger than the store can hold"),
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
