//! The push stage: the oldest queued batch of a resource goes to the hub; it leaves the
//! queue only after the hub's 200 acknowledgement (docs/PROTOCOL.md §5).
//!
//! Invariants:
//! - batches of a resource are sent in seq order: one at a time (a probe) until an
//!   acknowledgement in this process (since the last failure) has shown where the hub's mark
//!   stands, then up to [`MAX_IN_FLIGHT`] at once ([`Flow`]);
//! - no batch leaves above the queue's committed `sent_through` bound: the bound is raised
//!   first ([`Queue::raise_sent_through`]; before a probe only to the probe's own seq), or by
//!   [`Queue::ack`] for the window after an acknowledged batch;
//! - a `duplicate` is taken as an acknowledgement only when the hub's mark lies between the
//!   batch's seq and that bound and its digest is the one of the queued batch at the mark;
//!   any other mark at or above the batch means the queue went back in time (a restored data
//!   directory), and the resource stops;
//! - [`Queue::ack`] is called only for an [`Ack`] whose seq is the batch's seq, in seq order;
//! - on any failure the batch stays queued and is retried with backoff (honouring
//!   `Retry-After` on 429 and 503); nothing is dropped, whatever the hub answers.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use exchange_protocol::batch::{self, Ack, AckStatus, BatchId, ErrorBody, header};
use exchange_protocol::tls;

use crate::config::Config;
use crate::pipeline::queue::{Baseline, HaltKind, Queue, QueueError, StoredBatch};

/// Why a push failed. Messages name the hub and say what to check.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The TLS configuration could not be built.
    #[error("hub TLS configuration: {0}")]
    Tls(#[from] tls::TlsError),
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
        "hub {url} has already applied batch {last_seq} of this queue for `{resource}` (with other content than the queued batch {seq}, or a batch this queue never sent): the data directory was restored from an older copy, and records pulled since that copy would be lost. The resource is stopped; run `exchange-agent resync {resource}` (with the service stopped) to read it again from the start on a new stream"
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
        "hub {url} has applied batches of `{resource}` up to seq {last_seq} of this stream, but the queue's next batch is {seq}: the batches in between are missing at the hub (its store was restored from an older copy or wiped). The resource is stopped; run `exchange-agent resync {resource}` (with the service stopped) to read it again from the start on a new stream, after which the hub also removes records that no longer exist"
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

/// A client of the hub's batch endpoint.
#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    url: String,
    node: String,
    stream: String,
}

