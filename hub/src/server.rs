//! The hub's HTTPS server: mutual TLS, then HTTP/1.1 or HTTP/2, then the batch endpoint. The
//! accept loop and graceful shutdown are `exchange_protocol::server` (shared with the agent's
//! verification service); this module adds the hub's limits and endpoints.
//!
//! Connection life cycle: accept → TLS handshake (the client must present a certificate
//! issued by `listen.ca`; a failed handshake is logged with the peer address and the
//! connection dropped, and never stops the server) → the certificate's common name becomes
//! the connection's node id ([`Peer`]) → HTTP requests until the client closes.
//!
//! Shutdown protocol: when the shutdown future resolves, the listener stops accepting,
//! every open connection is told to finish (HTTP/1.1: close after the current response;
//! HTTP/2: GOAWAY), requests in flight run to completion — a batch being applied is either
//! committed and acknowledged or not committed — and [`run`] returns when all connections
//! have closed, or after [`DRAIN_TIMEOUT`] at the latest.
//!
//! Limits (`[limits]`, [`Limits`]): at most `max_connections` connections are served at once
//! (the accept loop waits for a free one); a TLS handshake must finish within
//! `handshake_timeout` and HTTP/1.1 headers arrive within `header_timeout`. A batch request
//! first takes one of `max_concurrent_requests` slots — none free: `503` with `Retry-After`
//! at once, before the body is read — and holds it until answered; its body must arrive
//! within `body_timeout` of taking the slot, else `408` and the connection is closed. So the
//! bodies in memory never exceed `max_concurrent_requests × max_batch_bytes`, and a slow
//! client holds a slot for at most `body_timeout`. [`Load`] counts all of this for tests.
//!
//! Batch request checks, in order (docs/PROTOCOL.md §6): a free request slot (503) → client
//! certificate has a common name (403) → `exchange-protocol` is supported (400) →
//! `exchange-node` equals the common name (403) → the other headers are well formed (400) →
//! the body fits `max_batch_bytes` compressed (413), arrives within `body_timeout` (408) and
//! fits decompressed (413) → digest, record count and every line, keys non-empty, without
//! NUL and within `max_key_bytes` (400; a refusal because of one line names it: the error
//! body's `record`, its 0-based index) → ownership, and a catalogue entry that is not
//! `share = "none"` (403) →
//! no gap in the stream's seq (409) → applied or duplicate (200), or the store is failing
//! (503/500). Decimal headers are digits only, without sign or leading zero ([`decimal`]).
//! A refusal answered before the body was read to its end (every check up to the body's
//! size) closes the connection after the answer (HTTP/1.1 `connection: close`): the hub never
//! drains a body it will not use (docs/PROTOCOL.md §6).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header as http_header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use exchange_protocol::batch::{
    self, Ack, AckStatus, BATCHES_PATH, BatchError, BatchId, CONTENT_ENCODING, CONTENT_TYPE,
    ErrorBody, HEALTH_PATH, PROTOCOL_VERSION, header,
};
use exchange_protocol::catalogue;
use exchange_protocol::server::{ConnectionLimits, Observers, ServerTls};
use exchange_protocol::signature::{self, Signature, Signed};
use exchange_protocol::tls::TlsError;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::{HubConfig, Limits};
use crate::store::{Evidence, Store, StoreError};

/// Seconds a client should wait after a 503 before retrying.
const RETRY_AFTER_SECS: &str = "5";
/// Longest resource code accepted.
const MAX_RESOURCE_LEN: usize = 128;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The TLS material in `[listen]` is unusable (the TLS error is in the message, not a
    /// `source`: a chain, `{:#}`, names it once).
    #[error("{}", exchange_protocol::tr!(
        "cannot set up TLS from [listen] (ca, cert, key): {0}",
        "无法根据 [listen]（ca、cert、key）建立 TLS：{0}", .0
    ))]
    Tls(TlsError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listener is unusable (the error in the message, not a `source`: named once).
    #[error("{}", exchange_protocol::tr!(
        "the listening socket is unusable: {0}",
        "监听套接字不可用：{0}", .0
    ))]
    Listener(std::io::Error),
}

