//! The hub's client: mutual TLS with the configured CA only; one batch per request
//! (`POST /v1/batches`), the catalogue entry, the health check; transport failures explained
//! (a TLS handshake's rustls error is dug out of the chain).

use std::time::Duration;

use exchange_protocol::batch::{self, Ack, BatchId, header};
use exchange_protocol::signature::{self, BatchSigner, Signed};
use exchange_protocol::tls;

use super::answer::{Reply, Sent, error_text};
use super::error::PushError;
use super::flight::InFlight;
use crate::config::Config;
use crate::pipeline::queue::StoredBatch;

/// A client of the hub's batch endpoint.
#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    url: String,
    node: String,
    stream: String,
    /// Signs each batch with the node's key (docs/PROTOCOL.md §4.7); `None` for a key no
    /// signature scheme uses (batches then leave unsigned, which a hub may refuse).
    signer: Option<BatchSigner>,
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
                reason: exchange_protocol::cause::chain(&e),
            })?;
        let key = tls::load_key(&config.hub.tls.key)?;
        let signer = BatchSigner::new(&key)
            .inspect_err(|e| tracing::warn!(error = %e, "Batches leave unsigned."))
            .ok();
        Ok(HubClient {
            http,
            url: config.hub.url.clone(),
            node: config.node.id.clone(),
            stream: stream.to_owned(),
            signer,
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

    /// Sends one batch of the stream in flight and returns the hub's acknowledgement;
    /// `baseline` marks the batch that completes the stream's baseline. The answer is read
    /// against `flight` as it stands when the answer arrives (acknowledgements of other
    /// batches may have raised its bound meanwhile): the oldest batch still queued as this
    /// one leaves tells a batch that overtook others from a gap, and the committed bound with
    /// the queued digests an honest `duplicate` from a rewound queue.
    pub(super) async fn send(
        &self,
        flight: &InFlight<'_>,
        baseline: bool,
        b: &StoredBatch,
    ) -> Result<Ack, PushError> {
        // Taken now, since acknowledgements may arrive before this answer.
        let head = flight.oldest_queued(b.seq);
        let reply = self.post(self.batch_request(flight, baseline, b)).await?;
        let sent = Sent {
            url: &self.url,
            flight,
            batch: b,
            head,
        };
        sent.read(reply).await
    }

    /// `POST /v1/batches` with the batch's identity in the protocol's headers.
    fn batch_request(
        &self,
        flight: &InFlight<'_>,
        baseline: bool,
        b: &StoredBatch,
    ) -> reqwest::RequestBuilder {
        let id = BatchId {
            node: self.node.clone(),
            resource: flight.resource.to_owned(),
            stream: flight.stream.clone(),
            seq: b.seq,
        };
        let mut request = self
            .http
            .post(format!("{}{}", self.url, batch::BATCHES_PATH));
        for (name, value) in batch_headers(&id, b, baseline, self.signer.as_ref()) {
            request = request.header(name, value);
        }
        request.body(b.body.clone())
    }

    /// Sends a request and reads the whole answer.
    async fn post(&self, request: reqwest::RequestBuilder) -> Result<Reply, PushError> {
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
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
        Ok(Reply {
            status,
            retry_after,
            body: body.into(),
        })
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
        Err(PushError::CatalogueRefused {
            url: self.url.clone(),
            resource: entry.resource.clone(),
            status: status.as_u16(),
            error: error_text(&body),
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
                reason: exchange_protocol::tr!(
                    "health check answered {}",
                    "健康检查得到应答 {}",
                    r.status()
                ),
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
                reason: exchange_protocol::cause::chain(e),
            },
        }
    }
}

/// The headers of batch `b` as `id` (docs/PROTOCOL.md §4.1), signed by `signer` (§4.7):
/// what an online request carries and an offline batch file holds (§12).
pub(super) fn batch_headers(
    id: &BatchId,
    b: &StoredBatch,
    baseline: bool,
    signer: Option<&BatchSigner>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (header::PROTOCOL, batch::PROTOCOL_VERSION.to_owned()),
        (header::NODE, id.node.clone()),
        (header::RESOURCE, id.resource.clone()),
        (header::STREAM, id.stream.clone()),
        (header::SEQ, id.seq.to_string()),
        (header::RECORDS, b.records.to_string()),
        (header::DIGEST, b.digest.clone()),
        (header::IDEMPOTENCY_KEY, id.idempotency_key()),
        ("content-type", batch::CONTENT_TYPE.to_owned()),
        ("content-encoding", batch::CONTENT_ENCODING.to_owned()),
    ];
    if baseline {
        headers.push((header::BASELINE, batch::BASELINE_COMPLETE.to_owned()));
    }
    let signed = Signed {
        node: &id.node,
        resource: &id.resource,
        stream: &id.stream,
        seq: id.seq,
        sm3: &b.digest,
    };
    match signer.map(|s| s.sign(&signed)) {
        Some(Ok(value)) => headers.push((signature::HEADER, value)),
        Some(Err(e)) => tracing::warn!(error = %e, seq = id.seq, "Batch leaves unsigned."),
        None => {}
    }
    headers
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

/// The longest `Retry-After` waited: the long backoff's ceiling (docs/PROTOCOL.md §6), so a
/// hub (or whatever answers in its place) cannot park a resource for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// `Retry-After` as delta-seconds or an HTTP date, at most [`MAX_RETRY_AFTER`].
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let delay = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
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
        // A day, as seconds or as a date, is waited ten minutes at most.
        assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_AFTER));
        let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc2822();
        assert_eq!(parse_retry_after(&tomorrow), Some(MAX_RETRY_AFTER));
    }
}
