//! The reference hub, running inside the test process (`exchange_hub::server::run_with_store`)
//! on a loopback port, with its store open so the test can read what arrived.
//!
//! It can be stopped and started again on the same address (an agent configured with that
//! URL sees the hub go away and come back), or created stopped (its address reserved) to test
//! an agent whose hub is down from the start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use exchange_hub::config::{HubConfig, StoreConfig};
use exchange_hub::server::HubError;
use exchange_hub::store::Store;
use exchange_protocol::tls::MutualTls;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::rows::{self, Rows};

/// A running serve task and the way to stop it.
struct Running {
    /// Resolves the server's shutdown future.
    stop: oneshot::Sender<()>,
    /// The server task.
    task: JoinHandle<Result<(), HubError>>,
}

/// A hub in the test process.
pub struct Hub {
    /// Where it listens (the same address across restarts).
    pub addr: SocketAddr,
    /// Its configuration.
    pub config: HubConfig,
    /// Its store, open for the whole test (shared with the server).
    pub store: Store,
    /// The SQLite file of the store, when it is SQLite.
    pub sqlite: Option<PathBuf>,
    /// The server, when running.
    running: Option<Running>,
}

impl Hub {
    /// Starts a hub with a SQLite store `<dir>/hub.db`.
    pub async fn start(tls: MutualTls, dir: &Path) -> Hub {
        let mut hub = Self::stopped(tls, dir).await;
        hub.start_again().await;
        hub
    }

    /// Starts a hub with the given store.
    pub async fn start_with(tls: MutualTls, store: StoreConfig) -> Hub {
        let mut hub = Self::stopped_with(tls, store).await;
        hub.start_again().await;
        hub
    }

    /// A hub with a SQLite store `<dir>/hub.db` that is not running: its address is reserved
    /// (bound once, then released) so an agent can be configured with its URL.
    pub async fn stopped(tls: MutualTls, dir: &Path) -> Hub {
        Self::stopped_with(tls, StoreConfig::sqlite(dir.join("hub.db"))).await
    }

    /// A hub with the given store that is not running.
    pub async fn stopped_with(tls: MutualTls, store: StoreConfig) -> Hub {
        exchange_protocol::tls::install_provider();
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a loopback port");
            listener.local_addr().expect("local address")
        };
        let sqlite = match &store {
            StoreConfig::Sqlite { path } => Some(path.clone()),
            _ => None,
        };
        let config = HubConfig::new(addr, tls, store);
        let store = Store::open(&config.store)
            .await
            .unwrap_or_else(|e| panic!("cannot open the hub's store: {e}"));
        Hub {
            addr,
            config,
            store,
            sqlite,
            running: None,
        }
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Starts the server on [`Hub::addr`] (retrying the bind for a while: the port may be in
    /// TIME_WAIT or briefly taken).
    pub async fn start_again(&mut self) {
        assert!(self.running.is_none(), "the hub is already running");
        let started = Instant::now();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if started.elapsed() < crate::DEADLINE => {
                    eprintln!(
                        "binding the hub to {} again failed ({e}); retrying",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot bind the hub to {} again: {e}", self.addr),
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let config = self.config.clone();
        let store = self.store.clone();
        let task = tokio::spawn(async move {
            exchange_hub::server::run_with_store(listener, &config, store, async {
                let _ = stopped.await;
            })
            .await
        });
        self.running = Some(Running { stop, task });
    }

    /// Stops the server and waits until it has returned (connections closed).
    pub async fn stop(&mut self) {
        let running = self.running.take().expect("the hub is not running");
        let _ = running.stop.send(());
        match tokio::time::timeout(crate::DEADLINE, running.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("the hub failed: {e}"),
            Ok(Err(e)) => panic!("the hub task panicked: {e}"),
            Err(_) => panic!("the hub did not stop within {:?}", crate::DEADLINE),
        }
    }

    /// Fails the test if the server task ended on its own (it should run until stopped).
    pub fn assert_running(&self) {
        let running = self.running.as_ref().expect("the hub is not running");
        assert!(
            !running.task.is_finished(),
            "the hub's server task ended unexpectedly"
        );
    }

    /// The current records of `resource`, as `exchange-hub export` prints them.
    pub async fn export(&self, resource: &str) -> Vec<serde_json::Value> {
        exchange_hub::export::export(&self.store, resource)
            .await
            .unwrap_or_else(|e| panic!("cannot export `{resource}` from the hub: {e}"))
    }

    /// The current records of `resource`, by key (fails on a duplicate key).
    pub async fn rows(&self, resource: &str) -> Rows {
        rows::from_export(&self.export(resource).await)
    }

    /// Serves `app` on this (stopped) hub's address instead, through the reference hub's own
    /// accept loop (mutual TLS with its certificates, the node taken from the client
    /// certificate): a hub that answers as a test wants.
    pub async fn serve_instead(&self, app: axum::Router) -> Impostor {
        assert!(self.running.is_none(), "the hub is running");
        let tls = self.config.server_tls().expect("the hub's TLS");
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("bind the hub's address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(exchange_hub::server::serve_router(
            listener,
            tls,
            app,
            exchange_hub::config::Limits::default(),
            std::sync::Arc::new(exchange_hub::server::Load::default()),
            async {
                let _ = stopped.await;
            },
        ));
        Impostor {
            running: Running { stop, task },
        }
    }
}

/// A router served on a hub's address ([`Hub::serve_instead`]).
pub struct Impostor {
    running: Running,
}

impl Impostor {
    /// Stops it and checks that it ran without an error.
    pub async fn stop(self) {
        let _ = self.running.stop.send(());
        tokio::time::timeout(crate::DEADLINE, self.running.task)
            .await
            .expect("the hub's impostor stops")
            .expect("the hub's impostor's task")
            .expect("the hub's impostor ran");
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
        }
    }
}
