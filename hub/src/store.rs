//! Where the hub keeps what it received: SQLite or PostgreSQL, the same schema in both.
//!
//! ```text
//! records     (resource TEXT, key TEXT, node TEXT, fields TEXT, updated_at TEXT,
//!              stream TEXT NULL,                  -- the stream whose batch last wrote it
//!              flags TEXT NULL,                   -- JSON array of the record's flags, NULL: none
//!              PRIMARY KEY (resource, key))       -- the current state of every resource
//! streams     (node TEXT, resource TEXT, stream TEXT, last_seq BIGINT, last_digest TEXT,
//!              PRIMARY KEY (node, resource, stream)) -- the high-water mark of each stream
//! resources   (resource TEXT PRIMARY KEY, node TEXT) -- which node provides each resource
//! catalogue   (resource TEXT PRIMARY KEY, node TEXT, entry TEXT, updated_at TEXT)
//!                                                 -- the catalogue entry a node reported (§10)
//! hub_schema  (version INTEGER)                   -- one row: the schema version below
//! ```
//!
//! `fields` is the JSON object text exactly as received (key order and every digit of every
//! number kept); `updated_at` is the hub's clock when the batch was committed, RFC 3339 UTC.
//! `records.stream` is NULL for rows written before schema version 2.
//!
//! Schema versions ([`SCHEMA_VERSION`]): 1 = the first three tables; 2 = `records.stream`
//! and `hub_schema`; 3 = `records.flags` and `catalogue`. Opening a store migrates it forward
//! from any earlier version in one transaction (adds the missing columns and tables); a store
//! with a higher version than this hub knows is refused.
//!
//! Architecture invariants:
//! - a batch is applied in one database transaction: ownership check, high-water-mark check,
//!   every record in order, the baseline sweep, the new high-water mark — and
//!   [`Store::apply`] returns [`AckStatus::Applied`] only after COMMIT returned;
//! - a batch whose seq is not above the stream's `last_seq` changes nothing and is answered
//!   [`AckStatus::Duplicate`]; a batch whose seq is above `last_seq + 1` changes nothing and
//!   is refused ([`StoreError::Gap`]): the hub never applies a batch after a hole;
//! - a batch marked as completing its stream's baseline also deletes every record of the
//!   resource whose `stream` is not the batch's stream (the keys the new stream did not
//!   re-send), in the same transaction;
//! - the first node that pushes a resource owns it; any other node is refused;
//! - a batch of a resource whose catalogue entry says `share = "none"` is refused (checked in
//!   the same transaction, so an entry and a batch never cross);
//! - concurrent batches of the same (node, resource, stream) are serialized (SQLite: one
//!   writer; PostgreSQL: `SELECT … FOR UPDATE` on the stream row), and a batch whose
//!   predecessors this process is applying waits for them first ([`inflight`]), so an agent
//!   may have several batches in flight without meeting a gap that is not one;
//! - nothing here logs or reports a key or a field value.

mod admission;
mod evidence;
pub(crate) mod inflight;
mod postgres;
mod schema;
mod sqlite;

use std::sync::Arc;

use exchange_protocol::batch::{Ack, AckStatus, BatchId, Line, Op};
use tokio::sync::mpsc;

