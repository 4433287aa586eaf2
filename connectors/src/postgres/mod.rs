//! PostgreSQL connector (tokio-postgres).
//!
//! # Type mapping (a contract: docs/CONFIG.md repeats it)
//!
//! | PostgreSQL type | [`Value`] |
//! |---|---|
//! | `bool` | `Bool` |
//! | `int2`, `int4`, `int8` | `Int` |
//! | `oid` | `UInt` |
//! | `float4`, `float8` | `Float`; NaN and ±Infinity are a [`ConvertError`]. A `float4` is widened through its shortest decimal form, so `0.1::float4` is `0.1`, not `0.10000000149011612` |
//! | `numeric` | `Decimal`, every digit as PostgreSQL prints it (read as `::text`); `NaN` and ±`Infinity` are a [`ConvertError`] |
//! | `text`, `varchar`, `bpchar` (with its padding), `name` | `Text` |
//! | `date` | `Date` |
//! | `timestamp` | `Timestamp` |
//! | `timestamptz` | `TimestampTz` (UTC) |
//! | `bytea` | `Bytes` |
//! | `json`, `jsonb` | `Json` (read as `::text`; numbers keep every digit; `jsonb` is as the server normalized it) |
//! | every other type (`citext`, `uuid`, `inet`, `interval`, `time`, `money`, enums, arrays, …) | `Text`: the column is cast `::text` in the select list, so the value is PostgreSQL's own text output |
//! | NULL of any type | `Null` |
//!
//! `'infinity'`/`'-infinity'` dates and timestamps (and any outside chrono's range) are a
//! [`ConvertError`] for that cell only. Domains arrive as their base type.
//!
//! # Reading a page
//!
//! Default deny: every selected column is first resolved against the catalogue — for a table
//! or view, its own attributes in `pg_attribute` (`attnum > 0`, not dropped; the name is
//! resolved with `to_regclass`, so schema qualification and `search_path` apply as in the page
//! query); for a query, its output columns (`SELECT * FROM (<query>) AS src LIMIT 0`). A name
//! that is none of them is refused with [`ConnectorError::Config`] naming it: without this
//! check `src.name` on a relation without a column `name` is the function call `name(src)`,
//! which may return the whole row. For tables the prepared statement's result columns must
//! also come from the table (`table_oid`/`column_id`). The check is repeated on every read of
//! a table (one catalogue query), so a column dropped while the agent runs is refused too.
//!
//! On first use of a selection the connector prepares `SELECT <columns> FROM <relation> AS src
//! LIMIT 0` to learn the column types (kept per selection until a statement fails or the
//! session is re-established), then builds the select list with the casts above (see
//! `dialect.rs` for the query shape). A stored cursor value is bound as text and cast back
//! to the column's own type (`$1::text::"pg_catalog"."timestamptz"`; `bytea` through
//! `decode($1, 'base64')`), so rows are compared and ordered by the column's type, not by
//! the cast used to read it. Rows with a NULL in a cursor column have no place in the order:
//! pages leave them out (`IS NOT NULL`; PostgreSQL sorts NULL last) and
//! [`Connector::null_cursor_rows`] counts them and returns a sample (count and sample in one
//! repeatable-read transaction; only cursor columns that are not `NOT NULL` columns of a table
//! are looked at; a cached plan is made again when a column's nullability changed).
//!
//! [`Connector::lookup`] reads `WHERE src.key = ANY($1)`, the keys bound as one `text[]` cast
//! to the key column's own type (`$1::text[]::"pg_catalog"."int8"[]`; `bytea` through
//! `decode`), so they compare as the column's values do and an index on the key is used.
//!
//! A [`Relation::Query`] is read inside `BEGIN READ ONLY`: a query that tries to
//! write (a data-modifying CTE, a volatile function that inserts, `nextval`) is refused by
//! the server.
//!
//! # Streamed reads
//!
//! [`Connector::scan`] runs the page query without `LIMIT` in a read-only transaction, one
//! statement (one snapshot), and streams its rows with `query_raw` into chunks: tokio-postgres
//! stops reading the socket while a chunk waits for the reader, so memory stays bounded and
//! the server waits. The horizon is read before the transaction begins, as for a page. A scan
//! that fails after it sent rows is not retried (the reader has stored them and goes on from
//! its cursor); before that it is retried once on a new session like any read.
//!
//! # Horizon (late-commit protection)
//!
//! With [`Bound::Horizon`] and a first cursor column of type `date`, `timestamp` or
//! `timestamptz`, one statement runs **before** the page query:
//!
//! ```sql
//! SELECT statement_timestamp(),
//!        (SELECT min(xact_start) FROM pg_stat_activity
//!          WHERE pid <> pg_backend_pid() AND pid <> ALL(<this process's own backends>)
//!            AND datname = current_database()
//!            AND xact_start IS NOT NULL AND backend_type <> 'autovacuum worker'),
//!        <the reader is a superuser or a member of pg_read_all_stats>
//! ```
//!
//! `horizon = min(oldest xact_start, statement_timestamp()) − safety_lag`.
//!
//! - Order: the horizon is read before the page query takes its snapshot. A transaction
//!   open when the horizon is read bounds it; one that started later stamps its rows with a
//!   `now()` after the horizon; one that ended before is visible to the page's snapshot
//!   (PostgreSQL clears `xact_start` only after the commit is visible).
//! - `statement_timestamp()` rather than `clock_timestamp()`: it is fixed when the statement
//!   starts, i.e. before `pg_stat_activity` is read, so a transaction that begins between the
//!   two readings still starts after the horizon.
//! - Transactions without an xid are **not** filtered out: a transaction that has not written
//!   yet may still write rows stamped with its `now()` = `xact_start`. Only autovacuum
//!   workers are ignored (they never write user rows, and an anti-wraparound vacuum can run
//!   for hours), and so are this process's own sessions to the same server (their
//!   `pg_backend_pid()`, registered when each connects and removed when it is dropped): the
//!   agent writes nothing to a source, and a long page read of one resource must not hold the
//!   other resources of the database back for as long as it runs. Any other session counts,
//!   whatever its `application_name` says.
//! - The bound is strict, `c1 < horizon`: a row stamped exactly at the start of the oldest open
//!   transaction may belong to that transaction, and reading its equals could move the cursor
//!   past the late row's second cursor column.
//! - `timestamptz` columns compare as instants; a `timestamp` column is compared with
//!   `horizon::timestamptz`, i.e. in the session's `TimeZone` (the connector never changes
//!   it, so it is the server's, role's or database's default — the same one the writing
//!   applications get unless they set their own).
//! - `date` columns use `c1 < horizon::date`: a day is read only once the horizon has passed
//!   midnight after it, because until then a transaction may still write rows stamped with
//!   that day (`current_date`). Daily-stamped rows are therefore delivered the next day.
//! - Without `pg_read_all_stats` other users' `xact_start` is hidden: the horizon is
//!   `statement_timestamp() − safety_lag` and the page reports [`HorizonInfo::LagOnly`];
//!   [`Connector::probe`] names the missing grant.
//! - Prepared (two-phase) transactions of the current database (`pg_prepared_xacts`, visible
//!   to every role) bound the horizon at their `prepared` time
//!   ([`HorizonInfo::PreparedTransaction`]). PostgreSQL does not keep when a prepared
//!   transaction *began*: rows it wrote before `PREPARE TRANSACTION` carry earlier stamps, and
//!   while it was open it bounded the horizon by its `xact_start`; between `PREPARE` and the
//!   next read the bound moves up to `prepared`. The safety lag must cover the time between a
//!   two-phase transaction's first write and its `PREPARE` (usually milliseconds).
//! - A replica — a standby in recovery (`pg_is_in_recovery()`) or a database with a logical
//!   subscription (`pg_subscription` row for the current database, enabled or not; its
//!   `subdbid` column is readable by every role) — cannot see the primary's open transactions:
//!   the bound is also at most `statement_timestamp() − replica_lag`
//!   ([`HorizonInfo::Replica`]; [`SourceSpec::replica_lag`], default 5 min), and
//!   [`Connector::probe`] says which kind of replica it is.
//! - The oldest of these bounds wins; the page reports which ([`HorizonInfo`]), and an open
//!   transaction is named without data: "pid 4711, user `hr_app`, application `psql`, client
//!   10.0.0.5" (from `pg_stat_activity`; "local socket" when there is no client address).
//! - [`crate::Horizon::reached`]: the horizon itself for `timestamp`/`timestamptz` columns;
//!   for `date` columns the midnight (in the session's time zone) that starts the horizon's
//!   day. [`Connector::clock`] is `statement_timestamp()`, the clock the horizon is read from.
//! - Not covered: rows whose cursor value is not the writing transaction's clock
//!   (application-supplied stamps): the safety lag is the margin for those.
//!
//! Other first-cursor-column types are read unbounded ([`HorizonInfo::Unbounded`]).
//!
//! # Connections
//!
//! `sslmode` is taken out of the URL before tokio-postgres sees it. `disable`/`allow` or no
//! `sslmode` (and no CA configured) connect in plaintext; `prefer`, `require`, `verify-ca`,
//! `verify-full` — or no `sslmode` but a CA file — require TLS, with the rustls configuration
//! from [`exchange_protocol::tls::source_client_config`]: the certificate chain **and** the
//! host name are always verified (stronger than libpq's `require`/`verify-ca`), and there is
//! never a fallback to plaintext. [`SourceSpec::password`] overrides a password in the URL.
//! The connector keeps a pool of up to `pool_size` sessions (each with its own cache of
//! prepared statements; the column plans are shared), so concurrent reads — a sync's pages
//! and verification lookups — do not wait for each other. A session is opened on demand, goes
//! back to the pool after each call, and is dropped when it breaks; a read that fails because
//! a reused session broke is retried once on a new session. Connecting times out after 10 s
//! (or the URL's `connect_timeout`).
//!
//! Errors name the source and `host:port/dbname`, never the password. Server messages of the
//! classes that may quote data (22 data exception, 23 integrity, P0 raised by a function) are
//! cut before the quoted part, and `DETAIL` is never reported.
//!
//! # Modules
//!
//! - this module: the connector and the [`Connector`] implementation (pages, NULL-cursor
//!   rows, lookups);
//! - `session`: connecting, TLS, the pool, reconnecting and what a failure means;
//! - `plan`: catalogue resolution (default deny), column types and how values are bound back;
//! - `horizon`: `probe` and the horizon of a page;
//! - `order`: whether an index supplies the cursor order (`EXPLAIN (FORMAT JSON)` of the page
//!   statement), and the index to create when none does;
//! - `convert`: the type mapping of cells to [`Value`]s.

