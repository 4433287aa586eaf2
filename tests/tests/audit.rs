//! The audit log through the binary: a sync leaves one `batch.acked` entry per acknowledged
//! batch (resource, seq, records, digest; never a value); `audit verify` accepts the intact
//! chain and names the line of an edited one; `audit export --since` writes NDJSON.

use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;

const CODE: &str = "330100-RSJ-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batches_are_audited_and_an_edit_is_found_by_verify() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 30);
    let config = scene
        .agent_config()
        .source("biz", "sqlite", &source.url())
        .resource(source.resource(CODE, "biz"))
        .max_records(10);
    let agent = scene.write_agent(&config);
    agent.sync("60s").await.assert_code(0);

    let log = config.data_dir.join("audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let acked: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["action"] == "batch.acked")
        .collect();
    // Three batches of 10, then the (empty) batch that completes the stream's baseline.
    let records: Vec<u64> = acked
        .iter()
        .map(|e| e["detail"]["records"].as_u64().unwrap())
        .collect();
    assert_eq!(records, [10, 10, 10, 0], "{text}");
    for (i, e) in acked.iter().enumerate() {
        assert_eq!(e["resource"], CODE);
        assert_eq!(e["detail"]["seq"], i as u64 + 1);
        assert_eq!(e["detail"]["digest"].as_str().unwrap().len(), 64);
        assert_eq!(e["detail"]["ack"], "applied");
    }
    // Never a value: the names of the source rows appear nowhere.
    assert!(!text.contains("居民"), "{text}");

    agent
        .cmd(&["audit", "verify"])
        .await
        .assert_code(0)
        .assert_mentions(&["intact: 4 entries"]);
    let export = agent
        .cmd(&["audit", "export", "--since", "2000-01-01T00:00:00Z"])
        .await;
    export.assert_code(0);
    assert_eq!(export.stdout, text);
    let later = agent
        .cmd(&["audit", "export", "--since", "2999-01-01T00:00:00+08:00"])
        .await;
    assert_eq!(later.assert_code(0).stdout, "");

    // One digit of the second entry changed.
    let edited = text.replacen("\"seq\":2", "\"seq\":7", 1);
    assert_ne!(edited, text);
    std::fs::write(&log, edited).unwrap();
    agent
        .cmd(&["audit", "verify"])
        .await
        .assert_code(1)
        .assert_mentions(&["NOT intact", "audit.jsonl:3"]);
}
