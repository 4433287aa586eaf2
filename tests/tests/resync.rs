//! No silent loss when the hub or the configuration goes back on what was delivered:
//! - a hub store restored from an older copy lacks batches: the hub refuses the next batch
//!   (409, a gap), the agent stops the resource and says to resync; `resync` reads everything
//!   again on a new stream and the hub ends equal to the source, rows deleted meanwhile swept;
//! - a field rule changed from `plain` to `drop`: the resource stops until an operator
//!   chooses; after `resync` the hub no longer holds the field's values, after `accept-config`
//!   the agent goes on from its cursor.

use exchange_hub::config::StoreConfig;
use exchange_tests::agent::{Agent, pulled};
use exchange_tests::hub::Hub;
use exchange_tests::rows::assert_same;
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;

const CODE: &str = "330100-RSJ-0040";

fn agent_for(scene: &Scene, source: &SqliteSource) -> Agent {
    scene.write_agent(
        &scene
            .agent_config()
            .max_records(10)
            .source("local", "sqlite", &source.url())
            .resource(source.resource(CODE, "local")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restored_from_an_older_copy_stops_the_resource_and_resync_restores_equality() {
    let mut scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 100);
    let agent = agent_for(&scene, &source);
    agent.sync_ok().await;

    // The hub's backup: a consistent copy of its store now (batches 1..=10 applied).
    let backup = scene.dir.path().join("hub-backup.db");
    rusqlite::Connection::open(scene.hub.sqlite.as_ref().expect("a SQLite hub"))
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();

    // Life goes on: rows added, delivered; rows deleted (an incremental resource does not
    // see deletes: the hub keeps them until a resync).
    source.insert(101, 50);
    source
        .conn
        .execute("DELETE FROM residents WHERE id <= 5", [])
        .unwrap();
    agent.sync_ok().await;
    assert_eq!(scene.hub.rows(CODE).await.len(), 150);

    // The hub's store is restored from the backup (a new hub process on the old copy).
    scene.hub.stop().await;
    scene.hub = Hub::start_with(scene.pki.hub_tls(), StoreConfig::sqlite(backup)).await;
    let agent = agent_for(&scene, &source);
    source.insert(151, 20);

    let out = agent.sync("30s").await;
    assert_ne!(
        out.code,
        Some(0),
        "a hub missing batches must not look synced; {out}"
    );
    out.assert_mentions(&[
        "missing at the hub",
        &format!("exchange-agent resync {CODE}"),
    ]);
    let status = agent.resource_status(CODE).await;
    assert!(
        status["stopped"]
            .as_str()
            .is_some_and(|s| s.contains("missing at the hub")),
        "{status}"
    );
    // Stopped means stopped: asking again changes nothing at the hub.
    let before = scene.hub.rows(CODE).await;
    let out = agent.sync("30s").await;
    assert_ne!(out.code, Some(0), "{out}");
    assert_same(&scene.hub.rows(CODE).await, &before);

    // Without --yes, resync only says what it would do.
    let out = agent.cmd(&["resync", CODE]).await;
    assert_eq!(out.code, Some(2), "{out}");
    out.assert_mentions(&["--yes"]);
    agent.cmd(&["resync", CODE, "--yes"]).await.assert_code(0);
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 165, "everything read again: {out}");
    // Rows 1..=5 were deleted at the source: the baseline sweep removed them at the hub.
    assert_same(&scene.hub.rows(CODE).await, &source.expected());

    // The audit log names the resync.
    let audit = std::fs::read_to_string(scene.agent_config().data_dir.join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"action\":\"resync\"") && audit.contains(CODE),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_changed_from_plain_to_drop_stops_the_resource_until_an_operator_chooses() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 30);
    let config = scene
        .agent_config()
        .source("local", "sqlite", &source.url());
    let with_name = source.resource(CODE, "local");
    let agent = scene.write_agent(&config.clone().resource(with_name));
    agent.sync_ok().await;
    let hub = scene.hub.rows(CODE).await;
    assert!(hub.values().all(|f| f.contains_key("name")));

    // `name` is now to be dropped.
    let without_name =
        exchange_tests::agent::Resource::incremental(CODE, "local", "residents", "id").fields(&[
            ("id", "plain"),
            ("name", "drop"),
            ("updated_at", "plain"),
            ("note", "drop"),
        ]);
    let agent = scene.write_agent(&config.clone().resource(without_name));
    let out = agent.sync("30s").await;
    assert_ne!(out.code, Some(0), "{out}");
    out.assert_mentions(&[
        "field `name` changed from plain to drop",
        &format!("exchange-agent resync {CODE}"),
        &format!("exchange-agent accept-config {CODE}"),
    ]);
    assert!(agent.resource_status(CODE).await["stopped"].is_string());

    agent.cmd(&["resync", CODE, "--yes"]).await.assert_code(0);
    agent.sync_ok().await;
    let hub = scene.hub.rows(CODE).await;
    assert_eq!(hub.len(), 30);
    assert!(
        hub.values().all(|f| !f.contains_key("name")),
        "after the re-read the hub no longer holds the dropped field"
    );

    // Changed again (back to plain), and this time the cursor is kept.
    let agent = scene.write_agent(&config.resource(source.resource(CODE, "local")));
    let out = agent.sync("30s").await;
    out.assert_mentions(&["field `name` changed from drop to plain"]);
    // A change of state: without --yes it only says what it would do, and changes nothing.
    agent
        .cmd(&["accept-config", CODE])
        .await
        .assert_code(2)
        .assert_mentions(&["Run it again with --yes"]);
    assert!(agent.resource_status(CODE).await["stopped"].is_string());
    let out = agent.cmd(&["accept-config", CODE, "--yes"]).await;
    out.assert_code(0);
    source.insert(31, 1);
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 1, "goes on from the cursor: {out}");
    let hub = scene.hub.rows(CODE).await;
    assert!(
        hub["31"].contains_key("name"),
        "new rows carry the new configuration"
    );
    assert!(
        !hub["1"].contains_key("name"),
        "old rows keep what they had"
    );
}