impl From<TlsError> for HubError {
    fn from(e: TlsError) -> Self {
        HubError::Tls(e)
    }
}

pub use exchange_protocol::server::{DRAIN_TIMEOUT, Gauge, Held, Peer};

/// What the server is carrying, counted for tests and logs.
#[derive(Debug, Default)]
pub struct Load {
    /// Open client connections (after accept, until closed).
    pub connections: Arc<Gauge>,
    /// Batch requests holding a request slot.
    pub requests: Gauge,
    /// Bytes of request bodies held in memory (compressed, as received).
    pub body_bytes: Gauge,
    /// Requests answered 503 because every slot was taken.
    pub busy: AtomicU64,
    /// Requests answered 408 because the body did not arrive within `body_timeout`.
    pub timed_out: AtomicU64,
    /// What the accept loop refused or closed past the handshake (connection limit, request
    /// limit, idle connections).
    pub listener: Arc<exchange_protocol::server::Counters>,
    /// Refused TLS handshakes by reason.
    pub refused_handshakes:
        std::sync::Mutex<std::collections::BTreeMap<exchange_protocol::tls::HandshakeFailure, u64>>,
    /// Reloads (SIGHUP) that took effect.
    pub reloads: AtomicU64,
    /// Reloads refused.
    pub reload_failures: AtomicU64,
    /// Whether the last reload was refused.
    pub reload_failed: std::sync::atomic::AtomicBool,
}