use crate::config::StoreConfig;
pub use evidence::{Evidence, Proof};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or prepared at startup.
    #[error("{}", exchange_protocol::tr!(
        "cannot open {target}: {reason}",
        "无法打开 {target}：{reason}"
    ))]
    Open {
        /// The database, e.g. `SQLite database /var/lib/exchange-hub/hub.db`.
        target: String,
        /// Why, with what to do when known.
        reason: String,
    },
    /// The database was reached but its tables could not be created or migrated (or it has a
    /// newer schema than this hub).
    #[error("{target}: {reason}")]
    Schema {
        /// The database.
        target: String,
        /// Why, with what to do.
        reason: String,
    },
    /// The resource is provided by another node.
    #[error("{}", exchange_protocol::tr!(
        "resource `{resource}` is provided by node `{owner}`; node `{node}` may not push it (each resource code has exactly one providing node: check `code` in the agent's configuration, or ask the hub operator to reassign the resource)",
        "资源 `{resource}` 由节点 `{owner}` 提供；节点 `{node}` 不得推送它（每个资源代码只有一个提供节点：请检查前置机配置中的 `code`，或请交换中心管理员重新分配该资源）"
    ))]
    NotOwner {
        /// The resource code.
        resource: String,
        /// The node that owns it.
        owner: String,
        /// The node that tried to push it.
        node: String,
    },
    /// The resource's catalogue entry says it is not shared.
    #[error("{}", exchange_protocol::tr!(
        "resource `{resource}` is catalogued as share = \"none\" (不予共享) by node `{node}`: it is never delivered, so the hub refuses its batches (if it is to be shared now, change `share` in the agent's configuration: the agent reports its new catalogue entry when it starts)",
        "资源 `{resource}` 被节点 `{node}` 编目为 share = \"none\"（不予共享）：它从不交付，因此交换中心拒收其批次（如现在要共享，请修改前置机配置中的 `share`：前置机启动时会上报新的目录条目）"
    ))]
    NotShared {
        /// The resource code.
        resource: String,
        /// The node that provides it.
        node: String,
    },
    /// The database is temporarily failing (connection lost, busy, disk full); retry later.
    #[error("{}", exchange_protocol::tr!(
        "{target} is temporarily unavailable: {reason}",
        "{target} 暂时不可用：{reason}"
    ))]
    Unavailable {
        /// The database.
        target: String,
        /// Why.
        reason: String,
    },
    /// The batch's seq is above the stream's `last_seq + 1`: batches in between are missing,
    /// so the hub's store is older than the agent's queue (restored or wiped).
    #[error("{}", exchange_protocol::tr!(
        "resource `{resource}`, stream {stream}: batch seq {seq} does not follow the hub's last applied seq {last_seq} (the hub accepts only seq {next}); nothing was applied. The hub's store was restored from an older copy or wiped: stop the resource and resynchronize it with `exchange-agent resync {resource}`",
        "资源 `{resource}`，数据流 {stream}：批次序号 {seq} 不接续交换中心最后应用的序号 {last_seq}（交换中心只接受序号 {next}）；未应用任何内容。交换中心的存储是从较旧的副本恢复的或被清空：请停止该资源并用 `exchange-agent resync {resource}` 重新同步", next = last_seq + 1
    ))]
    Gap {
        /// The resource code.
        resource: String,
        /// The stream id.
        stream: String,
        /// The refused batch's seq.
        seq: u64,
        /// The highest seq the hub applied for the stream (0 for an unknown stream).
        last_seq: u64,
    },
    /// Any other database failure.
    #[error("{}", exchange_protocol::tr!(
        "{target} failed: {reason}",
        "{target} 失败：{reason}"
    ))]
    Failed {
        /// The database.
        target: String,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// A database failure: [`StoreError::Unavailable`] when `transient` (the agent retries
    /// after a pause), else [`StoreError::Failed`].
    fn database(target: &str, transient: bool, reason: String) -> Self {
        let target = target.to_owned();
        if transient {
            StoreError::Unavailable { target, reason }
        } else {
            StoreError::Failed { target, reason }
        }
    }
}

/// One stored record, as [`Store::export`] yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The resource code.
    pub resource: String,
    /// The subject identifier.
    pub key: String,
    /// The node that pushed the record.
    pub node: String,
    /// The fields, JSON object text exactly as received.
    pub fields: String,
    /// When the hub committed the batch that last wrote the record (RFC 3339 UTC).
    pub updated_at: String,
    /// The record's flags as a JSON array text (`["invalid_key"]`), `None` when it has none.
    pub flags: Option<String>,
}

/// A resource's catalogue entry as a node reported it (docs/PROTOCOL.md §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueRecord {
    /// The resource code.
    pub resource: String,
    /// The node that reported it.
    pub node: String,
    /// The entry, JSON object text as received (code, name, share, fields).
    pub entry: String,
    /// When the hub stored it (RFC 3339 UTC).
    pub updated_at: String,
}

/// The schema version this hub writes (see the module documentation).
pub const SCHEMA_VERSION: i64 = 3;

/// How much the store holds, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Resources that some node pushed.
    pub resources: u64,
    /// Agent queues seen.
    pub streams: u64,
    /// Current records over all resources.
    pub records: u64,
}

