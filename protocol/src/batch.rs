//! The wire format of a batch (docs/PROTOCOL.md is the normative text).
//!
//! A batch is `POST /v1/batches` with an NDJSON body compressed with zstd. Each line is one
//! [`Record`]: `{"op":"upsert","key":K,"fields":{…}}` or `{"op":"delete","key":K}`. Records of
//! one batch are applied in order. The batch is identified by (node, resource, stream, seq):
//! `stream` names one generation of an agent queue for a resource (a new data directory or a
//! resync draws a new one), `seq` counts that stream's batches of that resource from 1
//! without gaps. The content digest is SM3 over the uncompressed NDJSON. A batch may hold 0
//! records (an empty body, or a zstd frame of nothing).
//!
//! Invariants: the hub acknowledges (HTTP 200 with an [`Ack`]) only after the batch is
//! committed; a batch whose seq is not above the last applied seq of its (node, resource,
//! stream) is acknowledged as a duplicate without being applied again; a batch whose seq is
//! above `last_seq + 1` is refused (409, [`ErrorBody::last_seq`]) and nothing is applied. A
//! batch refused because of one of its lines (400, [`ErrorBody::record`]) had nothing applied
//! either: the agent removes that line, quarantines its record and sends the rest under the
//! same seq ([`remove_line`]).

use std::io::Read;

use serde::{Deserialize, Serialize};

/// Path of the batch endpoint.
pub const BATCHES_PATH: &str = "/v1/batches";
/// Path of the health endpoint.
pub const HEALTH_PATH: &str = "/v1/health";
/// Content type of a batch body before compression.
pub const CONTENT_TYPE: &str = "application/x-ndjson";
/// Content encoding of a batch body.
pub const CONTENT_ENCODING: &str = "zstd";
/// Largest uncompressed batch a hub accepts by default (the agent's `batch.max_bytes` must
/// not exceed the hub's limit).
pub const DEFAULT_MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Header names (lower case, as HTTP/2 sends them).
pub mod header {
    /// Node id of the sender; must equal the common name of its client certificate.
    pub const NODE: &str = "exchange-node";
    /// Resource code (资源代码) the batch belongs to.
    pub const RESOURCE: &str = "exchange-resource";
    /// Id of the agent queue that produced the batch (32 hex digits).
    pub const STREAM: &str = "exchange-stream";
    /// Sequence number of the batch within (resource, stream), from 1.
    pub const SEQ: &str = "exchange-batch-seq";
    /// Number of records in the batch.
    pub const RECORDS: &str = "exchange-record-count";
    /// SM3 digest of the uncompressed body, 64 lower-case hex digits.
    pub const DIGEST: &str = "exchange-content-sm3";
    /// `node/resource/stream/seq`, for proxies and logs.
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// Protocol version spoken by the agent.
    pub const PROTOCOL: &str = "exchange-protocol";
    /// Optional; [`super::BASELINE_COMPLETE`] on the batch that ends a stream's baseline (its
    /// first full read of the resource): once it is applied, the hub deletes every record of
    /// the resource that no batch of this stream wrote (docs/PROTOCOL.md §5.1).
    pub const BASELINE: &str = "exchange-baseline";
}

/// Value of [`header::BASELINE`] on the batch that completes a stream's baseline.
pub const BASELINE_COMPLETE: &str = "complete";

/// Protocol version carried in [`header::PROTOCOL`].
pub const PROTOCOL_VERSION: &str = "1";

/// What a record asks the hub to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Insert or replace the record with this key.
    Upsert,
    /// Remove the record with this key.
    Delete,
}

/// One line of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// What to do.
    pub op: Op,
    /// The subject identifier (value of the resource's key column), as text.
    pub key: String,
    /// Field values after policy; absent for deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
    /// Data-quality flags of an upsert (docs/PROTOCOL.md §4.4), e.g. [`FLAG_INVALID_KEY`];
    /// absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// The record's key is not a valid identifier of its kind (check character, structure); the
/// provider delivers it anyway (`invalid_key = "deliver"`).
pub const FLAG_INVALID_KEY: &str = "invalid_key";

