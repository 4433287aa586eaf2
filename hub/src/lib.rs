//! The reference hub of the exchange: receives batches from agents over mutual TLS and
//! stores them (docs/PROTOCOL.md is the normative description of what it accepts).
//!
//! Code map:
//! - [`config`]: the TOML file, raw then validated ([`config::HubConfig`]);
//! - [`store`]: SQLite or PostgreSQL (schema versions and migration); applies a batch in one
//!   transaction, refusing gaps and sweeping after a completed baseline ([`store::Store`]);
//! - [`server`]: the accept loop, mutual TLS, `[limits]`, HTTP/1.1 + HTTP/2, `POST /v1/batches`;
//! - [`export`]: the current records of a resource as NDJSON;
//! - [`import`]: `exchange-hub import`, offline batch files (离线交换) applied through the batch
//!   endpoint, answers written back;
//! - [`verify`]: `exchange-hub verify`, the requester side of the verification service.
//!
//! Starting a hub in-process (what `exchange-agent demo` and the tests do):
//!
//! ```no_run
//! # async fn demo(ca: std::path::PathBuf, cert: std::path::PathBuf, key: std::path::PathBuf,
//! #               db: std::path::PathBuf) -> anyhow::Result<()> {
//! use exchange_hub::config::{HubConfig, StoreConfig};
//! use exchange_protocol::tls::{MinTlsVersion, MutualTls};
//!
//! exchange_protocol::tls::install_provider();
//! let tls = MutualTls { ca, cert, key, min_version: MinTlsVersion::Tls13, crls: Vec::new() };
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = HubConfig::new(listener.local_addr()?, tls, StoreConfig::sqlite(db));
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let hub = tokio::spawn(async move {
//!     exchange_hub::server::run(listener, &config, async { let _ = stopped.await; }).await
//! });
//! // … push batches to https://127.0.0.1:<port>/v1/batches …
//! let _ = stop.send(());
//! hub.await??;
//! # Ok(()) }
//! ```
//!
//! Reading what arrived: `Store::open(&config.store)` then
//! [`export::export`]`(&store, "RESOURCE-CODE")` → one `serde_json::Value` per record,
//! ordered by key.

pub mod admin;
pub mod config;
pub mod export;
pub mod import;
pub mod proof;
pub mod server;
pub mod store;
pub mod verify;

pub use config::{ConfigError, HubConfig, StoreConfig};
pub use server::{HubError, run};
pub use store::{Store, StoreError};
