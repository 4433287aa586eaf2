//! Prometheus metrics: the counters of this process and the text format they are written in.
//! The admin listener ([`crate::service::admin`]) serves them with the figures read from the
//! queue ([`crate::service::exposition`]).
//!
//! # Format
//! Prometheus text exposition format 0.0.4: for each metric a `# HELP` and a `# TYPE` line,
//! then one sample per label set. Names follow `exchange_<noun>_<unit>[_total]`.
//!
//! # Where the figures come from
//! - Per resource record counters and queue gauges are read from the queue at scrape time
//!   (`queue::ResourceState`): they are durable, so they survive restarts and reloads and
//!   never go back.
//! - Per resource figures of the last pull (how long a transaction held it back, how long its
//!   statement took on the source: `exchange_source_query_seconds`) are read from the status
//!   board (`pipeline::board`), one value per resource: they start empty with the process.
//! - Push latency and errors by kind, reloads, verification requests and refused TLS
//!   handshakes are counted in this process (a global
//!   [`Metrics`], since pushes are counted inside `push::push_batches` whichever command runs
//!   it); they start at zero with the process, as Prometheus counters may.
//!
//! # Invariant
//! Labels are resource codes, error kinds, outcomes, the phases of a source statement
//! (`first_row`, `total`) and handshake failure reasons (a closed set,
//! `tls::HandshakeFailure`): never a field value, never a peer address.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
pub struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    /// Writes the family's `# HELP` and `# TYPE` lines.
    pub fn head<'o>(out: &'o mut String, name: &str, kind: &str, help: &str) -> Family<'o> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    /// Writes one sample, its label values escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
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

/// Renders the figures counted in this process ([`Metrics`]); `reload_failed`: whether the
/// last reload was refused.
pub fn render_process(out: &mut String, m: &Metrics, reload_failed: bool) {
    push_latency(out, m);
    push_errors(out, m);
    reloads(out, m, reload_failed);
    verification(out, m);
    handshakes(out, m);
    listeners(out, m);
}

/// `exchange_push_latency_seconds`, a histogram.
fn push_latency(out: &mut String, m: &Metrics) {
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
}

/// `exchange_push_errors_total`, by kind.
fn push_errors(out: &mut String, m: &Metrics) {
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
}

/// The reload counters and `exchange_config_reload_failed`.
fn reloads(out: &mut String, m: &Metrics, reload_failed: bool) {
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
        u64::from(reload_failed),
    );
}

/// `exchange_verify_requests_total`, by endpoint and outcome.
fn verification(out: &mut String, m: &Metrics) {
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
}

/// `exchange_tls_handshake_failures_total`, by listener and reason.
fn handshakes(out: &mut String, m: &Metrics) {
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
}

/// `exchange_listener_closed_total`, by listener and reason.
fn listeners(out: &mut String, m: &Metrics) {
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

/// When this process started (marked by [`mark_start`], else at the first call): the staleness
/// of a never-pushed resource counts from there.
static STARTED: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();

/// Marks the start of the process.
pub fn mark_start() {
    STARTED.get_or_init(chrono::Utc::now);
}

/// When this process started ([`mark_start`]).
pub fn started() -> chrono::DateTime<chrono::Utc> {
    *STARTED.get_or_init(chrono::Utc::now)
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
        render_process(&mut text, &m, false);
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
