//! The pull stage: source pages → policy → batches in the queue, one transaction per page.
//!
//! Invariants:
//! - the cursor (or snapshot position) moves in the same queue transaction that stores the
//!   batches and quarantine entries for the rows it covers;
//! - records are built by [`Plan::apply`] before anything is written;
//! - pulling waits while the queue holds `queue.max_bytes` minus one batch or more: nothing is
//!   dropped when the hub is away;
//! - a row whose cursor cannot be read stops the resource with an error rather than skip it.

use std::sync::Arc;
use std::time::Duration;

use exchange_connectors::{
    Bound, Connector, ConnectorError, HorizonInfo, Page, PageRequest, Value,
};
use exchange_protocol::batch::{Op, Record, push_line};
use tokio::sync::Notify;

use crate::config::{BatchLimits, Mode, Resource};
use crate::fingerprint::Shape;
use crate::policy::{CursorOf, Plan};
use crate::queue::{Baseline, Encoded, HaltKind, Queue, QueueError, ResourceState, Txn, sm3_bytes};

/// How many rows with a NULL cursor value get a quarantine entry of their own per cycle (all
/// are counted).
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
    #[error("`{resource}` is stopped: {reason}")]
    Halted {
        /// The resource.
        resource: String,
        /// Why, and what to run.
        reason: String,
    },
    /// A row's cursor could not be read; the resource cannot move past it.
    #[error(
        "resource `{resource}` is stopped at a row whose cursor cannot be used ({reason}); fix the row or the cursor columns"
    )]
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
    /// Rows whose cursor column is NULL, counted once per pull (they stay at the source and
    /// are counted again by the next pull).
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
        if matches!(self.resource.mode, Mode::Incremental { .. }) {
            self.quarantine_null_cursors(&mut report).await?;
            publish(&report);
        }
        // The next incremental page, read while the current one is encoded and committed.
        let mut ahead: Option<Ahead> = None;
        loop {
            self.wait_for_space().await?;
            let state = self.queue.state(&self.resource.code)?;
            let done = match &self.resource.mode {
                Mode::Incremental { safety_lag, .. } => {
                    self.incremental_page(state, *safety_lag, &mut ahead, &mut report)
                        .await?
                }
                Mode::Snapshot => self.snapshot_step(state, &mut report).await?,
            };
            self.enqueued.notify_waiters();
            publish(&report);
            if done {
                report.caught_up = true;
                publish(&report);
                let code = self.resource.code.clone();
                self.blocking(move |txn| {
                    let mut st = txn.state(&code)?;
                    st.last_pull = Some(
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    );
                    txn.set_state(&code, &st)
                })
                .await?;
                return Ok(());
            }
        }
    }

    /// Rows with a NULL in a cursor column have no place in the cursor order, so no page can
    /// deliver them: on every cycle they are counted and (up to [`NULL_ROWS_LISTED`] of them)
    /// quarantined, with their key when it can be read, so they stay visible until fixed.
    async fn quarantine_null_cursors(&self, report: &mut PullReport) -> Result<(), PullError> {
        let null = self
            .connector
            .null_cursor_rows(&self.plan.selection, NULL_ROWS_LISTED)
            .await?;
        if null.total == 0 {
            return Ok(());
        }
        tracing::warn!(resource = %self.resource.code, rows = null.total, "Rows with a NULL cursor value cannot be delivered; they are quarantined.");
        let code = self.resource.code.clone();
        let plan = self.plan.clone();
        self.blocking(move |txn| {
            let mut st = txn.state(&code)?;
            for row in &null.rows {
                let reason = match plan.cursor_of(row) {
                    CursorOf::Null(reason) => reason,
                    _ => "a cursor column is NULL, so the row has no place in the cursor order; give the column a value (NOT NULL)".to_owned(),
                };
                txn.quarantine(&code, &mut st, plan.key_of(row).ok(), reason)?;
            }
            txn.set_state(&code, &st)
        })
        .await?;
        report.null_cursor = null.total;
        Ok(())
    }

    /// Refuses to pull a stopped resource, and stops one whose configuration no longer
    /// matches the shape its stream started with (see [`crate::fingerprint`]).
    async fn admit(&self) -> Result<(), PullError> {
        let code = self.resource.code.clone();
        let state = self.queue.state(&code)?;
        let halted = |reason: String| PullError::Halted {
            resource: code.clone(),
            reason,
        };
        if let Some(h) = state.halt {
            return Err(halted(h.reason));
        }
        let now = Shape::of(&self.resource);
        match state.shape {
            None => {
                // A new stream, or one that began before shapes were kept.
                self.queue.update_state(&code, |st| st.shape = Some(now))?;
                Ok(())
            }
            Some(old) if old != now => {
                let changes = old.changes(&now).join("; ");
                let reason = if old.keeps_position(&now) {
                    format!(
                        "the configuration of `{code}` changed since its stream started ({changes}). Choose, with the service stopped: `exchange-agent resync {code}` reads the whole resource again on a new stream, so the hub's copy is rewritten (a field newly dropped disappears from it, a new field is filled in); or `exchange-agent accept-config {code}` keeps the cursor, and only rows that change from now on carry the new configuration"
                    )
                } else {
                    format!(
                        "the configuration of `{code}` changed since its stream started ({changes}); the stored position means nothing under the new relation, key, mode or cursor. With the service stopped, run `exchange-agent resync {code}` to read the whole resource again on a new stream"
                    )
                };
                self.queue.halt(&code, HaltKind::ConfigChanged, &reason)?;
                tracing::error!(resource = %code, reason, "Resource stopped.");
                Err(halted(reason))
            }
            Some(_) => Ok(()),
        }
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

    /// Starts reading the incremental page after `after` in a task of its own.
    fn read_ahead(&self, after: Option<Vec<Value>>, safety_lag: Duration) -> Ahead {
        let connector = self.connector.clone();
        let plan = self.plan.clone();
        let limit = self.batch.max_records;
        let from = after.clone();
        let task = tokio::spawn(async move {
            connector
                .read_page(&PageRequest {
                    selection: &plan.selection,
                    after: from.as_deref(),
                    limit,
                    bound: Bound::Horizon { safety_lag },
                })
                .await
        });
        Ahead { after, task }
    }

    /// One incremental page; returns whether the resource is caught up. A full page starts
    /// the read of the next one (`ahead`), used by the next call if the cursor then is the
    /// one it was read after (it is, unless this page's commit failed).
    async fn incremental_page(
        &self,
        state: ResourceState,
        safety_lag: Duration,
        ahead: &mut Option<Ahead>,
        report: &mut PullReport,
    ) -> Result<bool, PullError> {
        let limit = self.batch.max_records;
        let read = match ahead.take() {
            Some(next) if next.after == state.cursor => next,
            _ => self.read_ahead(state.cursor.clone(), safety_lag),
        };
        let page = read.page().await?;
        report.pages += 1;
        report.horizon = Some(page.horizon.info.clone());
        report.reached = page.horizon.reached;
        let full = page.rows.len() >= limit;
        if page.rows.is_empty() {
            if state.baseline.is_reading() {
                let code = self.resource.code.clone();
                let reached = page.horizon.reached;
                self.blocking(move |txn| {
                    let mut st = txn.state(&code)?;
                    complete_baseline(txn, &code, &mut st, 0, reached)?;
                    txn.set_state(&code, &st)
                })
                .await?;
            }
            return Ok(true);
        }
        if full
            && let Some(last) = page
                .rows
                .iter()
                .rev()
                .find_map(|r| match self.plan.cursor_of(r) {
                    CursorOf::Values(c) => Some(c),
                    _ => None,
                })
        {
            *ahead = Some(self.read_ahead(Some(last), safety_lag));
        }
        // Policy, NDJSON, SM3 and zstd run before the write transaction: the queue has one
        // writer, and the pusher's acknowledgements need it too.
        let plan = self.plan.clone();
        let limits = self.batch;
        let reached = page.horizon.reached;
        let rows = page.rows.len();
        let prepared =
            tokio::task::spawn_blocking(move || prepare_incremental(&plan, &page.rows, limits))
                .await
                .expect("policy task panicked");
        let code = self.resource.code.clone();
        let Prepared {
            batches,
            quarantine,
            cursor,
        } = prepared.map_err(|reason| PullError::Cursor {
            resource: code.clone(),
            reason,
        })?;
        if full && cursor.is_none() {
            return Err(PullError::Cursor {
                resource: code,
                reason: format!(
                    "a whole page of {rows} rows has NULL cursor values; the cursor cannot move past them"
                ),
            });
        }
        let quarantined = quarantine.len() as u64;
        let records = self
            .blocking(move |txn| {
                let mut st = txn.state(&code)?;
                for (key, reason) in quarantine {
                    txn.quarantine(&code, &mut st, key, reason)?;
                }
                let mut records = 0;
                for batch in &batches {
                    txn.enqueue_encoded(&code, &mut st, batch)?;
                    records += u64::from(batch.records());
                }
                if cursor.is_some() {
                    st.cursor = cursor;
                }
                if !full {
                    complete_baseline(txn, &code, &mut st, records, reached)?;
                }
                txn.set_state(&code, &st)?;
                Ok(records)
            })
            .await?;
        report.records += records;
        report.quarantined += quarantined;
        Ok(!full)
    }

    /// One snapshot step (a page of the scan, or a chunk of the delete sweep); returns
    /// whether the snapshot run is complete.
    async fn snapshot_step(
        &self,
        state: ResourceState,
        report: &mut PullReport,
    ) -> Result<bool, PullError> {
        let code = self.resource.code.clone();
        let limits = self.batch;
        let generation = state.snapshot.generation.max(1);
        if state.snapshot.sweeping {
            let (records, done) = self
                .blocking_pull(move |txn| {
                    let mut st = txn.state(&code)?;
                    let keys = txn.take_unseen(&code, generation, limits.max_records)?;
                    let mut builder = BatchBuilder::new(limits);
                    let mut quarantined = 0;
                    for key in &keys {
                        let line = line_of(Op::Delete, key.clone(), None);
                        builder.add(txn, &code, &mut st, &line, &mut quarantined)?;
                    }
                    let records = builder.finish(txn, &code, &mut st)?;
                    let done = keys.len() < limits.max_records;
                    if done {
                        // A scan by key without a bound: everything that existed when the
                        // scan began has been read.
                        complete_baseline(txn, &code, &mut st, records, None)?;
                        st.snapshot.generation = generation + 1;
                        st.snapshot.position = None;
                        st.snapshot.sweeping = false;
                    }
                    txn.set_state(&code, &st)?;
                    Ok((records, done))
                })
                .await?;
            report.records += records;
            return Ok(done);
        }
        let limit = self.batch.max_records;
        let page: Page = self
            .connector
            .read_page(&PageRequest {
                selection: &self.plan.selection,
                after: state.snapshot.position.as_deref(),
                limit,
                bound: Bound::None,
            })
            .await?;
        report.pages += 1;
        report.horizon = Some(page.horizon.info.clone());
        report.reached = page.horizon.reached;
        let scan_done = page.rows.len() < limit;
        let plan = self.plan.clone();
        let (records, quarantined) = self
            .blocking_pull(move |txn| {
                let mut st = txn.state(&code)?;
                let mut builder = BatchBuilder::new(limits);
                let mut quarantined = 0;
                let mut position = st.snapshot.position.clone();
                let mut moved = false;
                for row in &page.rows {
                    match plan.cursor_of(row) {
                        CursorOf::Values(c) => {
                            position = Some(c);
                            moved = true;
                        }
                        CursorOf::Null(reason) => {
                            txn.quarantine(&code, &mut st, None, reason)?;
                            quarantined += 1;
                            continue;
                        }
                        CursorOf::Unusable(reason) => return Err(PullStop::Cursor(reason)),
                    }
                    let out = match plan.apply(row) {
                        Ok(out) => out,
                        Err(q) => {
                            // The row still exists: keep its last delivered version at the
                            // hub (no delete in the sweep) until it can be converted again.
                            if let Some(key) = &q.key
                                && let Some((d, _)) = txn.digest(&code, key)?
                            {
                                txn.set_digest(&code, key, &d, generation)?;
                            }
                            txn.quarantine(&code, &mut st, q.key, q.reason)?;
                            quarantined += 1;
                            continue;
                        }
                    };
                    let key = out.key.clone();
                    let line = line_of(Op::Upsert, out.key, Some(out.fields));
                    let digest = sm3_bytes(&line);
                    match txn.digest(&code, &key)? {
                        Some((_, g)) if g == generation => {
                            txn.quarantine(
                                &code,
                                &mut st,
                                Some(key),
                                "another row with the same key was read in this snapshot; the key column must be unique".into(),
                            )?;
                            quarantined += 1;
                        }
                        Some((d, _)) if d == digest => txn.set_digest(&code, &key, &digest, generation)?,
                        previous => {
                            if builder.add(txn, &code, &mut st, &line, &mut quarantined)? {
                                txn.set_digest(&code, &key, &digest, generation)?;
                            } else if let Some((d, _)) = previous {
                                // Too large to send: the hub keeps the previous version.
                                txn.set_digest(&code, &key, &d, generation)?;
                            }
                        }
                    }
                }
                if !scan_done && !moved {
                    return Err(PullStop::Cursor(format!(
                        "a whole page of {} rows has a NULL key; the scan cannot move past them",
                        page.rows.len()
                    )));
                }
                let records = builder.finish(txn, &code, &mut st)?;
                st.snapshot.generation = generation;
                st.snapshot.position = position;
                st.snapshot.sweeping = scan_done;
                txn.set_state(&code, &st)?;
                Ok((records, quarantined))
            })
            .await?;
        report.records += records;
        report.quarantined += quarantined;
        Ok(false)
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

fn line_of(
    op: Op,
    key: String,
    fields: Option<serde_json::Map<String, serde_json::Value>>,
) -> Vec<u8> {
    let mut line = Vec::new();
    push_line(&mut line, &Record { op, key, fields });
    line
}

/// A page being read in a task of its own; dropping it stops the read.
struct Ahead {
    /// The cursor it is read after.
    after: Option<Vec<Value>>,
    /// The read.
    task: tokio::task::JoinHandle<Result<Page, ConnectorError>>,
}

impl Ahead {
    async fn page(mut self) -> Result<Page, ConnectorError> {
        (&mut self.task).await.expect("page read task panicked")
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An incremental page turned into what the queue stores, outside the write transaction.
struct Prepared {
    /// The page's batches, encoded, in order.
    batches: Vec<Encoded>,
    /// Quarantine entries (key as it would leave, reason), in order.
    quarantine: Vec<(Option<String>, String)>,
    /// The cursor of the page's last placeable row (none: every row had a NULL cursor).
    cursor: Option<Vec<Value>>,
}

/// Applies the policy to a page and cuts the records into encoded batches; `Err` is the
/// reason a row's cursor cannot be used.
fn prepare_incremental(
    plan: &Plan,
    rows: &[exchange_connectors::Row],
    limits: BatchLimits,
) -> Result<Prepared, String> {
    let mut batches = Vec::new();
    let mut quarantine = Vec::new();
    let mut cursor = None;
    let mut buf: Vec<u8> = Vec::new();
    let mut records: u32 = 0;
    let mut line = Vec::new();
    let flush = |buf: &mut Vec<u8>, records: &mut u32, batches: &mut Vec<Encoded>| {
        if *records > 0 {
            batches.push(Encoded::new(buf, *records));
            buf.clear();
            *records = 0;
        }
    };
    for row in rows {
        let c = match plan.cursor_of(row) {
            CursorOf::Values(c) => c,
            // Not placeable: the cursor stays where it was. Such rows are quarantined and
            // counted once per pull by `quarantine_null_cursors`, whether a page returns them
            // or not.
            CursorOf::Null(_) => continue,
            CursorOf::Unusable(reason) => return Err(reason),
        };
        cursor = Some(c);
        line.clear();
        let key = match plan.write_upsert(row, &mut line) {
            Ok(key) => key,
            Err(q) => {
                quarantine.push((q.key, q.reason));
                continue;
            }
        };
        if line.len() > limits.max_bytes {
            quarantine.push((Some(key), too_large(line.len(), limits)));
            continue;
        }
        if records as usize >= limits.max_records || buf.len() + line.len() > limits.max_bytes {
            flush(&mut buf, &mut records, &mut batches);
        }
        buf.extend_from_slice(&line);
        records += 1;
    }
    flush(&mut buf, &mut records, &mut batches);
    Ok(Prepared {
        batches,
        quarantine,
        cursor,
    })
}

/// The quarantine reason of a record too large for any batch.
fn too_large(len: usize, limits: BatchLimits) -> String {
    format!(
        "record of {len} bytes is larger than batch.max_bytes ({})",
        limits.max_bytes
    )
}

/// Cuts records into batches bounded by `batch.max_records` and `batch.max_bytes`.
struct BatchBuilder {
    limits: BatchLimits,
    buf: Vec<u8>,
    records: u32,
    total: u64,
}

impl BatchBuilder {
    fn new(limits: BatchLimits) -> Self {
        BatchBuilder {
            limits,
            buf: Vec::new(),
            records: 0,
            total: 0,
        }
    }

    fn add(
        &mut self,
        txn: &mut Txn,
        code: &str,
        st: &mut ResourceState,
        line: &[u8],
        quarantined: &mut u64,
    ) -> Result<bool, QueueError> {
        if line.len() > self.limits.max_bytes {
            let key = serde_json::from_slice::<Record>(line).ok().map(|r| r.key);
            txn.quarantine(code, st, key, too_large(line.len(), self.limits))?;
            *quarantined += 1;
            return Ok(false);
        }
        if self.records as usize >= self.limits.max_records
            || self.buf.len() + line.len() > self.limits.max_bytes
        {
            self.flush(txn, code, st)?;
        }
        self.buf.extend_from_slice(line);
        self.records += 1;
        Ok(true)
    }

    fn flush(
        &mut self,
        txn: &mut Txn,
        code: &str,
        st: &mut ResourceState,
    ) -> Result<(), QueueError> {
        if self.records > 0 {
            txn.enqueue(code, st, &self.buf, self.records)?;
            self.total += u64::from(self.records);
            self.buf.clear();
            self.records = 0;
        }
        Ok(())
    }

    fn finish(
        mut self,
        txn: &mut Txn,
        code: &str,
        st: &mut ResourceState,
    ) -> Result<u64, QueueError> {
        self.flush(txn, code, st)?;
        Ok(self.total)
    }
}
