//! The mutual-TLS accept loop shared by the hub (batches) and the agent (verification):
//! accept → TLS handshake → HTTP/1.1 or HTTP/2 → an axum [`Router`], until shutdown.
//!
//! Connection life cycle: accept (at most `max_connections` at once: the loop waits for a
//! free slot, so further connections wait in the kernel's accept queue) → TLS handshake
//! within `handshake_timeout` (the client must present a certificate the `ServerConfig`'s
//! verifier accepts; a failed handshake is logged with the peer address and the connection
//! dropped, never stopping the server) → the client certificate becomes the connection's
//! [`Peer`], added to every request as an extension → HTTP requests (HTTP/1.1 headers within
//! `header_timeout`) until the client closes.
//!
//! Shutdown protocol: when the shutdown future resolves, the listener stops accepting, every
//! open connection is told to finish (HTTP/1.1: close after the current response; HTTP/2:
//! GOAWAY), requests in flight run to completion, and [`serve_router`] returns when all
//! connections have closed, or after [`DRAIN_TIMEOUT`] at the latest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::tls::{explain, peer_common_name};

/// How long shutdown waits for requests in flight before returning anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Who is on the other end of a connection; added to every request as an extension.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The first common name of the client certificate's subject (`None` if it has none).
    pub node: Option<String>,
    /// The client's leaf certificate, as presented (verified by the TLS layer).
    pub certificate: Option<Arc<CertificateDer<'static>>>,
    /// The client's address.
    pub addr: SocketAddr,
}

/// Bounds of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// HTTP/1.1 request headers must arrive within this.
    pub header_timeout: Duration,
}

/// A level that goes up and down, with the highest value it reached.
#[derive(Debug, Default)]
pub struct Gauge {
    /// The current value.
    now: AtomicUsize,
    /// The highest value since the server started.
    peak: AtomicUsize,
}

impl Gauge {
    /// The current value.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    /// The highest value reached.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn add(&self, n: usize) {
        let now = self.now.fetch_add(n, Ordering::SeqCst) + n;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn sub(&self, n: usize) {
        self.now.fetch_sub(n, Ordering::SeqCst);
    }
}

/// An amount added to a [`Gauge`] and taken off again when dropped.
pub struct Held<'a> {
    /// The gauge.
    gauge: &'a Gauge,
    /// How much this holds.
    amount: usize,
}

impl<'a> Held<'a> {
    /// Adds `amount` to `gauge` until the returned value is dropped.
    pub fn new(gauge: &'a Gauge, amount: usize) -> Self {
        gauge.add(amount);
        Held { gauge, amount }
    }

    /// Adds `n` more.
    pub fn grow(&mut self, n: usize) {
        self.gauge.add(n);
        self.amount += n;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.gauge.sub(self.amount);
    }
}

/// The listening socket is unusable.
#[derive(Debug, thiserror::Error)]
#[error("the listening socket is unusable: {0}")]
pub struct ServeError(#[source] pub std::io::Error);

/// The accept loop and connection life cycle of the module documentation, serving `app`:
/// every request carries the connection's [`Peer`] as an extension. `tls` must require
/// client certificates (`tls::mutual_server_config` builds such a configuration); open
/// connections are counted in `connections`. `name` names the server in log lines ("Hub",
/// "Verification service").
pub async fn serve_router(
    name: &'static str,
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
    limits: ConnectionLimits,
    connections: Arc<Gauge>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    debug!(server = name, addr = %local, "Accepting connections.");
    let mut warned_full = false;
    loop {
        // A free connection slot first: at the limit, new connections wait in the kernel's
        // accept queue instead of costing a task and a TLS session each.
        let slot = match connection_slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !warned_full {
                    warn!(
                        server = name,
                        max_connections = limits.max_connections,
                        "Connection limit reached; new connections wait until one closes."
                    );
                    warned_full = true;
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    slot = connection_slots.clone().acquire_owned() => {
                        slot.expect("the connection semaphore is never closed")
                    }
                }
            }
        };
        let (tcp, addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // E.g. too many open files: back off instead of spinning.
                    warn!(server = name, error = %e, "Cannot accept a connection; retrying shortly.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if connection_slots.available_permits() > 0 {
            warned_full = false;
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let connections = connections.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _open = Held::new(&connections, 1);
            let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let reason = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .map(explain)
                        .unwrap_or_else(|| e.to_string());
                    warn!(server = name, peer = %addr, reason = %reason, "TLS handshake failed; connection dropped.");
                    return;
                }
                Err(_) => {
                    warn!(server = name, peer = %addr, "TLS handshake timed out; connection dropped.");
                    return;
                }
            };
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|c| Arc::new(c.clone().into_owned()));
            let node = certificate.as_deref().and_then(peer_common_name);
            debug!(server = name, peer = %addr, node = node.as_deref().unwrap_or("-"), "Connection accepted.");
            let peer = Peer {
                node,
                certificate,
                addr,
            };
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
                .header_read_timeout(limits.header_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30));
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection).await {
                debug!(server = name, peer = %addr, error = %e, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    info!(
        server = name,
        "{name} shutting down: no new connections; finishing requests in flight."
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            server = name,
            timeout_secs = DRAIN_TIMEOUT.as_secs(),
            "Connections still open after the drain timeout; stopping anyway."
        );
    }
    Ok(())
}
