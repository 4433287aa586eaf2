//! Comparison semantics of the verification service: how a claimed value is compared with
//! the stored one, per field (`[resources.compare]`, docs/CONFIG.md).
//!
//! | semantics | equal when |
//! |---|---|
//! | `exact` (default) | the stored value's text form (docs/CONFIG.md, type mapping) equals the claim, byte for byte |
//! | `normalized` | both [`canonical`] forms are equal: trimmed, full-width → half-width, inner whitespace collapsed, case folded; a value that is a valid identifier (公民身份号码 15 or 18, 统一社会信用代码, 不动产单元号, mobile) is normalized as one first ([`crate::identifier::recognize`]: by form, the region not checked) |
//! | `date` | both are the same calendar date whatever the layout (`1949-12-31`, `1949/12/31`, `19491231`, `1949年12月31日`, an instant by its date in `[policy] time_zone`) |
//! | `number` | both are the same decimal number, exactly (`12.50` = `12.5` = `+12.500`, `1e3` = `1000`; never through a float) |
//! | `hmac` | the claim is `{"hmac": hex}`, HMAC-SM3 under `[verify] comparison_key_file` of the [`canonical`] form ([`claim_mac`]); the agent computes the same over the stored value |
//!
//! A claim `{"hmac": …}` is compared as `hmac` whatever the field's semantics; a field whose
//! semantics is `hmac` accepts only such claims. Every comparison of bytes is constant-time
//! ([`ct_eq`]) over fixed-size digests, so its duration tells nothing about the stored value.
//! A NULL stored value is [`Outcome::NoValue`]; a stored value that cannot be read in the
//! field's semantics (a `date` field holding `n/a`) never matches.

use chrono::FixedOffset;
use exchange_protocol::value::Value;
use exchange_protocol::verify::Claim;

use crate::identifier::{self, IdKind};
use crate::pseudonym::PseudonymKey;

/// How a field is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Byte for byte.
    Exact,
    /// Both [`canonical`] forms.
    Normalized,
    /// The same calendar date.
    Date,
    /// The same decimal number.
    Number,
    /// HMAC-SM3 claims only.
    Hmac,
}

impl Compare {
    /// Parses the semantics as written in `[resources.compare]`.
    pub fn parse(s: &str) -> Result<Compare, String> {
        Ok(match s {
            "exact" => Compare::Exact,
            "normalized" => Compare::Normalized,
            "date" => Compare::Date,
            "number" => Compare::Number,
            "hmac" => Compare::Hmac,
            other => {
                return Err(format!(
                    "`{other}` is not a comparison; expected \"exact\", \"normalized\", \"date\", \"number\" or \"hmac\""
                ));
            }
        })
    }

    /// The name as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Compare::Exact => "exact",
            Compare::Normalized => "normalized",
            Compare::Date => "date",
            Compare::Number => "number",
            Compare::Hmac => "hmac",
        }
    }
}

/// The result of one comparison, before the resource's disclosure policy is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Equal.
    Match,
    /// Not equal (or the stored value cannot be read in the field's semantics).
    Mismatch,
    /// The stored value is NULL.
    NoValue,
}

/// A claim that cannot be compared in its field's semantics (answered 400 for the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// The field compares HMACs only.
    HmacRequired,
    /// An HMAC claim, but no comparison key is configured.
    NoComparisonKey,
}

/// The key and zone a comparison needs.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// `[verify] comparison_key_file`, for HMAC claims.
    pub comparison_key: Option<&'a PseudonymKey>,
    /// `[policy] time_zone`: the date of an instant.
    pub time_zone: FixedOffset,
}

/// Compares `claim` with `stored` (the value of `field` read from the source).
pub fn compare(
    how: Compare,
    field: &str,
    claim: &Claim,
    stored: &Value,
    cx: Context<'_>,
) -> Result<Outcome, ClaimError> {
    match (how, claim) {
        (Compare::Hmac, Claim::Value(_)) => return Err(ClaimError::HmacRequired),
        (_, Claim::Hmac(_)) if cx.comparison_key.is_none() => {
            return Err(ClaimError::NoComparisonKey);
        }
        _ => {}
    }
    if matches!(stored, Value::Null) {
        return Ok(Outcome::NoValue);
    }
    let equal = match claim {
        Claim::Hmac(mac) => {
            let key = cx.comparison_key.expect("checked above");
            match stored_text(stored) {
                Some(text) => ct_eq(&claim_mac(key, field, &text), mac),
                None => false,
            }
        }
        Claim::Value(claimed) => match how {
            Compare::Exact => stored_text(stored).is_some_and(|s| digest_eq(&s, claimed)),
            Compare::Normalized => {
                stored_text(stored).is_some_and(|s| digest_eq(&canonical(&s), &canonical(claimed)))
            }
            Compare::Date => {
                let stored = crate::generalize::date_of(stored, cx.time_zone);
                let claimed = crate::generalize::date_of(
                    &Value::Text(identifier::half_width(claimed).trim().to_owned()),
                    cx.time_zone,
                );
                matches!((stored, claimed), (Some(a), Some(b)) if a == b)
            }
            Compare::Number => {
                let stored = match stored {
                    Value::Float(f) if !f.is_finite() => None,
                    other => stored_text(other).and_then(|t| decimal(&t)),
                };
                match (stored, decimal(&identifier::half_width(claimed))) {
                    (Some(a), Some(b)) => digest_eq(&a, &b),
                    _ => false,
                }
            }
            Compare::Hmac => unreachable!("refused above"),
        },
    };
    Ok(if equal {
        Outcome::Match
    } else {
        Outcome::Mismatch
    })
}

