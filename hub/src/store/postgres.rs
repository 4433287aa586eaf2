//! The PostgreSQL backend: a small pool of tokio-postgres connections.
//!
//! A lost connection is dropped from the pool and replaced on the next use, so a database
//! restart shows as a few `503 Retry-After` answers, never as a hub restart. Concurrent
//! batches of one (node, resource, stream) are serialized by `SELECT … FOR UPDATE` on the
//! stream row, which makes the high-water-mark check safe with several hubs on one database.
//!
//! A batch is applied with one statement per run of upserts (new keys: `COPY … FROM STDIN` in
//! binary; else `INSERT … SELECT FROM unnest(…) ON CONFLICT DO UPDATE`) or deletes
//! (`DELETE … WHERE key = ANY(…)`), never row by row.
//!
//! TLS: when the store URL asks for it (`sslmode` prefer/require/verify-ca/verify-full, or
//! `[store] ca` set) every connection is TLS, verified against `[store] ca` or the system
//! roots (host name included), with no plaintext fallback; otherwise plaintext. Server
//! notices (`CREATE TABLE IF NOT EXISTS` on an existing table…) are logged at debug level only.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};

use super::{Batch, CatalogueRecord, Change, Counts, SCHEMA_VERSION, StoreError, StoredRecord};
use crate::config::PostgresConfig;

/// Connections opened at most at once.
const POOL_SIZE: usize = 4;

/// The tables of the current schema version, and the columns older versions lack (run by
/// [`PgStore::migrate`] under an advisory lock, so two hubs starting at once do not race).
///
/// `records.resource` and `records.key` compare bytewise (`COLLATE "C"`): keys are opaque
/// identifiers, and under a database collation such as `C.UTF-8` or `zh_CN.UTF-8` every
/// comparison in the primary key's B-tree goes through `strcoll` — about a third of the store's
/// CPU while it takes a first sync (perf, bench/README.md). A store created before keeps its
/// collation (correct, only slower).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    resource   TEXT COLLATE \"C\" NOT NULL,
    key        TEXT COLLATE \"C\" NOT NULL,
    node       TEXT NOT NULL,
    fields     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    stream     TEXT,
    PRIMARY KEY (resource, key)
);
CREATE TABLE IF NOT EXISTS streams (
    node     TEXT NOT NULL,
    resource TEXT NOT NULL,
    stream   TEXT NOT NULL,
    last_seq BIGINT NOT NULL,
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
ALTER TABLE records ADD COLUMN IF NOT EXISTS stream TEXT;
ALTER TABLE streams ADD COLUMN IF NOT EXISTS last_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE records ADD COLUMN IF NOT EXISTS flags TEXT;
CREATE TABLE IF NOT EXISTS catalogue (
    resource   TEXT NOT NULL PRIMARY KEY,
    node       TEXT NOT NULL,
    entry      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
";

/// Key of the advisory lock held while migrating ("exchhub" in ASCII).
const MIGRATION_LOCK: i64 = 0x65_78_63_68_68_75_62;

/// The schema version of the database `client` is connected to: 0 without tables, 1 before
/// `hub_schema` existed.
async fn version_in(
    client: &impl tokio_postgres::GenericClient,
) -> Result<i64, tokio_postgres::Error> {
    let tables = client
        .query_one(
            "SELECT to_regclass('hub_schema') IS NOT NULL, to_regclass('records') IS NOT NULL",
            &[],
        )
        .await?;
    if tables.get::<_, bool>(0) {
        let row = client
            .query_one("SELECT coalesce(max(version), 0) FROM hub_schema", &[])
            .await?;
        Ok(i64::from(row.get::<_, i32>(0)))
    } else if tables.get::<_, bool>(1) {
        Ok(1)
    } else {
        Ok(0)
    }
}

/// A PostgreSQL database.
pub(super) struct PgStore {
    /// Where to connect.
    config: PostgresConfig,
    /// `PostgreSQL database user@host/db`, for messages.
    pub(super) target: String,
    /// Open connections not in use.
    idle: Mutex<Vec<Client>>,
    /// Bounds the number of connections in use.
    permits: Arc<Semaphore>,
}

/// A connection taken from the pool; returned to it on drop unless it was lost.
struct Pooled {
    /// The connection (always `Some` until drop).
    client: Option<Client>,
    /// The pool to return it to.
    store: Arc<PgStore>,
    /// Held while the connection is in use.
    _permit: OwnedSemaphorePermit,
}

impl Pooled {
    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.store
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(client);
        }
    }
}