impl HubClient {
    /// Builds the client: mutual TLS with the configured CA only.
    pub fn new(config: &Config, stream: &str) -> Result<HubClient, PushError> {
        let tls = tls::hub_client_config(&config.hub.tls)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.hub.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| PushError::Unreachable {
                url: config.hub.url.clone(),
                reason: chain(&e),
            })?;
        Ok(HubClient {
            http,
            url: config.hub.url.clone(),
            node: config.node.id.clone(),
            stream: stream.to_owned(),
        })
    }

    /// The hub's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The queue's own stream id (a resource that was resynchronized has its own).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Sends one batch of `stream` and returns the hub's acknowledgement; `baseline` marks the
    /// batch that completes the stream's baseline; `unanswered` holds the batches of the
    /// stream sent by this call of [`push_batches`] and not acknowledged yet (this one
    /// included): its lowest, as this batch leaves, is the oldest queued batch and tells a
    /// batch that overtook others from a gap. `sent_through` is the queue's committed bound
    /// of the batches that may have left, read when the answer arrives (acknowledgements of
    /// other batches may have raised it meanwhile): with the queued digests (`queue`) it tells
    /// an honest `duplicate` from a rewound queue.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        queue: &Queue,
        resource: &str,
        stream: &str,
        baseline: bool,
        b: &StoredBatch,
        unanswered: &Unanswered,
        sent_through: &AtomicU64,
    ) -> Result<Ack, PushError> {
        // The oldest batch still queued as this one leaves: every batch below it was
        // acknowledged. Taken now, since acknowledgements may arrive before this answer.
        let head = unanswered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .copied()
            .unwrap_or(b.seq)
            .min(b.seq);
        let id = BatchId {
            node: self.node.clone(),
            resource: resource.to_owned(),
            stream: stream.to_owned(),
            seq: b.seq,
        };
        let mut request = self
            .http
            .post(format!("{}{}", self.url, batch::BATCHES_PATH))
            .header(header::PROTOCOL, batch::PROTOCOL_VERSION)
            .header(header::NODE, &id.node)
            .header(header::RESOURCE, &id.resource)
            .header(header::STREAM, &id.stream)
            .header(header::SEQ, id.seq.to_string())
            .header(header::RECORDS, b.records.to_string())
            .header(header::DIGEST, &b.digest)
            .header(header::IDEMPOTENCY_KEY, id.idempotency_key())
            .header("content-type", batch::CONTENT_TYPE)
            .header("content-encoding", batch::CONTENT_ENCODING);
        if baseline {
            request = request.header(header::BASELINE, batch::BASELINE_COMPLETE);
        }
        let response = request
            .body(b.body.clone())
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        match status {
            200 => {
                let ack: Ack = serde_json::from_slice(&body).map_err(|e| PushError::Refused {
                    url: self.url.clone(),
                    resource: resource.to_owned(),
                    seq: b.seq,
                    status,
                    error: format!("the acknowledgement is not valid JSON ({e})"),
                })?;
                let bad = |why: String| PushError::BadAck {
                    url: self.url.clone(),
                    resource: resource.to_owned(),
                    seq: b.seq,
                    why,
                };
                match ack.status {
                    AckStatus::Applied if ack.last_seq != b.seq => {
                        return Err(bad(format!(
                            "applied, but the stream's mark is {} instead of the batch's seq",
                            ack.last_seq
                        )));
                    }
                    AckStatus::Duplicate if ack.last_seq < b.seq => {
                        return Err(bad(format!(
                            "a duplicate, but the stream's mark {} is below the batch's seq",
                            ack.last_seq
                        )));
                    }
                    _ => {}
                }
                // A duplicate's mark must be a batch this queue's history may have sent (at or
                // below its committed bound) and still holds with the same content: this
                // batch, or a later one (docs/PROTOCOL.md §5).
                if ack.status == AckStatus::Duplicate {
                    let honest = ack.last_seq <= sent_through.load(Ordering::Acquire)
                        && if ack.last_seq == b.seq {
                            ack.last_digest.eq_ignore_ascii_case(&b.digest)
                        } else {
                            let (q, code, at) = (queue.clone(), resource.to_owned(), ack.last_seq);
                            tokio::task::spawn_blocking(move || q.digest_of(&code, at))
                                .await
                                .expect("queue task panicked")?
                                .is_some_and(|d| d.eq_ignore_ascii_case(&ack.last_digest))
                        };
                    if !honest {
                        return Err(PushError::Rewound {
                            url: self.url.clone(),
                            resource: resource.to_owned(),
                            seq: b.seq,
                            last_seq: ack.last_seq,
                        });
                    }
                }
                if ack.seq != b.seq {
                    return Err(PushError::WrongAck {
                        url: self.url.clone(),
                        resource: resource.to_owned(),
                        expected: b.seq,
                        got: ack.seq,
                    });
                }
                Ok(ack)
            }
            409 => {
                let body = serde_json::from_slice::<ErrorBody>(&body).ok();
                match body.as_ref().and_then(|e| e.last_seq) {
                    // A batch that left after an older one still queued, and the hub lacks
                    // only batches that were still queued then (in flight): nothing is lost.
                    // Provisional: the oldest is resent alone, and its answer decides.
                    Some(last_seq)
                        if b.seq > head && last_seq + 1 < b.seq && last_seq + 1 >= head =>
                    {
                        Err(PushError::Overtaken {
                            url: self.url.clone(),
                            resource: resource.to_owned(),
                            seq: b.seq,
                            last_seq,
                        })
                    }
                    Some(last_seq) if last_seq + 1 < b.seq => Err(PushError::Gap {
                        url: self.url.clone(),
                        resource: resource.to_owned(),
                        seq: b.seq,
                        last_seq,
                    }),
                    // "Already have it" with a mark this queue never reached: rewound.
                    Some(last_seq)
                        if last_seq >= b.seq && last_seq > sent_through.load(Ordering::Acquire) =>
                    {
                        Err(PushError::Rewound {
                            url: self.url.clone(),
                            resource: resource.to_owned(),
                            seq: b.seq,
                            last_seq,
                        })
                    }
                    _ => Err(PushError::Refused {
                        url: self.url.clone(),
                        resource: resource.to_owned(),
                        seq: b.seq,
                        status,
                        error: body
                            .map(|e| e.error)
                            .unwrap_or_else(|| "409 Conflict without a last_seq".into()),
                    }),
                }
            }
            // 408: the hub's body timeout (a slow link); 429/503: the hub is busy.
            408 | 429 | 503 => Err(PushError::Throttled {
                url: self.url.clone(),
                status,
                retry_after,
            }),
            _ => {
                let error = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| {
                        String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
                    });
                Err(PushError::Refused {
                    url: self.url.clone(),
                    resource: resource.to_owned(),
                    seq: b.seq,
                    status,
                    error,
                })
            }
        }
    }

    /// `PUT /v1/catalogue`: reports a resource's catalogue entry (docs/PROTOCOL.md §10).
    pub async fn put_catalogue(
        &self,
        entry: &exchange_protocol::catalogue::CatalogueEntry,
    ) -> Result<(), PushError> {
        let r = self
            .http
            .put(format!(
                "{}{}",
                self.url,
                exchange_protocol::catalogue::CATALOGUE_PATH
            ))
            .header(header::PROTOCOL, batch::PROTOCOL_VERSION)
            .header(header::NODE, &self.node)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(entry).expect("an entry serializes"))
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = r.status();
        if status.is_success() {
            return Ok(());
        }
        let body = r.bytes().await.unwrap_or_default();
        let error = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        Err(PushError::Unreachable {
            url: self.url.clone(),
            reason: format!(
                "catalogue entry of `{}` answered {status}: {error}",
                entry.resource
            ),
        })
    }

    /// `GET /v1/health`: whether the hub answers over mutual TLS.
    pub async fn health(&self) -> Result<(), PushError> {
        let r = self
            .http
            .get(format!("{}{}", self.url, batch::HEALTH_PATH))
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(PushError::Unreachable {
                url: self.url.clone(),
                reason: format!("health check answered {}", r.status()),
            })
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> PushError {
        match find_rustls(e) {
            Some(t) => PushError::Handshake {
                url: self.url.clone(),
                reason: tls::explain(t),
            },
            None => PushError::Unreachable {
                url: self.url.clone(),
                reason: chain(e),
            },
        }
    }
}

