//! Keyed pseudonyms: HMAC-SM3 over the normalized value. The one implementation: the
//! `pseudonym` rule and the verification service both use it, and any department holding the
//! same key computes the same token, so records join across resources and departments.
//!
//! Never a plain hash: a 公民身份号码 has about 10¹¹ plausible values, so an unkeyed SM3 of it
//! is reversed by enumeration in hours. Without the key a token reveals nothing.
//!
//! # Format (version 1)
//!
//! ```text
//! mac   = HMAC-SM3(key, "exchange-pseudonym" 0x00 version 0x00 domain 0x00 value)
//! token = "v" version ":" lowercase-hex(mac)          -- "v1:" and 64 hex digits
//! ```
//!
//! - `key`: the secret from `[policy] pseudonym_key_file` (at least 32 bytes, written as hex);
//! - `version`: `[policy] pseudonym_key_version`, decimal (`1`); a new key gets a new version,
//!   so tokens of different keys never look alike and can coexist during a rotation;
//! - `domain`: the field's `domain`, by default its identifier kind (`citizen_id`, `uscc`,
//!   `property_unit`, `mobile`, `other`): the same citizen ID gives the same token in every
//!   resource, and a citizen ID never gives the token of an equal-looking value of another
//!   kind. Neither version nor domain contains a NUL byte, so the message is unambiguous;
//! - `value`: the value normalized by [`crate::identifier::normalize`] (UTF-8).
//!
//! | key (hex) | version | domain | value | token |
//! |---|---|---|---|---|
//! | `00 01 … 1f` | 1 | `citizen_id` | `11010519491231002X` | `v1:b79ce0a937a78cc94acbf1a16c404f222fc402f52af28a0d0e11ce56f1c26599` |
//!
//! The key check value ([`PseudonymKey::check_value`], the first 8 hex digits of
//! HMAC-SM3(key, "exchange-pseudonym key check")) identifies a key in the stream
//! fingerprint without revealing it: a changed key file stops the resource.

use hmac::{Hmac, Mac};
use sm3::Sm3;

/// Shortest accepted secret, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not hexadecimal.
    #[error("{}", exchange_protocol::tr!(
        "the key must be written as hexadecimal digits (e.g. from `openssl rand -hex 32`)",
        "密钥必须写成十六进制数字（例如由 `openssl rand -hex 32` 生成）"
    ))]
    NotHex,
    /// The secret is too short.
    #[error("{}", exchange_protocol::tr!(
        "the key has {found} bytes; at least {MIN_KEY_BYTES} are needed (`openssl rand -hex 32`)",
        "密钥为 {found} 字节；至少需要 {MIN_KEY_BYTES} 字节（`openssl rand -hex 32`）"
    ))]
    TooShort {
        /// How many bytes the file holds.
        found: usize,
    },
    /// The key has the wrong length.
    #[error("{}", exchange_protocol::tr!(
        "the key has {found} bytes; exactly {expected} are needed (`openssl rand -hex {expected}`)",
        "密钥为 {found} 字节；需要恰好 {expected} 字节（`openssl rand -hex {expected}`）"
    ))]
    WrongLength {
        /// How many bytes the file holds.
        found: usize,
        /// How many are needed.
        expected: usize,
    },
    /// The version is not usable.
    #[error("{}", exchange_protocol::tr!(
        "the key version must be 1 or more",
        "密钥版本必须不小于 1"
    ))]
    Version,
}

/// A pseudonym key: the secret, ready for HMAC (its inner and outer pads computed once), and
/// its version.
#[derive(Clone)]
pub struct PseudonymKey {
    /// The key version, written into every token.
    version: u32,
    /// HMAC-SM3 keyed with the secret; cloned per token.
    mac: Hmac<Sm3>,
    /// `"v<version>:"`.
    prefix: String,
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PseudonymKey")
            .field("version", &self.version)
            .field("check_value", &self.check_value())
            .finish()
    }
}

impl PseudonymKey {
    /// A key from its secret bytes.
    pub fn new(version: u32, secret: &[u8]) -> Result<PseudonymKey, KeyError> {
        if version == 0 {
            return Err(KeyError::Version);
        }
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort {
                found: secret.len(),
            });
        }
        let mac = <Hmac<Sm3> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any size");
        Ok(PseudonymKey {
            version,
            mac,
            prefix: format!("v{version}:"),
        })
    }

    /// A key from the text of a key file: hexadecimal digits, surrounding whitespace ignored.
    pub fn from_hex(version: u32, text: &str) -> Result<PseudonymKey, KeyError> {
        let secret = hex::decode(text.trim()).map_err(|_| KeyError::NotHex)?;
        Self::new(version, &secret)
    }

    /// The key version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Identifies the key without revealing it: the first 8 hex digits of
    /// HMAC-SM3(key, "exchange-pseudonym key check").
    pub fn check_value(&self) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"exchange-pseudonym key check");
        hex::encode(&mac.finalize().into_bytes()[..4])
    }

    /// The raw 32-byte HMAC of `value` (already normalized) in `domain`.
    pub fn mac(&self, domain: &str, value: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(b"exchange-pseudonym\0");
        let mut digits = [0u8; 10];
        mac.update(decimal(self.version, &mut digits));
        mac.update(b"\0");
        mac.update(domain.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The token of `value` (already normalized) in `domain`: `v<version>:` and 64 hex digits.
    pub fn token(&self, domain: &str, value: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 64);
        self.token_into(domain, value, &mut out);
        out
    }

    /// [`PseudonymKey::token`], appended to `out`.
    pub fn token_into(&self, domain: &str, value: &str, out: &mut String) {
        self.token_of_mac_into(&self.mac(domain, value), out);
    }

    /// The token whose MAC ([`PseudonymKey::mac`]) is `mac`: `v<version>:` and its hex.
    pub fn token_of_mac(&self, mac: &[u8; 32]) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 64);
        self.token_of_mac_into(mac, &mut out);
        out
    }

    fn token_of_mac_into(&self, mac: &[u8; 32], out: &mut String) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push_str(&self.prefix);
        for b in mac {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }

    /// Whether `token` has the shape of a token of this key (version prefix, 64 hex digits).
    pub fn is_token(&self, token: &str) -> bool {
        token.strip_prefix(&self.prefix).is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
    }
}