impl PgStore {
    /// Connects once and creates the tables if missing.
    pub(super) async fn open(config: PostgresConfig) -> Result<Self, StoreError> {
        let target = format!("PostgreSQL database {}", config.display);
        let store = PgStore {
            config,
            target,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(POOL_SIZE)),
        };
        let client = store.connect().await.map_err(|e| match e {
            StoreError::Unavailable { target, reason } | StoreError::Failed { target, reason } => {
                StoreError::Open { target, reason }
            }
            other => other,
        })?;
        let mut client = client;
        store
            .migrate(&mut client)
            .await
            .map_err(|reason| StoreError::Schema {
                target: store.target.clone(),
                reason,
            })?;
        store
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(client);
        Ok(store)
    }

    /// Brings the tables to [`SCHEMA_VERSION`] in one transaction; refuses a newer store.
    async fn migrate(&self, client: &mut Client) -> Result<(), String> {
        let text = |e: tokio_postgres::Error| {
            format!("cannot create or migrate the tables: {}", describe(&e))
        };
        let tx = client.transaction().await.map_err(text)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(text)?;
        let found = version_in(&tx).await.map_err(text)?;
        if found > SCHEMA_VERSION {
            return Err(format!(
                "the store has schema version {found}, newer than this hub's {SCHEMA_VERSION}; run the newer exchange-hub"
            ));
        }
        tx.batch_execute(SCHEMA).await.map_err(|e| {
            format!(
                "cannot create or migrate the tables: {} (the user needs CREATE on the database's schema)",
                describe(&e)
            )
        })?;
        let version = SCHEMA_VERSION as i32;
        tx.execute("DELETE FROM hub_schema", &[])
            .await
            .map_err(text)?;
        tx.execute("INSERT INTO hub_schema (version) VALUES ($1)", &[&version])
            .await
            .map_err(text)?;
        tx.commit().await.map_err(text)
    }

    /// The schema version recorded in the database.
    pub(super) async fn schema_version(self: &Arc<Self>) -> Result<i64, StoreError> {
        let mut pooled = self.get().await?;
        version_in(pooled.client()).await.map_err(|e| self.error(e))
    }

    /// Opens a new connection, reading the password file each time (so it can be rotated).
    async fn connect(&self) -> Result<Client, StoreError> {
        let mut config = self.config.config.clone();
        if let Some(path) = &self.config.password_file {
            exchange_protocol::tls::check_secret_permissions(path).map_err(|e| {
                StoreError::Failed {
                    target: self.target.clone(),
                    reason: e.to_string(),
                }
            })?;
            let password = std::fs::read_to_string(path).map_err(|e| StoreError::Failed {
                target: self.target.clone(),
                reason: format!("cannot read password file {}: {e}", path.display()),
            })?;
            config.password(password.trim_end_matches(['\r', '\n']));
        }
        // Whatever stops a connection (server down, not accepting connections, a password
        // being rotated) is the operator's to fix; the agent keeps the batch and retries.
        let unavailable = |e: tokio_postgres::Error| StoreError::Unavailable {
            target: self.target.clone(),
            reason: describe(&e),
        };
        let target = self.target.clone();
        if self.config.tls {
            let tls = exchange_protocol::tls::source_client_config(self.config.ca.as_deref())
                .map_err(|e| StoreError::Failed {
                    target: self.target.clone(),
                    reason: format!("cannot set up TLS to the store ([store] ca): {e}"),
                })?;
            let (client, connection) = config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
                .map_err(unavailable)?;
            tokio::spawn(drive(connection, target));
            Ok(client)
        } else {
            let (client, connection) = config.connect(NoTls).await.map_err(unavailable)?;
            tokio::spawn(drive(connection, target));
            Ok(client)
        }
    }

    /// Takes an open connection from the pool or opens one.
    async fn get(self: &Arc<Self>) -> Result<Pooled, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match reused {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Pooled {
            client: Some(client),
            store: self.clone(),
            _permit: permit,
        })
    }

    /// Applies a batch in one transaction: applied, duplicate or gap.
    pub(super) async fn apply(
        self: &Arc<Self>,
        batch: Batch,
    ) -> Result<super::Outcome, StoreError> {
        let id = &batch.id;
        let seq = i64::try_from(id.seq).map_err(|_| StoreError::Failed {
            target: self.target.clone(),
            reason: format!(
                "sequence number {} is larger than the store can hold",
                id.seq
            ),
        })?;
        let mut pooled = self.get().await?;
        let e = |e: tokio_postgres::Error| self.error(e);
        let tx = pooled.client().transaction().await.map_err(e)?;
        tx.execute(
            "INSERT INTO resources (resource, node) VALUES ($1, $2) ON CONFLICT (resource) DO NOTHING",
            &[&id.resource, &id.node],
        )
        .await
        .map_err(e)?;
        let owner: String = tx
            .query_one(
                "SELECT node FROM resources WHERE resource = $1",
                &[&id.resource],
            )
            .await
            .map_err(e)?
            .get(0);
        if owner != id.node {
            tx.rollback().await.map_err(e)?;
            return Err(StoreError::NotOwner {
                resource: id.resource.clone(),
                owner,
                node: id.node.clone(),
            });
        }
        let not_shared: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM catalogue WHERE resource = $1 AND (entry::jsonb ->> 'share') = 'none')",
                &[&id.resource],
            )
            .await
            .map_err(e)?
            .get(0);
        if not_shared {
            tx.rollback().await.map_err(e)?;
            return Err(StoreError::NotShared {
                resource: id.resource.clone(),
                node: id.node.clone(),
            });
        }
        tx.execute(
            "INSERT INTO streams (node, resource, stream, last_seq) VALUES ($1, $2, $3, 0)
             ON CONFLICT (node, resource, stream) DO NOTHING",
            &[&id.node, &id.resource, &id.stream],
        )
        .await
        .map_err(e)?;
        // Locks the stream row until COMMIT: a concurrent copy of this batch waits here and
        // then sees the new high-water mark.
        let row = tx
            .query_one(
                "SELECT last_seq, last_digest FROM streams WHERE node = $1 AND resource = $2 AND stream = $3 FOR UPDATE",
                &[&id.node, &id.resource, &id.stream],
            )
            .await
            .map_err(e)?;
        let last_seq: i64 = row.get(0);
        let last_digest: String = row.get(1);
        if seq <= last_seq {
            tx.rollback().await.map_err(e)?;
            return Ok(super::Outcome::Duplicate {
                last_seq: last_seq.max(0) as u64,
                last_digest,
            });
        }
        if seq > last_seq + 1 {
            // Also undoes the stream row inserted above for an unknown stream.
            tx.rollback().await.map_err(e)?;
            return Ok(super::Outcome::Gap {
                last_seq: last_seq.max(0) as u64,
            });
        }
        let upsert = tx
            .prepare(
                "INSERT INTO records (resource, key, node, fields, updated_at, stream, flags)
                 SELECT $1, u.key, $2, u.fields, $3, $4, u.flags
                 FROM unnest($5::text[], $6::text[], $7::text[]) AS u(key, fields, flags)
                 ON CONFLICT (resource, key) DO UPDATE
                 SET node = EXCLUDED.node, fields = EXCLUDED.fields, updated_at = EXCLUDED.updated_at,
                     stream = EXCLUDED.stream, flags = EXCLUDED.flags",
            )
            .await
            .map_err(e)?;
        // New keys are copied in (`COPY … FROM STDIN`, binary), which costs PostgreSQL less
        // than half of `INSERT … ON CONFLICT` per row (a first sync, a baseline into an empty
        // store); the probe stops at the first key that exists. A key inserted meanwhile by
        // another transaction makes the COPY fail and the whole batch roll back (answered 500,
        // resent by the agent).
        let exists = tx
            .prepare(
                "SELECT EXISTS (SELECT 1 FROM records WHERE resource = $1 AND key = ANY($2::text[]))",
            )
            .await
            .map_err(e)?;
        let delete = tx
            .prepare("DELETE FROM records WHERE resource = $1 AND key = ANY($2::text[])")
            .await
            .map_err(e)?;
        for run in runs(&batch.changes) {
            match run {
                Run::Upsert {
                    keys,
                    fields,
                    flags,
                } => {
                    let any: bool = tx
                        .query_one(&exists, &[&id.resource, &keys])
                        .await
                        .map_err(e)?
                        .get(0);
                    if any {
                        tx.execute(
                            &upsert,
                            &[
                                &id.resource,
                                &id.node,
                                &batch.now,
                                &id.stream,
                                &keys,
                                &fields,
                                &flags,
                            ],
                        )
                        .await
                        .map_err(e)?;
                    } else {
                        let sink = tx
                            .copy_in(
                                "COPY records (resource, key, node, fields, updated_at, stream, flags) \
                                 FROM STDIN (FORMAT binary)",
                            )
                            .await
                            .map_err(e)?;
                        let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT; 7]);
                        let mut writer = std::pin::pin!(writer);
                        for ((key, fields), flags) in keys.iter().zip(&fields).zip(&flags) {
                            writer
                                .as_mut()
                                .write(&[
                                    &id.resource,
                                    key,
                                    &id.node,
                                    fields,
                                    &batch.now,
                                    &id.stream,
                                    flags,
                                ])
                                .await
                                .map_err(e)?;
                        }
                        writer.as_mut().finish().await.map_err(e)?;
                    }
                }
                Run::Delete { keys } => {
                    tx.execute(&delete, &[&id.resource, &keys])
                        .await
                        .map_err(e)?;
                }
            }
        }
        let swept = if batch.baseline {
            tx.execute(
                "DELETE FROM records WHERE resource = $1 AND stream IS DISTINCT FROM $2",
                &[&id.resource, &id.stream],
            )
            .await
            .map_err(e)?
        } else {
            0
        };
        tx.execute(
            "UPDATE streams SET last_seq = $4, last_digest = $5 WHERE node = $1 AND resource = $2 AND stream = $3",
            &[&id.node, &id.resource, &id.stream, &seq, &batch.digest],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)?;
        Ok(super::Outcome::Applied {
            records: batch.changes.len() as u64,
            swept,
        })
    }

    /// Streams the rows of `resource` into `tx` from a task.
    pub(super) fn export(
        self: Arc<Self>,
        resource: String,
        tx: mpsc::Sender<Result<StoredRecord, StoreError>>,
    ) {
        tokio::spawn(async move {
            let result = async {
                let mut pooled = self.get().await?;
                let e = |e: tokio_postgres::Error| self.error(e);
                // `COLLATE "C"`: byte order, the same order as SQLite's.
                let rows = pooled
                    .client()
                    .query_raw(
                        "SELECT resource, key, node, fields, updated_at, flags FROM records
                         WHERE resource = $1 ORDER BY key COLLATE \"C\"",
                        [&resource],
                    )
                    .await
                    .map_err(e)?;
                let mut rows = std::pin::pin!(rows);
                while let Some(row) = rows.next().await {
                    let row = row.map_err(e)?;
                    let record = StoredRecord {
                        resource: row.try_get(0).map_err(e)?,
                        key: row.try_get(1).map_err(e)?,
                        node: row.try_get(2).map_err(e)?,
                        fields: row.try_get(3).map_err(e)?,
                        updated_at: row.try_get(4).map_err(e)?,
                        flags: row.try_get(5).map_err(e)?,
                    };
                    if tx.send(Ok(record)).await.is_err() {
                        break; // the consumer stopped reading
                    }
                }
                Ok::<(), StoreError>(())
            }
            .await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
    }

    /// Stores a catalogue entry (ownership checked) in one transaction.
    pub(super) async fn record_catalogue(
        self: &Arc<Self>,
        c: CatalogueRecord,
    ) -> Result<(), StoreError> {
        let mut pooled = self.get().await?;
        let e = |e: tokio_postgres::Error| self.error(e);
        let tx = pooled.client().transaction().await.map_err(e)?;
        tx.execute(
            "INSERT INTO resources (resource, node) VALUES ($1, $2) ON CONFLICT (resource) DO NOTHING",
            &[&c.resource, &c.node],
        )
        .await
        .map_err(e)?;
        let owner: String = tx
            .query_one(
                "SELECT node FROM resources WHERE resource = $1",
                &[&c.resource],
            )
            .await
            .map_err(e)?
            .get(0);
        if owner != c.node {
            tx.rollback().await.map_err(e)?;
            return Err(StoreError::NotOwner {
                resource: c.resource,
                owner,
                node: c.node,
            });
        }
        tx.execute(
            "INSERT INTO catalogue (resource, node, entry, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (resource) DO UPDATE SET node = EXCLUDED.node, entry = EXCLUDED.entry,
                 updated_at = EXCLUDED.updated_at",
            &[&c.resource, &c.node, &c.entry, &c.updated_at],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)
    }

    /// Every catalogue entry.
    pub(super) async fn catalogue(self: &Arc<Self>) -> Result<Vec<CatalogueRecord>, StoreError> {
        let mut pooled = self.get().await?;
        let rows = pooled
            .client()
            .query(
                "SELECT resource, node, entry, updated_at FROM catalogue ORDER BY resource COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows
            .iter()
            .map(|r| CatalogueRecord {
                resource: r.get(0),
                node: r.get(1),
                entry: r.get(2),
                updated_at: r.get(3),
            })
            .collect())
    }

    /// Every resource and its node.
    pub(super) async fn resources(self: &Arc<Self>) -> Result<Vec<(String, String)>, StoreError> {
        let mut pooled = self.get().await?;
        let rows = pooled
            .client()
            .query(
                "SELECT resource, node FROM resources ORDER BY resource COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Row counts.
    pub(super) async fn counts(self: &Arc<Self>) -> Result<Counts, StoreError> {
        let mut pooled = self.get().await?;
        let row = pooled
            .client()
            .query_one(
                "SELECT (SELECT count(*) FROM resources), (SELECT count(*) FROM streams),
                        (SELECT count(*) FROM records)",
                &[],
            )
            .await
            .map_err(|e| self.error(e))?;
        let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        Ok(Counts {
            resources: n(0),
            streams: n(1),
            records: n(2),
        })
    }

    /// Sorts a PostgreSQL failure into temporary (the agent retries after a pause) or not.
    fn error(&self, e: tokio_postgres::Error) -> StoreError {
        let transient = e.is_closed()
            || match e.code() {
                // No SQLSTATE: the connection or the network failed.
                None => true,
                Some(code) => {
                    let code = code.code();
                    // 08 connection, 40 serialization/deadlock, 53 resources, 55P03 lock,
                    // 57 operator intervention (shutdown), 58 system error.
                    ["08", "40", "53", "57", "58"]
                        .iter()
                        .any(|class| code.starts_with(class))
                        || code == "55P03"
                }
            };
        let reason = describe(&e);
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

/// Consecutive changes of one kind, applied by one statement each: upserts with distinct
/// keys (a key seen again in the run starts a new run, since one `INSERT … ON CONFLICT` may
/// not touch a row twice), or deletes. Applying the runs in order is applying the changes in
/// body order.
#[derive(Debug, PartialEq)]
enum Run<'a> {
    Upsert {
        keys: Vec<&'a str>,
        fields: Vec<&'a str>,
        /// JSON array text, `None` for a record without flags.
        flags: Vec<Option<&'a str>>,
    },
    Delete {
        keys: Vec<&'a str>,
    },
}

fn runs(changes: &[Change]) -> Vec<Run<'_>> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for change in changes {
        match change {
            Change::Upsert { key, fields, flags } => {
                let extends = matches!(out.last(), Some(Run::Upsert { .. })) && seen.insert(key);
                if !extends {
                    seen.clear();
                    seen.insert(key);
                    out.push(Run::Upsert {
                        keys: Vec::new(),
                        fields: Vec::new(),
                        flags: Vec::new(),
                    });
                }
                if let Some(Run::Upsert {
                    keys,
                    fields: f,
                    flags: g,
                }) = out.last_mut()
                {
                    keys.push(key);
                    f.push(fields);
                    g.push(flags.as_deref());
                }
            }
            Change::Delete { key } => {
                if !matches!(out.last(), Some(Run::Delete { .. })) {
                    out.push(Run::Delete { keys: Vec::new() });
                }
                if let Some(Run::Delete { keys }) = out.last_mut() {
                    keys.push(key);
                }
            }
        }
    }
    out
}

/// Runs a connection until it ends: server notices go to the debug log (their text names
/// tables, never row values), a failure is logged once as a warning.
async fn drive<S, T>(mut connection: Connection<S, T>, target: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notice(notice)) => tracing::debug!(
                store = %target,
                code = notice.code().code(),
                notice = notice.message(),
                "Store notice."
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(store = %target, error = %describe(&e), "Connection to the store lost; it will be reopened.");
                return;
            }
        }
    }
}

