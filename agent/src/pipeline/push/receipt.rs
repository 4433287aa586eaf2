//! An acknowledged batch leaves the queue: [`Queue::ack`] removes it (raising the committed
//! bound over the window after it) and stores its `batch.acked` audit entry, which stays in
//! the queue until it is in the audit log (queue module doc).

use std::path::Path;

use exchange_protocol::batch::Ack;

use super::error::PushError;
use super::flight::InFlight;
use crate::pipeline::queue::{Queue, QueueError, StoredBatch};

/// Removes batch `b`, acknowledged by `ack`, from the queue and writes its audit entry;
/// returns the committed bound as the queue now stores it.
pub(super) async fn record(
    flight: &InFlight<'_>,
    b: &StoredBatch,
    ack: &Ack,
) -> Result<u64, PushError> {
    let q = flight.queue.clone();
    let code = flight.resource.to_owned();
    let seq = b.seq;
    let status = format!("{:?}", ack.status).to_lowercase();
    // The exchange's audit record: which batch, how many records, their digest.
    let detail = serde_json::json!({"seq": seq, "records": b.records, "digest": b.digest, "ack": status, "stream": flight.stream});
    Ok(
        tokio::task::spawn_blocking(move || ack_and_audit(&q, &code, seq, detail))
            .await
            .expect("queue task panicked")?,
    )
}

/// [`Queue::ack`], then the audit entry appended (or left in the queue for later), with any
/// entries that could not be written before.
fn ack_and_audit(
    q: &Queue,
    code: &str,
    seq: u64,
    detail: serde_json::Value,
) -> Result<u64, QueueError> {
    let acked = q.ack(code, seq, &detail)?;
    let data_dir = q.path().parent().unwrap_or(Path::new("."));
    match crate::audit::append(data_dir, "batch.acked", code, detail) {
        Ok(_) => {
            if let Err(e) = q.audited(&acked.pending) {
                tracing::warn!(resource = %code, seq, error = %e, "Cannot mark the batch's audit entry as written; the next start checks the audit log for it.");
            }
            match q.retry_audit() {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    entries = n,
                    "Audit entries that could not be written before were appended."
                ),
                Err(e) => {
                    tracing::error!(error = %e, "Cannot write the audit log; the entries stay in the queue and are appended later.")
                }
            }
        }
        Err(e) => {
            tracing::error!(resource = %code, seq, error = %e, "Cannot write the audit log; the batch's entry stays in the queue and is appended later (审计日志写入失败，该批次的审计记录保留在队列中，稍后补写).");
            q.audit_failed(acked.pending);
        }
    }
    Ok(acked.sent_through)
}
