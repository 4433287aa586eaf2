//! Prometheus metrics, served by the admin listener ([`crate::admin`]).
//!
//! # Format
//! Prometheus text exposition format 0.0.4: for each metric a `# HELP` and a `# TYPE` line,
//! then one sample per label set. Names follow `exchange_<noun>_<unit>[_total]`.
//!
//! # Where the figures come from
//! - Per resource record counters and queue gauges are read from the queue at scrape time
//!   (`queue::ResourceState`): they are durable, so they survive restarts and reloads and
//!   never go back.
//! - Push latency and errors by kind, reloads, verification requests and refused TLS
//!   handshakes are counted in this process (a global
//!   [`Metrics`], since pushes are counted inside `push::push_batches` whichever command runs
//!   it); they start at zero with the process, as Prometheus counters may.
//!
//! # Invariant
//! Labels are resource codes, error kinds, outcomes and handshake failure reasons (a closed
//! set, `tls::HandshakeFailure`): never a field value, never a peer address.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::Config;
use crate::queue::Queue;
use crate::status::Board;

/// Upper bounds (seconds) of the push latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters kept in memory by this process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per bucket (and +Inf last): pushes answered within it.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of push latencies, microseconds.
    latency_sum_us: AtomicU64,
    /// Pushes that got an answer (acknowledged or refused).
    latency_count: AtomicU64,
    /// Failed pushes by kind.
    push_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Configurations reloaded.
    reloads: AtomicU64,
    /// Reloads refused (the old configuration kept running).
    reload_failures: AtomicU64,
    /// Verification requests by (endpoint, outcome): `verify` or `verify_psi`; `answered`,
    /// `refused`, `denied` or `throttled`.
    verify_requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Refused TLS handshakes by (listener, reason): `verify`; a `tls::HandshakeFailure`
    /// label.
    handshake_failures: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// The accept loop's counters of each listener (`verify`): connections and requests
    /// refused or closed past the handshake.
    listeners: Mutex<
        Vec<(
            &'static str,
            std::sync::Arc<exchange_protocol::server::Counters>,
        )>,
    >,
}

/// Adds one to `key`'s counter in `map`.
fn count<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += 1;
}

static GLOBAL: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();

/// This process's metrics.
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::default)
}

