//! Incremental pulls: every row after the cursor, read with one streamed statement
//! ([`exchange_connectors::Connector::scan`]) — not page by page, which without an index on the cursor columns
//! sorts the whole table once per page and makes a first read (and `resync`) of a large table
//! quadratic — through the policy into encoded batches outside the write transaction, then
//! committed a chunk at a time with the cursor after the chunk's last row.
//!
//! Invariants:
//! - rows arrive in cursor order, so each chunk's commit moves the cursor over exactly the
//!   rows it enqueues, in one queue transaction; a crash (or a source failure) at any point
//!   resumes from the last committed chunk, and nothing is sent twice;
//! - the statement's bound (the horizon) is decided once, before its snapshot is taken; a
//!   row held back by it, or committed during the read, has a cursor after the last one read
//!   and comes with the next pull;
//! - one chunk is held back until the next arrives or the read ends, so the chunk that ends
//!   the read can carry the end of a baseline ([`complete_baseline`]);
//! - the queue bound holds: a chunk is committed only when the queue has room, and while it
//!   waits the source's stream waits too: at most two chunks are decoded at once, one being
//!   prepared and one in the channel or being read (the scan waits for the channel to empty
//!   before it converts the next chunk's first row).
//!
//! The connector measures the statement (to its first row, to its end: `ScanTime`, waits for
//! the queue included); the pull reports it, and `status` and the metrics show the last one
//! (`board::QueryTime`, `exchange_source_query_seconds`).

use std::time::Duration;

use exchange_connectors::{Bound, ScanEnd, ScanRequest, Value};
use exchange_protocol::lang::Text;

use crate::config::BatchLimits;
use crate::pipeline::board::QueryTime;
use crate::pipeline::queue::{Encoded, QueueError, ResourceState};
use crate::policy::{CursorOf, Plan};

use super::{PullError, PullReport, Puller, SEAL_MISSING, complete_baseline, too_large};

impl Puller {
    /// Reads every row after the stored cursor, up to the horizon, and commits it chunk by
    /// chunk; `publish` sees the counts after each commit.
    pub(super) async fn incremental_pull(
        &self,
        safety_lag: Duration,
        report: &mut PullReport,
        publish: &(dyn Fn(&PullReport) + Sync),
    ) -> Result<(), PullError> {
        let state = self.queue.state(&self.resource.code)?;
        // The stored position with its sealed values opened: what the source is read after.
        let after = self.position(state.cursor.as_deref())?;
        let (chunks, mut received) = tokio::sync::mpsc::channel(1);
        let connector = self.connector.clone();
        let plan = self.plan.clone();
        let chunk = self.batch.max_records;
        let scan = Scan(tokio::spawn(async move {
            connector
                .scan(
                    &ScanRequest {
                        selection: &plan.selection,
                        after: after.as_deref(),
                        bound: Bound::Horizon { safety_lag },
                        chunk,
                    },
                    &chunks,
                )
                .await
        }));
        let mut held: Option<Prepared> = None;
        while let Some(rows) = received.recv().await {
            report.pages += 1;
            let prepared = self.prepare(rows).await?;
            if let Some(ready) = held.replace(prepared) {
                self.commit_chunk(ready, None, report).await?;
                publish(report);
            }
        }
        let end = scan.end().await?;
        report.query = Some(QueryTime::of(end.time, end.rows));
        report.horizon = Some(end.horizon.info.clone());
        report.reached = end.horizon.reached;
        match held {
            Some(last) => {
                self.commit_chunk(last, Some(end.horizon.reached), report)
                    .await?
            }
            None => {
                self.end_baseline_caught_up(&state, end.horizon.reached)
                    .await?
            }
        }
        Ok(())
    }