/// A record change prepared for the database: fields already serialized.
#[derive(Debug)]
enum Change {
    /// Insert or replace `key` with `fields` (JSON object text) and `flags` (JSON array text).
    Upsert {
        key: String,
        fields: String,
        flags: Option<String>,
    },
    /// Remove `key`.
    Delete { key: String },
}

/// Everything one transaction needs, owned so it can move to a blocking thread.
#[derive(Debug)]
struct Batch {
    /// Which batch this is.
    id: BatchId,
    /// The changes, in order.
    changes: Vec<Change>,
    /// The commit time written to `updated_at`.
    now: String,
    /// SM3 of the batch's NDJSON, kept as the stream's `last_digest`.
    digest: String,
    /// The batch completes its stream's baseline: sweep the records other streams wrote.
    baseline: bool,
    /// The batch's signature, certificate and body, kept when it was signed.
    evidence: Option<Evidence>,
}

/// The rows of one resource, ordered by key (byte order of the UTF-8 text).
pub struct RecordStream {
    /// Rows produced by a reader task; an error ends the stream.
    rx: mpsc::Receiver<Result<StoredRecord, StoreError>>,
}

impl RecordStream {
    /// The next row, `None` after the last.
    pub async fn next(&mut self) -> Option<Result<StoredRecord, StoreError>> {
        self.rx.recv().await
    }
}

/// How many exported rows may wait in memory for the consumer.
const EXPORT_BUFFER: usize = 256;

/// What applying a batch did.
pub(crate) enum Outcome {
    /// Committed now.
    Applied {
        /// Records in the batch.
        records: u64,
        /// Records of other streams deleted by the baseline sweep.
        swept: u64,
    },
    /// Refused: the seq is above `last_seq + 1`; nothing changed.
    Gap {
        /// The stream's high-water mark.
        last_seq: u64,
    },
    /// Applied before; the stream's high-water mark is `last_seq`.
    Duplicate {
        /// The highest seq applied for the batch's stream.
        last_seq: u64,
        /// The content digest of the batch applied at `last_seq`.
        last_digest: String,
    },
}

/// The hub's store; cheap to clone (clones share the database connections).
#[derive(Clone)]
pub struct Store {
    /// The backend.
    backend: Backend,
    /// Batches being applied now, per stream.
    in_flight: Arc<inflight::InFlight>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<sqlite::SqliteStore>),
    Postgres(Arc<postgres::PgStore>),
}

