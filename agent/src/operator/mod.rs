//! Operator commands on the queue: list, export and discard batches; show, reset and set a
//! cursor; resynchronize a resource; accept a changed configuration; list and clear
//! quarantine entries (docs/OPERATIONS.md).
//!
//! Each command opens the queue itself, so it refuses to run while the service holds the
//! queue (stop the service, run the command, start it again; only `sync` goes through the
//! running service). Every command that changes something appends an entry to the audit log
//! ([`crate::audit`]) before it reports success. Nothing here prints a field value except
//! `queue export`, which writes a batch's records (what leaves for the hub anyway) to a file
//! or standard output on the operator's request, and `cursor show`/`set`, whose position is
//! the source's own cursor values.

pub mod check;

use std::fmt::Write as _;
use std::path::Path;

use exchange_connectors::Value;

use crate::audit;
use crate::config::{Config, Mode, Resource};
use crate::pipeline::fingerprint::Shape;
use crate::pipeline::queue::{HaltKind, Queue, QueueError};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The service holds the queue.
    #[error(
        "the queue {0} is held by the running service; stop it first (systemctl stop exchange-agent), run this command, then start it again"
    )]
    ServiceRunning(String),
    /// There is no queue yet.
    #[error("there is no queue in {0} yet (the agent has not run with this data_dir)")]
    NoQueue(String),
    /// The resource is unknown.
    #[error("no resource `{code}` in {file}{queued}")]
    NoResource {
        /// The code asked for.
        code: String,
        /// The configuration file.
        file: String,
        /// A hint when the queue knows it.
        queued: String,
    },
    /// The batch is not queued.
    #[error("`{resource}` has no queued batch {seq} (see `exchange-agent queue list {resource}`)")]
    NoBatch {
        /// The resource.
        resource: String,
        /// The seq asked for.
        seq: u64,
    },
    /// The command's arguments do not fit the resource.
    #[error("{0}")]
    Usage(String),
    /// The queue failed.
    #[error(transparent)]
    Queue(QueueError),
    /// The audit log could not be written: the change was made but is not audited.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    /// An output file could not be written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl From<QueueError> for OperatorError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Locked { path } => {
                OperatorError::ServiceRunning(path.display().to_string())
            }
            other => OperatorError::Queue(other),
        }
    }
}

/// The queue of a configuration, which must exist and be free.
pub fn open_queue(config: &Config) -> Result<Queue, OperatorError> {
    Queue::open_existing(&config.node.data_dir)?
        .ok_or_else(|| OperatorError::NoQueue(config.node.data_dir.display().to_string()))
}

fn resource<'a>(
    config: &'a Config,
    queue: &Queue,
    code: &str,
) -> Result<&'a Resource, OperatorError> {
    config
        .resource(code)
        .ok_or_else(|| OperatorError::NoResource {
            code: code.to_owned(),
            file: config.file.display().to_string(),
            queued: match queue.states().ok().and_then(|s| s.get(code).cloned()) {
                Some(_) => " (the queue still holds state for it)".into(),
                None => String::new(),
            },
        })
}

/// `queue list`: per resource, its stream and queued batches (oldest first, at most `limit`).
pub fn queue_list(
    config: &Config,
    only: Option<&str>,
    limit: usize,
) -> Result<String, OperatorError> {
    let queue = open_queue(config)?;
    let states = queue.states()?;
    let mut out = String::new();
    let mut codes: Vec<&String> = states.keys().collect();
    if let Some(code) = only {
        resource(config, &queue, code)?;
        codes.retain(|c| c.as_str() == code);
    }
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
pub fn queue_export(
    config: &Config,
    code: &str,
    seq: u64,
    out: Option<&Path>,
) -> Result<String, OperatorError> {
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
pub fn queue_discard(config: &Config, code: &str, seq: u64) -> Result<String, OperatorError> {
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
        "Discarded the {records} records of batch {seq} of `{code}`: an empty batch takes its place, so the hub sees no gap. The records are not delivered until their rows change again (or `exchange-agent resync {code}`).\n"
    ))
}