impl Metrics {
    /// Records one push request: how long it took and, if it failed, the kind of failure.
    pub fn push_answered(&self, took: Duration, error: Option<&'static str>) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        if let Some(kind) = error {
            count(&self.push_errors, kind);
        }
    }

    /// A configuration was reloaded.
    pub fn reloaded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// A reload was refused.
    pub fn reload_failed(&self) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A verification request was answered or refused (after its audit record was written).
    pub fn verify_answered(&self, endpoint: &'static str, outcome: &'static str) {
        count(&self.verify_requests, (endpoint, outcome));
    }

    /// A listener refused a connection in its TLS handshake; `reason` is a
    /// `tls::HandshakeFailure` label.
    pub fn handshake_failed(&self, listener: &'static str, reason: &'static str) {
        count(&self.handshake_failures, (listener, reason));
    }

    /// Reports `listener`'s accept-loop counters from now on (replacing earlier ones).
    pub fn listener(
        &self,
        listener: &'static str,
        counters: std::sync::Arc<exchange_protocol::server::Counters>,
    ) {
        let mut all = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(l, _)| *l != listener);
        all.push((listener, counters));
    }

    /// Refused TLS handshakes of `listener` for `reason` so far.
    pub fn handshake_failures(&self, listener: &str, reason: &str) -> u64 {
        self.handshake_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|((l, r), _)| *l == listener && *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Reloads and refused reloads so far.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.reload_failures.load(Ordering::Relaxed),
        )
    }
}

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head<'o>(out: &'o mut String, name: &str, kind: &str, help: &str) -> Family<'o> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Renders every metric as Prometheus text.
pub fn render(config: &Config, queue: &Queue, board: &Board, m: &Metrics) -> String {
    let states = queue.states().unwrap_or_default();
    let now = chrono::Utc::now();
    let delivered: Vec<_> = config
        .resources
        .iter()
        .filter(|r| r.share.delivers())
        .collect();
    let st = |code: &str| states.get(code).cloned().unwrap_or_default();
    let mut out = String::new();
    type Pick = fn(&crate::queue::ResourceState) -> u64;
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
        let mut f = Family::head(&mut out, name, "counter", help);
        for r in &delivered {
            f.sample(name, &[("resource", r.code.as_str())], pick(&st(&r.code)));
        }
    }
    let last = |code: &str| {
        st(code)
            .last_push
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let name = "exchange_last_push_timestamp_seconds";
    let mut f = Family::head(
        &mut out,
        name,
        "gauge",
        "When the hub last acknowledged a batch of the resource (Unix time; 0: never).",
    );
    for r in &delivered {
        f.sample(
            name,
            &[("resource", r.code.as_str())],
            last(&r.code).map_or(0, |t| t.timestamp()),
        );
    }
    let name = "exchange_staleness_seconds";
    let mut f = Family::head(
        &mut out,
        name,
        "gauge",
        "Seconds since the last acknowledged push of the resource, or since this process started when there was none.",
    );
    let started = *STARTED.get_or_init(chrono::Utc::now);
    for r in &delivered {
        let since = last(&r.code).unwrap_or(started);
        f.sample(
            name,
            &[("resource", r.code.as_str())],
            (now - since).num_seconds().max(0),
        );
    }
    let name = "exchange_stale";
    let mut f = Family::head(
        &mut out,
        name,
        "gauge",
        "1 when the last acknowledged push is older than the resource's max_staleness (default 2 working days, the regulations' update deadline).",
    );
    for r in &delivered {
        let since = last(&r.code).unwrap_or(started);
        f.sample(
            name,
            &[("resource", r.code.as_str())],
            u8::from(r.max_staleness.deadline(since) < now),
        );
    }
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
        let mut f = Family::head(&mut out, name, "gauge", help);
        for (code, s) in &states {
            f.sample(name, &[("resource", code.as_str())], pick(s));
        }
    }
    let name = "exchange_horizon_held_seconds";
    let mut f = Family::head(
        &mut out,
        name,
        "gauge",
        "How long a transaction open on the source has held the resource back (0: none); rows committed after it wait for it.",
    );
    for r in &delivered {
        f.sample(
            name,
            &[("resource", r.code.as_str())],
            held_for(board, &r.code, now).map_or(0, |d| d.num_seconds().max(0)),
        );
    }
    let name = "exchange_queue_oldest_age_seconds";
    let mut f = Family::head(
        &mut out,
        name,
        "gauge",
        "Age of the oldest queued batch (0: none queued).",
    );
    for (code, s) in &states {
        let age = if s.queued_batches == 0 {
            0
        } else {
            queue
                .batches(code)
                .ok()
                .and_then(|b| b.first().map(|b| b.created.clone()))
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .map_or(0, |t| {
                    (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0)
                })
        };
        f.sample(name, &[("resource", code.as_str())], age);
    }
    render_process(&mut out, m);
    out
}

/// Renders the figures counted in this process ([`Metrics`]).
fn render_process(out: &mut String, m: &Metrics) {
    let name = "exchange_push_latency_seconds";
    let mut f = Family::head(
        out,
        name,
        "histogram",
        "Time from sending a batch to the hub's answer.",
    );
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += m.latency_buckets[i].load(Ordering::Relaxed);
        f.sample(
            "exchange_push_latency_seconds_bucket",
            &[("le", bound.to_string().as_str())],
            cumulative,
        );
    }
    cumulative += m.latency_buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
    f.sample(
        "exchange_push_latency_seconds_bucket",
        &[("le", "+Inf")],
        cumulative,
    );
    f.sample(
        "exchange_push_latency_seconds_sum",
        &[],
        m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
    );
    f.sample("exchange_push_latency_seconds_count", &[], cumulative);
    let name = "exchange_push_errors_total";
    let mut f = Family::head(
        out,
        name,
        "counter",
        "Failed pushes by kind (unreachable, handshake, throttled, refused, …).",
    );
    for (kind, n) in m
        .push_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        f.sample(name, &[("kind", kind)], n);
    }
    let (reloads, failures) = m.reload_counts();
    Family::head(
        out,
        "exchange_config_reloads_total",
        "counter",
        "Configurations reloaded (SIGHUP or a changed file).",
    )
    .sample("exchange_config_reloads_total", &[], reloads);
    Family::head(
        out,
        "exchange_config_reload_failures_total",
        "counter",
        "Reloads refused; the previous configuration kept running.",
    )
    .sample("exchange_config_reload_failures_total", &[], failures);
    Family::head(
        out,
        "exchange_config_reload_failed",
        "gauge",
        "1 while the last reload was refused (the configuration running is not the file's; see `exchange-agent status`), else 0.",
    )
    .sample(
        "exchange_config_reload_failed",
        &[],
        u64::from(crate::reload::last_failure().is_some()),
    );
    let verify = m
        .verify_requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut f = Family::head(
        out,
        "exchange_verify_requests_total",
        "counter",
        "Verification requests by endpoint (verify, verify_psi) and outcome (answered, refused, denied, throttled).",
    );
    for ((endpoint, outcome), n) in verify {
        f.sample(
            "exchange_verify_requests_total",
            &[("endpoint", endpoint), ("outcome", outcome)],
            n,
        );
    }
    let failures = m
        .handshake_failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let name = "exchange_tls_handshake_failures_total";
    let mut f = Family::head(
        out,
        name,
        "counter",
        "Connections refused in the TLS handshake, by listener (verify) and reason (unknown_issuer, expired, not_valid_for_name, no_certificate, revoked, bad_certificate, protocol, timeout, io).",
    );
    for ((listener, reason), n) in failures {
        f.sample(name, &[("listener", listener), ("reason", reason)], n);
    }
    let listeners = m
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let name = "exchange_listener_closed_total";
    let mut f = Family::head(
        out,
        name,
        "counter",
        "Connections and requests a listener (verify) refused or closed past the TLS handshake, by reason: connection_limit (max_connections stayed full), request_limit (answered 503: max_requests in flight), idle (no request for idle_timeout).",
    );
    for (listener, c) in listeners {
        for (reason, n) in [
            ("connection_limit", &c.connections_refused),
            ("request_limit", &c.requests_refused),
            ("idle", &c.idle_closed),
        ] {
            f.sample(
                name,
                &[("listener", listener), ("reason", reason)],
                n.load(Ordering::Relaxed),
            );
        }
    }
}

