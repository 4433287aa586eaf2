//! The durable local queue: one redb file, `<data_dir>/queue.redb`.
//!
//! # Format (version 1)
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"format"` / `"stream"` | `b"1"` / 16 random bytes naming this queue |
//! | `state` | resource code | JSON [`ResourceState`]: cursor, next batch seq, bound of the batches sent, counters |
//! | `batches` | (resource, seq) | 48-byte header (records u32, raw length u32, created unix ms i64, SM3 of the NDJSON 32 bytes), then the NDJSON body compressed with zstd |
//! | `digests` | (resource, key) | SM3 of the delivered record (32 bytes) · snapshot generation (u64 LE) |
//! | `quarantine` | (resource, n) | JSON [`QuarantineEntry`], n counting distinct entries from 1 |
//! | `quarantine_index` | (resource, SM3 of key · NUL · reason) | n of that entry (a row quarantined again for the same reason updates its entry) |
//! | `audit_pending` | (resource, stream, seq) | JSON `{"detail": …, "acked_ms": …}`: the `batch.acked` audit entry's detail of an acknowledged batch, and when (unix ms), until the entry is in the audit log (a table versions before it ignore; the format stays 1) |
//!
//! # Invariants
//! - Only post-policy records are written: a batch body holds exactly what will leave, and
//!   `digests` holds digests, never values.
//! - The cursor advance (`state`) and the batches holding the rows it covers are written in
//!   one write transaction ([`Txn`]), committed with fsync: after a crash either both are
//!   there or neither.
//! - A batch is removed only by [`Queue::ack`], which the pusher calls after the hub's 200
//!   acknowledgement. Its seq, body and digest never change after the commit that created
//!   it, so a resend after a crash is byte-identical and the hub deduplicates it.
//! - An acknowledged batch's audit entry is never lost: [`Queue::ack`] stores its detail
//!   (`audit_pending`) in the transaction that removes the batch; the pusher appends the
//!   `batch.acked` entry to the audit log, then removes the detail with a commit that does not
//!   fsync ([`Queue::audited`]; the next durable commit persists it). [`Queue::open`] appends,
//!   marked `"recovered": true`, each stored detail whose entry the audit log does not hold (a
//!   crash between the ack and the append, or an audit log that could not be written), and
//!   then removes them all: every acknowledged batch has a `batch.acked` entry, at least once
//!   (the log and `[audit] archive_dir` are searched first; an entry in a file handed to
//!   `archive_command` is not found, and is appended again, marked recovered).
//! - The file's page cache is bounded (8 MiB): memory does not grow with the queue.
//! - `ResourceState::sent_through` bounds the seqs that may have left the agent: it is raised
//!   and committed before any batch above it is sent ([`Queue::raise_sent_through`], and
//!   [`Queue::ack`] for the window after the acknowledged batch), and never exceeds
//!   `next_seq - 1`, so every batch it covers was already committed, unchangeable, when it
//!   was raised. A copy of the file taken at any time therefore shares every batch up to its
//!   `sent_through` with whatever ran on from the original; a hub mark above it was set by
//!   another history (a restored copy), never by this one (docs/PROTOCOL.md §5).
//!   States written before the field existed get it when the file is opened: `next_seq - 1`
//!   when nothing is queued, else the oldest queued seq plus [`MAX_IN_FLIGHT`]
//!   minus one (what an earlier version may have had in flight), capped at `next_seq - 1`.
//! - Sequence numbers of a resource are contiguous from 1 within one stream. The queue's own
//!   stream id is drawn when the file is created; `resync` gives a resource a stream of its
//!   own (`ResourceState::stream`), numbered from 1 again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use exchange_connectors::Value;
use exchange_protocol::batch;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const BATCHES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("batches");
const DIGESTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("digests");
const QUARANTINE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("quarantine");
const QUARANTINE_INDEX: TableDefinition<(&str, &[u8]), u64> =
    TableDefinition::new("quarantine_index");
const AUDIT_PENDING: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("audit_pending");

const FORMAT: &[u8] = b"1";

/// How many batches of one resource may await the hub's answer at once: the push window, and
/// so how far past the oldest queued batch `sent_through` may stand (module doc).
pub const MAX_IN_FLIGHT: usize = 4;

/// redb's page cache (its default is 1 GiB): the agent's memory must not grow with the
/// queue, however long the hub is away. Pages not cached are read from the file (and the
/// operating system's cache).
const CACHE_BYTES: usize = 8 * 1024 * 1024;
const HEADER_LEN: usize = 4 + 4 + 8 + 32;

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Another process holds the queue.
    #[error(
        "the queue {path} is in use by another exchange-agent process (is the service running? stop it, or use its status output)"
    )]
    Locked {
        /// The queue file.
        path: PathBuf,
    },
    /// The data directory or file could not be opened.
    #[error("cannot open the queue {path}: {reason}")]
    Open {
        /// The queue file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A read or write failed.
    #[error("queue storage error while {context}: {reason}")]
    Storage {
        /// What was being done.
        context: &'static str,
        /// The storage error.
        reason: String,
    },
    /// The file holds something this version does not understand.
    #[error("the queue file is not in a format this version understands: {0}")]
    Format(String),
}

fn storage<E: std::fmt::Display>(context: &'static str) -> impl Fn(E) -> QueueError {
    move |e| QueueError::Storage {
        context,
        reason: e.to_string(),
    }
}

/// Persistent state of one resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceState {
    /// Incremental mode: cursor of the last row enqueued or quarantined.
    pub cursor: Option<Vec<Value>>,
    /// Sequence number the next batch gets (from 1).
    pub next_seq: u64,
    /// Batches waiting for the hub.
    pub queued_batches: u64,
    /// Records in those batches.
    pub queued_records: u64,
    /// Stored (compressed) bytes of those batches.
    pub queued_bytes: u64,
    /// Records enqueued since the queue was created.
    pub pulled_records: u64,
    /// Records acknowledged by the hub since the queue was created.
    pub pushed_records: u64,
    /// The highest seq of this stream that may have left the agent (0: none). Committed
    /// before any batch above it is sent, never above `next_seq - 1`: a hub mark above it is
    /// not one this queue's history set (module doc). States written before the field get it
    /// when the queue is opened.
    #[serde(default)]
    pub sent_through: u64,
    /// Rows sent to quarantine since the queue was created.
    pub quarantined: u64,
    /// Rows whose key is not a valid identifier of its kind (quarantined or delivered
    /// flagged), the data-quality figure: for a snapshot resource, the rows of the last
    /// complete scan; for an incremental one, the rows read since `invalid_keys_since` (a row
    /// counted again each time it changes and is read again).
    #[serde(default)]
    pub invalid_keys: u64,
    /// Snapshot: when the scan that `invalid_keys` counts ended; incremental: since when rows
    /// are counted (the stream's first pull, or a `cursor reset`). RFC 3339.
    #[serde(default)]
    pub invalid_keys_since: Option<String>,
    /// End of the last successful pull (RFC 3339).
    pub last_pull: Option<String>,
    /// Last acknowledgement by the hub (RFC 3339).
    pub last_push: Option<String>,
    /// Snapshot mode progress.
    pub snapshot: SnapshotState,
    /// The stream this resource's batches belong to (32 hex digits), drawn anew by a resync;
    /// `None`: the queue's own stream ([`Queue::stream`]).
    #[serde(default)]
    pub stream: Option<String>,
    /// Where the stream's baseline (its first full read of the resource) stands.
    #[serde(default = "Baseline::legacy")]
    pub baseline: Baseline,
    /// Why the resource is stopped until an operator acts; pulling and pushing skip it.
    #[serde(default)]
    pub halt: Option<Halt>,
    /// What determined the stream when it started: relation, key, cursor, field rules.
    #[serde(default)]
    pub shape: Option<crate::pipeline::fingerprint::Shape>,
    /// Source type of every selected column when the stream started reading under its
    /// shape: a column that changes type pauses the resource until it is back, or an operator
    /// accepts it (`accept-config`, `resync`).
    #[serde(default)]
    pub columns: Option<BTreeMap<String, String>>,
    /// The last pull error, kept across processes until a pull succeeds.
    #[serde(default)]
    pub pull_error: Option<Note>,
    /// The last push error, kept across processes until a push succeeds.
    #[serde(default)]
    pub push_error: Option<Note>,
}

impl ResourceState {
    /// The stream id of this resource's batches.
    pub fn stream_or<'a>(&'a self, queue_stream: &'a str) -> &'a str {
        self.stream.as_deref().unwrap_or(queue_stream)
    }
}

/// Where a stream's baseline stands. The batch that completes the baseline carries the
/// `exchange-baseline: complete` header: once the hub applied it, the hub deletes the records
/// of the resource that no batch of this stream wrote (docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Baseline {
    /// The stream's first full read is under way; it completes with a caught-up page whose
    /// horizon has passed `since`, the source's clock when the read began (set by the first
    /// pull), so every row that existed then has been re-sent.
    Reading {
        /// The source's clock when the read began.
        #[serde(default)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The full read is complete; the batch `seq` carries the baseline mark (0: none, for
    /// streams that started before this version and never send the mark).
    Complete {
        /// The batch that completes the baseline.
        seq: u64,
    },
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline::Reading { since: None }
    }
}

impl Baseline {
    /// Whether the stream's first full read is still under way.
    pub fn is_reading(&self) -> bool {
        matches!(self, Baseline::Reading { .. })
    }

    /// The baseline of a state written before baselines existed: complete, and never marked
    /// (such a stream's hub records carry no stream, so a sweep would remove them).
    fn legacy() -> Baseline {
        Baseline::Complete { seq: 0 }
    }
}

/// A resource stopped until an operator acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    /// When it stopped (RFC 3339).
    pub at: String,
    /// What happened.
    pub kind: HaltKind,
    /// What happened and which command to run, as sentences.
    pub reason: String,
}

/// Why a resource stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltKind {
    /// The hub lacks batches of the stream (its store was restored or wiped): resync.
    HubGap,
    /// The hub has later batches than the queue (the data directory was restored): resync.
    QueueRewound,
    /// What determines the stream changed in the configuration: resync or keep the cursor.
    ConfigChanged,
}

/// An error kept in the state, so `status` shows it after the process that met it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// When (RFC 3339).
    pub at: String,
    /// The error, as shown to the administrator (never a value).
    pub message: String,
}

/// Where a snapshot scan stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// Generation of the current scan; rows seen in it carry this number in `digests`.
    pub generation: u64,
    /// Key of the last row scanned in this generation (none: scan not started).
    pub position: Option<Vec<Value>>,
    /// The scan is complete and deletes are being emitted for rows not seen.
    pub sweeping: bool,
    /// Rows with an invalid key read by the current scan so far; the scan's figure becomes
    /// [`ResourceState::invalid_keys`] when it completes.
    #[serde(default)]
    pub invalid_keys: u64,
}

/// A quarantined row: why, and which key, never its values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// When it was last seen (RFC 3339).
    pub at: String,
    /// How many times it was seen (a snapshot re-reads a bad row every run).
    #[serde(default = "one")]
    pub times: u64,
    /// The key as it would have left, when known.
    pub key: Option<String>,
    /// What was wrong.
    pub reason: String,
}

/// Which stage an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the source and enqueueing.
    Pull,
    /// Sending to the hub.
    Push,
}

/// What a resync discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Discarded {
    /// Batches removed from the queue.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
}

/// A queued batch's header, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct BatchInfo {
    /// Its sequence number.
    pub seq: u64,
    /// Records in it.
    pub records: u32,
    /// Uncompressed NDJSON length.
    pub raw_len: u32,
    /// Bytes stored (header and compressed body).
    pub stored_bytes: u64,
    /// When it was enqueued (RFC 3339).
    pub created: String,
    /// SM3 of the NDJSON, hex.
    pub digest: String,
}

/// A batch as stored.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    /// Its sequence number.
    pub seq: u64,
    /// Number of records.
    pub records: u32,
    /// Uncompressed NDJSON length.
    pub raw_len: u32,
    /// SM3 of the NDJSON, hex.
    pub digest: String,
    /// zstd-compressed NDJSON, as sent.
    pub body: Vec<u8>,
}

/// The queue. Cheap to clone; all clones share one database handle.
#[derive(Clone)]
pub struct Queue {
    db: Arc<Database>,
    stream: String,
    path: PathBuf,
    /// Audit entries of acknowledged batches that could not be appended in this process, to
    /// append again after the next one that could ([`Queue::retry_audit`]).
    unaudited: Arc<std::sync::Mutex<std::collections::BTreeSet<PendingAudit>>>,
}

/// The `batch.acked` audit entry of an acknowledged batch, stored with the acknowledgement
/// ([`Queue::ack`]) until it is in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PendingAudit {
    /// The resource.
    pub resource: String,
    /// The stream of the batch.
    pub stream: String,
    /// The batch's seq.
    pub seq: u64,
}

/// What [`Queue::ack`] did.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The bound of the batches that may have left the agent, as now stored.
    pub sent_through: u64,
    /// The batch's audit entry, stored until [`Queue::audited`].
    pub pending: PendingAudit,
}

/// A value of `audit_pending`.
#[derive(Debug, Serialize, Deserialize)]
struct StoredAudit {
    /// The entry's detail, as it is appended.
    detail: serde_json::Value,
    /// When the batch was acknowledged (unix ms).
    acked_ms: i64,
}

impl Queue {
    /// Opens (creating if needed) the queue in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Queue, QueueError> {
        use std::os::unix::fs::PermissionsExt;
        let path = data_dir.join("queue.redb");
        let open_err = |reason: String| QueueError::Open {
            path: path.clone(),
            reason,
        };
        crate::data_dir::prepare(data_dir).map_err(open_err)?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    QueueError::Locked { path: path.clone() }
                }
                other => open_err(other.to_string()),
            })?;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        let tx = db.begin_write().map_err(storage("opening"))?;
        let stream = {
            let mut meta = tx.open_table(META).map_err(storage("opening"))?;
            let format = meta
                .get("format")
                .map_err(storage("opening"))?
                .map(|v| v.value().to_vec());
            match format {
                Some(f) if f == FORMAT => {}
                Some(f) => {
                    return Err(QueueError::Format(format!(
                        "format {:?}",
                        String::from_utf8_lossy(&f)
                    )));
                }
                None => {
                    meta.insert("format", FORMAT).map_err(storage("opening"))?;
                    let id: [u8; 16] = rand::random();
                    meta.insert("stream", id.as_slice())
                        .map_err(storage("opening"))?;
                }
            }
            let id = meta
                .get("stream")
                .map_err(storage("opening"))?
                .ok_or_else(|| QueueError::Format("no stream id".into()))?
                .value()
                .to_vec();
            hex::encode(id)
        };
        for_each_table(&tx)?;
        migrate_sent_through(&tx)?;
        tx.commit().map_err(storage("opening"))?;
        let queue = Queue {
            db: Arc::new(db),
            stream,
            path,
            unaudited: Arc::default(),
        };
        match queue.recover_audit() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                entries = n,
                "Acknowledged batches were missing from the audit log (a crash between the acknowledgement and the audit entry); their entries were appended, marked recovered (已确认批次的审计记录因崩溃未写入，现已补写)."
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "Cannot append the audit entries of acknowledged batches; they stay in the queue and are appended at the next start (无法补写已确认批次的审计记录，记录保留在队列中，下次启动时补写)."
            ),
        }
        Ok(queue)
    }

    /// Opens the queue only if it exists (for read-only commands such as `status`, which must
    /// not create a file the service user cannot open later).
    pub fn open_existing(data_dir: &Path) -> Result<Option<Queue>, QueueError> {
        if data_dir.join("queue.redb").exists() {
            Self::open(data_dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The id of this queue (32 hex digits), sent with every batch.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The queue file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a write transaction.
    pub fn begin(&self) -> Result<Txn, QueueError> {
        Ok(Txn {
            tx: self.db.begin_write().map_err(storage("starting a write"))?,
        })
    }

    /// The state of one resource.
    pub fn state(&self, resource: &str) -> Result<ResourceState, QueueError> {
        let tx = self.db.begin_read().map_err(storage("reading state"))?;
        let table = tx.open_table(STATE).map_err(storage("reading state"))?;
        decode_state(
            table
                .get(resource)
                .map_err(storage("reading state"))?
                .map(|v| v.value().to_vec()),
        )
    }

    /// The states of every resource that has one.
    pub fn states(&self) -> Result<BTreeMap<String, ResourceState>, QueueError> {
        let tx = self.db.begin_read().map_err(storage("reading state"))?;
        let table = tx.open_table(STATE).map_err(storage("reading state"))?;
        let mut out = BTreeMap::new();
        for entry in table.iter().map_err(storage("reading state"))? {
            let (k, v) = entry.map_err(storage("reading state"))?;
            out.insert(
                k.value().to_owned(),
                decode_state(Some(v.value().to_vec()))?,
            );
        }
        Ok(out)
    }

    /// Stored bytes of every queued batch.
    pub fn total_bytes(&self) -> Result<u64, QueueError> {
        Ok(self.states()?.values().map(|s| s.queued_bytes).sum())
    }

    /// The oldest queued batch of a resource.
    pub fn head(&self, resource: &str) -> Result<Option<StoredBatch>, QueueError> {
        let tx = self.db.begin_read().map_err(storage("reading a batch"))?;
        let table = tx.open_table(BATCHES).map_err(storage("reading a batch"))?;
        let mut range = table
            .range((resource, 0u64)..=(resource, u64::MAX))
            .map_err(storage("reading a batch"))?;
        match range.next() {
            None => Ok(None),
            Some(entry) => {
                let (k, v) = entry.map_err(storage("reading a batch"))?;
                Ok(Some(decode_batch(k.value().1, v.value())?))
            }
        }
    }

    /// Up to `limit` queued batches of a resource with a seq above `after`, oldest first.
    pub fn oldest(
        &self,
        resource: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredBatch>, QueueError> {
        let tx = self.db.begin_read().map_err(storage("reading a batch"))?;
        let table = tx.open_table(BATCHES).map_err(storage("reading a batch"))?;
        let mut out = Vec::new();
        for entry in table
            .range((resource, after.saturating_add(1))..=(resource, u64::MAX))
            .map_err(storage("reading a batch"))?
            .take(limit)
        {
            let (k, v) = entry.map_err(storage("reading a batch"))?;
            out.push(decode_batch(k.value().1, v.value())?);
        }
        Ok(out)
    }

    /// Removes an acknowledged batch. Called only after the hub's 200 acknowledgement. In the
    /// same transaction, raises `sent_through` over the window after it (up to
    /// [`MAX_IN_FLIGHT`] batches, only batches already committed), and stores
    /// `audit`, the detail of the batch's `batch.acked` audit entry, until [`Queue::audited`]
    /// (module doc).
    pub fn ack(
        &self,
        resource: &str,
        seq: u64,
        audit: &serde_json::Value,
    ) -> Result<Acked, QueueError> {
        let mut txn = self.begin()?;
        let mut state = txn.state(resource)?;
        let stream = state.stream_or(&self.stream).to_owned();
        {
            let stored = StoredAudit {
                detail: audit.clone(),
                acked_ms: chrono::Utc::now().timestamp_millis(),
            };
            let bytes = serde_json::to_vec(&stored).expect("an audit detail serializes");
            txn.tx
                .open_table(AUDIT_PENDING)
                .map_err(storage("storing an audit entry"))?
                .insert((resource, stream.as_str(), seq), bytes.as_slice())
                .map_err(storage("storing an audit entry"))?;
        }
        let removed = {
            let mut table = txn
                .tx
                .open_table(BATCHES)
                .map_err(storage("removing a batch"))?;
            let removed = table
                .remove((resource, seq))
                .map_err(storage("removing a batch"))?;
            removed.map(|v| {
                (
                    v.value().len() as u64,
                    decode_header(v.value()).map(|h| h.0),
                )
            })
        };
        if let Some((bytes, header)) = removed {
            let records = u64::from(header?);
            state.queued_batches = state.queued_batches.saturating_sub(1);
            state.queued_records = state.queued_records.saturating_sub(records);
            state.queued_bytes = state.queued_bytes.saturating_sub(bytes);
            state.pushed_records += records;
            state.last_push = Some(now());
            // The pusher may now send the window after this batch: the bound covers it
            // before any of it leaves (only batches already committed).
            let window = seq.saturating_add(MAX_IN_FLIGHT as u64);
            state.sent_through = state
                .sent_through
                .max(window.min(state.next_seq.saturating_sub(1)));
            txn.set_state(resource, &state)?;
        }
        txn.commit()?;
        Ok(Acked {
            sent_through: state.sent_through,
            pending: PendingAudit {
                resource: resource.to_owned(),
                stream,
                seq,
            },
        })
    }

    /// Forgets an acknowledged batch's stored audit entry once it is in the audit log, with a
    /// commit that does not fsync (the next durable commit persists it; a crash before leaves
    /// it stored, and [`Queue::open`] finds the entry in the log).
    pub fn audited(&self, pending: &PendingAudit) -> Result<(), QueueError> {
        let mut tx = self
            .db
            .begin_write()
            .map_err(storage("forgetting an audit entry"))?;
        tx.set_durability(redb::Durability::None)
            .map_err(storage("forgetting an audit entry"))?;
        tx.open_table(AUDIT_PENDING)
            .map_err(storage("forgetting an audit entry"))?
            .remove((
                pending.resource.as_str(),
                pending.stream.as_str(),
                pending.seq,
            ))
            .map_err(storage("forgetting an audit entry"))?;
        tx.commit().map_err(storage("forgetting an audit entry"))
    }

    /// Remembers an acknowledged batch whose audit entry could not be appended, to append it
    /// after the next one that could ([`Queue::retry_audit`]); it stays stored meanwhile.
    pub fn audit_failed(&self, pending: PendingAudit) {
        self.unaudited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pending);
    }

    /// Appends the audit entries [`Queue::audit_failed`] remembered (marked recovered) unless
    /// the log holds them already, and forgets them; returns how many were appended.
    pub fn retry_audit(&self) -> Result<usize, QueueError> {
        let failed = std::mem::take(&mut *self.unaudited.lock().unwrap_or_else(|e| e.into_inner()));
        if failed.is_empty() {
            return Ok(0);
        }
        self.settle_audit(Some(&failed)).inspect_err(|_| {
            self.unaudited
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(failed.iter().cloned());
        })
    }

    /// Appends, marked `"recovered": true`, every stored audit entry of an acknowledged batch
    /// that the audit log does not hold, then forgets them all (durably); returns how many
    /// were appended. Called by [`Queue::open`], before anything is pushed.
    pub fn recover_audit(&self) -> Result<usize, QueueError> {
        self.settle_audit(None)
    }

    /// [`Queue::recover_audit`] for the stored entries in `only` (all: `None`).
    fn settle_audit(
        &self,
        only: Option<&std::collections::BTreeSet<PendingAudit>>,
    ) -> Result<usize, QueueError> {
        const CONTEXT: &str = "appending the audit entries of acknowledged batches";
        let mut stored = Vec::new();
        {
            let tx = self.db.begin_read().map_err(storage(CONTEXT))?;
            let table = tx.open_table(AUDIT_PENDING).map_err(storage(CONTEXT))?;
            for entry in table.iter().map_err(storage(CONTEXT))? {
                let (k, v) = entry.map_err(storage(CONTEXT))?;
                let (resource, stream, seq) = k.value();
                let pending = PendingAudit {
                    resource: resource.to_owned(),
                    stream: stream.to_owned(),
                    seq,
                };
                if only.is_some_and(|only| !only.contains(&pending)) {
                    continue;
                }
                let value: StoredAudit = serde_json::from_slice(v.value())
                    .map_err(|e| QueueError::Format(format!("stored audit entry: {e}")))?;
                stored.push((pending, value));
            }
        }
        if stored.is_empty() {
            return Ok(0);
        }
        let data_dir = self.path.parent().unwrap_or(Path::new("."));
        // Entries are stamped after the acknowledgement; an hour's margin for a clock stepped
        // back meanwhile.
        let since = stored.iter().map(|(_, s)| s.acked_ms).min().unwrap_or(0) - 3_600_000;
        // The stored entries by (resource, stream, seq), with their digest.
        let wanted: std::collections::HashMap<
            (&str, String, u64),
            (&PendingAudit, &serde_json::Value),
        > = stored
            .iter()
            .map(|(p, s)| {
                (
                    (p.resource.as_str(), s.detail["stream"].to_string(), p.seq),
                    (p, &s.detail["digest"]),
                )
            })
            .collect();
        let mut logged = std::collections::BTreeSet::new();
        // The archive directory too: the file holding an entry may have been archived since.
        crate::audit::for_each_since_archived(data_dir, since, |e| {
            if e.action != "batch.acked" {
                return;
            }
            let Some(seq) = e.detail["seq"].as_u64() else {
                return;
            };
            let key = (e.resource.as_str(), e.detail["stream"].to_string(), seq);
            if let Some((p, digest)) = wanted.get(&key)
                && e.detail["digest"] == **digest
            {
                logged.insert((*p).clone());
            }
        })
        .map_err(storage(CONTEXT))?;
        let mut appended = 0;
        for (p, s) in &stored {
            if logged.contains(p) {
                continue;
            }
            let mut detail = s.detail.clone();
            detail["recovered"] = true.into();
            crate::audit::append(data_dir, "batch.acked", &p.resource, detail)
                .map_err(storage(CONTEXT))?;
            appended += 1;
        }
        let txn = self.begin()?;
        {
            let mut table = txn.tx.open_table(AUDIT_PENDING).map_err(storage(CONTEXT))?;
            for (p, _) in &stored {
                table
                    .remove((p.resource.as_str(), p.stream.as_str(), p.seq))
                    .map_err(storage(CONTEXT))?;
            }
        }
        txn.commit()?;
        Ok(appended)
    }

    /// Raises (committed, with fsync) the bound of the batches that may have left the agent to
    /// `to`, capped at the last batch committed (`next_seq - 1`); returns the bound now
    /// stored. Writes only when it rises. Called before a batch above the bound is sent.
    pub fn raise_sent_through(&self, resource: &str, to: u64) -> Result<u64, QueueError> {
        let mut txn = self.begin()?;
        let mut state = txn.state(resource)?;
        let to = to.min(state.next_seq.saturating_sub(1));
        if to <= state.sent_through {
            return Ok(state.sent_through);
        }
        state.sent_through = to;
        txn.set_state(resource, &state)?;
        txn.commit()?;
        Ok(to)
    }

    /// The content digest (SM3 of the NDJSON, hex) of a queued batch, from its header.
    pub fn digest_of(&self, resource: &str, seq: u64) -> Result<Option<String>, QueueError> {
        let tx = self.db.begin_read().map_err(storage("reading a batch"))?;
        let table = tx.open_table(BATCHES).map_err(storage("reading a batch"))?;
        let v = table
            .get((resource, seq))
            .map_err(storage("reading a batch"))?;
        v.map(|v| decode_header(v.value()).map(|h| hex::encode(h.3)))
            .transpose()
    }

    /// Reads, changes and writes the state of one resource in one transaction.
    pub fn update_state<T>(
        &self,
        resource: &str,
        f: impl FnOnce(&mut ResourceState) -> T,
    ) -> Result<T, QueueError> {
        let mut txn = self.begin()?;
        let mut state = txn.state(resource)?;
        let out = f(&mut state);
        txn.set_state(resource, &state)?;
        txn.commit()?;
        Ok(out)
    }

    /// Keeps (or, with `None`, clears) the last pull or push error of a resource; writes only
    /// when something changes.
    pub fn note_error(
        &self,
        resource: &str,
        stage: Stage,
        message: Option<&str>,
    ) -> Result<(), QueueError> {
        let st = self.state(resource)?;
        let slot = match stage {
            Stage::Pull => &st.pull_error,
            Stage::Push => &st.push_error,
        };
        if slot.as_ref().map(|n| n.message.as_str()) == message {
            return Ok(());
        }
        let note = message.map(|m| Note {
            at: now(),
            message: m.to_owned(),
        });
        self.update_state(resource, |st| match stage {
            Stage::Pull => st.pull_error = note,
            Stage::Push => st.push_error = note,
        })
    }

    /// Stops a resource until an operator acts (keeps the first reason if already stopped).
    pub fn halt(&self, resource: &str, kind: HaltKind, reason: &str) -> Result<(), QueueError> {
        self.update_state(resource, |st| {
            if st.halt.is_none() {
                st.halt = Some(Halt {
                    at: now(),
                    kind,
                    reason: reason.to_owned(),
                });
            }
        })
    }

    /// Starts a new stream for a resource: its queued batches, cursor, snapshot progress and
    /// digests are discarded, a new stream id is drawn and the next pull re-reads the whole
    /// resource from the start (a baseline: the hub sweeps what the new stream does not
    /// re-send). `shape` becomes the stream's shape. Quarantine entries are kept.
    pub fn resync(
        &self,
        resource: &str,
        shape: crate::pipeline::fingerprint::Shape,
    ) -> Result<Discarded, QueueError> {
        let mut txn = self.begin()?;
        let old = txn.state(resource)?;
        let discarded = Discarded {
            batches: old.queued_batches,
            records: old.queued_records,
        };
        {
            let mut batches = txn
                .tx
                .open_table(BATCHES)
                .map_err(storage("discarding batches"))?;
            batches
                .retain_in((resource, 0u64)..=(resource, u64::MAX), |_, _| false)
                .map_err(storage("discarding batches"))?;
            let mut digests = txn
                .tx
                .open_table(DIGESTS)
                .map_err(storage("discarding digests"))?;
            let keys: Vec<String> = digests
                .range((resource, "")..)
                .map_err(storage("discarding digests"))?
                .map_while(|e| match e {
                    Ok((k, _)) if k.value().0 == resource => Some(Ok(k.value().1.to_owned())),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()
                .map_err(storage("discarding digests"))?;
            for key in keys {
                digests
                    .remove((resource, key.as_str()))
                    .map_err(storage("discarding digests"))?;
            }
        }
        let stream: [u8; 16] = rand::random();
        let state = ResourceState {
            next_seq: 1,
            stream: Some(hex::encode(stream)),
            baseline: Baseline::default(),
            shape: Some(shape),
            pulled_records: old.pulled_records,
            pushed_records: old.pushed_records,
            quarantined: old.quarantined,
            last_pull: old.last_pull,
            last_push: old.last_push,
            ..ResourceState::default()
        };
        txn.set_state(resource, &state)?;
        txn.commit()?;
        Ok(discarded)
    }

    /// Every queued batch of a resource, oldest first (headers only).
    pub fn batches(&self, resource: &str) -> Result<Vec<BatchInfo>, QueueError> {
        let tx = self.db.begin_read().map_err(storage("listing batches"))?;
        let table = tx.open_table(BATCHES).map_err(storage("listing batches"))?;
        let mut out = Vec::new();
        for entry in table
            .range((resource, 0u64)..=(resource, u64::MAX))
            .map_err(storage("listing batches"))?
        {
            let (k, v) = entry.map_err(storage("listing batches"))?;
            let (records, raw_len, created, digest) = decode_header(v.value())?;
            out.push(BatchInfo {
                seq: k.value().1,
                records,
                raw_len,
                stored_bytes: v.value().len() as u64,
                created: chrono::DateTime::from_timestamp_millis(created)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default(),
                digest: hex::encode(digest),
            });
        }
        Ok(out)
    }

    /// One queued batch.
    pub fn batch(&self, resource: &str, seq: u64) -> Result<Option<StoredBatch>, QueueError> {
        let tx = self.db.begin_read().map_err(storage("reading a batch"))?;
        let table = tx.open_table(BATCHES).map_err(storage("reading a batch"))?;
        let v = table
            .get((resource, seq))
            .map_err(storage("reading a batch"))?;
        v.map(|v| decode_batch(seq, v.value())).transpose()
    }

    /// Replaces a queued batch the hub refuses with an empty batch of the same seq (so the
    /// stream's sequence stays without a gap); returns the records dropped. Only for a batch
    /// the hub never applied: an operator's decision, audited by the caller.
    pub fn discard(&self, resource: &str, seq: u64) -> Result<Option<u32>, QueueError> {
        let mut txn = self.begin()?;
        let mut state = txn.state(resource)?;
        let old = {
            let table = txn
                .tx
                .open_table(BATCHES)
                .map_err(storage("discarding a batch"))?;
            table
                .get((resource, seq))
                .map_err(storage("discarding a batch"))?
                .map(|v| (v.value().len() as u64, decode_header(v.value())))
        };
        let Some((bytes, header)) = old else {
            return Ok(None);
        };
        let records = header?.0;
        let value = encode_batch(b"", 0);
        {
            let mut table = txn
                .tx
                .open_table(BATCHES)
                .map_err(storage("discarding a batch"))?;
            table
                .insert((resource, seq), value.as_slice())
                .map_err(storage("discarding a batch"))?;
        }
        state.queued_records = state.queued_records.saturating_sub(u64::from(records));
        state.queued_bytes = state.queued_bytes.saturating_sub(bytes) + value.len() as u64;
        txn.set_state(resource, &state)?;
        txn.commit()?;
        Ok(Some(records))
    }

    /// Removes every quarantine entry of a resource; returns how many there were.
    pub fn clear_quarantine(&self, resource: &str) -> Result<u64, QueueError> {
        let mut txn = self.begin()?;
        let n = {
            let mut table = txn
                .tx
                .open_table(QUARANTINE)
                .map_err(storage("clearing quarantine"))?;
            let mut n = 0;
            table
                .retain_in((resource, 0u64)..=(resource, u64::MAX), |_, _| {
                    n += 1;
                    false
                })
                .map_err(storage("clearing quarantine"))?;
            let mut index = txn
                .tx
                .open_table(QUARANTINE_INDEX)
                .map_err(storage("clearing quarantine"))?;
            index
                .retain_in(
                    (resource, [].as_slice())..(resource, [0xffu8; 33].as_slice()),
                    |_, _| false,
                )
                .map_err(storage("clearing quarantine"))?;
            n
        };
        let mut state = txn.state(resource)?;
        state.quarantined = 0;
        txn.set_state(resource, &state)?;
        txn.commit()?;
        Ok(n)
    }

    /// The `limit` most recent quarantined rows of a resource, oldest first.
    pub fn quarantined(
        &self,
        resource: &str,
        limit: usize,
    ) -> Result<Vec<QuarantineEntry>, QueueError> {
        let tx = self
            .db
            .begin_read()
            .map_err(storage("reading quarantine"))?;
        let table = tx
            .open_table(QUARANTINE)
            .map_err(storage("reading quarantine"))?;
        let mut out = Vec::new();
        for entry in table
            .range((resource, 0u64)..=(resource, u64::MAX))
            .map_err(storage("reading quarantine"))?
            .rev()
            .take(limit)
        {
            let (_, v) = entry.map_err(storage("reading quarantine"))?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| QueueError::Format(e.to_string()))?,
            );
        }
        out.reverse();
        Ok(out)
    }
}

fn one() -> u64 {
    1
}

fn for_each_table(tx: &redb::WriteTransaction) -> Result<(), QueueError> {
    tx.open_table(QUARANTINE_INDEX)
        .map_err(storage("opening"))?;
    tx.open_table(STATE).map_err(storage("opening"))?;
    tx.open_table(BATCHES).map_err(storage("opening"))?;
    tx.open_table(DIGESTS).map_err(storage("opening"))?;
    tx.open_table(QUARANTINE).map_err(storage("opening"))?;
    tx.open_table(AUDIT_PENDING).map_err(storage("opening"))?;
    Ok(())
}

/// Gives every state written before `sent_through` existed its bound (module doc): what an
/// earlier version may have had in flight, the oldest queued batches up to its window.
fn migrate_sent_through(tx: &redb::WriteTransaction) -> Result<(), QueueError> {
    let mut table = tx.open_table(STATE).map_err(storage("migrating state"))?;
    let mut legacy = Vec::new();
    for entry in table.iter().map_err(storage("migrating state"))? {
        let (k, v) = entry.map_err(storage("migrating state"))?;
        let json: serde_json::Value = serde_json::from_slice(v.value())
            .map_err(|e| QueueError::Format(format!("resource state: {e}")))?;
        if json.get("sent_through").is_none() {
            legacy.push((
                k.value().to_owned(),
                decode_state(Some(v.value().to_vec()))?,
            ));
        }
    }
    if legacy.is_empty() {
        return Ok(());
    }
    let batches = tx.open_table(BATCHES).map_err(storage("migrating state"))?;
    for (resource, mut state) in legacy {
        let last = state.next_seq.saturating_sub(1);
        let head = batches
            .range((resource.as_str(), 0u64)..=(resource.as_str(), u64::MAX))
            .map_err(storage("migrating state"))?
            .next()
            .transpose()
            .map_err(storage("migrating state"))?
            .map(|(k, _)| k.value().1);
        state.sent_through = match head {
            Some(head) => (head + MAX_IN_FLIGHT as u64 - 1).min(last),
            None => last,
        };
        let json = serde_json::to_vec(&state).expect("state serializes");
        table
            .insert(resource.as_str(), json.as_slice())
            .map_err(storage("migrating state"))?;
    }
    Ok(())
}

/// The current time as the queue stores it (RFC 3339, UTC, milliseconds).
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn decode_state(bytes: Option<Vec<u8>>) -> Result<ResourceState, QueueError> {
    match bytes {
        None => Ok(ResourceState {
            next_seq: 1,
            ..Default::default()
        }),
        Some(b) => serde_json::from_slice(&b)
            .map_err(|e| QueueError::Format(format!("resource state: {e}"))),
    }
}

/// The stored form of a batch: header, then the zstd-compressed NDJSON.
fn encode_batch(ndjson: &[u8], records: u32) -> Vec<u8> {
    let digest = exchange_protocol::digest::sm3(ndjson);
    let body = batch::compress(ndjson);
    let mut value = Vec::with_capacity(HEADER_LEN + body.len());
    value.extend_from_slice(&records.to_le_bytes());
    value.extend_from_slice(&(ndjson.len() as u32).to_le_bytes());
    value.extend_from_slice(&chrono::Utc::now().timestamp_millis().to_le_bytes());
    value.extend_from_slice(&digest);
    value.extend_from_slice(&body);
    value
}

fn decode_header(v: &[u8]) -> Result<(u32, u32, i64, [u8; 32]), QueueError> {
    if v.len() < HEADER_LEN {
        return Err(QueueError::Format("batch shorter than its header".into()));
    }
    let records = u32::from_le_bytes(v[0..4].try_into().expect("4 bytes"));
    let raw_len = u32::from_le_bytes(v[4..8].try_into().expect("4 bytes"));
    let created = i64::from_le_bytes(v[8..16].try_into().expect("8 bytes"));
    let digest: [u8; 32] = v[16..48].try_into().expect("32 bytes");
    Ok((records, raw_len, created, digest))
}

fn decode_batch(seq: u64, v: &[u8]) -> Result<StoredBatch, QueueError> {
    let (records, raw_len, _created, digest) = decode_header(v)?;
    Ok(StoredBatch {
        seq,
        records,
        raw_len,
        digest: hex::encode(digest),
        body: v[HEADER_LEN..].to_vec(),
    })
}

/// A batch in its stored form (header and compressed body), ready for
/// [`Txn::enqueue_encoded`].
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The stored value.
    value: Vec<u8>,
    /// Records in it.
    records: u32,
}

impl Encoded {
    /// Digests and compresses post-policy NDJSON holding `records` records.
    pub fn new(ndjson: &[u8], records: u32) -> Encoded {
        Encoded {
            value: encode_batch(ndjson, records),
            records,
        }
    }

    /// Records in the batch.
    pub fn records(&self) -> u32 {
        self.records
    }
}

/// A write transaction: everything done through it commits together or not at all.
pub struct Txn {
    tx: redb::WriteTransaction,
}

impl Txn {
    /// The state of a resource as of this transaction.
    pub fn state(&self, resource: &str) -> Result<ResourceState, QueueError> {
        let table = self
            .tx
            .open_table(STATE)
            .map_err(storage("reading state"))?;
        let bytes = table
            .get(resource)
            .map_err(storage("reading state"))?
            .map(|v| v.value().to_vec());
        decode_state(bytes)
    }

    /// Replaces the state of a resource.
    pub fn set_state(&mut self, resource: &str, state: &ResourceState) -> Result<(), QueueError> {
        let mut table = self
            .tx
            .open_table(STATE)
            .map_err(storage("writing state"))?;
        let json = serde_json::to_vec(state).expect("state serializes");
        table
            .insert(resource, json.as_slice())
            .map_err(storage("writing state"))?;
        Ok(())
    }

    /// Appends a batch (post-policy NDJSON) for a resource; assigns the next seq and
    /// updates the counters in `state` (which the caller then stores with [`Txn::set_state`]).
    pub fn enqueue(
        &mut self,
        resource: &str,
        state: &mut ResourceState,
        ndjson: &[u8],
        records: u32,
    ) -> Result<u64, QueueError> {
        self.enqueue_encoded(resource, state, &Encoded::new(ndjson, records))
    }

    /// [`Txn::enqueue`] of a batch encoded before the transaction began (digest and
    /// compression need not hold the queue's single writer lock).
    pub fn enqueue_encoded(
        &mut self,
        resource: &str,
        state: &mut ResourceState,
        batch: &Encoded,
    ) -> Result<u64, QueueError> {
        let seq = state.next_seq.max(1);
        let mut table = self
            .tx
            .open_table(BATCHES)
            .map_err(storage("writing a batch"))?;
        table
            .insert((resource, seq), batch.value.as_slice())
            .map_err(storage("writing a batch"))?;
        state.next_seq = seq + 1;
        state.queued_batches += 1;
        state.queued_records += u64::from(batch.records);
        state.queued_bytes += batch.value.len() as u64;
        state.pulled_records += u64::from(batch.records);
        Ok(seq)
    }

    /// Records a quarantined row. The same key quarantined again for the same reason updates
    /// its entry (time, count) instead of adding one; `state.quarantined` counts entries.
    pub fn quarantine(
        &mut self,
        resource: &str,
        state: &mut ResourceState,
        key: Option<String>,
        reason: String,
    ) -> Result<(), QueueError> {
        let mut id = key.clone().unwrap_or_default().into_bytes();
        id.push(0);
        id.extend_from_slice(reason.as_bytes());
        let id = exchange_protocol::digest::sm3(&id);
        let mut index = self
            .tx
            .open_table(QUARANTINE_INDEX)
            .map_err(storage("writing quarantine"))?;
        let mut table = self
            .tx
            .open_table(QUARANTINE)
            .map_err(storage("writing quarantine"))?;
        let existing = index
            .get((resource, id.as_slice()))
            .map_err(storage("writing quarantine"))?
            .map(|v| v.value());
        let (n, entry) = match existing {
            Some(n) => {
                let old = table
                    .get((resource, n))
                    .map_err(storage("writing quarantine"))?
                    .map(|v| v.value().to_vec());
                let times = old
                    .and_then(|b| serde_json::from_slice::<QuarantineEntry>(&b).ok())
                    .map(|e| e.times)
                    .unwrap_or(0);
                (
                    n,
                    QuarantineEntry {
                        at: now(),
                        times: times + 1,
                        key,
                        reason,
                    },
                )
            }
            None => {
                state.quarantined += 1;
                index
                    .insert((resource, id.as_slice()), state.quarantined)
                    .map_err(storage("writing quarantine"))?;
                (
                    state.quarantined,
                    QuarantineEntry {
                        at: now(),
                        times: 1,
                        key,
                        reason,
                    },
                )
            }
        };
        let json = serde_json::to_vec(&entry).expect("entry serializes");
        table
            .insert((resource, n), json.as_slice())
            .map_err(storage("writing quarantine"))?;
        Ok(())
    }

    /// The stored digest and generation of a delivered record (snapshot mode).
    pub fn digest(&self, resource: &str, key: &str) -> Result<Option<([u8; 32], u64)>, QueueError> {
        let table = self
            .tx
            .open_table(DIGESTS)
            .map_err(storage("reading digests"))?;
        let v = table
            .get((resource, key))
            .map_err(storage("reading digests"))?;
        Ok(v.and_then(|v| {
            let b = v.value();
            (b.len() == 40).then(|| {
                (
                    b[..32].try_into().expect("32"),
                    u64::from_le_bytes(b[32..].try_into().expect("8")),
                )
            })
        }))
    }

    /// Stores the digest and generation of a record.
    pub fn set_digest(
        &mut self,
        resource: &str,
        key: &str,
        digest: &[u8; 32],
        generation: u64,
    ) -> Result<(), QueueError> {
        let mut table = self
            .tx
            .open_table(DIGESTS)
            .map_err(storage("writing digests"))?;
        let mut v = [0u8; 40];
        v[..32].copy_from_slice(digest);
        v[32..].copy_from_slice(&generation.to_le_bytes());
        table
            .insert((resource, key), v.as_slice())
            .map_err(storage("writing digests"))?;
        Ok(())
    }

    /// Up to `limit` keys of a resource whose digest is from an older generation (rows not
    /// seen by the current scan); removes their digests.
    pub fn take_unseen(
        &mut self,
        resource: &str,
        generation: u64,
        limit: usize,
    ) -> Result<Vec<String>, QueueError> {
        let mut table = self
            .tx
            .open_table(DIGESTS)
            .map_err(storage("sweeping digests"))?;
        let mut keys = Vec::new();
        for entry in table
            .range((resource, "")..)
            .map_err(storage("sweeping digests"))?
        {
            let (k, v) = entry.map_err(storage("sweeping digests"))?;
            let (res, key) = k.value();
            if res != resource {
                break;
            }
            let b = v.value();
            let g = if b.len() == 40 {
                u64::from_le_bytes(b[32..].try_into().expect("8"))
            } else {
                0
            };
            if g != generation {
                keys.push(key.to_owned());
                if keys.len() >= limit {
                    break;
                }
            }
        }
        for key in &keys {
            table
                .remove((resource, key.as_str()))
                .map_err(storage("sweeping digests"))?;
        }
        Ok(keys)
    }

    /// Commits with fsync.
    pub fn commit(self) -> Result<(), QueueError> {
        self.tx.commit().map_err(storage("committing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_stays_until_acknowledged_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let stream;
        {
            let q = Queue::open(&dir.path().join("data")).unwrap();
            stream = q.stream().to_owned();
            let mut txn = q.begin().unwrap();
            let mut st = txn.state("R").unwrap();
            st.cursor = Some(vec![Value::Int(5)]);
            let seq = txn
                .enqueue("R", &mut st, b"{\"op\":\"delete\",\"key\":\"a\"}\n", 1)
                .unwrap();
            txn.set_state("R", &st).unwrap();
            txn.commit().unwrap();
            assert_eq!(seq, 1);
        }
        let q = Queue::open(&dir.path().join("data")).unwrap();
        assert_eq!(q.stream(), stream, "the stream id is kept");
        let st = q.state("R").unwrap();
        assert_eq!(st.cursor, Some(vec![Value::Int(5)]));
        assert_eq!(st.queued_records, 1);
        let head = q.head("R").unwrap().unwrap();
        assert_eq!(head.seq, 1);
        assert_eq!(
            head.digest,
            batch::digest_hex(b"{\"op\":\"delete\",\"key\":\"a\"}\n")
        );
        q.ack("R", 1, &serde_json::json!({})).unwrap();
        assert!(q.head("R").unwrap().is_none());
        let st = q.state("R").unwrap();
        assert_eq!(
            (
                st.queued_batches,
                st.queued_records,
                st.queued_bytes,
                st.pushed_records
            ),
            (0, 0, 0, 1)
        );
        assert_eq!(st.next_seq, 2, "sequence numbers are never reused");
    }

    #[test]
    fn an_uncommitted_transaction_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("data")).unwrap();
        {
            let mut txn = q.begin().unwrap();
            let mut st = txn.state("R").unwrap();
            st.cursor = Some(vec![Value::Int(9)]);
            txn.enqueue("R", &mut st, b"x\n", 1).unwrap();
            txn.set_state("R", &st).unwrap();
            // dropped without commit
        }
        assert!(q.head("R").unwrap().is_none());
        assert_eq!(q.state("R").unwrap().cursor, None);
    }

    #[test]
    fn a_second_process_is_told_the_queue_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _q = Queue::open(&dir.path().join("data")).unwrap();
        assert!(matches!(
            Queue::open(&dir.path().join("data")),
            Err(QueueError::Locked { .. })
        ));
    }

    #[test]
    fn a_row_quarantined_again_for_the_same_reason_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("data")).unwrap();
        for _ in 0..3 {
            let mut txn = q.begin().unwrap();
            let mut st = txn.state("R").unwrap();
            txn.quarantine("R", &mut st, Some("k1".into()), "zero date".into())
                .unwrap();
            txn.set_state("R", &st).unwrap();
            txn.commit().unwrap();
        }
        let mut txn = q.begin().unwrap();
        let mut st = txn.state("R").unwrap();
        txn.quarantine("R", &mut st, Some("k2".into()), "zero date".into())
            .unwrap();
        txn.set_state("R", &st).unwrap();
        txn.commit().unwrap();
        assert_eq!(q.state("R").unwrap().quarantined, 2);
        let entries = q.quarantined("R", 10).unwrap();
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.key.as_deref(), e.times))
                .collect::<Vec<_>>(),
            [(Some("k1"), 3), (Some("k2"), 1)]
        );
        assert_eq!(q.quarantined("R", 1).unwrap()[0].key.as_deref(), Some("k2"));
    }

    #[test]
    fn unseen_digests_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("data")).unwrap();
        let mut txn = q.begin().unwrap();
        txn.set_digest("R", "a", &[1; 32], 1).unwrap();
        txn.set_digest("R", "b", &[1; 32], 2).unwrap();
        txn.set_digest("S", "c", &[1; 32], 1).unwrap();
        assert_eq!(txn.take_unseen("R", 2, 10).unwrap(), vec!["a".to_owned()]);
        assert_eq!(txn.take_unseen("R", 2, 10).unwrap(), Vec::<String>::new());
        assert!(txn.digest("S", "c").unwrap().is_some());
        txn.commit().unwrap();
    }

    #[test]
    fn the_data_dir_is_created_owner_only_and_a_lax_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        drop(Queue::open(&data).unwrap());
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let queue_mode = std::fs::metadata(data.join("queue.redb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(queue_mode & 0o777, 0o600);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();
        let err = Queue::open(&data)
            .err()
            .expect("a group-readable data_dir is refused");
        assert!(err.to_string().contains("chmod 700"), "{err}");
    }

    #[test]
    fn a_state_written_before_baselines_is_complete_and_never_marked() {
        let legacy: ResourceState =
            serde_json::from_str(r#"{"cursor":null,"next_seq":7,"queued_batches":0,"queued_records":0,"queued_bytes":0,"pulled_records":0,"pushed_records":0,"quarantined":0,"last_pull":null,"last_push":null,"snapshot":{"generation":0,"position":null,"sweeping":false}}"#).unwrap();
        assert_eq!(legacy.baseline, Baseline::Complete { seq: 0 });
        assert_eq!(legacy.halt, None);
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("data")).unwrap();
        assert_eq!(
            q.state("new").unwrap().baseline,
            Baseline::default(),
            "a new stream reads a baseline"
        );
    }

    fn shape() -> crate::pipeline::fingerprint::Shape {
        crate::pipeline::fingerprint::Shape {
            relation: "table t".into(),
            key: "id".into(),
            mode: "incremental".into(),
            cursor: vec!["at".into()],
            fields: Default::default(),
        }
    }

    #[test]
    fn resync_discards_batches_cursor_and_digests_and_draws_a_new_stream() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("data")).unwrap();
        let mut txn = q.begin().unwrap();
        let mut st = txn.state("R").unwrap();
        st.cursor = Some(vec![Value::Int(5)]);
        st.baseline = Baseline::Complete { seq: 1 };
        txn.enqueue("R", &mut st, b"{}\n", 1).unwrap();
        txn.enqueue("R", &mut st, b"{}\n{}\n", 2).unwrap();
        txn.set_digest("R", "k", &[1; 32], 1).unwrap();
        txn.set_digest("S", "k", &[1; 32], 1).unwrap();
        txn.set_state("R", &st).unwrap();
        txn.commit().unwrap();
        q.halt("R", HaltKind::HubGap, "the hub lost batches")
            .unwrap();

        let discarded = q.resync("R", shape()).unwrap();
        assert_eq!(
            discarded,
            Discarded {
                batches: 2,
                records: 3
            }
        );
        let st = q.state("R").unwrap();
        assert!(q.head("R").unwrap().is_none());
        assert_eq!(
            (st.cursor.clone(), st.next_seq, st.queued_bytes),
            (None, 1, 0)
        );
        assert_eq!(st.baseline, Baseline::default());
        assert_eq!(st.halt, None);
        assert_eq!(st.pulled_records, 3, "lifetime counters are kept");
        let stream = st.stream.clone().unwrap();
        assert_eq!(stream.len(), 32);
        assert_ne!(stream, q.stream());
        let txn = q.begin().unwrap();
        assert!(txn.digest("R", "k").unwrap().is_none());
        assert!(
            txn.digest("S", "k").unwrap().is_some(),
            "other resources keep theirs"
        );
        drop(txn);
        q.resync("R", shape()).unwrap();
        assert_ne!(
            q.state("R").unwrap().stream.unwrap(),
            stream,
            "every resync draws anew"
        );
    }

    #[test]
    fn a_discarded_batch_is_replaced_by_an_empty_one_with_the_same_seq() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("data")).unwrap();
        let mut txn = q.begin().unwrap();
        let mut st = txn.state("R").unwrap();
        txn.enqueue("R", &mut st, b"{\"op\":\"delete\",\"key\":\"a\"}\n", 1)
            .unwrap();
        txn.set_state("R", &st).unwrap();
        txn.commit().unwrap();
        assert_eq!(q.discard("R", 1).unwrap(), Some(1));
        assert_eq!(q.discard("R", 9).unwrap(), None);
        let b = q.head("R").unwrap().unwrap();
        assert_eq!((b.seq, b.records, b.raw_len), (1, 0, 0));
        assert_eq!(b.digest, batch::digest_hex(b""));
        let st = q.state("R").unwrap();
        assert_eq!((st.queued_batches, st.queued_records), (1, 0));
        q.ack("R", 1, &serde_json::json!({})).unwrap();
        assert_eq!(
            q.state("R").unwrap().queued_bytes,
            0,
            "byte counts stay exact"
        );
    }

    #[test]
    fn errors_are_kept_until_cleared_and_quarantine_can_be_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("data")).unwrap();
        q.note_error("R", Stage::Push, Some("hub unreachable"))
            .unwrap();
        assert_eq!(
            q.state("R").unwrap().push_error.unwrap().message,
            "hub unreachable"
        );
        q.note_error("R", Stage::Push, None).unwrap();
        assert_eq!(q.state("R").unwrap().push_error, None);
        let mut txn = q.begin().unwrap();
        let mut st = txn.state("R").unwrap();
        txn.quarantine("R", &mut st, Some("k".into()), "bad".into())
            .unwrap();
        txn.set_state("R", &st).unwrap();
        txn.commit().unwrap();
        assert_eq!(q.clear_quarantine("R").unwrap(), 1);
        assert!(q.quarantined("R", 10).unwrap().is_empty());
        assert_eq!(q.state("R").unwrap().quarantined, 0);
        // The same row quarantined again is a new entry.
        let mut txn = q.begin().unwrap();
        let mut st = txn.state("R").unwrap();
        txn.quarantine("R", &mut st, Some("k".into()), "bad".into())
            .unwrap();
        txn.set_state("R", &st).unwrap();
        txn.commit().unwrap();
        assert_eq!(q.quarantined("R", 10).unwrap().len(), 1);
    }

    /// A queue in a temporary directory with `n` batches of resource `R`.
    fn queue_with(n: usize) -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("data")).unwrap();
        let mut txn = q.begin().unwrap();
        let mut st = txn.state("R").unwrap();
        for _ in 0..n {
            txn.enqueue("R", &mut st, b"{}\n", 1).unwrap();
        }
        txn.set_state("R", &st).unwrap();
        txn.commit().unwrap();
        (dir, q)
    }

    #[test]
    fn sent_through_is_raised_only_over_committed_batches() {
        let (_dir, q) = queue_with(0);
        assert_eq!(q.state("R").unwrap().sent_through, 0, "nothing sent yet");
        let (_dir, q) = queue_with(6);
        assert_eq!(q.raise_sent_through("R", 1).unwrap(), 1);
        assert_eq!(q.raise_sent_through("R", 0).unwrap(), 1, "never lowered");
        assert_eq!(
            q.raise_sent_through("R", 99).unwrap(),
            6,
            "capped at the last batch committed"
        );
    }

    #[test]
    fn an_ack_raises_sent_through_over_the_window_after_it() {
        let (_dir, q) = queue_with(8);
        let window = MAX_IN_FLIGHT as u64;
        assert_eq!(
            q.ack("R", 1, &serde_json::json!({})).unwrap().sent_through,
            1 + window
        );
        assert_eq!(
            q.ack("R", 2, &serde_json::json!({})).unwrap().sent_through,
            2 + window
        );
        assert_eq!(
            q.ack("R", 5, &serde_json::json!({})).unwrap().sent_through,
            8,
            "capped at the last batch committed"
        );
        assert_eq!(q.state("R").unwrap().sent_through, 8);
    }

    #[test]
    fn a_state_written_before_sent_through_gets_the_window_of_its_oldest_batches() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        {
            let q = Queue::open(&data).unwrap();
            let mut txn = q.begin().unwrap();
            let mut st = txn.state("queued").unwrap();
            for _ in 0..10 {
                txn.enqueue("queued", &mut st, b"{}\n", 1).unwrap();
            }
            txn.set_state("queued", &st).unwrap();
            txn.commit().unwrap();
            for seq in 1..=2 {
                q.ack("queued", seq, &serde_json::json!({})).unwrap();
            }
            // As an earlier version wrote them: no `sent_through`.
            let tx = q.db.begin_write().unwrap();
            {
                let mut table = tx.open_table(STATE).unwrap();
                for (resource, next_seq) in [("queued", 11), ("empty", 5)] {
                    let mut json = serde_json::to_value(ResourceState {
                        next_seq,
                        ..Default::default()
                    })
                    .unwrap();
                    json.as_object_mut().unwrap().remove("sent_through");
                    let bytes = serde_json::to_vec(&json).unwrap();
                    table.insert(resource, bytes.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let q = Queue::open(&data).unwrap();
        let window = MAX_IN_FLIGHT as u64;
        assert_eq!(
            q.state("queued").unwrap().sent_through,
            3 + window - 1,
            "the oldest queued batches an earlier version may have had in flight"
        );
        assert_eq!(
            q.state("empty").unwrap().sent_through,
            4,
            "nothing queued: every batch was acknowledged"
        );
    }

    /// The detail the pusher records for batch `seq` of `R` (push.rs).
    fn acked_detail(q: &Queue, seq: u64) -> serde_json::Value {
        let b = q.batch("R", seq).unwrap().unwrap();
        serde_json::json!({"seq": seq, "records": b.records, "digest": b.digest, "ack": "applied", "stream": q.stream()})
    }

    /// The `batch.acked` entries of the audit log of `data`, by seq.
    fn acked_entries(data: &Path) -> Vec<crate::audit::Entry> {
        let mut out = Vec::new();
        crate::audit::for_each_since(data, i64::MIN, |e| {
            if e.action == "batch.acked" {
                out.push(e);
            }
        })
        .unwrap();
        out
    }

    fn pending_count(q: &Queue) -> usize {
        let tx = q.db.begin_read().unwrap();
        tx.open_table(AUDIT_PENDING)
            .unwrap()
            .iter()
            .unwrap()
            .count()
    }

    #[test]
    fn an_acknowledged_batch_whose_audit_entry_a_crash_lost_is_recorded_once_at_the_next_open() {
        let (dir, q) = queue_with(3);
        let data = dir.path().join("data");
        // 1: acknowledged and audited. 2: acknowledged, then the process died before the audit
        // entry was appended. 3: acknowledged and audited, then it died before the stored
        // entry was forgotten.
        let one = acked_detail(&q, 1);
        let acked = q.ack("R", 1, &one).unwrap();
        crate::audit::append(&data, "batch.acked", "R", one).unwrap();
        q.audited(&acked.pending).unwrap();
        let two = acked_detail(&q, 2);
        q.ack("R", 2, &two).unwrap();
        let three = acked_detail(&q, 3);
        q.ack("R", 3, &three).unwrap();
        crate::audit::append(&data, "batch.acked", "R", three).unwrap();
        assert_eq!(pending_count(&q), 2);
        drop(q);

        let q = Queue::open(&data).unwrap();
        let entries = acked_entries(&data);
        let seqs: Vec<u64> = entries
            .iter()
            .map(|e| e.detail["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 3, 2], "each exactly once");
        let recovered = &entries[2];
        assert_eq!(recovered.detail["recovered"], true);
        assert_eq!(recovered.detail["digest"], two["digest"]);
        assert_eq!(recovered.detail["stream"], q.stream());
        assert!(
            entries[..2]
                .iter()
                .all(|e| e.detail.get("recovered").is_none())
        );
        assert_eq!(pending_count(&q), 0);
        assert_eq!(crate::audit::verify(&data), Ok(3));
        // Nothing more at the next open.
        drop(q);
        let q = Queue::open(&data).unwrap();
        assert_eq!(acked_entries(&data).len(), 3);
        assert_eq!(pending_count(&q), 0);
    }

    #[test]
    fn an_entry_whose_file_was_archived_is_not_appended_again() {
        let (dir, q) = queue_with(1);
        let data = dir.path().join("data");
        let archive = dir.path().join("archive");
        std::fs::create_dir(&archive).unwrap();
        // Acknowledged and audited, then the process died before the stored entry was
        // forgotten; meanwhile the file holding the entry was archived.
        let one = acked_detail(&q, 1);
        q.ack("R", 1, &one).unwrap();
        crate::audit::append(&data, "batch.acked", "R", one).unwrap();
        drop(q);
        crate::audit::set_retention(
            &data,
            crate::audit::Retention {
                max_file_bytes: 1024,
                archive: Some(crate::audit::Archive {
                    keep: 0,
                    to: crate::audit::ArchiveTo::Dir(archive.clone()),
                }),
            },
        );
        for _ in 0..20 {
            crate::audit::append(&data, "resync", "R", serde_json::json!({})).unwrap();
        }
        crate::audit::retain(&data).unwrap();
        assert!(acked_entries(&data).is_empty(), "archived away");

        let q = Queue::open(&data).unwrap();
        assert_eq!(pending_count(&q), 0);
        let mut acked = 0;
        crate::audit::for_each_since_archived(&data, i64::MIN, |e| {
            acked += usize::from(e.action == "batch.acked");
        })
        .unwrap();
        assert_eq!(acked, 1, "found in the archive, not appended again");
        assert_eq!(
            crate::audit::verify_with(&data, Some(&archive))
                .unwrap()
                .archived,
            None
        );
    }

    #[test]
    fn the_same_seq_on_a_new_stream_is_not_taken_for_the_one_in_the_log() {
        let (dir, q) = queue_with(1);
        let data = dir.path().join("data");
        let old = acked_detail(&q, 1);
        let acked = q.ack("R", 1, &old).unwrap();
        crate::audit::append(&data, "batch.acked", "R", old.clone()).unwrap();
        q.audited(&acked.pending).unwrap();
        // After a resync, seq 1 again, acknowledged, and lost by a crash.
        let mut new = old.clone();
        new["stream"] = "another stream".into();
        q.ack("R", 1, &new).unwrap();
        drop(q);
        let _q = Queue::open(&data).unwrap();
        let streams: Vec<serde_json::Value> = acked_entries(&data)
            .into_iter()
            .map(|e| e.detail["stream"].clone())
            .collect();
        assert_eq!(streams, [old["stream"].clone(), new["stream"].clone()]);
    }

    #[test]
    fn an_audit_entry_that_could_not_be_written_is_appended_after_the_next_that_could() {
        let (dir, q) = queue_with(2);
        let data = dir.path().join("data");
        let one = acked_detail(&q, 1);
        let acked = q.ack("R", 1, &one).unwrap();
        // The append failed: the pusher remembers it.
        q.audit_failed(acked.pending);
        let two = acked_detail(&q, 2);
        let acked = q.ack("R", 2, &two).unwrap();
        crate::audit::append(&data, "batch.acked", "R", two).unwrap();
        q.audited(&acked.pending).unwrap();
        assert_eq!(q.retry_audit().unwrap(), 1);
        assert_eq!(q.retry_audit().unwrap(), 0, "once");
        let entries = acked_entries(&data);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].detail["seq"], 1);
        assert_eq!(entries[1].detail["recovered"], true);
        assert_eq!(pending_count(&q), 0);
    }
}
