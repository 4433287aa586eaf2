//! The hub's HTTPS server: mutual TLS, then HTTP/1.1 or HTTP/2, then the batch endpoint.
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
//! Batch request checks, in order (docs/PROTOCOL.md): client certificate has a common name
//! (403) → `exchange-protocol` is supported (400) → `exchange-node` equals the common name
//! (403) → the other headers are well formed (400) → the body fits `max_batch_bytes`
//! compressed (413) and decompressed (413) → digest, record count and every line (400) →
//! ownership (403) → applied or duplicate (200), or the store is failing (503/500).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
use exchange_protocol::tls::{TlsError, explain, peer_common_name};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::config::HubConfig;
use crate::store::{Store, StoreError};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send the request headers (HTTP/1.1).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for requests in flight before returning anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds a client should wait after a 503 before retrying.
const RETRY_AFTER_SECS: &str = "5";
/// Longest resource code accepted.
const MAX_RESOURCE_LEN: usize = 128;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The TLS material in `[listen]` is unusable.
    #[error("cannot set up TLS from [listen] (ca, cert, key): {0}")]
    Tls(#[from] TlsError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listener is unusable.
    #[error("the listening socket is unusable: {0}")]
    Listener(#[source] std::io::Error),
}

/// Who is on the other end of a connection; added to every request as an extension.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The node id: the common name of the client certificate (`None` if it has none).
    pub node: Option<String>,
    /// The client's address.
    pub addr: SocketAddr,
}

/// What the request handlers share.
#[derive(Clone)]
struct AppState {
    /// Where batches go.
    store: Store,
    /// Largest body, compressed and decompressed.
    max_batch_bytes: usize,
}

/// Opens the store named in `config` and serves until `shutdown` resolves.
///
/// `listener` is already bound (tests bind `127.0.0.1:0`); `config.listen` is not used here.
pub async fn run(
    listener: TcpListener,
    config: &HubConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    let tls = config.server_tls()?;
    let store = Store::open(&config.store).await?;
    serve(listener, tls, store, config.max_batch_bytes, shutdown).await
}

/// Serves with an already opened store (so the caller can read the store meanwhile).
pub async fn run_with_store(
    listener: TcpListener,
    config: &HubConfig,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    let tls = config.server_tls()?;
    serve(listener, tls, store, config.max_batch_bytes, shutdown).await
}

/// The accept loop. `tls` must require client certificates
/// ([`HubConfig::server_tls`] builds such a configuration).
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    store: Store,
    max_batch_bytes: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubError> {
    let local = listener.local_addr().map_err(HubError::Listener)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let app = router(AppState {
        store,
        max_batch_bytes,
    });
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    debug!(addr = %local, "Accepting connections.");
    loop {
        let (tcp, addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // E.g. too many open files: back off instead of spinning.
                    warn!(error = %e, "Cannot accept a connection; retrying shortly.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let reason = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .map(explain)
                        .unwrap_or_else(|| e.to_string());
                    warn!(peer = %addr, reason = %reason, "TLS handshake failed; connection dropped.");
                    return;
                }
                Err(_) => {
                    warn!(peer = %addr, "TLS handshake timed out; connection dropped.");
                    return;
                }
            };
            let node = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(peer_common_name);
            debug!(peer = %addr, node = node.as_deref().unwrap_or("-"), "Connection accepted.");
            let peer = Peer { node, addr };
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(peer.clone());
                    app.clone().oneshot(request.map(axum::body::Body::new))
                },
            );
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30));
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection).await {
                debug!(peer = %addr, error = %e, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    info!("Hub shutting down: no new connections; finishing requests in flight.");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            timeout_secs = DRAIN_TIMEOUT.as_secs(),
            "Connections still open after the drain timeout; stopping anyway."
        );
    }
    Ok(())
}

fn router(state: AppState) -> Router {
    Router::new()
        .route(BATCHES_PATH, post(post_batch).fallback(method_not_allowed))
        .route(HEALTH_PATH, get(health).fallback(method_not_allowed))
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
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody::new(self.message))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                http_header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found(request: Request) -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint `{} {}`; this hub serves `POST {BATCHES_PATH}` and `GET {HEALTH_PATH}` (protocol version {PROTOCOL_VERSION})",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    let allowed = if request.uri().path() == BATCHES_PATH {
        "POST"
    } else {
        "GET"
    };
    let mut response = Refusal::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "`{}` is not allowed on `{}`; use `{allowed}`",
            request.method(),
            request.uri().path()
        ),
    )
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
    match receive(&state, &peer, request).await {
        Ok(ack) => Json(ack).into_response(),
        Err(refusal) => {
            warn!(
                peer = %peer.addr,
                node = peer.node.as_deref().unwrap_or("-"),
                resource = %resource_hint,
                status = refusal.status.as_u16(),
                reason = %refusal.message,
                "Batch refused."
            );
            refusal.into_response()
        }
    }
}

/// Checks, decodes and applies one batch.
async fn receive(state: &AppState, peer: &Peer, request: Request) -> Result<Ack, Refusal> {
    let Some(node) = peer.node.as_deref() else {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "the client certificate has no common name; ask the platform CA for a certificate whose common name (CN) is the node id",
        ));
    };
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;

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
            format!("certificate identifies node `{node}` but the batch claims node `{claimed}`"),
        ));
    }
    let id = BatchId {
        node: node.to_owned(),
        resource: resource(headers)?,
        stream: stream(headers)?,
        seq: seq(headers)?,
    };
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

    let limit = state.max_batch_bytes;
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the batch body is larger than this hub's limit of {limit} bytes (compressed or uncompressed); a queued batch never changes, so raise this hub's `[limits] max_batch_bytes` (and lower the agent's `batch.max_bytes` for later batches)"
            ),
        )
    };
    if let Some(length) = text_header(headers, http_header::CONTENT_LENGTH.as_str())?
        && length.trim().parse::<u64>().is_ok_and(|n| n > limit as u64)
    {
        return Err(too_large());
    }
    let compressed = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(Refusal::bad(format!(
                "the request body could not be read: {e}"
            )));
        }
    };
    let ndjson = batch::decompress(&compressed, limit).map_err(|e| match e {
        BatchError::TooLarge { .. } => too_large(),
        other => Refusal::bad(other.to_string()),
    })?;
    let records = batch::parse(&ndjson, digest, count).map_err(|e| Refusal::bad(e.to_string()))?;
    drop(ndjson);
    for (i, record) in records.iter().enumerate() {
        if record.key.is_empty() || record.key.contains('\0') {
            return Err(Refusal::bad(format!(
                "record {}: the key is empty or contains a NUL character",
                i + 1
            )));
        }
    }

    match state.store.apply(&id, digest, &records).await {
        Ok(ack) => {
            match ack.status {
                AckStatus::Applied => info!(
                    node = %id.node,
                    resource = %id.resource,
                    stream = %id.stream,
                    seq = id.seq,
                    records = ack.records,
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
        Err(e @ StoreError::NotOwner { .. }) => {
            Err(Refusal::new(StatusCode::FORBIDDEN, e.to_string()))
        }
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

/// A header holding a decimal number.
fn number(headers: &HeaderMap, name: &str, what: &str) -> Result<u64, Refusal> {
    required(headers, name)?.parse::<u64>().map_err(|_| {
        Refusal::bad(format!(
            "header `{name}` must be a decimal integer ({what})"
        ))
    })
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