    /// Commits a prepared chunk when the queue has room; `last` (the horizon the read reached)
    /// for the chunk that ends the read, which may end a baseline.
    async fn commit_chunk(
        &self,
        prepared: Prepared,
        last: Option<Option<chrono::DateTime<chrono::Utc>>>,
        report: &mut PullReport,
    ) -> Result<(), PullError> {
        self.wait_for_space().await?;
        report.quarantined += prepared.quarantine.len() as u64;
        let (full, reached) = match last {
            Some(reached) => (false, reached),
            None => (true, None),
        };
        report.records += self.commit_page(prepared, full, reached).await?;
        self.enqueued.notify_waiters();
        Ok(())
    }

    /// An empty page: caught up. A baseline still being read ends here once the horizon has
    /// passed its start ([`complete_baseline`]).
    async fn end_baseline_caught_up(
        &self,
        state: &ResourceState,
        reached: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), QueueError> {
        if !state.baseline.is_reading() {
            return Ok(());
        }
        let code = self.resource.code.clone();
        self.blocking(move |txn| {
            let mut st = txn.state(&code)?;
            complete_baseline(txn, &code, &mut st, 0, reached)?;
            txn.set_state(&code, &st)
        })
        .await
    }

    /// Policy, NDJSON, SM3 and zstd, run before the write transaction: the queue has one
    /// writer, and the pusher's acknowledgements need it too.
    pub(super) async fn prepare(
        &self,
        rows: Vec<exchange_connectors::Row>,
    ) -> Result<Prepared, PullError> {
        let plan = self.plan.clone();
        let limits = self.batch;
        let prepared =
            tokio::task::spawn_blocking(move || prepare_incremental(&plan, &rows, limits))
                .await
                .expect("policy task panicked");
        prepared.map_err(|reason| PullError::Cursor {
            resource: self.resource.code.clone(),
            reason,
        })
    }

    /// Commits a prepared page: its quarantine entries, its batches and the cursor after it,
    /// in one transaction; the last page of a baseline read (not `full`) may end it. Returns
    /// the records enqueued.
    pub(super) async fn commit_page(
        &self,
        prepared: Prepared,
        full: bool,
        reached: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<u64, QueueError> {
        let code = self.resource.code.clone();
        let Prepared {
            batches,
            quarantine,
            invalid_keys,
            position,
        } = prepared;
        self.blocking(move |txn| {
            let mut st = txn.state(&code)?;
            st.invalid_keys_since
                .get_or_insert_with(crate::pipeline::queue::now);
            st.invalid_keys += invalid_keys;
            for (key, reason, locator) in quarantine {
                txn.quarantine_row(&code, &mut st, key, reason, locator)?;
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
        .await
    }
}

/// The streamed read, in a task of its own; dropping it stops the read.
struct Scan(tokio::task::JoinHandle<Result<ScanEnd, exchange_connectors::ConnectorError>>);

impl Scan {
    async fn end(mut self) -> Result<ScanEnd, PullError> {
        Ok((&mut self.0).await.expect("scan task panicked")?)
    }
}

impl Drop for Scan {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A chunk of an incremental read turned into what the queue stores, outside the write transaction.
pub(super) struct Prepared {
    /// The page's batches, encoded, in order.
    pub(super) batches: Vec<Encoded>,
    /// Quarantine entries (key as it would leave, reason, locator), in order.
    pub(super) quarantine: Vec<(Option<String>, Text, Option<String>)>,
    /// Rows whose key is not a valid identifier of its kind (quarantined or delivered
    /// flagged).
    pub(super) invalid_keys: u64,
    /// The position after the page's last row as it is stored (the key's value sealed when
    /// the key does not leave as read); `None` for an empty page.
    pub(super) position: Option<Vec<Value>>,
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
            batches.push(Encoded::new(buf, *records, limits.compression_level));
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
                let reason = q.reason_in_both(|| plan.write_upsert(row, &mut Vec::new()).err());
                quarantine.push((q.key, reason, plan.locator_of(row)));
                continue;
            }
        };
        if line.len() > limits.max_bytes {
            let reason = too_large(line.len(), limits);
            quarantine.push((Some(key), reason, plan.locator_of(row)));
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
