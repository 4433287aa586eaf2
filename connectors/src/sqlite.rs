//! SQLite connector (rusqlite, bundled SQLite).
//!
//! # Type mapping (a contract: docs/CONFIG.md repeats it)
//!
//! SQLite has no column types, only a storage class per value, and the mapping follows the
//! storage class of each value; declared column types are **not** consulted (a column declared
//! `INTEGER` that holds the text `'abc'` gives `Text`):
//!
//! | storage class | [`Value`] |
//! |---|---|
//! | `INTEGER` | `Int` |
//! | `REAL` | `Float`; ±Infinity is a [`ConvertError`] (SQLite stores NaN as NULL) |
//! | `TEXT` | `Text`; text that is not valid UTF-8 is a [`ConvertError`] |
//! | `BLOB` | `Bytes` |
//! | `NULL` | `Null` |
//!
//! Dates and times stay `Text` (or `Int`/`Float`) exactly as stored.
//!
//! # Opening
//!
//! [`SourceSpec::url`] is `sqlite:///abs/path.db`, `sqlite://relative.db`, `sqlite:relative.db`
//! or a bare path (relative paths are relative to the agent's working directory; no URI
//! parameters). The file is opened with `SQLITE_OPEN_READ_ONLY` (and `PRAGMA query_only`), so
//! the agent never writes to the source, a `query` resource cannot write, and a missing file is
//! [`ConnectorError::Unreachable`] naming the path, never created. One connection is kept per
//! connector behind a mutex and used from `spawn_blocking`; it is reopened after an I/O-level
//! error. A busy database is waited for up to 5 s.
//!
//! # Reading a page
//!
//! The query has the shape documented in `dialect.rs`; stored cursor values are bound with the
//! storage class they were read with (`Int` → INTEGER, `Float` → REAL, `Text` → TEXT, `Bytes`
//! → BLOB), so they compare exactly as the column's values do. Rows with a NULL in a cursor
//! column have no place in the order: pages leave them out (`IS NOT NULL`; SQLite sorts NULL
//! first) and [`Connector::null_cursor_rows`] counts them and returns a sample.
//! [`Connector::lookup`] reads `WHERE src."key" IN (?1, ?2, …)` (at most 500 keys per
//! statement), keys bound like cursor values.
//!
//! Default deny: every selected column is resolved first against the table's or view's own
//! columns (`pragma_table_xinfo`, generated columns included) or the query's output columns;
//! any other name — `rowid`, `oid`, `_rowid_` included — is refused with
//! [`ConnectorError::Config`]. `describe` reports `NOT NULL` for table columns
//! ([`ColumnInfo::nullable`]); view and query columns are `None`.
//!
//! # Cursor order
//!
//! [`Connector::plan_order`] reads the last row in cursor order, builds the page statement after
//! it (as a page read does, `LIMIT` the batch size) and runs `EXPLAIN QUERY PLAN` on it with its
//! parameters bound. `USE TEMP B-TREE FOR ORDER BY` means no index supplies the order (`… FOR
//! RIGHT PART OF ORDER BY`, an index on the leading cursor columns, counts as supplied); for a
//! table the statement a DBA runs is `CREATE INDEX "exchange_<table>_cursor" ON "<table>"
//! ("c1", "c2");` (the schema, when the table names one, goes on the index's name, as SQLite
//! writes it); a view's or a query's plan that sorts is reported as unknown.
//!
//! # Horizon
//!
//! SQLite shows no open transactions of other connections, so the horizon is the clock minus
//! the safety lag only ([`HorizonInfo::LagOnly`]). It applies only when the first cursor
//! column holds **text timestamps**: the deciding value is the first value of the stored
//! cursor, or, on a first read, the smallest non-NULL value of the column (one extra query). If that
//! is `TEXT` laid out as `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS…]` or `YYYY-MM-DDTHH:MM[:SS…]`
//! (SQLite's own date-and-time layouts), the page is bounded by `c1 < '<horizon>'`, the
//! horizon being now (UTC, as `datetime('now')` writes) minus the safety lag, written in the
//! same layout (to the second, minute or day); [`crate::Horizon::reached`] is that instant
//! truncated to the layout's second, minute or day (UTC). Otherwise (integer epochs, other
//! text) the page is unbounded ([`HorizonInfo::Unbounded`]).
//!
//! - The comparison is on text, with the column's collation, like `ORDER BY`, so the bound
//!   always cuts the cursor order at one point: a row held back is never passed by the cursor,
//!   even if some values are laid out differently.
//! - Strict `<`: a row stamped in the horizon's second (minute, day) waits for the next one.
//!   For date-only values a day is read once the horizon's UTC date is past it.
//! - Stamps are taken to be UTC; stamps in local time east of UTC are only delayed, stamps
//!   west of UTC need a safety lag at least the offset.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Timelike, Utc};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OpenFlags};

