//! A record the hub refuses never blocks the records behind it (docs/PROTOCOL.md §6–§7): the
//! hub answers `400` naming the record's line (`record`), and the agent takes that record out
//! of its queued batch, quarantines it with the hub's reason (the key as it left, never a
//! value), audits it (`batch.record_refused`) and sends the rest at once under the same seq.
//!
//! The refusal is a real one: the reference hub (real TLS, SQLite store) refuses a key longer
//! than its `[limits] max_key_bytes` (default 2048 bytes), which the agent's own checks let
//! through (a plain key of any length is a key). A hub that refuses without naming a record
//! (an older hub, here the reference hub's accept loop serving a handler that answers so) or
//! names a line the batch does not hold keeps the old behaviour: the whole batch stays queued.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use exchange_protocol::batch::BATCHES_PATH;
use exchange_tests::agent::{Agent, Resource};
use exchange_tests::hub::Impostor;
use exchange_tests::rows::{self, Rows, assert_same};
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;
use serde_json::{Value, json};

const CODE: &str = "330100-RSJ-0091";

/// People in the source; the 7th has a key of 1,000 CJK characters (3,005 bytes of UTF-8:
/// pasted text in the key column), which the hub's default `max_key_bytes` refuses.
const PEOPLE: i64 = 25;
const LONG: i64 = 7;

fn code_of(n: i64) -> String {
    if n == LONG {
        format!("P{n:04}{}", "长".repeat(1000))
    } else {
        format!("P{n:04}")
    }
}

/// Creates `<dir>/people.db` with table `people (code, name, updated_at)`; returns its URL.
fn people(dir: &std::path::Path) -> String {
    let path = dir.join("people.db");
    let conn = rusqlite::Connection::open(&path).expect("create the SQLite source");
    conn.execute_batch(
        "CREATE TABLE people (code TEXT PRIMARY KEY, name TEXT NOT NULL, updated_at TEXT NOT NULL);",
    )
    .expect("create the people table");
    for n in 1..=PEOPLE {
        conn.execute(
            "INSERT INTO people VALUES (?1, ?2, datetime('2024-01-01 00:00:00', '+' || ?3 || ' seconds'))",
            rusqlite::params![code_of(n), format!("姓名{n}"), n],
        )
        .expect("insert a person");
    }
    format!("sqlite://{}", path.display())
}

/// What the hub should hold: every person but the one with the long key.
fn expected() -> Rows {
    (1..=PEOPLE)
        .filter(|n| *n != LONG)
        .map(|n| {
            let at = chrono::NaiveDate::from_ymd_opt(2024, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                + chrono::Duration::seconds(n);
            (
                code_of(n),
                rows::fields([
                    ("code", json!(code_of(n))),
                    ("name", json!(format!("姓名{n}"))),
                    (
                        "updated_at",
                        json!(at.format("%Y-%m-%d %H:%M:%S").to_string()),
                    ),
                ]),
            )
        })
        .collect()
}

/// The audit log's entries with `action` (none when there is no log yet), and its text.
fn audit_entries(data_dir: &std::path::Path, action: &str) -> (Vec<Value>, String) {
    let text = std::fs::read_to_string(data_dir.join("audit.jsonl")).unwrap_or_default();
    let entries = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("an audit line is JSON"))
        .filter(|e| e["action"] == action)
        .collect();
    (entries, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_hub_refuses_is_quarantined_and_every_other_record_arrives_at_once() {
    let scene = Scene::start().await;
    let url = people(scene.dir.path());
    let config = scene
        .agent_config()
        .source("biz", "sqlite", &url)
        .resource(
            Resource::incremental(CODE, "biz", "people", "code").fields(&[
                ("code", "plain"),
                ("name", "plain"),
                ("updated_at", "plain"),
            ]),
        )
        .max_records(10);
    let agent = scene.write_agent(&config);

    // The refusal costs one round trip, not the long refusal backoff (30 s at least).
    exchange_tests::bins::agent(); // built before the clock starts
    let started = Instant::now();
    agent.sync_ok().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(25), "sync took {took:?}");
    assert_same(&scene.hub.rows(CODE).await, &expected());

    // Quarantined with the hub's reason, under the key as it left.
    let reason = "refused by the hub: the key is 3005 bytes long; this hub accepts keys of at most 2048 bytes";
    let list = agent.cmd(&["quarantine", "list"]).await;
    list.assert_code(0);
    list.assert_mentions(&[
        &format!("{CODE}: 1 rows quarantined"),
        &format!("key {}: {reason}", code_of(LONG)),
    ]);
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["queued_batches"], 0, "the queue is empty: {status}");
    assert_eq!(status["queued_records"], 0, "{status}");
    assert_eq!(status["pushed_records"], PEOPLE - 1, "{status}");
    assert_eq!(status["quarantined"], 1, "{status}");
    assert!(status["push_error"].is_null(), "{status}");
    let queue = agent.cmd(&["queue", "list", CODE]).await;
    queue.assert_code(0);
    assert!(
        !queue
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with("seq ")),
        "no batch is left: {queue}"
    );

    // Audited: resource, seq, the line, the reason; never a value.
    let (refused, text) = audit_entries(&config.data_dir, "batch.record_refused");
    assert_eq!(refused.len(), 1, "{text}");
    let e = &refused[0];
    assert_eq!(e["resource"], CODE);
    assert_eq!(e["detail"]["seq"], 1, "{e}");
    assert_eq!(e["detail"]["record"], LONG - 1, "{e}");
    assert_eq!(e["detail"]["reason"], reason, "{e}");
    assert_eq!(e["detail"]["records"], 9, "{e}");
    assert_ne!(e["detail"]["digest"], e["detail"]["new_digest"], "{e}");
    assert!(!text.contains("长长") && !text.contains("姓名"), "{text}");
    // The rewritten batch 1 is the one the hub acknowledged.
    let (acked, _) = audit_entries(&config.data_dir, "batch.acked");
    let first = acked
        .iter()
        .find(|a| a["detail"]["seq"] == 1)
        .expect("batch 1 acknowledged");
    assert_eq!(first["detail"]["digest"], e["detail"]["new_digest"]);
    assert_eq!(first["detail"]["records"], 9);
    agent.cmd(&["audit", "verify"]).await.assert_code(0);

    // Nothing more happens on the next cycle.
    agent.sync_ok().await;
    assert_eq!(agent.resource_status(CODE).await["quarantined"], 1);
    assert_eq!(
        audit_entries(&config.data_dir, "batch.record_refused")
            .0
            .len(),
        1
    );
}

