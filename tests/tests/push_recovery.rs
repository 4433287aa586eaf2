//! What an operator reads after a hub outage: the failures, each with a retry delay written as
//! people write it, then one line saying the pushes recovered.

use exchange_tests::agent::terminate;
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::wait_until;

const CODE: &str = "330100-RSJ-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_recovery_after_an_outage_is_logged_once() {
    let mut scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 300);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .max_records(100)
            .source("rsj", "sqlite", &source.url())
            .resource(source.resource(CODE, "rsj")),
    );
    let log = scene.dir.path().join("agent.log");
    let mut daemon = agent.spawn_run(&log);
    let deadline = exchange_tests::DEADLINE;
    let expected = source.expected();
    wait_until("the first rows are delivered", deadline, || async {
        scene.hub.rows(CODE).await == expected
    })
    .await;
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text().contains("Push recovered"),
        "nothing failed yet:\n{}",
        text()
    );

    scene.hub.stop().await;
    source.insert(301, 300);
    wait_until("two pushes failed", deadline, || async {
        text().matches("Push failed").count() >= 2
    })
    .await;
    scene.hub.start_again().await;
    let expected = source.expected();
    wait_until("the queue drained into the hub", deadline, || async {
        scene.hub.rows(CODE).await == expected
    })
    .await;
    wait_until("the recovery is logged", deadline, || async {
        text().contains("Push recovered")
    })
    .await;
    let exit = terminate(&mut daemon).await;
    assert!(exit.success(), "{exit}");

    let log = text();
    let recovered: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Push recovered"))
        .collect();
    assert_eq!(recovered.len(), 1, "one recovery, logged once:\n{log}");
    assert!(
        recovered[0].contains(" INFO ") && recovered[0].contains(CODE),
        "{}",
        recovered[0]
    );
    for line in log.lines().filter(|l| l.contains("Push failed")) {
        let delay = line
            .split("retry_in=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no retry_in in {line}"));
        assert!(
            !delay.contains('.') && delay.ends_with(['s', 'm', 'h', 'd']),
            "retry_in written as people write a duration (2s, 431ms, 1m 5s): {line}"
        );
    }
}