impl Load {
    /// A reload took effect.
    pub fn reloaded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.reload_failed.store(false, Ordering::Relaxed);
    }

    /// A reload was refused: nothing changed.
    pub fn reload_refused(&self) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
        self.reload_failed.store(true, Ordering::Relaxed);
    }

    /// Refused TLS handshakes so far, by reason.
    pub fn handshake_failures(
        &self,
    ) -> std::collections::BTreeMap<exchange_protocol::tls::HandshakeFailure, u64> {
        self.refused_handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What the request handlers share.
#[derive(Clone)]
struct AppState {
    /// Where batches go.
    store: Store,
    /// Body size, concurrency and timeouts.
    limits: Limits,
    /// One permit per batch request being processed (`max_concurrent_requests`).
    slots: Arc<Semaphore>,
    /// The counters.
    load: Arc<Load>,
}

/// Opens the store named in `config` and serves until `shutdown` resolves.
///
/// `listener` is already bound (tests bind `127.0.0.1:0`); `config.listen` is not used here.
pub async fn run(
    listener: TcpListener,
    config: &HubConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    run_observed(listener, config, Arc::new(Load::default()), shutdown).await
}

/// Serves with an already opened store (so the caller can read the store meanwhile).
pub async fn run_with_store(
    listener: TcpListener,
    config: &HubConfig,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    let tls = config.server_tls()?;
    serve(
        listener,
        tls,
        store,
        config.limits,
        Arc::new(Load::default()),
        shutdown,
    )
    .await
}

/// Like [`run`], counting what the server carries in `load` (tests read it while it runs).
pub async fn run_observed(
    listener: TcpListener,
    config: &HubConfig,
    load: Arc<Load>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    let tls = config.server_tls()?;
    let store = Store::open(&config.store).await?;
    serve(listener, tls, store, config.limits, load, shutdown).await
}

/// The hub: the `/v1/` endpoints over [`serve_router`]'s accept loop. `tls` must require
/// client certificates ([`HubConfig::server_tls`] builds such a configuration).
pub async fn serve(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
    store: Store,
    limits: Limits,
    load: Arc<Load>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    let app = router(AppState {
        store,
        limits,
        slots: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
        load: load.clone(),
    });
    serve_router(listener, tls, app, limits, load, shutdown).await
}

/// The accept loop and connection life cycle of the module documentation, serving `app`:
/// every request carries the connection's [`Peer`] as an extension. `limits` applies its
/// connection limit and timeouts (request slots and body limits are the app's own). Tests
/// serve their own `app` with it (e.g. a hub that answers wrongly on purpose).
pub async fn serve_router(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
    app: Router,
    limits: Limits,
    load: Arc<Load>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    let connections = ConnectionLimits {
        max_connections: limits.max_connections,
        max_handshakes: limits.max_handshakes,
        handshake_timeout: limits.handshake_timeout,
        header_timeout: limits.header_timeout,
        idle_timeout: limits.idle_timeout,
        max_streams: limits.max_streams,
        max_requests: limits.max_requests,
    };
    exchange_protocol::server::serve_router(
        "Hub",
        listener,
        tls,
        app,
        connections,
        // Refused handshakes are logged by the accept loop and counted for `/metrics`.
        Observers {
            connections: load.connections.clone(),
            rejections: Some({
                let load = load.clone();
                Arc::new(move |r: exchange_protocol::server::Rejection| {
                    *load
                        .refused_handshakes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(r.reason)
                        .or_default() += 1;
                })
            }),
            counters: load.listener.clone(),
        },
        shutdown,
    )
    .await
    .map_err(|e| HubError::Listener(e.0))
}

/// The hub's endpoints over `store`, as [`serve`] serves them, for a caller that sends them
/// requests itself (`exchange-hub import` sends each offline batch through it with
/// `tower::ServiceExt::oneshot`, so a file meets exactly the online checks and store code).
/// Each request must carry a [`Peer`] extension.
pub(crate) fn endpoints(store: Store, limits: Limits) -> Router {
    router(AppState {
        store,
        limits,
        slots: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
        load: Arc::new(Load::default()),
    })
}

fn router(state: AppState) -> Router {
    Router::new()
        .route(BATCHES_PATH, post(post_batch).fallback(method_not_allowed))
        .route(HEALTH_PATH, get(health).fallback(method_not_allowed))
        .route(
            catalogue::CATALOGUE_PATH,
            axum::routing::put(put_catalogue).fallback(method_not_allowed),
        )
        .fallback(not_found)
        .with_state(state)
}

/// A refused request: status and a sentence for the [`ErrorBody`].
#[derive(Debug)]
struct Refusal {
    /// The HTTP status.
    status: StatusCode,
    /// What was wrong and what to do.
    message: String,
    /// For `409`: the stream's high-water mark.
    last_seq: Option<u64>,
    /// For a `400` because of one line of the body: its 0-based index (docs/PROTOCOL.md §7).
    record: Option<u64>,
    /// Close the connection after answering (HTTP/1.1; the body was not read to its end).
    close: bool,
}

/// A refusal answered before the request's body was read to its end: the connection is closed
/// after the answer (HTTP/1.1 `connection: close`) rather than drained (docs/PROTOCOL.md §6).
fn unread(refusal: Refusal) -> Refusal {
    Refusal {
        close: true,
        ..refusal
    }
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
            last_seq: None,
            record: None,
            close: false,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            last_seq: self.last_seq,
            record: self.record,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                http_header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if self.close {
            response
                .headers_mut()
                .insert(http_header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found(request: Request) -> Refusal {
    Refusal {
        close: has_unread_body(&request),
        ..Refusal::new(
            StatusCode::NOT_FOUND,
            format!(
                "no endpoint `{} {}`; this hub serves `POST {BATCHES_PATH}`, `PUT {}` and `GET {HEALTH_PATH}` (protocol version {PROTOCOL_VERSION})",
                request.method(),
                request.uri().path(),
                catalogue::CATALOGUE_PATH
            ),
        )
    }
}

/// Whether an HTTP/1.1 request that is answered without reading its body has one: then its
/// connection closes after the answer (docs/PROTOCOL.md §6).
fn has_unread_body(request: &Request) -> bool {
    let headers = request.headers();
    request.version() <= axum::http::Version::HTTP_11
        && (headers.contains_key(http_header::TRANSFER_ENCODING)
            || headers
                .get(http_header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0"))
}

async fn method_not_allowed(request: Request) -> Response {
    let allowed = match request.uri().path() {
        BATCHES_PATH => "POST",
        catalogue::CATALOGUE_PATH => "PUT",
        _ => "GET, HEAD",
    };
    let mut response = Refusal {
        close: has_unread_body(&request),
        ..Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "`{}` is not allowed on `{}`; use `{allowed}`",
                request.method(),
                request.uri().path()
            ),
        )
    }
    .into_response();
    response
        .headers_mut()
        .insert(http_header::ALLOW, HeaderValue::from_static(allowed));
    response
}

/// `POST /v1/batches`.
async fn post_batch(
    State(state): State<AppState>,
    Extension(peer): Extension<Peer>,
    request: Request,
) -> Response {
    let resource_hint = request
        .headers()
        .get(header::RESOURCE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    // `connection: close` is an HTTP/1.1 header; HTTP/2 ends the stream instead.
    let http1 = request.version() <= axum::http::Version::HTTP_11;
    // The slot is taken before anything else, so a refusal here is cheap: the body is not read.
    let Ok(_slot) = state.slots.clone().try_acquire_owned() else {
        state.load.busy.fetch_add(1, Ordering::Relaxed);
        debug!(peer = %peer.addr, resource = %resource_hint, "Every request slot is taken; answered 503.");
        let mut refusal = Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the hub is processing its limit of {} batch requests; retry later",
                state.limits.max_concurrent_requests
            ),
        );
        refusal.close = http1;
        return refusal.into_response();
    };
    let _request = Held::new(&state.load.requests, 1);
    match receive(&state, &peer, request).await {
        Ok(ack) => Json(ack).into_response(),
        Err(mut refusal) => {
            refusal.close = refusal.close && http1;
            warn!(
                peer = %peer.addr,
                node = peer.node.as_deref().unwrap_or("-"),
                resource = %resource_hint,
                status = refusal.status.as_u16(),
                record = refusal.record,
                reason = %refusal.message,
                "Batch refused."
            );
            refusal.into_response()
        }
    }
}

/// The node a request comes from: the certificate's common name (else `403`), after the
/// protocol version (else `400`) and the `exchange-node` header, which must equal it (else
/// `403`). `what` names the request in messages.
fn identify<'a>(peer: &'a Peer, headers: &HeaderMap, what: &str) -> Result<&'a str, Refusal> {
    let Some(node) = peer.node.as_deref() else {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "the client certificate has no common name; ask the platform CA for a certificate whose common name (CN) is the node id",
        ));
    };

    match text_header(headers, header::PROTOCOL)? {
        Some(v) if v == PROTOCOL_VERSION => {}
        Some(v) => {
            return Err(Refusal::bad(format!(
                "unsupported protocol version `{v}` in header `{}`; this hub supports version {PROTOCOL_VERSION}",
                header::PROTOCOL
            )));
        }
        None => {
            return Err(Refusal::bad(format!(
                "missing header `{}`; this hub supports protocol version {PROTOCOL_VERSION}",
                header::PROTOCOL
            )));
        }
    }
    let claimed = required(headers, header::NODE)?;
    if claimed != node {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("certificate identifies node `{node}` but the {what} claims node `{claimed}`"),
        ));
    }
    Ok(node)
}