/// One line of a received batch as the hub keeps it: parsed as strictly as a [`Record`], but
/// the `fields` object stays the exact text that was sent (every digit, the key order), so
/// storing it needs no second serialization.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line<'a> {
    /// What to do.
    pub op: Op,
    /// The subject identifier.
    #[serde(borrow)]
    pub key: std::borrow::Cow<'a, str>,
    /// The fields object's JSON text (checked to be an object); absent for deletes.
    #[serde(borrow, default)]
    pub fields: Option<&'a serde_json::value::RawValue>,
    /// Data-quality flags, as [`Record::flags`].
    #[serde(default)]
    pub flags: Vec<String>,
}

/// The value of a *decimal integer* of docs/PROTOCOL.md §4.1: `0` or a digit 1–9 followed by
/// digits (no sign, no leading zero, nothing else), at most 2⁶³−1. One number has one
/// spelling, so logs, idempotency keys and the store agree on it.
pub fn parse_decimal(text: &str) -> Option<u64> {
    let well_formed = match text.as_bytes() {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    text.parse::<u64>()
        .ok()
        .filter(|n| well_formed && *n <= i64::MAX as u64)
}

/// The identity of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchId {
    /// Node id.
    pub node: String,
    /// Resource code.
    pub resource: String,
    /// Queue stream id (32 hex digits).
    pub stream: String,
    /// Sequence number within (resource, stream), from 1.
    pub seq: u64,
}

impl BatchId {
    /// The idempotency key `node/resource/stream/seq`.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.node, self.resource, self.stream, self.seq
        )
    }
}

/// The hub's answer to an accepted batch (HTTP 200).
///
/// `status`, `seq`, `last_seq` and `last_digest` are required: the agent judges the answer by
/// them. `records` and `swept` are informative: absent, they read as 0. Members a reader does
/// not know are ignored (docs/PROTOCOL.md §7). A hub sends every member but a `swept` of 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// `applied` or `duplicate`.
    pub status: AckStatus,
    /// The acknowledged sequence number.
    pub seq: u64,
    /// Records applied (0 for a duplicate). Informative: the agent does not rely on it, so an
    /// Ack without it reads as 0.
    #[serde(default)]
    pub records: u64,
    /// The highest seq the hub has applied for this (node, resource, stream) after this
    /// request. For a batch resent after a crash it equals `seq`; if it is greater than `seq`
    /// for a duplicate, the agent's queue went back in time (its data directory was restored
    /// from a backup) and the agent must stop rather than lose records.
    pub last_seq: u64,
    /// The content digest (SM3 hex) of the batch applied at `last_seq`. A resend after a crash
    /// is byte-identical, so for a duplicate with `last_seq == seq` it equals the batch's
    /// digest; if it differs, the seq was reused for other records (a restored queue).
    pub last_digest: String,
    /// Records of the resource last written by another stream that this batch deleted: only
    /// a batch carrying `exchange-baseline: complete` sweeps (docs/PROTOCOL.md §5.1). Omitted
    /// when 0, so an older agent or hub reads it as 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub swept: u64,
}

/// Whether a count is 0 (serde's `skip_serializing_if`).
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Whether the batch was applied now or had been applied before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// Committed by this request.
    Applied,
    /// Committed by an earlier request; nothing changed.
    Duplicate,
}

/// The body of every non-200 answer. Members a reader does not know are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A sentence saying what was wrong.
    pub error: String,
    /// On `409 Conflict` (a gap in a stream's sequence): the highest seq the hub has applied
    /// for the batch's (node, resource, stream); the hub accepts only `last_seq + 1` next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// On `400 Bad Request` refused because of one line of the body (not a valid record, or
    /// its key refused; docs/PROTOCOL.md §7): the 0-based index of that line in the NDJSON
    /// (every line counted, empty ones too). Absent for any other refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
}

impl ErrorBody {
    /// An error body with only a sentence.
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            last_seq: None,
            record: None,
        }
    }
}

/// What is wrong with a received batch body.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The body is not valid zstd.
    #[error("{}", crate::tr!(
        "body is not valid zstd: {0}",
        "请求体不是有效的 zstd 数据：{0}", .0
    ))]
    Decompress(std::io::Error),
    /// The body decompresses to more than the limit.
    #[error("{}", crate::tr!(
        "body decompresses to more than {limit} bytes",
        "请求体解压后超过 {limit} 字节"
    ))]
    TooLarge { limit: usize },
    /// The digest does not match.
    #[error("{}", crate::tr!(
        "content digest mismatch: header says {claimed}, body is {actual}",
        "内容摘要不一致：请求头为 {claimed}，请求体为 {actual}"
    ))]
    Digest { claimed: String, actual: String },
    /// A line is not a valid record, or its key is refused.
    #[error("{}", crate::tr!(
        "line {line}: {reason}",
        "第 {line} 行：{reason}"
    ))]
    Line {
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with it, without its values.
        reason: String,
    },
    /// The record count does not match.
    #[error("{}", crate::tr!(
        "header says {claimed} records, body holds {actual}",
        "请求头声明 {claimed} 条记录，请求体含 {actual} 条"
    ))]
    Count { claimed: u64, actual: u64 },
}

