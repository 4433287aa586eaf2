//! The reference hub against docs/PROTOCOL.md, driven only through what the text says.
//!
//! Every request here is HTTP/1.1 written by hand from §3–§4 (request line, headers, body
//! framing) over a TLS connection with the node's certificate (§2): the NDJSON is built
//! byte by byte, compressed with the `zstd` crate and digested with the `sm3` crate, not with
//! the workspace's batch code, and answers are read as raw bytes and checked against §6–§7.
//! So a hub on another platform can be held to the same list: each test names one promise.
//! The one exception is the TLS client configuration, which comes from the protocol crate's
//! `tls` module (the workspace builds every rustls configuration in one place).

use std::sync::Arc;

use exchange_protocol::tls::{MinTlsVersion, MutualTls};
use exchange_tests::DEADLINE;
use exchange_tests::scene::{NODE, Scene};
use serde_json::Value;
use sm3::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

const CODE: &str = "330100-RSJ-0700";

/// One HTTP/1.1 answer as it came off the wire.
#[derive(Debug)]
struct Answer {
    /// The status code.
    status: u16,
    /// Header names in lower case, values trimmed, in order.
    headers: Vec<(String, String)>,
    /// The body (empty for `HEAD`).
    body: Vec<u8>,
}

impl Answer {
    /// The first header `name` (lower case).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, checking §7's content type.
    fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self}"
        );
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {self}"))
    }

    /// An error body (§7): `error` is one non-empty sentence.
    fn error(&self) -> Value {
        let body = self.json();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{self}"
        );
        body
    }

    /// Whether the hub said it closes the connection.
    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// A TLS connection to the hub with the node's certificate, speaking HTTP/1.1 by hand.
struct Connection {
    /// The TLS stream.
    tls: TlsStream<TcpStream>,
    /// Bytes read past the last answer.
    buffered: Vec<u8>,
}

impl Connection {
    async fn open(scene: &Scene) -> Connection {
        let node = MutualTls {
            ca: scene.pki.ca_cert.clone(),
            cert: scene.pki.node_cert.clone(),
            key: scene.pki.node_key.clone(),
            min_version: MinTlsVersion::Tls13,
            crls: Vec::new(),
        };
        let config =
            exchange_protocol::tls::hub_client_config(&node).expect("the node's TLS configuration");
        assert!(config.alpn_protocols.is_empty(), "§2: no ALPN, so HTTP/1.1");
        let tcp = TcpStream::connect(scene.hub.addr)
            .await
            .expect("connect to the hub");
        let name = ServerName::try_from("127.0.0.1").expect("an IP address");
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("the TLS handshake with the hub");
        Connection {
            tls,
            buffered: Vec::new(),
        }
    }

