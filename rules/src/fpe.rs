//! Format-preserving encryption of digits: FF1 (NIST SP 800-38G) over SM4, radix 10, keyed by
//! the department's own key (`[policy] fpe_key_file`, 16 bytes written as 32 hex digits).
//! Reversible only with that key, for departments that must get their own records back.
//!
//! The value is first normalized as its field's identifier kind when it has one
//! ([`FpeKey::apply_identifier`]: a 公民身份号码 `11010519491231002x` is encrypted as
//! `11010519491231002X`, `150102880730303` as `150102198807303035`; an invalid one in its
//! cleaned form; kind `other` as read), and made half-width (`０２５６` → `0256`); its ASCII
//! digits are then encrypted as one numeral string, in place; every other character stays
//! where it is (`X` of a citizen ID, dashes). FF1 needs at least 6 digits (a domain of 10⁶ values): a value
//! with fewer is masked completely, never passed through; so is a value holding a digit of
//! another script (Arabic-Indic `٠١٢`, circled `①` …: any `char::is_numeric` character that
//! is not an ASCII digit), which would otherwise leave in clear.
//!
//! For another implementation (docs/CONFIG.md states the same): the block cipher is SM4
//! (GB/T 32907) under the 16-byte key; radix 10; the numeral string is the value's ASCII
//! digits in order, each digit its numeral (most significant first, as SP 800-38G's
//! NUM_radix reads it); the tweak is the UTF-8 bytes of the field's domain (`domain` in
//! `[resources.fields]`, default the identifier kind's name: `citizen_id`, `other` …; empty
//! allowed); the output digits replace the input digits position by position.
//!
//! | key | tweak (domain) | input | output |
//! |---|---|---|---|
//! | `000102030405060708090a0b0c0d0e0f` | `other` | 6228480402564890018 | 6021225108187167238 |
//! | `000102030405060708090a0b0c0d0e0f` | `citizen_id` | 11010519491231002X | 68255778106907692X |
//! | `000102030405060708090a0b0c0d0e0f` | (empty) | 0123456789 | 4499149491 |
//! | `2b7e151628aed2a6abf7158809cf4f3c` | (empty) | 0123456789 | 0496670108 |
//! | `000102030405060708090a0b0c0d0e0f` | `other` | 12345 (too few digits) | \*\*\*\*\* |
//! | `000102030405060708090a0b0c0d0e0f` | `other` | ６２２８４８０４０２５６４８９００１８ (full-width) | as 6228480402564890018 |
//! | `000102030405060708090a0b0c0d0e0f` | `other` | ٦٢٢٨٤٨٠٤٠٢٥٦٤٨٩٠٠١٨ (Arabic-Indic digits) | \*\*\*\*\*\*\*\*\*\*\*\*\*\*\*\*\*\*\* |
//! | `000102030405060708090a0b0c0d0e0f` | `citizen_id` | 11010519491231002x, kind `citizen_id` | 68255778106907692X |
//! | `000102030405060708090a0b0c0d0e0f` | `citizen_id` | 150102880730303, kind `citizen_id` (as 150102198807303035) | 441144621736115756 |
//!
//! The key check value ([`FpeKey::check_value`]: SM4 of a zero block, first 4 bytes) names the
//! key in the stream fingerprint without revealing it (`1e9634b7` for the first key above).

use fpe::ff1::{FF1, FlexibleNumeralString};
use sm4::Sm4;
use sm4::cipher::{BlockEncrypt, KeyInit};

use crate::identifier::{self, IdKind};
use crate::mask::mask_all;
use crate::pseudonym::KeyError;

/// The department's FPE key.
#[derive(Clone)]
pub struct FpeKey {
    /// FF1 over SM4, radix 10.
    ff1: std::sync::Arc<FF1<Sm4>>,
    /// The raw key, for its check value.
    secret: [u8; 16],
}

impl std::fmt::Debug for FpeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FpeKey")
            .field("check_value", &self.check_value())
            .finish()
    }
}

impl FpeKey {
    /// A key from its 16 bytes.
    pub fn new(secret: [u8; 16]) -> FpeKey {
        FpeKey {
            ff1: std::sync::Arc::new(FF1::<Sm4>::new(&secret, 10).expect("radix 10 is valid")),
            secret,
        }
    }

