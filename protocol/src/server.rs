//! The mutual-TLS accept loop shared by the hub (batches) and the agent (verification):
//! accept → TLS handshake → HTTP/1.1 or HTTP/2 → an axum [`Router`], until shutdown.
//!
//! Connection life cycle: accept (at most `max_connections` at once: the loop waits for a
//! free slot, so further connections wait in the kernel's accept queue) → TLS handshake
//! within `handshake_timeout` (the client must present a certificate the `ServerConfig`'s
//! verifier accepts; a failed or timed-out handshake is logged with the peer address, reported
//! as a [`Rejection`] to the caller's [`Observers::rejections`] and the connection dropped,
//! never stopping the server) → the client certificate becomes the connection's
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

use crate::tls::{HandshakeFailure, explain, peer_common_name};

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

/// A connection refused before any request: its TLS handshake failed or timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The client's address.
    pub peer: SocketAddr,
    /// Why, as a stable label.
    pub reason: HandshakeFailure,
    /// The TLS (or I/O) error as a sentence; nothing the peer sent is quoted in it.
    pub detail: String,
}

/// Called once per [`Rejection`], from the connection's own task (not the accept loop); it
/// must return quickly (count, or hand the work to another task).
pub type RejectionHook = Arc<dyn Fn(Rejection) + Send + Sync>;

/// What the accept loop tells its caller about connections.
#[derive(Clone, Default)]
pub struct Observers {
    /// Open client connections (after accept, until closed).
    pub connections: Arc<Gauge>,
    /// Told of every connection refused in the handshake (`None`: only the warning is logged).
    pub rejections: Option<RejectionHook>,
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observers")
            .field("connections", &self.connections)
            .field("rejections", &self.rejections.as_ref().map(|_| "hook"))
            .finish()
    }
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
/// connections are counted in `observers.connections` and refused ones reported to
/// `observers.rejections`. `name` names the server in log lines ("Hub",
/// "Verification service").
pub async fn serve_router(
    name: &'static str,
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
    limits: ConnectionLimits,
    observers: Observers,
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
        let observers = observers.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _open = Held::new(&observers.connections, 1);
            let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
            let refused = match handshake.await {
                Ok(Ok(tls)) => Ok(tls),
                Ok(Err(e)) => {
                    let detail = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .map(explain)
                        .unwrap_or_else(|| e.to_string());
                    warn!(server = name, peer = %addr, reason = %detail, "TLS handshake failed; connection dropped.");
                    Err((HandshakeFailure::of_io(&e), detail))
                }
                Err(_) => {
                    warn!(server = name, peer = %addr, "TLS handshake timed out; connection dropped.");
                    Err((
                        HandshakeFailure::Timeout,
                        format!(
                            "no TLS handshake within {} ms",
                            limits.handshake_timeout.as_millis()
                        ),
                    ))
                }
            };
            let tls = match refused {
                Ok(tls) => tls,
                Err((reason, detail)) => {
                    if let Some(hook) = &observers.rejections {
                        hook(Rejection {
                            peer: addr,
                            reason,
                            detail,
                        });
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Authority, Usage, Validity};
    use crate::tls::{MinTlsVersion, MutualTls, hub_client_config, mutual_server_config};
    use rustls_pki_types::ServerName;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    /// TLS identities written to a directory.
    struct Identities {
        _dir: tempfile::TempDir,
        server: MutualTls,
        good: MutualTls,
        foreign: MutualTls,
        expired: MutualTls,
    }

    fn identities() -> Identities {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::generate("test CA").unwrap();
        let other = Authority::generate("other CA").unwrap();
        let ca_path = dir.path().join("ca.pem");
        ca.write_cert(&ca_path).unwrap();
        let mutual = |issued: crate::pki::Issued, stem: &str| {
            let (cert, key) = issued.write(dir.path(), stem).unwrap();
            MutualTls {
                ca: ca_path.clone(),
                cert,
                key,
                min_version: MinTlsVersion::Tls13,
            }
        };
        Identities {
            server: mutual(ca.issue_server(&["127.0.0.1"]).unwrap(), "server"),
            good: mutual(ca.issue_client("node-1").unwrap(), "good"),
            foreign: mutual(other.issue_client("node-1").unwrap(), "foreign"),
            expired: mutual(
                ca.issue("node-1", &[], Usage::ClientAuth, Validity::Expired)
                    .unwrap(),
                "expired",
            ),
            _dir: dir,
        }
    }

    /// Connects with `tls` and reads until the server ends the connection; the local address.
    async fn handshake(addr: SocketAddr, tls: rustls::ClientConfig) -> SocketAddr {
        use tokio::io::AsyncReadExt;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let connector = TlsConnector::from(Arc::new(tls));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        // TLS 1.3: the client may finish before the server has judged its certificate; the
        // refusal then arrives as an alert on the first read.
        if let Ok(mut stream) = connector.connect(name, tcp).await {
            let _ = stream.read(&mut [0u8; 16]).await;
        }
        local
    }

    #[tokio::test]
    async fn every_refused_handshake_is_reported_with_its_reason() {
        crate::tls::install_provider();
        let ids = identities();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Rejection>();
        let observers = Observers {
            connections: Arc::new(Gauge::default()),
            rejections: Some(Arc::new(move |r| {
                let _ = tx.send(r);
            })),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_router(
            "Test",
            listener,
            mutual_server_config(&ids.server).unwrap(),
            Router::new(),
            ConnectionLimits {
                max_connections: 16,
                handshake_timeout: Duration::from_millis(300),
                header_timeout: Duration::from_secs(5),
            },
            observers,
            async move {
                let _ = stopped.await;
            },
        ));
        let mut expected = Vec::new();
        for (client, reason) in [
            (&ids.foreign, HandshakeFailure::UnknownIssuer),
            (&ids.expired, HandshakeFailure::Expired),
        ] {
            let local = handshake(addr, hub_client_config(client).unwrap()).await;
            expected.push((local, reason));
        }
        let anonymous = {
            let mut roots = rustls::RootCertStore::empty();
            for cert in crate::tls::load_certs("CA", &ids.server.ca).unwrap() {
                roots.add(cert).unwrap();
            }
            rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth()
        };
        expected.push((
            handshake(addr, anonymous).await,
            HandshakeFailure::NoCertificate,
        ));
        // Not TLS at all.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        expected.push((plain.local_addr().unwrap(), HandshakeFailure::Protocol));
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Connected, then closed without a word.
        let closed = TcpStream::connect(addr).await.unwrap();
        expected.push((closed.local_addr().unwrap(), HandshakeFailure::Io));
        drop(closed);
        // Connected and silent past the handshake timeout.
        let silent = TcpStream::connect(addr).await.unwrap();
        expected.push((silent.local_addr().unwrap(), HandshakeFailure::Timeout));
        // A good client is not reported.
        let connector = TlsConnector::from(Arc::new(hub_client_config(&ids.good).unwrap()));
        let good = connector
            .connect(
                ServerName::try_from("127.0.0.1").unwrap(),
                TcpStream::connect(addr).await.unwrap(),
            )
            .await
            .unwrap();

        let mut reported = Vec::new();
        while reported.len() < expected.len() {
            let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {reported:?} reported"))
                .unwrap();
            assert!(!r.detail.is_empty(), "{r:?}");
            reported.push((r.peer, r.reason));
        }
        drop((silent, plain, good));
        reported.sort();
        expected.sort();
        assert_eq!(reported, expected);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        assert!(rx.try_recv().is_err(), "the good client was reported");
    }
}
