//! `[limits]` under load: many slow uploads over real mutual TLS, on loopback only.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use exchange_hub::config::Limits;
use exchange_protocol::batch::AckStatus;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "slow-node-01";
const RESOURCE: &str = "330100-SLOW-0001";
/// Slow clients started at once.
const CLIENTS: usize = 100;

/// What one slow client saw.
struct Seen {
    /// The status line of the answer (empty if none).
    status: String,
    /// From the end of the request headers to the answer.
    waited: Duration,
    /// The hub closed the connection after answering.
    closed: bool,
}

/// Sends the headers of a 4 KiB batch, then one body byte every 100 ms (at most 4096 bytes),
/// until the hub answers; then reads to the end of the connection.
async fn slow_upload(connector: tokio_rustls::TlsConnector, addr: std::net::SocketAddr) -> Seen {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let conn = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(conn);
    let head = format!(
        "POST /v1/batches HTTP/1.1\r\nhost: 127.0.0.1\r\nexchange-protocol: 1\r\nexchange-node: {NODE}\r\nexchange-resource: {RESOURCE}\r\nexchange-stream: {}\r\nexchange-batch-seq: 1\r\nexchange-record-count: 1\r\nexchange-content-sm3: {}\r\ncontent-type: application/x-ndjson\r\ncontent-encoding: zstd\r\ncontent-length: 4096\r\n\r\n",
        new_stream(),
        "0".repeat(64),
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    writer.flush().await.unwrap();
    let sent = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..4096 {
            if writer.write_all(b"x").await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let mut waited = None;
    let mut buf = [0u8; 1024];
    let closed = loop {
        match reader.read(&mut buf).await {
            Ok(0) => break true,
            Ok(n) => {
                waited.get_or_insert_with(|| sent.elapsed());
                answer.extend_from_slice(&buf[..n]);
            }
            Err(_) => break true,
        }
    };
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    Seen {
        status: answer.lines().next().unwrap_or_default().to_owned(),
        waited: waited.unwrap_or_else(|| sent.elapsed()),
        closed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_slow_uploads_stay_within_the_limits_and_normal_clients_are_served_after() {
    let pki = Pki::new();
    let limits = Limits {
        max_batch_bytes: 64 * 1024,
        max_concurrent_requests: 8,
        max_connections: 50,
        body_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let hub = Hub::start_limited(&pki, pki.sqlite(), limits).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        exchange_protocol::tls::hub_client_config(&pki.client(NODE)).unwrap(),
    ));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(slow_upload(connector.clone(), hub.addr)))
        .collect();
    let mut seen = Vec::new();
    for client in clients {
        seen.push(
            tokio::time::timeout(DEADLINE, client)
                .await
                .expect("a slow client got no answer before the deadline")
                .unwrap(),
        );
    }

    let timed_out: Vec<&Seen> = seen.iter().filter(|s| s.status.contains(" 408 ")).collect();
    let busy = seen.iter().filter(|s| s.status.contains(" 503 ")).count();
    assert_eq!(
        timed_out.len() + busy,
        CLIENTS,
        "every slow client is answered 408 or 503: {:?}",
        seen.iter().map(|s| &s.status).collect::<Vec<_>>()
    );
    assert!(!timed_out.is_empty());
    for s in &timed_out {
        assert!(
            s.waited < limits.body_timeout + Duration::from_secs(3),
            "a slow client held a slot for {:?}",
            s.waited
        );
    }
    assert!(
        seen.iter().all(|s| s.closed),
        "every slow connection is closed"
    );
    let load = &hub.load;
    assert!(load.requests.peak() <= limits.max_concurrent_requests);
    assert!(load.connections.peak() <= limits.max_connections);
    assert!(
        load.body_bytes.peak() <= limits.max_concurrent_requests * limits.max_batch_bytes,
        "{} body bytes held at once",
        load.body_bytes.peak()
    );
    assert_eq!(
        load.timed_out.load(Ordering::SeqCst),
        timed_out.len() as u64
    );
    assert_eq!(load.busy.load(Ordering::SeqCst), busy as u64);
    eventually("every request slot to be free", || async {
        (load.requests.now() == 0 && load.body_bytes.now() == 0).then_some(())
    })
    .await;

    // A normal client is served afterwards.
    let client = client(&pki.client(NODE));
    let push = Push::new(NODE, RESOURCE, &new_stream(), 1, vec![upsert("a", "{}")]);
    assert_eq!(
        ack(push.send(&client, &hub).await).await.status,
        AckStatus::Applied
    );
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn over_the_request_limit_the_hub_answers_503_with_retry_after_at_once() {
    let pki = Pki::new();
    let limits = Limits {
        max_concurrent_requests: 1,
        body_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let hub = Hub::start_limited(&pki, pki.sqlite(), limits).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        exchange_protocol::tls::hub_client_config(&pki.client(NODE)).unwrap(),
    ));
    // One slow upload holds the only slot…
    let slow = tokio::spawn(slow_upload(connector, hub.addr));
    eventually("the slow upload to hold the slot", || async {
        (hub.load.requests.now() == 1).then_some(())
    })
    .await;
    // … so a normal batch is refused at once, with Retry-After.
    let client = client(&pki.client(NODE));
    let push = Push::new(NODE, RESOURCE, &new_stream(), 1, vec![upsert("a", "{}")]);
    let response = push.send(&client, &hub).await;
    assert_eq!(response.headers()["retry-after"], "5");
    let error = refusal(response, 503).await;
    assert!(error.contains("limit of 1 batch requests"), "{error}");
    // The slow upload loses its slot at the body timeout.
    let slow = tokio::time::timeout(DEADLINE, slow).await.unwrap().unwrap();
    assert!(slow.status.starts_with("HTTP/1.1 408"), "{}", slow.status);
    assert!(slow.closed);
    eventually("the slot to be free again", || async {
        (hub.load.requests.now() == 0).then_some(())
    })
    .await;
    assert_eq!(
        ack(push.send(&client, &hub).await).await.status,
        AckStatus::Applied
    );
    hub.stop().await.unwrap();
}

/// `require_signatures = true`: an unsigned batch is refused before its body is read, and the
/// same batch signed with the node's key is applied.
#[tokio::test]
async fn a_hub_requiring_signatures_refuses_an_unsigned_batch_and_applies_a_signed_one() {
    let pki = Pki::new();
    let limits = Limits {
        require_signatures: true,
        ..Limits::default()
    };
    let hub = Hub::start_limited(&pki, pki.sqlite(), limits).await;
    let tls = pki.client("node-a");
    let client = client(&tls);
    let stream = new_stream();
    let push = Push::new(
        "node-a",
        "R-SIG",
        &stream,
        1,
        vec![upsert("k1", r#"{"a":1}"#)],
    );
    let refused = refusal(push.send(&client, &hub).await, 400).await;
    assert!(
        refused.contains("requires the node's signature"),
        "{refused}"
    );
    assert!(exported(&hub, "R-SIG").await.is_empty());
    let applied = ack(push.signed(&tls).send(&client, &hub).await).await;
    assert_eq!(applied.status, AckStatus::Applied);
    assert_eq!(exported(&hub, "R-SIG").await.len(), 1);
}
