//! Page statements: default deny, and values bound as their column's type. The SQL text is the
//! shared [`Dialect::MYSQL`] (`dialect.rs`: page query, NULL-cursor filter and count, lookup);
//! this module resolves the selection and chooses how each value is bound.
//!
//! # Default deny and typed binding
//!
//! Before any statement, every selected column is resolved: a table's (or view's) against
//! `information_schema.columns` (`schema.table` or the URL's database), a query's against its
//! own output columns (`SELECT * FROM (query) AS src LIMIT 0`, prepared, never run); a name
//! that is not there is refused with a configuration error naming it
//! ([`Dialect::resolve_columns`]; MySQL compares column names without case). Every
//! statement's result columns are then checked, by name and count, against the selection
//! before it runs. The same lookup gives [`crate::ColumnInfo::nullable`] (`IS_NULLABLE`;
//! `None` for a query's columns).
//!
//! A value compared with a column is bound as the column's type: integers, dates and
//! timestamps as binary-protocol values ([`BindAs::Native`]), and a `DECIMAL` as its exact
//! text cast with `CAST(? AS DECIMAL(65, scale))` ([`BindAs::Decimal`]: a string compared with
//! a decimal would go through DOUBLE and lose the digits past ~15). [`Connector::lookup`]
//! converts its keys to the key column's type first (a key that does not fit is refused) and
//! reads them `IN (…)` in chunks of [`LOOKUP_CHUNK`]. [`Connector::null_cursor_rows`] counts
//! and reads the rows with a NULL in a cursor column that may hold one, in one read-only
//! snapshot. A `query` resource is read inside `START TRANSACTION READ ONLY` (see
//! [`MysqlConnector::fetch`]).

use super::*;

/// The columns of a table, with their nullability and type, from the catalogue (default deny).
pub(super) const COLUMNS_SQL: &str = "SELECT COLUMN_NAME, IS_NULLABLE, DATA_TYPE \
     FROM information_schema.columns \
     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?";

/// Keys per `IN (…)` list of a lookup.
pub(super) const LOOKUP_CHUNK: usize = 1000;

/// The selected columns as the server resolved them (default deny passed).
pub(super) struct Resolved {
    /// Result metadata of each selected column, in selection order.
    pub(super) columns: Vec<Column>,
    /// Whether each selected column may hold NULL (`None` for a query's columns).
    pub(super) nullable: Vec<Option<bool>>,
}

impl MysqlConnector {
    /// Resolves every selected column against the relation (default deny): a table's columns
    /// in `information_schema.columns`, a query's own output columns; then checks that the
    /// plain `SELECT` of the selection returns exactly the selected columns.
    pub(super) async fn resolve(
        &self,
        conn: &mut Conn,
        selection: &Selection,
    ) -> Result<Resolved, ConnectorError> {
        if selection.columns.is_empty() {
            return Err(self.config("the selection reads no column".into()));
        }
        let (found, what) = match &selection.relation {
            Relation::Table(table) => {
                let (schema, name) = split_table(table).map_err(|e| self.config(e))?;
                let catalogue: Vec<(String, String, String)> = conn
                    .exec(COLUMNS_SQL, (schema, name))
                    .await
                    .map_err(|e| self.error(&e))?;
                if catalogue.is_empty() {
                    // Let the server say why (no such table, no privilege on it).
                    conn.prep(SQL.describe_sql(selection))
                        .await
                        .map_err(|e| self.error(&e))?;
                    return Err(self.config(format!(
                        "table `{table}` shows no columns in information_schema.columns to \
                         this account"
                    )));
                }
                let found = catalogue
                    .into_iter()
                    .map(|(name, nullable, data_type)| ColumnMeta {
                        name,
                        source_type: data_type.to_uppercase(),
                        nullable: Some(nullable == "YES"),
                    })
                    .collect::<Vec<_>>();
                (found, format!("table `{table}`"))
            }
            Relation::Query(_) => {
                let stmt = conn
                    .prep(SQL.output_columns_sql(&selection.relation))
                    .await
                    .map_err(|e| self.error(&e))?;
                let found = stmt
                    .columns()
                    .iter()
                    .map(|c| ColumnMeta {
                        name: c.name_str().into_owned(),
                        source_type: source_type(c),
                        nullable: None,
                    })
                    .collect::<Vec<_>>();
                (found, "the query's output".to_owned())
            }
        };
        let nullable = SQL
            .resolve_columns(selection, &found, &what)
            .map_err(|e| self.config(e))?
            .into_iter()
            .map(|meta| meta.nullable)
            .collect();
        let stmt = conn
            .prep(SQL.describe_sql(selection))
            .await
            .map_err(|e| self.error(&e))?;
        let columns = stmt.columns();
        self.check_result_columns(selection, &columns)?;
        Ok(Resolved {
            columns: columns.to_vec(),
            nullable,
        })
    }

