//! The mutual-TLS accept loop shared by the hub (batches) and the agent (verification):
//! accept → TLS handshake → HTTP/1.1 or HTTP/2 → an axum [`Router`], until shutdown.
//!
//! Connection life cycle, with what bounds each step ([`ConnectionLimits`]):
//! - **accept**, into a place among the waiting: at most `max_connections` connections wait
//!   (silent, or for a handshake slot). When they are all taken, the one waiting longest is
//!   dropped once it has waited [`DROP_HANDSHAKES_AFTER`] (a silent or stalled peer); until
//!   then the accept loop waits and new connections wait in the kernel's accept queue (a burst
//!   of legitimate clients is never dropped). So silent peers cost a file descriptor each,
//!   bounded, and a stranger cannot hold the accept queue for more than a second;
//! - **its first bytes** (a ClientHello), waited for without a handshake slot, so silent peers
//!   never take one;
//! - **TLS handshake**, at most `max_handshakes` in progress and a quarter of them from one
//!   address: when a new connection finds them all (or its address's share) taken, the
//!   *oldest* (of its address) is dropped, reported as a timeout, once it is older than
//!   [`DROP_HANDSHAKES_AFTER`] (1 s), and the new one waits until then otherwise. A
//!   legitimate handshake takes milliseconds, so a burst of legitimate clients is never
//!   dropped, and a stranger sending a byte and stalling, however often, holds at most its
//!   address's share while other addresses go on. One deadline, `handshake_timeout`, runs
//!   from accept to the end of the handshake; while it waits for a slot a connection still
//!   counts among the waiting above. The
//!   client must present a certificate the `ServerConfig`'s verifier accepts; a failed,
//!   timed-out or dropped handshake is logged with the peer address, reported as a
//!   [`Rejection`] to the caller's [`Observers::rejections`] and the connection closed, never
//!   stopping the server;
//! - **a connection slot** (`max_connections` established connections), waited for at most
//!   `handshake_timeout`, else the connection is closed and counted
//!   ([`Counters::connections_refused`]);
//! - **HTTP**, as ALPN chose (`h2`: HTTP/2, else HTTP/1.1; never a protocol-detection read a
//!   silent peer could hold open): the client certificate becomes the connection's [`Peer`],
//!   added to every request as an extension; HTTP/1.1 request heads within `header_timeout`;
//!   HTTP/2 at most `max_streams` concurrent streams per connection, and a ping every 30 s
//!   that must be answered within 20 s; a connection with no request in flight for
//!   `idle_timeout` (since it was established or its last response) is closed, on both
//!   versions ([`Counters::idle_closed`]);
//! - **requests in flight**, over all connections, at most `max_requests`: one more is answered
//!   `503` with `Retry-After: 1` before it reaches the router ([`Counters::requests_refused`]).
//!   Reading a body within a deadline is the router's part (the hub's `body_timeout`, the
//!   verification service's).
//!
//! Shutdown protocol: when the shutdown future resolves, the listener stops accepting, every
//! open connection is told to finish (HTTP/1.1: close after the current response; HTTP/2:
//! GOAWAY), requests in flight run to completion, and [`serve_router`] returns when all
//! connections have closed, or after [`DRAIN_TIMEOUT`] at the latest. A connection is told to
//! finish the same way when the TLS configuration it was accepted under is replaced
//! ([`ServerTls::replace`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::tls::{HandshakeFailure, explain, peer_common_name};