/// How the older hub refuses every batch.
#[derive(Debug, Clone)]
struct Refusal {
    /// The error body.
    body: Value,
    /// Batch requests received.
    received: usize,
}

/// A hub that refuses every batch with `400` and a body of the test's choosing, on the scene
/// hub's address.
struct RefusingHub {
    refusal: Arc<Mutex<Refusal>>,
    impostor: Impostor,
}

impl RefusingHub {
    async fn start(scene: &Scene, body: Value) -> RefusingHub {
        let refusal = Arc::new(Mutex::new(Refusal { body, received: 0 }));
        let app = Router::new()
            .route(BATCHES_PATH, post(refuse))
            .with_state(refusal.clone());
        let impostor = scene.hub.serve_instead(app).await;
        RefusingHub { refusal, impostor }
    }

    fn answer(&self, body: Value) {
        self.refusal.lock().unwrap().body = body;
    }

    fn received(&self) -> usize {
        self.refusal.lock().unwrap().received
    }

    async fn stop(self) {
        self.impostor.stop().await;
    }
}

async fn refuse(
    State(refusal): State<Arc<Mutex<Refusal>>>,
    _body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let mut r = refusal.lock().unwrap();
    r.received += 1;
    (StatusCode::BAD_REQUEST, Json(r.body.clone()))
}

/// Fails the test unless the whole batch is still queued, nothing is quarantined, and the
/// push error says `error`.
async fn assert_kept(agent: &Agent, error: &str) {
    let status = agent.resource_status(CODE).await;
    // Batch 1 with every record (then, after a second pull, the baseline's empty batch).
    assert_eq!(status["queued_records"], 3, "{status}");
    assert_eq!(status["pushed_records"], 0, "{status}");
    assert_eq!(status["quarantined"], 0, "{status}");
    let push_error = status["push_error"].as_str().unwrap_or_default();
    assert!(push_error.contains(error), "{status}");
    agent
        .cmd(&["quarantine", "list"])
        .await
        .assert_code(0)
        .assert_mentions(&["No quarantined rows."]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_that_names_no_record_of_the_batch_keeps_the_whole_batch() {
    let scene = Scene::with_hub_down().await;
    let source = SqliteSource::create(scene.dir.path(), 3);
    let config = scene
        .agent_config()
        .source("hr", "sqlite", &source.url())
        .resource(source.resource(CODE, "hr"));
    let agent = scene.write_agent(&config);

    // A hub written before `record`: the batch as a whole is refused.
    let hub = RefusingHub::start(&scene, json!({"error": "this hub refuses the batch"})).await;
    let out = agent.sync("60s").await;
    assert_ne!(out.code, Some(0), "{out}");
    out.assert_mentions(&["this hub refuses the batch"]);
    assert!(hub.received() >= 1);
    assert_kept(&agent, "this hub refuses the batch").await;

    // A `record` the batch does not hold is no record's refusal.
    hub.answer(json!({"error": "line 100: the key is empty", "record": 99}));
    let out = agent.sync("60s").await;
    assert_ne!(out.code, Some(0), "{out}");
    assert_kept(&agent, "which the batch does not hold").await;
    let (refused, text) = audit_entries(&config.data_dir, "batch.record_refused");
    assert!(refused.is_empty(), "{text}");

    // The reference hub takes the same batch whole.
    hub.stop().await;
    let mut scene = scene;
    scene.hub.start_again().await;
    agent.sync_ok().await;
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["queued_batches"], 0, "{status}");
    assert_eq!(status["pushed_records"], 3, "{status}");
}