use crate::dialect::{self, BindAs, ColumnMeta, Dialect, HorizonCompare, LookupKeys, PageQuery};

/// The SQL text of this connector.
const SQL: Dialect = Dialect::SQLITE;
use crate::{
    Bound, ColumnInfo, Columns, Connector, ConnectorError, ConvertError, HorizonInfo, NullRows,
    OrderPlan, OrderRequest, Page, PageRequest, Probe, Relation, Row, Selection, SourceSpec,
    UnknownOrder, Value,
};

/// Keys bound per lookup statement.
const LOOKUP_CHUNK: usize = 500;

/// How long a read waits for a writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a SQLite source.
pub struct SqliteConnector {
    /// The configured source name, in every error.
    name: String,
    /// The database file.
    path: PathBuf,
    /// The read-only connection; `None` until first use and after an I/O-level error.
    conn: Arc<StdMutex<Option<Connection>>>,
}

/// Why an operation failed.
enum Failure {
    /// The file cannot be opened or read: reopen later.
    Unreachable(String),
    /// SQLite refused the statement.
    Statement(String),
    /// The request or configuration is wrong.
    Config(String),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code() {
            Some(
                C::CannotOpen
                | C::NotADatabase
                | C::DatabaseCorrupt
                | C::SystemIoFailure
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::PermissionDenied,
            ) => Failure::Unreachable(e.to_string()),
            _ => Failure::Statement(e.to_string()),
        }
    }
}

/// The database path of a SQLite URL (see the module documentation).
fn path_of(url: &str) -> &str {
    match url.strip_prefix("sqlite:") {
        Some(rest) => rest.strip_prefix("//").unwrap_or(rest),
        None => url,
    }
}

/// Opens the database read-only; a missing file is an error, never created.
fn open(path: &Path) -> Result<Connection, Failure> {
    std::fs::metadata(path).map_err(|e| {
        Failure::Unreachable(format!("cannot open database file {}: {e}", path.display()))
    })?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_prepared_statement_cache_capacity(64);
    // Reads the header: a file that is not a database fails here.
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    Ok(conn)
}

/// The layout of a text timestamp (see "Horizon" in the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `YYYY-MM-DD`
    Date,
    /// `YYYY-MM-DD?HH:MM…` without seconds; the separator is ' ' or 'T'.
    Minutes(char),
    /// `YYYY-MM-DD?HH:MM:SS…`
    Seconds(char),
}

fn layout_of(text: &str) -> Option<Layout> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    let date_shape = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10);
    if !date_shape {
        return None;
    }
    NaiveDate::parse_from_str(text.get(..10)?, "%Y-%m-%d").ok()?;
    if b.len() == 10 {
        return Some(Layout::Date);
    }
    let sep = match b[10] {
        b' ' => ' ',
        b'T' => 'T',
        _ => return None,
    };
    if !(digits(11..13) && b.get(13) == Some(&b':') && digits(14..16)) {
        return None;
    }
    NaiveTime::parse_from_str(text.get(11..16)?, "%H:%M").ok()?;
    if b.get(16) == Some(&b':') && digits(17..19) {
        Some(Layout::Seconds(sep))
    } else {
        Some(Layout::Minutes(sep))
    }
}

/// Now minus the lag, in `layout`, and the instant that text stands for (now minus the lag,
/// truncated to the layout's second, minute or day): a value stamped before that instant is
/// below the text.
fn horizon_text(layout: Layout, safety_lag: Duration) -> Option<(String, DateTime<Utc>)> {
    let at = Utc::now().checked_sub_signed(TimeDelta::from_std(safety_lag).ok()?)?;
    let at = at.with_nanosecond(0)?;
    Some(match layout {
        Layout::Date => (
            at.format("%Y-%m-%d").to_string(),
            at.date_naive().and_time(NaiveTime::MIN).and_utc(),
        ),
        Layout::Minutes(sep) => (
            at.format(&format!("%Y-%m-%d{sep}%H:%M")).to_string(),
            at.with_second(0)?,
        ),
        Layout::Seconds(sep) => (at.format(&format!("%Y-%m-%d{sep}%H:%M:%S")).to_string(), at),
    })
}

