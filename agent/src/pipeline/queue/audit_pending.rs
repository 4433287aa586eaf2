//! The `audit_pending` table: the `batch.acked` audit entry of each acknowledged batch, kept
//! from the acknowledgement until the entry is in the audit log, and settled (appended,
//! marked recovered, where the log lacks it) when the queue is opened or after an append
//! failed (format and invariant in the module doc of [`crate::pipeline::queue`]).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{AUDIT_PENDING, Queue, QueueError, Txn, storage};

/// What failed while settling stored audit entries.
const SETTLING: &str = "appending the audit entries of acknowledged batches";

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

impl Txn {
    /// Stores `detail`, the `batch.acked` audit entry of batch `seq` of `stream`, in the
    /// transaction that acknowledges it ([`Queue::ack`]).
    pub(super) fn keep_audit(
        &mut self,
        resource: &str,
        stream: &str,
        seq: u64,
        detail: &serde_json::Value,
    ) -> Result<(), QueueError> {
        let stored = StoredAudit {
            detail: detail.clone(),
            acked_ms: chrono::Utc::now().timestamp_millis(),
        };
        let bytes = serde_json::to_vec(&stored).expect("an audit detail serializes");
        self.tx
            .open_table(AUDIT_PENDING)
            .map_err(storage("storing an audit entry"))?
            .insert((resource, stream, seq), bytes.as_slice())
            .map_err(storage("storing an audit entry"))?;
        Ok(())
    }
}

/// What the pusher reports of the audit entries it appends.
impl Queue {
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
}

/// Settling stored audit entries: find them in the log, append the missing, forget them.
impl Queue {
    /// [`Queue::recover_audit`] for the stored entries in `only` (all: `None`).
    fn settle_audit(&self, only: Option<&BTreeSet<PendingAudit>>) -> Result<usize, QueueError> {
        let stored = self.stored_audits(only)?;
        if stored.is_empty() {
            return Ok(0);
        }
        let data_dir = self.path.parent().unwrap_or(Path::new("."));
        let logged = logged_audits(data_dir, &stored)?;
        let mut appended = 0;
        for (p, s) in &stored {
            if logged.contains(p) {
                continue;
            }
            let mut detail = s.detail.clone();
            detail["recovered"] = true.into();
            crate::audit::append(data_dir, "batch.acked", &p.resource, detail)
                .map_err(storage(SETTLING))?;
            appended += 1;
        }
        self.forget_audits(&stored)?;
        Ok(appended)
    }

    /// The stored audit entries in `only` (all: `None`).
    fn stored_audits(
        &self,
        only: Option<&BTreeSet<PendingAudit>>,
    ) -> Result<Vec<(PendingAudit, StoredAudit)>, QueueError> {
        self.read(AUDIT_PENDING, SETTLING, |table| {
            let mut stored = Vec::new();
            for entry in table.iter().map_err(storage(SETTLING))? {
                let (k, v) = entry.map_err(storage(SETTLING))?;
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
            Ok(stored)
        })
    }

    /// Removes the `stored` audit entries (durably).
    fn forget_audits(&self, stored: &[(PendingAudit, StoredAudit)]) -> Result<(), QueueError> {
        let txn = self.begin()?;
        {
            let mut table = txn
                .tx
                .open_table(AUDIT_PENDING)
                .map_err(storage(SETTLING))?;
            for (p, _) in stored {
                table
                    .remove((p.resource.as_str(), p.stream.as_str(), p.seq))
                    .map_err(storage(SETTLING))?;
            }
        }
        txn.commit()
    }
}

/// The `stored` entries the audit log of `data_dir` (or its archive) holds already: the same
/// (resource, stream, seq) with the same digest.
fn logged_audits(
    data_dir: &Path,
    stored: &[(PendingAudit, StoredAudit)],
) -> Result<BTreeSet<PendingAudit>, QueueError> {
    // Entries are stamped after the acknowledgement; an hour's margin for a clock stepped
    // back meanwhile.
    let since = stored.iter().map(|(_, s)| s.acked_ms).min().unwrap_or(0) - 3_600_000;
    // The stored entries by (resource, stream, seq), with their digest.
    let wanted: HashMap<(&str, String, u64), (&PendingAudit, &serde_json::Value)> = stored
        .iter()
        .map(|(p, s)| {
            (
                (p.resource.as_str(), s.detail["stream"].to_string(), p.seq),
                (p, &s.detail["digest"]),
            )
        })
        .collect();
    let mut logged = BTreeSet::new();
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
    .map_err(storage(SETTLING))?;
    Ok(logged)
}
