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
//!   it, so a resend after a crash is byte-identical and the hub deduplicates it — except for
//!   a batch the hub refused, of which nothing was applied: an operator's `queue discard`
//!   empties it ([`Queue::discard`]), and a record the hub named is cut out of it and
//!   quarantined in one transaction ([`Queue::replace_refused`]; same seq and creation time,
//!   exactly that line removed).
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
//!
//! # Code
//! This file holds the tables, opening (format check, stream id, migration) and
//! transactions; each table's reading and writing lives in a part of its own: `state`
//! (states, resync), `batches` (enqueue, read, acknowledge, discard), `quarantine`,
//! `digests` and `audit_pending` (settling stored audit entries).

mod audit_pending;
mod batches;
mod digests;
mod quarantine;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use audit_pending::{Acked, PendingAudit};
pub use batches::{BatchInfo, Encoded, StoredBatch};
pub use quarantine::QuarantineEntry;
pub use state::{
    Baseline, Discarded, FileProgress, Halt, HaltKind, Note, ResourceState, SnapshotState, Stage,
};

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
    #[error("{}", exchange_protocol::tr!(
        "the queue {path} is in use by another exchange-agent process (is the service running? stop it, or use its status output)",
        "队列 {path} 正被另一个 exchange-agent 进程使用（服务是否正在运行？请停止它，或查看其 status 输出）",
        path = path.display()
    ))]
    Locked {
        /// The queue file.
        path: PathBuf,
    },
    /// The data directory or file could not be opened.
    #[error("{}", exchange_protocol::tr!(
        "cannot open the queue {path}: {reason}",
        "无法打开队列 {path}：{reason}",
        path = path.display()
    ))]
    Open {
        /// The queue file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A read or write failed.
    #[error("{}", exchange_protocol::tr!(
        "queue storage error while {context}: {reason}",
        "队列存储在{context}时出错：{reason}",
        context = exchange_protocol::lang::pick(context, context_zh(context))
    ))]
    Storage {
        /// What was being done.
        context: &'static str,
        /// The storage error.
        reason: String,
    },
    /// The file holds something this version does not understand.
    #[error("{}", exchange_protocol::tr!(
        "the queue file is not in a format this version understands: {0}",
        "队列文件的格式不是此版本能识别的：{0}", .0
    ))]
    Format(String),
}

/// What was being done, in Chinese (`QueueError::Storage`'s context).
fn context_zh(context: &str) -> &str {
    match context {
        "opening" => "打开",
        "migrating state" => "迁移状态",
        "writing quarantine" => "写入隔离区",
        "reading state" => "读取状态",
        "forgetting an audit entry" => "移除审计条目",
        "sweeping digests" => "清理摘要",
        "discarding digests" => "丢弃摘要",
        "discarding a batch" => "丢弃批次",
        "clearing quarantine" => "清空隔离区",
        "reading a batch" => "读取批次",
        "writing state" => "写入状态",
        "writing digests" => "写入摘要",
        "writing a batch" => "写入批次",
        "storing an audit entry" => "保存审计条目",
        "removing a batch" => "移除批次",
        "reading quarantine" => "读取隔离区",
        "reading digests" => "读取摘要",
        "listing batches" => "列出批次",
        "discarding batches" => "丢弃批次",
        "starting a write" => "开始写入",
        "committing" => "提交",
        "replacing a refused batch" => "替换被拒收的批次",
        other => other,
    }
}

fn storage<E: std::fmt::Display>(context: &'static str) -> impl Fn(E) -> QueueError {
    move |e| QueueError::Storage {
        context,
        reason: e.to_string(),
    }
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
        let stream = stream_id(&tx)?;
        for_each_table(&tx)?;
        state::migrate_sent_through(&tx)?;
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

    /// Runs `f` on `table` in a read transaction; `context` names what failed.
    fn read<K: redb::Key + 'static, V: redb::Value + 'static, T>(
        &self,
        table: TableDefinition<K, V>,
        context: &'static str,
        f: impl FnOnce(&redb::ReadOnlyTable<K, V>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let tx = self.db.begin_read().map_err(storage(context))?;
        let table = tx.open_table(table).map_err(storage(context))?;
        f(&table)
    }
}

/// The queue's own stream id (hex): drawn, and the format marked, when the file is new; a
/// file of another format is refused.
fn stream_id(tx: &redb::WriteTransaction) -> Result<String, QueueError> {
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
    Ok(hex::encode(id))
}

/// Creates every table a new file lacks.
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

/// The current time as the queue stores it (RFC 3339, UTC, milliseconds).
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A write transaction: everything done through it commits together or not at all.
pub struct Txn {
    tx: redb::WriteTransaction,
}

impl Txn {
    /// Commits with fsync.
    pub fn commit(self) -> Result<(), QueueError> {
        self.tx.commit().map_err(storage("committing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exchange_connectors::Value;
    use exchange_protocol::batch;

    #[test]
    fn every_storage_context_reads_in_chinese() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("audit_pending.rs"),
            include_str!("batches.rs"),
            include_str!("digests.rs"),
            include_str!("quarantine.rs"),
            include_str!("state.rs"),
        ];
        let mut contexts = 0;
        for text in sources {
            let literal = |opener| text.split(opener).skip(1);
            for part in literal("storage(\"").chain(literal("let context = \"")) {
                let context = part.split('"').next().unwrap();
                assert_ne!(context_zh(context), context, "`{context}` has no Chinese");
                contexts += 1;
            }
        }
        assert!(contexts > 20, "{contexts}");
    }

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
        q.halt("R", HaltKind::HubGap, &"the hub lost batches".into())
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
        q.note_error("R", Stage::Push, Some(&"hub unreachable".into()))
            .unwrap();
        assert_eq!(
            q.state("R").unwrap().push_error.unwrap().message,
            "hub unreachable".into()
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
