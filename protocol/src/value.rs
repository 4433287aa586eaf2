//! The value of one column of one source row, and its JSON form.
//!
//! Mapping (the contract documented in docs/CONFIG.md):
//! | variant | JSON |
//! |---|---|
//! | `Null` | `null` |
//! | `Bool` | `true`/`false` |
//! | `Int` (signed 64-bit) / `UInt` (unsigned 64-bit) | JSON integer, every digit |
//! | `Float` (finite) | JSON number (shortest round-trip form) |
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
#[error("column `{column}` ({source_type}): {reason}")]
pub struct ConvertError {
    /// The column.
    pub column: String,
    /// The source's type name.
    pub source_type: String,
    /// What was wrong, without the value.
    pub reason: String,
}

const TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

/// `%Y-%m-%d`, written directly for years 0–9999 (chrono's formatter parses its format
/// string on every call, which showed in profiles of large reads).
fn date_text(d: &chrono::NaiveDate) -> String {
    use chrono::Datelike;
    if (0..=9999).contains(&d.year()) {
        format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
    } else {
        d.format("%Y-%m-%d").to_string()
    }
}

/// [`TS_FORMAT`], written directly for years 0–9999.
fn datetime_text(ts: &chrono::NaiveDateTime) -> String {
    use chrono::Timelike;
    // A leap second (nanoseconds past 10⁹) is left to chrono, which writes `:60`.
    if (0..=9999).contains(&chrono::Datelike::year(ts)) && ts.nanosecond() < 1_000_000_000 {
        format!(
            "{}T{:02}:{:02}:{:02}",
            date_text(&ts.date()),
            ts.hour(),
            ts.minute(),
            ts.second()
        )
    } else {
        ts.format(TS_FORMAT).to_string()
    }
}

fn fraction(micros: u32) -> String {
    if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
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
            Value::Timestamp(ts) => {
                format!(
                    "{}{}",
                    datetime_text(ts),
                    fraction(ts.and_utc().timestamp_subsec_micros())
                )
            }
            Value::TimestampTz(ts) => {
                format!(
                    "{}{}Z",
                    datetime_text(&ts.naive_utc()),
                    fraction(ts.timestamp_subsec_micros())
                )
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
