//! Sealed source positions. When a resource's key leaves pseudonymized (or encrypted), its raw
//! value must not reach the agent's disk either; but the source position (the cursor's key
//! tiebreaker, a snapshot scan's last key) needs the raw value to continue reading. Such
//! position values are stored sealed: encrypted and authenticated under the node's own seal
//! key (`[policy] seal_key_file`), which lives outside `data_dir` (configuration refuses a key
//! file inside it) and is never shared. Not the pseudonym key: departments share that one by
//! design, so any of them could open this node's positions.
//!
//! # Format (version 2)
//!
//! ```text
//! k        = HMAC-SM3(seal key, "exchange-agent position seal v2" 0x00 resource code)  -- 32 bytes
//! siv      = HMAC-SM3(k[16..32], plaintext)[0..16]
//! sealed   = siv ‖ SM4-CTR(k[0..16], counter block = siv, plaintext)
//! ```
//!
//! Deterministic authenticated encryption (SIV): the same position seals to the same bytes;
//! opening checks the tag (in constant time), so a position sealed under another seal key, or
//! for another resource, is refused, never misread; the pull then stops with what to do
//! (put the seal key file back, or `cursor reset` / `resync`). In the queue a sealed value is
//! the JSON value `{"sealed": "<base64>"}` in place of the raw cursor value; the plaintext is
//! the value's tagged JSON form (its type kept). Version 1 (a key derived from the pseudonym
//! key) is not read.

use base64::Engine;
use hmac::{Hmac, Mac};
use sm3::Sm3;
use sm4::Sm4;
use sm4::cipher::{BlockEncrypt, KeyInit};

use crate::pseudonym::{KeyError, MIN_KEY_BYTES};

/// The label the sealing key of a resource is derived with.
pub const LABEL: &str = "exchange-agent position seal v2";

/// The node's own seal key (`[policy] seal_key_file`): at least 32 bytes, written as hex.
#[derive(Clone)]
pub struct SealKey {
    /// HMAC-SM3 keyed with the secret.
    mac: Hmac<Sm3>,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey")
    }
}

impl SealKey {
    /// A key from its secret bytes.
    pub fn new(secret: &[u8]) -> Result<SealKey, KeyError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort {
                found: secret.len(),
            });
        }
        Ok(SealKey {
            mac: <Hmac<Sm3> as Mac>::new_from_slice(secret).expect("any HMAC key size"),
        })
    }

    /// A key from the text of a key file: hexadecimal digits, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<SealKey, KeyError> {
        SealKey::new(&hex::decode(text.trim()).map_err(|_| KeyError::NotHex)?)
    }

    /// The sealer of one resource's positions.
    pub fn sealer(&self, resource: &str) -> Sealer {
        let mut mac = self.mac.clone();
        mac.update(LABEL.as_bytes());
        mac.update(b"\0");
        mac.update(resource.as_bytes());
        Sealer::new(mac.finalize().into_bytes().into())
    }
}

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
    fn new(k: [u8; 32]) -> Sealer {
        Sealer {
            cipher: Sm4::new_from_slice(&k[..16]).expect("16-byte SM4 key"),
            mac: <Hmac<Sm3> as Mac>::new_from_slice(&k[16..]).expect("any HMAC key size"),
        }
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
    pub fn seal_value(
        &self,
        v: &exchange_protocol::value::Value,
    ) -> exchange_protocol::value::Value {
        let plain = serde_json::to_vec(v).expect("a value serializes");
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.seal(&plain));
        exchange_protocol::value::Value::Json(serde_json::json!({ "sealed": b64 }))
    }

    /// The raw cursor value of a sealed one; `Err` when `v` is not sealed or not under this key.
    pub fn open_value(
        &self,
        v: &exchange_protocol::value::Value,
    ) -> Result<exchange_protocol::value::Value, Refused> {
        let exchange_protocol::value::Value::Json(j) = v else {
            return Err(Refused::NotSealed);
        };
        let b64 = j
            .get("sealed")
            .and_then(|s| s.as_str())
            .ok_or(Refused::NotSealed)?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| Refused::Damaged)?;
        let plain = self.open(&sealed).ok_or(Refused::OtherKey)?;
        serde_json::from_slice(&plain).map_err(|_| Refused::Damaged)
    }
}

/// Why a stored value could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The value is stored in clear where a sealed one belongs.
    #[error("{}", exchange_protocol::tr!(
        "a value of the key is stored unsealed, but the key leaves pseudonymized or encrypted",
        "主键的值以未封存形式保存，但主键是以假名化或加密形式外发的"
    ))]
    NotSealed,
    /// The tag does not match: another seal key (or another resource).
    #[error("{}", exchange_protocol::tr!(
        "it was sealed under another seal key (`[policy] seal_key_file` changed since it was stored)",
        "它是用另一个封存密钥封存的（保存之后 `[policy] seal_key_file` 已更改）"
    ))]
    OtherKey,
    /// Not a sealed value of this format.
    #[error("{}", exchange_protocol::tr!(
        "the stored position is damaged",
        "保存的位置已损坏"
    ))]
    Damaged,
}

/// Whether a stored cursor value is sealed.
pub fn is_sealed(v: &exchange_protocol::value::Value) -> bool {
    matches!(v, exchange_protocol::value::Value::Json(j) if j.get("sealed").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use exchange_protocol::value::Value;

    #[test]
    fn a_sealed_position_opens_under_its_key_only_and_hides_the_value() {
        let key = |b: u8| SealKey::new(&[b; 32]).unwrap();
        let s = key(1).sealer("R1");
        let v = Value::Text("11010519491231002X".into());
        let sealed = s.seal_value(&v);
        let text = serde_json::to_string(&sealed).unwrap();
        assert!(!text.contains("11010519491231002X") && !text.contains("1101051949"));
        assert!(is_sealed(&sealed));
        assert_eq!(s.open_value(&sealed), Ok(v.clone()));
        assert_eq!(s.seal_value(&v), sealed, "deterministic");
        assert_eq!(
            key(2).sealer("R1").open_value(&sealed),
            Err(Refused::OtherKey)
        );
        assert_eq!(
            key(1).sealer("R2").open_value(&sealed),
            Err(Refused::OtherKey),
            "a position of another resource is refused"
        );
        assert_eq!(s.open_value(&v), Err(Refused::NotSealed));
        let i = Value::Int(42);
        assert_eq!(s.open_value(&s.seal_value(&i)), Ok(i));
    }

    #[test]
    fn seal_keys_are_long_enough_and_never_printed() {
        assert_eq!(
            SealKey::from_hex("abcd").unwrap_err(),
            KeyError::TooShort { found: 2 }
        );
        assert_eq!(SealKey::from_hex("xyz").unwrap_err(), KeyError::NotHex);
        let k = SealKey::from_hex(&"5a".repeat(32)).unwrap();
        assert_eq!(format!("{k:?}"), "SealKey");
    }

    #[test]
    fn a_changed_byte_is_refused() {
        let s = SealKey::new(&[7; 32]).unwrap().sealer("R1");
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
