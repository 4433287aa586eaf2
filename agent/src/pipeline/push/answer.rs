//! How the hub's answer to one batch is read (docs/PROTOCOL.md §5): a 200 is taken as the
//! batch's acknowledgement only when it is consistent with the batch and, for a `duplicate`,
//! with what this queue may have sent; a 409 tells a batch that overtook others from a gap or
//! a rewound queue; a 400 naming one line (`record`) is that record's refusal; everything else
//! is a failure that leaves the batch queued.

use std::time::Duration;

use exchange_protocol::batch::{Ack, AckStatus, ErrorBody};

use super::error::PushError;
use super::flight::InFlight;
use crate::pipeline::queue::StoredBatch;

/// The hub's answer as it came off the wire.
pub(super) struct Reply {
    /// HTTP status.
    pub(super) status: u16,
    /// The hub's `Retry-After`, if any.
    pub(super) retry_after: Option<Duration>,
    /// The body.
    pub(super) body: Vec<u8>,
}

/// The batch an answer is about, and what it is judged against.
pub(super) struct Sent<'a> {
    /// Hub URL, for messages.
    pub(super) url: &'a str,
    /// The requests in flight (committed bound, queued digests).
    pub(super) flight: &'a InFlight<'a>,
    /// The batch.
    pub(super) batch: &'a StoredBatch,
    /// The oldest batch still queued when it left.
    pub(super) head: u64,
}

/// The explanation in a refusal's body: the hub's `error`, or the start of the body.
pub(super) fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

impl Sent<'_> {
    /// The acknowledgement in `reply`, or why there is none.
    pub(super) async fn read(&self, reply: Reply) -> Result<Ack, PushError> {
        match reply.status {
            200 => self.acknowledgement(&reply.body).await,
            409 => Err(self.conflict(&reply.body)),
            // 408: the hub's body timeout (a slow link); 429/503: the hub is busy.
            status @ (408 | 429 | 503) => Err(PushError::Throttled {
                url: self.url.to_owned(),
                status,
                retry_after: reply.retry_after,
            }),
            400 => Err(self.bad_request(&reply.body)),
            status => Err(self.refused(status, error_text(&reply.body))),
        }
    }

    /// A 400: one record's refusal when the body names its line (`record`), else the whole
    /// batch's.
    fn bad_request(&self, body: &[u8]) -> PushError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody {
                error,
                record: Some(record),
                ..
            }) => PushError::RecordRefused {
                url: self.url.to_owned(),
                resource: self.flight.resource.to_owned(),
                seq: self.batch.seq,
                digest: self.batch.digest.clone(),
                record,
                error,
            },
            _ => self.refused(400, error_text(body)),
        }
    }

    /// A 200: the acknowledgement, if it can be right for this batch.
    async fn acknowledgement(&self, body: &[u8]) -> Result<Ack, PushError> {
        let ack: Ack = serde_json::from_slice(body).map_err(|e| {
            self.refused(200, format!("the acknowledgement is not valid JSON ({e})"))
        })?;
        self.consistent(&ack)?;
        // A duplicate's mark must be a batch this queue's history may have sent (at or below
        // its committed bound) and still holds with the same content: this batch, or a later
        // one (docs/PROTOCOL.md §5).
        if ack.status == AckStatus::Duplicate && !self.honest_duplicate(&ack).await? {
            return Err(self.rewound(ack.last_seq));
        }
        if ack.seq != self.batch.seq {
            return Err(PushError::WrongAck {
                url: self.url.to_owned(),
                resource: self.flight.resource.to_owned(),
                expected: self.batch.seq,
                got: ack.seq,
            });
        }
        Ok(ack)
    }

    /// Whether the acknowledgement's mark agrees with its status and the batch.
    fn consistent(&self, ack: &Ack) -> Result<(), PushError> {
        let why = match ack.status {
            AckStatus::Applied if ack.last_seq != self.batch.seq => exchange_protocol::tr!(
                "applied, but the stream's mark is {} instead of the batch's seq",
                "已应用，但数据流的标记是 {} 而不是该批次的序号",
                ack.last_seq
            ),
            AckStatus::Duplicate if ack.last_seq < self.batch.seq => exchange_protocol::tr!(
                "a duplicate, but the stream's mark {} is below the batch's seq",
                "重复批次，但数据流的标记 {} 低于该批次的序号",
                ack.last_seq
            ),
            _ => return Ok(()),
        };
        Err(PushError::BadAck {
            url: self.url.to_owned(),
            resource: self.flight.resource.to_owned(),
            seq: self.batch.seq,
            why,
        })
    }

    /// Whether a `duplicate`'s mark names a batch this queue may have sent, with the digest
    /// the queue holds for it.
    async fn honest_duplicate(&self, ack: &Ack) -> Result<bool, PushError> {
        if ack.last_seq > self.flight.sent_through() {
            return Ok(false);
        }
        if ack.last_seq == self.batch.seq {
            return Ok(ack.last_digest.eq_ignore_ascii_case(&self.batch.digest));
        }
        let q = self.flight.queue.clone();
        let (code, at) = (self.flight.resource.to_owned(), ack.last_seq);
        Ok(tokio::task::spawn_blocking(move || q.digest_of(&code, at))
            .await
            .expect("queue task panicked")?
            .is_some_and(|d| d.eq_ignore_ascii_case(&ack.last_digest)))
    }

    /// A 409: the hub's mark is not where this batch follows it.
    fn conflict(&self, body: &[u8]) -> PushError {
        let body = serde_json::from_slice::<ErrorBody>(body).ok();
        let (seq, head) = (self.batch.seq, self.head);
        match body.as_ref().and_then(|e| e.last_seq) {
            // A batch that left after an older one still queued, and the hub lacks only
            // batches that were still queued then (in flight): nothing is lost. Provisional:
            // the oldest is resent alone, and its answer decides.
            Some(last_seq) if seq > head && last_seq + 1 < seq && last_seq + 1 >= head => {
                PushError::Overtaken {
                    url: self.url.to_owned(),
                    resource: self.flight.resource.to_owned(),
                    seq,
                    last_seq,
                }
            }
            Some(last_seq) if last_seq + 1 < seq => PushError::Gap {
                url: self.url.to_owned(),
                resource: self.flight.resource.to_owned(),
                seq,
                last_seq,
            },
            // "Already have it" with a mark this queue never reached: rewound.
            Some(last_seq) if last_seq >= seq && last_seq > self.flight.sent_through() => {
                self.rewound(last_seq)
            }
            _ => self.refused(
                409,
                body.map(|e| e.error)
                    .unwrap_or_else(|| "409 Conflict without a last_seq".into()),
            ),
        }
    }

    fn rewound(&self, last_seq: u64) -> PushError {
        PushError::Rewound {
            url: self.url.to_owned(),
            resource: self.flight.resource.to_owned(),
            seq: self.batch.seq,
            last_seq,
        }
    }

    fn refused(&self, status: u16, error: String) -> PushError {
        PushError::Refused {
            url: self.url.to_owned(),
            resource: self.flight.resource.to_owned(),
            seq: self.batch.seq,
            status,
            error,
        }
    }
}
