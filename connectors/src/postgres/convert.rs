//! Converting cells to [`Value`]s: the type mapping in the module documentation of `postgres`.

use super::*;

/// Converts the rows of a statement whose select list is `plan.select_list`.
pub(super) fn convert_rows(plan: &Plan, rows: &[tokio_postgres::Row]) -> Vec<Row> {
    rows.iter().map(|row| convert_row(plan, row)).collect()
}

/// Converts one row, cell by cell.
pub(super) fn convert_row(plan: &Plan, row: &tokio_postgres::Row) -> Row {
    Row {
        values: plan
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| convert(row, i, column))
            .collect(),
    }
}

/// Converts one cell (the module's type mapping); never panics on data.
pub(super) fn convert(
    row: &tokio_postgres::Row,
    i: usize,
    column: &PlanColumn,
) -> Result<Value, ConvertError> {
    let fail = |reason: &str| ConvertError {
        column: column.name.clone(),
        source_type: column.pg_type.name().to_owned(),
        reason: reason.to_owned(),
    };
    pub(super) fn get<'a, T: FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        i: usize,
        fail: impl Fn(&str) -> ConvertError,
        reason: &str,
    ) -> Result<Option<T>, ConvertError> {
        row.try_get::<_, Option<T>>(i).map_err(|_| fail(reason))
    }
    const UNDECODABLE: &str = "the value could not be decoded";
    const TEMPORAL: &str =
        "'infinity', '-infinity' or a value outside years -262143..262142 cannot be represented";
    const NON_FINITE: &str = "non-finite float cannot be represented in JSON";
    let float = |f: f64| {
        if f.is_finite() {
            Ok(Value::Float(f))
        } else {
            Err(fail(NON_FINITE))
        }
    };
    let value = match column.read {
        Read::Bool => get::<bool>(row, i, fail, UNDECODABLE)?.map(Value::Bool),
        Read::Int2 => get::<i16>(row, i, fail, UNDECODABLE)?.map(|v| Value::Int(v.into())),
        Read::Int4 => get::<i32>(row, i, fail, UNDECODABLE)?.map(|v| Value::Int(v.into())),
        Read::Int8 => get::<i64>(row, i, fail, UNDECODABLE)?.map(Value::Int),
        Read::Oid => get::<u32>(row, i, fail, UNDECODABLE)?.map(|v| Value::UInt(v.into())),
        Read::Float4 => match get::<f32>(row, i, fail, UNDECODABLE)? {
            // Widen through the shortest decimal form that round-trips the f32.
            Some(f) => Some(float(f.to_string().parse::<f64>().unwrap_or(f64::NAN))?),
            None => None,
        },
        Read::Float8 => match get::<f64>(row, i, fail, UNDECODABLE)? {
            Some(f) => Some(float(f)?),
            None => None,
        },
        Read::Numeric => match get::<String>(row, i, fail, UNDECODABLE)? {
            Some(text) => {
                if text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'.'))
                {
                    Some(Value::Decimal(text))
                } else {
                    return Err(fail(
                        "NaN or infinite numeric cannot be represented in JSON",
                    ));
                }
            }
            None => None,
        },
        Read::Text | Read::CastText => get::<String>(row, i, fail, UNDECODABLE)?.map(Value::Text),
        Read::Date => get::<NaiveDate>(row, i, fail, TEMPORAL)?.map(Value::Date),
        Read::Timestamp => get::<NaiveDateTime>(row, i, fail, TEMPORAL)?.map(Value::Timestamp),
        Read::TimestampTz => get::<DateTime<Utc>>(row, i, fail, TEMPORAL)?.map(Value::TimestampTz),
        Read::Bytes => get::<Vec<u8>>(row, i, fail, UNDECODABLE)?.map(Value::Bytes),
        Read::Json => match get::<String>(row, i, fail, UNDECODABLE)? {
            Some(text) => Some(Value::Json(
                serde_json::from_str(&text).map_err(|_| fail("the server sent invalid JSON"))?,
            )),
            None => None,
        },
    };
    Ok(value.unwrap_or(Value::Null))
}
