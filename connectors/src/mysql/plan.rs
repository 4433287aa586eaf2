//! Page statements: the SQL of a selection, default deny, and values bound as their column's type.
//!
//! A page is `SELECT <columns> FROM <table | (query) AS src> WHERE <cursor> > <after> AND
//! <first cursor column> < <horizon> ORDER BY <cursor> LIMIT n`. The cursor tuple comparison is
//! written `c1 >= ? AND (c1, c2, …) > (?, ?, …)` so the optimizer gets a range on `c1`.
//!
//! # Default deny and typed binding
//!
//! Before any statement, every selected column is resolved: a table's (or view's) against
//! `information_schema.columns` (`schema.table` or the URL's database), a query's against its
//! own output columns (`SELECT * FROM (query) AS src`, prepared, never run); a name that is not
//! there is refused with a configuration error naming it. Every statement's result columns are
//! then checked, by name and count, against the selection before it runs. The same lookup
//! gives [`crate::ColumnInfo::nullable`] (`IS_NULLABLE`; `None` for a query's columns).
//!
//! A value compared with a column is bound as the column's type: integers, dates and
//! timestamps as binary-protocol values, and a `DECIMAL` as its exact text cast with
//! `CAST(? AS DECIMAL(65, scale))` (a string compared with a decimal would go through DOUBLE
//! and lose the digits past ~15). [`Connector::lookup`] converts its keys to the key column's
//! type first (a key that does not fit is refused) and reads them `IN (…)` in chunks of 1000.
//! [`Connector::null_cursor_rows`] counts and reads the rows with a NULL in a cursor column
//! that may hold one, in one read-only snapshot.
//! A `query` resource is read inside `START TRANSACTION READ ONLY` (see [`MysqlConnector::fetch`]).

use super::*;