/// The TLS configuration new handshakes use. [`ServerTls::replace`] (a reload: another client
/// CA, certificate, key, minimum version or CRL) takes effect for every handshake that starts
/// afterwards, and every connection established under an earlier configuration is told to
/// finish (HTTP/1.1: closed after the response in progress; HTTP/2: GOAWAY, streams open run
/// to their end): a certificate no longer trusted gets no further request answered on a
/// connection it opened before.
#[derive(Clone)]
pub struct ServerTls {
    /// The configuration of the next handshake.
    config: Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>,
    /// Counts replacements; connections watch it.
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl ServerTls {
    /// A handle starting with `config`.
    pub fn new(config: rustls::ServerConfig) -> ServerTls {
        ServerTls {
            config: Arc::new(std::sync::RwLock::new(Arc::new(config))),
            generation: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Replaces the configuration for handshakes starting from now on, and tells the
    /// connections established under the previous one to finish.
    pub fn replace(&self, config: rustls::ServerConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The configuration a handshake starting now uses.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The configuration of a handshake starting now, and a receiver that changes when it is
    /// replaced (subscribed first: a replacement during the handshake counts).
    fn begin(&self) -> (Arc<rustls::ServerConfig>, tokio::sync::watch::Receiver<u64>) {
        let replaced = self.generation.subscribe();
        (self.current(), replaced)
    }
}

impl From<rustls::ServerConfig> for ServerTls {
    fn from(config: rustls::ServerConfig) -> ServerTls {
        ServerTls::new(config)
    }
}

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

/// Bounds of the accept loop (the module documentation says where each applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Established connections served at once.
    pub max_connections: usize,
    /// TLS handshakes in progress at once; a new connection over it drops the oldest.
    pub max_handshakes: usize,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// HTTP/1.1 request headers must arrive within this.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 streams (requests) open at once on one connection.
    pub max_streams: u32,
    /// Requests in flight over all connections; one more is answered `503`.
    pub max_requests: usize,
}

impl ConnectionLimits {
    /// Safe defaults for a listener facing a network of strangers; callers override what their
    /// configuration sets.
    pub const DEFAULT: ConnectionLimits = ConnectionLimits {
        max_connections: 512,
        max_handshakes: 64,
        handshake_timeout: Duration::from_secs(10),
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
        max_streams: 64,
        max_requests: 256,
    };
}

/// What the accept loop refused or closed besides handshakes, counted exactly.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections closed after their handshake because `max_connections` stayed full.
    pub connections_refused: AtomicU64,
    /// Connections closed after `idle_timeout` without a request.
    pub idle_closed: AtomicU64,
    /// Requests answered `503` because `max_requests` were in flight.
    pub requests_refused: AtomicU64,
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
    /// Established client connections (after the handshake and a connection slot, until
    /// closed).
    pub connections: Arc<Gauge>,
    /// Told of every connection refused in the handshake (`None`: only the warning is logged).
    pub rejections: Option<RejectionHook>,
    /// Connections and requests refused or closed past the handshake.
    pub counters: Arc<Counters>,
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observers")
            .field("connections", &self.connections)
            .field("rejections", &self.rejections.as_ref().map(|_| "hook"))
            .field("counters", &self.counters)
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
#[error("{}", crate::tr!(
    "the listening socket is unusable: {0}",
    "监听套接字不可用：{0}", .0
))]
pub struct ServeError(#[source] pub std::io::Error);

/// A connection in a [`Pool`]: its id, its peer's address, when it entered, and the signal
/// that drops it.
type Pending = (
    u64,
    std::net::IpAddr,
    tokio::time::Instant,
    tokio::sync::oneshot::Sender<()>,
);

/// How old a handshake in progress must be before a new connection may drop it: a legitimate
/// handshake takes milliseconds (a few round trips), so a burst of them is never dropped, and
/// only slow peers are.
pub const DROP_HANDSHAKES_AFTER: Duration = Duration::from_secs(1);

/// Connections at one stage before they are served (waiting for a handshake slot; handshakes
/// in progress), oldest first. At most `max` at once, and at most `per_address` from one
/// address: a newcomer over either limit drops the oldest (of its own address, for the second)
/// once that has been there `min_age`, and waits until then otherwise. So one address (a
/// stranger sending a byte and stalling, however often) holds at most `per_address` places,
/// and the others stay free for everyone else.
struct Pool {
    /// At most this many at once.
    max: usize,
    /// At most this many from one address.
    per_address: usize,
    /// How long the oldest must have been there before a newcomer may drop it.
    min_age: Duration,
    /// The last id given, and the connections in the pool, oldest first.
    pending: Mutex<(u64, VecDeque<Pending>)>,
    /// Told when one leaves.
    ended: tokio::sync::Notify,
}

impl Pool {
    fn new(max: usize, per_address: usize, min_age: Duration) -> Pool {
        Pool {
            max: max.max(1),
            per_address: per_address.clamp(1, max.max(1)),
            min_age,
            pending: Mutex::new((0, VecDeque::new())),
            ended: tokio::sync::Notify::new(),
        }
    }

    /// Enters the pool for `peer`, once there is room (dropping an oldest that has been there
    /// long enough); the id and the signal that this one was dropped.
    async fn start(&self, peer: std::net::IpAddr) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        loop {
            let until = {
                let now = tokio::time::Instant::now();
                let mut guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let (next, pending) = &mut *guard;
                let mut until = None;
                // Over the address's share: its own oldest goes, or we wait for it to age.
                let mine = pending.iter().filter(|p| p.1 == peer).count();
                let over = if mine >= self.per_address {
                    pending.iter().position(|p| p.1 == peer)
                } else if pending.len() >= self.max {
                    Some(0)
                } else {
                    None
                };
                if let Some(i) = over {
                    let since = pending[i].2;
                    if now.duration_since(since) >= self.min_age {
                        if let Some((_, _, _, drop)) = pending.remove(i) {
                            let _ = drop.send(());
                        }
                    } else {
                        until = Some(since + self.min_age);
                    }
                }
                let mine = pending.iter().filter(|p| p.1 == peer).count();
                if pending.len() < self.max && mine < self.per_address {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    *next += 1;
                    pending.push_back((*next, peer, now, tx));
                    return (*next, rx);
                }
                until.unwrap_or(now + self.min_age.max(Duration::from_millis(10)))
            };
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = self.ended.notified() => {}
            }
        }
    }

    /// One left the pool (went on, failed or was dropped).
    fn end(&self, id: u64) {
        let mut guard = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.retain(|p| p.0 != id);
        drop(guard);
        self.ended.notify_one();
    }
}

/// Per connection: requests in flight and when the last one ended, for the idle timeout.
#[derive(Debug)]
struct Activity {
    /// Requests in flight on the connection.
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight, as an offset from `since`.
    idle_since_ms: AtomicU64,
    /// When the connection was established.
    since: tokio::time::Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            since: tokio::time::Instant::now(),
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    fn end(&self) {
        self.idle_since_ms
            .store(self.since.elapsed().as_millis() as u64, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// When the connection becomes idle for `timeout`, or `None` while a request is in flight.
    fn deadline(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        (self.in_flight.load(Ordering::SeqCst) == 0).then(|| {
            self.since + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst)) + timeout
        })
    }
}

