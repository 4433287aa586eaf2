//! The hub down during a sync: the agent keeps the records queued (nothing dropped), says so,
//! and delivers them once the hub is back — with `sync` and with the daemon.

use exchange_tests::agent::{pulled, terminate};
use exchange_tests::rows::assert_same;
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::wait_until;

const CODE: &str = "330100-RSJ-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_with_the_hub_down_keeps_records_queued_then_drains() {
    let mut scene = Scene::with_hub_down().await;
    let source = SqliteSource::create(scene.dir.path(), 2500);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(500)
            .source("rsj", "sqlite", &source.url())
            .resource(source.resource(CODE, "rsj")),
    );

    let out = agent.sync("5s").await;
    assert_ne!(
        out.code,
        Some(0),
        "sync must fail while the hub is down; {out}"
    );
    out.assert_mentions(&["2500 records still queued", &scene.hub.url()]);
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["queued_records"], 2500, "{status}");
    // Five full batches, and the empty batch that marks the end of the stream's first full
    // read (the baseline, docs/PROTOCOL.md §5.1).
    assert_eq!(status["queued_batches"], 6, "{status}");
    assert_eq!(status["pushed_records"], 0, "{status}");

    scene.hub.start_again().await;
    let out = agent.sync_ok().await;
    assert_eq!(
        pulled(&out, CODE),
        0,
        "the records were already pulled; they are pushed now; {out}"
    );
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["queued_records"], 0, "{status}");
    assert_eq!(status["pushed_records"], 2500, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_buffers_while_the_hub_is_down_and_drains_when_it_returns() {
    let mut scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 1000);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(200)
            .source("rsj", "sqlite", &source.url())
            .resource(source.resource(CODE, "rsj")),
    );
    let log = scene.dir.path().join("agent.log");
    let mut daemon = agent.spawn_run(&log);
    let deadline = exchange_tests::DEADLINE;
    let expected = source.expected();
    wait_until(
        "the daemon delivered the first 1000 rows",
        deadline,
        || async { scene.hub.rows(CODE).await == expected },
    )
    .await;

    scene.hub.stop().await;
    source.insert(1001, 1000);
    // The daemon pulls the new rows and keeps them (its status file is what `status` shows
    // while it holds the queue).
    wait_until(
        "the daemon's status shows 1000 queued records",
        deadline,
        || async {
            let status = agent.resource_status(CODE).await;
            status["queued_records"] == 1000 && status["push_error"].is_string()
        },
    )
    .await;
    let status = agent.status().await;
    assert_eq!(status["from_daemon"], true, "{status}");

    scene.hub.start_again().await;
    let expected = source.expected();
    wait_until(
        "the daemon drained its queue into the hub",
        deadline,
        || async { scene.hub.rows(CODE).await == expected },
    )
    .await;
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon exited; see {}",
        log.display()
    );
    let exit = terminate(&mut daemon).await;
    assert!(
        exit.success(),
        "the daemon stops cleanly on SIGTERM ({exit}); see {}",
        log.display()
    );
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["queued_records"], 0, "{status}");
    assert_eq!(status["pushed_records"], 2000, "{status}");
}