/// `PUT /v1/catalogue`: a resource's catalogue entry (docs/PROTOCOL.md §10).
async fn put_catalogue(
    State(state): State<AppState>,
    Extension(peer): Extension<Peer>,
    request: Request,
) -> Response {
    let http1 = request.version() <= axum::http::Version::HTTP_11;
    match catalogue_entry(&state, &peer, request).await {
        Ok(resource) => {
            info!(node = peer.node.as_deref().unwrap_or("-"), resource = %resource, "Catalogue entry recorded.");
            Json(serde_json::json!({ "status": "recorded", "resource": resource })).into_response()
        }
        Err(mut refusal) => {
            refusal.close = refusal.close && http1;
            warn!(
                peer = %peer.addr,
                node = peer.node.as_deref().unwrap_or("-"),
                status = refusal.status.as_u16(),
                reason = %refusal.message,
                "Catalogue entry refused."
            );
            refusal.into_response()
        }
    }
}

/// Checks and stores one catalogue entry; returns its resource code.
async fn catalogue_entry(
    state: &AppState,
    peer: &Peer,
    request: Request,
) -> Result<String, Refusal> {
    let (parts, body) = request.into_parts();
    let node = identify(peer, &parts.headers, "catalogue entry").map_err(unread)?;
    let bytes = axum::body::to_bytes(body, catalogue::MAX_ENTRY_BYTES)
        .await
        .map_err(|_| {
            unread(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a catalogue entry is at most {} bytes",
                    catalogue::MAX_ENTRY_BYTES
                ),
            ))
        })?;
    let entry = catalogue::CatalogueEntry::parse(&bytes).map_err(Refusal::bad)?;
    let text = serde_json::to_string(&entry).expect("an entry serializes");
    match state
        .store
        .record_catalogue(node, &entry.resource, &text)
        .await
    {
        Ok(()) => Ok(entry.resource),
        Err(e @ StoreError::NotOwner { .. }) => {
            Err(Refusal::new(StatusCode::FORBIDDEN, e.to_string()))
        }
        Err(e @ StoreError::Unavailable { .. }) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{e}; retry later"),
        )),
        Err(e) => Err(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the hub could not store the catalogue entry: {e}"),
        )),
    }
}

