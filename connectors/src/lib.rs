//! Source connectors: one trait, [`Connector`], one module per source kind.
//!
//! A connector reads only the columns it is asked for (the policy module decides which), in
//! pages ordered by a cursor, and converts every value to a [`Value`] with an exact,
//! documented mapping (docs/CONFIG.md, "Type mapping"). A value that cannot be converted is
//! reported per cell as a [`ConvertError`], so the caller can quarantine that row and go on.
//!
//! Architecture invariants:
//! - a connector never reads a column that is not in [`Selection::columns`];
//! - a `query` resource is read inside a read-only transaction;
//! - a URL that asks for TLS never falls back to plaintext, and TLS is always verified;
//! - errors name the source and never contain a row's values.

pub mod mysql;
pub mod postgres;
mod sql;
pub mod sqlite;
pub mod value;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use value::{ConvertError, Value};

/// What a resource reads: a table or a read-only query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// A table (or view), optionally schema-qualified as `schema.table`.
    Table(String),
    /// A read-only `SELECT …` (or `WITH …`) statement; it is wrapped as a subquery.
    Query(String),
}

/// The columns to read and the order to read them in.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The relation read from.
    pub relation: Relation,
    /// Every column read, in the order they appear in a [`Row`] (policy decides this list; it
    /// includes the key and cursor columns).
    pub columns: Vec<String>,
    /// Cursor columns, compared as a strict tuple; each must also be in `columns`.
    pub cursor: Vec<String>,
}

/// A request for one page of rows.
#[derive(Debug, Clone)]
pub struct PageRequest<'a> {
    /// What to read.
    pub selection: &'a Selection,
    /// Read rows whose cursor tuple is strictly greater than this (none: from the start).
    pub after: Option<&'a [Value]>,
    /// At most this many rows.
    pub limit: usize,
    /// How the upper bound of the page is decided.
    pub bound: Bound,
}

/// The upper bound of an incremental read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// No upper bound (snapshot scans ordered by key).
    None,
    /// Late-commit protection: read only rows whose first cursor column is at or before the
    /// start of the oldest transaction still open on the source, minus `safety_lag` (or
    /// now minus `safety_lag` where open transactions cannot be seen). Applies when the first
    /// cursor column is a date or timestamp; other cursor types are read unbounded.
    Horizon {
        /// Extra margin behind the horizon.
        safety_lag: Duration,
    },
}

/// Names of the columns of a page, shared by its rows.
pub type Columns = Arc<[String]>;

/// One source row: values in the order of [`Selection::columns`].
#[derive(Debug, Clone)]
pub struct Row {
    /// One entry per selected column; `Err` where the value could not be converted.
    pub values: Vec<Result<Value, ConvertError>>,
}

/// One page of rows and how it was bounded.
#[derive(Debug, Clone)]
pub struct Page {
    /// Column names, in the order of each row's values.
    pub columns: Columns,
    /// The rows, ordered by the cursor.
    pub rows: Vec<Row>,
    /// How the upper bound was decided for this page.
    pub horizon: HorizonInfo,
}

/// How the upper bound of a page was decided (reported in `status` and the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HorizonInfo {
    /// No bound was applied.
    Unbounded,
    /// Bounded by the oldest open transaction, which started at this time (RFC 3339).
    OpenTransaction { since: String },
    /// No transaction open: bounded by the source's clock minus the safety lag.
    Clock,
    /// Open transactions cannot be seen (missing privilege): bounded by the clock minus the
    /// safety lag only.
    LagOnly,
}

/// What a connector can see on its source (reported by `check --connect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Server product and version, e.g. "PostgreSQL 15.19".
    pub server: String,
    /// Whether open transactions of other sessions are visible (late-commit protection).
    pub sees_open_transactions: bool,
    /// If not, what privilege is missing, as a sentence for the administrator.
    pub missing_privilege: Option<String>,
}

/// Description of one column (from `describe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// The source's type name, e.g. "timestamptz", "DATETIME".
    pub source_type: String,
}

/// Errors at the connector boundary. Messages name the source, never a row's values.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The source could not be reached or the session broke; retry with backoff.
    #[error("source `{source_name}` ({address}) is unreachable: {reason}")]
    Unreachable {
        source_name: String,
        address: String,
        reason: String,
    },
    /// The source refused the statement (missing table or column, syntax, privilege).
    #[error("source `{source_name}` refused the statement: {reason}")]
    Statement { source_name: String, reason: String },
    /// The configuration of the source is wrong (URL, TLS settings).
    #[error("source `{source_name}`: {reason}")]
    Config { source_name: String, reason: String },
}

impl ConnectorError {
    /// Whether retrying later may succeed (the source was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectorError::Unreachable { .. })
    }
}

/// A source of rows.
#[async_trait]
pub trait Connector: Send + Sync {
    /// The source's configured name.
    fn name(&self) -> &str;

    /// Connects and reports what the connector can see.
    async fn probe(&self) -> Result<Probe, ConnectorError>;

    /// Describes the given columns of a relation; an error names a missing column.
    async fn describe(&self, selection: &Selection) -> Result<Vec<ColumnInfo>, ConnectorError>;

    /// Reads one page: rows with cursor > `after`, within the bound, ordered by the cursor
    /// columns, at most `limit`.
    async fn read_page(&self, request: &PageRequest<'_>) -> Result<Page, ConnectorError>;
}

/// How to reach a source.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// The configured name.
    pub name: String,
    /// `postgres`, `mysql` or `sqlite`.
    pub kind: SourceKind,
    /// Connection URL (for SQLite: `sqlite:///path` or a path).
    pub url: String,
    /// Password, from `password_file` or `password_env` (never inline in the URL required).
    pub password: Option<String>,
    /// CA certificate for TLS to the source; none: the system trust store.
    pub ca: Option<std::path::PathBuf>,
    /// Maximum open connections.
    pub pool_size: usize,
}

/// The kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// PostgreSQL (tokio-postgres).
    Postgres,
    /// MySQL or MariaDB (mysql_async).
    Mysql,
    /// SQLite (bundled).
    Sqlite,
}

/// Opens a connector for a source. Connecting is lazy: errors from an unreachable source come
/// from the first call, so one broken source never stops the others.
pub fn open(spec: &SourceSpec) -> Result<Arc<dyn Connector>, ConnectorError> {
    Ok(match spec.kind {
        SourceKind::Postgres => Arc::new(postgres::PostgresConnector::new(spec)?),
        SourceKind::Mysql => Arc::new(mysql::MysqlConnector::new(spec)?),
        SourceKind::Sqlite => Arc::new(sqlite::SqliteConnector::new(spec)?),
    })
}
