//! The admin listener (`[admin] listen`, loopback only): what a local monitoring probe reads,
//! without a certificate.
//!
//! - `GET /metrics`: Prometheus text ([`crate::service::exposition`]);
//! - `GET /health`: `200 {"status":"ok",…}` while every delivered resource can go on, `503`
//!   with `"status":"degraded"` and the resources stopped until an operator acts.
//!
//! Nothing here holds a field value: resource codes, counts and reasons only. Like every
//! listener of the agent it takes a bound listener and a shutdown future from its caller.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::pipeline::Pipeline;

/// Serves `/metrics` and `/health` for the pipeline `current` holds (a reload replaces it)
/// until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    current: watch::Receiver<Arc<Pipeline>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(current);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "The admin listener stopped.");
    }
}

async fn metrics(State(current): State<watch::Receiver<Arc<Pipeline>>>) -> impl IntoResponse {
    let pipeline = current.borrow().clone();
    let text = tokio::task::spawn_blocking(move || {
        crate::service::exposition::render(
            &pipeline.config,
            &pipeline.queue,
            &pipeline.board,
            crate::metrics::global(),
        )
    })
    .await
    .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn health(State(current): State<watch::Receiver<Arc<Pipeline>>>) -> impl IntoResponse {
    let pipeline = current.borrow().clone();
    let states = pipeline.queue.states();
    let (code, body) = match states {
        Ok(states) => {
            let halted: Vec<serde_json::Value> = pipeline
                .pullers
                .iter()
                .filter_map(|p| {
                    let st = states.get(&p.resource.code)?;
                    let h = st.halt.as_ref()?;
                    Some(serde_json::json!({"resource": p.resource.code, "reason": h.reason}))
                })
                .collect();
            let queued: u64 = states.values().map(|s| s.queued_records).sum();
            let ok = halted.is_empty();
            (
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                serde_json::json!({
                    "status": if ok { "ok" } else { "degraded" },
                    "node": pipeline.config.node.id,
                    "resources": pipeline.pullers.len(),
                    "queued_records": queued,
                    "halted": halted,
                }),
            )
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "error", "error": e.to_string()}),
        ),
    };
    (code, axum::Json(body))
}