/// Batches queued under a rule that delivered a field more openly must not leave once the rule
/// is tightened: `accept-config` refuses while they are queued and says what to do; `resync`
/// discards them and the hub receives the field only under the new rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_config_refuses_to_send_batches_queued_under_a_plainer_rule() {
    let mut scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 10);
    let config = scene
        .agent_config()
        .source("local", "sqlite", &source.url());
    let agent = scene.write_agent(&config.clone().resource(source.resource(CODE, "local")));
    agent.sync_ok().await;

    // The hub is away: new rows are read under `name = "plain"` and stay queued.
    scene.hub.stop().await;
    source.insert(11, 5);
    let out = agent.sync("3s").await;
    assert_ne!(out.code, Some(0), "{out}");

    // `name` is now masked.
    let masked = exchange_tests::agent::Resource::incremental(CODE, "local", "residents", "id")
        .fields(&[
            ("id", "plain"),
            ("name", "mask:name"),
            ("updated_at", "plain"),
            ("note", "drop"),
        ]);
    let agent = scene.write_agent(&config.clone().resource(masked));
    agent
        .sync("3s")
        .await
        .assert_mentions(&["field `name` changed from plain to mask:name"]);
    let out = agent.cmd(&["accept-config", CODE, "--yes"]).await;
    out.assert_code(1).assert_mentions(&[
        "1 batch (5 records) queued under the old configuration",
        "`name`",
        &format!("exchange-agent resync {CODE} --yes"),
    ]);
    assert!(agent.resource_status(CODE).await["stopped"].is_string());

    agent.cmd(&["resync", CODE, "--yes"]).await.assert_code(0);
    scene.hub.start_again().await;
    agent.sync_ok().await;
    let hub = scene.hub.rows(CODE).await;
    assert_eq!(hub.len(), 15);
    for (id, fields) in &hub {
        let masked = format!("居{}", "*".repeat(format!("民{id}").chars().count()));
        assert_eq!(fields["name"], masked.as_str(), "row {id}: {fields:?}");
    }
}
