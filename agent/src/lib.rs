//! exchange-agent: the front-end exchange agent (前置机).
//!
//! Code map (docs/ARCHITECTURE.md has the long form):
//! - [`config`]: TOML → validated [`config::Config`];
//! - [`policy`]: the only code that decides what leaves (default deny, field rules);
//! - [`pull`]: source pages → policy → batches in the [`queue`], cursor in the same commit;
//! - [`queue`]: the durable redb queue (on-disk format and invariants in its doc comment);
//! - [`push`]: batches → the hub over mutual TLS, removed only after acknowledgement;
//! - [`pipeline`], [`daemon`], [`sync`]: assembly and the two ways of running it;
//! - [`check`], [`status`], [`operator`], [`control`]: the other commands ([`audit`] records
//!   what operators change); [`fingerprint`]: what determines a stream; [`logging`]: how log
//!   lines look (the demo is its own crate, `demo/`);
//! - [`verify`]: the verification service (数据不落地核验), hosted by [`daemon`];
//! - [`data_dir`]: files of the data directory replaced whole, atomically and durably.

pub mod admin;
pub mod audit;
pub mod backoff;
pub mod catalogue;
pub mod check;
pub mod config;
pub mod control;
pub mod daemon;
pub mod data_dir;
pub mod fingerprint;
pub use exchange_rules::identifier;
pub mod logging;
pub mod metrics;
pub mod operator;
pub mod pipeline;
pub mod policy;
pub mod pull;
pub mod push;
pub mod queue;
pub mod reload;
pub mod schedule;
pub mod sd_notify;
pub mod status;
pub mod sync;
pub mod verify;
