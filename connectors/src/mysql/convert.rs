//! Type mapping: binary-protocol values to [`Value`], and raw-row accessors.
//!
//! # Protocol
//!
//! Every `SELECT` goes through the binary protocol (prepared statements; only session and
//! transaction control use the text protocol): the page query binds the cursor and horizon as
//! typed parameters, and values come back typed (integers, floats and temporal values as
//! numbers; `DECIMAL` as its exact text). The conversion below therefore expects the binary
//! wire forms only; any other form is a [`ConvertError`], never a guess.
//!
//! # Type mapping (a contract; docs/CONFIG.md repeats it)
//!
//! | MySQL / MariaDB type | [`Value`] |
//! |---|---|
//! | `TINYINT`, `SMALLINT`, `MEDIUMINT`, `INT`, `BIGINT` (signed) | `Int` |
//! | the same `UNSIGNED` | `UInt` (`BIGINT UNSIGNED` up to 18446744073709551615) |
//! | `YEAR` | `Int` |
//! | `BIT(n)` | `UInt` (the bits as a big-endian number) |
//! | `DECIMAL`/`NUMERIC` | `Decimal`, every digit as the server prints it (`1.5000000000`) |
//! | `FLOAT` | `Float`, from the shortest decimal form of the `f32` (`0.1` stays `0.1`, not `0.100000001490116…`) |
//! | `DOUBLE` | `Float` |
//! | `CHAR`, `VARCHAR`, `TEXT` (any character set), `ENUM`, `SET` | `Text` (invalid UTF-8: error) |
//! | `BINARY`, `VARBINARY`, `BLOB` (character set `binary`) | `Bytes` |
//! | `DATE` | `Date` |
//! | `DATETIME` | `Timestamp` (no zone: as the application wrote it) |
//! | `TIMESTAMP` | `TimestampTz`, in UTC (session time zone `+00:00`) |
//! | `TIME` | `Text` `"[-]HH:MM:SS[.ffffff]"`: a duration, hours may exceed 23 (`-838:59:59`) |
//! | `JSON` (MySQL) | `Json` (numbers kept exactly) |
//! | `JSON` (MariaDB) | `Text`: MariaDB's `JSON` is an alias of `LONGTEXT` and the server does not mark it |
//! | `NULL` | `Null` |
//!
//! Zero dates (`0000-00-00`, `0000-00-00 00:00:00`) and dates with a zero month or day are not
//! dates: such a cell is a [`ConvertError`] ("zero date cannot be converted"), as is any type
//! not in the table (`GEOMETRY`, `VECTOR`). Errors name the column and its type, never the
//! value; the other cells of the row are unaffected.

use super::*;

/// The `binary` character set: byte strings, not text.
pub(super) const BINARY_CHARSET: u16 = 63;

impl MysqlConnector {
    pub(super) fn convert_row(
        &self,
        names: &[String],
        row: Row,
    ) -> Result<SourceRow, ConnectorError> {
        let columns = row.columns();
        if columns.len() != names.len() {
            return Err(self.statement(format!(
                "the statement returned {} columns, {} were selected",
                columns.len(),
                names.len()
            )));
        }
        let values = row
            .unwrap_raw()
            .into_iter()
            .zip(columns.iter())
            .zip(names)
            .map(|((value, column), name)| convert(name, column, value))
            .collect();
        Ok(SourceRow { values })
    }
}

/// The type name of a result column, e.g. `BIGINT UNSIGNED`, `DATETIME`, `VARCHAR`.
pub(super) fn source_type(column: &Column) -> String {
    use ColumnType::*;
    let flags = column.flags();
    let binary = column.character_set() == BINARY_CHARSET;
    let integer = |name: &str| {
        if flags.contains(ColumnFlags::UNSIGNED_FLAG) {
            format!("{name} UNSIGNED")
        } else {
            name.to_owned()
        }
    };
    if flags.contains(ColumnFlags::ENUM_FLAG) {
        return "ENUM".into();
    }
    if flags.contains(ColumnFlags::SET_FLAG) {
        return "SET".into();
    }
    match column.column_type() {
        MYSQL_TYPE_TINY => integer("TINYINT"),
        MYSQL_TYPE_SHORT => integer("SMALLINT"),
        MYSQL_TYPE_INT24 => integer("MEDIUMINT"),
        MYSQL_TYPE_LONG => integer("INT"),
        MYSQL_TYPE_LONGLONG => integer("BIGINT"),
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => "DECIMAL".into(),
        MYSQL_TYPE_FLOAT => "FLOAT".into(),
        MYSQL_TYPE_DOUBLE => "DOUBLE".into(),
        MYSQL_TYPE_NULL => "NULL".into(),
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => "TIMESTAMP".into(),
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => "DATE".into(),
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => "TIME".into(),
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => "DATETIME".into(),
        MYSQL_TYPE_YEAR => "YEAR".into(),
        MYSQL_TYPE_BIT => "BIT".into(),
        MYSQL_TYPE_JSON => "JSON".into(),
        MYSQL_TYPE_ENUM => "ENUM".into(),
        MYSQL_TYPE_SET => "SET".into(),
        MYSQL_TYPE_STRING if binary => "BINARY".into(),
        MYSQL_TYPE_STRING => "CHAR".into(),
        MYSQL_TYPE_VAR_STRING | MYSQL_TYPE_VARCHAR if binary => "VARBINARY".into(),
        MYSQL_TYPE_VAR_STRING | MYSQL_TYPE_VARCHAR => "VARCHAR".into(),
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB
            if binary =>
        {
            "BLOB".into()
        }
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB => {
            "TEXT".into()
        }
        MYSQL_TYPE_GEOMETRY => "GEOMETRY".into(),
        MYSQL_TYPE_VECTOR => "VECTOR".into(),
        other => format!("{other:?}")
            .trim_start_matches("MYSQL_TYPE_")
            .to_owned(),
    }
}

