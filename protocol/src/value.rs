//! The value of one column of one source row, and its JSON form.
//!
//! Mapping (the contract documented in docs/CONFIG.md):
//! | variant | JSON |
//! |---|---|
//! | `Null` | `null` |
//! | `Bool` | `true`/`false` |
//! | `Int` (signed 64-bit) / `UInt` (unsigned 64-bit) | JSON integer, every digit |
//! | `Float` (finite) | JSON number in the float form of docs/PROTOCOL.md §4.5 (`3010.0`, `1e+300`) |
//! | `Decimal` | JSON string with every digit as the source printed it |
//! | `Text` | JSON string (valid UTF-8) |
//! | `Date` | `"YYYY-MM-DD"` |
//! | `Timestamp` (without zone) | `"YYYY-MM-DDTHH:MM:SS[.ffffff]"` |
//! | `TimestampTz` | RFC 3339 in UTC: `"YYYY-MM-DDTHH:MM:SS[.ffffff]Z"` |
//! | `Bytes` | base64 (standard alphabet, padded) string |
//! | `Json` | the JSON value itself, numbers kept exactly |

use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// A converted source value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Boolean.
    Bool(bool),
    /// Signed integer up to 64 bits.
    Int(i64),
    /// Unsigned 64-bit integer (MySQL `BIGINT UNSIGNED`).
    UInt(u64),
    /// Finite floating point number.
    Float(f64),
    /// Exact decimal, as the source printed it.
    Decimal(String),
    /// Text.
    Text(String),
    /// Calendar date.
    Date(NaiveDate),
    /// Timestamp without time zone.
    Timestamp(NaiveDateTime),
    /// Instant (timestamp with time zone), kept in UTC.
    TimestampTz(DateTime<Utc>),
    /// Binary data.
    Bytes(Vec<u8>),
    /// JSON document.
    Json(serde_json::Value),
}

/// Why a value could not be converted; names the column and the type, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", crate::tr!(
    "column `{column}` ({source_type}): {reason}",
    "列 `{column}`（{source_type}）：{reason}"
))]
pub struct ConvertError {
    /// The column.
    pub column: String,
    /// The source's type name.
    pub source_type: String,
    /// What was wrong, without the value.
    pub reason: String,
}

const TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

/// Appends `n` (below 10^`width`) with `width` digits, zero-padded.
fn push_digits(out: &mut Vec<u8>, n: u32, width: usize) {
    let mut digits = [b'0'; 4];
    let mut n = n;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// Appends `%Y-%m-%d` for years 0–9999 (chrono's formatter parses its format string on every
/// call, which showed in profiles of large reads); `false`, with nothing written, for others.
fn push_date(out: &mut Vec<u8>, d: &chrono::NaiveDate) -> bool {
    use chrono::Datelike;
    let Ok(year @ 0..=9999) = u32::try_from(d.year()) else {
        return false;
    };
    push_digits(out, year, 4);
    out.push(b'-');
    push_digits(out, d.month(), 2);
    out.push(b'-');
    push_digits(out, d.day(), 2);
    true
}

/// Appends [`TS_FORMAT`] for years 0–9999; `false`, with nothing written, for others and
/// for a leap second (nanoseconds past 10⁹), which are left to chrono (it writes `:60`).
fn push_datetime(out: &mut Vec<u8>, ts: &chrono::NaiveDateTime) -> bool {
    use chrono::Timelike;
    if ts.nanosecond() >= 1_000_000_000 || !push_date(out, &ts.date()) {
        return false;
    }
    out.push(b'T');
    push_digits(out, ts.hour(), 2);
    out.push(b':');
    push_digits(out, ts.minute(), 2);
    out.push(b':');
    push_digits(out, ts.second(), 2);
    true
}

/// [`push_datetime`] and the fraction (`.ffffff`, only when there are microseconds): the
/// text of a timestamp, without its `Z`.
fn push_timestamp(out: &mut Vec<u8>, ts: &chrono::NaiveDateTime) -> bool {
    if !push_datetime(out, ts) {
        return false;
    }
    // Below 10⁶: a leap second took the other path.
    let micros = ts.and_utc().timestamp_subsec_micros();
    if micros != 0 {
        out.push(b'.');
        push_digits(out, micros / 100, 4);
        push_digits(out, micros % 100, 2);
    }
    true
}

/// `%Y-%m-%d`, written directly for years 0–9999.
fn date_text(d: &chrono::NaiveDate) -> String {
    let mut out = Vec::with_capacity(10);
    if push_date(&mut out, d) {
        String::from_utf8(out).expect("digits and dashes")
    } else {
        d.format("%Y-%m-%d").to_string()
    }
}

/// [`TS_FORMAT`], written directly for years 0–9999.
fn datetime_text(ts: &chrono::NaiveDateTime) -> String {
    let mut out = Vec::with_capacity(19);
    if push_datetime(&mut out, ts) {
        String::from_utf8(out).expect("digits and separators")
    } else {
        ts.format(TS_FORMAT).to_string()
    }
}

/// A timestamp's text (without a `Z`): [`datetime_text`] and its fraction.
fn timestamp_text(ts: &chrono::NaiveDateTime) -> String {
    let mut out = Vec::with_capacity(26);
    if push_timestamp(&mut out, ts) {
        String::from_utf8(out).expect("digits and separators")
    } else {
        format!(
            "{}{}",
            datetime_text(ts),
            fraction(ts.and_utc().timestamp_subsec_micros())
        )
    }
}

fn fraction(micros: u32) -> String {
    if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    }
}

