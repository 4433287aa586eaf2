//! What the exchange agent and the reference hub share.
//!
//! - [`tls`]: the only module that builds rustls configurations (one crypto provider, `ring`).
//! - `pki` (cargo feature `pki`, off by default): a throwaway certificate authority for the
//!   demo and the tests; the production binaries do not contain it.
//! - [`batch`]: the wire format of a batch of records (docs/PROTOCOL.md).
//! - [`digest`]: SM3, the one digest of the workspace.
//! - [`signature`]: the node's signature on each batch (docs/PROTOCOL.md §4.7).
//! - [`offline`]: a batch and the hub's answer as files, for offline exchange (§12).
//! - [`value`]: the value of one source column and its exact JSON form (what a record holds
//!   on the wire; the connectors convert to it, the rules and the hub read it).
//! - [`lang`]: the language of command-line text (Chinese under a `zh_*` locale), [`tr!`];
//!   [`translate`]: a deserializer's and the system's messages in Chinese.
//! - [`catalogue`]: a resource's catalogue entry (docs/PROTOCOL.md §10).
//! - [`verify`]: the verification request and answer (docs/PROTOCOL.md §11); [`psi`] its
//!   private-set-intersection batch mode (§11.6).
//! - `server` (cargo feature `server`): the mutual-TLS accept loop and graceful shutdown
//!   shared by the hub and the agent's verification service.

pub mod batch;
pub mod catalogue;
pub mod cause;
pub mod digest;
#[cfg(feature = "help")]
pub mod help;
pub mod lang;
pub mod offline;
#[cfg(feature = "pki")]
pub mod pki;
pub mod psi;
pub mod quantity;
#[cfg(feature = "server")]
pub mod server;
pub mod signature;
pub mod tls;
pub mod translate;
pub mod value;
pub mod verify;
