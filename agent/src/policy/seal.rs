//! Sealed source positions. When a resource's key leaves pseudonymized (or encrypted), its raw
//! value must not reach the agent's disk either; but the source position (the cursor's key
//! tiebreaker, a snapshot scan's last key) needs the raw value to continue reading. Such
//! position values are stored sealed: encrypted and authenticated under a key derived from the
//! resource's own pseudonym or FPE key (which lives outside `data_dir`).
//!
//! # Format (version 1)
//!
//! ```text
//! k        = HMAC-SM3(secret, "exchange-agent position seal v1")   -- 32 bytes
//! siv      = HMAC-SM3(k[16..32], plaintext)[0..16]
//! sealed   = siv ‖ SM4-CTR(k[0..16], counter block = siv, plaintext)
//! ```
//!
//! Deterministic authenticated encryption (SIV): the same position seals to the same bytes;
//! opening checks the tag, so a position sealed under another key is refused, never misread.
//! In the queue a sealed value is the JSON value `{"sealed": "<base64>"}` in place of the raw
//! cursor value; the plaintext is the value's tagged JSON form (its type kept).

use base64::Engine;
use hmac::{Hmac, Mac};
use sm3::Sm3;
use sm4::Sm4;
use sm4::cipher::{BlockEncrypt, KeyInit};

/// The label the sealing key is derived with.
pub const LABEL: &str = "exchange-agent position seal v1";

/// Seals and opens position values.
#[derive(Clone)]
pub struct Sealer {
    /// SM4 under k[0..16].
    cipher: Sm4,
    /// HMAC-SM3 under k[16..32].
    mac: Hmac<Sm3>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

impl Sealer {
    /// A sealer from the 32-byte derived key `k`.
    pub fn new(k: [u8; 32]) -> Sealer {
        Sealer {
            cipher: Sm4::new_from_slice(&k[..16]).expect("16-byte SM4 key"),
            mac: <Hmac<Sm3> as Mac>::new_from_slice(&k[16..]).expect("any HMAC key size"),
        }
    }

    /// A sealer from any secret: k = HMAC-SM3(secret, [`LABEL`]).
    pub fn from_secret(secret: &[u8]) -> Sealer {
        let mut mac = <Hmac<Sm3> as Mac>::new_from_slice(secret).expect("any HMAC key size");
        mac.update(LABEL.as_bytes());
        Sealer::new(mac.finalize().into_bytes().into())
    }

    fn keystream_xor(&self, siv: &[u8; 16], data: &mut [u8]) {
        let mut counter = u128::from_be_bytes(*siv);
        for chunk in data.chunks_mut(16) {
            let mut block = counter.to_be_bytes().into();
            self.cipher.encrypt_block(&mut block);
            for (d, k) in chunk.iter_mut().zip(block.iter()) {
                *d ^= k;
            }
            counter = counter.wrapping_add(1);
        }
    }

    fn siv(&self, plaintext: &[u8]) -> [u8; 16] {
        let mut mac = self.mac.clone();
        mac.update(plaintext);
        let tag = mac.finalize().into_bytes();
        tag[..16].try_into().expect("16 of 32 bytes")
    }

    /// Seals `plaintext`.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let siv = self.siv(plaintext);
        let mut out = Vec::with_capacity(16 + plaintext.len());
        out.extend_from_slice(&siv);
        out.extend_from_slice(plaintext);
        self.keystream_xor(&siv, &mut out[16..]);
        out
    }

    /// Opens what [`Sealer::seal`] produced; `None` if it was sealed under another key or
    /// changed.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let siv: [u8; 16] = sealed.get(..16)?.try_into().ok()?;
        let mut plain = sealed[16..].to_vec();
        self.keystream_xor(&siv, &mut plain);
        // The tag is compared in constant time (`verify_truncated_left`).
        let mut mac = self.mac.clone();
        mac.update(&plain);
        mac.verify_truncated_left(&siv).is_ok().then_some(plain)
    }

    /// A cursor value sealed as `{"sealed": "<base64>"}`.
    pub fn seal_value(&self, v: &exchange_connectors::Value) -> exchange_connectors::Value {
        let plain = serde_json::to_vec(v).expect("a value serializes");
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.seal(&plain));
        exchange_connectors::Value::Json(serde_json::json!({ "sealed": b64 }))
    }

    /// The raw cursor value of a sealed one; `Err` when `v` is not sealed or not under this key.
    pub fn open_value(
        &self,
        v: &exchange_connectors::Value,
    ) -> Result<exchange_connectors::Value, &'static str> {
        let exchange_connectors::Value::Json(j) = v else {
            return Err("the stored position is not sealed, but the key is pseudonymized");
        };
        let b64 = j
            .get("sealed")
            .and_then(|s| s.as_str())
            .ok_or("the stored position is not sealed")?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "the stored position is damaged")?;
        let plain = self
            .open(&sealed)
            .ok_or("the stored position was sealed under another key")?;
        serde_json::from_slice(&plain).map_err(|_| "the stored position is damaged")
    }
}

/// Whether a stored cursor value is sealed.
pub fn is_sealed(v: &exchange_connectors::Value) -> bool {
    matches!(v, exchange_connectors::Value::Json(j) if j.get("sealed").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use exchange_connectors::Value;

    #[test]
    fn a_sealed_position_opens_under_its_key_only_and_hides_the_value() {
        let s = Sealer::from_secret(b"one key of the department......");
        let v = Value::Text("11010519491231002X".into());
        let sealed = s.seal_value(&v);
        let text = serde_json::to_string(&sealed).unwrap();
        assert!(!text.contains("11010519491231002X") && !text.contains("1101051949"));
        assert!(is_sealed(&sealed));
        assert_eq!(s.open_value(&sealed), Ok(v.clone()));
        assert_eq!(s.seal_value(&v), sealed, "deterministic");
        let other = Sealer::from_secret(b"another key.....................");
        assert!(other.open_value(&sealed).is_err());
        assert!(s.open_value(&v).is_err());
        let i = Value::Int(42);
        assert_eq!(s.open_value(&s.seal_value(&i)), Ok(i));
    }

    #[test]
    fn a_changed_byte_is_refused() {
        let s = Sealer::from_secret(b"k");
        let sealed = s.seal(b"a long enough plaintext to span two blocks");
        assert_eq!(
            s.open(&sealed).unwrap(),
            b"a long enough plaintext to span two blocks"
        );
        for i in [0, 15, 20] {
            let mut changed = sealed.clone();
            changed[i] ^= 1;
            assert!(s.open(&changed).is_none(), "byte {i}");
        }
        assert!(s.open(b"short").is_none());
    }
}