impl BatchError {
    /// For an error about one line: that line's 0-based index, the [`ErrorBody::record`] of
    /// the refusal.
    pub fn record(&self) -> Option<u64> {
        match self {
            BatchError::Line { line, .. } => Some(line.saturating_sub(1) as u64),
            _ => None,
        }
    }
}

/// SM3 of `data`, lower-case hex (the content digest of a batch).
pub fn digest_hex(data: &[u8]) -> String {
    crate::digest::sm3_hex(data)
}

/// Appends one record as an NDJSON line.
pub fn push_line(out: &mut Vec<u8>, record: &Record) {
    serde_json::to_writer(&mut *out, record).expect("a record always serializes");
    out.push(b'\n');
}

/// The default zstd level of batch bodies: 1, the fastest regular level. On NDJSON of records
/// it keeps most of level 3's ratio for about half the CPU, and the agent's machine is small
/// (bench/README.md "Instructions per row" measures the others).
pub const DEFAULT_LEVEL: i32 = 1;

/// The levels a batch may be compressed at (0, zstd's "default", is not one of them): the fast
/// levels −7 to −1 (less CPU, larger bodies, for a fast link) and the regular levels 1 to 9
/// (more CPU, smaller bodies, for a slow one). Above 9 zstd costs tens of CPU seconds per
/// million records for a body a few percent smaller. Any level decompresses the same way.
pub const LEVELS: std::ops::RangeInclusive<i32> = -7..=9;

/// Compresses an NDJSON body at [`DEFAULT_LEVEL`].
pub fn compress(ndjson: &[u8]) -> Vec<u8> {
    compress_at(ndjson, DEFAULT_LEVEL)
}

/// Compresses an NDJSON body at `level` (one of [`LEVELS`]).
pub fn compress_at(ndjson: &[u8], level: i32) -> Vec<u8> {
    zstd::bulk::compress(ndjson, level).expect("compressing into memory cannot fail")
}

/// Decompresses a body, refusing more than `limit` bytes of output. A zero-length body is
/// an empty batch (some HTTP clients send no bytes rather than an empty zstd frame).
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let decoder = zstd::stream::read::Decoder::new(body).map_err(BatchError::Decompress)?;
    let mut out = Vec::new();
    decoder
        .take((limit as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(BatchError::Decompress)?;
    if out.len() > limit {
        return Err(BatchError::TooLarge { limit });
    }
    Ok(out)
}

/// Checks digest and count and parses every line (keys non-empty, without NUL).
pub fn parse<'a>(
    ndjson: &'a [u8],
    claimed_digest: &str,
    claimed_count: u64,
) -> Result<Vec<Line<'a>>, BatchError> {
    parse_limited(ndjson, claimed_digest, claimed_count, usize::MAX)
}

/// [`parse`], refusing keys longer than `max_key_bytes` (a hub's own limit, §4.4).
pub fn parse_limited<'a>(
    ndjson: &'a [u8],
    claimed_digest: &str,
    claimed_count: u64,
    max_key_bytes: usize,
) -> Result<Vec<Line<'a>>, BatchError> {
    let actual = digest_hex(ndjson);
    if !actual.eq_ignore_ascii_case(claimed_digest) {
        return Err(BatchError::Digest {
            claimed: claimed_digest.to_owned(),
            actual,
        });
    }
    let mut records = Vec::new();
    for (i, line) in ndjson.split(|b| *b == b'\n').enumerate() {
        if is_blank(line) {
            continue;
        }
        records.push(
            parse_line(line, max_key_bytes).map_err(|reason| BatchError::Line {
                line: i + 1,
                reason,
            })?,
        );
    }
    if records.len() as u64 != claimed_count {
        return Err(BatchError::Count {
            claimed: claimed_count,
            actual: records.len() as u64,
        });
    }
    Ok(records)
}

