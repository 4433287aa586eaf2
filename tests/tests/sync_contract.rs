//! The `sync` contract: `exchange-agent sync` delivers every row committed before the command
//! started, also rows changed a moment before (which the safety lag used to hold back until a
//! later sync); it reports true counts; and while the service runs, the service does the sync.

use std::time::Duration;

use exchange_tests::agent::{Resource, pulled, terminate};
use exchange_tests::db::PgDb;
use exchange_tests::rows::assert_same;
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::wait_until;

const CODE: &str = "330100-RSJ-0030";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_row_changed_just_before_sync_is_delivered_by_that_sync() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, note text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO events (id, note, updated_at)
             SELECT g, 'early ' || g, now() - interval '1 hour' + g * interval '1 ms' FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("hr", "postgres", &db.url)
            .resource(Resource::incremental(CODE, "hr", "events", "id").fields(&[
                ("id", "plain"),
                ("note", "plain"),
                ("updated_at", "plain"),
            ])),
    );
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 50, "{out}");

    // An administrator changes a row and adds one, and syncs at once.
    db.client
        .batch_execute(
            "UPDATE events SET note = 'changed', updated_at = now() WHERE id = 7;
             INSERT INTO events (id, note) VALUES (51, 'new');",
        )
        .await
        .unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 2, "both changes, counted: {out}");
    assert_same(&scene.hub.rows(CODE).await, &db.events().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_row_changed_just_before_sync_is_delivered_by_that_sync() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 20);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("local", "sqlite", &source.url())
            .resource(source.resource(CODE, "local")),
    );
    agent.sync_ok().await;
    source
        .conn
        .execute_batch(
            "UPDATE residents SET name = '改名', updated_at = datetime('now') WHERE id = 3;
             INSERT INTO residents (id, name, note, updated_at) VALUES (21, '新居民', 'x', datetime('now'));",
        )
        .unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 2, "{out}");
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_while_the_service_runs_is_carried_out_by_the_service() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 30);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("local", "sqlite", &source.url())
            .resource(source.resource(CODE, "local")),
    );
    let log = scene.dir.path().join("agent.log");
    let mut daemon = agent.spawn_run(&log);
    let socket = scene.agent_config().data_dir.join("control.sock");
    wait_until(
        "the daemon's control socket",
        Duration::from_secs(30),
        || {
            let socket = socket.clone();
            async move { socket.exists() }
        },
    )
    .await;

    source
        .conn
        .execute_batch(
            "INSERT INTO residents (id, name, note, updated_at) VALUES (31, '新居民', 'x', datetime('now'));",
        )
        .unwrap();
    let out = agent.sync_ok().await;
    out.assert_mentions(&["The service holds the queue; asking it to sync."]);
    assert!(out.stdout.contains(&format!("{CODE}: pulled ")), "{out}");
    assert_same(&scene.hub.rows(CODE).await, &source.expected());

    // An unknown resource is refused by the service with a clear message.
    let out = agent.cmd(&["sync", "--resource", "NOPE"]).await;
    assert_eq!(out.code, Some(2), "{out}");

    // Operator commands that change the queue are carried out by the service too
    // (tests/tests/operator_live.rs covers every one).
    let out = agent.cmd(&["cursor", "reset", CODE, "--yes"]).await;
    out.assert_code(0);
    out.assert_mentions(&["The service holds the queue", "is reset"]);

    let status = terminate(&mut daemon).await;
    assert!(
        status.success(),
        "{status:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!socket.exists(), "the socket is removed at shutdown");
}