/// Checks, decodes and applies one batch.
async fn receive(state: &AppState, peer: &Peer, request: Request) -> Result<Ack, Refusal> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    // Refused on its headers, a request's body is not read: its connection closes.
    let node = identify(peer, headers, "batch").map_err(unread)?;
    let id = BatchId {
        node: node.to_owned(),
        resource: resource(headers).map_err(unread)?,
        stream: stream(headers).map_err(unread)?,
        seq: seq(headers).map_err(unread)?,
    };
    // From here until this request ends (or the store releases it), a later batch of the
    // stream waits for this one.
    let arrival = state.store.arriving(&id);
    let batch = BatchHeaders::read(headers).map_err(unread)?;
    let signature = match text_header(headers, signature::HEADER).map_err(unread)? {
        Some(v) => Some(Signature::parse(v).map_err(|e| unread(Refusal::bad(e.to_string())))?),
        None if state.limits.require_signatures => {
            return Err(unread(Refusal::bad(format!(
                "this hub requires the node's signature on every batch: header `{}` is missing (docs/PROTOCOL.md §4.7)",
                signature::HEADER
            ))));
        }
        None => None,
    };
    let (compressed, ndjson) = read_ndjson(state, headers, body).await?;
    // A line that is not a valid record, or whose key is refused, is named (`record`): the
    // agent quarantines that record and sends the rest again.
    let records = batch::parse_limited(
        &ndjson,
        batch.digest,
        batch.count,
        state.limits.max_key_bytes,
    )
    .map_err(|e| Refusal {
        record: e.record(),
        ..Refusal::bad(e.to_string())
    })?;
    let evidence = match signature {
        Some(signature) => Some(evidence(peer, &id, batch.digest, signature, compressed)?),
        None => None,
    };
    let applied = state
        .store
        .apply(
            &id,
            batch.digest,
            &records,
            batch.baseline,
            arrival,
            evidence,
        )
        .await;
    answer(&id, batch.baseline, applied)
}

/// A batch's signature checked against the certificate its connection presented
/// (docs/PROTOCOL.md §4.7), and what the store keeps of it.
fn evidence(
    peer: &Peer,
    id: &BatchId,
    digest: &str,
    signature: Signature,
    body: Vec<u8>,
) -> Result<Evidence, Refusal> {
    let certificate = peer
        .certificate
        .as_ref()
        .ok_or_else(|| Refusal::bad("no client certificate to verify the signature with"))?;
    let signed = Signed {
        node: &id.node,
        resource: &id.resource,
        stream: &id.stream,
        seq: id.seq,
        sm3: digest,
    };
    signature
        .verify(&signed, certificate)
        .map_err(|e| Refusal::bad(e.to_string()))?;
    Ok(Evidence {
        signature: signature.header(),
        certificate: certificate.as_ref().to_vec(),
        body,
    })
}

/// What a batch's headers say of its body, checked.
struct BatchHeaders<'h> {
    /// The number of records the body holds.
    count: u64,
    /// SM3 of the uncompressed body, 64 hex digits.
    digest: &'h str,
    /// The batch completes its stream's baseline.
    baseline: bool,
}

