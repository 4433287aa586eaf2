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
//! - errors name the source and never contain a row's values;
//! - a plan ([`Connector::plan_order`]), which quotes the values bound to its statement, is read
//!   for node kinds and index names only, never returned or logged.

mod dialect;
pub mod files;
pub mod mysql;
pub mod postgres;
pub mod sqlite;
pub use exchange_protocol::value;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

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

/// A request for every row after a cursor, in one streamed statement ([`Connector::scan`]).
#[derive(Debug, Clone)]
pub struct ScanRequest<'a> {
    /// What to read.
    pub selection: &'a Selection,
    /// Read rows whose cursor tuple is strictly greater than this (none: from the start).
    pub after: Option<&'a [Value]>,
    /// The upper bound, decided once, before the statement's snapshot is taken.
    pub bound: Bound,
    /// Rows per chunk sent to the reader.
    pub chunk: usize,
}

/// How a [`Connector::scan`] ended.
#[derive(Debug, Clone)]
pub struct ScanEnd {
    /// How the scan was bounded; `reached` as for a page that came back short: every row
    /// committed before it has been read.
    pub horizon: Horizon,
    /// Rows sent.
    pub rows: u64,
    /// Whether the reader closed the channel before the end: the rows after those sent were
    /// not read.
    pub stopped: bool,
    /// How long the statement took (`status` and the metrics show it).
    pub time: ScanTime,
}

/// How long a scan's statement took, measured by the connector from the moment it sends the
/// statement (after the horizon is read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanTime {
    /// Until its first row arrived, or its end when it returned none. Without an index that
    /// supplies the cursor order ([`Connector::plan_order`]) the source reads and sorts every
    /// row within the bound before it sends the first, so this grows with the table, not with
    /// the rows that changed.
    pub first_row: std::time::Duration,
    /// Until its end: the last row read, or the reader stopping it. It includes the time the
    /// source waited while the reader could not take more (a full queue).
    pub total: std::time::Duration,
}

/// What [`Connector::plan_order`] asks the source's planner about: the page statement of a
/// steady-state incremental pull.
#[derive(Debug, Clone)]
pub struct OrderRequest<'a> {
    /// What the resource reads.
    pub selection: &'a Selection,
    /// The statement's `LIMIT` (the batch size).
    pub limit: usize,
    /// Its upper bound, as the pulls bound it.
    pub bound: Bound,
}

/// Whether an index supplies the cursor order of a resource's page statement, as the source's
/// planner says ([`Connector::plan_order`]). Never holds a value: plans quote the bound
/// parameters, so nothing of a plan's text is kept but node kinds and index names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderPlan {
    /// An index supplies the order (at least of the first cursor column; the planner sorts
    /// only rows that share it): a pull reads the rows after its cursor, not the table.
    Indexed {
        /// The index, when the plan names it.
        index: Option<String>,
    },
    /// The source sorts: no index has the cursor columns as its leading columns, so every
    /// pull reads and sorts every row within the bound to find those after its cursor.
    Sorted {
        /// The statement a DBA runs to create such an index, its identifiers quoted for the
        /// source: `CREATE INDEX CONCURRENTLY exchange_people_cursor ON public.people
        /// (updated_at, id);` (PostgreSQL: it does not block writes).
        create_index: String,
    },
    /// The plan cannot tell.
    Unknown {
        /// Why.
        why: UnknownOrder,
    },
}

/// Why a plan cannot tell whether an index supplies the cursor order ([`OrderPlan::Unknown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownOrder {
    /// The resource reads a query whose plan sorts: an index would belong to the tables the
    /// query reads, and which one the plan does not say.
    Query,
    /// The relation is a view (or a foreign table) whose plan sorts: an index would belong to
    /// the tables under it.
    View,
    /// The optimizer found no row to read after the last one (rows stamped after the
    /// horizon), so its plan says nothing about the order.
    NothingToRead,
    /// The source shows no plan.
    NoPlan,
}