/// A request's place in the connection's [`Activity`], given back when its response is done.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A connection's stream that reads as closed once the connection has had no request in
/// flight for the idle timeout (bytes alone, such as HTTP/2 pings, do not count as use).
struct IdleClosing<S> {
    /// The TLS stream.
    inner: S,
    /// The connection's requests.
    activity: Arc<Activity>,
    /// How long it may stay idle.
    timeout: Duration,
    /// Woken at the next deadline.
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Counted in when it closes the connection (taken then).
    closed: Option<Arc<Counters>>,
    /// When a write last made progress or had to wait for the peer: an answer still being
    /// sent (to a slow reader, say) is not idleness.
    wrote: tokio::time::Instant,
}

/// How recent a write must be for the connection to count as busy sending.
const WRITING: Duration = Duration::from_secs(1);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for IdleClosing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        loop {
            let now = tokio::time::Instant::now();
            let sending = this.wrote + WRITING;
            let deadline = match this.activity.deadline(this.timeout) {
                Some(d) if d <= now && sending > now => sending,
                Some(d) if d <= now => {
                    if let Some(counters) = this.closed.take() {
                        counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                    }
                    // End of stream: the protocol closes the connection.
                    return Poll::Ready(Ok(()));
                }
                Some(d) => d,
                // A request in flight: look again a timeout from now.
                None => now + this.timeout,
            };
            this.sleep.as_mut().reset(deadline);
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for IdleClosing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Pending | Poll::Ready(Ok(1..))) {
            self.wrote = tokio::time::Instant::now();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Pending | Poll::Ready(Ok(1..))) {
            self.wrote = tokio::time::Instant::now();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Warning lines about refused handshakes a server writes per second at most; the rest go to
/// the debug level (every refusal is still counted and reported to `Observers::rejections`),
/// so that strangers cannot fill the log.
const WARNINGS_PER_SECOND: u64 = 10;

/// Counts warning lines per second.
#[derive(Default)]
struct Quiet {
    /// The second being counted (since 1970).
    second: AtomicU64,
    /// Lines in it.
    lines: AtomicU64,
}

impl Quiet {
    /// Whether one more warning line fits this second.
    fn allow(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.lines.store(0, Ordering::Relaxed);
        }
        self.lines.fetch_add(1, Ordering::Relaxed) < WARNINGS_PER_SECOND
    }
}

/// A response body that keeps its request counted (in the connection's [`Activity`] and in
/// `max_requests`) until it has been sent or dropped, so that a slow reader's response is
/// never taken for idleness.
struct Tracked {
    /// The body.
    inner: axum::body::Body,
    /// The request's place in its connection's activity.
    _in_flight: InFlight,
    /// Its slot among the requests in flight.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `503` of a request over `max_requests`.
fn busy() -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(
        r#"{"error":"the server is answering as many requests as it may at once; retry in a second"}"#,
    ));
    *response.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    response
}

/// The accept loop and connection life cycle of the module documentation, serving `app`:
/// every request carries the connection's [`Peer`] as an extension. `tls` must require
/// client certificates (`tls::mutual_server_config` builds such a configuration); open
/// connections are counted in `observers.connections`, refused ones reported to
/// `observers.rejections` and `observers.counters`. `name` names the server in log lines
/// ("Hub", "Verification service").
pub async fn serve_router(
    name: &'static str,
    listener: TcpListener,
    tls: impl Into<ServerTls>,
    app: Router,
    limits: ConnectionLimits,
    observers: Observers,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError)?;
    // Told to every connection at shutdown; each task holds an `alive` sender until it ends.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let (alive, all_ended) = tokio::sync::mpsc::channel::<()>(1);
    let server = Arc::new(Server::new(
        name,
        tls.into(),
        app,
        limits,
        observers,
        stopping,
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    debug!(server = name, addr = %local, "Accepting connections.");
    while let Some(accepted) = server.accept(&listener, shutdown.as_mut()).await {
        let server = server.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            server.serve(accepted).await;
        });
    }
    drop(listener);
    drain(name, stop, alive, all_ended).await;
    Ok(())
}

/// The shutdown protocol of the module documentation, once the listener is closed: every
/// connection is told to finish (`stop`), and this waits until every connection task has
/// dropped its clone of `alive`, or [`DRAIN_TIMEOUT`] at the latest.
async fn drain(
    name: &'static str,
    stop: tokio::sync::watch::Sender<bool>,
    alive: tokio::sync::mpsc::Sender<()>,
    mut all_ended: tokio::sync::mpsc::Receiver<()>,
) {
    info!(
        server = name,
        "{name} shutting down: no new connections; finishing requests in flight."
    );
    let _ = stop.send(true);
    drop(alive);
    if tokio::time::timeout(DRAIN_TIMEOUT, all_ended.recv())
        .await
        .is_err()
    {
        warn!(
            server = name,
            timeout_secs = DRAIN_TIMEOUT.as_secs(),
            "Connections still open after the drain timeout; stopping anyway."
        );
    }
}