/// A stored cursor value as a SQLite parameter of the storage class it was read with.
fn to_param(value: &Value) -> SqlValue {
    match value {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Int(i) => SqlValue::Integer(*i),
        Value::UInt(u) => i64::try_from(*u)
            .map(SqlValue::Integer)
            .unwrap_or_else(|_| SqlValue::Text(u.to_string())),
        Value::Float(f) => SqlValue::Real(*f),
        Value::Bytes(b) => SqlValue::Blob(b.clone()),
        Value::Json(j) => SqlValue::Text(j.to_string()),
        other => SqlValue::Text(other.to_text().unwrap_or_default()),
    }
}

/// Converts one cell by its storage class; never panics on data.
fn convert(value: ValueRef<'_>, column: &str) -> Result<Value, ConvertError> {
    let fail = |class: &str, reason: &str| ConvertError {
        column: column.to_owned(),
        source_type: class.to_owned(),
        reason: reason.to_owned(),
    };
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) if f.is_finite() => Value::Float(f),
        ValueRef::Real(_) => {
            return Err(fail(
                "REAL",
                "non-finite float cannot be represented in JSON",
            ));
        }
        ValueRef::Text(bytes) => Value::Text(
            std::str::from_utf8(bytes)
                .map_err(|_| fail("TEXT", "text is not valid UTF-8"))?
                .to_owned(),
        ),
        ValueRef::Blob(bytes) => Value::Bytes(bytes.to_vec()),
    })
}

/// A page request that can move to the blocking thread.
struct OwnedRequest {
    selection: Selection,
    after: Option<Vec<Value>>,
    limit: usize,
    bound: Bound,
}

fn read_page_blocking(conn: &Connection, request: &OwnedRequest) -> Result<Page, Failure> {
    let selection = &request.selection;
    resolve(conn, selection)?;
    let (sql, params, horizon) = page_statement(conn, request)?;
    let out = query_rows(conn, &sql, &params, &selection.columns)?;
    let columns: Columns = selection.columns.clone().into();
    Ok(Page {
        columns,
        rows: out,
        horizon,
    })
}

/// The statement of a page (its selection resolved), its parameters in order and its bound.
fn page_statement(
    conn: &Connection,
    request: &OwnedRequest,
) -> Result<(String, Vec<SqlValue>, crate::Horizon), Failure> {
    let selection = &request.selection;
    let from = SQL.relation_sql(&selection.relation);
    let select_list: Vec<String> = SQL.column_refs(&selection.columns);

    let mut info = HorizonInfo::Unbounded;
    let mut reached = None;
    let mut horizon = None;
    if let Bound::Horizon { safety_lag } = request.bound {
        let deciding = match request.after.as_ref().and_then(|a| a.first()) {
            Some(Value::Text(text)) => Some(text.clone()),
            Some(_) => None,
            None => {
                // The smallest value a page can return (pages skip NULL, which sorts first).
                let c = SQL.column_ref(&selection.cursor[0]);
                let sql =
                    format!("SELECT {c} FROM {from} WHERE {c} IS NOT NULL ORDER BY {c} LIMIT 1");
                let mut statement = conn.prepare_cached(&sql)?;
                let mut rows = statement.query([])?;
                match rows.next()? {
                    Some(row) => match row.get_ref(0)? {
                        ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
                        _ => None,
                    },
                    None => None,
                }
            }
        };
        if let Some(layout) = deciding.as_deref().and_then(layout_of) {
            let (text, at) = horizon_text(layout, safety_lag)
                .ok_or_else(|| Failure::Config("the safety lag is too large".into()))?;
            horizon = Some((HorizonCompare::Instant, SqlValue::Text(text)));
            info = HorizonInfo::LagOnly;
            reached = Some(at);
        }
    }
    let (sql, params) = SQL.page_query(PageQuery {
        select_list: &select_list,
        from: &from,
        cursor: &selection.cursor,
        after: request.after.as_ref().map(|after| {
            after
                .iter()
                .map(|v| (BindAs::Native, to_param(v)))
                .collect()
        }),
        horizon,
        limit: Some(SqlValue::Integer(
            i64::try_from(request.limit).unwrap_or(i64::MAX),
        )),
    });
    Ok((sql, params, crate::Horizon { info, reached }))
}

