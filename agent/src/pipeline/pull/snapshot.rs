//! Snapshot pulls: the resource scanned by key, page by page, each row's digest compared with
//! the one the last scan delivered (only changed rows leave), then a sweep that deletes at
//! the hub the rows no scan of this generation saw.

use exchange_connectors::{Bound, Page, PageRequest, Row};
use exchange_protocol::batch::{Op, Record};
use exchange_protocol::digest::sm3;
use exchange_protocol::lang::Text;
use exchange_protocol::tr;

use crate::config::BatchLimits;
use crate::pipeline::queue::{Encoded, QueueError, ResourceState, Txn};
use crate::policy::{CursorOf, Outgoing, Plan};

use super::{
    PullError, PullReport, PullStop, Puller, SEAL_MISSING, complete_baseline, line_of, too_large,
};

impl Puller {
    /// One snapshot step (a page of the scan, or a chunk of the delete sweep); returns
    /// whether the snapshot run is complete.
    pub(super) async fn snapshot_step(
        &self,
        state: ResourceState,
        report: &mut PullReport,
    ) -> Result<bool, PullError> {
        let generation = state.snapshot.generation.max(1);
        if state.snapshot.sweeping {
            let code = self.resource.code.clone();
            let limits = self.batch;
            let (records, done) = self
                .blocking_pull(move |txn| Ok(sweep(txn, &code, generation, limits)?))
                .await?;
            report.records += records;
            return Ok(done);
        }
        self.scan_step(&state, generation, report).await?;
        Ok(false)
    }

    /// A page of the scan, after the stored position, written with the position after it.
    async fn scan_step(
        &self,
        state: &ResourceState,
        generation: u64,
        report: &mut PullReport,
    ) -> Result<(), PullError> {
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
        report.saw(&page);
        let scan_done = page.rows.len() < limit;
        let plan = self.plan.clone();
        let code = self.resource.code.clone();
        let limits = self.batch;
        let (records, quarantined) = self
            .blocking_pull(move |txn| {
                let st = txn.state(&code)?;
                let scan = ScanPage::new(&plan, &code, generation, st, limits);
                scan.write(txn, &page.rows, scan_done)
            })
            .await?;
        report.records += records;
        report.quarantined += quarantined;
        Ok(())
    }
}

/// A chunk of the delete sweep: a delete for each row the scan of `generation` did not see,
/// up to a batch's records; the last chunk completes the run (and a baseline), and the next
/// run scans anew. Returns the records enqueued and whether the run is complete.
fn sweep(
    txn: &mut Txn,
    code: &str,
    generation: u64,
    limits: BatchLimits,
) -> Result<(u64, bool), QueueError> {
    let mut st = txn.state(code)?;
    let keys = txn.take_unseen(code, generation, limits.max_records)?;
    let mut builder = BatchBuilder::new(limits);
    let mut quarantined = 0;
    for key in &keys {
        let line = line_of(Op::Delete, key.clone(), None, false);
        builder.add(txn, code, &mut st, &line, &mut quarantined, || None)?;
    }
    let records = builder.finish(txn, code, &mut st)?;
    let done = keys.len() < limits.max_records;
    if done {
        // A scan by key without a bound: everything that existed when the
        // scan began has been read.
        complete_baseline(txn, code, &mut st, records, None)?;
        st.invalid_keys = std::mem::take(&mut st.snapshot.invalid_keys);
        st.invalid_keys_since = Some(crate::pipeline::queue::now());
        st.snapshot.generation = generation + 1;
        st.snapshot.position = None;
        st.snapshot.sweeping = false;
    }
    txn.set_state(code, &st)?;
    Ok((records, done))
}

/// A page of a snapshot scan being written, in the transaction that moves the position (also
/// a chunk of a dropped file, `pull/files.rs`).
pub(super) struct ScanPage<'a> {
    plan: &'a Plan,
    code: &'a str,
    /// The scan's generation: rows it sees carry it in `digests`.
    generation: u64,
    /// The resource's state, stored when the page is written.
    pub(super) st: ResourceState,
    builder: BatchBuilder,
    /// Rows quarantined so far.
    pub(super) quarantined: u64,
    /// Whether a row is compared with the digest of what the hub has (a snapshot), or always
    /// delivered (a dropped file's upserts).
    pub(super) compare: bool,
    /// Where the next row is, for its quarantine entry (a dropped file's `NAME:LINE`); `None`:
    /// the resource's locator columns.
    pub(super) at: Option<String>,
}

