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