/// The rustls error somewhere in an error chain; hyper-rustls wraps it in I/O errors, whose
/// payload is not part of `source()`.
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && let Some(t) = find_rustls(inner)
    {
        return Some(t);
    }
    e.source().and_then(find_rustls)
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

pub use crate::pipeline::queue::MAX_IN_FLIGHT;

/// Batches of a resource sent by one call of [`push_batches`] and not acknowledged yet.
pub type Unanswered = Arc<Mutex<BTreeSet<u64>>>;

/// What the pusher of one resource remembers between calls to [`push_batches`].
#[derive(Debug, Default)]
pub struct Flow {
    /// An acknowledgement was accepted since the last failure, so the hub's mark is known to
    /// be below every queued batch and several may be in flight. Until then, and after any
    /// failure, one batch at a time (a probe), whose bound is raised only to its own seq:
    /// every check of one-at-a-time sending (a queue gone back in time, a gap) stays as
    /// strict as it was.
    confirmed: bool,
}

/// Raises the queue's committed bound of the batches that may have left to `to` (capped at
/// the last batch committed); returns the bound now stored.
async fn raise_sent_through(queue: &Queue, resource: &str, to: u64) -> Result<u64, PushError> {
    let (q, code) = (queue.clone(), resource.to_owned());
    Ok(
        tokio::task::spawn_blocking(move || q.raise_sent_through(&code, to))
            .await
            .expect("queue task panicked")?,
    )
}