/// Appends `text` as a JSON string, byte for byte as serde_json writes it. Text without a
/// character to escape (a quote, a backslash, a control character), which is nearly all
/// text, is copied whole after one pass over its bytes that the compiler vectorizes;
/// serde_json's escaping loop goes byte by byte.
pub fn push_json_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut needs_escape = false;
    for chunk in bytes.chunks(32) {
        // No early exit within a chunk: the loop compiles to vector compares.
        needs_escape |= chunk.iter().fold(false, |acc, &b| {
            acc | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if needs_escape {
            break;
        }
    }
    if needs_escape {
        serde_json::to_writer(out, text).expect("a string serializes");
    } else {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    }
}

impl Value {
    /// The JSON form of the value (see the module table).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Decimal(d) => J::String(d.clone()),
            Value::Text(t) => J::String(t.clone()),
            Value::Date(_) | Value::Timestamp(_) | Value::TimestampTz(_) => {
                J::String(self.to_text().expect("temporal values have a text form"))
            }
            Value::Bytes(b) => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
            Value::Json(j) => j.clone(),
        }
    }

    /// Appends the JSON form of the value (see the module table) to `out`, byte for byte as
    /// serde_json writes [`Value::to_json`], without building it: numbers, dates and
    /// timestamps are written digit by digit, text is escaped straight from the value.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
            Value::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes()),
            Value::Decimal(t) | Value::Text(t) => push_json_string(out, t),
            Value::Date(_) | Value::Timestamp(_) | Value::TimestampTz(_) => {
                let start = out.len();
                out.push(b'"');
                let written = match self {
                    Value::Date(d) => push_date(out, d),
                    Value::Timestamp(ts) => push_timestamp(out, ts),
                    Value::TimestampTz(ts) => {
                        push_timestamp(out, &ts.naive_utc()) && {
                            out.push(b'Z');
                            true
                        }
                    }
                    _ => false,
                };
                if written {
                    out.push(b'"');
                } else {
                    // Years past 9999, leap seconds: chrono's text.
                    out.truncate(start);
                    push_json_string(out, &self.to_text().expect("a temporal value has a text"));
                }
            }
            Value::Float(_) | Value::Bytes(_) | Value::Json(_) => {
                serde_json::to_writer(out, &self.to_json()).expect("a JSON value serializes")
            }
        }
    }

    /// The text form used for keys and cursors; `None` for NULL, bytes and JSON.
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Value::Null | Value::Json(_) => return None,
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Decimal(d) => d.clone(),
            Value::Text(t) => t.clone(),
            Value::Date(d) => date_text(d),
            Value::Timestamp(ts) => timestamp_text(ts),
            Value::TimestampTz(ts) => {
                let mut text = timestamp_text(&ts.naive_utc());
                text.push('Z');
                text
            }
            Value::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b),
        })
    }

    /// Whether this is a date or timestamp (cursor columns of this kind get a horizon).
    pub fn is_temporal(&self) -> bool {
        matches!(
            self,
            Value::Date(_) | Value::Timestamp(_) | Value::TimestampTz(_)
        )
    }
}

