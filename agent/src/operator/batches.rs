//! `queue list`, `queue export` and `queue discard`: the batches waiting for the hub.

use std::fmt::Write as _;
use std::path::Path;

use super::command::{OperatorError, Printed, listed, open_queue};
use crate::audit;
use crate::config::Config;
use crate::pipeline::queue::QueueError;

/// `queue list`: per resource, its stream and queued batches (oldest first, at most `limit`).
pub fn queue_list(config: &Config, only: Option<&str>, limit: usize) -> Printed {
    let queue = open_queue(config)?;
    let states = queue.states()?;
    let mut out = String::new();
    let codes = listed(config, &queue, &states, only)?;
    if codes.is_empty() {
        out.push_str("Nothing queued.\n");
    }
    for code in codes {
        let st = &states[code];
        let batches = queue.batches(code)?;
        let _ = writeln!(
            out,
            "{code}: {} batches, {} records, {} bytes queued; stream {}, next seq {}",
            st.queued_batches,
            st.queued_records,
            st.queued_bytes,
            st.stream_or(queue.stream()),
            st.next_seq.max(1)
        );
        if let Some(h) = &st.halt {
            let _ = writeln!(out, "  STOPPED since {}: {}", h.at, h.reason);
        }
        if let Some(e) = &st.push_error {
            let _ = writeln!(out, "  last push error ({}): {}", e.at, e.message);
        }
        for b in batches.iter().take(limit) {
            let _ = writeln!(
                out,
                "  seq {:>8}  {:>6} records  {:>9} bytes  queued {}  sm3 {}",
                b.seq, b.records, b.stored_bytes, b.created, b.digest
            );
        }
        if batches.len() > limit {
            let _ = writeln!(out, "  … and {} more", batches.len() - limit);
        }
    }
    Ok(out)
}

/// `queue export`: writes a batch's records (NDJSON, as sent to the hub) to `out` (created
/// 0600, never overwritten) or standard output. Audited.
pub fn queue_export(config: &Config, code: &str, seq: u64, out: Option<&Path>) -> Printed {
    use std::io::Write;
    let queue = open_queue(config)?;
    let batch = queue
        .batch(code, seq)?
        .ok_or_else(|| OperatorError::NoBatch {
            resource: code.to_owned(),
            seq,
        })?;
    let ndjson = exchange_protocol::batch::decompress(&batch.body, usize::MAX)
        .map_err(|e| OperatorError::Queue(QueueError::Format(format!("batch {seq}: {e}"))))?;
    // Records leave the queue here: audited before they are written.
    let to = out
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "standard output".into());
    audit::append(
        &config.node.data_dir,
        "queue.export",
        code,
        serde_json::json!({ "seq": seq, "records": batch.records, "sm3": batch.digest, "to": to }),
    )?;
    let target = match out {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let output = |source| OperatorError::Output {
                path: path.display().to_string(),
                source,
            };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(output)?;
            f.write_all(&ndjson).map_err(output)?;
            f.sync_all().map_err(output)?;
            path.display().to_string()
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&ndjson)
                .and_then(|()| stdout.flush())
                .map_err(|source| OperatorError::Output {
                    path: "standard output".into(),
                    source,
                })?;
            "standard output".into()
        }
    };
    Ok(format!(
        "Wrote batch {seq} of `{code}` ({} records) to {target}.\n",
        batch.records
    ))
}

/// `queue discard`: replaces a batch the hub refuses with an empty one of the same seq (its
/// records are not delivered). Audited.
pub fn queue_discard(config: &Config, code: &str, seq: u64) -> Printed {
    let queue = open_queue(config)?;
    let digest = queue
        .batch(code, seq)?
        .ok_or_else(|| OperatorError::NoBatch {
            resource: code.to_owned(),
            seq,
        })?
        .digest;
    let records = queue.discard(code, seq)?.unwrap_or(0);
    audit::append(
        &config.node.data_dir,
        "queue.discard",
        code,
        serde_json::json!({ "seq": seq, "records": records, "sm3": digest }),
    )?;
    Ok(format!(
        "Discarded the {records} records of batch {seq} of `{code}`: an empty batch takes its place, so the hub sees no gap. The records are not delivered until their rows change again (or `exchange-agent resync {code} --yes`).\n"
    ))
}
