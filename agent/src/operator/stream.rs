//! `resync` and `accept-config`: a resource's stream after the hub lost batches or its
//! configuration changed.

use super::command::{OperatorError, Printed, resource};
use crate::audit;
use crate::config::Config;
use crate::pipeline::fingerprint::Shape;
use crate::pipeline::queue::{HaltKind, Queue};
use exchange_protocol::tr;

/// `resync`: a new stream for the resource; everything is read again from the start and the
/// hub removes what the new stream does not re-send. Audited.
pub fn resync(config: &Config, queue: &Queue, code: &str) -> Printed {
    let r = resource(config, queue, code)?;
    let before = queue.state(code)?;
    let discarded = queue.resync(code, Shape::of(r, &config.keys))?;
    let after = queue.state(code)?;
    let stream = after.stream_or(queue.stream()).to_owned();
    let old_stream = before.stream_or(queue.stream()).to_owned();
    // Offline: the old stream's files not yet carried leave the outbox.
    let withdrawn = match &config.hub.offline {
        Some(o) => crate::pipeline::push::withdraw(&o.outbox, code, &old_stream)
            .unwrap_or_else(|e| {
                tracing::warn!(outbox = %o.outbox.display(), error = %e, "Cannot remove the old stream's batch files from the outbox.");
                0
            }),
        None => 0,
    };
    audit::append(
        &config.node.data_dir,
        "resync",
        code,
        serde_json::json!({
            "old_stream": old_stream,
            "withdrawn_files": withdrawn,
            "new_stream": stream,
            "discarded_batches": discarded.batches,
            "discarded_records": discarded.records,
            "was_stopped": before.halt.as_ref().map(|h| h.kind),
        }),
    )?;
    let (batches, records) = (discarded.batches, discarded.records);
    if let Some(file) = &r.files {
        let dir = file.dir();
        let dir = dir.display();
        return Ok(tr!(
            "`{code}` starts again on a new stream {stream}: {batches} queued batches ({records} records) were discarded. It reads a file drop, whose files are not read again by themselves: move the files to send again from {dir}/done/ back into {dir}/ (a snapshot resource: its latest file, after which the hub removes what that file does not hold).\n",
            "`{code}` 在新数据流 {stream} 上重新开始：已丢弃 {batches} 个排队批次（{records} 条记录）。该资源读取文件交换目录，文件不会自动重读：请把需要重新发送的文件从 {dir}/done/ 移回 {dir}/（快照资源：移回最新的一个文件，交换平台随后删除该文件中没有的记录）。\n"
        ));
    }
    let mut said = tr!(
        "`{code}` starts again on a new stream {stream}: {batches} queued batches ({records} records) were discarded; the next pull reads the whole resource, and once the hub has it all it removes the records the new stream did not send.\n",
        "`{code}` 在新数据流 {stream} 上重新开始：已丢弃 {batches} 个排队批次（{records} 条记录）；下一次抽取读取整个资源，交换平台收齐后删除新数据流未发送的记录。\n"
    );
    if config.hub.offline.is_some() {
        said.push_str(&tr!(
            "Offline: {withdrawn} batch files of the old stream {old_stream} were removed from the outbox; remove any still on their way (in the gateway, or not yet imported at the hub) before the new stream's files are imported.\n",
            "离线模式：已从发件目录删除旧数据流 {old_stream} 的 {withdrawn} 个批次文件；请在导入新数据流的文件之前，删除仍在途中（在网闸中，或尚未在交换中心导入）的旧数据流文件。\n"
        ));
    }
    Ok(said)
}

/// `accept-config`: keeps the cursor after a configuration change; only rows that change
/// from now on carry the new configuration. Audited with what changed.
pub fn accept_config(config: &Config, queue: &Queue, code: &str) -> Printed {
    let r = resource(config, queue, code)?;
    let now = Shape::of(r, &config.keys);
    let st = queue.state(code)?;
    let changes = st
        .shape
        .as_ref()
        .map(|s| s.changes(&now))
        .unwrap_or_default();
    if let Some(h) = &st.halt
        && h.kind != HaltKind::ConfigChanged
    {
        let reason = &h.reason;
        return Err(OperatorError::Usage(tr!(
            "`{code}` is stopped for another reason, which only `exchange-agent resync {code} --yes` clears: {reason}",
            "`{code}` 因其他原因停止，只有 `exchange-agent resync {code} --yes` 能解除：{reason}"
        )));
    }
    if let Some(old) = &st.shape
        && !old.keeps_position(&now)
    {
        let changed = changes.join("; ");
        return Err(OperatorError::Usage(tr!(
            "`{code}` cannot go on from its cursor: {changed}; the stored position means nothing under the new relation, key, mode or cursor. Run `exchange-agent resync {code} --yes` instead",
            "`{code}` 无法从游标处继续：{changed}；在新的表、主键、模式或游标下，已存位置没有意义。请改为运行 `exchange-agent resync {code} --yes`"
        )));
    }
    if let Some(old) = &st.shape {
        let tightened = old.tightened(&now);
        if !tightened.is_empty() && st.queued_batches > 0 {
            return Err(OperatorError::Usage(exchange_protocol::tr!(
                "`{code}` has {} ({} records) queued under the old configuration, which delivers {} more openly than the new one; accept-config would send them as they are. Run `exchange-agent resync {code} --yes` (discards them and reads everything again under the new configuration), or put the previous rules back, run `exchange-agent accept-config {code} --yes` and let the service deliver the queue, then change the rules again",
                "`{code}` 有 {}（{} 条记录）按旧配置排队，旧配置交付 {} 的方式比新配置更公开；accept-config 会按原样发送它们。请运行 `exchange-agent resync {code} --yes`（丢弃它们并按新配置重新读取全部），或先恢复原来的规则，运行 `exchange-agent accept-config {code} --yes`，让服务交付完队列，再修改规则",
                match st.queued_batches {
                    1 => exchange_protocol::tr!("1 batch", "1 个批次"),
                    n => exchange_protocol::tr!("{n} batches", "{n} 个批次"),
                },
                st.queued_records,
                tightened
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    queue.update_state(code, |st| {
        st.columns = None;
        st.shape = Some(now);
        st.halt = None;
    })?;
    audit::append(
        &config.node.data_dir,
        "accept-config",
        code,
        serde_json::json!({ "changes": changes }),
    )?;
    Ok(if changes.is_empty() {
        tr!(
            "The configuration of `{code}` is unchanged; the source's column types are taken as they are now at the next pull.\n",
            "`{code}` 的配置未变；下一次抽取时按数据源当前的列类型处理。\n"
        )
    } else {
        let changed = changes.join("; ");
        tr!(
            "`{code}` goes on from its cursor with the new configuration ({changed}); records delivered before keep the old one until their rows change.\n",
            "`{code}` 按新配置（{changed}）从游标处继续；此前已交付的记录在其行变更前保持旧配置的结果。\n"
        )
    })
}
