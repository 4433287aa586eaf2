//! What the exchange agent and the reference hub share.
//!
//! - [`tls`]: the only module that builds rustls configurations (one crypto provider, `ring`).
//! - `pki` (cargo feature `pki`, off by default): a throwaway certificate authority for the
//!   demo and the tests; the production binaries do not contain it.
//! - [`batch`]: the wire format of a batch of records (docs/PROTOCOL.md).
//! - [`catalogue`]: a resource's catalogue entry (docs/PROTOCOL.md §10).

pub mod batch;
pub mod catalogue;
#[cfg(feature = "pki")]
pub mod pki;
pub mod quantity;
pub mod tls;