/// [`Connector::plan_order`] on the connection: `EXPLAIN QUERY PLAN` of the page statement
/// after the last row in cursor order (see "Cursor order" in the module documentation).
fn order_blocking(
    conn: &Connection,
    selection: &Selection,
    limit: usize,
    bound: Bound,
) -> Result<OrderPlan, Failure> {
    resolve(conn, selection)?;
    let positions = dialect::cursor_positions(selection, None).map_err(Failure::Config)?;
    let from = SQL.relation_sql(&selection.relation);
    let last = SQL.last_row_sql(
        &SQL.column_refs(&selection.columns),
        &from,
        &selection.cursor,
    );
    let rows = query_rows(conn, &last, &[], &selection.columns)?;
    let after: Option<Vec<Value>> = rows.first().and_then(|row| {
        positions
            .iter()
            .map(|&i| row.values[i].clone().ok())
            .collect()
    });
    let request = OwnedRequest {
        selection: selection.clone(),
        after,
        limit,
        bound,
    };
    let (sql, params, _) = page_statement(conn, &request)?;
    let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let details = statement
        .query_map(rusqlite::params_from_iter(params.iter()), |row| {
            row.get::<_, String>(3)
        })?
        .collect::<Result<Vec<String>, _>>()?;
    let (sorted, index) = plan_details(&details);
    match (&selection.relation, sorted) {
        (_, false) => Ok(OrderPlan::Indexed { index }),
        (Relation::Table(table), true) => sorted_table(conn, table, &selection.cursor),
        (Relation::Query(_), true) => Ok(OrderPlan::Unknown {
            why: UnknownOrder::Query,
        }),
    }
}

/// Reads `EXPLAIN QUERY PLAN` details: whether the rows are sorted (`USE TEMP B-TREE FOR
/// ORDER BY`; not `… FOR RIGHT PART OF ORDER BY` or `… FOR LAST n TERMS OF ORDER BY`, where an
/// index gives the leading columns' order) and the first index used.
fn plan_details(details: &[String]) -> (bool, Option<String>) {
    let sorted = details
        .iter()
        .any(|d| d.starts_with("USE TEMP B-TREE FOR ORDER BY"));
    let index = details.iter().find_map(|d| {
        if d.contains("USING INTEGER PRIMARY KEY") || d.contains("USING ROWID") {
            return Some("rowid".to_owned());
        }
        let (_, rest) = d.split_once(" INDEX ")?;
        rest.split_whitespace().next().map(str::to_owned)
    });
    (sorted, index)
}

/// The plan of a table whose cursor order no index supplies: the index to create, or
/// unknown for a view.
fn sorted_table(conn: &Connection, table: &str, cursor: &[String]) -> Result<OrderPlan, Failure> {
    let (schema, name) = match table.split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table),
    };
    let kind: Option<(String, String)> = conn
        .prepare_cached(&format!(
            "SELECT type, name FROM {}.sqlite_schema WHERE name = ?1 COLLATE NOCASE",
            SQL.quote_ident(schema.unwrap_or("main"))
        ))
        .and_then(|mut s| s.query_row([name], |row| Ok((row.get(0)?, row.get(1)?))))
        .ok();
    let Some(("table", name)) = kind.as_ref().map(|(k, n)| (k.as_str(), n.as_str())) else {
        return Ok(OrderPlan::Unknown {
            why: UnknownOrder::View,
        });
    };
    // SQLite names the schema on the index: `CREATE INDEX "aux"."i" ON "t" (…)`.
    let index = SQL.quote_ident(&dialect::cursor_index_name(name));
    let index = match schema {
        Some(schema) => format!("{}.{index}", SQL.quote_ident(schema)),
        None => index,
    };
    let columns: Vec<String> = cursor.iter().map(|c| SQL.quote_ident(c)).collect();
    Ok(OrderPlan::Sorted {
        create_index: SQL.create_index_sql(&index, &SQL.quote_ident(name), &columns, false),
    })
}