    /// Checks that a statement returns exactly the selected columns, in order.
    pub(super) fn check_result_columns(
        &self,
        selection: &Selection,
        columns: &[Column],
    ) -> Result<(), ConnectorError> {
        if columns.len() != selection.columns.len() {
            return Err(self.config(format!(
                "the statement returns {} columns, {} were selected",
                columns.len(),
                selection.columns.len()
            )));
        }
        for (name, column) in selection.columns.iter().zip(columns) {
            let got = column.name_str();
            if !SQL.same_name(&got, name) {
                return Err(self.config(format!(
                    "the statement returns column `{got}` where `{name}` was selected"
                )));
            }
        }
        Ok(())
    }

    /// Runs a statement of the selection and converts its rows: a table's directly, a query's
    /// inside a read-only transaction. The result columns are checked first.
    pub(super) async fn fetch(
        &self,
        conn: &mut Conn,
        selection: &Selection,
        sql: String,
        params: Vec<mysql_async::Value>,
    ) -> Result<Vec<SourceRow>, ConnectorError> {
        let rows = match selection.relation {
            Relation::Table(_) => self.exec_checked(conn, selection, sql, params).await?,
            Relation::Query(_) => {
                let mut tx = self.read_only(conn).await?;
                let rows = self.exec_checked(&mut tx, selection, sql, params).await?;
                tx.rollback().await.map_err(|e| self.error(&e))?;
                rows
            }
        };
        self.convert_rows(selection, rows)
    }

    /// Converts rows of the selected columns.
    pub(super) fn convert_rows(
        &self,
        selection: &Selection,
        rows: Vec<Row>,
    ) -> Result<Vec<SourceRow>, ConnectorError> {
        rows.into_iter()
            .map(|row| self.convert_row(&selection.columns, row))
            .collect()
    }

    /// Prepares `sql`, checks its result columns against the selection, and runs it.
    pub(super) async fn exec_checked<Q: Queryable + Send>(
        &self,
        queryable: &mut Q,
        selection: &Selection,
        sql: String,
        params: Vec<mysql_async::Value>,
    ) -> Result<Vec<Row>, ConnectorError> {
        let stmt = queryable.prep(sql).await.map_err(|e| self.error(&e))?;
        self.check_result_columns(selection, &stmt.columns())?;
        queryable
            .exec(&stmt, Params::Positional(params))
            .await
            .map_err(|e| self.error(&e))
    }