    /// A key from the text of a key file: 32 hex digits, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<FpeKey, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::NotHex)?;
        let secret: [u8; 16] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| KeyError::WrongLength {
                found: b.len(),
                expected: 16,
            })?;
        Ok(FpeKey::new(secret))
    }

    /// The first 4 bytes of SM4 of a zero block, in hex.
    pub fn check_value(&self) -> String {
        let cipher = Sm4::new(&self.secret.into());
        let mut block = [0u8; 16].into();
        cipher.encrypt_block(&mut block);
        hex::encode(&block[..4])
    }

    /// Encrypts the digits of `s` in place (full-width digits read as ASCII ones); `None` with
    /// fewer than 6 digits, or with a digit of another script (which would otherwise stay in
    /// clear).
    pub fn encrypt(&self, domain: &str, s: &str) -> Option<String> {
        self.run(domain, s, true)
    }

    /// Decrypts what [`FpeKey::encrypt`] produced.
    pub fn decrypt(&self, domain: &str, s: &str) -> Option<String> {
        self.run(domain, s, false)
    }

    fn run(&self, domain: &str, s: &str, encrypt: bool) -> Option<String> {
        // Full-width digits become ASCII ones first; any other digit (Arabic-Indic, circled,
        // …) would be copied through in clear, so such a value is not encrypted at all.
        let s = identifier::half_width(s);
        if s.chars().any(|c| c.is_numeric() && !c.is_ascii_digit()) {
            return None;
        }
        let digits: Vec<u16> = s
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|d| u16::from(d - b'0'))
            .collect();
        if digits.len() < 6 {
            return None;
        }
        let ns = FlexibleNumeralString::from(digits);
        let out = if encrypt {
            self.ff1.encrypt(domain.as_bytes(), &ns)
        } else {
            self.ff1.decrypt(domain.as_bytes(), &ns)
        }
        .ok()?;
        let mut out: Vec<u16> = out.into();
        out.reverse();
        Some(
            s.chars()
                .map(|c| {
                    if c.is_ascii_digit() {
                        char::from(b'0' + out.pop().unwrap_or(0) as u8)
                    } else {
                        c
                    }
                })
                .collect(),
        )
    }

    /// [`FpeKey::encrypt`], masked completely when it cannot encrypt.
    pub fn apply(&self, domain: &str, s: &str) -> String {
        self.encrypt(domain, s).unwrap_or_else(|| mask_all(s))
    }

    /// [`FpeKey::apply`] to `s` normalized as an identifier of `kind` first
    /// ([`identifier::normalize`]; an invalid one in its cleaned form), so that the forms of
    /// one identifier (`x` or `X`, 15 or 18 digits, full-width, spaced) encrypt alike, as the
    /// key of a record does. Kind `other` is encrypted as read.
    pub fn apply_identifier(&self, kind: IdKind, domain: &str, s: &str) -> String {
        if kind == IdKind::Other {
            return self.apply(domain, s);
        }
        let normal = identifier::normalize(kind, s).unwrap_or_else(|e| e.cleaned);
        self.apply(domain, &normal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FpeKey {
        FpeKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap()
    }

    /// Known answers of FF1-SM4 (radix 10). Computed with this implementation, and
    /// cross-checked with an independent one written for the purpose (not in the repository):
    /// FF1 in Python after NIST SP 800-38G Algorithm 7, itself checked against NIST's FF1-AES128
    /// samples 1 and 2 (key 2B7E…4F3C, 0123456789 → 2433477484 and, with tweak 3938…3130,
    /// 6124200773), over the SM4 of Python's `cryptography` package, itself checked against
    /// GB/T 32907-2016 A.1 (0123…3210 under 0123…3210 → 681edf34…4246). Both gave these values.
    #[test]
    fn ff1_over_sm4_gives_the_known_answers() {
        let k = key();
        for (domain, plain, cipher) in [
            ("other", "6228480402564890018", "6021225108187167238"),
            ("citizen_id", "11010519491231002X", "68255778106907692X"),
            ("", "0123456789", "4499149491"),
        ] {
            assert_eq!(k.encrypt(domain, plain).as_deref(), Some(cipher), "{plain}");
            assert_eq!(
                k.decrypt(domain, cipher).as_deref(),
                Some(plain),
                "{cipher}"
            );
        }
        // NIST's sample key and input, with SM4 in place of AES.
        let nist = FpeKey::from_hex("2B7E151628AED2A6ABF7158809CF4F3C").unwrap();
        assert_eq!(
            nist.encrypt("", "0123456789").as_deref(),
            Some("0496670108")
        );
        assert_eq!(k.check_value(), "1e9634b7");
    }

    /// The test vectors of the module documentation and of docs/CONFIG.md, computed.
    #[test]
    fn the_documented_test_vectors_are_what_the_implementation_computes() {
        let docs = [include_str!("fpe.rs"), include_str!("../../docs/CONFIG.md")];
        let k = key();
        let nist = FpeKey::from_hex("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
        let rows = [
            (&k, "other", "6228480402564890018", "6021225108187167238"),
            (&k, "citizen_id", "11010519491231002X", "68255778106907692X"),
            (&k, "", "0123456789", "4499149491"),
            (&nist, "", "0123456789", "0496670108"),
        ];
        for (key, domain, plain, cipher) in rows {
            assert_eq!(key.apply(domain, plain), cipher, "{plain}");
            assert_eq!(key.decrypt(domain, cipher).as_deref(), Some(plain));
            let tweak = if domain.is_empty() {
                "(empty)".to_owned()
            } else {
                format!("`{domain}`")
            };
            let row = format!(
                "| `{}` | {tweak} | {plain} | {cipher} |",
                hex::encode(key.secret)
            );
            for doc in docs {
                assert!(doc.contains(&row), "not documented: {row}");
            }
        }
        assert_eq!(k.apply("other", "12345"), "*****");
        assert_eq!(
            k.apply("other", "６２２８４８０４０２５６４８９００１８"),
            "6021225108187167238"
        );
        assert_eq!(k.apply("other", "٦٢٢٨٤٨٠٤٠٢٥٦٤٨٩٠٠١٨"), "*".repeat(19));
        assert_eq!(k.check_value(), "1e9634b7");
        // Identifiers are normalized first.
        let id = |s: &str| k.apply_identifier(IdKind::CitizenId, "citizen_id", s);
        assert_eq!(id("11010519491231002x"), "68255778106907692X");
        assert_eq!(
            id(" １１０１０５ １９４９１２３１ ００２ｘ "),
            "68255778106907692X"
        );
        assert_eq!(id("150102880730303"), id("150102198807303035"));
        assert_eq!(id("150102880730303").len(), 18);
        assert_eq!(id("150102880730303"), "441144621736115756");
        for doc in docs {
            assert!(doc.contains("| 441144621736115756 |"));
        }
        // An invalid one in its cleaned form; `other` as read.
        assert_eq!(
            id("110105194912310021 "),
            k.apply("citizen_id", "110105194912310021")
        );
        assert_eq!(
            k.apply_identifier(IdKind::Other, "other", " 6228-4804 "),
            k.apply("other", " 6228-4804 ")
        );
        assert_eq!(
            k.apply_identifier(IdKind::Mobile, "mobile", "+86 138-0013-8000"),
            k.apply("mobile", "13800138000")
        );
    }

    #[test]
    fn digits_are_encrypted_in_place_and_come_back() {
        let k = key();
        for input in [
            "6228480402564890018",
            "11010519491231002X",
            "138-0013-8000",
            "000000",
        ] {
            let out = k.encrypt("other", input).unwrap();
            assert_eq!(out.len(), input.len());
            assert_ne!(out, input);
            for (a, b) in input.chars().zip(out.chars()) {
                assert_eq!(a.is_ascii_digit(), b.is_ascii_digit(), "{input} → {out}");
                if !a.is_ascii_digit() {
                    assert_eq!(a, b);
                }
            }
            assert_eq!(k.decrypt("other", &out).as_deref(), Some(input));
            assert_ne!(
                k.encrypt("citizen_id", input).unwrap(),
                out,
                "the tweak separates domains"
            );
        }
        assert_eq!(k.apply("other", "12345"), "*****");
        assert_eq!(k.apply("other", "张三"), "**");
    }

    #[test]
    fn digits_of_other_scripts_never_pass_in_clear() {
        let k = key();
        // Full-width digits are encrypted like ASCII ones.
        assert_eq!(
            k.apply("other", "６２２８４８０４０２５６４８９００１８"),
            k.apply("other", "6228480402564890018")
        );
        assert_eq!(
            k.encrypt("citizen_id", "１１０１０５１９４９１２３１００２Ｘ"),
            k.encrypt("citizen_id", "11010519491231002X")
        );
        // Any other digit masks the whole value: Arabic-Indic, Devanagari, mixed with ASCII
        // ones, circled, 〇.
        for input in [
            "٦٢٢٨٤٨٠٤٠٢٥٦٤٨٩٠٠١٨",
            "६२२८४८०४०२५६",
            "622848٠٤٠٢٥٦4890018",
            "622848①4890018",
            "6228480402〇64890018",
        ] {
            assert_eq!(k.encrypt("other", input), None, "{input}");
            let out = k.apply("other", input);
            assert!(out.chars().all(|c| c == '*'), "{input} → {out}");
            assert_eq!(out.chars().count(), input.chars().count());
        }
    }

    #[test]
    fn keys_must_be_sixteen_bytes_and_have_a_check_value() {
        assert!(matches!(
            FpeKey::from_hex("0001").unwrap_err(),
            KeyError::WrongLength {
                found: 2,
                expected: 16
            }
        ));
        assert_eq!(key().check_value().len(), 8);
        assert!(!format!("{:?}", key()).contains("0001020304"));
    }

    proptest::proptest! {
        #[test]
        fn ff1_round_trips(s in "[0-9X-]{6,24}", domain in "[a-z]{1,8}") {
            let k = key();
            if let Some(c) = k.encrypt(&domain, &s) {
                proptest::prop_assert_eq!(k.decrypt(&domain, &c), Some(s.clone()));
            } else {
                proptest::prop_assert!(s.bytes().filter(u8::is_ascii_digit).count() < 6);
            }
        }
    }
}