/// The decimal digits of `n`, without allocating.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identifier::{IdKind, normalize};

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn key(version: u32) -> PseudonymKey {
        PseudonymKey::from_hex(version, KEY).unwrap()
    }

    #[test]
    fn hmac_sm3_matches_an_independent_implementation() {
        // `printf abc | openssl dgst -sm3 -mac HMAC -macopt hexkey:000102…1f`
        let mut mac = key(1).mac.clone();
        mac.update(b"abc");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "a8f95cf26f204957e7ca73c9602a25dda35f168b28103b51dfc968c810416b63"
        );
    }

    #[test]
    fn the_token_is_the_hmac_of_the_documented_message() {
        // `printf 'exchange-pseudonym\0001\000citizen_id\00011010519491231002X' |
        //  openssl dgst -sm3 -mac HMAC -macopt hexkey:000102…1f`
        let token = key(1).token("citizen_id", "11010519491231002X");
        assert_eq!(
            token,
            format!("v1:{}", TOKEN_VECTOR),
            "the format of version 1 must not change: departments sharing a key compare tokens"
        );
        assert!(key(1).is_token(&token));
        assert!(!key(2).is_token(&token));
        assert!(!key(1).is_token("v1:abc"));
    }

    /// HMAC-SM3 of the version-1 message for the test key (from openssl, see above).
    const TOKEN_VECTOR: &str = "b79ce0a937a78cc94acbf1a16c404f222fc402f52af28a0d0e11ce56f1c26599";

    #[test]
    fn tokens_are_fixed_length_and_prefixed_with_the_key_version() {
        for (v, value) in [(1, ""), (7, "x"), (12345, "买买提·艾力")] {
            let t = key(v).token("other", value);
            assert!(t.starts_with(&format!("v{v}:")), "{t}");
            assert_eq!(t.len(), format!("v{v}:").len() + 64);
        }
    }

    #[test]
    fn equal_normalized_inputs_give_equal_tokens() {
        let k = key(1);
        let domain = IdKind::CitizenId.as_str();
        let tokens: Vec<String> = [
            "11010519491231002X",
            " 11010519491231002x",
            "１１０１０５１９４９１２３１００２Ｘ",
        ]
        .iter()
        .map(|raw| k.token(domain, &normalize(IdKind::CitizenId, raw).unwrap()))
        .collect();
        assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");
        let old = normalize(IdKind::CitizenId, "150102880730303").unwrap();
        let new = normalize(IdKind::CitizenId, "150102198807303035").unwrap();
        assert_eq!(k.token(domain, &old), k.token(domain, &new));
    }

    #[test]
    fn keys_are_refused_when_short_or_not_hex() {
        assert_eq!(
            PseudonymKey::from_hex(1, "00ff").unwrap_err(),
            KeyError::TooShort { found: 2 }
        );
        assert_eq!(
            PseudonymKey::from_hex(1, "zz").unwrap_err(),
            KeyError::NotHex
        );
        assert_eq!(
            PseudonymKey::from_hex(0, KEY).unwrap_err(),
            KeyError::Version
        );
        assert!(PseudonymKey::from_hex(1, &format!("  {KEY}\n")).is_ok());
        assert!(!format!("{:?}", key(1)).contains(KEY));
    }

    #[test]
    fn the_check_value_tells_keys_apart_without_the_secret() {
        let other = PseudonymKey::from_hex(1, &KEY.replace("1f", "20")).unwrap();
        assert_ne!(key(1).check_value(), other.check_value());
        assert_eq!(key(1).check_value(), key(2).check_value());
        assert_eq!(key(1).check_value().len(), 8);
    }

    proptest::proptest! {
        #[test]
        fn tokens_are_stable_and_separated_by_version_and_domain(value in "\\PC{0,24}", d1 in "[a-z_]{1,12}", d2 in "[a-z_]{1,12}") {
            let k1 = key(1);
            proptest::prop_assert_eq!(k1.token(&d1, &value), k1.token(&d1, &value));
            let h1 = k1.token(&d1, &value)[3..].to_owned();
            let h2 = key(2).token(&d1, &value)[3..].to_owned();
            proptest::prop_assert_ne!(h1.clone(), h2);
            if d1 != d2 {
                proptest::prop_assert_ne!(k1.token(&d1, &value), k1.token(&d2, &value));
            }
        }
    }
}
