//! The hub with a PostgreSQL store: a fresh database per test on the server named by
//! `EXCHANGE_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`). An unreachable
//! server fails these tests; they never skip.

mod common;

use common::*;
use exchange_protocol::batch::AckStatus;

const NODE: &str = "scj-node-07";
const RESOURCE: &str = "330100-SCJ-0042";

#[tokio::test]
async fn postgres_applies_exports_and_deduplicates() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    let client = client(&pki.client(NODE));
    let stream = new_stream();

    let first = vec![
        upsert(
            "b",
            r#"{"n":18446744073709551616,"d":"0.10","名称":"某公司"}"#,
        ),
        upsert("a", r#"{"n":1}"#),
        upsert("c", r#"{"n":3}"#),
    ];
    let push = Push::new(NODE, RESOURCE, &stream, 1, first);
    let a = ack(push.send(&client, &hub).await).await;
    assert_eq!((a.status, a.records), (AckStatus::Applied, 3));
    let again = ack(push.send(&client, &hub).await).await;
    assert_eq!((again.status, again.records), (AckStatus::Duplicate, 0));

    let second = vec![upsert("a", r#"{"n":2}"#), delete("c")];
    ack(Push::new(NODE, RESOURCE, &stream, 2, second)
        .send(&client, &hub)
        .await)
    .await;

    assert_eq!(
        exported(&hub, RESOURCE).await,
        vec![
            ("a".to_owned(), r#"{"n":2}"#.to_owned()),
            (
                "b".to_owned(),
                r#"{"n":18446744073709551616,"d":"0.10","名称":"某公司"}"#.to_owned()
            ),
        ]
    );
    let counts = hub.store().await.counts().await.unwrap();
    assert_eq!(
        (counts.resources, counts.streams, counts.records),
        (1, 1, 2)
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_postgres_store_compares_resources_and_keys_bytewise() {
    // Keys are opaque: COLLATE "C" spares the primary key's B-tree a strcoll per comparison,
    // and orders as the database's C.UTF-8 does (by code point).
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    let client = client(&pki.client(NODE));
    let keys_in = ["b", "a", "中", "Z", "z"];
    let records = keys_in.iter().map(|k| upsert(k, "{}")).collect();
    let a = ack(Push::new(NODE, RESOURCE, &new_stream(), 1, records)
        .send(&client, &hub)
        .await)
    .await;
    assert_eq!((a.status, a.records), (AckStatus::Applied, 5));
    let (store, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let collations: Vec<(String, Option<String>)> = store
        .query(
            "SELECT column_name::text, collation_name::text FROM information_schema.columns \
             WHERE table_name = 'records' AND column_name IN ('resource', 'key') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        collations,
        [
            ("key".to_owned(), Some("C".to_owned())),
            ("resource".to_owned(), Some("C".to_owned()))
        ]
    );
    let ordered: Vec<String> = store
        .query("SELECT key FROM records ORDER BY key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ordered, ["Z", "a", "b", "z", "中"]);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn postgres_refuses_a_resource_owned_by_another_node() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    let owner = client(&pki.client(NODE));
    let other = client(&pki.client("other-node"));
    ack(
        Push::new(NODE, RESOURCE, &new_stream(), 1, vec![upsert("k", "{}")])
            .send(&owner, &hub)
            .await,
    )
    .await;
    let e = refusal(
        Push::new("other-node", RESOURCE, &new_stream(), 1, vec![delete("k")])
            .send(&other, &hub)
            .await,
        403,
    )
    .await;
    assert!(e.contains("is provided by node `scj-node-07`"), "{e}");
    assert_eq!(exported(&hub, RESOURCE).await.len(), 1);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_copies_of_a_batch_apply_once() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    let records: Vec<_> = (0..50)
        .map(|i| upsert(&format!("k{i:03}"), r#"{"v":1}"#))
        .collect();
    let push = Push::new(NODE, RESOURCE, &new_stream(), 1, records);
    let tls = pki.client(NODE);
    // Separate clients: separate connections, requests in flight at the same time.
    let clients: Vec<_> = (0..8).map(|_| client(&tls)).collect();
    let responses =
        futures_util::future::join_all(clients.iter().map(|c| push.send(c, &hub))).await;
    let mut statuses = Vec::new();
    for r in responses {
        statuses.push(ack(r).await.status);
    }
    let applied = statuses
        .iter()
        .filter(|s| **s == AckStatus::Applied)
        .count();
    assert_eq!(applied, 1, "{statuses:?}");
    assert_eq!(exported(&hub, RESOURCE).await.len(), 50);
    hub.stop().await.unwrap();
}

/// New keys are copied in without a probe of each: a run whose first key is new but whose
/// later keys exist falls back to the upsert, with nothing written twice and nothing lost.
#[tokio::test]
async fn a_run_of_new_keys_with_an_existing_one_inside_is_upserted_whole() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    let client = client(&pki.client(NODE));
    let stream = new_stream();
    let first = (0..100)
        .map(|i| upsert(&format!("k{:03}", 2 * i + 1), r#"{"v":1}"#))
        .collect();
    let a = ack(Push::new(NODE, RESOURCE, &stream, 1, first)
        .send(&client, &hub)
        .await)
    .await;
    assert_eq!((a.status, a.records), (AckStatus::Applied, 100));
    // Even keys are new, odd ones exist; the first key of the run is new, the last exists.
    let second = (0..200)
        .map(|i| upsert(&format!("k{i:03}"), r#"{"v":2}"#))
        .collect();
    let a = ack(Push::new(NODE, RESOURCE, &stream, 2, second)
        .send(&client, &hub)
        .await)
    .await;
    assert_eq!((a.status, a.records), (AckStatus::Applied, 200));
    let rows = exported(&hub, RESOURCE).await;
    assert_eq!(rows.len(), 200);
    assert!(rows.iter().all(|(_, f)| f == r#"{"v":2}"#), "{rows:?}");
    hub.stop().await.unwrap();
}

/// A batch of many short runs (an upsert and a delete in turn) is applied in body order
/// whichever way each run's new keys are written.
#[tokio::test]
async fn a_batch_of_many_alternating_runs_is_applied_in_body_order() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    let client = client(&pki.client(NODE));
    let mut records = Vec::new();
    for i in 0..60 {
        records.push(upsert(&format!("n{i:02}"), r#"{"v":1}"#));
        records.push(upsert(&format!("g{i:02}"), r#"{"v":1}"#));
        records.push(delete(&format!("g{i:02}")));
    }
    let a = ack(Push::new(NODE, RESOURCE, &new_stream(), 1, records)
        .send(&client, &hub)
        .await)
    .await;
    assert_eq!(a.status, AckStatus::Applied);
    let keys: Vec<String> = exported(&hub, RESOURCE)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let expected: Vec<String> = (0..60).map(|i| format!("n{i:02}")).collect();
    assert_eq!(keys, expected);
    hub.stop().await.unwrap();
}

/// Two streams writing the same new keys at once: the second COPY meets the first one's
/// rows and upserts instead, so both batches are applied, not refused with 500.
#[tokio::test]
async fn two_streams_copying_the_same_new_keys_at_once_are_both_applied() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    let tls = pki.client(NODE);
    // The resource is claimed already (a first claim would serialize the two transactions).
    let claim = Push::new(NODE, RESOURCE, &new_stream(), 1, vec![upsert("a", "{}")]);
    ack(claim.send(&client(&tls), &hub).await).await;
    let records: Vec<_> = (0..3000)
        .map(|i| upsert(&format!("k{i:04}"), r#"{"v":1}"#))
        .collect();
    let pushes = [
        Push::new(NODE, RESOURCE, &new_stream(), 1, records.clone()),
        Push::new(NODE, RESOURCE, &new_stream(), 1, records),
    ];
    let clients = [client(&tls), client(&tls)];
    let responses =
        futures_util::future::join_all(pushes.iter().zip(&clients).map(|(p, c)| p.send(c, &hub)))
            .await;
    for r in responses {
        let a = ack(r).await;
        assert_eq!((a.status, a.records), (AckStatus::Applied, 3000));
    }
    assert_eq!(exported(&hub, RESOURCE).await.len(), 3001);
    hub.stop().await.unwrap();
}

/// Sends `pushes` all at once, on separate connections, as an agent's window sends them; a
/// batch that reached the hub before its predecessor was seen is refused as a gap (409) and
/// sent again with the next round, as the agent does. Every other answer must apply the
/// batch; returns the seqs applied.
async fn send_at_once(
    hub: &Hub,
    tls: &exchange_protocol::tls::MutualTls,
    pushes: &[Push],
) -> Vec<u64> {
    let clients: Vec<_> = pushes.iter().map(|_| client(tls)).collect();
    let mut pending: Vec<usize> = (0..pushes.len()).collect();
    let mut applied = Vec::new();
    for _ in 0..30 {
        if pending.is_empty() {
            break;
        }
        let responses = futures_util::future::join_all(
            pending.iter().map(|&i| pushes[i].send(&clients[i], hub)),
        )
        .await;
        let mut gaps = Vec::new();
        for (&i, r) in pending.iter().zip(responses) {
            if r.status() == 409 {
                gaps.push(i);
                continue;
            }
            let a = ack(r).await;
            assert_eq!(a.status, AckStatus::Applied, "{a:?}");
            applied.push(a.seq);
        }
        pending = gaps;
    }
    assert!(pending.is_empty(), "still refused as gaps: {pending:?}");
    applied
}

/// Makes every move of a stream's mark, and every statement deleting records (a delete run, a
/// baseline's sweep), take 150 ms more: the windows in which the stream's next batch may
/// already be writing.
async fn slow_mark_moves(hub: &Hub, db: &PgDb) {
    // Opening the store creates its tables (the hub opens it on its first request).
    drop(hub.store().await);
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE FUNCTION slow_mark() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(0.15); RETURN NEW; END $$;
             CREATE TRIGGER slow_mark BEFORE UPDATE ON streams
               FOR EACH ROW EXECUTE FUNCTION slow_mark();
             CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(0.15); RETURN NULL; END $$;
             CREATE TRIGGER slow_delete BEFORE DELETE ON records
               FOR EACH STATEMENT EXECUTE FUNCTION slow_delete();",
        )
        .await
        .unwrap();
}

/// A batch deleting the keys its predecessor inserted, both in flight: the delete sees the
/// insert (it waits for the predecessor's commit), so the keys are gone, every time, even
/// when the predecessor's commit is slow.
#[tokio::test]
async fn a_delete_in_flight_behind_the_insert_of_its_keys_removes_them() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    slow_mark_moves(&hub, &db).await;
    let tls = pki.client(NODE);
    let stream = new_stream();
    let mut pushes = Vec::new();
    for round in 0..4u64 {
        let keys: Vec<String> = (0..300).map(|k| format!("r{round}-k{k:03}")).collect();
        let inserts = keys.iter().map(|k| upsert(k, r#"{"v":1}"#)).collect();
        let deletes = keys.iter().map(|k| delete(k)).collect();
        pushes.push(Push::new(NODE, RESOURCE, &stream, 2 * round + 1, inserts));
        pushes.push(Push::new(NODE, RESOURCE, &stream, 2 * round + 2, deletes));
    }
    let mut applied = send_at_once(&hub, &tls, &pushes).await;
    applied.sort();
    assert_eq!(applied, (1..=8).collect::<Vec<u64>>());
    let left = exported(&hub, RESOURCE).await;
    assert!(left.is_empty(), "{} deleted keys still held", left.len());
    hub.stop().await.unwrap();
}

/// A baseline batch in flight with the batches after it, which rewrite keys another stream
/// wrote: no deadlock between the sweep and the next batch (no 503), and the other stream's
/// keys are swept before the batches after the baseline write theirs again.
#[tokio::test]
async fn a_baseline_in_flight_with_its_successors_sweeps_without_a_deadlock() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    slow_mark_moves(&hub, &db).await;
    let tls = pki.client(NODE);
    let old: Vec<_> = (0..600)
        .map(|k| upsert(&format!("k{k:03}"), r#"{"v":"old"}"#))
        .collect();
    let a = ack(Push::new(NODE, RESOURCE, &new_stream(), 1, old)
        .send(&client(&tls), &hub)
        .await)
    .await;
    assert_eq!(a.status, AckStatus::Applied);
    let stream = new_stream();
    let baseline = (0..100)
        .map(|k| upsert(&format!("k{k:03}"), r#"{"v":"new"}"#))
        .collect();
    let mut pushes = vec![Push::new(NODE, RESOURCE, &stream, 1, baseline).completing_baseline()];
    for seq in 2..=6u64 {
        let records = (0..100)
            .map(|k| upsert(&format!("k{:03}", 100 * seq + k), r#"{"v":"new"}"#))
            .collect();
        pushes.push(Push::new(NODE, RESOURCE, &stream, seq, records));
    }
    let mut applied = send_at_once(&hub, &tls, &pushes).await;
    applied.sort();
    assert_eq!(applied, (1..=6).collect::<Vec<u64>>());
    let rows = exported(&hub, RESOURCE).await;
    let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    // k100–k199 only the old stream wrote: swept; k200–k699 the batches after the baseline
    // wrote again.
    let expected: Vec<String> = (0..100)
        .chain(200..700)
        .map(|k| format!("k{k:03}"))
        .collect();
    assert_eq!(keys, expected);
    assert!(rows.iter().all(|(_, f)| f == r#"{"v":"new"}"#));
    hub.stop().await.unwrap();
}

/// A stream's batches sent at once, each rewriting the same keys: a batch writes while its
/// predecessor commits, yet each is judged against the mark only after it, so every one is
/// applied once, in seq order, and the last one's values stand.
#[tokio::test]
async fn batches_in_flight_rewriting_the_same_keys_are_applied_in_seq_order() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    let tls = pki.client(NODE);
    let stream = new_stream();
    let pushes: Vec<Push> = (1..=12u64)
        .map(|seq| {
            let records = (0..400)
                .map(|k| upsert(&format!("k{k:03}"), &format!(r#"{{"seq":{seq}}}"#)))
                .collect();
            Push::new(NODE, RESOURCE, &stream, seq, records)
        })
        .collect();
    let mut applied = send_at_once(&hub, &tls, &pushes).await;
    applied.sort();
    assert_eq!(applied, (1..=12).collect::<Vec<u64>>());
    let rows = exported(&hub, RESOURCE).await;
    assert_eq!(rows.len(), 400);
    assert!(
        rows.iter().all(|(_, f)| f == r#"{"seq":12}"#),
        "{:?}",
        &rows[..3]
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_lost_database_answers_503_with_retry_after_then_recovers() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    let client = client(&pki.client(NODE));
    let stream = new_stream();
    ack(
        Push::new(NODE, RESOURCE, &stream, 1, vec![upsert("a", "{}")])
            .send(&client, &hub)
            .await,
    )
    .await;

    // Cut the hub off: no new connections, existing ones terminated.
    db.admin(&format!(
        "ALTER DATABASE {0} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}';",
        db.name
    ))
    .await;
    let second = Push::new(NODE, RESOURCE, &stream, 2, vec![upsert("b", "{}")]);
    let response = second.send(&client, &hub).await;
    assert_eq!(response.headers()["retry-after"], "5");
    let e = refusal(response, 503).await;
    assert!(e.contains("is temporarily unavailable"), "{e}");
    assert!(e.ends_with("retry later"), "{e}");

    db.admin(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        db.name
    ))
    .await;
    let a = ack(second.send(&client, &hub).await).await;
    assert_eq!(a.status, AckStatus::Applied);
    assert_eq!(exported(&hub, RESOURCE).await.len(), 2);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn postgres_refuses_a_gap_with_409_and_applies_nothing() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    let client = client(&pki.client(NODE));
    let stream = new_stream();
    ack(
        Push::new(NODE, RESOURCE, &stream, 1, vec![upsert("a", "{}")])
            .send(&client, &hub)
            .await,
    )
    .await;
    let gap = Push::new(NODE, RESOURCE, &stream, 5, vec![upsert("e", "{}")]);
    assert_eq!(
        refusal_body(gap.send(&client, &hub).await, 409)
            .await
            .last_seq,
        Some(1)
    );
    let fresh = Push::new(NODE, RESOURCE, &new_stream(), 2, vec![upsert("f", "{}")]);
    assert_eq!(
        refusal_body(fresh.send(&client, &hub).await, 409)
            .await
            .last_seq,
        Some(0)
    );
    assert_eq!(keys(&hub, RESOURCE).await, ["a"]);
    assert_eq!(hub.store().await.counts().await.unwrap().streams, 1);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn postgres_baseline_sweeps_the_keys_other_streams_wrote() {
    let db = PgDb::create().await;
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    baseline_sweeps_the_keys_other_streams_wrote(&pki, &hub).await;
    empty_baseline_empties_the_resource(&pki, &hub).await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_version_1_postgres_store_is_migrated_and_its_rows_are_swept_by_a_baseline() {
    let db = PgDb::create().await;
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "CREATE TABLE records (resource TEXT NOT NULL, key TEXT NOT NULL, node TEXT NOT NULL,
                 fields TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (resource, key));
             CREATE TABLE streams (node TEXT NOT NULL, resource TEXT NOT NULL,
                 stream TEXT NOT NULL, last_seq BIGINT NOT NULL,
                 PRIMARY KEY (node, resource, stream));
             CREATE TABLE resources (resource TEXT NOT NULL PRIMARY KEY, node TEXT NOT NULL);
             INSERT INTO records VALUES ('{RESOURCE}', 'old', '{NODE}', '{{}}', '2024-01-01T00:00:00Z');
             INSERT INTO resources VALUES ('{RESOURCE}', '{NODE}');"
        ))
        .await
        .unwrap();
    let pki = Pki::new();
    let hub = Hub::start(&pki, db.store_config()).await;
    let agent = common::client(&pki.client(NODE));
    let push = Push::new(NODE, RESOURCE, &new_stream(), 1, vec![upsert("new", "{}")]);
    let ack = ack(push.completing_baseline().send(&agent, &hub).await).await;
    assert_eq!((ack.records, ack.swept), (1, 1));
    assert_eq!(keys(&hub, RESOURCE).await, ["new"]);
    assert_eq!(
        hub.store().await.schema_version().await.unwrap(),
        exchange_hub::store::SCHEMA_VERSION
    );
    hub.stop().await.unwrap();
}