impl<'h> BatchHeaders<'h> {
    /// Reads the record count, digest and baseline mark, and checks the body's encoding and
    /// type.
    fn read(headers: &'h HeaderMap) -> Result<Self, Refusal> {
        let count = number(
            headers,
            header::RECORDS,
            "the number of records in the batch",
        )?;
        let digest = required(headers, header::DIGEST)?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refusal::bad(format!(
                "header `{}` must be the SM3 digest of the uncompressed body as 64 hex digits",
                header::DIGEST
            )));
        }
        match text_header(headers, http_header::CONTENT_ENCODING.as_str())? {
            Some(v) if v.trim().eq_ignore_ascii_case(CONTENT_ENCODING) => {}
            other => {
                return Err(Refusal::bad(format!(
                    "header `content-encoding` is `{}`; the body must be compressed with `{CONTENT_ENCODING}`",
                    other.unwrap_or("(missing)")
                )));
            }
        }
        match text_header(headers, http_header::CONTENT_TYPE.as_str())? {
            Some(v)
                if v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case(CONTENT_TYPE)) => {}
            other => {
                return Err(Refusal::bad(format!(
                    "header `content-type` is `{}`; a batch is `{CONTENT_TYPE}`",
                    other.unwrap_or("(missing)")
                )));
            }
        }
        let baseline = match text_header(headers, header::BASELINE)? {
            None => false,
            Some(v) if v.trim().eq_ignore_ascii_case(batch::BASELINE_COMPLETE) => true,
            Some(_) => {
                return Err(Refusal::bad(format!(
                    "header `{}` may only be `{}` (on the batch that completes a stream's baseline)",
                    header::BASELINE,
                    batch::BASELINE_COMPLETE
                )));
            }
        };
        Ok(BatchHeaders {
            count,
            digest,
            baseline,
        })
    }
}

/// The batch's body, read and decompressed within `max_batch_bytes` (413 beyond, before the
/// body is read when `content-length` says so).
async fn read_ndjson(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(Vec<u8>, Vec<u8>), Refusal> {
    let limit = state.limits.max_batch_bytes;
    let too_large = || too_large(limit);
    if let Some(length) =
        text_header(headers, http_header::CONTENT_LENGTH.as_str()).map_err(unread)?
        && length.trim().parse::<u64>().is_ok_and(|n| n > limit as u64)
    {
        return Err(unread(too_large()));
    }
    let compressed = read_body(state, body).await?;
    let ndjson = batch::decompress(&compressed, limit).map_err(|e| match e {
        BatchError::TooLarge { .. } => too_large(),
        other => Refusal::bad(other.to_string()),
    })?;
    Ok((compressed, ndjson))
}

/// The answer to batch `id` once the store applied it or not, logged when applied or a
/// duplicate.
fn answer(id: &BatchId, baseline: bool, applied: Result<Ack, StoreError>) -> Result<Ack, Refusal> {
    match applied {
        Ok(ack) => {
            match ack.status {
                AckStatus::Applied => info!(
                    node = %id.node,
                    resource = %id.resource,
                    stream = %id.stream,
                    seq = id.seq,
                    records = ack.records,
                    swept = ack.swept,
                    baseline,
                    "Batch applied."
                ),
                AckStatus::Duplicate => info!(
                    node = %id.node,
                    resource = %id.resource,
                    stream = %id.stream,
                    seq = id.seq,
                    "Duplicate batch acknowledged; nothing applied."
                ),
            }
            Ok(ack)
        }
        Err(e @ (StoreError::NotOwner { .. } | StoreError::NotShared { .. })) => {
            Err(Refusal::new(StatusCode::FORBIDDEN, e.to_string()))
        }
        Err(e @ StoreError::Gap { last_seq, .. }) => Err(Refusal {
            last_seq: Some(last_seq),
            ..Refusal::new(StatusCode::CONFLICT, e.to_string())
        }),
        Err(e @ StoreError::Unavailable { .. }) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{e}; retry later"),
        )),
        Err(e) => Err(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the hub could not store the batch: {e}"),
        )),
    }
}

