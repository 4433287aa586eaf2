//! A record the hub refused (`400` naming its line, docs/PROTOCOL.md §7): it leaves its batch
//! and goes to quarantine with the hub's reason, so it never blocks the records behind it.
//!
//! Protocol: the hub applied nothing of the batch, so its seq is still free. The record's line
//! is cut out of the batch's NDJSON (every other byte kept: the same refusal always gives the
//! same batch), the `batch.record_refused` audit entry is appended, and then one queue
//! transaction replaces the batch (same seq, new digest and count) and adds the quarantine
//! entry (the key as it left, never a value). The pusher then sends the rest at once. A batch
//! left empty is still sent, so the stream's seqs stay contiguous. Each refusal removes one
//! record, so a batch always gets through; a refusal naming no line the batch holds is a
//! refusal of the whole batch (kept, retried after the long backoff).

use exchange_protocol::batch::{self, Record};
use exchange_protocol::lang::Text;
use exchange_protocol::tr;

use super::error::PushError;
use crate::pipeline::queue::{Encoded, Queue, QueueError};

/// The most of the hub's explanation a quarantine entry keeps.
const MAX_REASON_CHARS: usize = 500;

/// Quarantines the record the hub refused in `refused` (a [`PushError::RecordRefused`]) and
/// removes it from its batch; any other error is returned as it is.
pub(super) async fn quarantine(queue: &Queue, refused: PushError) -> Result<(), PushError> {
    let q = queue.clone();
    tokio::task::spawn_blocking(move || settle(&q, refused))
        .await
        .expect("queue task panicked")
}

/// [`quarantine`], on the blocking pool: the batch as it was sent, the line cut out, the
/// audit entry, then the queue's transaction (module doc).
fn settle(queue: &Queue, refused: PushError) -> Result<(), PushError> {
    let PushError::RecordRefused {
        url,
        resource,
        seq,
        digest,
        record,
        error,
    } = refused
    else {
        return Err(refused);
    };
    // Changed since it was sent (an operator's discard): sent again as it is now.
    let Some(b) = queue
        .batch(&resource, seq)?
        .filter(|b| b.digest.eq_ignore_ascii_case(&digest))
    else {
        return Ok(());
    };
    let ndjson = batch::decompress(&b.body, b.raw_len as usize).map_err(|e| {
        QueueError::Format(tr!(
            "batch {seq} of `{resource}`: {e}",
            "`{resource}` 的批次 {seq}：{e}"
        ))
    })?;
    let Some((rest, line)) = batch::remove_line(&ndjson, record) else {
        return Err(PushError::Refused {
            url,
            status: 400,
            error: tr!(
                "{error} (the hub names line {}, which the batch does not hold: the batch stays queued)",
                "{error}（交换中心指出的第 {} 行不在该批次中：该批次继续留在队列中）",
                record + 1
            ),
            resource,
            seq,
        });
    };
    // At the default level: a rare path, and any level decompresses the same way.
    let rest = Encoded::new(&rest, b.records.saturating_sub(1), batch::DEFAULT_LEVEL);
    let reason = reason(&error, record);
    let stream = queue.state(&resource)?.stream_or(queue.stream()).to_owned();
    // Audited before the queue changes: a crash between the two refuses, and audits, again.
    let detail = serde_json::json!({
        "seq": seq, "stream": stream, "record": record, "reason": reason.en(),
        "digest": b.digest, "new_digest": rest.digest(), "records": rest.records(),
    });
    let data_dir = queue.path().parent().unwrap_or(std::path::Path::new("."));
    crate::audit::append(data_dir, "batch.record_refused", &resource, detail).map_err(|e| {
        PushError::Unaudited {
            resource: resource.clone(),
            seq,
            reason: e.to_string(),
        }
    })?;
    if queue.replace_refused(
        &resource,
        seq,
        &b.digest,
        &rest,
        key_of(line),
        reason.clone(),
    )? {
        tracing::warn!(resource = %resource, seq, record, reason = reason.en(), "The hub refused a record; it is quarantined and the rest of its batch is sent again.");
    }
    Ok(())
}

/// The key of a refused line as it left, when the line is a record with a non-empty key.
fn key_of(line: &[u8]) -> Option<String> {
    serde_json::from_slice::<Record>(line)
        .ok()
        .map(|r| r.key)
        .filter(|k| !k.is_empty())
}

/// The quarantine reason: the hub's explanation without the line number it starts with, as
/// a hub writes it in English or in Chinese (the same record refused again, at another line,
/// updates the same entry), bounded.
fn reason(error: &str, record: u64) -> Text {
    let line = record + 1;
    let error = [format!("line {line}: "), format!("第 {line} 行：")]
        .iter()
        .find_map(|prefix| error.strip_prefix(prefix.as_str()))
        .unwrap_or(error);
    let error: String = error.chars().take(MAX_REASON_CHARS).collect();
    Text::render(|| tr!("refused by the hub: {error}", "被交换中心拒收：{error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_the_hubs_without_the_line_it_was_on() {
        let zh_hub = reason("第 3 行：键为空", 2);
        assert_eq!(zh_hub.en(), "refused by the hub: 键为空");
        let both = reason("line 3: the key is empty", 2);
        assert_eq!(both.en(), "refused by the hub: the key is empty");
        let zh = exchange_protocol::lang::scoped(exchange_protocol::lang::Lang::Zh, || {
            both.get().to_owned()
        });
        assert_eq!(zh, "被交换中心拒收：the key is empty");
        assert_eq!(
            reason("line 3: the key is empty", 0).en(),
            "refused by the hub: line 3: the key is empty",
            "only the line the hub named"
        );
        assert_eq!(reason(&"x".repeat(2000), 0).en().chars().count(), 20 + 500);
    }

    #[test]
    fn the_key_is_taken_from_the_line_when_it_is_a_record() {
        assert_eq!(
            key_of(br#"{"op":"delete","key":"v1:ab"}"#),
            Some("v1:ab".into())
        );
        assert_eq!(key_of(br#"{"op":"delete","key":""}"#), None);
        assert_eq!(key_of(b"not json"), None);
    }
}
