//! `queue list`, `queue export` and `queue discard`: the batches waiting for the hub.

use exchange_protocol::tr;
use std::fmt::Write as _;
use std::path::Path;

use super::command::{OperatorError, Printed, listed};
use crate::audit;
use crate::config::Config;
use crate::pipeline::queue::{Queue, QueueError};

/// `queue list`: per resource, its stream and queued batches (oldest first, at most `limit`).
pub fn queue_list(config: &Config, queue: &Queue, only: Option<&str>, limit: usize) -> Printed {
    let states = queue.states()?;
    let mut out = String::new();
    let codes = listed(config, queue, &states, only)?;
    if codes.is_empty() {
        out.push_str(&tr!("Nothing queued.\n", "队列为空。\n"));
    }
    for code in codes {
        let st = &states[code];
        let batches = queue.batches(code)?;
        let (batch_count, records, bytes) = (st.queued_batches, st.queued_records, st.queued_bytes);
        let (stream, next) = (st.stream_or(queue.stream()), st.next_seq.max(1));
        let _ = writeln!(
            out,
            "{}",
            tr!(
                "{code}: {batch_count} batches, {records} records, {bytes} bytes queued; stream {stream}, next seq {next}",
                "{code}：队列中 {batch_count} 个批次、{records} 条记录、{bytes} 字节；流 {stream}，下一序号 {next}"
            )
        );
        if let Some(h) = &st.halt {
            let (at, reason) = (&h.at, &h.reason);
            let _ = writeln!(
                out,
                "{}",
                tr!(
                    "  STOPPED since {at}: {reason}",
                    "  自 {at} 起已停止：{reason}"
                )
            );
        }
        if let Some(e) = &st.push_error {
            let (at, message) = (&e.at, &e.message);
            let _ = writeln!(
                out,
                "{}",
                tr!(
                    "  last push error ({at}): {message}",
                    "  最近一次推送错误（{at}）：{message}"
                )
            );
        }
        for b in batches.iter().take(limit) {
            let (seq, n, size, created, sm3) =
                (b.seq, b.records, b.stored_bytes, &b.created, &b.digest);
            let _ = writeln!(
                out,
                "{}",
                tr!(
                    "  seq {seq:>8}  {n:>6} records  {size:>9} bytes  queued {created}  sm3 {sm3}",
                    "  序号 {seq:>8}  {n:>6} 条记录  {size:>9} 字节  入队于 {created}  sm3 {sm3}"
                )
            );
        }
        if batches.len() > limit {
            let more = batches.len() - limit;
            let _ = writeln!(out, "{}", tr!("  … and {more} more", "  … 另有 {more} 个"));
        }
    }
    Ok(out)
}

/// The target of an export without `--out` (as the audit entry names it).
const STDOUT: &str = "standard output";

/// A batch's records taken out of the queue by `queue export`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Export {
    /// The resource.
    pub resource: String,
    /// The batch.
    pub seq: u64,
    /// How many records.
    pub records: u64,
    /// The records, NDJSON as sent to the hub.
    pub ndjson: String,
}

/// `queue export`, its first half: a batch's records (NDJSON, as sent to the hub), audited
/// as leaving the queue for `to` before anything is written. The half that writes them
/// ([`write_export`]) runs in the operator's process, also when the service read them.
pub fn queue_export(
    config: &Config,
    queue: &Queue,
    code: &str,
    seq: u64,
    to: &str,
) -> Result<Export, OperatorError> {
    let batch = queue
        .batch(code, seq)?
        .ok_or_else(|| OperatorError::NoBatch {
            resource: code.to_owned(),
            seq,
        })?;
    let ndjson = exchange_protocol::batch::decompress(&batch.body, usize::MAX).map_err(|e| {
        OperatorError::Queue(QueueError::Format(tr!(
            "batch {seq}: {e}",
            "批次 {seq}：{e}"
        )))
    })?;
    let ndjson = String::from_utf8(ndjson).map_err(|e| {
        OperatorError::Queue(QueueError::Format(tr!(
            "batch {seq}: not UTF-8: {e}",
            "批次 {seq}：不是 UTF-8：{e}"
        )))
    })?;
    audit::append(
        &config.node.data_dir,
        "queue.export",
        code,
        serde_json::json!({ "seq": seq, "records": batch.records, "sm3": batch.digest, "to": to }),
    )?;
    Ok(Export {
        resource: code.to_owned(),
        seq,
        records: u64::from(batch.records),
        ndjson,
    })
}

/// Where `queue export` writes: the file given (its name, for the audit entry) or standard
/// output.
pub fn export_target(out: Option<&Path>) -> String {
    out.map(|p| p.display().to_string())
        .unwrap_or_else(|| STDOUT.into())
}

/// `queue export`, its second half: writes the records to `out` (created 0600, never
/// overwritten) or standard output.
pub fn write_export(export: &Export, out: Option<&Path>) -> Printed {
    use std::io::Write;
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
            f.write_all(export.ndjson.as_bytes()).map_err(output)?;
            f.sync_all().map_err(output)?;
            path.display().to_string()
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(export.ndjson.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|source| OperatorError::Output {
                    path: tr!("{STDOUT}", "标准输出"),
                    source,
                })?;
            tr!("{STDOUT}", "标准输出")
        }
    };
    let (seq, code, records) = (export.seq, &export.resource, export.records);
    Ok(tr!(
        "Wrote batch {seq} of `{code}` ({records} records) to {target}.\n",
        "已将 `{code}` 的批次 {seq}（{records} 条记录）写入 {target}。\n"
    ))
}

/// `queue discard`: replaces a batch the hub refuses with an empty one of the same seq (its
/// records are not delivered). Audited.
pub fn queue_discard(config: &Config, queue: &Queue, code: &str, seq: u64) -> Printed {
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
    Ok(tr!(
        "Discarded the {records} records of batch {seq} of `{code}`: an empty batch takes its place, so the hub sees no gap. The records are not delivered until their rows change again (or `exchange-agent resync {code} --yes`).\n",
        "已丢弃 `{code}` 批次 {seq} 的 {records} 条记录：由一个空批次占位，交换平台不会看到缺口。这些记录在其行再次变更前（或运行 `exchange-agent resync {code} --yes` 前）不会交付。\n"
    ))
}