/// Runs `sql` whose select list is `columns` (as `src."c"`, in order) and converts the rows.
fn query_rows(
    conn: &Connection,
    sql: &str,
    params: &[SqlValue],
    columns: &[String],
) -> Result<Vec<Row>, Failure> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            values.push(convert(row.get_ref(i)?, column));
        }
        out.push(Row { values });
    }
    Ok(out)
}

/// Resolves every selected column against the catalogue (default deny): a table's or view's
/// own columns (`pragma_table_xinfo`, generated columns included; SQLite compares names
/// without regard to ASCII case), or a query's output columns. A name that is none of them
/// — `rowid`, `oid` and `_rowid_` included — is refused. Returns, per selected column, its
/// declared type and whether it may hold NULL (`None` for view and query columns).
fn resolve(conn: &Connection, selection: &Selection) -> Result<Vec<ColumnMeta>, Failure> {
    if selection.columns.is_empty() {
        return Err(Failure::Config("the selection reads no column".into()));
    }
    let mut found: Vec<ColumnMeta> = Vec::new();
    let what = match &selection.relation {
        Relation::Table(table) => {
            let (schema, name) = match table.split_once('.') {
                Some((schema, name)) => (schema, name),
                None => ("main", table.as_str()),
            };
            let kind: Option<String> = conn
                .prepare_cached(&format!(
                    "SELECT type FROM {}.sqlite_schema WHERE name = ?1 COLLATE NOCASE",
                    SQL.quote_ident(schema)
                ))
                .and_then(|mut s| s.query_row([name], |row| row.get(0)))
                .ok();
            // Only a table's NOT NULL is a promise; a view's columns say nothing.
            let is_table = kind.as_deref() == Some("table");
            let mut statement = conn.prepare_cached(
                "SELECT name, type, \"notnull\" FROM pragma_table_xinfo(?1, ?2) \
                 WHERE hidden IN (0, 2, 3)",
            )?;
            let rows = statement.query_map([name, schema], |row| {
                Ok(ColumnMeta {
                    name: row.get(0)?,
                    source_type: row.get(1)?,
                    nullable: is_table.then_some(!row.get::<_, bool>(2)?),
                })
            })?;
            for row in rows {
                found.push(row?);
            }
            if found.is_empty() {
                // No such table: preparing a query of it names it.
                conn.prepare(&SQL.output_columns_sql(&selection.relation))?;
            }
            format!("table `{table}`")
        }
        Relation::Query(_) => {
            let statement = conn.prepare(&SQL.output_columns_sql(&selection.relation))?;
            found = statement
                .column_names()
                .into_iter()
                .map(|n| ColumnMeta {
                    name: n.to_owned(),
                    source_type: String::new(),
                    nullable: None,
                })
                .collect();
            "the query's output".to_owned()
        }
    };
    SQL.resolve_columns(selection, &found, &what)
        .map_err(Failure::Config)
}

/// [`Connector::null_cursor_rows`] on the connection; count and rows in one read transaction.
fn null_rows_blocking(
    conn: &Connection,
    selection: &Selection,
    limit: usize,
) -> Result<NullRows, Failure> {
    let resolved = resolve(conn, selection)?;
    let nullable: Vec<Option<bool>> = resolved.iter().map(|r| r.nullable).collect();
    let from = SQL.relation_sql(&selection.relation);
    let select_list: Vec<String> = SQL.column_refs(&selection.columns);
    let Some(queries) = SQL.null_cursor_queries(selection, &nullable, &select_list, &from) else {
        return Ok(NullRows {
            total: 0,
            rows: Vec::new(),
        });
    };
    conn.execute_batch("BEGIN")?;
    let result = (|| {
        let total: i64 = conn
            .prepare_cached(&queries.count)?
            .query_row([], |row| row.get(0))?;
        let rows = query_rows(
            conn,
            &queries.rows,
            &[SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX))],
            &selection.columns,
        )?;
        Ok::<_, Failure>(NullRows {
            total: u64::try_from(total).unwrap_or(0),
            rows,
        })
    })();
    conn.execute_batch("COMMIT")?;
    result
}

