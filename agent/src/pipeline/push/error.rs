//! Why a push failed: one error per way the hub's answer (or its absence) can go wrong, with
//! the `kind` label its metric carries and how long a retry waits.

use std::time::Duration;

use exchange_protocol::tls;

use crate::pipeline::queue::QueueError;

/// Why a push failed. Messages name the hub and say what to check.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The TLS configuration could not be built.
    #[error("hub TLS configuration: {0}")]
    Tls(tls::TlsError),
    /// The TLS handshake failed.
    #[error("TLS handshake with the hub {url} failed: {reason}")]
    Handshake {
        /// Hub URL.
        url: String,
        /// Explained rustls error.
        reason: String,
    },
    /// The hub could not be reached.
    #[error("hub {url} is unreachable: {reason}")]
    Unreachable {
        /// Hub URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The hub asked to slow down (429) or is unavailable (503).
    #[error("hub {url} answered {status}; retrying {}", retry_after.map(|d| format!("after {} s as the hub asked", d.as_secs())).unwrap_or_else(|| "with backoff".into()))]
    Throttled {
        /// Hub URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The hub's Retry-After, if any.
        retry_after: Option<Duration>,
    },
    /// The hub refused the batch.
    #[error("hub {url} refused batch {seq} of `{resource}` with {status}: {error}")]
    Refused {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// Batch seq.
        seq: u64,
        /// HTTP status.
        status: u16,
        /// The hub's explanation.
        error: String,
    },
    /// The hub refused one record of the batch (`400` naming its line, docs/PROTOCOL.md §7):
    /// nothing of the batch was applied. Not reported as such: the pusher quarantines the
    /// record and sends the rest of the batch at once (`refused`).
    #[error("hub {url} refused line {} of batch {seq} of `{resource}`: {error}", record + 1)]
    RecordRefused {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// Batch seq.
        seq: u64,
        /// The digest of the batch the hub refused (it is changed only if still queued as sent).
        digest: String,
        /// The refused line's 0-based index (the error body's `record`).
        record: u64,
        /// The hub's explanation.
        error: String,
    },
    /// A record the hub refused could not be quarantined: the audit log cannot be written, so
    /// the batch is left as it is (every change is audited) and sent again later.
    #[error(
        "the record the hub refused in batch {seq} of `{resource}` is not quarantined yet: {reason}"
    )]
    Unaudited {
        /// Resource.
        resource: String,
        /// Batch seq.
        seq: u64,
        /// The audit log's error.
        reason: String,
    },
    /// The hub acknowledged something else than what was sent.
    #[error(
        "hub {url} acknowledged seq {got} for batch {expected} of `{resource}`; the batch stays queued"
    )]
    WrongAck {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// Sent seq.
        expected: u64,
        /// Acknowledged seq.
        got: u64,
    },
    /// The hub has applied batches of this stream that this queue never sent (a mark above
    /// its `sent_through` bound, or another digest): the queue went back in time.
    /// Acknowledging would lose records, so the resource stops.
    #[error(
        "hub {url} has already applied batch {last_seq} of this queue for `{resource}` (with other content than the queued batch {seq}, or a batch this queue never sent): the data directory was restored from an older copy, and records pulled since that copy would be lost. The resource is stopped; run `exchange-agent resync {resource} --yes` to read it again from the start on a new stream"
    )]
    Rewound {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// The queue's batch.
        seq: u64,
        /// The hub's high-water mark.
        last_seq: u64,
    },
    /// The hub lacks batches of this stream: its store was restored from an older copy or
    /// wiped. Sending on would leave a hole, so the resource stops.
    #[error(
        "hub {url} has applied batches of `{resource}` up to seq {last_seq} of this stream, but the queue's next batch is {seq}: the batches in between are missing at the hub (its store was restored from an older copy or wiped). The resource is stopped; run `exchange-agent resync {resource} --yes` to read it again from the start on a new stream, after which the hub also removes records that no longer exist"
    )]
    Gap {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// The queue's batch.
        seq: u64,
        /// The hub's high-water mark.
        last_seq: u64,
    },
    /// The hub refused a batch that overtook an earlier one still unanswered (`409` for a
    /// batch above the oldest queued one when it left, with a mark that covers every batch no
    /// longer queued): nothing is lost; the batches are resent from the oldest, one at a
    /// time. Provisional: only the probe's answer tells a gap.
    #[error(
        "hub {url} has not applied the batches before {seq} of `{resource}` yet (its mark is {last_seq}); resending them in order"
    )]
    Overtaken {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// The refused batch.
        seq: u64,
        /// The hub's high-water mark.
        last_seq: u64,
    },
    /// The hub's acknowledgement contradicts itself or the batch: not taken as an
    /// acknowledgement, so the batch stays queued.
    #[error(
        "hub {url} sent an acknowledgement for batch {seq} of `{resource}` that cannot be right ({why}); the batch stays queued"
    )]
    BadAck {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// The batch.
        seq: u64,
        /// What is wrong with it.
        why: String,
    },
    /// The resource is stopped until an operator acts.
    #[error("`{resource}` is stopped: {reason}")]
    Halted {
        /// Resource.
        resource: String,
        /// Why, and what to run.
        reason: String,
    },
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl PushError {
    /// The kind of failure, as the `kind` label of `exchange_push_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            PushError::Tls(_) => "tls_config",
            PushError::Handshake { .. } => "handshake",
            PushError::Unreachable { .. } => "unreachable",
            PushError::Throttled { .. } => "throttled",
            PushError::Refused { .. } => "refused",
            PushError::RecordRefused { .. } => "record_refused",
            PushError::Unaudited { .. } => "audit",
            PushError::WrongAck { .. } | PushError::BadAck { .. } => "bad_ack",
            PushError::Rewound { .. } => "rewound",
            PushError::Gap { .. } => "gap",
            PushError::Overtaken { .. } => "overtaken",
            PushError::Halted { .. } => "halted",
            PushError::Queue(_) => "queue",
        }
    }
    /// Whether the hub answered and refused: retrying helps only after someone fixes
    /// something, so the retry waits longer.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            PushError::Refused {
                status: 400..=499,
                ..
            } | PushError::WrongAck { .. }
                | PushError::BadAck { .. }
                | PushError::Rewound { .. }
                | PushError::Gap { .. }
                | PushError::Halted { .. }
        )
    }

    /// A delay the hub asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PushError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

// The TLS error is in the message, so it is not also the source (a chain names it once).
impl From<tls::TlsError> for PushError {
    fn from(e: tls::TlsError) -> Self {
        PushError::Tls(e)
    }
}