/// The source position as text (each cursor column, the key tiebreaker last). A sealed
/// value (the raw value of a key that leaves pseudonymized) is not shown.
fn position_text(
    resource: &Resource,
    keys: &crate::policy::Keys,
    position: &Option<Vec<Value>>,
) -> String {
    match position {
        None => "at the start (the next pull reads from the first row)".into(),
        Some(values) => {
            let names = crate::policy::Plan::new(resource, keys).selection.cursor;
            names
                .iter()
                .zip(values)
                .map(|(n, v)| {
                    if crate::policy::seal::is_sealed(v) {
                        let form = resource
                            .fields
                            .iter()
                            .find(|(f, _)| f.eq_ignore_ascii_case(&resource.key))
                            .map_or("as read", |(_, rule)| rule.key_form());
                        format!("{n} = (sealed: the key leaves {form})")
                    } else {
                        format!("{n} = {}", v.to_text().unwrap_or_else(|| "?".into()))
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// `cursor show`.
pub fn cursor_show(config: &Config, code: &str) -> Result<String, OperatorError> {
    let queue = open_queue(config)?;
    let r = resource(config, &queue, code)?;
    let st = queue.state(code)?;
    Ok(match &r.mode {
        Mode::Incremental { .. } => {
            format!("{code}: {}\n", position_text(r, &config.keys, &st.cursor))
        }
        Mode::Snapshot => format!(
            "{code}: snapshot generation {}, {}\n",
            st.snapshot.generation,
            if st.snapshot.sweeping {
                "sweeping deletes".to_owned()
            } else {
                format!(
                    "scan {}",
                    position_text(r, &config.keys, &st.snapshot.position)
                )
            }
        ),
    })
}

/// `cursor reset`: the next pull reads the resource from the start on the same stream (rows
/// are sent again; the hub overwrites them). Audited.
pub fn cursor_reset(config: &Config, code: &str) -> Result<String, OperatorError> {
    let queue = open_queue(config)?;
    let r = resource(config, &queue, code)?;
    let incremental = matches!(r.mode, Mode::Incremental { .. });
    queue.update_state(code, |st| {
        st.cursor = None;
        if st.snapshot.position.is_some() || st.snapshot.sweeping {
            // A scan cut short: the next scan is a new generation, so rows this one already
            // stamped are not taken for duplicates.
            st.snapshot.generation += 1;
        }
        st.snapshot.position = None;
        st.snapshot.sweeping = false;
        st.snapshot.invalid_keys = 0;
        if incremental {
            // Every row is read again: the invalid keys are counted afresh.
            st.invalid_keys = 0;
            st.invalid_keys_since = None;
        }
    })?;
    audit::append(
        &config.node.data_dir,
        "cursor.reset",
        code,
        serde_json::json!({}),
    )?;
    Ok(format!(
        "The cursor of `{code}` is reset: the next pull reads every row again and the hub overwrites what it holds (rows deleted at the source stay at the hub; `exchange-agent resync {code}` removes those too).\n"
    ))
}

/// `cursor set`: the next pull reads rows after `values` (one per cursor column, the key
/// last, each parsed like the current position's value). Audited (without the values).
pub fn cursor_set(config: &Config, code: &str, values: &[String]) -> Result<String, OperatorError> {
    let queue = open_queue(config)?;
    let r = resource(config, &queue, code)?;
    if !matches!(r.mode, Mode::Incremental { .. }) {
        return Err(OperatorError::Usage(format!(
            "`{code}` is a snapshot resource: it has no cursor to set (use `cursor reset` to restart its scan)"
        )));
    }
    let plan = crate::policy::Plan::new(r, &config.keys);
    let names = plan.selection.cursor.clone();
    if values.len() != names.len() {
        return Err(OperatorError::Usage(format!(
            "`{code}` has {} cursor columns ({}, the key last as tiebreaker); give one value for each",
            names.len(),
            names.join(", ")
        )));
    }
    let st = queue.state(code)?;
    let Some(current) = st.cursor else {
        return Err(OperatorError::Usage(format!(
            "`{code}` has no cursor yet (it reads from the start); run a pull first, so the column types are known"
        )));
    };
    let current = plan
        .position_from_store(&current)
        .map_err(OperatorError::Usage)?;
    let parsed = current
        .iter()
        .zip(values)
        .zip(&names)
        .map(|((like, text), name)| {
            parse_like(like, text)
                .map_err(|why| OperatorError::Usage(format!("cursor column `{name}`: {why}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let parsed = plan.position_to_store(parsed).ok_or_else(|| {
        OperatorError::Usage(format!(
            "`{code}`: the key leaves pseudonymized or encrypted but `[policy] seal_key_file` is not configured, so the position cannot be sealed"
        ))
    })?;
    queue.update_state(code, |st| st.cursor = Some(parsed))?;
    audit::append(
        &config.node.data_dir,
        "cursor.set",
        code,
        serde_json::json!({ "columns": names }),
    )?;
    Ok(format!(
        "The cursor of `{code}` is set: the next pull reads the rows after it.\n"
    ))
}

/// Parses `text` as a value of the same kind as `like`.
fn parse_like(like: &Value, text: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("expected {what}");
    Ok(match like {
        Value::Null => return Err("the current position is NULL".into()),
        Value::Bool(_) => Value::Bool(text.parse().map_err(|_| bad("true or false"))?),
        Value::Int(_) => Value::Int(text.parse().map_err(|_| bad("an integer"))?),
        Value::UInt(_) => Value::UInt(text.parse().map_err(|_| bad("a non-negative integer"))?),
        Value::Float(_) => Value::Float(
            text.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| bad("a number"))?,
        ),
        Value::Decimal(_) => {
            let digits = text.strip_prefix('-').unwrap_or(text);
            let ok = !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
                && digits.matches('.').count() <= 1;
            if !ok {
                return Err(bad("a decimal number such as 12.50"));
            }
            Value::Decimal(text.to_owned())
        }
        Value::Text(_) => Value::Text(text.to_owned()),
        Value::Date(_) => Value::Date(
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| bad("a date YYYY-MM-DD"))?,
        ),
        Value::Timestamp(_) => Value::Timestamp(
            chrono::NaiveDateTime::parse_from_str(&text.replace(' ', "T"), "%Y-%m-%dT%H:%M:%S%.f")
                .map_err(|_| bad("a timestamp YYYY-MM-DDTHH:MM:SS[.ffffff]"))?,
        ),
        Value::TimestampTz(_) => Value::TimestampTz(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|_| bad("an RFC 3339 instant such as 2024-05-01T08:00:00+08:00"))?
                .with_timezone(&chrono::Utc),
        ),
        Value::Bytes(_) => Value::Bytes(hex::decode(text).map_err(|_| bad("hexadecimal bytes"))?),
        Value::Json(_) => return Err("a JSON cursor cannot be set".into()),
    })
}

/// `resync`: a new stream for the resource; everything is read again from the start and the
/// hub removes what the new stream does not re-send. Audited.
pub fn resync(config: &Config, code: &str) -> Result<String, OperatorError> {
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
pub fn accept_config(config: &Config, code: &str) -> Result<String, OperatorError> {
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
            "`{code}` is stopped for another reason, which only `exchange-agent resync {code}` clears: {}",
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
                "`{code}` has {} ({} records) queued under the old configuration, which delivers {} more openly than the new one; accept-config would send them as they are. Run `exchange-agent resync {code} --yes` (discards them and reads everything again under the new configuration), or put the previous rules back, run `exchange-agent accept-config {code}` and let the service deliver the queue, then change the rules again",
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

/// `quarantine list`: the most recent entries (key as it would have left, reason, count).
pub fn quarantine_list(
    config: &Config,
    only: Option<&str>,
    limit: usize,
) -> Result<String, OperatorError> {
    let queue = open_queue(config)?;
    let states = queue.states()?;
    let mut out = String::new();
    let codes: Vec<&String> = match only {
        Some(code) => {
            resource(config, &queue, code)?;
            states.keys().filter(|c| c.as_str() == code).collect()
        }
        None => states.keys().collect(),
    };
    let mut any = false;
    for code in codes {
        let entries = queue.quarantined(code, limit)?;
        if entries.is_empty() {
            continue;
        }
        any = true;
        let _ = writeln!(out, "{code}: {} rows quarantined", states[code].quarantined);
        for e in entries {
            let _ = writeln!(
                out,
                "  {}  ×{}  key {}: {}",
                e.at,
                e.times,
                e.key.as_deref().unwrap_or("(none)"),
                e.reason
            );
        }
    }
    if !any {
        out.push_str("No quarantined rows.\n");
    }
    Ok(out)
}

/// `quarantine clear`: removes a resource's entries (after the rows were fixed). Audited.
pub fn quarantine_clear(config: &Config, code: &str) -> Result<String, OperatorError> {
    let queue = open_queue(config)?;
    resource(config, &queue, code)?;
    let n = queue.clear_quarantine(code)?;
    audit::append(
        &config.node.data_dir,
        "quarantine.clear",
        code,
        serde_json::json!({ "entries": n }),
    )?;
    Ok(format!("Cleared {n} quarantine entries of `{code}`.\n"))
}