/// A PostgreSQL error as a sentence: the server's message and SQLSTATE (never its DETAIL,
/// which can quote row values), or the client error with its cause.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(key: &str, fields: &str) -> Change {
        Change::Upsert {
            key: key.into(),
            fields: fields.into(),
            flags: (key == "b").then(|| r#"["invalid_key"]"#.into()),
        }
    }

    fn del(key: &str) -> Change {
        Change::Delete { key: key.into() }
    }

    #[test]
    fn runs_keep_body_order_and_never_touch_a_key_twice_in_one_upsert() {
        let changes = [
            up("a", "1"),
            up("b", "2"),
            up("a", "3"),
            del("a"),
            del("b"),
            up("b", "4"),
        ];
        assert_eq!(
            runs(&changes),
            vec![
                Run::Upsert {
                    keys: vec!["a", "b"],
                    fields: vec!["1", "2"],
                    flags: vec![None, Some(r#"["invalid_key"]"#)]
                },
                Run::Upsert {
                    keys: vec!["a"],
                    fields: vec!["3"],
                    flags: vec![None]
                },
                Run::Delete {
                    keys: vec!["a", "b"]
                },
                Run::Upsert {
                    keys: vec!["b"],
                    fields: vec!["4"],
                    flags: vec![Some(r#"["invalid_key"]"#)]
                },
            ]
        );
        assert!(runs(&[]).is_empty());
    }
}
