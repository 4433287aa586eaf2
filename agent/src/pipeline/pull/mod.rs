//! The pull stage: source pages → policy → batches in the queue, one transaction per page.
//!
//! Invariants:
//! - the cursor (or snapshot position) moves in the same queue transaction that stores the
//!   batches and quarantine entries for the rows it covers;
//! - records are built by the policy ([`Plan::apply`], or [`Plan::write_upsert`], its line
//!   written straight from the row) before anything is written; an incremental page is
//!   encoded (NDJSON, SM3, zstd) before its write transaction, and the next page may be read
//!   meanwhile (the raw position stays in memory; the stored one is sealed by
//!   [`Plan::position_to_store`], as on every path);
//! - pulling waits while the queue holds `queue.max_bytes` minus one batch or more: nothing is
//!   dropped when the hub is away;
//! - a row whose cursor cannot be read stops the resource with an error rather than skip it;
//! - a row with a NULL cursor value (in snapshot mode: a NULL key) has no place in the order:
//!   pages never return it (the connectors filter it out), and every pull counts it and
//!   quarantines it first ([`Connector::null_cursor_rows`]), so it neither stops the resource
//!   nor vanishes.
//!
//! This file holds the pull loop and what its steps share; `admission` checks a resource
//! before it is read, `incremental` and `snapshot` read and write in each mode.

mod admission;
mod files;
mod incremental;
mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use exchange_connectors::{Connector, ConnectorError, HorizonInfo, Page};
use exchange_protocol::batch::{Op, Record, push_line};
use exchange_protocol::lang::Text;
use exchange_protocol::tr;
use tokio::sync::Notify;

use crate::config::{BatchLimits, Mode, Resource};
use crate::pipeline::queue::{Baseline, Queue, QueueError, ResourceState, Txn};
use crate::policy::Plan;

/// How many rows with a NULL cursor value (or, in snapshot mode, a NULL key) get a quarantine
/// entry of their own per cycle (all are counted).
pub const NULL_ROWS_LISTED: usize = 100;

/// Why a pull stopped.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] ConnectorError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The resource is stopped until an operator acts.
    #[error("{}", exchange_protocol::tr!(
        "`{resource}` is stopped: {reason}",
        "`{resource}` 已停止：{reason}"
    ))]
    Halted {
        /// The resource.
        resource: String,
        /// Why, and what to run.
        reason: exchange_protocol::lang::Text,
    },
    /// A selected column does not suit its rule or changed type; the resource pauses.
    #[error("{}", exchange_protocol::tr!(
        "resource `{resource}` is paused: {reason}",
        "资源 `{resource}` 已暂停：{reason}"
    ))]
    Columns {
        /// The resource.
        resource: String,
        /// What changed, and what to do.
        reason: String,
    },
    /// The stored position cannot be opened (a changed seal key, a damaged value): the
    /// resource cannot go on from it.
    #[error("{}", exchange_protocol::tr!(
        "resource `{resource}` cannot go on from its stored position: {reason}. Put back the seal key file it was stored with, or run `exchange-agent cursor reset {resource} --yes` (every row is read again on the same stream) or `exchange-agent resync {resource} --yes`",
        "资源 `{resource}` 无法从已保存的位置继续：{reason}。请放回保存该位置时所用的封存密钥文件，或运行 `exchange-agent cursor reset {resource} --yes`（在同一数据流上重新读取每一行），或运行 `exchange-agent resync {resource} --yes`"
    ))]
    Position {
        /// The resource.
        resource: String,
        /// Why.
        reason: String,
    },
    /// A row's cursor could not be read; the resource cannot move past it.
    #[error("{}", exchange_protocol::tr!(
        "resource `{resource}` is stopped at a row whose cursor cannot be used ({reason}); fix the row or the cursor columns",
        "资源 `{resource}` 停在一行游标无法使用的记录上（{reason}）；请修正该行或游标列"
    ))]
    Cursor {
        /// The resource.
        resource: String,
        /// Why.
        reason: String,
    },
}

