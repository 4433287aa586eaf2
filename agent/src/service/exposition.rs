//! The agent's metrics as Prometheus text: the figures read from the queue at scrape time
//! (durable: they survive restarts and never go back) followed by this process's counters
//! ([`crate::metrics`], which documents the format and the label invariant).

use crate::config::Config;
use crate::metrics::{self, Family};
use crate::pipeline::board::Board;
use crate::pipeline::queue::{Queue, ResourceState};
use crate::service::reload;

/// Renders every metric as Prometheus text.
pub fn render(config: &Config, queue: &Queue, board: &Board, m: &metrics::Metrics) -> String {
    let scrape = Scrape {
        states: queue.states().unwrap_or_default(),
        now: chrono::Utc::now(),
        delivered: config
            .resources
            .iter()
            .filter(|r| r.share.delivers())
            .collect(),
    };
    let mut out = String::new();
    scrape.record_counters(&mut out);
    scrape.freshness(&mut out);
    scrape.queue_gauges(&mut out);
    scrape.held_back(&mut out, board);
    scrape.source_query(&mut out, board);
    scrape.oldest_batches(&mut out, queue);
    metrics::render_process(&mut out, m, reload::last_failure().is_some());
    out
}

/// What one scrape reads from the queue and the configuration.
struct Scrape<'c> {
    states: std::collections::BTreeMap<String, ResourceState>,
    now: chrono::DateTime<chrono::Utc>,
    /// The resources delivered to the hub.
    delivered: Vec<&'c crate::config::Resource>,
}

/// Picks one figure of a resource's durable state.
type Pick = fn(&ResourceState) -> u64;