/// Reads a request body into memory: at most `max_batch_bytes` (413), within `body_timeout`
/// of now (408, connection closed), counting the bytes held in [`Load::body_bytes`].
async fn read_body(state: &AppState, body: axum::body::Body) -> Result<Vec<u8>, Refusal> {
    let limits = &state.limits;
    let deadline = tokio::time::Instant::now() + limits.body_timeout;
    let mut body = body;
    let mut held = Held::new(&state.load.body_bytes, 0);
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                state.load.timed_out.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal {
                    close: true,
                    ..Refusal::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the request body did not arrive within {} s (this hub's `[limits] body_timeout`); the connection is closed",
                            limits.body_timeout.as_secs()
                        ),
                    )
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Refusal {
                    close: true,
                    ..Refusal::bad(format!("the request body could not be read: {e}"))
                });
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limits.max_batch_bytes {
                return Err(Refusal {
                    close: true,
                    ..too_large(limits.max_batch_bytes)
                });
            }
            held.grow(data.len());
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The `413` answer.
fn too_large(limit: usize) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the batch body is larger than this hub's limit of {limit} bytes (compressed or uncompressed); a queued batch never changes, so raise this hub's `[limits] max_batch_bytes` (and lower the agent's `batch.max_bytes` for later batches)"
        ),
    )
}

/// A header as text; `None` when absent.
fn text_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Refusal> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| Refusal::bad(format!("header `{name}` must be visible ASCII text"))),
    }
}

/// A header that must be present and non-empty.
fn required<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, Refusal> {
    match text_header(headers, name)? {
        Some(v) if !v.trim().is_empty() => Ok(v.trim()),
        _ => Err(Refusal::bad(format!("missing header `{name}`"))),
    }
}

/// A header holding a decimal integer (docs/PROTOCOL.md §4.1): [`decimal`].
fn number(headers: &HeaderMap, name: &str, what: &str) -> Result<u64, Refusal> {
    decimal(required(headers, name)?).ok_or_else(|| {
        Refusal::bad(format!(
            "header `{name}` must be a decimal integer from 0 to {}: digits only, without sign or leading zeros ({what})",
            i64::MAX
        ))
    })
}

/// The value of a *decimal integer* of docs/PROTOCOL.md §4.1 ([`batch::parse_decimal`]).
fn decimal(text: &str) -> Option<u64> {
    batch::parse_decimal(text)
}

fn resource(headers: &HeaderMap) -> Result<String, Refusal> {
    let code = required(headers, header::RESOURCE)?;
    if code.len() > MAX_RESOURCE_LEN || code.contains('/') || code.contains(char::is_whitespace) {
        return Err(Refusal::bad(format!(
            "header `{}` must be a resource code of at most {MAX_RESOURCE_LEN} characters without spaces or `/`",
            header::RESOURCE
        )));
    }
    Ok(code.to_owned())
}

fn stream(headers: &HeaderMap) -> Result<String, Refusal> {
    let stream = required(headers, header::STREAM)?;
    if stream.len() != 32 || !stream.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refusal::bad(format!(
            "header `{}` must be the agent's queue id: 32 hex digits",
            header::STREAM
        )));
    }
    Ok(stream.to_ascii_lowercase())
}

fn seq(headers: &HeaderMap) -> Result<u64, Refusal> {
    let seq = number(headers, header::SEQ, "the batch's sequence number, from 1")?;
    if seq == 0 || seq > i64::MAX as u64 {
        return Err(Refusal::bad(format!(
            "header `{}` must be between 1 and {}",
            header::SEQ,
            i64::MAX
        )));
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::decimal;

    #[test]
    fn a_decimal_header_is_digits_without_sign_or_leading_zeros() {
        let cases: [(&str, Option<u64>); 14] = [
            ("0", Some(0)),
            ("1", Some(1)),
            ("42", Some(42)),
            ("9223372036854775807", Some(i64::MAX as u64)),
            ("9223372036854775808", None),
            ("18446744073709551616", None),
            ("+1", None),
            ("-1", None),
            ("01", None),
            ("00", None),
            ("1_000", None),
            ("1 2", None),
            ("0x1", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(decimal(text), expected, "{text:?}");
        }
    }
}