/// Pushes the queued batches of a resource in seq order — one at a time, or up to
/// [`MAX_IN_FLIGHT`] at once while [`Flow`] allows — and removes each from the queue only
/// after its own acknowledgement, in seq order, calling `acked` after each removal. Returns
/// how many were acknowledged (0: nothing queued). A failure after some were acknowledged is
/// left for the next call to meet again (it sends the first unacknowledged batch alone).
pub async fn push_batches(
    client: &HubClient,
    queue: &Queue,
    resource: &str,
    flow: &mut Flow,
    acked: &(dyn Fn() + Sync),
) -> Result<usize, PushError> {
    let window = if flow.confirmed { MAX_IN_FLIGHT } else { 1 };
    let q = queue.clone();
    let code = resource.to_owned();
    let (first, state) = tokio::task::spawn_blocking(move || {
        Ok::<_, QueueError>((q.oldest(&code, 0, MAX_IN_FLIGHT)?, q.state(&code)?))
    })
    .await
    .expect("queue task panicked")?;
    if let Some(halt) = state.halt {
        return Err(PushError::Halted {
            resource: resource.to_owned(),
            reason: halt.reason,
        });
    }
    let stream = state.stream_or(client.stream()).to_owned();
    let baseline_of = |st: &crate::pipeline::queue::ResourceState| match st.baseline {
        Baseline::Complete { seq } => Some(seq),
        Baseline::Reading { .. } => None,
    };
    let mut baseline_seq = baseline_of(&state);
    // The committed bound, shared with the requests in flight: each judges its answer against
    // the bound as it stands when the answer arrives.
    let sent_through = AtomicU64::new(state.sent_through);
    let unanswered = Unanswered::default();
    let mut waiting: VecDeque<StoredBatch> = first.into();
    let mut last_read = waiting.back().map_or(0, |b| b.seq);
    let mut more = waiting.len() == MAX_IN_FLIGHT;
    let mut answers = futures_util::stream::FuturesOrdered::new();
    let mut done = 0;
    loop {
        while answers.len() < window
            && let Some(b) = waiting.pop_front()
        {
            if b.seq > sent_through.load(Ordering::Acquire) {
                // The bound is committed before the batch leaves. A probe raises it only to
                // its own seq: a `duplicate` for it may then name only itself (with its
                // digest); after an acknowledgement, the window's worth.
                let to = if flow.confirmed {
                    b.seq + MAX_IN_FLIGHT as u64 - 1
                } else {
                    b.seq
                };
                let raised = raise_sent_through(queue, resource, to).await?;
                sent_through.fetch_max(raised, Ordering::AcqRel);
            }
            unanswered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(b.seq);
            let baseline = baseline_seq == Some(b.seq);
            let (client, stream, unanswered, bound) = (client, &stream, &unanswered, &sent_through);
            answers.push_back(async move {
                let started = std::time::Instant::now();
                let answer = client
                    .send(queue, resource, stream, baseline, &b, unanswered, bound)
                    .await;
                crate::metrics::global().push_answered(
                    started.elapsed(),
                    answer.as_ref().err().map(PushError::kind),
                );
                (b, answer)
            });
        }
        let Some((b, answer)) = answers.next().await else {
            return Ok(done);
        };
        let ack = match answer {
            Ok(ack) => ack,
            Err(e) => {
                flow.confirmed = false;
                let kind = match &e {
                    PushError::Gap { .. } => Some(HaltKind::HubGap),
                    PushError::Rewound { .. } => Some(HaltKind::QueueRewound),
                    _ => None,
                };
                if let Some(kind) = kind {
                    let q = queue.clone();
                    let code = resource.to_owned();
                    let reason = e.to_string();
                    tokio::task::spawn_blocking(move || q.halt(&code, kind, &reason))
                        .await
                        .expect("queue task panicked")?;
                    tracing::error!(resource, error = %e, "Resource stopped.");
                }
                // Later answers are not awaited: those batches are resent (and answered
                // `duplicate` where they were applied). An overtaken batch after progress is
                // no failure (the oldest is resent alone next); any other error is reported
                // even after acknowledgements, so status shows it and the retry backs off.
                return if done > 0 && matches!(e, PushError::Overtaken { .. }) {
                    Ok(done)
                } else {
                    Err(e)
                };
            }
        };
        let q = queue.clone();
        let code = resource.to_owned();
        let seq = b.seq;
        let (records, digest) = (b.records, b.digest.clone());
        let status = format!("{:?}", ack.status).to_lowercase();
        let batch_stream = stream.clone();
        // The ack also raises the committed bound over the window after this batch, and
        // stores the batch's audit entry until it is in the audit log (queue module doc).
        let bound = tokio::task::spawn_blocking(move || {
            // The exchange's audit record: which batch, how many records, their digest.
            let detail = serde_json::json!({"seq": seq, "records": records, "digest": digest, "ack": status, "stream": batch_stream});
            let acked = q.ack(&code, seq, &detail)?;
            let data_dir = q.path().parent().unwrap_or(Path::new("."));
            match crate::audit::append(data_dir, "batch.acked", &code, detail) {
                Ok(_) => {
                    if let Err(e) = q.audited(&acked.pending) {
                        tracing::warn!(resource = %code, seq, error = %e, "Cannot mark the batch's audit entry as written; the next start checks the audit log for it.");
                    }
                    match q.retry_audit() {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(entries = n, "Audit entries that could not be written before were appended."),
                        Err(e) => tracing::error!(error = %e, "Cannot write the audit log; the entries stay in the queue and are appended later."),
                    }
                }
                Err(e) => {
                    tracing::error!(resource = %code, seq, error = %e, "Cannot write the audit log; the batch's entry stays in the queue and is appended later (审计日志写入失败，该批次的审计记录保留在队列中，稍后补写).");
                    q.audit_failed(acked.pending);
                }
            }
            Ok::<_, QueueError>(acked.sent_through)
        })
        .await
        .expect("queue task panicked")?;
        sent_through.fetch_max(bound, Ordering::AcqRel);
        unanswered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
        tracing::debug!(resource, seq = ack.seq, status = ?ack.status, "Batch acknowledged.");
        flow.confirmed = true;
        done += 1;
        acked();
        // Keep the window full: read the next batches after the last one read.
        let window_now = MAX_IN_FLIGHT;
        if more && waiting.is_empty() && answers.len() < window_now {
            let q = queue.clone();
            let code = resource.to_owned();
            let after = last_read;
            // The state again: a batch enqueued since may be the one completing the baseline.
            let (next, state) = tokio::task::spawn_blocking(move || {
                Ok::<_, QueueError>((q.oldest(&code, after, window_now)?, q.state(&code)?))
            })
            .await
            .expect("queue task panicked")?;
            baseline_seq = baseline_of(&state);
            more = !next.is_empty();
            last_read = next.last().map_or(last_read, |b| b.seq);
            waiting.extend(next);
        }
        if window == 1 {
            // A probe: the next call opens the window.
            return Ok(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        assert_eq!(parse_retry_after("5"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let d = parse_retry_after(&later).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