impl<'a> ScanPage<'a> {
    /// A page of the scan of `generation`, written over `st`.
    pub(super) fn new(
        plan: &'a Plan,
        code: &'a str,
        generation: u64,
        st: ResourceState,
        limits: BatchLimits,
    ) -> ScanPage<'a> {
        ScanPage {
            plan,
            code,
            generation,
            st,
            builder: BatchBuilder::new(limits),
            quarantined: 0,
            compare: true,
            at: None,
        }
    }

    /// Enqueues what is left of the page; returns the state to store, the records enqueued
    /// and the rows quarantined.
    pub(super) fn finish(mut self, txn: &mut Txn) -> Result<(ResourceState, u64, u64), QueueError> {
        let records = self.builder.finish(txn, self.code, &mut self.st)?;
        Ok((self.st, records, self.quarantined))
    }

    /// Where a row is, for its quarantine entry.
    fn locator(&self, row: &Row) -> Option<String> {
        self.at.clone().or_else(|| self.plan.locator_of(row))
    }

    /// Writes `rows` and the position after them (`scan_done`: the last page, the sweep
    /// follows); returns the records enqueued and the rows quarantined.
    fn write(
        mut self,
        txn: &mut Txn,
        rows: &[Row],
        scan_done: bool,
    ) -> Result<(u64, u64), PullStop> {
        let mut position = self.st.snapshot.position.clone();
        // Whether `position` is a page's (raw) value rather than the stored (sealed) one.
        let mut moved = false;
        for row in rows {
            match self.plan.cursor_of(row) {
                CursorOf::Values(c) => {
                    position = Some(c);
                    moved = true;
                }
                // Pages never hold a NULL key (see `quarantine_null_cursors`).
                CursorOf::Null(reason) | CursorOf::Unusable(reason) => {
                    return Err(PullStop::Cursor(reason));
                }
            }
            self.row(txn, row)?;
        }
        let records = self.builder.finish(txn, self.code, &mut self.st)?;
        let st = &mut self.st;
        st.snapshot.generation = self.generation;
        st.snapshot.position = match position {
            Some(p) if moved => Some(
                self.plan
                    .position_to_store(p)
                    .ok_or_else(|| PullStop::Cursor(SEAL_MISSING.into()))?,
            ),
            p => p,
        };
        st.snapshot.sweeping = scan_done;
        txn.set_state(self.code, st)?;
        Ok((records, self.quarantined))
    }

    /// A row through the policy: delivered if it changed, or quarantined.
    pub(super) fn row(&mut self, txn: &mut Txn, row: &Row) -> Result<(), QueueError> {
        let code = self.code;
        match self.plan.apply(row) {
            Ok(out) => {
                self.st.snapshot.invalid_keys += u64::from(out.invalid_key);
                self.deliver(txn, out, row)
            }
            Err(q) => {
                self.st.snapshot.invalid_keys += u64::from(q.invalid_key);
                // The row still exists: keep its last delivered version at the
                // hub (no delete in the sweep) until it can be converted again.
                if let Some(key) = &q.key
                    && let Some((d, _)) = txn.digest(code, key)?
                {
                    txn.set_digest(code, key, &d, self.generation)?;
                }
                let locator = self.locator(row);
                let reason = q.reason_in_both(|| self.plan.apply(row).err());
                txn.quarantine_row(code, &mut self.st, q.key, reason, locator)?;
                self.quarantined += 1;
                Ok(())
            }
        }
    }

    /// A converted row: enqueued unless the hub has it as it is (same digest), marked seen by
    /// this scan; a second row with a key this scan saw already is quarantined.
    fn deliver(&mut self, txn: &mut Txn, out: Outgoing, row: &Row) -> Result<(), QueueError> {
        let (code, generation) = (self.code, self.generation);
        let key = out.key.clone();
        let line = line_of(Op::Upsert, out.key, Some(out.fields), out.invalid_key);
        if !self.compare {
            let at = self.locator(row);
            self.builder
                .add(txn, code, &mut self.st, &line, &mut self.quarantined, || at)?;
            return Ok(());
        }
        let digest = sm3(&line);
        match txn.digest(code, &key)? {
            Some((_, g)) if g == generation => {
                let at = self.locator(row);
                txn.quarantine_row(
                    code,
                    &mut self.st,
                    Some(key),
                    Text::render(|| {
                        tr!(
                            "another row with the same key was read in this snapshot; the key column must be unique",
                            "本次快照中读到了另一行相同主键的记录；主键列必须唯一"
                        )
                    }),
                    at,
                )?;
                self.quarantined += 1;
            }
            Some((d, _)) if d == digest => txn.set_digest(code, &key, &digest, generation)?,
            previous => {
                let at = self.locator(row);
                if self
                    .builder
                    .add(txn, code, &mut self.st, &line, &mut self.quarantined, || at)?
                {
                    txn.set_digest(code, &key, &digest, generation)?;
                } else if let Some((d, _)) = previous {
                    // Too large to send: the hub keeps the previous version.
                    txn.set_digest(code, &key, &d, generation)?;
                }
            }
        }
        Ok(())
    }
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

    /// Adds a record line; one larger than a batch may be is quarantined instead (with the
    /// row's `locator`), and `false` returned.
    fn add(
        &mut self,
        txn: &mut Txn,
        code: &str,
        st: &mut ResourceState,
        line: &[u8],
        quarantined: &mut u64,
        locator: impl FnOnce() -> Option<String>,
    ) -> Result<bool, QueueError> {
        if line.len() > self.limits.max_bytes {
            let key = serde_json::from_slice::<Record>(line).ok().map(|r| r.key);
            let reason = too_large(line.len(), self.limits);
            txn.quarantine_row(code, st, key, reason, locator())?;
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
            let encoded = Encoded::new(&self.buf, self.records, self.limits.compression_level);
            txn.enqueue_encoded(code, st, &encoded)?;
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