    /// Prepares `sql`, checks its result columns against the selection, runs it and sends its
    /// rows, converted, to `chunks` in chunks of `chunk` as they arrive (the server's stream
    /// waits while the channel is full); returns the rows sent, whether the channel was
    /// closed before the end (which stops the read), and how long the statement took.
    pub(super) async fn stream_rows<Q: Queryable + Send>(
        &self,
        queryable: &mut Q,
        selection: &Selection,
        sql: String,
        params: Vec<mysql_async::Value>,
        chunk: usize,
        chunks: &crate::Chunks,
    ) -> Result<Streamed, ConnectorError> {
        let stmt = queryable.prep(sql).await.map_err(|e| self.error(&e))?;
        self.check_result_columns(selection, &stmt.columns())?;
        let started = Instant::now();
        let mut result = queryable
            .exec_iter(&stmt, Params::Positional(params))
            .await
            .map_err(|e| self.error(&e))?;
        let chunk = chunk.max(1);
        let mut rows = Vec::with_capacity(chunk);
        let mut out = Streamed::default();
        let mut first = true;
        while let Some(row) = result.next().await.map_err(|e| self.error(&e))? {
            if std::mem::take(&mut first) {
                out.time.first_row = started.elapsed();
            }
            if rows.is_empty() && !crate::room_for_a_chunk(chunks).await {
                out.stopped = true;
                out.time.total = started.elapsed();
                return Ok(out);
            }
            rows.push(self.convert_row(&selection.columns, row)?);
            if rows.len() >= chunk {
                out.sent += rows.len() as u64;
                let full = std::mem::replace(&mut rows, Vec::with_capacity(chunk));
                if chunks.send(full).await.is_err() {
                    // The reader is gone; the rest of the result is discarded with it.
                    out.stopped = true;
                    out.time.total = started.elapsed();
                    return Ok(out);
                }
            }
        }
        if first {
            out.time.first_row = started.elapsed();
        }
        if !rows.is_empty() {
            out.sent += rows.len() as u64;
            out.stopped = chunks.send(rows).await.is_err();
        }
        out.time.total = started.elapsed();
        Ok(out)
    }

    /// Starts a read-only transaction (a query resource cannot write).
    pub(super) async fn read_only<'a>(
        &self,
        conn: &'a mut Conn,
    ) -> Result<mysql_async::Transaction<'a>, ConnectorError> {
        let mut options = TxOpts::default();
        options.with_readonly(true).with_consistent_snapshot(true);
        conn.start_transaction(options)
            .await
            .map_err(|e| self.error(&e))
    }
}

/// What [`MysqlConnector::stream_rows`] sent.
#[derive(Debug, Default)]
pub(super) struct Streamed {
    /// Rows sent.
    pub(super) sent: u64,
    /// Whether the reader closed the channel before the end.
    pub(super) stopped: bool,
    /// How long the statement took.
    pub(super) time: crate::ScanTime,
}

/// `schema.table` → (`Some(schema)`, `table`); `table` → (`None`, `table`).
pub(super) fn split_table(name: &str) -> Result<(Option<String>, String), String> {
    match name.split('.').collect::<Vec<_>>().as_slice() {
        [table] => Ok((None, (*table).to_owned())),
        [schema, table] => Ok((Some((*schema).to_owned()), (*table).to_owned())),
        _ => Err(format!("table `{name}` is not `table` or `schema.table`")),
    }
}

/// How a value compared with `column` is bound: a `DECIMAL` as its exact text cast to
/// `DECIMAL(65, scale)`, any other type as the matching binary-protocol value.
pub(super) fn bind_as(column: &Column) -> BindAs<'static> {
    use ColumnType::*;
    match column.column_type() {
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => BindAs::Decimal(u32::from(column.decimals())),
        _ => BindAs::Native,
    }
}