/// What the connections of one [`serve_router`] share: its configuration, its bounds and the
/// places left within them.
struct Server {
    /// Names the server in log lines ("Hub", "Verification service").
    name: &'static str,
    /// The TLS configuration of new handshakes.
    tls: ServerTls,
    /// Answers the requests.
    app: Router,
    /// The bounds of the module documentation.
    limits: ConnectionLimits,
    /// Told about connections and refusals.
    observers: Observers,
    /// Connections waiting for their first bytes or a handshake slot: at most
    /// `max_connections`, the one waiting longest dropped first once it has waited a second
    /// (else the accept loop waits).
    silent: Pool,
    /// Handshakes in progress: at most `max_handshakes`, a quarter of them from one address.
    handshakes: Pool,
    /// Established connections being served (`max_connections`).
    connection_slots: Arc<Semaphore>,
    /// Requests in flight over all connections (`max_requests`).
    request_slots: Arc<Semaphore>,
    /// Keeps warnings about refused handshakes to a few lines a second.
    quiet: Quiet,
    /// Becomes `true` at shutdown: every connection finishes.
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// A connection just accepted, with its place among the waiting ([`Server::silent`]).
struct Accepted {
    /// The connection, before its handshake.
    tcp: TcpStream,
    /// The client's address.
    addr: SocketAddr,
    /// Its id among the waiting.
    waiting: u64,
    /// Resolves when a newcomer drops it from the waiting.
    pushed_out: tokio::sync::oneshot::Receiver<()>,
}

/// Why a connection was refused before it was established: a [`Rejection`] without its peer.
struct Refused {
    /// Why, as a stable label.
    reason: HandshakeFailure,
    /// The error as a sentence.
    detail: String,
}

impl Refused {
    /// Refused for taking too long or being dropped for a newer connection.
    fn timeout(detail: String) -> Refused {
        Refused {
            reason: HandshakeFailure::Timeout,
            detail,
        }
    }
}

/// What a connection waits for among the waiting, before its handshake.
#[derive(Debug, Clone, Copy)]
enum Awaiting {
    /// Its first bytes (a ClientHello).
    FirstBytes,
    /// A place among the handshakes in progress.
    HandshakeSlot,
}

impl Awaiting {
    /// Why a connection is refused that waited past `handshake_timeout`.
    fn late(self, limits: &ConnectionLimits) -> String {
        let ms = limits.handshake_timeout.as_millis();
        match self {
            Awaiting::FirstBytes => format!("nothing received within {ms} ms"),
            Awaiting::HandshakeSlot => format!("no handshake slot within {ms} ms (max_handshakes)"),
        }
    }