impl Store {
    /// Opens the store, creating the database file (SQLite) and the tables if missing.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let backend = match config {
            StoreConfig::Sqlite { path } => {
                Backend::Sqlite(Arc::new(sqlite::SqliteStore::open(path.clone()).await?))
            }
            StoreConfig::Postgres(pg) => {
                Backend::Postgres(Arc::new(postgres::PgStore::open((**pg).clone()).await?))
            }
        };
        Ok(Store {
            backend,
            in_flight: Arc::default(),
        })
    }

    /// Applies a batch in one transaction and says whether it was applied or a duplicate.
    ///
    /// Returns only after the transaction committed (or changed nothing, for a duplicate).
    /// `digest` is the batch's content digest (SM3 hex); the stream keeps the digest of its
    /// last applied batch so a resend can be told from a different batch with a reused seq.
    /// `baseline` marks the batch that completes its stream's baseline: once its records are
    /// applied, every record of the resource last written by another stream is deleted.
    /// `arrival` is the entry [`Store::arriving`] gave for it: later batches of the stream wait
    /// for it (and for the hold taken here) until the backend releases them.
    pub async fn apply(
        &self,
        id: &BatchId,
        digest: &str,
        records: &[Line<'_>],
        baseline: bool,
        arrival: inflight::Entry,
        evidence: Option<Evidence>,
    ) -> Result<Ack, StoreError> {
        let changes = records
            .iter()
            .map(|r| match (r.op, r.fields) {
                (Op::Upsert, fields) => Change::Upsert {
                    key: r.key.to_string(),
                    fields: fields.map_or_else(|| "{}".to_owned(), |f| f.get().to_owned()),
                    flags: (!r.flags.is_empty())
                        .then(|| serde_json::to_string(&r.flags).expect("strings serialize")),
                },
                (Op::Delete, _) => Change::Delete {
                    key: r.key.to_string(),
                },
            })
            .collect();
        let batch = Batch {
            id: id.clone(),
            changes,
            now: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            digest: digest.to_ascii_lowercase(),
            baseline,
            evidence,
        };
        // Held until the batch is applied or refused (SQLite), or until it holds its stream's
        // mark under lock (PostgreSQL): a later batch of the stream that arrived meanwhile
        // waits for it rather than meet a gap.
        let hold = inflight::Hold::new(arrival, self.in_flight.enter(id).await);
        let applied = match &self.backend {
            Backend::Sqlite(s) => {
                let applied = s.clone().apply(batch).await;
                drop(hold);
                applied?
            }
            Backend::Postgres(p) => p.apply(batch, hold).await?,
        };
        Ok(match applied {
            Outcome::Applied { records, swept } => Ack {
                status: AckStatus::Applied,
                seq: id.seq,
                records,
                last_seq: id.seq,
                last_digest: digest.to_ascii_lowercase(),
                swept,
            },
            Outcome::Gap { last_seq } => {
                return Err(StoreError::Gap {
                    resource: id.resource.clone(),
                    stream: id.stream.clone(),
                    seq: id.seq,
                    last_seq,
                });
            }
            Outcome::Duplicate {
                last_seq,
                last_digest,
            } => Ack {
                status: AckStatus::Duplicate,
                seq: id.seq,
                records: 0,
                last_seq,
                last_digest,
                swept: 0,
            },
        })
    }

    /// Notes that batch `id` has arrived (its headers read): until the returned entry is
    /// dropped, later batches of its stream wait for it before they are applied.
    pub(crate) fn arriving(&self, id: &BatchId) -> inflight::Entry {
        self.in_flight.register(id)
    }

    /// The current records of `resource`, ordered by key; empty for an unknown resource.
    pub fn export(&self, resource: &str) -> RecordStream {
        let (tx, rx) = mpsc::channel(EXPORT_BUFFER);
        match &self.backend {
            Backend::Sqlite(s) => s.clone().export(resource.to_owned(), tx),
            Backend::Postgres(p) => p.clone().export(resource.to_owned(), tx),
        }
        RecordStream { rx }
    }

    /// The batch that last wrote the record `key` of `resource`, with its evidence; `None`
    /// when there is no such record or its batch was not signed.
    pub async fn proof(&self, resource: &str, key: &str) -> Result<Option<Proof>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.clone().proof(resource.to_owned(), key.to_owned()).await,
            Backend::Postgres(p) => p.proof(resource, key).await,
        }
    }

    /// Every resource some node pushed, with its providing node, ordered by resource code.
    pub async fn resources(&self) -> Result<Vec<(String, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.clone().resources().await,
            Backend::Postgres(p) => p.resources().await,
        }
    }

    /// Stores the catalogue entry of `resource` reported by `node` (replacing the previous
    /// one); refused when another node provides the resource. The first node to push a batch
    /// or report an entry owns the resource.
    pub async fn record_catalogue(
        &self,
        node: &str,
        resource: &str,
        entry: &str,
    ) -> Result<(), StoreError> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let record = CatalogueRecord {
            resource: resource.to_owned(),
            node: node.to_owned(),
            entry: entry.to_owned(),
            updated_at: now,
        };
        match &self.backend {
            Backend::Sqlite(s) => s.clone().record_catalogue(record).await,
            Backend::Postgres(p) => p.record_catalogue(record).await,
        }
    }

    /// Every catalogue entry, ordered by resource code.
    pub async fn catalogue(&self) -> Result<Vec<CatalogueRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.clone().catalogue().await,
            Backend::Postgres(p) => p.catalogue().await,
        }
    }

    /// How much the store holds.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.clone().counts().await,
            Backend::Postgres(p) => p.counts().await,
        }
    }

    /// The schema version the store is at (after the migration [`Store::open`] ran).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.clone().schema_version().await,
            Backend::Postgres(p) => p.schema_version().await,
        }
    }

    /// The database, for messages (no password).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Sqlite(s) => s.target.clone(),
            Backend::Postgres(p) => p.target.clone(),
        }
    }
}