/// The text a stored value is compared as; JSON values by their compact text.
fn stored_text(value: &Value) -> Option<String> {
    match value {
        Value::Json(j) => Some(j.to_string()),
        other => other.to_text(),
    }
}

/// The normalized form of a value for `normalized` and `hmac` comparisons: an identifier of a
/// known kind in its normalized form; anything else half-width, trimmed, inner whitespace
/// runs as one space, lower case.
pub fn canonical(value: &str) -> String {
    let half = identifier::half_width(value);
    let trimmed = half.trim();
    for kind in [
        IdKind::CitizenId,
        IdKind::Uscc,
        IdKind::PropertyUnit,
        IdKind::Mobile,
    ] {
        if let Ok(n) = identifier::recognize(kind, trimmed) {
            return n;
        }
    }
    let mut out = String::with_capacity(trimmed.len());
    for word in trimmed.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// The MAC a requester sends as `{"hmac": hex}` for `value` claimed of `field`:
/// `PseudonymKey::mac(domain = "verify:" field, canonical(value))` under the comparison key
/// (docs/PROTOCOL.md §11.3).
pub fn claim_mac(key: &PseudonymKey, field: &str, value: &str) -> [u8; 32] {
    let mut domain = String::with_capacity(7 + field.len());
    domain.push_str("verify:");
    domain.push_str(field);
    key.mac(&domain, &canonical(value))
}

/// The form a value is compared in by private set intersection (docs/PROTOCOL.md §11.6),
/// where the requester cannot be told the field's semantics: `date:YYYY-MM-DD` if the value,
/// half-width and trimmed, reads as a date ([`form_date`]: exact layouts only, an instant by
/// its date in UTC+8), else `number:` and the canonical decimal if its [`canonical`] form reads
/// as a number, else `text:` and the canonical form.
pub fn psi_form(value: &str) -> String {
    let half = identifier::half_width(value);
    if let Some(d) = form_date(half.trim()) {
        return format!("date:{}", d.format("%Y-%m-%d"));
    }
    let c = canonical(value);
    if let Some(n) = decimal(&c) {
        return format!("number:{n}");
    }
    format!("text:{c}")
}

/// A date in one of the exact layouts of the PSI form (docs/PROTOCOL.md §11.6), tried in this
/// order: an RFC 3339 date-time ([`rfc3339_date`]: its date in UTC+8); `YYYY-MM-DD`,
/// `YYYY/MM/DD` or `YYYY.MM.DD` (4, 2 and 2 ASCII digits, one separator twice) alone or
/// followed by a space or `T` and anything; `YYYYMMDD`; `YYYY年M月D日` (4, 1–2 and 1–2 ASCII
/// digits). Each must be a real calendar date.
fn form_date(t: &str) -> Option<chrono::NaiveDate> {
    use chrono::NaiveDate;
    if let Some(d) = rfc3339_date(t) {
        return Some(d);
    }
    let b = t.as_bytes();
    if b.len() >= 10
        && matches!(b[4], b'-' | b'/' | b'.')
        && b[7] == b[4]
        && (b.len() == 10 || matches!(b[10], b' ' | b'T'))
    {
        return NaiveDate::from_ymd_opt(
            digits(t, 0..4)? as i32,
            digits(t, 5..7)?,
            digits(t, 8..10)?,
        );
    }
    if b.len() == 8 {
        return NaiveDate::from_ymd_opt(
            digits(t, 0..4)? as i32,
            digits(t, 4..6)?,
            digits(t, 6..8)?,
        );
    }
    let (y, rest) = t.strip_suffix('日')?.split_once('年')?;
    let (m, d) = rest.split_once('月')?;
    let short = |s: &str| {
        (1..=2)
            .contains(&s.len())
            .then(|| digits(s, 0..s.len()))
            .flatten()
    };
    if y.len() != 4 {
        return None;
    }
    NaiveDate::from_ymd_opt(digits(y, 0..4)? as i32, short(m)?, short(d)?)
}

/// The value of `t[range]` if it is all ASCII digits (at least one).
fn digits(t: &str, range: std::ops::Range<usize>) -> Option<u32> {
    let s = t.get(range)?;
    (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// The date in UTC+8 of an RFC 3339 date-time, exactly
/// `YYYY-MM-DD` (`T`, `t` or a space) `hh:mm:ss`, optionally `.` and one or more digits (ignored),
/// then `Z`, `z`, or `+hh:mm` / `-hh:mm`; hours 00–23, minutes and seconds 00–59, the offset's
/// hours 00–23 and minutes 00–59; a real date, and a result in the years 0000–9999.
fn rfc3339_date(t: &str) -> Option<chrono::NaiveDate> {
    use chrono::{Datelike, Duration, NaiveDate};
    let b = t.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let date =
        NaiveDate::from_ymd_opt(digits(t, 0..4)? as i32, digits(t, 5..7)?, digits(t, 8..10)?)?;
    let (h, m, sec) = (digits(t, 11..13)?, digits(t, 14..16)?, digits(t, 17..19)?);
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let mut rest = &t[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &fraction[n..];
    }
    let offset_minutes: i64 = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (digits(rest, 1..3)?, digits(rest, 4..6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let minutes = i64::from(oh * 60 + om);
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return None,
    };
    let local = date.and_hms_opt(h, m, sec)?;
    let china = local - Duration::minutes(offset_minutes) + Duration::hours(8);
    Some(china.date()).filter(|d| (0..=9999).contains(&d.year()))
}

/// The text form of a stored value for [`psi_form`]; `None` for NULL.
pub fn stored_psi_form(value: &Value) -> Option<String> {
    stored_text(value).map(|t| psi_form(&t))
}

/// A decimal number in a canonical text: sign, digits without leading or trailing zeros, and
/// the power of ten (`-125e-2` for `-1.250`); `None` for anything that is not a number.
fn decimal(text: &str) -> Option<String> {
    let t = text.trim();
    let (negative, t) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().ok()?),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || exponent.unsigned_abs() > 100_000
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mut exp = exponent - frac.len() as i64;
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some("0".into());
    }
    let trimmed = digits.trim_end_matches('0');
    exp += (digits.len() - trimmed.len()) as i64;
    Some(format!(
        "{}{trimmed}e{exp}",
        if negative { "-" } else { "" }
    ))
}

/// Equality of two texts in constant time: their SM3 digests are compared with [`ct_eq`].
fn digest_eq(a: &str, b: &str) -> bool {
    use exchange_protocol::digest::sm3;
    ct_eq(&sm3(a.as_bytes()), &sm3(b.as_bytes()))
}

/// Equality of two 32-byte strings in constant time (every byte is looked at).
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(key: Option<&PseudonymKey>) -> Context<'_> {
        Context {
            comparison_key: key,
            time_zone: crate::generalize::china(),
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn claim(s: &str) -> Claim {
        Claim::Value(s.into())
    }

    #[test]
    fn each_semantics_compares_as_documented() {
        use Compare::*;
        use Outcome::*;
        let date = |s: &str| Value::Date(chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap());
        let cases: Vec<(Compare, &str, Value, Outcome)> = vec![
            (Exact, "张三", text("张三"), Match),
            (Exact, "张三 ", text("张三"), Mismatch),
            (Exact, "张", text("张三"), Mismatch),
            (Exact, "x", Value::Null, NoValue),
            (Exact, "42", Value::Int(42), Match),
            (Normalized, " ＡＢＣ  def ", text("abc def"), Match),
            (
                Normalized,
                "11010519491231002x",
                text("11010519491231002X"),
                Match,
            ),
            (
                Normalized,
                "150102880730303",
                text("150102198807303035"),
                Match,
            ),
            (Normalized, "+86 138-1234-5678", text("13812345678"), Match),
            (Normalized, "北京市海淀区", text("北京市朝阳区"), Mismatch),
            (Date, "1949/12/31", date("1949-12-31"), Match),
            (Date, "19491231", date("1949-12-31"), Match),
            (Date, "1949年12月31日", text("1949-12-31"), Match),
            (Date, "1949-12-30", date("1949-12-31"), Mismatch),
            (Date, "n/a", date("1949-12-31"), Mismatch),
            (Date, "1949-12-31", text("unknown"), Mismatch),
            (Number, "12.5", Value::Decimal("12.500".into()), Match),
            (Number, "+12.50", Value::Decimal("12.5".into()), Match),
            (Number, "1e3", Value::Int(1000), Match),
            (Number, "0.00", Value::Int(0), Match),
            (Number, "-0", Value::Int(0), Match),
            (Number, "12.51", Value::Decimal("12.5".into()), Mismatch),
            (Number, "0.1", Value::Float(0.1), Match),
            (Number, "abc", Value::Int(1), Mismatch),
            (Number, "1", Value::Float(f64::NAN), Mismatch),
        ];
        for (how, claimed, stored, expected) in cases {
            assert_eq!(
                compare(how, "f", &claim(claimed), &stored, cx(None)),
                Ok(expected),
                "{how:?} {claimed:?} vs {stored:?}"
            );
        }
    }

    #[test]
    fn hmac_claims_match_the_canonical_stored_value() {
        let key = PseudonymKey::new(1, &[7u8; 32]).unwrap();
        let mac = claim_mac(&key, "address", "北京市 海淀区");
        let hmac = Claim::Hmac(mac);
        let ok = compare(
            Compare::Hmac,
            "address",
            &hmac,
            &text("北京市  海淀区 "),
            cx(Some(&key)),
        );
        assert_eq!(ok, Ok(Outcome::Match));
        let other_field = compare(
            Compare::Hmac,
            "name",
            &hmac,
            &text("北京市 海淀区"),
            cx(Some(&key)),
        );
        assert_eq!(other_field, Ok(Outcome::Mismatch));
        assert_eq!(
            compare(
                Compare::Hmac,
                "address",
                &claim("x"),
                &text("x"),
                cx(Some(&key))
            ),
            Err(ClaimError::HmacRequired)
        );
        assert_eq!(
            compare(Compare::Exact, "address", &hmac, &text("x"), cx(None)),
            Err(ClaimError::NoComparisonKey)
        );
    }

    #[test]
    fn psi_forms_agree_across_layouts() {
        let date = Value::Date(chrono::NaiveDate::from_ymd_opt(1949, 12, 31).unwrap());
        assert_eq!(stored_psi_form(&date).unwrap(), psi_form("1949年12月31日"));
        assert_eq!(
            stored_psi_form(&Value::Decimal("12.50".into())).unwrap(),
            psi_form("12.5")
        );
        assert_eq!(psi_form(" ＡＢＣ "), "text:abc");
        assert_eq!(stored_psi_form(&Value::Null), None);
        // Timestamps as the type mapping writes them; exact layouts only.
        for (v, form) in [
            ("1949-12-31T00:00:00", "date:1949-12-31"),
            ("1949-12-31 08:30:00", "date:1949-12-31"),
            ("1949-12-31T16:00:00Z", "date:1950-01-01"),
            ("1949.12.31", "date:1949-12-31"),
            ("1949年1月2日", "date:1949-01-02"),
            ("19490229", "number:19490229e0"),
            ("1949- 1- 1", "text:1949- 1- 1"),
            ("1949-12/31", "text:1949-12/31"),
            ("+86 138-1234-5678", "number:13812345678e0"),
            ("12.50", "number:125e-1"),
            ("1.5e-9223372036854775808", "text:1.5e-9223372036854775808"),
            ("1949-12-31 16:00:00+00:00", "date:1950-01-01"),
            ("1949-12-31t16:00:00.123456789z", "date:1950-01-01"),
            ("1949-12-31T25:00:00Z", "date:1949-12-31"),
            ("1949-12-31T16:00:60Z", "date:1949-12-31"),
            ("9999-12-31T16:00:00Z", "date:9999-12-31"),
            ("0000-01-01T00:00:00+08:01", "date:0000-01-01"),
            ("2000-01-01T10:00:00-14:00", "date:2000-01-02"),
            ("1949年12月031日", "text:1949年12月031日"),
            ("０８６１３８１２３４５６７８", "number:8613812345678e0"),
            ("110105194912310", "number:11010519491231e1"),
            ("150102880730303", "number:150102198807303035e0"),
            ("-138 1234 5678", "number:13812345678e0"),
        ] {
            assert_eq!(psi_form(v), form, "{v}");
        }
    }

    #[test]
    fn decimals_are_canonical() {
        assert_eq!(decimal("012.3400").as_deref(), Some("1234e-2"));
        assert_eq!(decimal("-1.5E2").as_deref(), Some("-15e1"));
        assert_eq!(decimal(".5").as_deref(), Some("5e-1"));
        assert_eq!(decimal("1.2.3"), None);
        assert_eq!(decimal(""), None);
        assert_eq!(decimal("-"), None);
    }
}