impl PullError {
    /// Whether retrying later may help without anyone fixing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            PullError::Source(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// What one pull did.
#[derive(Debug, Clone, Default)]
pub struct PullReport {
    /// Records enqueued (upserts and deletes).
    pub records: u64,
    /// Rows quarantined (conversion failures and the like).
    pub quarantined: u64,
    /// Rows whose cursor column (in snapshot mode: key) is NULL, counted once per pull (they
    /// stay at the source and are counted again by the next pull).
    pub null_cursor: u64,
    /// Pages read.
    pub pages: u64,
    /// How the last page was bounded.
    pub horizon: Option<HorizonInfo>,
    /// The instant (source clock) before which every committed row has been read, when the
    /// last page was bounded by a horizon (see `exchange_connectors::Horizon::reached`).
    pub reached: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether the pull ended caught up with the source (as opposed to stopping early).
    pub caught_up: bool,
    /// How long the incremental statement took (incremental pulls only).
    pub query: Option<crate::pipeline::board::QueryTime>,
}

impl PullReport {
    /// Counts a page read, and how it was bounded.
    fn saw(&mut self, page: &Page) {
        self.pages += 1;
        self.horizon = Some(page.horizon.info.clone());
        self.reached = page.horizon.reached;
    }
}

/// A pull's counts as they grow, readable while the pull runs (so a `sync` that times out
/// still reports what was pulled).
pub type Progress = std::sync::Mutex<PullReport>;

/// Pulls one resource.
pub struct Puller {
    /// The resource.
    pub resource: Resource,
    /// Its compiled policy.
    pub plan: Arc<Plan>,
    /// Its source.
    pub connector: Arc<dyn Connector>,
    /// The queue.
    pub queue: Queue,
    /// Batch bounds.
    pub batch: BatchLimits,
    /// Queue bound.
    pub queue_max_bytes: u64,
    /// Signalled by the pusher when space was freed.
    pub space: Arc<Notify>,
    /// Signalled after a commit, to wake the pusher.
    pub enqueued: Arc<Notify>,
    /// Whether pulling is paused on a full queue (to log the pause once, not every check).
    pub paused: std::sync::atomic::AtomicBool,
    /// Held for the whole of a pull: one pull of a resource at a time (the schedule and a
    /// `sync` sent to the daemon may ask at once).
    pub running: tokio::sync::Mutex<()>,
}

impl Puller {
    /// Pulls until the resource is caught up with its source (up to the horizon).
    pub async fn pull(&self) -> Result<PullReport, PullError> {
        let progress = Progress::default();
        self.pull_with(&progress).await?;
        Ok(progress.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    /// [`Puller::pull`], keeping the counts in `progress` as pages are committed.
    pub async fn pull_with(&self, progress: &Progress) -> Result<(), PullError> {
        let _running = self.running.lock().await;
        self.admit().await?;
        if let Some(file) = &self.resource.files {
            let mut report = PullReport::default();
            let publish = |report: &PullReport| {
                *progress.lock().unwrap_or_else(|e| e.into_inner()) = report.clone();
            };
            self.files_pull(file, &mut report, &publish).await?;
            report.caught_up = true;
            publish(&report);
            return self.pulled().await;
        }
        self.check_columns().await?;
        if self.queue.state(&self.resource.code)?.baseline == (Baseline::Reading { since: None }) {
            let since = self.connector.clock().await?;
            self.queue.update_state(&self.resource.code, |st| {
                if st.baseline.is_reading() {
                    st.baseline = Baseline::Reading { since: Some(since) };
                }
            })?;
        }
        let mut report = PullReport::default();
        let publish = |report: &PullReport| {
            *progress.lock().unwrap_or_else(|e| e.into_inner()) = report.clone();
        };
        self.quarantine_null_cursors(&mut report).await?;
        publish(&report);
        match &self.resource.mode {
            Mode::Incremental { safety_lag, .. } => {
                self.incremental_pull(*safety_lag, &mut report, &publish)
                    .await?;
            }
            Mode::Snapshot => loop {
                self.wait_for_space().await?;
                let state = self.queue.state(&self.resource.code)?;
                let done = self.snapshot_step(state, &mut report).await?;
                self.enqueued.notify_waiters();
                publish(&report);
                if done {
                    break;
                }
            },
        }
        report.caught_up = true;
        publish(&report);
        self.pulled().await
    }

    /// Records the end of a successful pull.
    async fn pulled(&self) -> Result<(), PullError> {
        let code = self.resource.code.clone();
        self.blocking(move |txn| {
            let mut st = txn.state(&code)?;
            st.last_pull =
                Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            txn.set_state(&code, &st)
        })
        .await?;
        Ok(())
    }

    /// A stored position as the source is read with (sealed values opened).
    fn position(
        &self,
        stored: Option<&[exchange_connectors::Value]>,
    ) -> Result<Option<Vec<exchange_connectors::Value>>, PullError> {
        stored
            .map(|s| self.plan.position_from_store(s))
            .transpose()
            .map_err(|reason| PullError::Position {
                resource: self.resource.code.clone(),
                reason,
            })
    }

    async fn wait_for_space(&self) -> Result<(), QueueError> {
        loop {
            let notified = self.space.notified();
            let used = self.queue.total_bytes()?;
            use std::sync::atomic::Ordering;
            if used + self.batch.max_bytes as u64 <= self.queue_max_bytes {
                if self.paused.swap(false, Ordering::Relaxed) {
                    tracing::info!(resource = %self.resource.code, queued_bytes = used, "Queue has room again; pulling resumes.");
                }
                return Ok(());
            }
            if self.paused.swap(true, Ordering::Relaxed) {
                tracing::info!(resource = %self.resource.code, queued_bytes = used, "Queue is still full; pulling stays paused.");
            } else {
                tracing::warn!(resource = %self.resource.code, queued_bytes = used, "Queue is full; pulling pauses until the hub acknowledges batches.");
            }
            // Re-check periodically in case another process freed space.
            let _ = tokio::time::timeout(Duration::from_secs(5), notified).await;
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Txn) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let queue = self.queue.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = queue.begin()?;
            let out = f(&mut txn)?;
            txn.commit()?;
            Ok(out)
        })
        .await
        .expect("queue task panicked")
    }

