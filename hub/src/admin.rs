//! The hub's admin listener (`[admin] listen`, loopback only): what a local monitoring probe
//! reads, without a certificate.
//!
//! - `GET /metrics`: Prometheus text: open connections, requests and body bytes in flight,
//!   requests refused (`503`) or timed out (`408`), connections the accept loop refused or
//!   closed past the handshake, refused TLS handshakes by reason, and reloads;
//! - `GET /health`: `200 {"status":"ok"}` while the hub serves.
//!
//! Nothing here names a node, a resource or a record: counts only. Like every listener it
//! takes a bound listener and a shutdown future from its caller.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::server::Load;

/// Serves `/metrics` and `/health` for `load` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    load: Arc<Load>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .with_state(load);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "The admin listener stopped.");
    }
}

async fn metrics(State(load): State<Arc<Load>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&load),
    )
}

/// The Prometheus text of `load`.
pub fn render(load: &Load) -> String {
    let mut text = Exposition::default();
    hub_families(&mut text, load);
    listener_families(&mut text, load);
    text.out
}

/// The hub's own metrics (`exchange_hub_*`): connections, requests, bodies, reloads.
fn hub_families(text: &mut Exposition, load: &Load) {
    text.gauge(
        "exchange_hub_connections",
        "Client connections open (after accept, until closed).",
        load.connections.now() as u64,
    );
    text.gauge(
        "exchange_hub_requests_in_flight",
        "Batch requests holding a request slot.",
        load.requests.now() as u64,
    );
    text.gauge(
        "exchange_hub_body_bytes",
        "Bytes of request bodies held in memory (compressed, as received).",
        load.body_bytes.now() as u64,
    );
    text.counter(
        "exchange_hub_busy_total",
        "Batch requests answered 503 because every slot (max_concurrent_requests) was taken.",
        &load.busy,
    );
    text.counter(
        "exchange_hub_body_timeouts_total",
        "Requests answered 408 because the body did not arrive within body_timeout.",
        &load.timed_out,
    );
    text.counter(
        "exchange_hub_config_reloads_total",
        "Reloads (SIGHUP) that took effect.",
        &load.reloads,
    );
    text.counter(
        "exchange_hub_config_reload_failures_total",
        "Reloads refused; nothing changed.",
        &load.reload_failures,
    );
    text.gauge(
        "exchange_hub_config_reload_failed",
        "1 while the last reload was refused (the TLS material in use is not the file's), else 0.",
        u64::from(load.reload_failed.load(Ordering::Relaxed)),
    );
}

/// The listener's metrics by reason: what it closed or refused, the handshakes it refused.
fn listener_families(text: &mut Exposition, load: &Load) {
    let c = &load.listener;
    text.family(
        "exchange_listener_closed_total",
        "counter",
        "Connections and requests the listener refused or closed past the TLS handshake, by reason: connection_limit (max_connections stayed full), request_limit (answered 503: max_requests in flight), idle (no request for idle_timeout).",
        &[
            (
                "listener=\"hub\",reason=\"connection_limit\"",
                c.connections_refused.load(Ordering::Relaxed),
            ),
            (
                "listener=\"hub\",reason=\"request_limit\"",
                c.requests_refused.load(Ordering::Relaxed),
            ),
            (
                "listener=\"hub\",reason=\"idle\"",
                c.idle_closed.load(Ordering::Relaxed),
            ),
        ],
    );
    let failures = load.handshake_failures();
    let labels: Vec<(String, u64)> = exchange_protocol::tls::HandshakeFailure::ALL
        .iter()
        .map(|r| {
            (
                format!("listener=\"hub\",reason=\"{}\"", r.label()),
                failures.get(r).copied().unwrap_or(0),
            )
        })
        .collect();
    let samples: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    text.family(
        "exchange_tls_handshake_failures_total",
        "counter",
        "TLS handshakes the listener refused, by reason (unknown_issuer, expired, revoked, no_certificate, timeout, …).",
        &samples,
    );
}

/// Prometheus text being written, one metric family after another.
#[derive(Default)]
struct Exposition {
    /// The text so far.
    out: String,
}

impl Exposition {
    /// A gauge with one unlabelled sample.
    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help, &[("", value)]);
    }

    /// A counter with one unlabelled sample, read from `value`.
    fn counter(&mut self, name: &str, help: &str, value: &AtomicU64) {
        self.family(
            name,
            "counter",
            help,
            &[("", value.load(Ordering::Relaxed))],
        );
    }

    /// One metric family: its help and type lines, then its samples (`labels` empty for
    /// none).
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
        let out = &mut self.out;
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    }
}