    /// Why a connection is refused that a newcomer pushed out of the waiting.
    fn pushed_out(self, limits: &ConnectionLimits) -> String {
        let newer = limits.max_connections;
        match self {
            Awaiting::FirstBytes => format!(
                "dropped before its handshake: {newer} newer connections were waiting (max_connections)"
            ),
            Awaiting::HandshakeSlot => format!(
                "dropped while waiting for a handshake slot: {newer} newer connections were waiting (max_connections)"
            ),
        }
    }
}

/// A TLS handshake that succeeded, and what tells its connection that its configuration was
/// replaced.
type Established = (
    tokio_rustls::server::TlsStream<TcpStream>,
    tokio::sync::watch::Receiver<u64>,
);

impl Server {
    fn new(
        name: &'static str,
        tls: ServerTls,
        app: Router,
        limits: ConnectionLimits,
        observers: Observers,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Server {
        Server {
            name,
            tls,
            app,
            silent: Pool::new(
                limits.max_connections,
                limits.max_connections,
                DROP_HANDSHAKES_AFTER,
            ),
            handshakes: Pool::new(
                limits.max_handshakes,
                limits.max_handshakes.div_ceil(4),
                DROP_HANDSHAKES_AFTER,
            ),
            connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
            request_slots: Arc::new(Semaphore::new(limits.max_requests)),
            limits,
            observers,
            quiet: Quiet::default(),
            stopping,
        }
    }

    /// The next connection, once it has a place among the waiting; `None` once `shutdown`
    /// resolves. A failed accept (too many open files, say) is retried after a pause.
    async fn accept(
        &self,
        listener: &TcpListener,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Accepted> {
        let any = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        loop {
            // A place among the waiting before accepting: when they are all taken by
            // connections younger than a second (a burst), new ones wait in the kernel's accept
            // queue instead of being dropped; an older one (silent, or stalled before its
            // handshake) is dropped.
            let (waiting, pushed_out) = tokio::select! {
                () = shutdown.as_mut() => return None,
                place = self.silent.start(any) => place,
            };
            let (tcp, addr) = tokio::select! {
                () = shutdown.as_mut() => return None,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        self.silent.end(waiting);
                        // E.g. too many open files: back off instead of spinning.
                        warn!(server = self.name, error = %e, "Cannot accept a connection; retrying shortly.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            return Some(Accepted {
                tcp,
                addr,
                waiting,
                pushed_out,
            });
        }
    }

    /// Serves one accepted connection to its end: its TLS handshake, a connection slot, then
    /// HTTP until it closes. A refusal before the handshake completed goes to
    /// `observers.rejections`.
    async fn serve(&self, accepted: Accepted) {
        let addr = accepted.addr;
        // One deadline from accept to the end of the handshake.
        let deadline = tokio::time::Instant::now() + self.limits.handshake_timeout;
        let (tls, replaced) = match self.handshake(accepted, deadline).await {
            Ok(established) => established,
            Err(refused) => return self.reject(addr, refused),
        };
        let Some(_slot) = self.connection_slot(addr).await else {
            return;
        };
        let _open = Held::new(&self.observers.connections, 1);
        self.serve_http(tls, replaced, addr).await;
    }

    /// Tells `observers.rejections` of a connection refused before it was established.
    fn reject(&self, peer: SocketAddr, refused: Refused) {
        if let Some(hook) = &self.observers.rejections {
            hook(Rejection {
                peer,
                reason: refused.reason,
                detail: refused.detail,
            });
        }
    }

    /// A slot among the established connections, waited for at most `handshake_timeout`;
    /// `None` (counted and logged) when `max_connections` stayed full.
    async fn connection_slot(&self, addr: SocketAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match tokio::time::timeout(
            self.limits.handshake_timeout,
            self.connection_slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(slot)) => Some(slot),
            _ => {
                self.observers
                    .counters
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                warn!(
                    server = self.name,
                    peer = %addr,
                    max_connections = self.limits.max_connections,
                    "Connection limit reached; an authenticated connection was closed."
                );
                None
            }
        }
    }

    /// Serves HTTP on an established connection, in the version ALPN chose, until it closes;
    /// it is told to finish at shutdown or once its TLS configuration is `replaced`.
    async fn serve_http(
        &self,
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        mut replaced: tokio::sync::watch::Receiver<u64>,
        addr: SocketAddr,
    ) {
        let (_, session) = tls.get_ref();
        let http2 = session.alpn_protocol() == Some(b"h2");
        let peer = peer_of(session, addr);
        debug!(server = self.name, peer = %addr, node = peer.node.as_deref().unwrap_or("-"), http2, "Connection accepted.");
        let activity = Arc::new(Activity::new());
        let requests = Requests {
            app: self.app.clone(),
            peer,
            activity: activity.clone(),
            slots: self.request_slots.clone(),
            counters: self.observers.counters.clone(),
        };
        let service = hyper::service::service_fn(move |request| requests.answer(request));
        let io = IdleClosing {
            inner: tls,
            activity,
            timeout: self.limits.idle_timeout,
            sleep: Box::pin(tokio::time::sleep(self.limits.idle_timeout)),
            closed: Some(self.observers.counters.clone()),
            wrote: tokio::time::Instant::now(),
        };
        let builder = http_builder(&self.limits, http2);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        let mut stopping = self.stopping.clone();
        // Told to finish at shutdown, or once its TLS configuration is replaced.
        let (mut finishing, mut watching_tls) = (false, true);
        let ended = loop {
            tokio::select! {
                ended = connection.as_mut() => break ended,
                _ = stopping.changed(), if !finishing => {
                    finishing = true;
                    connection.as_mut().graceful_shutdown();
                }
                r = replaced.changed(), if !finishing && watching_tls => {
                    if r.is_ok() {
                        debug!(server = self.name, peer = %addr, "TLS configuration replaced; the connection finishes its requests and closes.");
                        finishing = true;
                        connection.as_mut().graceful_shutdown();
                    } else {
                        watching_tls = false;
                    }
                }
            }
        };
        if let Err(e) = ended {
            debug!(server = self.name, peer = %addr, error = %e, "Connection ended with an error.");
        }
    }
}

/// The handshake: from accept to an established TLS session, within one deadline and the
/// places among the waiting and the handshakes in progress.
impl Server {
    /// Waits among the waiting for the connection's first bytes, so that silent peers never
    /// take a handshake slot, then for a handshake slot; leaves the waiting either way. The
    /// handshake slot's id and the signal that a newcomer dropped the handshake.
    async fn wait_for_handshake_slot(
        &self,
        accepted: &mut Accepted,
        deadline: tokio::time::Instant,
    ) -> Result<(u64, tokio::sync::oneshot::Receiver<()>), Refused> {
        if let Err(refused) = self.first_bytes(accepted, deadline).await {
            self.silent.end(accepted.waiting);
            debug!(server = self.name, peer = %accepted.addr, reason = %refused.detail, "Connection refused before its TLS handshake.");
            return Err(refused);
        }
        let slot = self
            .among_the_waiting(
                &mut accepted.pushed_out,
                deadline,
                Awaiting::HandshakeSlot,
                self.handshakes.start(accepted.addr.ip()),
            )
            .await;
        self.silent.end(accepted.waiting);
        slot
    }

    /// Waits for the connection's first bytes (a ClientHello) without reading them.
    async fn first_bytes(
        &self,
        accepted: &mut Accepted,
        deadline: tokio::time::Instant,
    ) -> Result<(), Refused> {
        let mut first = [0u8; 1];
        let peeked = self
            .among_the_waiting(
                &mut accepted.pushed_out,
                deadline,
                Awaiting::FirstBytes,
                accepted.tcp.peek(&mut first),
            )
            .await?;
        match peeked {
            Ok(n) if n > 0 => Ok(()),
            Ok(_) => Err(Refused {
                reason: HandshakeFailure::Io,
                detail: "the peer closed the connection without a TLS handshake".to_owned(),
            }),
            Err(e) => Err(Refused {
                reason: HandshakeFailure::Io,
                detail: format!("the connection failed before the TLS handshake: {e}"),
            }),
        }
    }

    /// Waits for `step` while the connection is among the waiting: refused when `deadline`
    /// passes first or a newcomer pushes it out of the waiting.
    async fn among_the_waiting<T>(
        &self,
        pushed_out: &mut tokio::sync::oneshot::Receiver<()>,
        deadline: tokio::time::Instant,
        awaiting: Awaiting,
        step: impl Future<Output = T>,
    ) -> Result<T, Refused> {
        tokio::select! {
            biased;
            done = tokio::time::timeout_at(deadline, step) => {
                done.map_err(|_| Refused::timeout(awaiting.late(&self.limits)))
            }
            _ = pushed_out => Err(Refused::timeout(awaiting.pushed_out(&self.limits))),
        }
    }

