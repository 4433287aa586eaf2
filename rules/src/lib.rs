//! The rules both ends of an exchange apply to a value, with no state and no I/O: identifier
//! normalization and check characters ([`identifier`], with the GB/T 2260 region codes of
//! [`region`]), the desensitization rules of a field ([`rule`]: [`mask`], [`pseudonym`],
//! [`generalize`], [`fpe`], [`seal`]) and the comparison semantics of verification
//! ([`compare`]). The agent's policy engine decides
//! which field gets which rule and what may leave; the hub uses the same normalization and
//! keyed digests to build the claims it sends. Nothing here reads configuration files,
//! databases or the network.

pub mod compare;
pub mod fpe;
pub mod generalize;
pub mod identifier;
pub mod mask;
pub mod pseudonym;
pub mod region;
pub mod rule;
pub mod seal;