impl std::fmt::Display for UnknownOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnknownOrder::Query => {
                "the resource reads a query whose plan sorts; an index would belong to the tables the query reads"
            }
            UnknownOrder::View => {
                "the relation is a view whose plan sorts; an index would belong to the tables under it"
            }
            UnknownOrder::NothingToRead => {
                "the optimizer found no row to read after the last one, so its plan says nothing about the order"
            }
            UnknownOrder::NoPlan => "this source shows no plan",
        })
    }
}

/// Where a scan sends its rows, a chunk at a time, in cursor order; a full channel holds the
/// scan back (memory stays bounded), a closed one stops it.
pub type Chunks = tokio::sync::mpsc::Sender<Vec<Row>>;

/// Waits until the reader has taken the last chunk sent before a scan converts the first row
/// of the next one, so at most two chunks are decoded at once (one the reader works on, one
/// being filled), not a third waiting in the channel; `false` when the reader is gone. A scan
/// is the channel's only sender, so the room stays until it sends.
pub(crate) async fn room_for_a_chunk(chunks: &Chunks) -> bool {
    chunks.reserve().await.is_ok()
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
    pub horizon: Horizon,
}

/// The upper bound of a page: why it is where it is, and what it guarantees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizon {
    /// How the bound was decided (reported in `status`, the log and by `sync`).
    pub info: HorizonInfo,
    /// The instant, on the source's clock (UTC), before which every committed row has been
    /// read once a page with this horizon comes back with fewer rows than asked for: a row
    /// committed before `reached` has a first cursor value below the bound. For a `date`
    /// first cursor column this is the midnight (in the column's time zone) that starts the
    /// bound's day. `None` when the page had no upper bound ([`HorizonInfo::Unbounded`]): then
    /// every row the page's snapshot could see was eligible.
    ///
    /// `exchange-agent sync` waits until `reached` has passed the source clock read when the
    /// sync started ([`Connector::clock`]).
    pub reached: Option<DateTime<Utc>>,
}

impl Horizon {
    /// A page read without an upper bound.
    pub fn unbounded() -> Horizon {
        Horizon {
            info: HorizonInfo::Unbounded,
            reached: None,
        }
    }
}

/// How the upper bound of a page was decided (reported in `status` and the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HorizonInfo {
    /// No bound was applied.
    Unbounded,
    /// Bounded by the oldest open transaction, which started at `since` (RFC 3339, UTC).
    /// `session` describes it for the administrator without any data: e.g. "pid 4711, user
    /// `hr_app`, application `psql`, client 10.0.0.5" (PostgreSQL) or "thread 12" (MySQL).
    OpenTransaction {
        /// Start of the transaction (RFC 3339, UTC).
        since: String,
        /// Who holds it, when the source tells.
        session: Option<String>,
    },
    /// Bounded by a prepared (two-phase) transaction, prepared at `since` (RFC 3339, UTC).
    PreparedTransaction {
        /// When it was prepared.
        since: String,
    },
    /// No transaction open: bounded by the source's clock minus the safety lag.
    Clock,
    /// Open transactions cannot be seen (missing privilege): bounded by the clock minus the
    /// safety lag only.
    LagOnly,
    /// The source is a replica, which cannot see the primary's open transactions: bounded by
    /// the clock minus the source's `replica_lag` (and the safety lag).
    Replica {
        /// The configured replica lag.
        lag: Duration,
    },
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
    /// If the source is a replica (PostgreSQL in recovery or a logical subscriber, a MySQL or
    /// MariaDB replica), what it is, as a sentence: its horizon falls back to `replica_lag`.
    pub replica: Option<String>,
}

/// Description of one column (from `describe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// The source's type name, e.g. "timestamptz", "DATETIME".
    pub source_type: String,
    /// Whether the column may hold NULL: `Some(false)` for a `NOT NULL` table column,
    /// `None` when the source cannot tell (query columns, expressions).
    pub nullable: Option<bool>,
}

/// Rows whose cursor cannot be placed because a cursor column is NULL (see
/// [`Connector::null_cursor_rows`]).
#[derive(Debug, Clone)]
pub struct NullRows {
    /// How many such rows the relation holds now.
    pub total: u64,
    /// Up to the requested number of them, values in the order of [`Selection::columns`].
    pub rows: Vec<Row>,
}

