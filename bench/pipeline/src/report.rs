//! The result table: one row per scenario, printed for people and written as JSON so runs can
//! be compared.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

pub mod target;

use crate::process::Usage;
use target::Verdict;

/// What one process of a scenario cost.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    /// Which process (`agent`, `hub`, `sink`, `psql|psql`, `sling`, …).
    pub process: String,
    /// Its usage.
    #[serde(flatten)]
    pub usage: Usage,
}

/// One measured scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Short name (`pg-copy-pipe`, `agent-pg`, …).
    pub scenario: String,
    /// What was measured, in a few words.
    pub what: String,
    /// Rows (or records) moved.
    pub rows: u64,
    /// Seconds from start until the last row was committed at the destination.
    pub seconds: f64,
    /// `rows / seconds`.
    pub rows_per_s: f64,
    /// Against the limit of its source (the raw pipe), when measured.
    pub ratio_to_limit: Option<f64>,
    /// Against the peer (sling) of its source, when measured.
    pub ratio_to_peer: Option<f64>,
    /// Per process.
    pub costs: Vec<Cost>,
    /// The agent's CPU seconds (user + system) per million rows, where the agent moved the
    /// table.
    pub agent_cpu_s_per_million_rows: Option<f64>,
    /// The largest size of the agent's data directory (its queue) while it ran, bytes, where
    /// it was sampled.
    pub queue_peak_bytes: Option<u64>,
    /// Other figures (latency percentiles, idle RSS, targets).
    pub notes: Vec<String>,
    /// Why the scenario failed, if it did.
    pub error: Option<String>,
}

impl Row {
    /// A row for `rows` moved in `wall`.
    pub fn new(scenario: &str, what: &str, rows: u64, wall: Duration) -> Row {
        let seconds = wall.as_secs_f64();
        Row {
            scenario: scenario.to_owned(),
            what: what.to_owned(),
            rows,
            seconds,
            rows_per_s: if seconds > 0.0 {
                rows as f64 / seconds
            } else {
                0.0
            },
            ratio_to_limit: None,
            ratio_to_peer: None,
            costs: Vec::new(),
            agent_cpu_s_per_million_rows: None,
            queue_peak_bytes: None,
            notes: Vec::new(),
            error: None,
        }
    }

    /// A scenario that failed.
    pub fn failed(scenario: &str, what: &str, error: &anyhow::Error) -> Row {
        Row {
            error: Some(format!("{error:#}")),
            ..Row::new(scenario, what, 0, Duration::ZERO)
        }
    }

    /// Adds a process's cost.
    pub fn cost(mut self, process: &str, usage: Usage) -> Row {
        self.costs.push(Cost {
            process: process.to_owned(),
            usage,
        });
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.notes.push(note.into());
        self
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it ran (RFC 3339).
    pub at: String,
    /// The machine: CPU model, cores, memory, kernel, database versions.
    pub machine: Vec<String>,
    /// The options it ran with.
    pub options: serde_json::Value,
    /// The scenarios, in the order they ran.
    pub rows: Vec<Row>,
    /// The targets against this run's figures.
    pub targets: Vec<Verdict>,
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    /// The table, as Markdown (readable in a terminal and pasteable into the README).
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| scenario | rows | seconds | rows/s | × limit | × peer | peak RSS MiB | CPU s | agent CPU s / M rows | queue peak MiB |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---|---|---:|---:|");
        for r in &self.rows {
            if let Some(e) = &r.error {
                let _ = writeln!(t, "| {} | failed: {} | | | | | | | | |", r.scenario, e);
                continue;
            }
            let ratio = |x: Option<f64>| x.map(|x| format!("{x:.2}")).unwrap_or_else(|| "—".into());
            let queue = r.queue_peak_bytes.map(mib).unwrap_or_else(|| "—".into());
            let rss: Vec<String> = r
                .costs
                .iter()
                .map(|c| format!("{} {}", c.process, mib(c.usage.peak_rss)))
                .collect();
            let cpu: Vec<String> = r
                .costs
                .iter()
                .map(|c| format!("{} {:.1}", c.process, c.usage.cpu.as_secs_f64()))
                .collect();
            let _ = writeln!(
                t,
                "| {} | {} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {queue} |",
                r.scenario,
                r.rows,
                r.seconds,
                r.rows_per_s,
                ratio(r.ratio_to_limit),
                ratio(r.ratio_to_peer),
                rss.join(", "),
                cpu.join(", "),
                ratio(r.agent_cpu_s_per_million_rows),
            );
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| {
                r.notes
                    .iter()
                    .map(move |n| format!("- {}: {n}", r.scenario))
            })
            .collect();
        if !notes.is_empty() {
            t.push('\n');
            for n in notes {
                let _ = writeln!(t, "{n}");
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(t, "\nTargets (issue 19), from this run's figures:\n");
            for v in &self.targets {
                let _ = writeln!(t, "- {v}");
            }
        }
        t
    }
}