/// A key value as a parameter of `column`'s type (a lookup's keys may come as text);
/// `None` if it does not fit.
pub(super) fn typed_param(column: &Column, value: &Value) -> Option<mysql_async::Value> {
    use ColumnType::*;
    use mysql_async::Value as M;
    let unsigned = column.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    match column.column_type() {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG
        | MYSQL_TYPE_LONGLONG | MYSQL_TYPE_YEAR => match (value, unsigned) {
            (Value::Int(i), false) => Some(M::Int(*i)),
            (Value::Int(i), true) => u64::try_from(*i).ok().map(M::UInt),
            (Value::UInt(u), false) => i64::try_from(*u).ok().map(M::Int),
            (Value::UInt(u), true) => Some(M::UInt(*u)),
            (Value::Text(s) | Value::Decimal(s), false) => s.trim().parse().ok().map(M::Int),
            (Value::Text(s) | Value::Decimal(s), true) => s.trim().parse().ok().map(M::UInt),
            _ => None,
        },
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => match value {
            Value::Decimal(s) | Value::Text(s) if is_decimal_literal(s.trim()) => {
                Some(M::Bytes(s.trim().as_bytes().to_vec()))
            }
            Value::Int(i) => Some(M::Bytes(i.to_string().into_bytes())),
            Value::UInt(u) => Some(M::Bytes(u.to_string().into_bytes())),
            _ => None,
        },
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => match value {
            Value::Date(d) => date_param(*d),
            Value::Text(s) => s.trim().parse::<NaiveDate>().ok().and_then(date_param),
            _ => None,
        },
        MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIMESTAMP2 => match value {
            Value::Timestamp(ts) => datetime_param(*ts),
            // The session time zone is UTC.
            Value::TimestampTz(ts) => datetime_param(ts.naive_utc()),
            Value::Text(s) => {
                let s = s.trim();
                s.parse::<chrono::DateTime<chrono::Utc>>()
                    .map(|ts| ts.naive_utc())
                    .or_else(|_| s.parse::<NaiveDateTime>())
                    .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
                    .ok()
                    .and_then(datetime_param)
            }
            _ => None,
        },
        _ => cursor_param(value),
    }
}

/// `[-+]digits[.digits]`.
pub(super) fn is_decimal_literal(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// A stored cursor value as a parameter of the matching MySQL type; `None` if out of range.
pub(super) fn cursor_param(value: &Value) -> Option<mysql_async::Value> {
    use mysql_async::Value as M;
    Some(match value {
        Value::Null => M::NULL,
        Value::Bool(b) => M::Int(i64::from(*b)),
        Value::Int(i) => M::Int(*i),
        Value::UInt(u) => M::UInt(*u),
        Value::Float(f) => M::Double(*f),
        Value::Decimal(d) => M::Bytes(d.clone().into_bytes()),
        Value::Text(t) => M::Bytes(t.clone().into_bytes()),
        Value::Bytes(b) => M::Bytes(b.clone()),
        Value::Json(j) => M::Bytes(j.to_string().into_bytes()),
        Value::Date(d) => return date_param(*d),
        Value::Timestamp(ts) => return datetime_param(*ts),
        Value::TimestampTz(ts) => return datetime_param(ts.naive_utc()),
    })
}

pub(super) fn date_param(d: NaiveDate) -> Option<mysql_async::Value> {
    use chrono::Datelike;
    Some(mysql_async::Value::Date(
        u16::try_from(d.year()).ok()?,
        u8::try_from(d.month()).ok()?,
        u8::try_from(d.day()).ok()?,
        0,
        0,
        0,
        0,
    ))
}

pub(super) fn datetime_param(ts: NaiveDateTime) -> Option<mysql_async::Value> {
    use chrono::{Datelike, Timelike};
    Some(mysql_async::Value::Date(
        u16::try_from(ts.year()).ok()?,
        u8::try_from(ts.month()).ok()?,
        u8::try_from(ts.day()).ok()?,
        u8::try_from(ts.hour()).ok()?,
        u8::try_from(ts.minute()).ok()?,
        u8::try_from(ts.second()).ok()?,
        ts.nanosecond() / 1000,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_literals_are_recognized() {
        for (s, ok) in [
            ("1", true),
            ("-1.50", true),
            ("+0.1", true),
            ("1.", true),
            (".5", false),
            ("1e5", false),
            ("", false),
            ("1.2.3", false),
        ] {
            assert_eq!(is_decimal_literal(s), ok, "{s}");
        }
    }
}
