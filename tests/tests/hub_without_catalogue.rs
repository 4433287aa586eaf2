//! A hub written against an earlier text of version 1: it does not serve
//! `PUT /v1/catalogue` (`404`), and its Acks carry only the required members (no `records`)
//! plus one the agent does not know. The agent delivers every record to it (docs/PROTOCOL.md
//! §7: informative members may be missing, unknown ones are ignored), and `sync` — which
//! still exits 0, its promise being about records — warns, in the operator's language and in
//! the log, that the catalogue entries did not arrive: such a hub cannot refuse batches of a
//! resource should it be `share = "none"` (§10).
//!
//! The old hub is the reference hub's own accept loop (mutual TLS with the test's
//! certificates) serving a handler of the test's.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use exchange_protocol::batch::{BATCHES_PATH, header};
use exchange_tests::agent::run_with;
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;
use serde_json::{Value, json};

const CODE: &str = "330100-RSJ-0091";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_delivers_to_a_hub_without_catalogue_and_lean_acks_and_warns_in_both_languages() {
    let scene = Scene::with_hub_down().await;
    let source = SqliteSource::create(scene.dir.path(), 3);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("hr", "sqlite", &source.url())
            .resource(source.resource(CODE, "hr")),
    );
    // Records the hub was told it received, summed over the batches it acknowledged.
    let received = Arc::new(Mutex::new(0u64));
    let counted = received.clone();
    let app = Router::new()
        .route(
            BATCHES_PATH,
            post(move |headers: HeaderMap, _body: axum::body::Bytes| {
                let counted = counted.clone();
                async move { acknowledge_leanly(&headers, &counted) }
            }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "no such endpoint"})),
            )
        });
    let hub = scene.hub.serve_instead(app).await;

    let out = agent.sync("60s").await;
    out.assert_code(0).assert_mentions(&[
        "the hub acknowledged everything",
        &format!("warning: catalogue entry not reported: {CODE}"),
        &format!("answered 404 to the catalogue entry of `{CODE}`"),
        "does not serve `PUT /v1/catalogue`",
        "share = \"none\"",
        // The log line, at WARN.
        "WARN",
        "Catalogue entry not reported",
    ]);
    assert_eq!(*received.lock().unwrap(), 3, "every record reached the hub");
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["queued_batches"], 0, "{status}");
    assert_eq!(status["pushed_records"], 3, "{status}");

    // The same warning for an operator who reads Chinese.
    let config = scene.dir.path().join("agent.toml");
    let out = run_with(
        &exchange_tests::bins::agent(),
        &["sync", "--config", &config.display().to_string()],
        &[("EXCHANGE_LANG", "zh")],
    )
    .await;
    out.assert_code(0).assert_mentions(&[
        &format!("警告：目录条目未上报：{CODE}"),
        "不提供 `PUT /v1/catalogue`",
    ]);

    hub.stop().await;
}

/// An Ack with the required members only (§7), and one no version of the text defines.
fn acknowledge_leanly(headers: &HeaderMap, received: &Mutex<u64>) -> Json<Value> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let seq: u64 = text(header::SEQ).parse().unwrap_or(0);
    *received.lock().unwrap() += text(header::RECORDS).parse::<u64>().unwrap_or(0);
    Json(json!({
        "status": "applied",
        "seq": seq,
        "last_seq": seq,
        "last_digest": text(header::DIGEST),
        "hub_version": "0.9",
    }))
}