/// Whether a line (the bytes between two line feeds) is blank: empty, or nothing but JSON
/// whitespace (space, tab, carriage return). A blank line is ignored and not counted
/// (docs/PROTOCOL.md §4.2); a CR before the LF of a record's line is whitespace after its JSON
/// value, so CRLF line endings are accepted.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// One non-blank line as a record, or why it is not one (never quoting a value).
fn parse_line(line: &[u8], max_key_bytes: usize) -> Result<Line<'_>, String> {
    let record: Line = serde_json::from_slice(line).map_err(|e| describe_json_error(&e))?;
    match (record.op, record.fields) {
        (Op::Upsert, None) => return Err("an upsert needs `fields`".into()),
        (_, Some(raw)) if !raw.get().starts_with('{') => {
            return Err("`fields` must be a JSON object".into());
        }
        _ => {}
    }
    if record.key.is_empty() {
        return Err("the key is empty".into());
    }
    if record.key.contains('\0') {
        return Err("the key contains a NUL character".into());
    }
    if record.key.len() > max_key_bytes {
        return Err(format!(
            "the key is {} bytes long; this hub accepts keys of at most {max_key_bytes} bytes",
            record.key.len()
        ));
    }
    Ok(record)
}

/// `ndjson` without its line `index` (0-based, every line counted: the
/// [`ErrorBody::record`] of a refusal), and that line; `None` when there is no non-blank line
/// there ([`is_blank`]). Every other byte stays as it was, so the same refusal always gives the same batch.
pub fn remove_line(ndjson: &[u8], index: u64) -> Option<(Vec<u8>, &[u8])> {
    let mut start = 0;
    for _ in 0..index {
        start += ndjson.get(start..)?.iter().position(|b| *b == b'\n')? + 1;
    }
    let rest = ndjson.get(start..)?;
    let (line, end) = match rest.iter().position(|b| *b == b'\n') {
        Some(n) => (&rest[..n], start + n + 1),
        None => (rest, ndjson.len()),
    };
    if is_blank(line) {
        return None;
    }
    let mut out = Vec::with_capacity(ndjson.len() - (end - start));
    out.extend_from_slice(&ndjson[..start]);
    out.extend_from_slice(&ndjson[end..]);
    Some((out, line))
}