/// Converts one binary-protocol cell (see the module's type mapping).
pub(super) fn convert(
    name: &str,
    column: &Column,
    value: Option<mysql_async::Value>,
) -> Result<Value, ConvertError> {
    let fail = |reason: &str| ConvertError {
        column: name.to_owned(),
        source_type: source_type(column),
        reason: reason.to_owned(),
    };
    match value {
        None => Err(fail("the driver returned no value")),
        Some(mysql_async::Value::NULL) => Ok(Value::Null),
        Some(value) => convert_value(column, value).map_err(fail),
    }
}

/// Why a cell's wire form is not one its column's type is sent in.
const UNEXPECTED: &str = "unexpected wire form for this type";

/// Converts one non-NULL cell by its column's type; the error is the reason, as a sentence.
fn convert_value(column: &Column, value: mysql_async::Value) -> Result<Value, &'static str> {
    use ColumnType::*;
    match column.column_type() {
        MYSQL_TYPE_YEAR => year(value),
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG
        | MYSQL_TYPE_LONGLONG => {
            integer(value, column.flags().contains(ColumnFlags::UNSIGNED_FLAG))
        }
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => decimal(value),
        MYSQL_TYPE_FLOAT => float(value),
        MYSQL_TYPE_DOUBLE => double(value),
        MYSQL_TYPE_BIT => bits(value),
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => date(value),
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => timestamp(value).map(Value::Timestamp),
        // The session time zone is UTC, so the server sends UTC.
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => {
            timestamp(value).map(|ts| Value::TimestampTz(ts.and_utc()))
        }
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => time(value),
        MYSQL_TYPE_JSON => json(value),
        MYSQL_TYPE_STRING
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_SET => string(column, value),
        MYSQL_TYPE_NULL => Ok(Value::Null),
        _ => Err("unsupported type"),
    }
}

/// `YEAR`: `Int`.
fn year(value: mysql_async::Value) -> Result<Value, &'static str> {
    use mysql_async::Value as M;
    match value {
        M::Int(i) => Ok(Value::Int(i)),
        M::UInt(u) => i64::try_from(u).map(Value::Int).map_err(|_| UNEXPECTED),
        _ => Err(UNEXPECTED),
    }
}

/// The integer types: `Int`, or `UInt` when `unsigned`.
fn integer(value: mysql_async::Value, unsigned: bool) -> Result<Value, &'static str> {
    use mysql_async::Value as M;
    match (value, unsigned) {
        (M::Int(i), false) => Ok(Value::Int(i)),
        (M::Int(i), true) => u64::try_from(i).map(Value::UInt).map_err(|_| UNEXPECTED),
        (M::UInt(u), true) => Ok(Value::UInt(u)),
        (M::UInt(u), false) => i64::try_from(u).map(Value::Int).map_err(|_| UNEXPECTED),
        _ => Err(UNEXPECTED),
    }
}

/// `DECIMAL`/`NUMERIC`: `Decimal`, every digit as the server prints it.
fn decimal(value: mysql_async::Value) -> Result<Value, &'static str> {
    match value {
        mysql_async::Value::Bytes(b) => String::from_utf8(b)
            .map(Value::Decimal)
            .map_err(|_| "decimal is not ASCII text"),
        _ => Err(UNEXPECTED),
    }
}

/// `FLOAT`: `Float`, from the shortest decimal form of the `f32`.
fn float(value: mysql_async::Value) -> Result<Value, &'static str> {
    use mysql_async::Value as M;
    match value {
        // The f32's shortest round-trip decimal form, read as f64: 0.1 stays 0.1.
        M::Float(f) if f.is_finite() => f
            .to_string()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| UNEXPECTED),
        M::Double(d) if d.is_finite() => Ok(Value::Float(d)),
        M::Float(_) | M::Double(_) => Err("not a finite number"),
        _ => Err(UNEXPECTED),
    }
}

/// `DOUBLE`: `Float`.
fn double(value: mysql_async::Value) -> Result<Value, &'static str> {
    use mysql_async::Value as M;
    match value {
        M::Double(d) if d.is_finite() => Ok(Value::Float(d)),
        M::Double(_) => Err("not a finite number"),
        _ => Err(UNEXPECTED),
    }
}