use std::collections::HashMap;
use std::error::Error as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::DbError;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Client, Config, NoTls, Statement};

mod convert;
mod horizon;
mod order;
mod plan;
mod session;

use convert::*;

use plan::*;
use session::*;

use crate::dialect::{self, BindAs, ColumnMeta, Dialect, HorizonCompare, LookupKeys, PageQuery};

/// The SQL text of this connector.
const SQL: Dialect = Dialect::POSTGRES;
use crate::{
    Bound, Chunks, ColumnInfo, Connector, ConnectorError, ConvertError, HorizonInfo, NullRows,
    OrderPlan, OrderRequest, Page, PageRequest, Probe, Relation, Row, ScanEnd, ScanRequest,
    ScanTime, Selection, SourceSpec, Value,
};

/// Runs `$body` with a session of the pool (`$session: &mut Session`), retrying once on a new
/// session when a reused one broke or a prepared statement went stale.
macro_rules! with_session {
    ($self:ident, |$session:ident| $body:expr) => {{
        let mut lease = $self.lease().await;
        let slot = &mut lease.session;
        let mut may_retry = true;
        loop {
            let ($session, fresh) = $self.session(slot).await?;
            match $body {
                Ok(value) => break Ok(value),
                Err(failure) => {
                    let retry = may_retry && (!fresh || matches!(failure, Failure::Stale(_)));
                    $self.settle(failure, slot, retry)?;
                    may_retry = false;
                }
            }
        }
    }};
}