impl Scrape<'_> {
    /// A resource's durable state (zero for one never pulled).
    fn state(&self, code: &str) -> ResourceState {
        self.states.get(code).cloned().unwrap_or_default()
    }

    /// When the hub last acknowledged a batch of the resource.
    fn last_push(&self, code: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        self.state(code)
            .last_push
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// The durable record counters, per delivered resource.
    fn record_counters(&self, out: &mut String) {
        let counters: [(&str, &str, Pick); 4] = [
            (
                "exchange_records_read_total",
                "Records read from the source and enqueued (upserts and deletes).",
                |s| s.pulled_records,
            ),
            (
                "exchange_records_pushed_total",
                "Records acknowledged by the hub.",
                |s| s.pushed_records,
            ),
            (
                "exchange_records_quarantined_total",
                "Rows sent to quarantine instead of the hub.",
                |s| s.quarantined,
            ),
            (
                "exchange_records_invalid_key_total",
                "Rows whose key is not a valid identifier of its kind (see `status`).",
                |s| s.invalid_keys,
            ),
        ];
        for (name, help, pick) in counters {
            let mut f = Family::head(out, name, "counter", help);
            for r in &self.delivered {
                f.sample(
                    name,
                    &[("resource", r.code.as_str())],
                    pick(&self.state(&r.code)),
                );
            }
        }
    }

    /// The last acknowledged push, the staleness and whether it passed `max_staleness`.
    fn freshness(&self, out: &mut String) {
        let name = "exchange_last_push_timestamp_seconds";
        let mut f = Family::head(
            out,
            name,
            "gauge",
            "When the hub last acknowledged a batch of the resource (Unix time; 0: never).",
        );
        for r in &self.delivered {
            f.sample(
                name,
                &[("resource", r.code.as_str())],
                self.last_push(&r.code).map_or(0, |t| t.timestamp()),
            );
        }
        let name = "exchange_staleness_seconds";
        let mut f = Family::head(
            out,
            name,
            "gauge",
            "Seconds since the last acknowledged push of the resource, or since this process started when there was none.",
        );
        let started = metrics::started();
        for r in &self.delivered {
            let since = self.last_push(&r.code).unwrap_or(started);
            f.sample(
                name,
                &[("resource", r.code.as_str())],
                (self.now - since).num_seconds().max(0),
            );
        }
        let name = "exchange_stale";
        let mut f = Family::head(
            out,
            name,
            "gauge",
            "1 when the last acknowledged push is older than the resource's max_staleness (default 2 working days, the regulations' update deadline).",
        );
        for r in &self.delivered {
            let since = self.last_push(&r.code).unwrap_or(started);
            f.sample(
                name,
                &[("resource", r.code.as_str())],
                u8::from(r.max_staleness.deadline(since) < self.now),
            );
        }
    }

    /// What is queued, per resource with state.
    fn queue_gauges(&self, out: &mut String) {
        let gauges: [(&str, &str, Pick); 3] = [
            (
                "exchange_queue_records",
                "Records queued for the hub.",
                |s| s.queued_records,
            ),
            (
                "exchange_queue_bytes",
                "Bytes stored by queued batches (compressed).",
                |s| s.queued_bytes,
            ),
            (
                "exchange_queue_batches",
                "Batches queued for the hub.",
                |s| s.queued_batches,
            ),
        ];
        for (name, help, pick) in gauges {
            let mut f = Family::head(out, name, "gauge", help);
            for (code, s) in &self.states {
                f.sample(name, &[("resource", code.as_str())], pick(s));
            }
        }
    }

    /// How long a transaction open on the source has held each resource back.
    fn held_back(&self, out: &mut String, board: &Board) {
        let name = "exchange_horizon_held_seconds";
        let mut f = Family::head(
            out,
            name,
            "gauge",
            "How long a transaction open on the source has held the resource back (0: none); rows committed after it wait for it.",
        );
        for r in &self.delivered {
            f.sample(
                name,
                &[("resource", r.code.as_str())],
                held_for(board, &r.code, self.now).map_or(0, |d| d.num_seconds().max(0)),
            );
        }
    }

    /// How long the last incremental pull's statement took, per resource pulled since this
    /// process started.
    fn source_query(&self, out: &mut String, board: &Board) {
        let name = "exchange_source_query_seconds";
        let mut f = Family::head(
            out,
            name,
            "gauge",
            "How long the statement of the resource's last incremental pull took on the source, by phase: first_row (from sending it to its first row, or to its end when none came; long when no index supplies the cursor order, see `exchange-agent check --connect`) and total (to its end, waits for a full queue included).",
        );
        for r in &self.delivered {
            let Some(q) = board.get(&r.code).source_query else {
                continue;
            };
            for (phase, seconds) in [
                ("first_row", q.first_row_seconds),
                ("total", q.total_seconds),
            ] {
                f.sample(
                    name,
                    &[("resource", r.code.as_str()), ("phase", phase)],
                    seconds,
                );
            }
        }
    }

    /// The age of each resource's oldest queued batch.
    fn oldest_batches(&self, out: &mut String, queue: &Queue) {
        let name = "exchange_queue_oldest_age_seconds";
        let mut f = Family::head(
            out,
            name,
            "gauge",
            "Age of the oldest queued batch (0: none queued).",
        );
        for (code, s) in &self.states {
            let age = if s.queued_batches == 0 {
                0
            } else {
                queue
                    .batches(code)
                    .ok()
                    .and_then(|b| b.first().map(|b| b.created.clone()))
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .map_or(0, |t| {
                        (self.now - t.with_timezone(&chrono::Utc))
                            .num_seconds()
                            .max(0)
                    })
            };
            f.sample(name, &[("resource", code.as_str())], age);
        }
    }
}

/// How long the open transaction of [`Board::set_held`] has held `resource` back.
pub fn held_for(
    board: &Board,
    resource: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::Duration> {
    let (since, _) = board.get(resource).held?;
    let since = chrono::DateTime::parse_from_rfc3339(&since).ok()?;
    Some(now - since.with_timezone(&chrono::Utc))
}

/// The resources whose last acknowledged push (or, never pushed, this process's start) is
/// older than their `max_staleness`: code and the last push (RFC 3339) if any.
pub fn stale(config: &Config, queue: &Queue) -> Vec<(String, Option<String>)> {
    let states = queue.states().unwrap_or_default();
    let now = chrono::Utc::now();
    let started = metrics::started();
    config
        .resources
        .iter()
        .filter(|r| r.share.delivers())
        .filter_map(|r| {
            let last = states.get(&r.code).and_then(|s| s.last_push.clone());
            let since = last
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(started, |t| t.with_timezone(&chrono::Utc));
            (r.max_staleness.deadline(since) < now).then(|| (r.code.clone(), last))
        })
        .collect()
}