/// `BIT(n)`: `UInt`, the bits as a big-endian number.
fn bits(value: mysql_async::Value) -> Result<Value, &'static str> {
    match value {
        mysql_async::Value::Bytes(b) if b.len() <= 8 => Ok(Value::UInt(
            b.iter()
                .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte)),
        )),
        _ => Err(UNEXPECTED),
    }
}

/// `DATE`: `Date`.
fn date(value: mysql_async::Value) -> Result<Value, &'static str> {
    match value {
        mysql_async::Value::Date(y, mo, d, ..) => calendar_date(y, mo, d).map(Value::Date),
        _ => Err(UNEXPECTED),
    }
}

/// `DATETIME` and `TIMESTAMP`: the date and time as sent.
fn timestamp(value: mysql_async::Value) -> Result<NaiveDateTime, &'static str> {
    match value {
        mysql_async::Value::Date(y, mo, d, h, mi, s, us) => date_time(y, mo, d, h, mi, s, us),
        _ => Err(UNEXPECTED),
    }
}

/// `TIME`: `Text` `"[-]HH:MM:SS[.ffffff]"`, a duration whose hours may exceed 23.
fn time(value: mysql_async::Value) -> Result<Value, &'static str> {
    match value {
        mysql_async::Value::Time(negative, days, h, mi, s, us) => {
            let hours = u64::from(days) * 24 + u64::from(h);
            let sign = if negative { "-" } else { "" };
            let fraction = if us == 0 {
                String::new()
            } else {
                format!(".{us:06}")
            };
            Ok(Value::Text(format!(
                "{sign}{hours:02}:{mi:02}:{s:02}{fraction}"
            )))
        }
        _ => Err(UNEXPECTED),
    }
}

/// `JSON` (MySQL): `Json`, numbers kept exactly.
fn json(value: mysql_async::Value) -> Result<Value, &'static str> {
    match value {
        mysql_async::Value::Bytes(b) => serde_json::from_slice(&b)
            .map(Value::Json)
            .map_err(|_| "not a valid JSON document"),
        _ => Err(UNEXPECTED),
    }
}

/// The string types: `Bytes` in the `binary` character set (except `ENUM` and `SET`), else
/// `Text`, which must be valid UTF-8.
fn string(column: &Column, value: mysql_async::Value) -> Result<Value, &'static str> {
    let is_text_kind = column
        .flags()
        .intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG);
    match value {
        mysql_async::Value::Bytes(b)
            if column.character_set() == BINARY_CHARSET && !is_text_kind =>
        {
            Ok(Value::Bytes(b))
        }
        mysql_async::Value::Bytes(b) => String::from_utf8(b)
            .map(Value::Text)
            .map_err(|_| "text is not valid UTF-8"),
        _ => Err(UNEXPECTED),
    }
}

pub(super) fn calendar_date(y: u16, mo: u8, d: u8) -> Result<NaiveDate, &'static str> {
    if mo == 0 || d == 0 {
        return Err("zero date cannot be converted");
    }
    NaiveDate::from_ymd_opt(i32::from(y), u32::from(mo), u32::from(d)).ok_or("invalid date")
}

pub(super) fn date_time(
    y: u16,
    mo: u8,
    d: u8,
    h: u8,
    mi: u8,
    s: u8,
    us: u32,
) -> Result<NaiveDateTime, &'static str> {
    calendar_date(y, mo, d)?
        .and_hms_micro_opt(u32::from(h), u32::from(mi), u32::from(s), us)
        .ok_or("invalid time of day")
}

/// A binary-protocol date/time value as a `NaiveDateTime` (`None` for zero or invalid dates).
pub(super) fn naive_datetime(value: &mysql_async::Value) -> Option<NaiveDateTime> {
    match *value {
        mysql_async::Value::Date(y, mo, d, h, mi, s, us) => NaiveDate::from_ymd_opt(
            i32::from(y),
            u32::from(mo),
            u32::from(d),
        )?
        .and_hms_micro_opt(u32::from(h), u32::from(mi), u32::from(s), us),
        _ => None,
    }
}

/// The date/time in column `i` of a raw row; `None` for NULL or anything else.
pub(super) fn datetime_at(row: &[Option<mysql_async::Value>], i: usize) -> Option<NaiveDateTime> {
    row.get(i)?.as_ref().and_then(naive_datetime)
}

/// The integer in column `i` of a raw row.
pub(super) fn int_at(row: &[Option<mysql_async::Value>], i: usize) -> Option<i64> {
    match row.get(i)?.as_ref()? {
        mysql_async::Value::Int(n) => Some(*n),
        mysql_async::Value::UInt(n) => i64::try_from(*n).ok(),
        mysql_async::Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// The text in column `i` of a raw row.
pub(super) fn text_at(row: &[Option<mysql_async::Value>], i: usize) -> Option<String> {
    match row.get(i)?.as_ref()? {
        mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_invalid_dates_are_refused() {
        assert_eq!(calendar_date(0, 0, 0), Err("zero date cannot be converted"));
        assert_eq!(
            calendar_date(2024, 3, 0),
            Err("zero date cannot be converted")
        );
        assert_eq!(calendar_date(2023, 2, 29), Err("invalid date"));
        assert!(calendar_date(2024, 2, 29).is_ok());
    }
}
