//! A file's cell as the [`Value`] its field's declared type says: the text of a CSV field or a
//! JSON string parsed, a JSON number or an XLSX cell checked against the type. A cell that
//! does not fit is a [`ConvertError`] naming the column and the type, never the value, so its
//! row is quarantined and the file goes on.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use exchange_protocol::tr;

use super::FieldType;
use crate::{ConvertError, Value};

/// A cell as read from a file, before its type is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Nothing (an empty CSV field, a JSON `null` or missing member, an empty XLSX cell).
    Empty,
    /// Text (a CSV field, a JSON string, an XLSX string cell).
    Text(String),
    /// A JSON integer or an XLSX integer cell.
    Int(i64),
    /// A JSON number that is not an `i64`, or an XLSX number cell.
    Number(f64),
    /// A JSON or XLSX boolean.
    Bool(bool),
    /// An XLSX date or date-time cell (Excel keeps no time zone).
    DateTime(NaiveDateTime),
    /// A JSON object or array (for a `json` field).
    Json(serde_json::Value),
}

/// The largest integer an `f64` (an Excel number) holds exactly: beyond it, digits are lost.
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Converts a cell to its field's type; `column` names it in the error.
pub fn convert(cell: Cell, ty: FieldType, column: &str) -> Result<Value, ConvertError> {
    let fail = |reason: String| ConvertError {
        column: column.to_owned(),
        source_type: ty.name().to_owned(),
        reason,
    };
    match (cell, ty) {
        (Cell::Empty, _) => Ok(Value::Null),
        (Cell::Text(t), FieldType::Text) => Ok(Value::Text(t)),
        (Cell::Text(t), _) if t.trim().is_empty() => Ok(Value::Null),
        (Cell::Text(t), ty) => parse(t.trim(), ty).ok_or_else(|| fail(expected(ty))),
        (Cell::Int(i), FieldType::Text) => Ok(Value::Text(i.to_string())),
        (Cell::Int(i), FieldType::Int) => Ok(Value::Int(i)),
        (Cell::Int(i), FieldType::Decimal) => Ok(Value::Decimal(i.to_string())),
        (Cell::Int(i), FieldType::Float) => Ok(Value::Float(i as f64)),
        (Cell::Number(n), FieldType::Float) if n.is_finite() => Ok(Value::Float(n)),
        (Cell::Number(n), FieldType::Text | FieldType::Int | FieldType::Decimal) => {
            spreadsheet_number(n, ty).ok_or_else(|| fail(number_lost(ty)))
        }
        (Cell::Bool(b), FieldType::Bool) => Ok(Value::Bool(b)),
        (Cell::Bool(b), FieldType::Text) => Ok(Value::Text(b.to_string())),
        (Cell::DateTime(t), FieldType::Date) if t.time() == chrono::NaiveTime::MIN => {
            Ok(Value::Date(t.date()))
        }
        (Cell::DateTime(t), FieldType::Timestamp) => Ok(Value::Timestamp(t)),
        // A date cell read as text: as the spreadsheet shows it in ISO form.
        (Cell::DateTime(t), FieldType::Text) if t.time() == chrono::NaiveTime::MIN => {
            Ok(Value::Text(t.date().to_string()))
        }
        (Cell::DateTime(t), FieldType::Text) => Ok(Value::Text(t.to_string())),
        (Cell::Json(j), FieldType::Json) => Ok(Value::Json(j)),
        (_, ty) => Err(fail(expected(ty))),
    }
}

/// A number from a spreadsheet where text, an integer or a decimal is declared. A whole number
/// must be one Excel holds exactly: an 18-digit identifier typed into a number cell has lost
/// its last digits already, and must not leave as if it were right. A fraction is written in
/// its shortest exact form (`850.5`), not for an integer.
fn spreadsheet_number(n: f64, ty: FieldType) -> Option<Value> {
    if !n.is_finite() {
        return None;
    }
    if n.fract() != 0.0 {
        return match ty {
            FieldType::Int => None,
            FieldType::Decimal => Some(Value::Decimal(n.to_string())),
            _ => Some(Value::Text(n.to_string())),
        };
    }
    if n.abs() >= EXACT_INTEGER {
        return None;
    }
    let i = n as i64;
    Some(match ty {
        FieldType::Int => Value::Int(i),
        FieldType::Decimal => Value::Decimal(i.to_string()),
        _ => Value::Text(i.to_string()),
    })
}

fn number_lost(ty: FieldType) -> String {
    tr!(
        "a number cell that is not exact (a whole number of 2^53 or more, or a fraction where an integer is declared) cannot be read as {} without losing digits; format the column as text in the spreadsheet",
        "数字单元格不精确（大于等于 2^53 的整数，或声明为整数却带小数），按 {} 读取会丢失数字；请在表格中把该列设为文本格式",
        ty.name()
    )
}