/// Reads a PostgreSQL source.
pub struct PostgresConnector {
    /// The configured source name, in every error.
    name: String,
    /// Connection settings from the URL (without `sslmode`), password applied.
    config: Config,
    /// Whether the connection must use TLS.
    tls: bool,
    /// CA certificate trusted for TLS; none: the system trust store.
    ca: Option<PathBuf>,
    /// `host:port/dbname` for errors; never holds the password.
    address: String,
    /// Sessions not in use, most recently used last.
    idle: StdMutex<Vec<Session>>,
    /// One permit per session that may be open at once (`pool_size`).
    permits: tokio::sync::Semaphore,
    /// Horizon margin when the source is a replica ([`SourceSpec::replica_lag`]).
    replica_lag: Duration,
    /// Column types and select lists learned per selection.
    plans: StdMutex<HashMap<PlanKey, Arc<Plan>>>,
}

impl PostgresConnector {
    /// Prepares a connector from the source's URL; connects lazily.
    pub fn new(spec: &SourceSpec) -> Result<Self, ConnectorError> {
        let config_error = |reason: String| ConnectorError::Config {
            source_name: spec.name.clone(),
            reason,
        };
        let (url, sslmode) = exchange_protocol::tls::take_postgres_sslmode(&spec.url);
        let tls =
            exchange_protocol::tls::postgres_requires_tls(sslmode.as_deref(), spec.ca.is_some())
                .map_err(config_error)?;
        let mut config = Config::from_str(&url)
            .map_err(|e| config_error(format!("the PostgreSQL URL is not valid: {e}")))?;
        if config.get_user().is_none() {
            return Err(config_error(
                "the PostgreSQL URL names no user (postgres://USER@host:port/dbname)".into(),
            ));
        }
        if let Some(password) = &spec.password {
            config.password(password.as_bytes());
        }
        config.ssl_mode(if tls {
            SslMode::Require
        } else {
            SslMode::Disable
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("exchange-agent");
        }
        let address = address_of(&config);
        Ok(Self {
            name: spec.name.clone(),
            config,
            tls,
            ca: spec.ca.clone(),
            address,
            idle: StdMutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(spec.pool_size.max(1)),
            replica_lag: spec.replica_lag,
            plans: StdMutex::new(HashMap::new()),
        })
    }

    fn unreachable(&self, reason: String) -> ConnectorError {
        ConnectorError::Unreachable {
            source_name: self.name.clone(),
            address: self.address.clone(),
            reason,
        }
    }

    fn config_error(&self, reason: String) -> ConnectorError {
        ConnectorError::Config {
            source_name: self.name.clone(),
            reason,
        }
    }

    /// One attempt at [`Connector::null_cursor_rows`] on `session`: the count and the rows
    /// are read in one read-only, repeatable-read transaction, so they agree.
    async fn null_rows_on(
        &self,
        session: &mut Session,
        selection: &Selection,
        limit: usize,
    ) -> Result<NullRows, Failure> {
        let plan = self.plan(session, selection).await?;
        let nullable: Vec<Option<bool>> = plan.columns.iter().map(|c| c.nullable).collect();
        let Some(queries) =
            SQL.null_cursor_queries(selection, &nullable, &plan.select_list, &plan.from)
        else {
            return Ok(NullRows {
                total: 0,
                rows: Vec::new(),
            });
        };
        let count = session.prepare(&queries.count).await?;
        let sample = session.prepare(&queries.rows).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let transaction = session
            .client
            .build_transaction()
            .read_only(true)
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        let total: i64 = transaction.query_one(&count, &[]).await?.try_get(0)?;
        let rows = transaction.query(&sample, &[&limit]).await?;
        transaction.commit().await?;
        Ok(NullRows {
            total: u64::try_from(total).unwrap_or(0),
            rows: convert_rows(&plan, &rows),
        })
    }

    /// One attempt at [`Connector::lookup`] on `session`.
    async fn lookup_on(
        &self,
        session: &mut Session,
        selection: &Selection,
        key: &str,
        keys: &[Value],
    ) -> Result<Vec<Row>, Failure> {
        let plan = self.plan(session, selection).await?;
        let column = plan.columns.iter().find(|c| c.name == key).ok_or_else(|| {
            Failure::Config(format!(
                "the key column `{key}` is not among the selected columns"
            ))
        })?;
        let texts: Vec<String> = keys
            .iter()
            .filter(|k| !matches!(k, Value::Null))
            .map(|k| {
                bind_text(k).ok_or_else(|| {
                    Failure::Config(format!("a lookup value for column `{key}` cannot be bound"))
                })
            })
            .collect::<Result<_, _>>()?;
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // The array is bound as text[] and cast to the key column's own type, so keys
        // compare as the column's values do (and an index on the key is used).
        let p = SQL.param(1);
        let array = if column.read == Read::Bytes {
            format!(
                "ARRAY(SELECT pg_catalog.decode(k, 'base64') FROM pg_catalog.unnest({p}::text[]) \
                 AS k)"
            )
        } else {
            format!("{p}::text[]::{}[]", type_sql(&column.pg_type))
        };
        let sql = SQL.lookup_sql(
            &plan.select_list,
            &plan.from,
            key,
            LookupKeys::Array(&array),
        );
        let statement = session.prepare(&sql).await?;
        let read_only = matches!(selection.relation, Relation::Query(_));
        let rows = query_rows(&mut session.client, &statement, &[&texts], read_only).await?;
        Ok(convert_rows(&plan, &rows))
    }

    /// The statement of a read on `session` (the horizon read first, see
    /// [`PostgresConnector::bound_of`]): its plan, text, parameters in order and bound.
    async fn page_statement(
        &self,
        session: &mut Session,
        read: ReadRequest<'_>,
        positions: &[usize],
    ) -> Result<PageStatement, Failure> {
        let selection = read.selection;
        let plan = self.plan(session, selection).await?;

        // Stored cursor values are bound as text and cast back to the column's own type.
        let mut after = Vec::new();
        if let Some(values) = read.after {
            for (value, &pos) in values.iter().zip(positions) {
                let column = &plan.columns[pos];
                let text = bind_text(value).ok_or_else(|| {
                    Failure::Config(format!(
                        "the stored cursor value of column `{}` cannot be bound",
                        column.name
                    ))
                })?;
                after.push((column, type_sql(&column.pg_type), text));
            }
        }

        let (horizon, bounded) = self
            .bound_of(session, &plan, positions[0], read.bound)
            .await?;
        let (sql, params) = SQL.page_query::<Param>(PageQuery {
            select_list: &plan.select_list,
            from: &plan.from,
            cursor: &selection.cursor,
            after: read.after.map(|_| {
                after
                    .iter()
                    .map(|(column, ty, text)| (column.bind_as(ty), Arc::new(text.clone()) as Param))
                    .collect()
            }),
            horizon: horizon.map(|(kind, at)| (kind, Arc::new(at) as Param)),
            limit: read.limit.map(|l| Arc::new(l) as Param),
        });
        Ok(PageStatement {
            plan,
            sql,
            params,
            bounded,
        })
    }

    /// One attempt at a read on `session`: a page (`limit`, rows collected) or a scan (no
    /// limit, rows sent to `out` as they arrive).
    async fn read_on(
        &self,
        session: &mut Session,
        read: ReadRequest<'_>,
        positions: &[usize],
        out: &mut Out<'_>,
    ) -> Result<(Vec<Row>, crate::Horizon), Failure> {
        let PageStatement {
            plan,
            sql,
            params,
            bounded,
        } = self.page_statement(session, read, positions).await?;
        let params = param_refs(&params);
        let statement = session.prepare(&sql).await?;
        let read_only = matches!(read.selection.relation, Relation::Query(_));
        let rows = match out {
            Out::Collect => {
                let rows = query_rows(&mut session.client, &statement, &params, read_only).await?;
                convert_rows(&plan, &rows)
            }
            Out::Stream(stream) => {
                stream_rows(&mut session.client, &statement, &params, &plan, stream).await?;
                Vec::new()
            }
        };
        Ok((rows, bounded))
    }

    /// The upper bound of a read whose first cursor column is `plan.columns[first]`: the
    /// horizon to bind (none when unbounded) and what it guarantees. Read before the read's
    /// snapshot is taken (see the module documentation).
    async fn bound_of(
        &self,
        session: &mut Session,
        plan: &Plan,
        first: usize,
        bound: Bound,
    ) -> Result<(Option<(HorizonCompare, DateTime<Utc>)>, crate::Horizon), Failure> {
        let kind = match plan.columns[first].read {
            Read::Date => Some(HorizonCompare::Date),
            Read::Timestamp | Read::TimestampTz => Some(HorizonCompare::Instant),
            _ => None,
        };
        let (horizon, info) = match (bound, kind) {
            (Bound::Horizon { safety_lag }, Some(kind)) => {
                let (at, info) = self.horizon(session, safety_lag).await?;
                (Some((kind, at)), info)
            }
            _ => (None, HorizonInfo::Unbounded),
        };
        let reached = match horizon {
            // A day is read once the bound's day has begun: rows committed before the
            // midnight (in the session's time zone) that starts it are all below the bound.
            Some((HorizonCompare::Date, at)) => Some(
                session
                    .client
                    .query_one("SELECT (($1::timestamptz)::date)::timestamptz", &[&at])
                    .await?
                    .try_get(0)?,
            ),
            Some((HorizonCompare::Instant, at)) => Some(at),
            None => None,
        };
        Ok((horizon, crate::Horizon { info, reached }))
    }
}

/// What a read asks for: a [`PageRequest`] whose limit is optional.
#[derive(Clone, Copy)]
struct ReadRequest<'a> {
    selection: &'a Selection,
    after: Option<&'a [Value]>,
    bound: Bound,
    limit: Option<i64>,
}