/// Errors at the connector boundary. Messages name the source, never a row's values.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The source could not be reached or the session broke; retry with backoff.
    #[error("{}", exchange_protocol::tr!(
        "source `{source_name}` ({address}) is unreachable: {reason}",
        "无法连接数据源 `{source_name}`（{address}）：{reason}"
    ))]
    Unreachable {
        source_name: String,
        address: String,
        reason: String,
    },
    /// The source refused the statement (missing table or column, syntax, privilege).
    #[error("{}", exchange_protocol::tr!(
        "source `{source_name}` refused the statement: {reason}",
        "数据源 `{source_name}` 拒绝执行语句：{reason}"
    ))]
    Statement { source_name: String, reason: String },
    /// The configuration of the source is wrong (URL, TLS settings).
    #[error("{}", exchange_protocol::tr!(
        "source `{source_name}`: {reason}",
        "数据源 `{source_name}`：{reason}"
    ))]
    Config { source_name: String, reason: String },
}

impl ConnectorError {
    /// Whether retrying later may succeed (the source was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectorError::Unreachable { .. })
    }
}

/// The rows a [`Connector::lookup`] found, or why it failed.
pub type Found = Result<Vec<Row>, ConnectorError>;

/// A source of rows.
#[async_trait]
pub trait Connector: Send + Sync {
    /// The source's configured name.
    fn name(&self) -> &str;

    /// Connects and reports what the connector can see.
    async fn probe(&self) -> Result<Probe, ConnectorError>;

    /// The source's clock now (UTC): what its horizons are measured against.
    async fn clock(&self) -> Result<DateTime<Utc>, ConnectorError>;

    /// Describes the given columns of a relation; an error names a missing column. Every
    /// selected column is resolved against the source's catalogue (default deny): a name
    /// that is not a column of the relation is refused, whatever the database would make
    /// of it otherwise.
    async fn describe(&self, selection: &Selection) -> Result<Vec<ColumnInfo>, ConnectorError>;

