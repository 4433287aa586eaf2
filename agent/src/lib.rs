//! exchange-agent: the front-end exchange agent (前置机).
//!
//! Code map, by concern (docs/ARCHITECTURE.md has the long form; a module never imports one
//! listed above it in this list's layers, which `cargo test -p exchange-tests --test
//! architecture` checks):
//! - foundations: [`data_dir`] (the data directory, files replaced whole), [`backoff`],
//!   [`schedule`], [`text`] (durations and horizons for people), [`logging`], [`metrics`]
//!   (the process's counters), and the rules of the `exchange-rules` crate;
//! - [`audit`]: the tamper-evident audit log, its retention and archive;
//! - [`config`]: TOML → validated [`config::Config`] (raw structs, then the runtime types);
//! - [`policy`]: the only code that decides what leaves (default deny, field rules);
//! - [`pipeline`]: pulling pages through the policy into the durable [`pipeline::queue`],
//!   pushing batches to the hub, and [`pipeline::sync`] (run until caught up);
//! - [`verify`]: the verification service (数据不落地核验);
//! - [`operator`]: the commands an administrator runs against the data directory (`check`,
//!   queue, cursor, quarantine, accept-config, resync), each an [`operator::Operation`];
//! - [`service`]: the daemon (`run`): control socket (which carries operator commands out
//!   while the service holds the queue), reload, admin listener, systemd notification, the
//!   status report.
//!
//! The demo is its own crate (`demo/`); the binary is `src/main.rs`.

pub mod audit;
pub mod backoff;
pub mod config;
pub mod data_dir;
pub mod logging;
pub mod metrics;
pub mod operator;
pub mod pipeline;
pub mod policy;
pub mod schedule;
pub mod service;
pub mod text;
pub mod verify;

pub use exchange_rules::identifier;

/// Paths used before the crate was laid out by concern, kept for the test suite, the bench and
/// the demo.
pub use pipeline::{queue, sync};
pub use service::{daemon, sd_notify};