/// [`Connector::lookup`] on the connection: `WHERE src."key" IN (?1, ?2, …)`, each key bound
/// with the storage class it was read with.
fn lookup_blocking(
    conn: &Connection,
    selection: &Selection,
    key: &str,
    keys: &[Value],
) -> Result<Vec<Row>, Failure> {
    resolve(conn, selection)?;
    if !selection.columns.iter().any(|c| c == key) {
        return Err(Failure::Config(format!(
            "the key column `{key}` is not among the selected columns"
        )));
    }
    let params: Vec<SqlValue> = keys
        .iter()
        .filter(|k| !matches!(k, Value::Null))
        .map(to_param)
        .collect();
    let mut out = Vec::new();
    let from = SQL.relation_sql(&selection.relation);
    let select_list: Vec<String> = SQL.column_refs(&selection.columns);
    // SQLite limits the number of parameters of a statement (32766 since 3.32).
    for chunk in params.chunks(LOOKUP_CHUNK) {
        let keys = LookupKeys::List {
            count: chunk.len(),
            how: BindAs::Native,
        };
        let sql = SQL.lookup_sql(&select_list, &from, key, keys);
        out.extend(query_rows(conn, &sql, chunk, &selection.columns)?);
    }
    Ok(out)
}

fn describe_blocking(conn: &Connection, selection: &Selection) -> Result<Vec<ColumnInfo>, Failure> {
    let resolved = resolve(conn, selection)?;
    // Preparing checks the statement the pages will run.
    conn.prepare(&SQL.describe_sql(selection))?;
    Ok(selection
        .columns
        .iter()
        .zip(resolved)
        .map(|(c, meta)| ColumnInfo {
            name: c.clone(),
            source_type: meta.source_type,
            nullable: meta.nullable,
        })
        .collect())
}

impl SqliteConnector {
    /// Prepares a connector for the database file named by the URL; opens it lazily.
    pub fn new(spec: &SourceSpec) -> Result<Self, ConnectorError> {
        let path = path_of(&spec.url);
        if path.is_empty() || path == ":memory:" {
            return Err(ConnectorError::Config {
                source_name: spec.name.clone(),
                reason: "the SQLite URL names no database file (sqlite:///path/to/file.db)".into(),
            });
        }
        Ok(Self {
            name: spec.name.clone(),
            path: PathBuf::from(path),
            conn: Arc::new(StdMutex::new(None)),
        })
    }

    /// Runs `work` on the connection in a blocking thread, opening it first if needed.
    async fn run<T, F>(&self, work: F) -> Result<T, ConnectorError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let slot = self.conn.clone();
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
            let conn = match guard.take() {
                Some(conn) => conn,
                None => open(&path)?,
            };
            let result = work(&conn);
            if !matches!(result, Err(Failure::Unreachable(_))) {
                *guard = Some(conn);
            }
            result
        })
        .await
        .unwrap_or_else(|e| Err(Failure::Statement(format!("the SQLite reader failed: {e}"))));
        result.map_err(|failure| match failure {
            Failure::Unreachable(reason) => ConnectorError::Unreachable {
                source_name: self.name.clone(),
                address: self.path.display().to_string(),
                reason,
            },
            Failure::Statement(reason) => ConnectorError::Statement {
                source_name: self.name.clone(),
                reason,
            },
            Failure::Config(reason) => ConnectorError::Config {
                source_name: self.name.clone(),
                reason,
            },
        })
    }
}