fn expected(ty: FieldType) -> String {
    match ty {
        FieldType::Text => tr!("expected text", "应为文本"),
        FieldType::Int => tr!("expected a whole number (64-bit)", "应为整数（64 位）"),
        FieldType::Decimal => tr!(
            "expected a decimal number such as 12.50",
            "应为十进制数，例如 12.50"
        ),
        FieldType::Float => tr!("expected a number", "应为数值"),
        FieldType::Bool => tr!(
            "expected true/false (also 1/0, 是/否)",
            "应为 true/false（也可写 1/0、是/否）"
        ),
        FieldType::Date => tr!(
            "expected a date YYYY-MM-DD (also YYYY/MM/DD, YYYY年MM月DD日)",
            "应为日期 YYYY-MM-DD（也可写 YYYY/MM/DD、YYYY年MM月DD日）"
        ),
        FieldType::Timestamp => tr!(
            "expected a date and time YYYY-MM-DD HH:MM:SS",
            "应为日期时间 YYYY-MM-DD HH:MM:SS"
        ),
        FieldType::TimestampTz => tr!(
            "expected a date and time with its offset, RFC 3339 (2024-05-01T08:00:00+08:00)",
            "应为带时区偏移的日期时间（RFC 3339，例如 2024-05-01T08:00:00+08:00）"
        ),
        FieldType::Json => tr!("expected a JSON document", "应为 JSON 文档"),
    }
}

/// Text parsed as `ty` (not `Text`), `None` when it does not fit.
fn parse(t: &str, ty: FieldType) -> Option<Value> {
    match ty {
        FieldType::Text => Some(Value::Text(t.to_owned())),
        FieldType::Int => t.parse::<i64>().ok().map(Value::Int),
        FieldType::Decimal => is_decimal(t).then(|| Value::Decimal(t.to_owned())),
        FieldType::Float => t
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float),
        FieldType::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "t" | "yes" | "y" | "是" => Some(Value::Bool(true)),
            "false" | "0" | "f" | "no" | "n" | "否" => Some(Value::Bool(false)),
            _ => None,
        },
        FieldType::Date => date(t).map(Value::Date),
        FieldType::Timestamp => timestamp(t).map(Value::Timestamp),
        FieldType::TimestampTz => DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|d| Value::TimestampTz(d.with_timezone(&Utc))),
        FieldType::Json => serde_json::from_str(t).ok().map(Value::Json),
    }
}

/// `-?digits[.digits]`, as a source prints a decimal.
fn is_decimal(t: &str) -> bool {
    let t = t.strip_prefix('-').unwrap_or(t);
    let (whole, frac) = t.split_once('.').unwrap_or((t, "0"));
    !whole.is_empty()
        && !frac.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// A date as office software writes it: `2024-05-01`, `2024/5/1`, `2024年5月1日`, `20240501`.
fn date(t: &str) -> Option<NaiveDate> {
    ["%Y-%m-%d", "%Y/%m/%d", "%Y年%m月%d日", "%Y%m%d", "%Y.%m.%d"]
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(t, f).ok())
}

/// A date and time without zone: `2024-05-01 08:30:00` (also with `T`, `/`, fractions, or
/// without seconds).
fn timestamp(t: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y/%m/%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y/%m/%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_parse_as_their_declared_type_and_empty_ones_are_null() {
        let c = |t: &str, ty| convert(Cell::Text(t.into()), ty, "c");
        assert_eq!(c("42", FieldType::Int).unwrap(), Value::Int(42));
        assert_eq!(
            c(" 12.50 ", FieldType::Decimal).unwrap(),
            Value::Decimal("12.50".into())
        );
        assert_eq!(c("是", FieldType::Bool).unwrap(), Value::Bool(true));
        assert_eq!(
            c("2024年5月1日", FieldType::Date).unwrap(),
            Value::Date(NaiveDate::from_ymd_opt(2024, 5, 1).unwrap())
        );
        assert_eq!(
            c("2024/5/1", FieldType::Date).unwrap(),
            Value::Date(NaiveDate::from_ymd_opt(2024, 5, 1).unwrap())
        );
        assert!(matches!(
            c("2024-05-01 08:30", FieldType::Timestamp).unwrap(),
            Value::Timestamp(_)
        ));
        assert_eq!(c("", FieldType::Int).unwrap(), Value::Null);
        assert_eq!(c(" ", FieldType::Text).unwrap(), Value::Text(" ".into()));
    }

    #[test]
    fn a_cell_that_does_not_fit_names_column_and_type_but_not_the_value() {
        let e = convert(Cell::Text("4405241880".into()), FieldType::Date, "birth").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("birth") && text.contains("date"), "{text}");
        assert!(!text.contains("4405241880"), "{text}");
        assert!(convert(Cell::Text("1e3".into()), FieldType::Decimal, "c").is_err());
        assert!(convert(Cell::Text("12.".into()), FieldType::Decimal, "c").is_err());
    }

    #[test]
    fn an_identifier_typed_into_a_number_cell_is_refused_not_rounded() {
        // 18 digits in an Excel number cell: the last ones are gone already.
        let e = convert(Cell::Number(440524188001010014.0), FieldType::Text, "id_no").unwrap_err();
        assert!(e.reason.contains("2^53"), "{e}");
        assert_eq!(
            convert(Cell::Number(13800138000.0), FieldType::Text, "phone").unwrap(),
            Value::Text("13800138000".into())
        );
        assert!(convert(Cell::Number(1.5), FieldType::Int, "n").is_err());
        assert_eq!(
            convert(Cell::Number(850.5), FieldType::Text, "金额").unwrap(),
            Value::Text("850.5".into())
        );
        let day = NaiveDate::from_ymd_opt(2024, 5, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        assert_eq!(
            convert(Cell::DateTime(day), FieldType::Text, "日期").unwrap(),
            Value::Text("2024-05-01".into())
        );
    }
}