    /// Reads one page: rows with cursor > `after`, within the bound, ordered by the cursor
    /// columns, at most `limit`. A page never holds a row with a NULL in a cursor column:
    /// such a row has no place in the order, and every page query filters it out
    /// (`src.c IS NOT NULL` on every cursor column, see `dialect.rs`); those rows are counted
    /// and read apart by [`Connector::null_cursor_rows`]. So a short page means caught up, and
    /// a full page always moves the cursor.
    async fn read_page(&self, request: &PageRequest<'_>) -> Result<Page, ConnectorError>;

    /// Reads every row a page could return after `after` — the same filters, bound and order
    /// as [`Connector::read_page`] without a limit — and sends them, in cursor order, in chunks
    /// of `chunk` rows.
    ///
    /// PostgreSQL and MySQL/MariaDB read them with one streamed statement (one snapshot, the
    /// bound decided before it is taken): without an index on the cursor columns the rows are
    /// sorted once, where paging sorts the whole table again for every page, which makes a
    /// first read of a large table quadratic. This default reads page after page (each bounded
    /// on its own, as [`Connector::read_page`]); it suits a source where a page is cheap and a
    /// statement held open for long would block other readers (SQLite).
    async fn scan(
        &self,
        request: &ScanRequest<'_>,
        chunks: &Chunks,
    ) -> Result<ScanEnd, ConnectorError> {
        let positions =
            dialect::cursor_positions(request.selection, request.after).map_err(|reason| {
                ConnectorError::Config {
                    source_name: self.name().to_owned(),
                    reason,
                }
            })?;
        let limit = request.chunk.max(1);
        let mut after: Option<Vec<Value>> = request.after.map(<[Value]>::to_vec);
        let mut end = ScanEnd {
            horizon: Horizon::unbounded(),
            rows: 0,
            stopped: false,
            time: ScanTime::default(),
        };
        // Pages: the first row comes with the first page, the end with the last.
        let started = std::time::Instant::now();
        let mut first = true;
        loop {
            if !room_for_a_chunk(chunks).await {
                end.stopped = true;
                return Ok(end);
            }
            let page = self
                .read_page(&PageRequest {
                    selection: request.selection,
                    after: after.as_deref(),
                    limit,
                    bound: request.bound,
                })
                .await?;
            if std::mem::take(&mut first) {
                end.time.first_row = started.elapsed();
            }
            end.time.total = started.elapsed();
            end.horizon = page.horizon;
            let short = page.rows.len() < limit;
            let Some(row) = page.rows.last() else {
                return Ok(end);
            };
            // A cursor that cannot be converted ends the scan at its row: the reader stops
            // there too, with the reason.
            after = positions
                .iter()
                .map(|&i| row.values[i].clone())
                .collect::<Result<Vec<Value>, _>>()
                .ok();
            end.rows += page.rows.len() as u64;
            if chunks.send(page.rows).await.is_err() {
                end.stopped = true;
                return Ok(end);
            }
            if short || after.is_none() {
                return Ok(end);
            }
        }
    }

    /// Whether an index supplies the cursor order of the statement a steady-state pull runs:
    /// the page statement built by the same code as [`Connector::read_page`]'s (the cursor
    /// predicate after the last row in cursor order, the bound, `LIMIT` the batch size; from
    /// the start when the relation holds no row), given to the planner with its parameters
    /// bound (PostgreSQL `EXPLAIN (FORMAT JSON)`, MySQL/MariaDB `EXPLAIN FORMAT=JSON`, SQLite
    /// `EXPLAIN QUERY PLAN`); nothing is executed but the read of that last row (cheap with
    /// such an index; without one, a scan of the table that keeps one row). For a table
    /// without such an index it gives the statement that creates one.
    async fn plan_order(&self, request: &OrderRequest<'_>) -> Result<OrderPlan, ConnectorError> {
        let _ = request;
        Ok(OrderPlan::Unknown {
            why: UnknownOrder::NoPlan,
        })
    }

    /// The rows a page never returns because a cursor column is NULL: how many there are,
    /// and up to `limit` of them (selected columns, in no particular order). Only cursor
    /// columns that may hold NULL are looked at (a `NOT NULL` table column cannot).
    async fn null_cursor_rows(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<NullRows, ConnectorError> {
        let _ = (selection, limit);
        Err(ConnectorError::Config {
            source_name: self.name().to_owned(),
            reason: "null_cursor_rows is not implemented for this source yet".into(),
        })
    }

    /// The rows whose `key` column equals one of `keys` (parameterized, bound with the
    /// column's own type), selected columns in order. For the verification service.
    async fn lookup(&self, selection: &Selection, key: &str, keys: &[Value]) -> Found;
}

/// How to reach a source.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// The configured name.
    pub name: String,
    /// `postgres`, `mysql`, `sqlite` or `files`.
    pub kind: SourceKind,
    /// Connection URL (for SQLite: `sqlite:///path` or a path).
    pub url: String,
    /// Password, from `password_file` or `password_env` (never inline in the URL required).
    pub password: Option<String>,
    /// CA certificate for TLS to the source; none: the system trust store.
    pub ca: Option<std::path::PathBuf>,
    /// Maximum open connections.
    pub pool_size: usize,
    /// Horizon margin when the source turns out to be a replica (it cannot see the primary's
    /// open transactions): the page is bounded by the source's clock minus this.
    pub replica_lag: Duration,
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
    /// A file drop: `url` is the directory (see [`files`]).
    Files,
}

/// Opens a connector for a source. Connecting is lazy: errors from an unreachable source come
/// from the first call, so one broken source never stops the others.
pub fn open(spec: &SourceSpec) -> Result<Arc<dyn Connector>, ConnectorError> {
    Ok(match spec.kind {
        SourceKind::Postgres => Arc::new(postgres::PostgresConnector::new(spec)?),
        SourceKind::Mysql => Arc::new(mysql::MysqlConnector::new(spec)?),
        SourceKind::Sqlite => Arc::new(sqlite::SqliteConnector::new(spec)?),
        SourceKind::Files => Arc::new(files::FilesConnector::new(spec)),
    })
}