    async fn blocking_pull<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Txn) -> Result<T, PullStop> + Send + 'static,
    ) -> Result<T, PullError> {
        let queue = self.queue.clone();
        let resource = self.resource.code.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = queue.begin()?;
            let out = f(&mut txn).map_err(|e| match e {
                PullStop::Queue(q) => PullError::Queue(q),
                PullStop::Cursor(reason) => PullError::Cursor { resource, reason },
            })?;
            txn.commit()?;
            Ok(out)
        })
        .await
        .expect("queue task panicked")
    }
}

/// Ends the baseline of a stream that is still reading it: the last batch this transaction
/// enqueued (`records` > 0), or else a new empty batch, carries the baseline mark. Runs in
/// the transaction that commits the read's last page, so the marked batch is still queued.
///
/// An incremental read is complete only once a caught-up page's horizon (`reached`) has passed
/// the instant the read began: rows changed before then but held back by the horizon (a
/// long-open transaction on the source) have not been re-sent yet, and the hub would sweep
/// their old-stream records.
fn complete_baseline(
    txn: &mut Txn,
    code: &str,
    st: &mut ResourceState,
    records: u64,
    reached: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), QueueError> {
    let Baseline::Reading { since } = st.baseline else {
        return Ok(());
    };
    if let (Some(reached), Some(since)) = (reached, since)
        && reached < since
    {
        return Ok(());
    }
    let seq = if records > 0 {
        st.next_seq - 1
    } else {
        txn.enqueue(code, st, b"", 0)?
    };
    st.baseline = Baseline::Complete { seq };
    Ok(())
}

