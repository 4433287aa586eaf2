//! The PostgreSQL backend: a small pool of tokio-postgres connections.
//!
//! A lost connection is dropped from the pool and replaced on the next use, so a database
//! restart shows as a few `503 Retry-After` answers, never as a hub restart. Concurrent
//! batches of one (node, resource, stream) are serialized by `SELECT … FOR UPDATE` on the
//! stream row, which makes the high-water-mark check safe with several hubs on one database.
//! A batch of upserts only takes that lock after writing its records and then lets the
//! stream's next batch go on, so the next one writes while this one commits; a batch with a
//! delete or the baseline mark takes it first and holds the next one until it commits
//! (`batch.rs`, [`PgStore::apply`]).
//!
//! A batch is applied with one statement per run of upserts (new keys: `COPY … FROM STDIN` in
//! binary under a savepoint, not probed key by key: a key that exists fails the COPY, which is
//! rolled back to the savepoint; else `INSERT … SELECT FROM unnest(…) ON CONFLICT DO UPDATE`)
//! or deletes (`DELETE … WHERE key = ANY(…)`), never row by row.
//!
//! TLS: when the store URL asks for it (`sslmode` prefer/require/verify-ca/verify-full, or
//! `[store] ca` set) every connection is TLS, verified against `[store] ca` or the system
//! roots (host name included), with no plaintext fallback; otherwise plaintext. Server
//! notices (`CREATE TABLE IF NOT EXISTS` on an existing table…) are logged at debug level only.

mod batch;
mod pool;
mod records;

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_postgres::Client;

use super::{CatalogueRecord, Change, Counts, SCHEMA_VERSION, StoreError, StoredRecord, schema};
use crate::config::PostgresConfig;

/// Connections opened at most at once.
const POOL_SIZE: usize = 4;

/// The tables of the current schema version that PostgreSQL writes its own way (the others are
/// [`schema::SHARED_TABLES`]); with them and the columns older versions lack, the [`migration`]
/// run by [`PgStore::migrate`] under an advisory lock, so two hubs starting at once do not race.
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
";

/// The statements that bring a store of any earlier version to the current one: [`SCHEMA`],
/// [`schema::SHARED_TABLES`], then the columns older versions lack.
fn migration() -> String {
    let mut sql = format!(
        "{SCHEMA}{}{}",
        schema::SHARED_TABLES,
        super::evidence::table("BYTEA", "BIGINT")
    );
    for added in &schema::ADDED_COLUMNS {
        sql.push_str(&format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {};\n",
            added.table, added.column, added.definition
        ));
    }
    sql
}

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
    } else {
        Ok(schema::version_before_hub_schema(tables.get::<_, bool>(1)))
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

impl PgStore {
    /// Connects once and creates the tables if missing.
    pub(super) async fn open(config: PostgresConfig) -> Result<Self, StoreError> {
        let target = exchange_protocol::tr!(
            "PostgreSQL database {}",
            "PostgreSQL 数据库 {}",
            config.display
        );
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
            exchange_protocol::tr!(
                "cannot create or migrate the tables: {}",
                "无法创建或迁移数据表：{}",
                describe(&e)
            )
        };
        let tx = client.transaction().await.map_err(text)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(text)?;
        let found = version_in(&tx).await.map_err(text)?;
        schema::refuse_newer(found)?;
        tx.batch_execute(&migration()).await.map_err(|e| {
            exchange_protocol::tr!(
                "cannot create or migrate the tables: {} (the user needs CREATE on the database's schema)",
                "无法创建或迁移数据表：{}（该用户需要数据库模式上的 CREATE 权限）",
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

    /// Every catalogue entry.
    pub(super) async fn catalogue(self: &Arc<Self>) -> Result<Vec<CatalogueRecord>, StoreError> {
        let rows = self
            .read_all(
                "SELECT resource, node, entry, updated_at FROM catalogue ORDER BY resource COLLATE \"C\"",
            )
            .await?;
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
    /// The batch that last wrote a record, with its evidence ([`super::evidence::PROOF`]).
    pub(super) async fn proof(
        self: &Arc<Self>,
        resource: &str,
        key: &str,
    ) -> Result<Option<super::Proof>, StoreError> {
        let mut pooled = self.get().await?;
        let row = pooled
            .client()
            .query_opt(super::evidence::PROOF, &[&resource, &key])
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.map(|r| super::Proof {
            node: r.get(0),
            stream: r.get(1),
            seq: r.get::<_, i64>(2) as u64,
            applied_at: r.get(3),
            sm3: r.get(4),
            evidence: super::Evidence {
                signature: r.get(5),
                certificate: r.get(6),
                body: r.get(7),
            },
        }))
    }

    pub(super) async fn resources(self: &Arc<Self>) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .read_all("SELECT resource, node FROM resources ORDER BY resource COLLATE \"C\"")
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Every row of `sql`, a query without parameters.
    async fn read_all(self: &Arc<Self>, sql: &str) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let mut pooled = self.get().await?;
        pooled
            .client()
            .query(sql, &[])
            .await
            .map_err(|e| self.error(e))
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
        StoreError::database(&self.target, transient, describe(&e))
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
