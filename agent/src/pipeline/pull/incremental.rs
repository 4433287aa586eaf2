//! Incremental pulls: a page after the cursor, through the policy into encoded batches
//! outside the write transaction, then committed with the cursor that covers it; a full page
//! starts reading the next one meanwhile.

use std::time::Duration;

use exchange_connectors::{Bound, ConnectorError, Page, PageRequest, Value};

use crate::config::BatchLimits;
use crate::pipeline::queue::{Encoded, QueueError, ResourceState};
use crate::policy::{CursorOf, Plan};

use super::{PullError, PullReport, Puller, SEAL_MISSING, complete_baseline, too_large};

impl Puller {
    /// One incremental page; returns whether the resource is caught up. A full page starts
    /// the read of the next one (`ahead`), used by the next call if the cursor then is the
    /// one it was read after (it is, unless this page's commit failed).
    pub(super) async fn incremental_page(
        &self,
        state: ResourceState,
        safety_lag: Duration,
        ahead: &mut Option<Ahead>,
        report: &mut PullReport,
    ) -> Result<bool, PullError> {
        let page = self
            .page_after_cursor(&state, safety_lag, ahead.take())
            .await?;
        report.saw(&page);
        let reached = page.horizon.reached;
        if page.rows.is_empty() {
            self.end_baseline_caught_up(&state, reached).await?;
            return Ok(true);
        }
        let full = page.rows.len() >= self.batch.max_records;
        if full {
            *ahead = self.read_after_last_row(&page, safety_lag);
        }
        let prepared = self.prepare(page).await?;
        let quarantined = prepared.quarantine.len() as u64;
        let records = self.commit_page(prepared, full, reached).await?;
        report.records += records;
        report.quarantined += quarantined;
        Ok(!full)
    }

    /// The page after the stored cursor: the one read ahead if it was read after that
    /// cursor, else one read now.
    async fn page_after_cursor(
        &self,
        state: &ResourceState,
        safety_lag: Duration,
        ahead: Option<Ahead>,
    ) -> Result<Page, PullError> {
        // The stored position with its sealed values opened: what the source is read after.
        let after = self.position(state.cursor.as_deref())?;
        let read = match ahead {
            Some(next) if next.after == after => next,
            _ => self.read_ahead(after, safety_lag),
        };
        Ok(read.page().await?)
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

    /// Starts reading the page after a full `page`'s last row whose cursor can be read.
    fn read_after_last_row(&self, page: &Page, safety_lag: Duration) -> Option<Ahead> {
        let last = page
            .rows
            .iter()
            .rev()
            .find_map(|r| match self.plan.cursor_of(r) {
                CursorOf::Values(c) => Some(c),
                _ => None,
            })?;
        Some(self.read_ahead(Some(last), safety_lag))
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
    async fn prepare(&self, page: Page) -> Result<Prepared, PullError> {
        let plan = self.plan.clone();
        let limits = self.batch;
        let prepared =
            tokio::task::spawn_blocking(move || prepare_incremental(&plan, &page.rows, limits))
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
    async fn commit_page(
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

/// A page being read in a task of its own; dropping it stops the read.
pub(super) struct Ahead {
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
    /// Quarantine entries (key as it would leave, reason, locator), in order.
    quarantine: Vec<(Option<String>, String, Option<String>)>,
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
                quarantine.push((q.key, q.reason, plan.locator_of(row)));
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