/// Cursor values are stored by the agent between runs in this tagged JSON form, so that they
/// come back as the same variant.
impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Value::Null => m.serialize_entry("null", &())?,
            Value::Bool(b) => m.serialize_entry("bool", b)?,
            Value::Int(i) => m.serialize_entry("int", i)?,
            Value::UInt(u) => m.serialize_entry("uint", u)?,
            Value::Float(f) => m.serialize_entry("float", f)?,
            Value::Decimal(d) => m.serialize_entry("decimal", d)?,
            Value::Text(t) => m.serialize_entry("text", t)?,
            Value::Date(_) => m.serialize_entry("date", &self.to_text())?,
            Value::Timestamp(_) => m.serialize_entry("timestamp", &self.to_text())?,
            Value::TimestampTz(_) => m.serialize_entry("timestamptz", &self.to_text())?,
            Value::Bytes(_) => m.serialize_entry("bytes", &self.to_text())?,
            Value::Json(j) => m.serialize_entry("json", j)?,
        }
        m.end()
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let m: std::collections::BTreeMap<String, serde_json::Value> =
            serde::Deserialize::deserialize(d)?;
        let (tag, v) = m
            .into_iter()
            .next()
            .ok_or_else(|| D::Error::custom("empty value"))?;
        let text = || {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| D::Error::custom("expected text"))
        };
        Ok(match tag.as_str() {
            "null" => Value::Null,
            "bool" => Value::Bool(
                v.as_bool()
                    .ok_or_else(|| D::Error::custom("expected bool"))?,
            ),
            "int" => Value::Int(v.as_i64().ok_or_else(|| D::Error::custom("expected int"))?),
            "uint" => Value::UInt(
                v.as_u64()
                    .ok_or_else(|| D::Error::custom("expected uint"))?,
            ),
            "float" => Value::Float(
                v.as_f64()
                    .ok_or_else(|| D::Error::custom("expected float"))?,
            ),
            "decimal" => Value::Decimal(text()?),
            "text" => Value::Text(text()?),
            "date" => Value::Date(
                NaiveDate::parse_from_str(&text()?, "%Y-%m-%d").map_err(D::Error::custom)?,
            ),
            "timestamp" => Value::Timestamp(
                NaiveDateTime::parse_from_str(&text()?, "%Y-%m-%dT%H:%M:%S%.f")
                    .map_err(D::Error::custom)?,
            ),
            "timestamptz" => Value::TimestampTz(
                DateTime::parse_from_rfc3339(&text()?)
                    .map_err(D::Error::custom)?
                    .with_timezone(&Utc),
            ),
            "bytes" => Value::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(text()?)
                    .map_err(D::Error::custom)?,
            ),
            "json" => Value::Json(v),
            other => return Err(D::Error::custom(format!("unknown value tag `{other}`"))),
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn temporal_text_is_what_chrono_writes() {
        let dates = ["0001-01-01", "1949-12-31", "2024-02-29", "9999-12-31"];
        for d in dates {
            let d: chrono::NaiveDate = d.parse().unwrap();
            assert_eq!(date_text(&d), d.format("%Y-%m-%d").to_string());
            for (h, m, sec) in [(0, 0, 0), (8, 30, 5), (23, 59, 59)] {
                let ts = d.and_hms_opt(h, m, sec).unwrap();
                assert_eq!(datetime_text(&ts), ts.format(TS_FORMAT).to_string());
            }
        }
        let far = chrono::NaiveDate::from_ymd_opt(12345, 1, 1).unwrap();
        assert_eq!(date_text(&far), "+12345-01-01");
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap();
        assert_eq!(datetime_text(&leap), "2016-12-31T23:59:60");
    }

    use super::*;

    #[test]
    fn json_forms_follow_the_documented_mapping() {
        let ts = NaiveDate::from_ymd_opt(2024, 2, 29)
            .unwrap()
            .and_hms_micro_opt(23, 59, 58, 120)
            .unwrap();
        let cases: Vec<(Value, &str)> = vec![
            (Value::Null, "null"),
            (Value::Bool(true), "true"),
            (Value::Int(-9223372036854775808), "-9223372036854775808"),
            (Value::UInt(18446744073709551615), "18446744073709551615"),
            (Value::Float(0.1), "0.1"),
            (
                Value::Decimal("12345678901234567890.123400".into()),
                "\"12345678901234567890.123400\"",
            ),
            (Value::Text("张三".into()), "\"张三\""),
            (Value::Date(ts.date()), "\"2024-02-29\""),
            (Value::Timestamp(ts), "\"2024-02-29T23:59:58.000120\""),
            (
                Value::Timestamp(ts.date().and_hms_opt(1, 2, 3).unwrap()),
                "\"2024-02-29T01:02:03\"",
            ),
            (
                Value::TimestampTz(ts.and_utc()),
                "\"2024-02-29T23:59:58.000120Z\"",
            ),
            (Value::Bytes(vec![0, 255, 1]), "\"AP8B\""),
        ];
        for (value, expected) in cases {
            assert_eq!(
                serde_json::to_string(&value.to_json()).unwrap(),
                expected,
                "{value:?}"
            );
            let mut written = Vec::new();
            value.write_json(&mut written);
            assert_eq!(String::from_utf8(written).unwrap(), expected, "{value:?}");
        }
    }

    /// The exact text of a float on the wire (docs/PROTOCOL.md §4.5): the shortest digits that
    /// read back as the same double; plain notation with at least one digit after the point
    /// when the decimal exponent is -5 to 15, else `d[.ddd]e±x` with a signed exponent without
    /// leading zeros. A dependency update that changes it fails here.
    #[test]
    fn a_float_is_written_in_the_documented_text_form() {
        let cases: [(f64, &str); 16] = [
            (3010.0, "3010.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e300, "1e+300"),
            (-1.7976931348623157e308, "-1.7976931348623157e+308"),
            (0.00001, "0.00001"),
            (0.000001, "1e-6"),
            (1.25e-7, "1.25e-7"),
            (5e-324, "5e-324"),
        ];
        for (f, expected) in cases {
            let mut written = Vec::new();
            Value::Float(f).write_json(&mut written);
            assert_eq!(String::from_utf8(written).unwrap(), expected, "{f:e}");
            assert_eq!(expected.parse::<f64>().unwrap().to_bits(), f.to_bits());
        }
    }

    /// Every value `write_json` writes is what serde_json writes of `to_json`.
    fn writes_what_serde_json_writes(value: &Value) {
        let mut written = Vec::new();
        value.write_json(&mut written);
        assert_eq!(
            String::from_utf8(written).unwrap(),
            serde_json::to_string(&value.to_json()).unwrap(),
            "{value:?}"
        );
    }

    #[test]
    fn written_json_is_serde_jsons_at_the_edges() {
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap();
        let far = NaiveDate::from_ymd_opt(12345, 1, 1).unwrap();
        let before = NaiveDate::from_ymd_opt(-1, 12, 31).unwrap();
        let first = NaiveDate::from_ymd_opt(0, 1, 1).unwrap();
        let nanos = first.and_hms_nano_opt(0, 0, 0, 999).unwrap();
        for ts in [
            leap,
            far.and_hms_opt(1, 2, 3).unwrap(),
            before.and_hms_opt(0, 0, 0).unwrap(),
            nanos,
        ] {
            writes_what_serde_json_writes(&Value::Timestamp(ts));
            writes_what_serde_json_writes(&Value::TimestampTz(ts.and_utc()));
            writes_what_serde_json_writes(&Value::Date(ts.date()));
        }
        for v in [
            Value::Int(0),
            Value::Int(i64::MAX),
            Value::UInt(0),
            Value::Bool(false),
            Value::Text("a\"b\\c\n\u{1}\u{7f}é".into()),
            Value::Decimal("-0.50".into()),
            Value::Float(-1e300),
            Value::Json(serde_json::json!({"a": [1, 2.50, null]})),
        ] {
            writes_what_serde_json_writes(&v);
        }
    }

    proptest::proptest! {
        #[test]
        fn written_strings_are_serde_jsons(text in ".*", ascii in "[ -~\\t\\n\\x00\\x1f\\x7f]{0,80}") {
            writes_what_serde_json_writes(&Value::Text(text));
            writes_what_serde_json_writes(&Value::Text(ascii));
        }

        #[test]
        fn written_temporal_json_is_serde_jsons(
            days in -400_000i32..4_000_000,
            seconds in 0u32..86_400,
            nanos in 0u32..2_000_000_000,
        ) {
            let date = NaiveDate::from_num_days_from_ce_opt(days).unwrap();
            // A leap second only at the minute's last second, as chrono allows.
            let nanos = if seconds % 60 == 59 { nanos } else { nanos % 1_000_000_000 };
            let ts = date
                .and_hms_nano_opt(seconds / 3600, seconds / 60 % 60, seconds % 60, nanos)
                .unwrap();
            writes_what_serde_json_writes(&Value::Date(date));
            writes_what_serde_json_writes(&Value::Timestamp(ts));
            writes_what_serde_json_writes(&Value::TimestampTz(ts.and_utc()));
        }

        #[test]
        fn written_integers_are_serde_jsons(i in proptest::prelude::any::<i64>(), u in proptest::prelude::any::<u64>()) {
            writes_what_serde_json_writes(&Value::Int(i));
            writes_what_serde_json_writes(&Value::UInt(u));
        }
    }

    #[test]
    fn stored_cursor_values_come_back_as_the_same_variant() {
        let ts = NaiveDate::from_ymd_opt(2024, 1, 1)
            .unwrap()
            .and_hms_micro_opt(0, 0, 0, 1)
            .unwrap();
        for v in [
            Value::Int(-5),
            Value::UInt(u64::MAX),
            Value::Text("a".into()),
            Value::Decimal("1.50".into()),
            Value::Date(ts.date()),
            Value::Timestamp(ts),
            Value::TimestampTz(ts.and_utc()),
            Value::Bytes(vec![1, 2]),
        ] {
            let s = serde_json::to_string(&v).unwrap();
            let back: Value = serde_json::from_str(&s).unwrap();
            assert_eq!(back, v, "{s}");
        }
    }
}