/// A JSON error as a sentence that never quotes a value from the input: serde's "invalid
/// type: string \"…\", expected …" would otherwise put a key or field value into the
/// hub's answer and logs.
fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m);
    let withheld = ["invalid type: ", "invalid value: ", "invalid length: "]
        .iter()
        .find_map(|prefix| {
            let rest = message.strip_prefix(prefix)?;
            let expected = rest.rsplit_once(", expected ").map_or("", |(_, exp)| exp);
            Some(format!("{prefix}(value withheld), expected {expected}"))
        });
    let message = withheld.unwrap_or_else(|| message.to_owned());
    format!("{message} at column {}", e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sm3_matches_the_standard_test_vector() {
        // GB/T 32905-2016 example 1: "abc".
        assert_eq!(
            digest_hex(b"abc"),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
    }

    #[test]
    fn a_batch_round_trips_with_exact_numbers() {
        let mut body = Vec::new();
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"n":18446744073709551615,"d":"12.3400","j":{"x":1.10}}"#)
                .unwrap();
        push_line(
            &mut body,
            &Record {
                op: Op::Upsert,
                key: "k1".into(),
                fields: Some(fields),
                flags: Vec::new(),
            },
        );
        push_line(
            &mut body,
            &Record {
                op: Op::Delete,
                key: "k2".into(),
                fields: None,
                flags: Vec::new(),
            },
        );
        let digest = digest_hex(&body);
        let wire = compress(&body);
        let back = decompress(&wire, 1 << 20).unwrap();
        let records = parse(&back, &digest, 2).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].fields.map(|f| f.get()),
            Some(r#"{"n":18446744073709551615,"d":"12.3400","j":{"x":1.10}}"#)
        );
        let line = String::from_utf8(back).unwrap();
        assert!(line.contains("18446744073709551615"), "{line}");
        assert!(line.contains("1.10"), "{line}");
    }

    #[test]
    fn an_empty_batch_is_valid_on_the_wire() {
        let digest = digest_hex(b"");
        let wire = compress(b"");
        let back = decompress(&wire, 1024).unwrap();
        assert!(parse(&back, &digest, 0).unwrap().is_empty());
        // A zero-length body is an empty batch too.
        assert!(
            parse(&decompress(b"", 1024).unwrap(), &digest, 0)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn an_ack_without_swept_reads_as_zero_and_zero_is_omitted() {
        let old = r#"{"status":"applied","seq":1,"records":2,"last_seq":1,"last_digest":"ab"}"#;
        let ack: Ack = serde_json::from_str(old).unwrap();
        assert_eq!(ack.swept, 0);
        assert_eq!(serde_json::to_string(&ack).unwrap(), old);
        let swept = Ack { swept: 3, ..ack };
        assert!(
            serde_json::to_string(&swept)
                .unwrap()
                .ends_with(r#","swept":3}"#)
        );
    }

    #[test]
    fn an_ack_needs_status_seq_and_mark_and_ignores_what_it_does_not_know() {
        // `records` is informative: an Ack without it reads as 0.
        let lean = r#"{"status":"duplicate","seq":7,"last_seq":7,"last_digest":"ab"}"#;
        let ack: Ack = serde_json::from_str(lean).unwrap();
        assert_eq!((ack.seq, ack.records, ack.swept), (7, 0, 0));
        let extra = r#"{"status":"applied","seq":1,"records":2,"last_seq":1,"last_digest":"ab","node":"x","took_ms":3.5}"#;
        assert_eq!(serde_json::from_str::<Ack>(extra).unwrap().records, 2);
        // Each required member missing, or an integer that is not a plain unsigned integer.
        for bad in [
            r#"{"seq":1,"records":0,"last_seq":1,"last_digest":"ab"}"#,
            r#"{"status":"applied","records":0,"last_seq":1,"last_digest":"ab"}"#,
            r#"{"status":"applied","seq":1,"records":0,"last_digest":"ab"}"#,
            r#"{"status":"applied","seq":1,"records":0,"last_seq":1}"#,
            r#"{"status":"stored","seq":1,"last_seq":1,"last_digest":"ab"}"#,
            r#"{"status":"applied","seq":1.0,"last_seq":1,"last_digest":"ab"}"#,
            r#"{"status":"applied","seq":"1","last_seq":1,"last_digest":"ab"}"#,
            r#"{"status":"applied","seq":1,"records":-1,"last_seq":1,"last_digest":"ab"}"#,
        ] {
            assert!(serde_json::from_str::<Ack>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blank_lines_are_ignored_and_crlf_line_endings_accepted() {
        let body = b"{\"op\":\"delete\",\"key\":\"a\"}\r\n\r\n \t\r\n\n{\"op\":\"delete\",\"key\":\"b\"}\r\n";
        let records = parse(body, &digest_hex(body), 2).unwrap();
        let keys: Vec<&str> = records.iter().map(|r| r.key.as_ref()).collect();
        assert_eq!(keys, ["a", "b"]);
        // Blank lines still count in a refused line's index.
        let body = b" \r\n{\"op\":\"upsert\",\"key\":\"a\"}\r\n";
        let err = parse(body, &digest_hex(body), 1).unwrap_err();
        assert_eq!(err.record(), Some(1), "{err}");
        // Other characters are no whitespace of JSON: such a line is a record, and refused.
        let body = "\u{a0}\n".as_bytes();
        assert_eq!(
            parse(body, &digest_hex(body), 0).unwrap_err().record(),
            Some(0)
        );
        assert_eq!(remove_line(b"a\n \r\nb", 1), None, "a blank line");
    }

    #[test]
    fn a_member_given_twice_is_refused() {
        let body = b"{\"op\":\"delete\",\"key\":\"a\",\"key\":\"b\"}\n";
        let err = parse(body, &digest_hex(body), 1).unwrap_err();
        assert!(err.to_string().contains("duplicate field `key`"), "{err}");
        assert_eq!(err.record(), Some(0));
    }

    #[test]
    fn decompression_is_bounded() {
        let big = vec![b'a'; 10_000];
        let wire = compress(&big);
        assert!(matches!(
            decompress(&wire, 100),
            Err(BatchError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_malformed_line_is_described_without_its_values() {
        let body = b"{\"op\":\"upsert\",\"key\":110105194912310021,\"fields\":{}}\n";
        let err = parse(body, &digest_hex(body), 1).unwrap_err().to_string();
        assert!(!err.contains("110105194912310021"), "{err}");
        assert!(
            err.starts_with("line 1: invalid type: (value withheld), expected a string"),
            "{err}"
        );
        let body = b"{\"op\":\"upsert\",\"key\":\"k\",\"fields\":\"\\u5f20\\u4e09\"}\n";
        let err = parse(body, &digest_hex(body), 1).unwrap_err().to_string();
        assert!(!err.contains('\u{5f20}'), "{err}");
        assert!(err.contains("must be a JSON object"), "{err}");
        let body = b"{\"op\":\"upsert\",\"key\":\"k\",\"feilds\":{}}\n";
        let err = parse(body, &digest_hex(body), 1).unwrap_err().to_string();
        assert!(err.contains("unknown field `feilds`"), "{err}");
    }

    #[test]
    fn a_refused_line_is_named_by_its_index_and_only_line_errors_name_one() {
        let ok = b"{\"op\":\"delete\",\"key\":\"a\"}\n";
        // (the line after `ok`, its 0-based index, the reason)
        let cases: [(&[u8], u64, &str); 5] = [
            (b"{\"op\":\"delete\",\"key\":\"\"}\n", 1, "the key is empty"),
            (
                b"{\"op\":\"delete\",\"key\":\"a\\u0000\"}\n",
                1,
                "the key contains a NUL character",
            ),
            (
                b"{\"op\":\"delete\",\"key\":\"abcdefghi\"}\n",
                1,
                "the key is 9 bytes long; this hub accepts keys of at most 8 bytes",
            ),
            (
                b"{\"op\":\"upsert\",\"key\":\"b\"}\n",
                1,
                "an upsert needs `fields`",
            ),
            // An empty line counts as a line.
            (
                b"\n{\"op\":\"delete\",\"key\":\"\"}\n",
                2,
                "the key is empty",
            ),
        ];
        for (bad, index, reason) in cases {
            let body = [ok.as_slice(), bad].concat();
            let err = parse_limited(&body, &digest_hex(&body), 2, 8).unwrap_err();
            assert_eq!(err.record(), Some(index), "{err}");
            assert_eq!(err.to_string(), format!("line {}: {reason}", index + 1));
        }
        let err = parse(ok, &digest_hex(ok), 2).unwrap_err();
        assert_eq!(err.record(), None, "a wrong count is about the batch");
        assert_eq!(parse(ok, &"0".repeat(64), 1).unwrap_err().record(), None);
        assert!(
            parse_limited(ok, &digest_hex(ok), 1, 1).is_ok(),
            "at the limit"
        );
    }

    #[test]
    fn removing_a_line_keeps_every_other_byte() {
        /// A line's index, and the body without it with the line, if there is one.
        type Case = (u64, Option<(&'static [u8], &'static [u8])>);
        let body = b"a\nb\n\nc\nd";
        let cases: [Case; 7] = [
            (0, Some((b"b\n\nc\nd", b"a"))),
            (1, Some((b"a\n\nc\nd", b"b"))),
            (2, None),
            (3, Some((b"a\nb\n\nd", b"c"))),
            (4, Some((b"a\nb\n\nc\n", b"d"))),
            (5, None),
            (u64::MAX, None),
        ];
        for (index, expected) in cases {
            let got = remove_line(body, index);
            assert_eq!(
                got.as_ref().map(|(rest, line)| (rest.as_slice(), *line)),
                expected,
                "line {index}"
            );
        }
        assert_eq!(remove_line(b"x\n", 1), None, "after the last line feed");
        assert_eq!(remove_line(b"", 0), None);
    }

    #[test]
    fn an_error_body_without_record_reads_as_none_and_unknown_members_are_ignored() {
        let old: ErrorBody = serde_json::from_str(r#"{"error":"bad","hint":"x"}"#).unwrap();
        assert_eq!(old, ErrorBody::new("bad"));
        assert_eq!(serde_json::to_string(&old).unwrap(), r#"{"error":"bad"}"#);
        let named: ErrorBody = serde_json::from_str(r#"{"error":"bad","record":3}"#).unwrap();
        assert_eq!(named.record, Some(3));
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let mut body = Vec::new();
        push_line(
            &mut body,
            &Record {
                op: Op::Delete,
                key: "k".into(),
                fields: None,
                flags: Vec::new(),
            },
        );
        assert!(matches!(
            parse(&body, &"0".repeat(64), 1),
            Err(BatchError::Digest { .. })
        ));
    }
}