#[async_trait]
impl Connector for SqliteConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn clock(&self) -> Result<chrono::DateTime<Utc>, ConnectorError> {
        // SQLite's `datetime('now')` is this machine's clock.
        Ok(Utc::now())
    }

    async fn probe(&self) -> Result<Probe, ConnectorError> {
        self.run(|_| {
            Ok(Probe {
                replica: None,
                server: format!("SQLite {}", rusqlite::version()),
                // SQLite serializes writers and shows no open transaction of another
                // connection; no privilege would change that.
                sees_open_transactions: false,
                missing_privilege: None,
            })
        })
        .await
    }

    async fn describe(&self, selection: &Selection) -> Result<Vec<ColumnInfo>, ConnectorError> {
        let selection = selection.clone();
        self.run(move |conn| describe_blocking(conn, &selection))
            .await
    }

    async fn null_cursor_rows(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<NullRows, ConnectorError> {
        dialect::cursor_positions(selection, None).map_err(|reason| ConnectorError::Config {
            source_name: self.name.clone(),
            reason,
        })?;
        let selection = selection.clone();
        self.run(move |conn| null_rows_blocking(conn, &selection, limit))
            .await
    }

    async fn plan_order(&self, request: &OrderRequest<'_>) -> Result<OrderPlan, ConnectorError> {
        let selection = request.selection.clone();
        let (limit, bound) = (request.limit, request.bound);
        self.run(move |conn| order_blocking(conn, &selection, limit, bound))
            .await
    }

    async fn lookup(&self, selection: &Selection, key: &str, keys: &[Value]) -> crate::Found {
        let selection = selection.clone();
        let key = key.to_owned();
        let keys = keys.to_vec();
        self.run(move |conn| lookup_blocking(conn, &selection, &key, &keys))
            .await
    }

    async fn read_page(&self, request: &PageRequest<'_>) -> Result<Page, ConnectorError> {
        dialect::cursor_positions(request.selection, request.after).map_err(|reason| {
            ConnectorError::Config {
                source_name: self.name.clone(),
                reason,
            }
        })?;
        let owned = OwnedRequest {
            selection: request.selection.clone(),
            after: request.after.map(<[Value]>::to_vec),
            limit: request.limit,
            bound: request.bound,
        };
        self.run(move |conn| read_page_blocking(conn, &owned)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_bare_paths_name_the_file() {
        for (url, path) in [
            ("sqlite:///var/lib/hr.db", "/var/lib/hr.db"),
            ("sqlite://hr.db", "hr.db"),
            ("sqlite:hr.db", "hr.db"),
            ("/var/lib/hr.db", "/var/lib/hr.db"),
            ("data/hr.db", "data/hr.db"),
        ] {
            assert_eq!(path_of(url), path, "{url}");
        }
    }

    #[test]
    fn a_temp_b_tree_for_the_whole_order_means_sorted() {
        let details = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases = [
            (
                details(&["SCAN src", "USE TEMP B-TREE FOR ORDER BY"]),
                (true, None),
            ),
            (
                details(&["SEARCH src USING INDEX people_cursor (updated_at>?)"]),
                (false, Some("people_cursor".to_owned())),
            ),
            (
                details(&[
                    "SEARCH src USING INDEX people_at (updated_at>?)",
                    "USE TEMP B-TREE FOR RIGHT PART OF ORDER BY",
                ]),
                (false, Some("people_at".to_owned())),
            ),
            (
                details(&["SCAN src USING COVERING INDEX people_cursor"]),
                (false, Some("people_cursor".to_owned())),
            ),
            (
                details(&["SEARCH src USING INTEGER PRIMARY KEY (rowid>?)"]),
                (false, Some("rowid".to_owned())),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(plan_details(&input), expected, "{input:?}");
        }
    }

    #[test]
    fn text_timestamp_layouts_are_recognized() {
        let cases = [
            ("2024-02-29", Some(Layout::Date)),
            ("2024-02-29 10:11", Some(Layout::Minutes(' '))),
            ("2024-02-29 10:11:12", Some(Layout::Seconds(' '))),
            ("2024-02-29T10:11:12.345Z", Some(Layout::Seconds('T'))),
            ("2024-02-30", None),
            ("2024-2-29", None),
            ("20240229", None),
            ("2024-02-29x10:11", None),
            ("张三", None),
            ("", None),
        ];
        for (text, layout) in cases {
            assert_eq!(layout_of(text), layout, "{text}");
        }
    }

    #[test]
    fn horizon_text_uses_the_layout_of_the_column() {
        let (h, at) = horizon_text(Layout::Seconds('T'), Duration::ZERO).unwrap();
        assert_eq!(layout_of(&h), Some(Layout::Seconds('T')));
        assert_eq!(h.len(), 19);
        assert_eq!(at.format("%Y-%m-%dT%H:%M:%S").to_string(), h);
        assert_eq!(at.nanosecond(), 0);
        let (d, at) = horizon_text(Layout::Date, Duration::from_secs(86_400)).unwrap();
        assert_eq!(layout_of(&d), Some(Layout::Date));
        assert_eq!(
            at.format("%Y-%m-%d %H:%M:%S").to_string(),
            format!("{d} 00:00:00")
        );
        let (m, at) = horizon_text(Layout::Minutes(' '), Duration::ZERO).unwrap();
        assert_eq!(at.format("%Y-%m-%d %H:%M").to_string(), m);
        assert_eq!(at.second(), 0);
        assert!(horizon_text(Layout::Date, Duration::MAX).is_none());
    }
}