/// A parameter of a statement, owned (so a statement can be built apart from its run).
type Param = Arc<dyn ToSql + Send + Sync>;

/// The parameters as tokio-postgres takes them.
fn param_refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect()
}

/// The statement of a read, built by [`PostgresConnector::page_statement`].
struct PageStatement {
    /// The plan of its selection.
    plan: Arc<Plan>,
    /// Its text ([`Dialect::page_query`]).
    sql: String,
    /// Its parameters, in order.
    params: Vec<Param>,
    /// How it is bounded.
    bounded: crate::Horizon,
}

/// Where a read's rows go.
enum Out<'a> {
    /// Returned together (a page).
    Collect,
    /// Sent as they arrive (a scan).
    Stream(Streamed<'a>),
}

/// The channel of a scan, what was sent to it and how long the statement took.
struct Streamed<'a> {
    chunks: &'a Chunks,
    chunk: usize,
    sent: u64,
    stopped: bool,
    time: ScanTime,
}

/// Runs `statement` in a read-only transaction (one snapshot) and sends its rows, converted,
/// in chunks as they arrive; the server's stream waits while the channel is full. A closed
/// channel stops the read.
async fn stream_rows(
    client: &mut Client,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
    plan: &Plan,
    out: &mut Streamed<'_>,
) -> Result<(), tokio_postgres::Error> {
    use futures_util::TryStreamExt;
    let transaction = client.build_transaction().read_only(true).start().await?;
    let started = std::time::Instant::now();
    let rows = transaction
        .query_raw(statement, params.iter().copied())
        .await?;
    let mut rows = std::pin::pin!(rows);
    let chunk = out.chunk.max(1);
    let mut pending = Vec::with_capacity(chunk);
    let mut first = true;
    while let Some(row) = rows.try_next().await? {
        if std::mem::take(&mut first) {
            out.time.first_row = started.elapsed();
        }
        if pending.is_empty() && !crate::room_for_a_chunk(out.chunks).await {
            out.stopped = true;
            out.time.total = started.elapsed();
            return Ok(());
        }
        pending.push(convert_row(plan, &row));
        if pending.len() >= chunk {
            out.sent += pending.len() as u64;
            let full = std::mem::replace(&mut pending, Vec::with_capacity(chunk));
            if out.chunks.send(full).await.is_err() {
                out.stopped = true;
                out.time.total = started.elapsed();
                // Dropping the transaction rolls it back; the rest of the rows are not read.
                return Ok(());
            }
        }
    }
    if first {
        out.time.first_row = started.elapsed();
    }
    if !pending.is_empty() {
        out.sent += pending.len() as u64;
        out.stopped = out.chunks.send(pending).await.is_err();
    }
    out.time.total = started.elapsed();
    transaction.commit().await
}