/// When this process first rendered metrics (the staleness of a never-pushed resource counts
/// from there).
static STARTED: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();

/// Marks the start of the process for [`render`]'s staleness.
pub fn mark_start() {
    STARTED.get_or_init(chrono::Utc::now);
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
    let started = *STARTED.get_or_init(chrono::Utc::now);
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn two_working_days_skip_the_weekend() {
        use crate::config::Staleness;
        // Thursday 10:00 → Monday 10:00; Friday → Tuesday; Saturday → Tuesday.
        for (day, expected) in [(8, 12), (9, 13), (10, 13), (12, 14)] {
            let since = chrono::Utc
                .with_ymd_and_hms(2026, 1, day, 10, 0, 0)
                .unwrap();
            assert_eq!(
                Staleness::WorkingDays(2).deadline(since),
                chrono::Utc
                    .with_ymd_and_hms(2026, 1, expected, 10, 0, 0)
                    .unwrap(),
                "from 2026-01-{day}"
            );
        }
        let since = chrono::Utc.with_ymd_and_hms(2026, 1, 10, 10, 0, 0).unwrap();
        assert_eq!(
            Staleness::Within(Duration::from_secs(3600)).deadline(since),
            chrono::Utc.with_ymd_and_hms(2026, 1, 10, 11, 0, 0).unwrap()
        );
    }

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let m = Metrics::default();
        m.push_answered(Duration::from_millis(30), None);
        m.push_answered(Duration::from_secs(60), Some("unreachable"));
        assert_eq!(m.latency_buckets[3].load(Ordering::Relaxed), 1);
        assert_eq!(
            m.latency_buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed),
            1
        );
        assert_eq!(m.push_errors.lock().unwrap()["unreachable"], 1);
    }

    #[test]
    fn verification_outcomes_are_counted_by_endpoint_and_outcome() {
        let m = Metrics::default();
        m.verify_answered("verify", "answered");
        m.verify_answered("verify", "answered");
        m.verify_answered("verify", "denied");
        m.verify_answered("verify_psi", "throttled");
        let counts = m.verify_requests.lock().unwrap().clone();
        assert_eq!(counts[&("verify", "answered")], 2);
        assert_eq!(counts[&("verify", "denied")], 1);
        assert_eq!(counts[&("verify_psi", "throttled")], 1);
        assert_eq!(counts.len(), 3);
    }

    #[test]
    fn refused_handshakes_are_counted_by_listener_and_reason() {
        let m = Metrics::default();
        m.handshake_failed("verify", "unknown_issuer");
        m.handshake_failed("verify", "unknown_issuer");
        m.handshake_failed("verify", "expired");
        assert_eq!(m.handshake_failures("verify", "unknown_issuer"), 2);
        assert_eq!(m.handshake_failures("verify", "expired"), 1);
        assert_eq!(m.handshake_failures("verify", "timeout"), 0);
        let mut text = String::new();
        render_process(&mut text, &m);
        assert!(
            text.contains("# TYPE exchange_tls_handshake_failures_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "exchange_tls_handshake_failures_total{listener=\"verify\",reason=\"unknown_issuer\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "exchange_tls_handshake_failures_total{listener=\"verify\",reason=\"expired\"} 1\n"
            ),
            "{text}"
        );
    }
}