    /// The TLS handshake, in a handshake slot and by `deadline`, under the configuration
    /// current when it starts.
    async fn handshake(
        &self,
        mut accepted: Accepted,
        deadline: tokio::time::Instant,
    ) -> Result<Established, Refused> {
        let (id, dropped) = self
            .wait_for_handshake_slot(&mut accepted, deadline)
            .await?;
        let addr = accepted.addr;
        let (config, replaced) = self.tls.begin();
        let handshake =
            tokio::time::timeout_at(deadline, TlsAcceptor::from(config).accept(accepted.tcp));
        let outcome = tokio::select! {
            biased;
            outcome = handshake => Some(outcome),
            _ = dropped => None,
        };
        self.handshakes.end(id);
        match outcome {
            Some(Ok(Ok(tls))) => Ok((tls, replaced)),
            Some(Ok(Err(e))) => {
                let detail = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .map(explain)
                    .unwrap_or_else(|| e.to_string());
                if self.quiet.allow() {
                    warn!(server = self.name, peer = %addr, reason = %detail, "TLS handshake failed; connection dropped.");
                } else {
                    debug!(server = self.name, peer = %addr, reason = %detail, "TLS handshake failed; connection dropped.");
                }
                Err(Refused {
                    reason: HandshakeFailure::of_io(&e),
                    detail,
                })
            }
            Some(Err(_)) => {
                if self.quiet.allow() {
                    warn!(server = self.name, peer = %addr, "TLS handshake timed out; connection dropped.");
                }
                Err(Refused::timeout(format!(
                    "no TLS handshake within {} ms",
                    self.limits.handshake_timeout.as_millis()
                )))
            }
            None => {
                debug!(server = self.name, peer = %addr, "TLS handshake dropped for a newer connection.");
                Err(Refused::timeout(format!(
                    "the TLS handshake was still in progress when {} newer connections had started theirs (max_handshakes)",
                    self.limits.max_handshakes
                )))
            }
        }
    }
}

/// Who is on the other end of an established connection: its client certificate and the
/// common name in it.
fn peer_of(session: &rustls::ServerConnection, addr: SocketAddr) -> Peer {
    let certificate = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| Arc::new(c.clone().into_owned()));
    let node = certificate.as_deref().and_then(peer_common_name);
    Peer {
        node,
        certificate,
        addr,
    }
}

/// The HTTP server of one connection, within `limits`: HTTP/2 when ALPN chose `h2`, else
/// HTTP/1.1, without a detection read a silent peer could hold.
fn http_builder(limits: &ConnectionLimits, http2: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    if http2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    }
}

/// What the requests of one connection share: the router, the connection's [`Peer`] and
/// [`Activity`], and the server's request slots.
struct Requests {
    /// Answers them.
    app: Router,
    /// Added to each as an extension.
    peer: Peer,
    /// The connection's requests in flight.
    activity: Arc<Activity>,
    /// Requests in flight over all connections (`max_requests`).
    slots: Arc<Semaphore>,
    /// Counts the requests refused.
    counters: Arc<Counters>,
}

impl Requests {
    /// Answers one request: `503` at once when `max_requests` are in flight, else the
    /// router's answer, counted until its body has been sent.
    fn answer(
        &self,
        mut request: hyper::Request<hyper::body::Incoming>,
    ) -> impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send + use<>
    {
        let permit = self.slots.clone().try_acquire_owned();
        let app = self.app.clone();
        let counters = self.counters.clone();
        self.activity.begin();
        let in_flight = InFlight(self.activity.clone());
        request.extensions_mut().insert(self.peer.clone());
        async move {
            let Ok(permit) = permit else {
                counters.requests_refused.fetch_add(1, Ordering::Relaxed);
                drop(in_flight);
                return Ok(busy());
            };
            let response = app.oneshot(request.map(axum::body::Body::new)).await?;
            // Counted until the whole answer is sent.
            Ok(response.map(|body| {
                axum::body::Body::new(Tracked {
                    inner: body,
                    _in_flight: in_flight,
                    _permit: permit,
                })
            }))
        }
    }
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
                crls: Vec::new(),
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
            rejections: Some(Arc::new(move |r| {
                let _ = tx.send(r);
            })),
            ..Observers::default()
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
                ..ConnectionLimits::DEFAULT
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

    /// A server of the tests, running.
    struct Running {
        /// Its address.
        addr: SocketAddr,
        /// Its counters.
        counters: Arc<Counters>,
        /// Stops it.
        stop: tokio::sync::oneshot::Sender<()>,
        /// Its task.
        task: tokio::task::JoinHandle<Result<(), ServeError>>,
    }

    impl Running {
        /// Stops the server and waits for it.
        async fn stop(self) {
            let _ = self.stop.send(());
            self.task.await.unwrap().unwrap();
        }
    }