    /// Writes `head` (request line and headers, without the blank line) and `body`.
    async fn send(&mut self, head: &str, body: &[u8]) {
        let mut request = head.replace('\n', "\r\n").into_bytes();
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body);
        self.tls.write_all(&request).await.expect("send a request");
        self.tls.flush().await.expect("flush a request");
    }

    /// Reads one answer (to a `HEAD` when `head_request`: no body).
    async fn answer(&mut self, head_request: bool) -> Answer {
        tokio::time::timeout(DEADLINE, self.read_answer(head_request))
            .await
            .expect("the hub answers within the deadline")
    }

    async fn read_answer(&mut self, head_request: bool) -> Answer {
        let end = loop {
            if let Some(at) = find(&self.buffered, b"\r\n\r\n") {
                break at;
            }
            assert!(
                self.fill().await > 0,
                "the connection closed before an answer"
            );
        };
        let head = String::from_utf8(self.buffered[..end].to_vec()).expect("an ASCII head");
        self.buffered.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().expect("a status code");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request {
            return answer;
        }
        if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse().expect("a content length");
            answer.body = self.take(length).await;
        } else if answer
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            answer.body = self.chunked().await;
        } else {
            while self.fill().await > 0 {}
            answer.body = std::mem::take(&mut self.buffered);
        }
        answer
    }

    /// Reads more bytes into the buffer; 0 at the end of the stream (or a reset).
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.tls.read(&mut chunk).await.unwrap_or(0);
        self.buffered.extend_from_slice(&chunk[..n]);
        n
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buffered.len() < n {
            assert!(self.fill().await > 0, "the connection closed within a body");
        }
        self.buffered.drain(..n).collect()
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(at) = find(&self.buffered, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buffered[..at]).into_owned();
                self.buffered.drain(..at + 2);
                return line;
            }
            assert!(
                self.fill().await > 0,
                "the connection closed within a chunk"
            );
        }
    }

    async fn chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size = self.line().await;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .expect("a chunk size");
            if size == 0 {
                while !self.line().await.is_empty() {}
                return body;
            }
            body.extend(self.take(size).await);
            self.line().await;
        }
    }

    /// Whether the hub closed the connection: the next read ends the stream (a TLS
    /// close_notify or the TCP end), within the deadline.
    async fn is_closed_by_the_hub(&mut self) -> bool {
        let read = async {
            let mut byte = [0u8; 1];
            loop {
                match self.tls.read(&mut byte).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        };
        tokio::time::timeout(DEADLINE, read).await.unwrap_or(false)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// SM3 (GB/T 32905-2016) as 64 lower-case hex digits.
fn sm3_hex(data: &[u8]) -> String {
    hex::encode(sm3::Sm3::digest(data))
}

/// A batch as §4 builds it: the NDJSON as given, its SM3, its zstd.
struct Batch {
    /// `exchange-stream`.
    stream: String,
    /// `exchange-batch-seq`, as text (so a test can write it wrongly).
    seq: String,
    /// `exchange-record-count`, as text.
    count: String,
    /// The NDJSON bytes.
    ndjson: Vec<u8>,
    /// `exchange-content-sm3`; the NDJSON's unless a test changes it.
    digest: String,
    /// Extra header lines.
    extra: Vec<String>,
}

impl Batch {
    fn new(stream: &str, seq: u64, count: u64, ndjson: &[u8]) -> Batch {
        Batch {
            stream: stream.to_owned(),
            seq: seq.to_string(),
            count: count.to_string(),
            ndjson: ndjson.to_vec(),
            digest: sm3_hex(ndjson),
            extra: Vec::new(),
        }
    }

    /// The zstd body (§4.2 step 2).
    fn body(&self) -> Vec<u8> {
        zstd::bulk::compress(&self.ndjson, 3).expect("zstd")
    }

    /// Request line and headers (§4.1, §8) for a body framed by `framing`.
    fn head(&self, framing: &str) -> String {
        let mut head = format!(
            "POST /v1/batches HTTP/1.1\n\
             host: 127.0.0.1\n\
             exchange-protocol: 1\n\
             exchange-node: {NODE}\n\
             exchange-resource: {CODE}\n\
             exchange-stream: {}\n\
             exchange-batch-seq: {}\n\
             exchange-record-count: {}\n\
             exchange-content-sm3: {}\n\
             idempotency-key: {NODE}/{CODE}/{}/{}\n\
             content-type: application/x-ndjson\n\
             content-encoding: zstd\n\
             {framing}",
            self.stream, self.seq, self.count, self.digest, self.stream, self.seq
        );
        for line in &self.extra {
            head.push('\n');
            head.push_str(line);
        }
        head
    }

    /// Sends the batch with a `content-length` and reads the answer.
    async fn post(&self, connection: &mut Connection) -> Answer {
        let body = self.body();
        let head = self.head(&format!("content-length: {}", body.len()));
        connection.send(&head, &body).await;
        connection.answer(false).await
    }
}

/// A fresh stream id: 32 hex digits (§1).
fn new_stream(tag: u8) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos();
    format!("{tag:02x}{:030x}", nanos & ((1u128 << 120) - 1))
}

/// Checks an Ack (§7): its required members, their types, and `records`.
#[track_caller]
fn assert_ack(answer: &Answer, status: &str, seq: u64, records: u64, digest: &str) -> Value {
    assert_eq!(answer.status, 200, "{answer}");
    let ack = answer.json();
    assert_eq!(ack["status"], status, "{answer}");
    for member in ["seq", "last_seq", "records"] {
        assert!(ack[member].is_u64(), "`{member}` is an integer: {answer}");
    }
    assert_eq!(ack["seq"], seq, "{answer}");
    assert_eq!(ack["last_seq"], seq, "{answer}");
    assert_eq!(ack["records"], records, "{answer}");
    assert_eq!(ack["last_digest"], digest, "{answer}");
    ack
}

const UPSERT_A: &str = r#"{"op":"upsert","key":"a","fields":{"n":3010.0,"d":"12.3400"}}"#;
const UPSERT_B: &str = r#"{"op":"upsert","key":"b","fields":{"n":1e+300}}"#;

#[tokio::test]
async fn health_answers_get_with_ok_and_head_with_the_same_head_and_no_body() {
    let scene = Scene::start().await;
    let mut c = Connection::open(&scene).await;
    c.send("GET /v1/health HTTP/1.1\nhost: 127.0.0.1", b"")
        .await;
    let get = c.answer(false).await;
    assert_eq!(get.status, 200, "{get}");
    assert_eq!(get.json(), serde_json::json!({"status": "ok"}));
    // HEAD on the same connection: the same status and head, no body; the connection goes on.
    c.send("HEAD /v1/health HTTP/1.1\nhost: 127.0.0.1", b"")
        .await;
    let head = c.answer(true).await;
    assert_eq!(head.status, 200, "{head}");
    for name in ["content-type", "content-length"] {
        assert_eq!(head.header(name), get.header(name), "{name}: {head}");
    }
    c.send("GET /v1/health HTTP/1.1\nhost: 127.0.0.1", b"")
        .await;
    let again = c.answer(false).await;
    assert_eq!(
        again.status, 200,
        "no body followed the HEAD answer: {again}"
    );
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405_with_allow_and_an_error_body() {
    let scene = Scene::start().await;
    let mut c = Connection::open(&scene).await;
    let cases = [
        ("GET /v2/batches", 404, None),
        ("GET /v1/batches", 405, Some("POST")),
        ("POST /v1/health", 405, Some("GET, HEAD")),
        ("GET /v1/catalogue", 405, Some("PUT")),
    ];
    for (line, status, allow) in cases {
        c.send(
            &format!("{line} HTTP/1.1\nhost: 127.0.0.1\ncontent-length: 0"),
            b"",
        )
        .await;
        let answer = c.answer(false).await;
        assert_eq!(answer.status, status, "{line}: {answer}");
        assert_eq!(answer.header("allow"), allow, "{line}: {answer}");
        answer.error();
        assert!(!answer.closes(), "no body was left unread: {answer}");
    }
    // With a body the hub does not read, the connection ends after the answer (§6).
    c.send(
        "POST /v2/batches HTTP/1.1\nhost: 127.0.0.1\ncontent-length: 5",
        b"hello",
    )
    .await;
    let answer = c.answer(false).await;
    assert_eq!(answer.status, 404, "{answer}");
    assert!(answer.closes(), "{answer}");
    assert!(c.is_closed_by_the_hub().await);
}

#[tokio::test]
async fn a_batch_built_from_the_text_is_applied_and_its_redelivery_acknowledged_again() {
    let scene = Scene::start().await;
    let stream = new_stream(1);
    let ndjson = format!("{UPSERT_A}\n{UPSERT_B}\n");
    let batch = Batch::new(&stream, 1, 2, ndjson.as_bytes());
    let mut c = Connection::open(&scene).await;
    let applied = batch.post(&mut c).await;
    let ack = assert_ack(&applied, "applied", 1, 2, &batch.digest);
    assert!(
        ack.get("swept").is_none(),
        "`swept` is omitted when 0: {applied}"
    );
    assert!(!applied.closes(), "{applied}");
    // The same batch again, on the same connection: nothing changes, the same mark and digest.
    let duplicate = batch.post(&mut c).await;
    assert_ack(&duplicate, "duplicate", 1, 0, &batch.digest);
    // Numbers are kept as sent (§4.5).
    let rows = scene.hub.export(CODE).await;
    let text = serde_json::to_string(&rows).unwrap();
    assert!(
        text.contains("3010.0") && text.contains("1e+300") && text.contains("\"12.3400\""),
        "{text}"
    );
}

#[tokio::test]
async fn a_seq_past_the_mark_is_refused_with_409_and_the_mark_and_nothing_is_applied() {
    let scene = Scene::start().await;
    let stream = new_stream(2);
    let mut c = Connection::open(&scene).await;
    // The first batch of an unknown stream must be seq 1.
    let third = Batch::new(&stream, 3, 1, format!("{UPSERT_A}\n").as_bytes());
    let gap = third.post(&mut c).await;
    assert_eq!(gap.status, 409, "{gap}");
    assert_eq!(gap.error()["last_seq"], 0, "{gap}");
    let first = Batch::new(&stream, 1, 1, format!("{UPSERT_B}\n").as_bytes());
    assert_ack(&first.post(&mut c).await, "applied", 1, 1, &first.digest);
    let gap = third.post(&mut c).await;
    assert_eq!(gap.status, 409, "{gap}");
    assert_eq!(gap.error()["last_seq"], 1, "{gap}");
    assert!(gap.error().get("record").is_none(), "{gap}");
    let rows = scene.hub.export(CODE).await;
    assert_eq!(rows.len(), 1, "only batch 1 was applied: {rows:?}");
    // In order, it is applied.
    let second = Batch::new(&stream, 2, 0, b"");
    assert_ack(&second.post(&mut c).await, "applied", 2, 0, &second.digest);
    assert_ack(&third.post(&mut c).await, "applied", 3, 1, &third.digest);
    // Batch 1 redelivered late: a duplicate carrying the mark as it stands now (§5).
    let late = first.post(&mut c).await;
    assert_eq!(late.status, 200, "{late}");
    let ack = late.json();
    assert_eq!(
        (
            &ack["status"],
            &ack["seq"],
            &ack["records"],
            &ack["last_seq"]
        ),
        (&"duplicate".into(), &1.into(), &0.into(), &3.into()),
        "{late}"
    );
    assert_eq!(ack["last_digest"], third.digest, "{late}");
}

#[tokio::test]
async fn a_signed_or_zero_padded_decimal_header_is_refused_with_400_and_the_connection_closed() {
    let scene = Scene::start().await;
    let stream = new_stream(3);
    let cases: [(&str, &str, &str); 7] = [
        ("exchange-batch-seq", "+1", "1"),
        ("exchange-batch-seq", "01", "1"),
        ("exchange-batch-seq", "-1", "1"),
        ("exchange-batch-seq", "0", "1"),
        ("exchange-batch-seq", "9223372036854775808", "1"),
        ("exchange-record-count", "1", "+1"),
        ("exchange-record-count", "1", "01"),
    ];
    for (name, seq, count) in cases {
        let mut batch = Batch::new(&stream, 1, 1, format!("{UPSERT_A}\n").as_bytes());
        (batch.seq, batch.count) = (seq.to_owned(), count.to_owned());
        let mut c = Connection::open(&scene).await;
        let refused = batch.post(&mut c).await;
        assert_eq!(refused.status, 400, "{name}: {seq}/{count}: {refused}");
        let error = refused.error();
        assert!(
            error["error"].as_str().unwrap().contains(name),
            "names the header: {refused}"
        );
        // Answered on its head alone: the body was not read, so the connection ends (§6).
        assert!(refused.closes(), "{refused}");
        assert!(c.is_closed_by_the_hub().await, "{name}");
    }
    // Nothing was applied: the well-formed batch 1 is the first of its stream.
    let batch = Batch::new(&stream, 1, 1, format!("{UPSERT_A}\n").as_bytes());
    let mut c = Connection::open(&scene).await;
    assert_ack(&batch.post(&mut c).await, "applied", 1, 1, &batch.digest);
}

#[tokio::test]
async fn a_content_length_over_the_limit_is_refused_413_before_the_body_is_sent() {
    let scene = Scene::start().await;
    let batch = Batch::new(&new_stream(4), 1, 0, b"");
    let mut c = Connection::open(&scene).await;
    // Only the head: the answer cannot wait for the 1 GiB it announces.
    c.send(&batch.head("content-length: 1073741824"), b"").await;
    let refused = c.answer(false).await;
    assert_eq!(refused.status, 413, "{refused}");
    refused.error();
    assert!(refused.closes(), "{refused}");
    assert!(c.is_closed_by_the_hub().await);
}

#[tokio::test]
async fn crlf_line_endings_and_blank_lines_are_accepted_and_not_counted() {
    let scene = Scene::start().await;
    let ndjson = format!("\r\n{UPSERT_A}\r\n \t\r\n\n{UPSERT_B}\r\n  ");
    let batch = Batch::new(&new_stream(5), 1, 2, ndjson.as_bytes());
    let mut c = Connection::open(&scene).await;
    assert_ack(&batch.post(&mut c).await, "applied", 1, 2, &batch.digest);
    let keys: Vec<Value> = scene
        .hub
        .export(CODE)
        .await
        .iter()
        .map(|r| r["key"].clone())
        .collect();
    assert_eq!(keys, ["a", "b"]);
}

#[tokio::test]
async fn a_refused_line_is_named_by_its_index_counting_blank_lines() {
    let scene = Scene::start().await;
    // Line 0 blank, line 1 a good record, line 2 an upsert without fields.
    let ndjson = format!("\n{UPSERT_A}\n{{\"op\":\"upsert\",\"key\":\"c\"}}\n");
    let batch = Batch::new(&new_stream(6), 1, 2, ndjson.as_bytes());
    let mut c = Connection::open(&scene).await;
    let refused = batch.post(&mut c).await;
    assert_eq!(refused.status, 400, "{refused}");
    assert_eq!(refused.error()["record"], 2, "{refused}");
    // Refused after the body was read: the connection stays open.
    assert!(!refused.closes(), "{refused}");
    let mut wrong = Batch::new(&batch.stream, 1, 1, format!("{UPSERT_A}\n").as_bytes());
    wrong.digest = sm3_hex(b"something else");
    let refused = wrong.post(&mut c).await;
    assert_eq!(refused.status, 400, "{refused}");
    assert!(
        refused.error().get("record").is_none(),
        "a digest is about the batch: {refused}"
    );
    assert!(scene.hub.export(CODE).await.is_empty());
}

#[tokio::test]
async fn flags_on_a_delete_are_accepted_and_ignored() {
    let scene = Scene::start().await;
    let stream = new_stream(7);
    let mut c = Connection::open(&scene).await;
    let upsert = r#"{"op":"upsert","key":"a","fields":{"n":1},"flags":["invalid_key"]}"#;
    let first = Batch::new(&stream, 1, 1, format!("{upsert}\n").as_bytes());
    assert_ack(&first.post(&mut c).await, "applied", 1, 1, &first.digest);
    let rows = scene.hub.export(CODE).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let delete = r#"{"op":"delete","key":"a","flags":["invalid_key"]}"#;
    let second = Batch::new(&stream, 2, 1, format!("{delete}\n").as_bytes());
    assert_ack(&second.post(&mut c).await, "applied", 2, 1, &second.digest);
    assert!(scene.hub.export(CODE).await.is_empty());
    // Of another type than an array of strings, they are refused as on an upsert.
    let delete = r#"{"op":"delete","key":"a","flags":"invalid_key"}"#;
    let third = Batch::new(&stream, 3, 1, format!("{delete}\n").as_bytes());
    let refused = third.post(&mut c).await;
    assert_eq!(refused.status, 400, "{refused}");
    assert_eq!(refused.error()["record"], 0, "{refused}");
}

#[tokio::test]
async fn an_empty_batch_with_the_baseline_mark_sweeps_the_other_streams_records() {
    let scene = Scene::start().await;
    let mut c = Connection::open(&scene).await;
    // An older stream wrote `a`; the new stream's baseline re-sends only `b`.
    let old = Batch::new(&new_stream(8), 1, 1, format!("{UPSERT_A}\n").as_bytes());
    assert_ack(&old.post(&mut c).await, "applied", 1, 1, &old.digest);
    let stream = new_stream(18);
    let first = Batch::new(&stream, 1, 1, format!("{UPSERT_B}\n").as_bytes());
    assert_ack(&first.post(&mut c).await, "applied", 1, 1, &first.digest);
    // The completing mark on an extra empty batch (§5.1), its body zero bytes (§4.2).
    let mut last = Batch::new(&stream, 2, 0, b"");
    last.extra.push("exchange-baseline: complete".into());
    c.send(&last.head("content-length: 0"), b"").await;
    let answer = c.answer(false).await;
    let ack = assert_ack(&answer, "applied", 2, 0, &last.digest);
    assert_eq!(ack["swept"], 1, "{answer}");
    let keys: Vec<Value> = scene
        .hub
        .export(CODE)
        .await
        .iter()
        .map(|r| r["key"].clone())
        .collect();
    assert_eq!(keys, ["b"]);
    // Resent, it is a duplicate and sweeps nothing again.
    c.send(&last.head("content-length: 0"), b"").await;
    let answer = c.answer(false).await;
    let ack = assert_ack(&answer, "duplicate", 2, 0, &last.digest);
    assert!(ack.get("swept").is_none(), "{answer}");
    let mut wrong = Batch::new(&stream, 3, 0, b"");
    wrong.extra.push("exchange-baseline: partial".into());
    let refused = wrong.post(&mut c).await;
    assert_eq!(refused.status, 400, "{refused}");
}

#[tokio::test]
async fn a_chunked_body_is_read_as_the_same_batch() {
    let scene = Scene::start().await;
    let batch = Batch::new(&new_stream(9), 1, 1, format!("{UPSERT_A}\n").as_bytes());
    let body = batch.body();
    let (one, two) = body.split_at(body.len() / 2);
    let mut framed = Vec::new();
    for part in [one, two] {
        framed.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        framed.extend_from_slice(part);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    let mut c = Connection::open(&scene).await;
    c.send(&batch.head("transfer-encoding: chunked"), &framed)
        .await;
    assert_ack(&c.answer(false).await, "applied", 1, 1, &batch.digest);
}

#[tokio::test]
async fn identity_is_checked_before_the_other_headers() {
    let scene = Scene::start().await;
    let batch = Batch::new(&new_stream(10), 1, 1, format!("{UPSERT_A}\n").as_bytes());
    let body = batch.body();
    let head = batch.head(&format!("content-length: {}", body.len()));
    // §6 check 2: no protocol version (and a malformed seq, checked later).
    let without_version = head
        .replace("exchange-protocol: 1\n", "")
        .replace("exchange-batch-seq: 1\n", "exchange-batch-seq: +1\n");
    // §6 check 3: another node than the certificate's.
    let other_node = head.replace(
        &format!("exchange-node: {NODE}\n"),
        "exchange-node: scj-node-02\n",
    );
    for (head, status, says) in [
        (without_version, 400, "exchange-protocol"),
        (other_node, 403, "scj-node-02"),
    ] {
        let mut c = Connection::open(&scene).await;
        c.send(&head, &body).await;
        let refused = c.answer(false).await;
        assert_eq!(refused.status, status, "{refused}");
        let error = refused.error();
        assert!(error["error"].as_str().unwrap().contains(says), "{refused}");
    }
}

/// The §4.7 signature of `batch` made by `openssl` with the private key in `key`: the message
/// written from the text, signed with `openssl dgst -sha256 -sign`, as the header's value.
fn openssl_signature(key: &std::path::Path, batch: &Batch) -> String {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let message = format!(
        "exchange-batch-signature-v1\n{NODE}\n{CODE}\n{}\n{}\n{}\n",
        batch.stream, batch.seq, batch.digest
    );
    std::fs::write(dir.path().join("message"), message).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .args(["-out", "sig", "message"])
        .current_dir(dir.path())
        .output()
        .expect("openssl (the test needs it, as `exchange-hub prove`'s users do)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sig = std::fs::read(dir.path().join("sig")).unwrap();
    format!(
        "exchange-signature: ecdsa-p256-sha256:{}",
        base64::engine::general_purpose::STANDARD.encode(sig)
    )
}

#[tokio::test]
async fn a_batch_signed_by_openssl_from_the_text_is_applied_and_a_forged_signature_refused() {
    let scene = Scene::start().await;
    let stream = new_stream(9);
    let ndjson = format!("{UPSERT_A}\n");
    let mut forged = Batch::new(&stream, 1, 1, ndjson.as_bytes());
    // Signed with another key (the hub's): the certificate the connection presents does not
    // verify it.
    forged
        .extra
        .push(openssl_signature(&scene.pki.hub_key, &forged));
    let mut c = Connection::open(&scene).await;
    let refused = forged.post(&mut c).await;
    assert_eq!(refused.status, 400, "{refused}");
    assert!(
        refused.error()["error"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{refused}"
    );
    assert!(scene.hub.export(CODE).await.is_empty(), "nothing applied");

    let mut signed = Batch::new(&stream, 1, 1, ndjson.as_bytes());
    signed
        .extra
        .push(openssl_signature(&scene.pki.node_key, &signed));
    let mut c = Connection::open(&scene).await;
    assert_ack(&signed.post(&mut c).await, "applied", 1, 1, &signed.digest);

    // Another seq under the same signature: the signature binds the batch's place.
    let mut moved = Batch::new(&stream, 2, 1, ndjson.as_bytes());
    moved.extra.push(signed.extra[0].clone());
    let refused = moved.post(&mut c).await;
    assert_eq!(refused.status, 400, "{refused}");
}