/// The columns of a table, with their nullability, from the catalogue (default deny).
pub(super) const COLUMNS_SQL: &str = "SELECT COLUMN_NAME, IS_NULLABLE FROM information_schema.columns \
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
    /// Checks the selection's shape; errors are configuration errors.
    pub(super) fn check_selection(&self, selection: &Selection) -> Result<(), ConnectorError> {
        if selection.columns.is_empty() {
            return Err(self.config("the selection has no columns".into()));
        }
        if let Some(missing) = selection
            .cursor
            .iter()
            .find(|c| !selection.columns.contains(c))
        {
            return Err(self.config(format!(
                "cursor column `{missing}` is not among the selected columns"
            )));
        }
        Ok(())
    }

    /// Resolves every selected column against the relation (default deny): a table's columns
    /// in `information_schema.columns`, a query's own output columns; then checks that the
    /// plain `SELECT` of the selection returns exactly the selected columns.
    pub(super) async fn resolve(
        &self,
        conn: &mut Conn,
        selection: &Selection,
    ) -> Result<Resolved, ConnectorError> {
        let nullable = match &selection.relation {
            Relation::Table(table) => {
                let (schema, name) = split_table(table).map_err(|e| self.config(e))?;
                let catalogue: Vec<(String, String)> = conn
                    .exec(COLUMNS_SQL, (schema, name))
                    .await
                    .map_err(|e| self.error(&e))?;
                if catalogue.is_empty() {
                    // Let the server say why (no such table, no privilege on it).
                    conn.prep(select_sql(selection, None, false, false))
                        .await
                        .map_err(|e| self.error(&e))?;
                    return Err(self.config(format!(
                        "table `{table}` shows no columns in information_schema.columns to \
                         this account"
                    )));
                }
                selection
                    .columns
                    .iter()
                    .map(|column| {
                        catalogue
                            .iter()
                            .find(|(name, _)| same_name(name, column))
                            .map(|(_, nullable)| Some(nullable == "YES"))
                            .ok_or_else(|| {
                                self.config(format!(
                                    "column `{column}` is not a column of table `{table}` \
                                     (only the table's own columns are read)"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            Relation::Query(_) => {
                let stmt = conn
                    .prep(format!("SELECT * FROM {}", from_sql(&selection.relation)))
                    .await
                    .map_err(|e| self.error(&e))?;
                let output = stmt.columns();
                if let Some(column) = selection
                    .columns
                    .iter()
                    .find(|c| !output.iter().any(|o| same_name(&o.name_str(), c)))
                {
                    return Err(self.config(format!(
                        "column `{column}` is not an output column of the resource's query \
                         (only the query's own columns are read)"
                    )));
                }
                vec![None; selection.columns.len()]
            }
        };
        let stmt = conn
            .prep(select_sql(selection, None, false, false))
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
            if !same_name(&got, name) {
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

/// Whether two column names are the same to the server (MySQL compares them without case).
pub(super) fn same_name(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// `schema.table` → (`Some(schema)`, `table`); `table` → (`None`, `table`).
pub(super) fn split_table(name: &str) -> Result<(Option<String>, String), String> {
    match name.split('.').collect::<Vec<_>>().as_slice() {
        [table] => Ok((None, (*table).to_owned())),
        [schema, table] => Ok((Some((*schema).to_owned()), (*table).to_owned())),
        _ => Err(format!("table `{name}` is not `table` or `schema.table`")),
    }
}

/// Backtick-quotes one identifier.
pub(super) fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes `table` or `schema.table`, each part on its own.
pub(super) fn quote_table(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// The `FROM` item of a relation: a quoted table, or the query as a derived table `src`.
pub(super) fn from_sql(relation: &Relation) -> String {
    match relation {
        Relation::Table(table) => quote_table(table),
        Relation::Query(query) => {
            // The newlines end a trailing `-- comment` inside the query.
            let query = query.trim().trim_end_matches(';').trim_end();
            format!("(\n{query}\n) AS src")
        }
    }
}

/// Builds the SELECT of a selection. With `after` (one placeholder expression per cursor
/// column, see [`placeholder`]), a cursor condition (plus one for the leading range); with
/// `bounded`, `first cursor column < ?`; with `paged`, `ORDER BY` the cursor and `LIMIT ?`.
pub(super) fn select_sql(
    selection: &Selection,
    after: Option<&[String]>,
    bounded: bool,
    paged: bool,
) -> String {
    let columns = selection
        .columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let from = from_sql(&selection.relation);
    let cursor: Vec<String> = selection.cursor.iter().map(|c| quote_ident(c)).collect();
    let mut conditions = Vec::new();
    if let Some(marks) = after {
        match (cursor.as_slice(), marks) {
            ([], _) | (_, []) => {}
            ([only], [mark, ..]) => conditions.push(format!("{only} > {mark}")),
            ([first, ..], [mark, ..]) => {
                conditions.push(format!(
                    "{first} >= {mark} AND ({}) > ({})",
                    cursor.join(", "),
                    marks.join(", ")
                ));
            }
        }
    }
    if let (true, Some(first)) = (bounded, cursor.first()) {
        conditions.push(format!("{first} < ?"));
    }
    let mut sql = format!("SELECT {columns} FROM {from}");
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    if paged {
        if !cursor.is_empty() {
            sql.push_str(" ORDER BY ");
            sql.push_str(&cursor.join(", "));
        }
        sql.push_str(" LIMIT ?");
    }
    sql
}

/// The placeholder for a value compared with `column`, typed as the column: a `DECIMAL` is
/// bound as its exact text and cast to `DECIMAL(65, scale)` (a string compared with a decimal
/// goes through DOUBLE and loses digits past ~15); any other type as `?`, bound with the
/// matching binary-protocol type.
pub(super) fn placeholder(column: &Column) -> String {
    use ColumnType::*;
    match column.column_type() {
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => {
            format!("CAST(? AS DECIMAL(65, {}))", column.decimals().min(38))
        }
        _ => "?".into(),
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

    fn selection(relation: Relation, columns: &[&str], cursor: &[&str]) -> Selection {
        Selection {
            relation,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            cursor: cursor.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn page_statements_quote_identifiers_and_bind_the_cursor() {
        let s = selection(
            Relation::Table("hr.per`son".into()),
            &["id", "updated_at", "name"],
            &["updated_at", "id"],
        );
        let after = ["?".to_owned(), "CAST(? AS DECIMAL(65, 2))".to_owned()];
        let cases = [
            (
                None,
                false,
                "SELECT `id`, `updated_at`, `name` FROM `hr`.`per``son` \
                 ORDER BY `updated_at`, `id` LIMIT ?",
            ),
            (
                Some(&after[..]),
                true,
                "SELECT `id`, `updated_at`, `name` FROM `hr`.`per``son` \
                 WHERE `updated_at` >= ? AND (`updated_at`, `id`) > (?, CAST(? AS DECIMAL(65, 2))) \
                 AND `updated_at` < ? ORDER BY `updated_at`, `id` LIMIT ?",
            ),
        ];
        for (after, bounded, expected) in cases {
            assert_eq!(select_sql(&s, after, bounded, true), expected);
        }
        let q = selection(Relation::Query("SELECT 1 AS id;".into()), &["id"], &["id"]);
        assert_eq!(
            select_sql(&q, Some(&["?".to_owned()]), false, true),
            "SELECT `id` FROM (\nSELECT 1 AS id\n) AS src WHERE `id` > ? ORDER BY `id` LIMIT ?"
        );
    }

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