    /// A server on 127.0.0.1:0 answering `GET /` with "ok", `GET /big` with 8 MiB and
    /// `GET /slow` once `release` is notified.
    async fn server(
        ids: &Identities,
        limits: ConnectionLimits,
        release: Arc<tokio::sync::Notify>,
    ) -> Running {
        crate::tls::install_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tls = mutual_server_config(&ids.server).unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let app = Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route("/big", axum::routing::get(|| async { vec![b'x'; 8 << 20] }))
            .route(
                "/slow",
                axum::routing::get(move || async move {
                    release.notified().await;
                    "slow"
                }),
            );
        let observers = Observers::default();
        let counters = observers.counters.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_router(
            "Test",
            listener,
            tls,
            app,
            limits,
            observers,
            async move {
                let _ = stopped.await;
            },
        ));
        Running {
            addr,
            counters,
            stop,
            task,
        }
    }

    /// A TLS connection as `ids.good`, offering `alpn`.
    async fn connect(
        addr: SocketAddr,
        ids: &Identities,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut tls = hub_client_config(&ids.good).unwrap();
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(tls))
            .connect(
                ServerName::try_from("127.0.0.1").unwrap(),
                TcpStream::connect(addr).await.unwrap(),
            )
            .await
            .unwrap()
    }

    /// `GET path` over HTTP/1.1 on a new connection; the status line.
    async fn get(addr: SocketAddr, ids: &Identities, path: &str) -> String {
        use tokio::io::AsyncReadExt;
        let mut stream = connect(addr, ids, &[b"http/1.1"]).await;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// A legitimate client's `GET /` is answered `200` within 2 s.
    async fn answered_within_2s(addr: SocketAddr, ids: &Identities) {
        let started = std::time::Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(2), get(addr, ids, "/"))
            .await
            .expect("answered within 2 s");
        assert!(status.contains("200"), "{status}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn silent_peers_never_starve_a_legitimate_client() {
        let ids = identities();
        let limits = ConnectionLimits {
            max_handshakes: 8,
            handshake_timeout: Duration::from_secs(30),
            ..ConnectionLimits::DEFAULT
        };
        let running = server(&ids, limits, Default::default()).await;
        let addr = running.addr;
        // 600 peers connect and say nothing, more than every handshake and connection slot.
        let mut silent = Vec::new();
        for _ in 0..600 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        answered_within_2s(addr, &ids).await;
        drop(silent);
        running.stop().await;
    }

    #[tokio::test]
    async fn peers_that_send_a_byte_and_stall_hold_only_their_address_share() {
        let ids = identities();
        let limits = ConnectionLimits {
            max_handshakes: 8,
            handshake_timeout: Duration::from_secs(30),
            ..ConnectionLimits::DEFAULT
        };
        let running = server(&ids, limits, Default::default()).await;
        let addr = running.addr;
        // 200 connections from another address, each sending one byte of a ClientHello.
        let mut stalled = Vec::new();
        for _ in 0..200 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let mut stream = socket.connect(addr).await.unwrap();
            stream.write_all(&[0x16]).await.unwrap();
            stalled.push(stream);
        }
        answered_within_2s(addr, &ids).await;
        drop(stalled);
        running.stop().await;
    }

    #[tokio::test]
    async fn a_response_read_slowly_is_not_taken_for_idleness() {
        use tokio::io::AsyncReadExt;
        let ids = identities();
        let limits = ConnectionLimits {
            idle_timeout: Duration::from_millis(300),
            ..ConnectionLimits::DEFAULT
        };
        let running = server(&ids, limits, Default::default()).await;
        let addr = running.addr;
        let mut stream = connect(addr, &ids, &[b"http/1.1"]).await;
        stream
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // Read it slowly, over about a second: longer than the idle timeout.
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got += n;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(got > 8 << 20, "the whole answer arrived: {got} bytes");
        running.stop().await;
    }

    #[tokio::test]
    async fn a_connection_without_requests_is_closed_after_the_idle_timeout() {
        use tokio::io::AsyncReadExt;
        let ids = identities();
        let limits = ConnectionLimits {
            idle_timeout: Duration::from_millis(400),
            header_timeout: Duration::from_secs(30),
            ..ConnectionLimits::DEFAULT
        };
        let running = server(&ids, limits, Default::default()).await;
        let addr = running.addr;
        let counters = running.counters.clone();
        // After a valid handshake, HTTP/2 and HTTP/1.1 peers that never send a request (not
        // even the HTTP/2 preface), and an HTTP/1.1 peer idle after one request.
        let mut idle = vec![
            connect(addr, &ids, &[b"h2"]).await,
            connect(addr, &ids, &[b"http/1.1"]).await,
        ];
        let mut used = connect(addr, &ids, &[b"http/1.1"]).await;
        used.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 64];
        let n = used.read(&mut first).await.unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).contains("200"));
        idle.push(used);
        let started = std::time::Instant::now();
        for mut stream in idle {
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
                .await
                .expect("closed by the server")
                .ok();
        }
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(counters.idle_closed.load(Ordering::Relaxed), 3);
        running.stop().await;
    }

    #[tokio::test]
    async fn requests_over_max_requests_are_answered_503_at_once() {
        let ids = identities();
        let limits = ConnectionLimits {
            max_requests: 1,
            ..ConnectionLimits::DEFAULT
        };
        let release = Arc::new(tokio::sync::Notify::new());
        let running = server(&ids, limits, release.clone()).await;
        let addr = running.addr;
        let counters = running.counters.clone();
        let held = tokio::spawn({
            let ids = identities_clone(&ids);
            async move { get(addr, &ids, "/slow").await }
        });
        // Wait until the slow request holds the one slot.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = get(addr, &ids, "/").await;
            if status.contains("503") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never 503: {status}");
        }
        assert!(counters.requests_refused.load(Ordering::Relaxed) >= 1);
        release.notify_one();
        assert!(held.await.unwrap().contains("200"));
        assert!(get(addr, &ids, "/").await.contains("200"));
        running.stop().await;
    }

    #[tokio::test]
    async fn a_connection_over_max_connections_is_closed_after_its_handshake() {
        use tokio::io::AsyncReadExt;
        let ids = identities();
        let limits = ConnectionLimits {
            max_connections: 1,
            handshake_timeout: Duration::from_millis(300),
            ..ConnectionLimits::DEFAULT
        };
        let running = server(&ids, limits, Default::default()).await;
        let addr = running.addr;
        let counters = running.counters.clone();
        let _first = connect(addr, &ids, &[b"http/1.1"]).await;
        let mut second = connect(addr, &ids, &[b"http/1.1"]).await;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut rest))
            .await
            .expect("closed by the server")
            .ok();
        assert_eq!(counters.connections_refused.load(Ordering::Relaxed), 1);
        running.stop().await;
    }

    /// The same identities (the files stay with `ids`).
    fn identities_clone(ids: &Identities) -> Identities {
        Identities {
            _dir: tempfile::tempdir().unwrap(),
            server: ids.server.clone(),
            good: ids.good.clone(),
            foreign: ids.foreign.clone(),
            expired: ids.expired.clone(),
        }
    }

    #[tokio::test]
    async fn a_replaced_configuration_closes_older_connections_and_its_crl_applies_to_new_ones() {
        crate::tls::install_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::generate("test CA").unwrap();
        let ca_path = dir.path().join("ca.pem");
        ca.write_cert(&ca_path).unwrap();
        let issued = ca.issue_client("node-1").unwrap();
        let serial = issued.serial.clone();
        let (cert, key) = issued.write(dir.path(), "client").unwrap();
        let issued = ca.issue_server(&["127.0.0.1"]).unwrap();
        let server_serial = issued.serial.clone();
        let (server_cert, server_key) = issued.write(dir.path(), "server").unwrap();
        let server = MutualTls {
            ca: ca_path.clone(),
            cert: server_cert,
            key: server_key,
            min_version: MinTlsVersion::Tls13,
            crls: Vec::new(),
        };
        let client = MutualTls {
            ca: ca_path,
            cert,
            key,
            min_version: MinTlsVersion::Tls13,
            crls: Vec::new(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Rejection>();
        let observers = Observers {
            rejections: Some(Arc::new(move |r| {
                let _ = tx.send(r);
            })),
            ..Observers::default()
        };
        let tls = ServerTls::new(mutual_server_config(&server).unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_router(
            "Test",
            listener,
            tls.clone(),
            Router::new(),
            ConnectionLimits::DEFAULT,
            observers,
            async move {
                let _ = stopped.await;
            },
        ));
        let client_config = || hub_client_config(&client).unwrap();
        // Accepted, and answered (no refusal is reported: the next one is the revocation's);
        // the connection stays open (HTTP/1.1 keep-alive).
        let (accepted, mut open) = {
            use tokio::io::AsyncReadExt;
            let tcp = TcpStream::connect(addr).await.unwrap();
            let local = tcp.local_addr().unwrap();
            let mut stream = TlsConnector::from(Arc::new(client_config()))
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await.unwrap();
            assert_eq!(&head, b"HTTP/1.1 404", "answered before the revocation");
            let mut rest = [0u8; 4096];
            let _ = stream.read(&mut rest).await.unwrap();
            (local, stream)
        };
        // The CA revokes the client; the server takes a configuration with the CRL.
        let crl = dir.path().join("ca.crl");
        ca.write_crl(&crl, &[&serial], 1).unwrap();
        tls.replace(
            mutual_server_config(&MutualTls {
                crls: vec![crl.clone()],
                ..server.clone()
            })
            .unwrap(),
        );
        // The connection opened under the old configuration is closed, not kept answering.
        {
            use tokio::io::AsyncReadExt;
            let mut rest = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(5), open.read(&mut rest))
                .await
                .expect("the connection of the old configuration is closed");
            assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        }
        let refused = handshake(addr, client_config()).await;
        let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the revoked certificate is refused")
            .unwrap();
        assert_eq!((r.peer, r.reason), (refused, HandshakeFailure::Revoked));
        assert_ne!(r.peer, accepted);
        // Two CAs trusted, a CRL of the other one only: the client's status is unknown, which
        // is never good.
        let other = Authority::generate("other CA").unwrap();
        let other_crl = dir.path().join("other.crl");
        other.write_crl(&other_crl, &[], 1).unwrap();
        let both = dir.path().join("both.pem");
        std::fs::write(&both, format!("{}{}", ca.cert_pem(), other.cert_pem())).unwrap();
        tls.replace(
            mutual_server_config(&MutualTls {
                ca: both,
                crls: vec![other_crl],
                ..server.clone()
            })
            .unwrap(),
        );
        let unknown = handshake(addr, client_config()).await;
        let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a certificate no CRL covers is refused")
            .unwrap();
        assert_eq!(
            (r.peer, r.reason),
            (unknown, HandshakeFailure::BadCertificate)
        );
        // The client side (the agent's view of the hub): the server's own certificate revoked.
        ca.write_crl(&crl, &[&serial, &server_serial], 2).unwrap();
        tls.replace(mutual_server_config(&server).unwrap());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = TlsConnector::from(Arc::new(
            hub_client_config(&MutualTls {
                crls: vec![crl],
                ..client.clone()
            })
            .unwrap(),
        ));
        let e = connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .expect_err("a revoked server certificate is refused");
        assert_eq!(HandshakeFailure::of_io(&e), HandshakeFailure::Revoked);
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
}
