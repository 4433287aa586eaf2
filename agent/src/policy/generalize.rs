//! Generalization: a coarser value that still serves statistics. Fails closed: a value that
//! cannot be read as a date (or an age) is masked completely.
//!
//! | rule | input | output |
//! |---|---|---|
//! | `year` | 1949-12-31 (date) | "1949" |
//! | `year` | 2024-03-01T08:30:00Z (timestamp) | "2024" |
//! | `year` | "1949/12/31", "19491231", "1949年12月31日" (text) | "1949" |
//! | `year_month` | 1949-12-31 | "1949-12" |
//! | `year_month` | "12/31/1949" (not a known layout) | "**********" |
//! | `age_band(10)` | 45 | "40-49" |
//! | `age_band(5)` | "37" | "35-39" |
//! | `age_band(1)` | 37 | "37" |
//! | `age_band(10)` | -3, 200, "abc" | "**", "***", "***" |

use chrono::{Datelike, NaiveDate};
use exchange_connectors::Value;

use super::mask::mask_all;
use super::rule::Generalize;

/// The oldest age that is still an age (older values are masked).
const MAX_AGE: u64 = 150;

/// Applies `g` to a (non-NULL) value; the result is a JSON string.
pub fn apply(g: Generalize, value: &Value) -> String {
    let out = match g {
        Generalize::Year => date_of(value).map(|d| format!("{:04}", d.year())),
        Generalize::YearMonth => {
            date_of(value).map(|d| format!("{:04}-{:02}", d.year(), d.month()))
        }
        Generalize::AgeBand(width) => age_of(value).map(|a| {
            let w = u64::from(width);
            let low = a / w * w;
            if w == 1 {
                low.to_string()
            } else {
                format!("{low}-{}", low + w - 1)
            }
        }),
    };
    out.unwrap_or_else(|| mask_all(&value.to_text().unwrap_or_else(|| "*".into())))
}

/// The calendar date of a date, a timestamp, or a text in a known layout.
fn date_of(value: &Value) -> Option<NaiveDate> {
    match value {
        Value::Date(d) => Some(*d),
        Value::Timestamp(t) => Some(t.date()),
        Value::TimestampTz(t) => Some(t.date_naive()),
        Value::Text(s) => parse_date(s.trim()),
        _ => None,
    }
}

/// `YYYY-MM-DD`, `YYYY/MM/DD`, `YYYY.MM.DD` (each optionally followed by a time),
/// `YYYYMMDD`, `YYYY年M月D日`.
fn parse_date(s: &str) -> Option<NaiveDate> {
    if s.len() >= 10 && s.is_char_boundary(10) {
        let head = &s[..10];
        for layout in ["%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d"] {
            if let Ok(d) = NaiveDate::parse_from_str(head, layout) {
                let rest = &s[10..];
                if rest.is_empty() || rest.starts_with([' ', 'T']) {
                    return Some(d);
                }
            }
        }
    }
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
        return NaiveDate::parse_from_str(s, "%Y%m%d").ok();
    }
    if s.ends_with('日') {
        return NaiveDate::parse_from_str(s, "%Y年%m月%d日").ok();
    }
    None
}

/// A whole age in years (decimals are cut), 0 to [`MAX_AGE`].
fn age_of(value: &Value) -> Option<u64> {
    let age = match value {
        Value::Int(i) => u64::try_from(*i).ok()?,
        Value::UInt(u) => *u,
        Value::Decimal(s) | Value::Text(s) => {
            let s = s.trim();
            let whole = s.split_once('.').map_or(s, |(w, f)| {
                if f.bytes().all(|b| b.is_ascii_digit()) {
                    w
                } else {
                    "x"
                }
            });
            whole.parse::<u64>().ok()?
        }
        _ => return None,
    };
    (age <= MAX_AGE).then_some(age)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> Value {
        Value::Date(NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap())
    }

    #[test]
    fn dates_and_ages_generalize_as_documented() {
        let ts = Value::TimestampTz("2024-03-01T08:30:00Z".parse().unwrap());
        let table: Vec<(Generalize, Value, &str)> = vec![
            (Generalize::Year, date("1949-12-31"), "1949"),
            (Generalize::Year, ts.clone(), "2024"),
            (Generalize::Year, Value::Text("1949/12/31".into()), "1949"),
            (Generalize::Year, Value::Text("19491231".into()), "1949"),
            (
                Generalize::Year,
                Value::Text("1949年12月31日".into()),
                "1949",
            ),
            (
                Generalize::Year,
                Value::Text("1949-12-31 08:00:00".into()),
                "1949",
            ),
            (Generalize::YearMonth, date("1949-12-31"), "1949-12"),
            (Generalize::YearMonth, ts, "2024-03"),
            (
                Generalize::YearMonth,
                Value::Text("12/31/1949".into()),
                "**********",
            ),
            (
                Generalize::Year,
                Value::Text("1949-13-01".into()),
                "**********",
            ),
            (Generalize::Year, Value::Text(String::new()), ""),
            (Generalize::Year, Value::Int(1949), "****"),
            (Generalize::AgeBand(10), Value::Int(45), "40-49"),
            (Generalize::AgeBand(10), Value::Int(0), "0-9"),
            (Generalize::AgeBand(5), Value::Text("37".into()), "35-39"),
            (
                Generalize::AgeBand(10),
                Value::Decimal("45.50".into()),
                "40-49",
            ),
            (Generalize::AgeBand(1), Value::UInt(37), "37"),
            (Generalize::AgeBand(10), Value::Int(-3), "**"),
            (Generalize::AgeBand(10), Value::Int(200), "***"),
            (Generalize::AgeBand(10), Value::Text("abc".into()), "***"),
        ];
        for (g, v, expected) in table {
            assert_eq!(apply(g, &v), expected, "{g:?} {v:?}");
        }
    }
}
