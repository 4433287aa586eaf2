//! The PostgreSQL backend: a small pool of tokio-postgres connections.
//!
//! A lost connection is dropped from the pool and replaced on the next use, so a database
//! restart shows as a few `503 Retry-After` answers, never as a hub restart. Concurrent
//! batches of one (node, resource, stream) are serialized by `SELECT … FOR UPDATE` on the
//! stream row, which makes the high-water-mark check safe with several hubs on one database.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_postgres::{Client, NoTls};

use super::{Batch, Change, Counts, StoreError, StoredRecord, warn_gap};
use crate::config::PostgresConfig;

/// Connections opened at most at once.
const POOL_SIZE: usize = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    resource   TEXT NOT NULL,
    key        TEXT NOT NULL,
    node       TEXT NOT NULL,
    fields     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
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
";

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
        client
            .batch_execute(SCHEMA)
            .await
            .map_err(|e| StoreError::Open {
                target: store.target.clone(),
                reason: format!(
                    "cannot create the tables: {} (the user needs CREATE on the database's schema)",
                    describe(&e)
                ),
            })?;
        store
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(client);
        Ok(store)
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
        let (client, connection) =
            config
                .connect(NoTls)
                .await
                .map_err(|e| StoreError::Unavailable {
                    target: self.target.clone(),
                    reason: describe(&e),
                })?;
        let target = self.target.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(store = %target, error = %describe(&e), "Connection to the store lost; it will be reopened.");
            }
        });
        Ok(client)
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

    /// Applies a batch; `Some(records)` when applied, `None` for a duplicate.
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
        warn_gap(id, last_seq.max(0) as u64);
        let upsert = tx
            .prepare(
                "INSERT INTO records (resource, key, node, fields, updated_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (resource, key) DO UPDATE
                 SET node = EXCLUDED.node, fields = EXCLUDED.fields, updated_at = EXCLUDED.updated_at",
            )
            .await
            .map_err(e)?;
        let delete = tx
            .prepare("DELETE FROM records WHERE resource = $1 AND key = $2")
            .await
            .map_err(e)?;
        for change in &batch.changes {
            match change {
                Change::Upsert { key, fields } => {
                    tx.execute(&upsert, &[&id.resource, key, &id.node, fields, &batch.now])
                        .await
                        .map_err(e)?;
                }
                Change::Delete { key } => {
                    tx.execute(&delete, &[&id.resource, key]).await.map_err(e)?;
                }
            }
        }
        tx.execute(
            "UPDATE streams SET last_seq = $4, last_digest = $5 WHERE node = $1 AND resource = $2 AND stream = $3",
            &[&id.node, &id.resource, &id.stream, &seq, &batch.digest],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)?;
        Ok(super::Outcome::Applied(batch.changes.len() as u64))
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
                        "SELECT resource, key, node, fields, updated_at FROM records
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
