//! An acknowledgement that contradicts itself is not an acknowledgement (docs/PROTOCOL.md §5):
//! a hub that answers `applied` with a stream mark other than the batch's seq, or `duplicate`
//! with a mark below the batch's seq, claims a commit its own mark does not cover. The agent
//! keeps the batch queued, says what was wrong, sends the same batch again on the next try,
//! and delivers it once a correct hub answers on the same address.
//!
//! The misbehaving hub is the reference hub's own accept loop (mutual TLS with the test's
//! certificates, the node taken from the client certificate) serving a handler that answers
//! `POST /v1/batches` wrongly on purpose.

use std::sync::{Arc, Mutex};

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use exchange_hub::server::Peer;
use exchange_protocol::batch::{BATCHES_PATH, header};
use exchange_tests::agent::{Agent, Output};
use exchange_tests::hub::Impostor;
use exchange_tests::rows::assert_same;
use exchange_tests::scene::{NODE, Scene};
use exchange_tests::sqlite_source::SqliteSource;
use serde_json::{Value, json};

const CODE: &str = "330100-RSJ-0090";

/// How the misbehaving hub answers a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `applied`, with the mark the stream had before the batch (`seq - 1`).
    AppliedWithAnotherMark,
    /// `duplicate`, with a mark below the batch's seq (`seq - 1`).
    DuplicateBelowTheMark,
}

/// One batch request the misbehaving hub received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    /// The node of the client certificate.
    node: Option<String>,
    /// `exchange-resource`.
    resource: String,
    /// `exchange-batch-seq`.
    seq: u64,
    /// `exchange-content-sm3`.
    digest: String,
}

/// What the handler shares with the test.
#[derive(Debug)]
struct Behaviour {
    /// How the next batch is answered.
    answer: Mutex<Answer>,
    /// Every batch request, in order.
    received: Mutex<Vec<Received>>,
}

/// A hub that acknowledges wrongly, on the scene hub's address (the agent's `hub.url`).
struct BadHub {
    behaviour: Arc<Behaviour>,
    impostor: Impostor,
}

impl BadHub {
    async fn start(scene: &Scene, answer: Answer) -> BadHub {
        let behaviour = Arc::new(Behaviour {
            answer: Mutex::new(answer),
            received: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route(BATCHES_PATH, post(acknowledge_wrongly))
            .with_state(behaviour.clone());
        let impostor = scene.hub.serve_instead(app).await;
        BadHub {
            behaviour,
            impostor,
        }
    }

    fn answer(&self, answer: Answer) {
        *self.behaviour.answer.lock().unwrap() = answer;
    }

    fn received(&self) -> Vec<Received> {
        self.behaviour.received.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.impostor.stop().await;
    }
}

/// `POST /v1/batches`: reads the whole batch, then acknowledges it with a mark that
/// contradicts the status (and echoes the batch's digest, so only the mark is wrong).
async fn acknowledge_wrongly(
    State(behaviour): State<Arc<Behaviour>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Json<Value> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let seq: u64 = text(header::SEQ).parse().unwrap_or(0);
    let digest = text(header::DIGEST);
    let records: u64 = text(header::RECORDS).parse().unwrap_or(0);
    behaviour.received.lock().unwrap().push(Received {
        node: peer.node,
        resource: text(header::RESOURCE),
        seq,
        digest: digest.clone(),
    });
    let below = seq.saturating_sub(1);
    Json(match *behaviour.answer.lock().unwrap() {
        Answer::AppliedWithAnotherMark => json!({
            "status": "applied", "seq": seq, "records": records,
            "last_seq": below, "last_digest": digest,
        }),
        Answer::DuplicateBelowTheMark => json!({
            "status": "duplicate", "seq": seq, "records": 0,
            "last_seq": below, "last_digest": digest,
        }),
    })
}

/// Fails the test unless the agent kept every batch it pulled (the first with `digest`)
/// queued and reports `error`; returns how many are queued.
async fn assert_still_queued(agent: &Agent, digest: &str, error: &str) -> u64 {
    let status = agent.resource_status(CODE).await;
    let queued = status["queued_batches"].as_u64().unwrap_or(0);
    assert!(queued >= 1, "{status}");
    assert_eq!(status["queued_records"], 3, "{status}");
    assert_eq!(status["pushed_records"], 0, "{status}");
    assert!(
        status["stopped"].is_null(),
        "a bad Ack does not stop: {status}"
    );
    let push_error = status["push_error"].as_str().unwrap_or_default();
    assert!(
        push_error.contains(error) && push_error.contains("the batch stays queued"),
        "status names the bad acknowledgement: {status}"
    );
    let list = agent.cmd(&["queue", "list", CODE]).await;
    list.assert_code(0);
    list.assert_mentions(&[&format!("{queued} batches, 3 records"), error]);
    let head = list
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("seq "))
        .unwrap_or_else(|| panic!("queue list shows no batch; {list}"));
    assert!(
        head.split_whitespace().nth(1) == Some("1") && head.ends_with(digest),
        "batch 1 is still the oldest: {list}"
    );
    queued
}

/// A `sync` that must fail on the acknowledgement, naming it.
#[track_caller]
fn assert_refused(out: &Output, error: &str) {
    assert_ne!(out.code, Some(0), "a bad Ack is not a delivery; {out}");
    out.assert_mentions(&["cannot be right", error, "the batch stays queued"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contradictory_ack_leaves_the_batch_queued_until_a_correct_hub_acknowledges_it() {
    let scene = Scene::with_hub_down().await;
    let source = SqliteSource::create(scene.dir.path(), 3);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("hr", "sqlite", &source.url())
            .resource(source.resource(CODE, "hr")),
    );
    let bad = BadHub::start(&scene, Answer::AppliedWithAnotherMark).await;

    // `applied`, but the stream's mark is not the batch's seq.
    let applied = "applied, but the stream's mark is 0 instead of the batch's seq";
    let out = agent.sync("60s").await;
    assert_refused(&out, applied);
    let received = bad.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let first = received[0].clone();
    assert_eq!(
        (first.node.as_deref(), first.resource.as_str(), first.seq),
        (Some(NODE), CODE, 1)
    );
    let queued = assert_still_queued(&agent, &first.digest, applied).await;

    // `duplicate`, but the stream's mark is below the batch's seq: the same batch was sent
    // again, and it is still queued.
    bad.answer(Answer::DuplicateBelowTheMark);
    let duplicate = "a duplicate, but the stream's mark 0 is below the batch's seq";
    let out = agent.sync("60s").await;
    assert_refused(&out, duplicate);
    let received = bad.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[1], first, "the same batch, byte for byte");
    assert_eq!(
        assert_still_queued(&agent, &first.digest, duplicate).await,
        queued
    );

    // A correct hub on the same address: the batch is delivered and leaves the queue.
    bad.stop().await;
    let mut scene = scene;
    scene.hub.start_again().await;
    agent.sync_ok().await;
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["queued_batches"], 0, "{status}");
    assert_eq!(status["pushed_records"], 3, "{status}");
    assert!(status["push_error"].is_null(), "{status}");
}
