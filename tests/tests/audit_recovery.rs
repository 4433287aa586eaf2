//! An acknowledged batch's audit entry survives a crash between the acknowledgement and the
//! append: the queue holds the entry from the acknowledgement's own transaction, and the next
//! command that opens the queue appends it (`"recovered": true`) exactly once; `audit verify`
//! finds the chain intact.

use exchange_agent::queue::Queue;
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;

const CODE: &str = "330100-RSJ-0001";
/// A resource of the queue only, so that the batch acknowledged by hand leaves the configured
/// resource's stream alone.
const CRASHED: &str = "330100-RSJ-0099";

fn acked(data: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["action"] == "batch.acked")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_whose_audit_entry_a_crash_lost_is_appended_once_by_the_next_command() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 20);
    let config = scene
        .agent_config()
        .source("biz", "sqlite", &source.url())
        .resource(source.resource(CODE, "biz"))
        .max_records(10);
    let agent = scene.write_agent(&config);
    agent.sync("60s").await.assert_code(0);
    let data = config.data_dir.clone();
    let before = acked(&data).len();

    // What a process killed right after the acknowledgement's commit leaves: the batch gone
    // from the queue, its audit entry stored with it, none in the log.
    let digest;
    {
        let q = Queue::open(&data).unwrap();
        let mut txn = q.begin().unwrap();
        let mut state = txn.state(CRASHED).unwrap();
        let body = b"{\"op\":\"delete\",\"key\":\"k\"}\n";
        let seq = txn.enqueue(CRASHED, &mut state, body, 1).unwrap();
        txn.set_state(CRASHED, &state).unwrap();
        txn.commit().unwrap();
        digest = q.batch(CRASHED, seq).unwrap().unwrap().digest;
        let detail = serde_json::json!({"seq": seq, "records": 1, "digest": digest, "ack": "applied", "stream": q.stream()});
        q.ack(CRASHED, seq, &detail).unwrap();
    }
    assert_eq!(acked(&data).len(), before);

    // The next command that opens the queue appends it, once.
    agent.sync("60s").await.assert_code(0);
    agent.cmd(&["status"]).await.assert_code(0);
    let entries = acked(&data);
    let recovered: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["resource"] == CRASHED)
        .collect();
    assert_eq!(recovered.len(), 1, "{entries:?}");
    assert_eq!(recovered[0]["detail"]["recovered"], true);
    assert_eq!(recovered[0]["detail"]["digest"], digest);
    agent
        .cmd(&["audit", "verify"])
        .await
        .assert_code(0)
        .assert_mentions(&["intact"]);
}
