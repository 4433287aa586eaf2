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

use std::sync::Arc;
use std::time::Duration;

use exchange_connectors::{
    Bound, Connector, ConnectorError, HorizonInfo, Page, PageRequest, Value,
};
use exchange_protocol::batch::{Op, Record, push_line};
use tokio::sync::Notify;

use crate::config::{BatchLimits, Mode, Resource};
use crate::pipeline::fingerprint::Shape;
use crate::pipeline::queue::{Baseline, Encoded, HaltKind, Queue, QueueError, ResourceState, Txn};
use crate::policy::{CursorOf, Plan};
use exchange_protocol::digest::sm3;

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
    #[error("`{resource}` is stopped: {reason}")]
    Halted {
        /// The resource.
        resource: String,
        /// Why, and what to run.
        reason: String,
    },
    /// A selected column does not suit its rule or changed type; the resource pauses.
    #[error("resource `{resource}` is paused: {reason}")]
    Columns {
        /// The resource.
        resource: String,
        /// What changed, and what to do.
        reason: String,
    },
    /// The stored position cannot be opened (a changed seal key, a damaged value): the
    /// resource cannot go on from it.
    #[error(
        "resource `{resource}` cannot go on from its stored position: {reason}. Put back the seal key file it was stored with, or, with the service stopped, run `exchange-agent cursor reset {resource} --yes` (every row is read again on the same stream) or `exchange-agent resync {resource} --yes`"
    )]
    Position {
        /// The resource.
        resource: String,
        /// Why.
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

    /// Rows with a NULL in a cursor column (in snapshot mode the cursor is the key) have no
    /// place in the cursor order, so no page returns them: on every cycle they are counted and
    /// (up to [`NULL_ROWS_LISTED`] of them) quarantined, with their key when it can be read, so
    /// they stay visible until fixed.
    async fn quarantine_null_cursors(&self, report: &mut PullReport) -> Result<(), PullError> {
        let null = self
            .connector
            .null_cursor_rows(&self.plan.selection, NULL_ROWS_LISTED)
            .await?;
        if null.total == 0 {
            return Ok(());
        }
        tracing::warn!(resource = %self.resource.code, rows = null.total, "Rows with a NULL cursor or key value cannot be delivered; they are quarantined.");
        let code = self.resource.code.clone();
        let plan = self.plan.clone();
        self.blocking(move |txn| {
            let mut st = txn.state(&code)?;
            for row in &null.rows {
                let reason = match plan.cursor_of(row) {
                    CursorOf::Null(reason) => reason,
                    _ => "a cursor column is NULL, so the row has no place in the cursor order; give the column a value (NOT NULL)".to_owned(),
                };
                let key = match plan.key_of(row) {
                    Ok((key, _)) => Some(key),
                    Err(q) => q.key,
                };
                txn.quarantine(&code, &mut st, key, reason)?;
            }
            txn.set_state(&code, &st)
        })
        .await?;
        report.null_cursor = null.total;
        Ok(())
    }

    /// Refuses to pull a stopped resource, and stops one whose configuration no longer
    /// matches the shape its stream started with (see [`crate::pipeline::fingerprint`]).
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
        let now = Shape::of(&self.resource, self.plan.keys());
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

    /// Describes the selected columns and checks them against the rules and against the
    /// types the stream started with: a column that disappeared is named by the source's
    /// error, one whose type no longer suits its rule or changed pauses the resource (this
    /// pull fails; the next one checks again) until it is back or an operator accepts it.
    async fn check_columns(&self) -> Result<(), PullError> {
        let code = &self.resource.code;
        let columns = self.connector.describe(&self.plan.selection).await?;
        let paused = |reason: String| PullError::Columns {
            resource: code.clone(),
            reason,
        };
        crate::policy::check_types(&self.resource, &columns).map_err(paused)?;
        let now: std::collections::BTreeMap<String, String> = columns
            .into_iter()
            .map(|c| (c.name, c.source_type))
            .collect();
        match self.queue.state(code)?.columns {
            None => {
                self.queue.update_state(code, |st| st.columns = Some(now))?;
                Ok(())
            }
            Some(old) if old != now => {
                let changed: Vec<String> = now
                    .iter()
                    .filter_map(|(name, t)| match old.get(name) {
                        Some(o) if o != t => Some(format!("`{name}` from {o} to {t}")),
                        _ => None,
                    })
                    .collect();
                if changed.is_empty() {
                    // Only the set of columns differs (a column was added to the
                    // configuration and accepted): remember the new set.
                    self.queue.update_state(code, |st| st.columns = Some(now))?;
                    return Ok(());
                }
                let reason = format!(
                    "column type changed at the source: {}. The resource pauses until the column is back as it was; if the change is intended, run `exchange-agent accept-config {code}` (or `resync {code}`)",
                    changed.join(", ")
                );
                tracing::error!(resource = %code, reason, "Resource paused.");
                Err(paused(reason))
            }
            Some(_) => Ok(()),
        }
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
        // The stored position with its sealed values opened: what the source is read after.
        let after = self.position(state.cursor.as_deref())?;
        let read = match ahead.take() {
            Some(next) if next.after == after => next,
            _ => self.read_ahead(after, safety_lag),
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
        let prepared =
            tokio::task::spawn_blocking(move || prepare_incremental(&plan, &page.rows, limits))
                .await
                .expect("policy task panicked");
        let code = self.resource.code.clone();
        let Prepared {
            batches,
            quarantine,
            invalid_keys,
            position,
        } = prepared.map_err(|reason| PullError::Cursor {
            resource: code.clone(),
            reason,
        })?;
        let quarantined = quarantine.len() as u64;
        let records = self
            .blocking(move |txn| {
                let mut st = txn.state(&code)?;
                st.invalid_keys_since
                    .get_or_insert_with(crate::pipeline::queue::now);
                st.invalid_keys += invalid_keys;
                for (key, reason) in quarantine {
                    txn.quarantine(&code, &mut st, key, reason)?;
                }
                let mut records = 0;
                for batch in &batches {
                    txn.enqueue_encoded(&code, &mut st, batch)?;
                    records += u64::from(batch.records());
                }
                if position.is_some() {
                    st.cursor = position;
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
                        let line = line_of(Op::Delete, key.clone(), None, false);
                        builder.add(txn, &code, &mut st, &line, &mut quarantined)?;
                    }
                    let records = builder.finish(txn, &code, &mut st)?;
                    let done = keys.len() < limits.max_records;
                    if done {
                        // A scan by key without a bound: everything that existed when the
                        // scan began has been read.
                        complete_baseline(txn, &code, &mut st, records, None)?;
                        st.invalid_keys = std::mem::take(&mut st.snapshot.invalid_keys);
                        st.invalid_keys_since = Some(crate::pipeline::queue::now());
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
        let after = self.position(state.snapshot.position.as_deref())?;
        let page: Page = self
            .connector
            .read_page(&PageRequest {
                selection: &self.plan.selection,
                after: after.as_deref(),
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
                // Whether `position` is a page's (raw) value rather than the stored (sealed) one.
                let mut moved = false;
                for row in &page.rows {
                    match plan.cursor_of(row) {
                        CursorOf::Values(c) => {
                            position = Some(c);
                            moved = true;
                        }
                        // Pages never hold a NULL key (see `quarantine_null_cursors`).
                        CursorOf::Null(reason) | CursorOf::Unusable(reason) => {
                            return Err(PullStop::Cursor(reason));
                        }
                    }
                    let out = match plan.apply(row) {
                        Ok(out) => {
                            st.snapshot.invalid_keys += u64::from(out.invalid_key);
                            out
                        }
                        Err(q) => {
                            st.snapshot.invalid_keys += u64::from(q.invalid_key);
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
                    let line = line_of(Op::Upsert, out.key, Some(out.fields), out.invalid_key);
                    let digest = sm3(&line);
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
                let records = builder.finish(txn, &code, &mut st)?;
                st.snapshot.generation = generation;
                st.snapshot.position = match position {
                    Some(p) if moved => Some(
                        plan.position_to_store(p)
                            .ok_or_else(|| PullStop::Cursor(SEAL_MISSING.into()))?,
                    ),
                    p => p,
                };
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
    /// Rows whose key is not a valid identifier of its kind (quarantined or delivered
    /// flagged).
    invalid_keys: u64,
    /// The position after the page's last row as it is stored (the key's value sealed when
    /// the key does not leave as read); `None` for an empty page.
    position: Option<Vec<Value>>,
}

/// Applies the policy to a page and cuts the records into encoded batches; `Err` is the
/// reason a row's cursor cannot be used, or its position cannot be stored.
fn prepare_incremental(
    plan: &Plan,
    rows: &[exchange_connectors::Row],
    limits: BatchLimits,
) -> Result<Prepared, String> {
    let mut batches = Vec::new();
    let mut quarantine = Vec::new();
    let mut invalid_keys = 0;
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
            // Pages never hold a NULL cursor value (see `Puller::quarantine_null_cursors`); a
            // source that returned one anyway could not be passed.
            CursorOf::Null(reason) | CursorOf::Unusable(reason) => return Err(reason),
        };
        cursor = Some(c);
        line.clear();
        let key = match plan.write_upsert(row, &mut line) {
            Ok((key, invalid)) => {
                invalid_keys += u64::from(invalid);
                key
            }
            Err(q) => {
                invalid_keys += u64::from(q.invalid_key);
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
    let position = match cursor {
        Some(c) => Some(plan.position_to_store(c).ok_or(SEAL_MISSING)?),
        None => None,
    };
    Ok(Prepared {
        batches,
        quarantine,
        invalid_keys,
        position,
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
