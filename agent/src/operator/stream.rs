//! `resync` and `accept-config`: a resource's stream after the hub lost batches or its
//! configuration changed.

use super::command::{OperatorError, Printed, open_queue, resource};
use crate::audit;
use crate::config::Config;
use crate::pipeline::fingerprint::Shape;
use crate::pipeline::queue::HaltKind;

/// `resync`: a new stream for the resource; everything is read again from the start and the
/// hub removes what the new stream does not re-send. Audited.
pub fn resync(config: &Config, code: &str) -> Printed {
    let queue = open_queue(config)?;
    let r = resource(config, &queue, code)?;
    let before = queue.state(code)?;
    let discarded = queue.resync(code, Shape::of(r, &config.keys))?;
    let after = queue.state(code)?;
    let stream = after.stream_or(queue.stream()).to_owned();
    audit::append(
        &config.node.data_dir,
        "resync",
        code,
        serde_json::json!({
            "old_stream": before.stream_or(queue.stream()),
            "new_stream": stream,
            "discarded_batches": discarded.batches,
            "discarded_records": discarded.records,
            "was_stopped": before.halt.as_ref().map(|h| h.kind),
        }),
    )?;
    Ok(format!(
        "`{code}` starts again on a new stream {stream}: {} queued batches ({} records) were discarded; the next pull reads the whole resource, and once the hub has it all it removes the records the new stream did not send.\n",
        discarded.batches, discarded.records
    ))
}

/// `accept-config`: keeps the cursor after a configuration change; only rows that change
/// from now on carry the new configuration. Audited with what changed.
pub fn accept_config(config: &Config, code: &str) -> Printed {
    let queue = open_queue(config)?;
    let r = resource(config, &queue, code)?;
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
        return Err(OperatorError::Usage(format!(
            "`{code}` is stopped for another reason, which only `exchange-agent resync {code} --yes` clears: {}",
            h.reason
        )));
    }
    if let Some(old) = &st.shape
        && !old.keeps_position(&now)
    {
        return Err(OperatorError::Usage(format!(
            "`{code}` cannot go on from its cursor: {}; the stored position means nothing under the new relation, key, mode or cursor. Run `exchange-agent resync {code} --yes` instead",
            changes.join("; ")
        )));
    }
    if let Some(old) = &st.shape {
        let tightened = old.tightened(&now);
        if !tightened.is_empty() && st.queued_batches > 0 {
            return Err(OperatorError::Usage(format!(
                "`{code}` has {} ({} records) queued under the old configuration, which delivers {} more openly than the new one; accept-config would send them as they are. Run `exchange-agent resync {code} --yes` (discards them and reads everything again under the new configuration), or put the previous rules back, run `exchange-agent accept-config {code} --yes` and let the service deliver the queue, then change the rules again",
                match st.queued_batches {
                    1 => "1 batch".to_owned(),
                    n => format!("{n} batches"),
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
        format!(
            "The configuration of `{code}` is unchanged; the source's column types are taken as they are now at the next pull.\n"
        )
    } else {
        format!(
            "`{code}` goes on from its cursor with the new configuration ({}); records delivered before keep the old one until their rows change.\n",
            changes.join("; ")
        )
    })
}
