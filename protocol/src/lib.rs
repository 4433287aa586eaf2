//! What the exchange agent and the reference hub share.
//!
//! - [`tls`]: the only module that builds rustls configurations (one crypto provider, `ring`).
//! - [`pki`]: a throwaway certificate authority for the demo and the tests.
//! - [`batch`]: the wire format of a batch of records (docs/PROTOCOL.md).

pub mod batch;
pub mod pki;
pub mod quantity;
pub mod tls;
