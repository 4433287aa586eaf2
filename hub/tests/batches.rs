//! The batch endpoint over real mutual TLS, with a SQLite store in a temporary directory.

mod common;

use std::sync::Arc;

use common::*;
use exchange_protocol::batch::{self, AckStatus, HEALTH_PATH};
use exchange_protocol::pki::{Authority, Validity};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "rsj-node-01";
const RESOURCE: &str = "330100-RSJ-0001";

#[tokio::test]
async fn a_batch_is_applied_and_exported_with_exact_numbers() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let client = client(&pki.client(NODE));
    let stream = new_stream();
    let records = vec![
        upsert(
            "k2",
            r#"{"name":"张*","n":18446744073709551615,"d":"12.3400","f":1.10,"j":{"x":1.0e3}}"#,
        ),
        upsert("k1", r#"{"name":"李*","n":-1}"#),
    ];
    let ack = ack(Push::new(NODE, RESOURCE, &stream, 1, records)
        .send(&client, &hub)
        .await)
    .await;
    assert_eq!(ack.status, AckStatus::Applied);
    assert_eq!((ack.seq, ack.records), (1, 2));

    let store = hub.store().await;
    let rows = exchange_hub::export::export(&store, RESOURCE)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["key"], "k1");
    assert_eq!(rows[1]["node"], NODE);
    assert_eq!(rows[1]["resource"], RESOURCE);
    // Every digit as sent (serde_json writes an exponent's sign explicitly: 1.0e3 → 1.0e+3).
    let line = serde_json::to_string(&rows[1]).unwrap();
    assert!(
        line.starts_with(r#"{"resource":"330100-RSJ-0001","key":"k2","fields":{"name":"张*","n":18446744073709551615,"d":"12.3400","f":1.10,"j":{"x":1.0e+3}},"node":"rsj-node-01","updated_at":""#),
        "{line}"
    );
    let counts = store.counts().await.unwrap();
    assert_eq!(
        (counts.resources, counts.streams, counts.records),
        (1, 1, 2)
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_batch_twice_is_a_duplicate_and_applies_once() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let client = client(&pki.client(NODE));
    let push = Push::new(
        NODE,
        RESOURCE,
        &new_stream(),
        1,
        vec![upsert("k", r#"{"v":1}"#)],
    );
    assert_eq!(
        ack(push.send(&client, &hub).await).await.status,
        AckStatus::Applied
    );
    let second = ack(push.send(&client, &hub).await).await;
    assert_eq!(second.status, AckStatus::Duplicate);
    assert_eq!((second.seq, second.records), (1, 0));
    assert_eq!(exported(&hub, RESOURCE).await.len(), 1);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn upsert_replaces_and_delete_removes() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let client = client(&pki.client(NODE));
    let stream = new_stream();
    let first = vec![upsert("a", r#"{"v":1}"#), upsert("b", r#"{"v":1}"#)];
    ack(Push::new(NODE, RESOURCE, &stream, 1, first)
        .send(&client, &hub)
        .await)
    .await;
    // In one batch, in order: replace a, delete b, re-create then delete c.
    let second = vec![
        upsert("a", r#"{"v":2,"w":"x"}"#),
        delete("b"),
        upsert("c", r#"{"v":3}"#),
        delete("c"),
        delete("never-existed"),
    ];
    let a = ack(Push::new(NODE, RESOURCE, &stream, 2, second)
        .send(&client, &hub)
        .await)
    .await;
    assert_eq!((a.status, a.records), (AckStatus::Applied, 5));
    assert_eq!(
        exported(&hub, RESOURCE).await,
        vec![("a".to_owned(), r#"{"v":2,"w":"x"}"#.to_owned())]
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_gap_is_refused_with_409_and_the_last_seq_and_nothing_is_applied() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let client = client(&pki.client(NODE));
    let stream = new_stream();
    let send =
        |seq, key: &'static str| Push::new(NODE, RESOURCE, &stream, seq, vec![upsert(key, "{}")]);
    assert_eq!(
        ack(send(1, "a").send(&client, &hub).await).await.status,
        AckStatus::Applied
    );
    let gap = refusal_body(send(3, "c").send(&client, &hub).await, 409).await;
    assert_eq!(gap.last_seq, Some(1));
    assert!(gap.error.contains("exchange-agent resync"), "{}", gap.error);
    // An unknown stream has last_seq 0: its first batch must be seq 1.
    let fresh = Push::new(NODE, RESOURCE, &new_stream(), 2, vec![upsert("d", "{}")]);
    assert_eq!(
        refusal_body(fresh.send(&client, &hub).await, 409)
            .await
            .last_seq,
        Some(0)
    );
    let keys: Vec<String> = exported(&hub, RESOURCE)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(keys, ["a"], "nothing of a refused batch is applied");
    // The stream goes on at last_seq + 1; an older seq stays a duplicate.
    assert_eq!(
        ack(send(2, "b").send(&client, &hub).await).await.status,
        AckStatus::Applied
    );
    assert_eq!(
        ack(send(1, "a").send(&client, &hub).await).await.status,
        AckStatus::Duplicate
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_completed_baseline_sweeps_the_keys_other_streams_wrote() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    common::baseline_sweeps_the_keys_other_streams_wrote(&pki, &hub).await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn an_empty_batch_is_valid_and_an_empty_baseline_empties_the_resource() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    common::empty_baseline_empties_the_resource(&pki, &hub).await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_malformed_baseline_header_is_refused() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let client = client(&pki.client(NODE));
    let mut push = Push::new(NODE, RESOURCE, &new_stream(), 1, vec![upsert("a", "{}")]);
    push.baseline = Some("yes".into());
    let error = refusal(push.send(&client, &hub).await, 400).await;
    assert!(error.contains("exchange-baseline"), "{error}");
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_version_1_sqlite_store_is_migrated_and_its_rows_are_swept_by_a_baseline() {
    let pki = Pki::new();
    let path = pki.dir.path().join("hub.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE records (resource TEXT NOT NULL, key TEXT NOT NULL, node TEXT NOT NULL,
                 fields TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (resource, key));
             CREATE TABLE streams (node TEXT NOT NULL, resource TEXT NOT NULL, stream TEXT NOT NULL,
                 last_seq INTEGER NOT NULL, PRIMARY KEY (node, resource, stream));
             CREATE TABLE resources (resource TEXT NOT NULL PRIMARY KEY, node TEXT NOT NULL);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO records VALUES (?1, 'old', ?2, '{}', '2024-01-01T00:00:00Z')",
            [RESOURCE, NODE],
        )
        .unwrap();
        conn.execute("INSERT INTO resources VALUES (?1, ?2)", [RESOURCE, NODE])
            .unwrap();
    }
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let client = client(&pki.client(NODE));
    let push = Push::new(NODE, RESOURCE, &new_stream(), 1, vec![upsert("new", "{}")]);
    let ack = ack(push.completing_baseline().send(&client, &hub).await).await;
    assert_eq!((ack.records, ack.swept), (1, 1));
    let keys: Vec<String> = exported(&hub, RESOURCE)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(keys, ["new"]);
    assert_eq!(
        hub.store().await.schema_version().await.unwrap(),
        exchange_hub::store::SCHEMA_VERSION
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_node_header_that_differs_from_the_certificate_is_forbidden() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let client = client(&pki.client("node-a"));
    let push = Push::new(
        "node-b",
        RESOURCE,
        &new_stream(),
        1,
        vec![upsert("k", "{}")],
    );
    let error = refusal(push.send(&client, &hub).await, 403).await;
    assert_eq!(
        error,
        "certificate identifies node `node-a` but the batch claims node `node-b`"
    );
    assert!(exported(&hub, RESOURCE).await.is_empty());
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_resource_owned_by_another_node_is_forbidden() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let a = client(&pki.client("node-a"));
    let b = client(&pki.client("node-b"));
    ack(Push::new(
        "node-a",
        RESOURCE,
        &new_stream(),
        1,
        vec![upsert("k", r#"{"v":"a"}"#)],
    )
    .send(&a, &hub)
    .await)
    .await;
    let push = Push::new(
        "node-b",
        RESOURCE,
        &new_stream(),
        1,
        vec![upsert("k", r#"{"v":"b"}"#)],
    );
    let error = refusal(push.send(&b, &hub).await, 403).await;
    assert!(
        error.starts_with(
            "resource `330100-RSJ-0001` is provided by node `node-a`; node `node-b` may not push it"
        ),
        "{error}"
    );
    assert_eq!(
        exported(&hub, RESOURCE).await,
        vec![("k".to_owned(), r#"{"v":"a"}"#.to_owned())]
    );
    // node-b may still push a resource of its own.
    let own = Push::new(
        "node-b",
        "330100-SCJ-0002",
        &new_stream(),
        1,
        vec![upsert("k", "{}")],
    );
    ack(own.send(&b, &hub).await).await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn bad_certificates_are_refused_and_the_hub_keeps_serving() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let stranger_ca = Authority::generate("Some other CA").unwrap();
    let unknown = client(&pki.client_with(&stranger_ca, NODE, Validity::Current, "stranger"));
    let expired = client(&pki.client_with(&pki.ca, NODE, Validity::Expired, "expired"));
    let anonymous = client_from((*anonymous_config(&pki)).clone());
    let good = client(&pki.client(NODE));
    let push = Push::new(NODE, RESOURCE, &new_stream(), 1, vec![upsert("k", "{}")]);

    for (what, c) in [
        ("unknown CA", &unknown),
        ("expired", &expired),
        ("no client certificate", &anonymous),
    ] {
        let result = push.try_send(c, &hub).await;
        assert!(result.is_err(), "{what}: {:?}", result.map(|r| r.status()));
        let health = c.get(hub.url(HEALTH_PATH)).send().await;
        assert!(health.is_err(), "{what}: health answered");
        // The hub still serves a good client after each refusal.
        let ok = good.get(hub.url(HEALTH_PATH)).send().await.unwrap();
        assert_eq!(ok.status(), 200, "{what}");
        assert_eq!(ok.text().await.unwrap(), r#"{"status":"ok"}"#);
    }
    assert!(exported(&hub, RESOURCE).await.is_empty());
    ack(push.send(&good, &hub).await).await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_batches_are_refused_with_a_reason() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let client = client(&pki.client(NODE));
    let good = Push::new(NODE, RESOURCE, &new_stream(), 1, vec![upsert("k", "{}")]);

    let mut p = good.clone();
    p.digest = Some("0".repeat(64));
    let e = refusal(p.send(&client, &hub).await, 400).await;
    assert!(e.starts_with("content digest mismatch"), "{e}");

    let mut p = good.clone();
    p.count = Some("2".into());
    let e = refusal(p.send(&client, &hub).await, 400).await;
    assert_eq!(e, "header says 2 records, body holds 1");

    let mut p = good.clone();
    p.protocol = Some("2".into());
    let e = refusal(p.send(&client, &hub).await, 400).await;
    assert_eq!(
        e,
        "unsupported protocol version `2` in header `exchange-protocol`; this hub supports version 1"
    );

    let mut p = good.clone();
    p.protocol = None;
    let e = refusal(p.send(&client, &hub).await, 400).await;
    assert!(e.starts_with("missing header `exchange-protocol`"), "{e}");

    let mut p = good.clone();
    p.stream = "not-hex".into();
    let e = refusal(p.send(&client, &hub).await, 400).await;
    assert!(e.contains("32 hex digits"), "{e}");

    let mut p = good.clone();
    p.seq = 0;
    let e = refusal(p.send(&client, &hub).await, 400).await;
    assert!(
        e.starts_with("header `exchange-batch-seq` must be between 1"),
        "{e}"
    );

    let mut p = good.clone();
    p.body = Some(b"not zstd at all".to_vec());
    let e = refusal(p.send(&client, &hub).await, 400).await;
    assert!(e.starts_with("body is not valid zstd"), "{e}");

    // A line whose key is a number: the reason must not quote the value.
    let line = b"{\"op\":\"upsert\",\"key\":110105194912310021,\"fields\":{}}\n";
    let mut p = good.clone();
    p.body = Some(batch::compress(line));
    p.digest = Some(batch::digest_hex(line));
    let e = refusal(p.send(&client, &hub).await, 400).await;
    assert!(e.starts_with("line 1: invalid type"), "{e}");
    assert!(!e.contains("110105194912310021"), "{e}");

    let r = client.get(hub.url("/v2/batches")).send().await.unwrap();
    let e = refusal(r, 404).await;
    assert!(e.starts_with("no endpoint `GET /v2/batches`"), "{e}");
    let r = client
        .get(hub.url(batch::BATCHES_PATH))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    refusal(r, 405).await;

    assert!(exported(&hub, RESOURCE).await.is_empty());
    ack(good.send(&client, &hub).await).await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn oversize_bodies_are_refused_with_413() {
    let pki = Pki::new();
    let limit = 4096;
    let hub = Hub::start_with(&pki, pki.sqlite(), limit).await;
    let client = client(&pki.client(NODE));
    let stream = new_stream();

    // Incompressible: larger than the limit on the wire.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: String = (0..4 * limit)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .filter(|c| *c != '"' && *c != '\\')
        .collect();
    let big = Push::new(
        NODE,
        RESOURCE,
        &stream,
        1,
        vec![upsert(
            "k",
            &serde_json::json!({ "noise": noise }).to_string(),
        )],
    );
    let e = refusal(big.send(&client, &hub).await, 413).await;
    assert!(e.contains("limit of 4096 bytes"), "{e}");

    // Small on the wire, too large once decompressed.
    let bomb = Push::new(
        NODE,
        RESOURCE,
        &stream,
        1,
        vec![upsert(
            "k",
            &serde_json::json!({ "a": "a".repeat(10 * limit) }).to_string(),
        )],
    );
    let mut ndjson = Vec::new();
    batch::push_line(&mut ndjson, &bomb.records[0]);
    assert!(batch::compress(&ndjson).len() < limit);
    refusal(bomb.send(&client, &hub).await, 413).await;

    assert!(exported(&hub, RESOURCE).await.is_empty());
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn http2_is_offered_by_alpn() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let client = client_from(h2_config(&pki.client(NODE)));
    let response = Push::new(NODE, RESOURCE, &new_stream(), 1, vec![upsert("k", "{}")])
        .send(&client, &hub)
        .await;
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(ack(response).await.status, AckStatus::Applied);
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_then_returns() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let tls = pki.client(NODE);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        exchange_protocol::tls::hub_client_config(&tls).unwrap(),
    ));
    let tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let mut conn = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();

    let stream = new_stream();
    let mut ndjson = Vec::new();
    batch::push_line(&mut ndjson, &upsert("k", r#"{"v":1}"#));
    let body = batch::compress(&ndjson);
    let head = format!(
        "POST /v1/batches HTTP/1.1\r\nhost: 127.0.0.1\r\nexchange-protocol: 1\r\nexchange-node: {NODE}\r\nexchange-resource: {RESOURCE}\r\nexchange-stream: {stream}\r\nexchange-batch-seq: 1\r\nexchange-record-count: 1\r\nexchange-content-sm3: {}\r\ncontent-type: application/x-ndjson\r\ncontent-encoding: zstd\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        batch::digest_hex(&ndjson),
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.flush().await.unwrap();
    // "100 Continue" means the handler is reading the body: the request is in flight.
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
            let mut buf = [0u8; 256];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no 100 Continue before the deadline");
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 100 Continue"));

    let addr = hub.addr;
    let stopping = tokio::spawn(hub.stop());
    // The listener closes: new connections are refused.
    eventually("the listener to close", || async {
        tokio::net::TcpStream::connect(addr).await.err().map(|_| ())
    })
    .await;
    conn.write_all(&body).await.unwrap();
    conn.flush().await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, conn.read_to_end(&mut response))
        .await
        .expect("no response before the deadline")
        .ok();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains(r#""status":"applied""#), "{response}");
    stopping.await.unwrap().unwrap();
}