#[async_trait]
impl Connector for PostgresConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn clock(&self) -> Result<DateTime<Utc>, ConnectorError> {
        with_session!(self, |session| async {
            let row = session
                .client
                .query_one("SELECT pg_catalog.statement_timestamp()", &[])
                .await?;
            Ok::<DateTime<Utc>, Failure>(row.try_get(0)?)
        }
        .await)
    }

    async fn probe(&self) -> Result<Probe, ConnectorError> {
        with_session!(self, |session| self.probe_on(session).await)
    }

    async fn describe(&self, selection: &Selection) -> Result<Vec<ColumnInfo>, ConnectorError> {
        let plan = with_session!(self, |session| self.plan(session, selection).await)?;
        Ok(plan
            .columns
            .iter()
            .map(|c| ColumnInfo {
                name: c.name.clone(),
                source_type: c.pg_type.name().to_owned(),
                nullable: c.nullable,
            })
            .collect())
    }

    async fn null_cursor_rows(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<NullRows, ConnectorError> {
        dialect::cursor_positions(selection, None).map_err(|reason| self.config_error(reason))?;
        with_session!(self, |session| self
            .null_rows_on(session, selection, limit)
            .await)
    }

    async fn lookup(&self, selection: &Selection, key: &str, keys: &[Value]) -> crate::Found {
        with_session!(self, |session| self
            .lookup_on(session, selection, key, keys)
            .await)
    }

    async fn plan_order(&self, request: &OrderRequest<'_>) -> Result<OrderPlan, ConnectorError> {
        let positions = dialect::cursor_positions(request.selection, None)
            .map_err(|reason| self.config_error(reason))?;
        with_session!(self, |session| self
            .order_on(session, request, &positions)
            .await)
    }

    async fn scan(
        &self,
        request: &ScanRequest<'_>,
        chunks: &Chunks,
    ) -> Result<ScanEnd, ConnectorError> {
        let positions = dialect::cursor_positions(request.selection, request.after)
            .map_err(|reason| self.config_error(reason))?;
        let read = ReadRequest {
            selection: request.selection,
            after: request.after,
            bound: request.bound,
            limit: None,
        };
        let mut lease = self.lease().await;
        let slot = &mut lease.session;
        let mut may_retry = true;
        loop {
            let (session, fresh) = self.session(slot).await?;
            let mut out = Out::Stream(Streamed {
                chunks,
                chunk: request.chunk,
                sent: 0,
                stopped: false,
                time: ScanTime::default(),
            });
            let result = self.read_on(session, read, &positions, &mut out).await;
            let Out::Stream(stream) = out else {
                unreachable!("a scan streams")
            };
            match result {
                Ok((_, horizon)) => {
                    return Ok(ScanEnd {
                        horizon,
                        rows: stream.sent,
                        stopped: stream.stopped,
                        time: stream.time,
                    });
                }
                Err(failure) => {
                    // Once rows were sent a retry would send them again: the reader, whose
                    // cursor moved with what it stored, reads on from there.
                    let retry = may_retry
                        && stream.sent == 0
                        && (!fresh || matches!(failure, Failure::Stale(_)));
                    self.settle(failure, slot, retry)?;
                    may_retry = false;
                }
            }
        }
    }

    async fn read_page(&self, request: &PageRequest<'_>) -> Result<Page, ConnectorError> {
        let positions = dialect::cursor_positions(request.selection, request.after)
            .map_err(|reason| self.config_error(reason))?;
        let read = ReadRequest {
            selection: request.selection,
            after: request.after,
            bound: request.bound,
            limit: Some(i64::try_from(request.limit).unwrap_or(i64::MAX)),
        };
        let (rows, horizon) = with_session!(self, |session| self
            .read_on(session, read, &positions, &mut Out::Collect)
            .await)?;
        Ok(Page {
            columns: request.selection.columns.clone().into(),
            rows,
            horizon,
        })
    }
}