/// Why processing a page stopped.
enum PullStop {
    Queue(QueueError),
    Cursor(String),
}

impl From<QueueError> for PullStop {
    fn from(e: QueueError) -> Self {
        PullStop::Queue(e)
    }
}

/// Why a position cannot be stored: its key is hidden and the key to seal it is missing
/// (configuration validation prevents this).
const SEAL_MISSING: &str = "the key leaves pseudonymized or encrypted, but `[policy] seal_key_file`, the key that seals its position, is not configured";

pub(crate) fn line_of(
    op: Op,
    key: String,
    fields: Option<serde_json::Map<String, serde_json::Value>>,
    invalid_key: bool,
) -> Vec<u8> {
    let mut line = Vec::new();
    let flags = if invalid_key {
        vec![exchange_protocol::batch::FLAG_INVALID_KEY.to_owned()]
    } else {
        Vec::new()
    };
    push_line(
        &mut line,
        &Record {
            op,
            key,
            fields,
            flags,
        },
    );
    line
}

/// The quarantine reason of a record too large for any batch.
fn too_large(len: usize, limits: BatchLimits) -> Text {
    Text::render(|| {
        tr!(
            "record of {len} bytes is larger than batch.max_bytes ({})",
            "记录为 {len} 字节，超过 batch.max_bytes（{}）",
            limits.max_bytes
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InvalidKey, Share};
    use crate::identifier::IdKind;
    use crate::policy::{Keys, PseudonymKey, Rule, seal};
    use crate::schedule::Schedule;
    use exchange_connectors::{Relation, SourceKind, SourceSpec, Value};

    /// A SQLite table of two persons in `dir`.
    fn source(dir: &std::path::Path) {
        rusqlite::Connection::open(dir.join("source.db"))
            .unwrap()
            .execute_batch(
                "create table person (id_no text primary key, name text);
                 insert into person values ('11010519491231002X', '张三'), ('440524188001010014', '李四');
                 create table person_inc (id_no text primary key, name text, seq integer not null);
                 insert into person_inc values ('11010519491231002X', '张三', 1),
                     ('440524188001010014', '李四', 2), ('321083197812162119', '王五', 2);",
            )
            .unwrap();
    }

    /// A snapshot resource of the table in `dir` whose key leaves pseudonymized, read two rows
    /// a page, its position sealed under a seal key of 32 bytes `seal`.
    fn puller(dir: &std::path::Path, seal: u8) -> Puller {
        puller_of(dir, seal, "person", Mode::Snapshot)
    }

    /// [`puller`] of another table and mode.
    fn puller_of(dir: &std::path::Path, seal: u8, table: &str, mode: Mode) -> Puller {
        let db = dir.join("source.db");
        let resource = Resource {
            code: "R1".into(),
            name: "persons".into(),
            share: Share::Unconditional,
            source: "s".into(),
            relation: Relation::Table(table.into()),
            key: "id_no".into(),
            mode,
            schedule: Schedule::Every(Duration::from_secs(60)),
            max_staleness: crate::config::Staleness::WorkingDays(2),
            fields: vec![
                (
                    "id_no".into(),
                    Rule::parse("pseudonym", IdKind::CitizenId, None).unwrap(),
                ),
                (
                    "name".into(),
                    Rule::parse("mask:name", IdKind::Other, None).unwrap(),
                ),
            ],
            key_kind: IdKind::CitizenId,
            invalid_key: InvalidKey::Quarantine,
            plain_allowed: Vec::new(),
            plain_reason: None,
            verification: Default::default(),
            locator: Vec::new(),
            files: None,
        };
        let keys = Keys {
            pseudonym: Some(PseudonymKey::from_hex(1, &"ab".repeat(32)).unwrap()),
            seal: Some(seal::SealKey::new(&[seal; 32]).unwrap()),
            ..Keys::default()
        };
        let connector = exchange_connectors::open(&SourceSpec {
            name: "s".into(),
            kind: SourceKind::Sqlite,
            url: format!("sqlite://{}", db.display()),
            password: None,
            ca: None,
            pool_size: 1,
            replica_lag: Duration::from_secs(300),
        })
        .unwrap();
        Puller {
            plan: Arc::new(Plan::new(&resource, &keys)),
            resource,
            connector,
            queue: Queue::open(&dir.join("data")).unwrap(),
            batch: BatchLimits {
                max_records: 2,
                max_bytes: 1 << 20,
                compression_level: exchange_protocol::batch::DEFAULT_LEVEL,
            },
            queue_max_bytes: 1 << 30,
            space: Arc::default(),
            enqueued: Arc::default(),
            paused: Default::default(),
            running: Default::default(),
        }
    }

    /// A page that ends exactly at `batch.max_records` is followed by an empty page, which
    /// does not move the position: the stored (sealed) position must stay as it was, not be
    /// sealed a second time, and the next run must read the resource again as usual.
    #[tokio::test]
    async fn a_sealed_scan_position_survives_a_full_page_followed_by_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        source(dir.path());
        let p = puller(dir.path(), 0x5a);
        let mut report = PullReport::default();
        let state = || p.queue.state("R1").unwrap();
        assert!(!p.snapshot_step(state(), &mut report).await.unwrap());
        let stored = state()
            .snapshot
            .position
            .expect("a position after a full page");
        assert!(seal::is_sealed(&stored[0]));
        assert_eq!(
            p.plan.position_from_store(&stored).unwrap(),
            vec![Value::Text("440524188001010014".into())]
        );
        // The empty page ends the scan; the position stays the one stored.
        assert!(!p.snapshot_step(state(), &mut report).await.unwrap());
        let st = state();
        assert!(st.snapshot.sweeping);
        assert_eq!(st.snapshot.position.as_ref(), Some(&stored));
        assert_eq!(
            p.plan.position_from_store(&stored).unwrap(),
            vec![Value::Text("440524188001010014".into())]
        );
        // The sweep ends the run; the next run reads every row again, finds them unchanged and
        // picks up a new one, quarantining nothing.
        assert!(p.snapshot_step(state(), &mut report).await.unwrap());
        assert_eq!(report.quarantined, 0);
        rusqlite::Connection::open(dir.path().join("source.db"))
            .unwrap()
            .execute(
                "insert into person values ('321083197812162119', '王五')",
                [],
            )
            .unwrap();
        let next = p.pull().await.unwrap();
        assert_eq!((next.records, next.quarantined), (1, 0));
        assert_eq!(state().snapshot.position, None);
        assert_eq!(state().quarantined, 0);
    }

    /// A position sealed under one seal key is not read under another: the pull fails, names
    /// the resource and what to do, and changes nothing; the right key goes on from it.
    #[tokio::test]
    async fn a_changed_seal_key_stops_the_pull_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        source(dir.path());
        let p = puller(dir.path(), 0x5a);
        let mut report = PullReport::default();
        let state = |p: &Puller| p.queue.state("R1").unwrap();
        assert!(!p.snapshot_step(state(&p), &mut report).await.unwrap());
        let stored = state(&p).snapshot.position.clone().unwrap();
        drop(p);
        let other = puller(dir.path(), 0x77);
        let e = other.pull().await.unwrap_err().to_string();
        for needle in [
            "`R1` cannot go on from its stored position",
            "sealed under another seal key",
            "seal_key_file",
            "exchange-agent cursor reset R1 --yes",
            "exchange-agent resync R1 --yes",
        ] {
            assert!(e.contains(needle), "{needle} not in: {e}");
        }
        assert!(!e.contains("440524188001010014"), "{e}");
        assert_eq!(state(&other).snapshot.position, Some(stored));
        assert_eq!(state(&other).queued_batches, 1);
        drop(other);
        let back = puller(dir.path(), 0x5a);
        let done = back.pull().await.unwrap();
        assert_eq!((done.records, done.quarantined), (0, 0));
    }

    /// The invalid-key figure of a snapshot resource is the count of its last complete scan,
    /// not a sum over every scan that read the same rows.
    #[tokio::test]
    async fn a_snapshot_counts_its_invalid_keys_once_per_complete_scan() {
        let dir = tempfile::tempdir().unwrap();
        source(dir.path());
        rusqlite::Connection::open(dir.path().join("source.db"))
            .unwrap()
            .execute(
                "insert into person values ('110105194912310021', '王五')",
                [],
            )
            .unwrap();
        let p = puller(dir.path(), 0x5a);
        for run in 1..=3 {
            let report = p.pull().await.unwrap();
            assert_eq!(report.quarantined, 1, "run {run}");
            let st = p.queue.state("R1").unwrap();
            assert_eq!(st.invalid_keys, 1, "run {run}");
            assert!(st.invalid_keys_since.is_some());
            assert_eq!(st.snapshot.invalid_keys, 0);
        }
    }

    /// An incremental resource whose key leaves pseudonymized, read two rows a page (the next
    /// page read ahead while one is encoded outside the write transaction): every record
    /// leaves under its pseudonym, the stored cursor holds the key sealed, and the next pull
    /// goes on from it.
    #[tokio::test]
    async fn an_incremental_cursor_of_a_pseudonymized_key_is_stored_sealed() {
        let dir = tempfile::tempdir().unwrap();
        source(dir.path());
        let mode = Mode::Incremental {
            cursor: vec!["seq".into()],
            safety_lag: Duration::ZERO,
        };
        let p = puller_of(dir.path(), 0x5a, "person_inc", mode);
        let report = p.pull().await.unwrap();
        assert_eq!((report.records, report.quarantined), (3, 0));
        assert!(report.pages >= 2, "{report:?}");
        let cursor = p.queue.state("R1").unwrap().cursor.expect("a cursor");
        assert_eq!(cursor[0], Value::Int(2));
        assert!(seal::is_sealed(&cursor[1]));
        assert!(
            !serde_json::to_string(&cursor)
                .unwrap()
                .contains("3210831978")
        );
        assert_eq!(
            p.plan.position_from_store(&cursor).unwrap(),
            vec![Value::Int(2), Value::Text("440524188001010014".into())]
        );
        let mut lines = Vec::new();
        for b in p.queue.oldest("R1", 0, 100).unwrap() {
            let body = exchange_protocol::batch::decompress(&b.body, 1 << 20).unwrap();
            lines.extend(String::from_utf8(body).unwrap().lines().map(str::to_owned));
        }
        assert_eq!(lines.len(), 3, "{lines:?}");
        for line in &lines {
            let record: Record = serde_json::from_str(line).unwrap();
            assert!(record.key.starts_with("v1:"), "{line}");
            for raw in ["11010519", "44052418", "32108319", "张三", "李四", "王五"] {
                assert!(!line.contains(raw), "{raw} in {line}");
            }
        }
        rusqlite::Connection::open(dir.path().join("source.db"))
            .unwrap()
            .execute(
                "insert into person_inc values ('110105194912310021', '赵六', 3), ('150102198807303035', '钱七', 3)",
                [],
            )
            .unwrap();
        let next = p.pull().await.unwrap();
        assert_eq!((next.records, next.quarantined), (1, 1));
        let st = p.queue.state("R1").unwrap();
        assert_eq!(st.invalid_keys, 1);
        assert_eq!(
            p.plan
                .position_from_store(st.cursor.as_deref().unwrap())
                .unwrap(),
            vec![Value::Int(3), Value::Text("150102198807303035".into())]
        );
    }
}
