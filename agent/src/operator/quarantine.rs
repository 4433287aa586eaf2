//! `quarantine list` and `quarantine clear`: rows that could not be delivered, by key and
//! reason, never values.

use std::fmt::Write as _;

use super::command::{Printed, listed, resource};
use crate::audit;
use crate::config::Config;
use crate::pipeline::queue::Queue;

/// `quarantine list`: the most recent entries (key as it would have left, reason, count).
pub fn quarantine_list(
    config: &Config,
    queue: &Queue,
    only: Option<&str>,
    limit: usize,
) -> Printed {
    let states = queue.states()?;
    let mut out = String::new();
    let codes = listed(config, queue, &states, only)?;
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
pub fn quarantine_clear(config: &Config, queue: &Queue, code: &str) -> Printed {
    resource(config, queue, code)?;
    let n = queue.clear_quarantine(code)?;
    audit::append(
        &config.node.data_dir,
        "quarantine.clear",
        code,
        serde_json::json!({ "entries": n }),
    )?;
    Ok(format!("Cleared {n} quarantine entries of `{code}`.\n"))
}
