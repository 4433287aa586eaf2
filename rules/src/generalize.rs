//! Generalization: a coarser value that still serves statistics. Fails closed: a value that
//! cannot be read as a date (or an age) is masked completely.
//!
//! An instant (a timestamp with time zone, or a text with an offset such as
//! `1989-12-31T16:00:00Z`) is generalized by its date in `[policy] time_zone` (default
//! `+08:00`, China Standard Time), not by its UTC date: `1990-01-01 00:00+08` is 1990. A
//! timestamp without time zone, a date and a text without an offset are taken as written.
//!
//! | rule | input | output |
//! |---|---|---|
//! | `year` | 1949-12-31 (date) | "1949" |
//! | `year` | 2024-03-01T08:30:00Z (timestamp with time zone) | "2024" |
//! | `year` | 1989-12-31T16:00:00Z (timestamp with time zone, `time_zone = "+08:00"`) | "1990" |
//! | `year` | "1949/12/31", "19491231", "1949年12月31日" (text) | "1949" |
//! | `year_month` | 1949-12-31 | "1949-12" |
//! | `year_month` | "12/31/1949" (not a known layout) | "**********" |
//! | `age_band(10)` | 45 | "40-49" |
//! | `age_band(5)` | "37" | "35-39" |
//! | `age_band(1)` | 37 | "37" |
//! | `age_band(10)` | -3, 200, "abc" | "**", "***", "***" |

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate};
use exchange_protocol::value::Value;

use crate::mask::mask_all;
use crate::rule::Generalize;

/// The oldest age that is still an age (older values are masked).
const MAX_AGE: u64 = 150;

/// Applies `g` to a (non-NULL) value, instants read in `zone`; the result is a JSON string.
pub fn apply(g: Generalize, value: &Value, zone: FixedOffset) -> String {
    let out = match g {
        Generalize::Year => date_of(value, zone).map(|d| format!("{:04}", d.year())),
        Generalize::YearMonth => {
            date_of(value, zone).map(|d| format!("{:04}-{:02}", d.year(), d.month()))
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

/// The calendar date of a date, a timestamp, or a text in a known layout; of an instant, its
/// date in `zone`.
pub(crate) fn date_of(value: &Value, zone: FixedOffset) -> Option<NaiveDate> {
    match value {
        Value::Date(d) => Some(*d),
        Value::Timestamp(t) => Some(t.date()),
        Value::TimestampTz(t) => Some(t.with_timezone(&zone).date_naive()),
        Value::Text(s) => {
            let s = s.trim();
            match DateTime::parse_from_rfc3339(s) {
                Ok(t) => Some(t.with_timezone(&zone).date_naive()),
                Err(_) => parse_date(s),
            }
        }
        _ => None,
    }
}

/// The time zone of China (UTC+8), the default `[policy] time_zone`.
pub fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset")
}

/// Parses `[policy] time_zone`: a fixed offset `+HH:MM` or `-HH:MM` (`Z` and `UTC` for
/// `+00:00`).
pub fn parse_time_zone(s: &str) -> Result<FixedOffset, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("utc") || t == "Z" {
        return Ok(FixedOffset::east_opt(0).expect("zero offset"));
    }
    let bytes = t.as_bytes();
    let valid = bytes.len() == 6
        && matches!(bytes[0], b'+' | b'-')
        && bytes[3] == b':'
        && [1, 2, 4, 5].iter().all(|&i| bytes[i].is_ascii_digit());
    let parsed = valid
        .then(|| {
            let h = i32::from(bytes[1] - b'0') * 10 + i32::from(bytes[2] - b'0');
            let m = i32::from(bytes[4] - b'0') * 10 + i32::from(bytes[5] - b'0');
            let secs = (h * 60 + m) * 60;
            (h <= 14 && m < 60)
                .then(|| FixedOffset::east_opt(if bytes[0] == b'-' { -secs } else { secs }))
                .flatten()
        })
        .flatten();
    parsed.ok_or_else(|| {
        format!(
            "`{s}` is not a fixed UTC offset; expected e.g. \"+08:00\" (China Standard Time, the default){}",
            if t.contains('/') {
                "; time zone names such as Asia/Shanghai are not supported (China has one zone, +08:00, without daylight saving)"
            } else {
                ""
            }
        )
    })
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
            assert_eq!(apply(g, &v, china()), expected, "{g:?} {v:?}");
        }
    }

    #[test]
    fn an_instant_is_generalized_by_its_date_in_the_configured_zone() {
        // 1990-01-01 00:00 in China is 1989-12-31 16:00 UTC.
        let new_year = Value::TimestampTz("1989-12-31T16:00:00Z".parse().unwrap());
        assert_eq!(apply(Generalize::Year, &new_year, china()), "1990");
        assert_eq!(apply(Generalize::YearMonth, &new_year, china()), "1990-01");
        let utc = parse_time_zone("UTC").unwrap();
        assert_eq!(apply(Generalize::Year, &new_year, utc), "1989");
        // A text with an offset is an instant too; one without is taken as written.
        for text in [
            "1990-01-01T00:00:00+08:00",
            "1989-12-31T16:00:00Z",
            "1989-12-31 16:00:00Z",
        ] {
            assert_eq!(
                apply(Generalize::Year, &Value::Text(text.into()), china()),
                "1990",
                "{text}"
            );
        }
        assert_eq!(
            apply(
                Generalize::Year,
                &Value::Text("1989-12-31 16:00:00".into()),
                china()
            ),
            "1989"
        );
        // A timestamp without time zone is local already.
        let local = Value::Timestamp("1989-12-31T23:30:00".parse().unwrap());
        assert_eq!(apply(Generalize::Year, &local, china()), "1989");
    }

    #[test]
    fn time_zones_are_fixed_offsets() {
        assert_eq!(parse_time_zone("+08:00").unwrap(), china());
        assert_eq!(
            parse_time_zone("-05:30").unwrap(),
            FixedOffset::west_opt(5 * 3600 + 1800).unwrap()
        );
        assert_eq!(parse_time_zone("Z").unwrap().local_minus_utc(), 0);
        for bad in ["8", "+8:00", "+08", "+25:00", "+08:60", "CST"] {
            assert!(parse_time_zone(bad).is_err(), "{bad}");
        }
        let e = parse_time_zone("Asia/Shanghai").unwrap_err();
        assert!(e.contains("not supported") && e.contains("+08:00"), "{e}");
    }
}
