//! What the hub keeps of each signed batch it applies, so that a record can be proven, later
//! and by anyone, to come from a node's batch (`exchange-hub prove`, docs/PROTOCOL.md §4.7).
//!
//! Table `batch_evidence`, one row per applied signed batch, written in the batch's own
//! transaction: `(resource, stream, seq)` its identity, `node`, `applied_at` (the time the
//! batch's records carry as `updated_at`, which links a record to the batch that last wrote
//! it), `sm3` its content digest, `signature` the header as received (`scheme:base64`),
//! `certificate` the DER certificate the connection presented, `body` the compressed body as
//! received (zstd NDJSON). A duplicate writes nothing.

/// A signed batch's evidence, as the server verified it.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The `exchange-signature` header.
    pub signature: String,
    /// The node's certificate (DER) the signature verified against.
    pub certificate: Vec<u8>,
    /// The body as received (zstd-compressed NDJSON).
    pub body: Vec<u8>,
}

/// What proves a record: the batch that last wrote it, with its evidence.
#[derive(Debug, Clone)]
pub struct Proof {
    /// The node that sent the batch.
    pub node: String,
    /// The batch's stream.
    pub stream: String,
    /// Its sequence number.
    pub seq: u64,
    /// When the hub applied it (RFC 3339).
    pub applied_at: String,
    /// Its content digest (SM3, hex).
    pub sm3: String,
    /// The evidence kept.
    pub evidence: Evidence,
}

/// The table, for SQLite (`BLOB`) or PostgreSQL (`BYTEA`, `BIGINT`).
pub(super) fn table(binary: &str, integer: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS batch_evidence (
    resource    TEXT NOT NULL,
    stream      TEXT NOT NULL,
    seq         {integer} NOT NULL,
    node        TEXT NOT NULL,
    applied_at  TEXT NOT NULL,
    sm3         TEXT NOT NULL,
    signature   TEXT NOT NULL,
    certificate {binary} NOT NULL,
    body        {binary} NOT NULL,
    PRIMARY KEY (resource, stream, seq)
);
"
    )
}

/// The statement that finds the batch that last wrote a record (parameters: resource, key).
pub(super) const PROOF: &str =
    "SELECT e.node, e.stream, e.seq, e.applied_at, e.sm3, e.signature, e.certificate, e.body
 FROM records r JOIN batch_evidence e
   ON e.resource = r.resource AND e.stream = r.stream AND e.applied_at = r.updated_at
 WHERE r.resource = $1 AND r.key = $2
 ORDER BY e.seq DESC LIMIT 1";
