//! Private set intersection for verification (docs/PROTOCOL.md §11.6): ECDH over
//! ristretto255. The requester learns which of its subjects the provider holds and which of
//! its claims equal the stored values; the provider learns nothing of the requester's
//! subjects (not even those it holds), only how many there are.
//!
//! # Format
//!
//! ```text
//! Hs(s)       = ristretto255.from_uniform_bytes(SHA-512("exchange-psi-subject-v1" 0x00 s))
//! Hc(f, s, v) = ristretto255.from_uniform_bytes(SHA-512("exchange-psi-claim-v1" 0x00 f 0x00 s 0x00 v))
//! requester:  a random;  sends  a·Hs(s_i)  and  a·Hc(f, s_i, v_if)          (32-byte encodings)
//! provider:   b random per request; returns  b·(a·Hs(s_i)), b·(a·Hc(…))    (in request order)
//!             and the sorted tags  T(b·Hs(k_j)), T(b·Hc(f, k_j, v_jf))     (every row j, claimed f)
//! requester:  a⁻¹·b·a·X = b·X; found ⇔ T(b·Hs(s_i)) in the subject tags; match ⇔ T(b·Hc) in the claim tags
//! T(P)        = the first 16 bytes of P's 32-byte encoding
//! ```
//!
//! `s` and `k` are subjects and keys in their canonical form, `v` a value in the PSI form
//! (the agent's `verify::compare::psi_form`). Invariant: a point that does not decode is
//! refused (400), never multiplied; `b` lives for one request, so tags of two requests never
//! link, and the requester cannot test guesses offline.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};

/// The path of the PSI endpoint.
pub const PSI_PATH: &str = "/v1/verify/psi";
/// Bytes of a tag.
pub const TAG_BYTES: usize = 16;

/// A secret exponent (`a` or `b`), for one request.
pub struct Secret(Scalar);

impl Secret {
    /// A secret from 64 uniformly random bytes (the caller's random source).
    pub fn from_random_bytes(bytes: &[u8; 64]) -> Secret {
        Secret(Scalar::from_bytes_mod_order_wide(bytes))
    }

    /// `self · point`, encoded.
    pub fn blind(&self, point: &RistrettoPoint) -> [u8; 32] {
        (self.0 * point).compress().to_bytes()
    }

    /// `self · P` for an encoded `P`; `None` when it does not decode.
    pub fn reblind(&self, encoded: &[u8; 32]) -> Option<[u8; 32]> {
        let p = CompressedRistretto(*encoded).decompress()?;
        Some((self.0 * p).compress().to_bytes())
    }

    /// `self⁻¹ · P` for an encoded `P`; `None` when it does not decode.
    pub fn unblind(&self, encoded: &[u8; 32]) -> Option<[u8; 32]> {
        let p = CompressedRistretto(*encoded).decompress()?;
        Some((self.0.invert() * p).compress().to_bytes())
    }
}

fn from_hash(parts: &[&[u8]]) -> RistrettoPoint {
    let mut h = Sha512::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p);
    }
    let digest: [u8; 64] = h.finalize().into();
    RistrettoPoint::from_uniform_bytes(&digest)
}

/// `Hs(subject)`.
pub fn hash_subject(subject: &str) -> RistrettoPoint {
    from_hash(&[b"exchange-psi-subject-v1", subject.as_bytes()])
}

/// `Hc(field, subject, value)`.
pub fn hash_claim(field: &str, subject: &str, value: &str) -> RistrettoPoint {
    from_hash(&[
        b"exchange-psi-claim-v1",
        field.as_bytes(),
        subject.as_bytes(),
        value.as_bytes(),
    ])
}

/// `T(P)`: the first [`TAG_BYTES`] of an encoded point, in hex.
pub fn tag(encoded: &[u8; 32]) -> String {
    hex::encode(&encoded[..TAG_BYTES])
}

/// Whether 32 bytes encode a point (are the canonical encoding of a ristretto255 element).
pub fn decodes(encoded: &[u8; 32]) -> bool {
    CompressedRistretto(*encoded).decompress().is_some()
}

/// An encoded point from 64 hex digits.
pub fn point_from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

/// The PSI request: `verify` without clear subjects or claims.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsiRequest {
    /// As in [`crate::verify::VerifyRequest`].
    pub request_id: String,
    /// As in [`crate::verify::VerifyRequest`].
    pub purpose: String,
    /// As in [`crate::verify::VerifyRequest`].
    pub case_ref: String,
    /// As in [`crate::verify::VerifyRequest`].
    pub resource: String,
    /// Blinded subjects and claims, in order.
    pub items: Vec<PsiItem>,
}

/// One blinded subject and its blinded claims (64 hex digits each).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsiItem {
    /// `a·Hs(s)` (request) or `b·a·Hs(s)` (answer).
    pub subject: String,
    /// Field → `a·Hc(f, s, v)` (request) or `b·a·Hc(f, s, v)` (answer).
    pub claims: std::collections::BTreeMap<String, String>,
}

/// The PSI answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsiAnswer {
    /// The request's id.
    pub request_id: String,
    /// The request's items, each point multiplied by `b`, in order.
    pub items: Vec<PsiItem>,
    /// `T(b·Hs(k))` of every key the resource holds, sorted.
    pub subjects: Vec<String>,
    /// `T(b·Hc(f, k, v))` of every stored non-NULL value of a claimed field, sorted.
    pub claims: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blinding_commutes_so_the_requester_finds_the_providers_tag() {
        let a = Secret::from_random_bytes(&[7u8; 64]);
        let b = Secret::from_random_bytes(&[9u8; 64]);
        let p = hash_subject("11010519491231002X");
        let sent = a.blind(&p);
        let back = b.reblind(&sent).unwrap();
        let mine = a.unblind(&back).unwrap();
        assert_eq!(tag(&mine), tag(&b.blind(&p)));
        assert_ne!(
            tag(&b.blind(&hash_subject("440524188001010014"))),
            tag(&mine)
        );
        assert!(b.reblind(&[0xff; 32]).is_none());
    }
}
