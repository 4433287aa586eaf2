//! `quarantine list`, `quarantine find` and `quarantine clear`: rows that could not be
//! delivered, by key (as it leaves), reason and locator (values the policy keeps in clear),
//! never other values. `find` takes a raw key typed by the operator and computes, on this
//! machine, the key as it leaves, exactly as the pipeline does ([`Plan::key_as_it_leaves`]);
//! the raw key is never printed, logged, audited or stored.

use exchange_protocol::tr;

use super::command::{OperatorError, Printed, listed, resource};
use crate::audit;
use crate::config::Config;
use crate::pipeline::queue::{QuarantineEntry, Queue};
use crate::policy::Plan;

/// `quarantine list`: the most recent entries (key as it would have left, where the row is,
/// reason, count).
pub fn quarantine_list(
    config: &Config,
    queue: &Queue,
    code: Option<&str>,
    limit: usize,
) -> Printed {
    let states = queue.states()?;
    let mut out = String::new();
    let codes = listed(config, queue, &states, code)?;
    let mut any = false;
    for code in codes {
        let entries = queue.quarantined(code, limit)?;
        if entries.is_empty() {
            continue;
        }
        any = true;
        let n = states[code].quarantined;
        out.push_str(&tr!(
            "{code}: {n} rows quarantined\n",
            "{code}：{n} 条隔离记录\n"
        ));
        for e in &entries {
            out.push_str(&entry_line(e));
        }
    }
    if !any {
        out.push_str(&tr!("No quarantined rows.\n", "没有隔离行。\n"));
    }
    Ok(out)
}

/// `quarantine find CODE --key RAW`, its first half, run where the command is typed (the raw
/// key never reaches the service): the key `raw_key` leaves as (normalized, pseudonymized or
/// encrypted by the resource's rules), or why it has no such form (the text to print).
pub fn key_as_it_leaves(
    config: &Config,
    code: &str,
    raw_key: &str,
) -> Result<Result<String, String>, OperatorError> {
    let res = config
        .resource(code)
        .ok_or_else(|| OperatorError::NoResource {
            code: code.to_owned(),
            file: config.file.display().to_string(),
            queued: String::new(),
        })?;
    let plan = Plan::new(res, &config.keys);
    Ok(plan.key_as_it_leaves(raw_key).map_err(|reason| {
        tr!(
            "This key has no form that leaves ({reason}); rows with such a key are quarantined without a key: see `exchange-agent quarantine list {code}`.\n",
            "该主键没有可离开的形式（{reason}）；此类行的隔离记录不带主键：见 `exchange-agent quarantine list {code}`。\n"
        )
    }))
}

/// `quarantine find`, its second half: the entries whose key is `key` (as it leaves, from
/// [`key_as_it_leaves`]).
pub fn quarantine_find(config: &Config, queue: &Queue, code: &str, key: &str) -> Printed {
    let res = resource(config, queue, code)?;
    let plan = Plan::new(res, &config.keys);
    let found: Vec<QuarantineEntry> = queue
        .quarantined(code, usize::MAX)?
        .into_iter()
        .filter(|e| e.key.as_deref() == Some(key))
        .collect();
    if found.is_empty() {
        let form = key_comparison(&plan);
        return Ok(tr!(
            "No quarantine entry of `{code}` has this key (compared as it leaves: {form}).\n",
            "`{code}` 没有该主键的隔离记录（按离开时的形式比较：{form}）。\n"
        ));
    }
    let n = found.len();
    let mut out = tr!(
        "{code}: {n} quarantine entries with this key\n",
        "{code}：该主键有 {n} 条隔离记录\n"
    );
    for e in &found {
        out.push_str(&entry_line(e));
    }
    Ok(out)
}

/// How the key is compared, in words.
fn key_comparison(plan: &Plan) -> String {
    if plan.key_is_hidden() {
        tr!(
            "normalized, then pseudonymized or encrypted with this node's keys",
            "规范化后用本节点密钥假名化或加密"
        )
    } else {
        tr!("normalized", "规范化")
    }
}

/// One entry: when, how often, the key as it leaves, where the row is, why.
fn entry_line(e: &QuarantineEntry) -> String {
    let (at, times, reason) = (&e.at, e.times, &e.reason);
    let key = e.key.clone().unwrap_or_else(|| tr!("(none)", "（无）"));
    let mut line = match &e.locator {
        Some(row) => tr!(
            "  {at}  ×{times}  key {key}  row {row}: {reason}",
            "  {at}  ×{times}  主键 {key}  行 {row}：{reason}"
        ),
        None => tr!(
            "  {at}  ×{times}  key {key}: {reason}",
            "  {at}  ×{times}  主键 {key}：{reason}"
        ),
    };
    line.push('\n');
    line
}

/// `quarantine clear`: removes a resource's entries (after the rows were fixed). Audited.
pub fn quarantine_clear(config: &Config, queue: &Queue, code: &str) -> Printed {
    resource(config, queue, code)?;
    let n = queue.clear_quarantine(code)?;
    audit::append(
        &config.node.data_dir,
        "quarantine.clear",
        code,
        serde_json::json!({ "entries": n }),
    )?;
    Ok(tr!(
        "Cleared {n} quarantine entries of `{code}`.\n",
        "已清除 `{code}` 的 {n} 条隔离记录。\n"
    ))
}
