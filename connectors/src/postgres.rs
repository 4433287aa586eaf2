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
//! `sql.rs` for the query shape). A stored cursor value is bound as text and cast back
//! to the column's own type (`$1::text::"pg_catalog"."timestamptz"`; `bytea` through
//! `decode($1, 'base64')`), so rows are compared and ordered by the column's type, not by
//! the cast used to read it. Rows with a NULL in a cursor column are never in a page
//! (`src.c IS NOT NULL` for every cursor column); [`Connector::null_cursor_rows`] counts them
//! and returns a sample (count and sample in one repeatable-read transaction; only cursor
//! columns that are not `NOT NULL` columns of a table are looked at).
//!
//! [`Connector::lookup`] reads `WHERE src.key = ANY($1)`, the keys bound as one `text[]` cast
//! to the key column's own type (`$1::text[]::"pg_catalog"."int8"[]`; `bytea` through
//! `decode`), so they compare as the column's values do and an index on the key is used.
//!
//! A [`Relation::Query`] is read inside `BEGIN READ ONLY`: a query that tries to
//! write (a data-modifying CTE, a volatile function that inserts, `nextval`) is refused by
//! the server.
//!
//! # Horizon (late-commit protection)
//!
//! With [`Bound::Horizon`] and a first cursor column of type `date`, `timestamp` or
//! `timestamptz`, one statement runs **before** the page query:
//!
//! ```sql
//! SELECT statement_timestamp(),
//!        (SELECT min(xact_start) FROM pg_stat_activity
//!          WHERE pid <> pg_backend_pid() AND datname = current_database()
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
//!   for hours).
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
//! a reused session broke is retried once on a new session. Connecting times out after 10 s (or the URL's
//! `connect_timeout`).
//!
//! Errors name the source and `host:port/dbname`, never the password. Server messages of the
//! classes that may quote data (22 data exception, 23 integrity, P0 raised by a function) are
//! cut before the quoted part, and `DETAIL` is never reported.

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

use crate::sql::{self, PageQuery, column_ref, from_clause, quote_ident};
use crate::{
    Bound, ColumnInfo, Columns, Connector, ConnectorError, ConvertError, HorizonInfo, NullRows,
    Page, PageRequest, Probe, Relation, Row, Selection, SourceSpec, Value,
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

/// Connect timeout unless the URL sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per session before the cache is emptied.
const MAX_CACHED_STATEMENTS: usize = 256;

/// True when the reader sees every session's `xact_start`.
macro_rules! sees_all_sql {
    () => {
        "pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') \
         OR coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r \
                       WHERE r.rolname = current_user), false)"
    };
}

/// True when the database is a replica: a physical standby in recovery, or a logical
/// subscriber (a subscription of the current database, enabled or not; `subdbid` is readable
/// by every role).
macro_rules! replica_sql {
    () => {
        "(pg_catalog.pg_is_in_recovery() OR EXISTS (SELECT 1 FROM pg_catalog.pg_subscription s \
           WHERE s.subdbid = (SELECT d.oid FROM pg_catalog.pg_database d \
                               WHERE d.datname = pg_catalog.current_database())))"
    };
}

/// Reads the horizon; see the module documentation for why each part is what it is.
const HORIZON_SQL: &str = concat!(
    "SELECT pg_catalog.statement_timestamp(), o.xact_start, o.pid, o.usename::text, \
            o.application_name, pg_catalog.host(o.client_addr), \
            (SELECT pg_catalog.min(p.prepared) FROM pg_catalog.pg_prepared_xacts p \
              WHERE p.database = pg_catalog.current_database()), ",
    replica_sql!(),
    ", (",
    sees_all_sql!(),
    ") FROM (SELECT 1) AS one LEFT JOIN LATERAL ( \
       SELECT a.xact_start, a.pid, a.usename, a.application_name, a.client_addr \
         FROM pg_catalog.pg_stat_activity a \
        WHERE a.pid <> pg_catalog.pg_backend_pid() \
          AND a.datname = pg_catalog.current_database() \
          AND a.xact_start IS NOT NULL \
          AND a.backend_type IS DISTINCT FROM 'autovacuum worker' \
        ORDER BY a.xact_start LIMIT 1) AS o ON true"
);

/// Reads what `probe` reports.
const PROBE_SQL: &str = concat!(
    "SELECT pg_catalog.current_setting('server_version'), current_user::text, (",
    sees_all_sql!(),
    "), pg_catalog.pg_is_in_recovery(), ",
    replica_sql!()
);

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

/// One open connection and the statements prepared on it.
struct Session {
    /// The tokio-postgres client; its connection task runs on the runtime.
    client: Client,
    /// Prepared statements by SQL text (statements are per connection).
    statements: HashMap<String, Statement>,
}

impl Session {
    /// Prepares `sql`, or returns the statement prepared before on this session.
    async fn prepare(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        if self.statements.len() >= MAX_CACHED_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// The right to use one session of the pool; the session goes back to the idle list when the
/// lease ends, unless it broke.
struct Lease<'a> {
    /// The connector whose pool this lease belongs to.
    pool: &'a StdMutex<Vec<Session>>,
    /// Held while the lease lives: at most `pool_size` leases at once.
    _permit: tokio::sync::SemaphorePermit<'a>,
    /// The session in use; `None` until connected and after it broke.
    session: Option<Session>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && !session.client.is_closed()
        {
            self.pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(session);
        }
    }
}

/// Identifies a selection's plan: relation kind, relation text, columns.
type PlanKey = (bool, String, Vec<String>);

fn plan_key(selection: &Selection) -> PlanKey {
    let (is_query, text) = match &selection.relation {
        Relation::Table(t) => (false, t.clone()),
        Relation::Query(q) => (true, q.clone()),
    };
    (is_query, text, selection.columns.clone())
}

/// What the connector learned about a selection by preparing it.
struct Plan {
    /// One entry per selected column, in selection order.
    columns: Vec<PlanColumn>,
    /// The select list, with the casts of [`Read`].
    select_list: Vec<String>,
    /// The `FROM` item.
    from: String,
}

/// One selected column of a plan.
struct PlanColumn {
    /// The column's name as selected.
    name: String,
    /// Its PostgreSQL type.
    pg_type: Type,
    /// How its value is read.
    read: Read,
    /// Whether it may hold NULL: `Some` for table columns, `None` for view and query columns.
    nullable: Option<bool>,
}

/// The selected columns as found in the catalogue (default deny).
struct Catalogue {
    /// The table's or view's oid; `None` for a query.
    oid: Option<u32>,
    /// One entry per selected column, in selection order.
    columns: Vec<Resolved>,
}

/// One selected column found in the catalogue.
struct Resolved {
    /// Its attribute number in the table or view; `None` for a query column.
    attnum: Option<i16>,
    /// Whether it may hold NULL, when the catalogue says (tables only).
    nullable: Option<bool>,
}

/// The columns of a table or view (`$1`: its quoted, possibly schema-qualified name, resolved
/// with the session's `search_path` like the page query).
const COLUMNS_SQL: &str = "SELECT c.oid, c.relkind::text, a.attname::text, a.attnum, a.attnotnull \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     WHERE c.oid = pg_catalog.to_regclass($1)";

/// How a column is read and converted (the module's type mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    /// Selected `::text`.
    Numeric,
    Text,
    Date,
    Timestamp,
    TimestampTz,
    Bytes,
    /// Selected `::text`, parsed as JSON.
    Json,
    /// Selected `::text`, kept as text.
    CastText,
}

impl Read {
    fn for_type(t: &Type) -> Read {
        const DIRECT: &[(Type, Read)] = &[
            (Type::BOOL, Read::Bool),
            (Type::INT2, Read::Int2),
            (Type::INT4, Read::Int4),
            (Type::INT8, Read::Int8),
            (Type::OID, Read::Oid),
            (Type::FLOAT4, Read::Float4),
            (Type::FLOAT8, Read::Float8),
            (Type::NUMERIC, Read::Numeric),
            (Type::TEXT, Read::Text),
            (Type::VARCHAR, Read::Text),
            (Type::BPCHAR, Read::Text),
            (Type::NAME, Read::Text),
            (Type::DATE, Read::Date),
            (Type::TIMESTAMP, Read::Timestamp),
            (Type::TIMESTAMPTZ, Read::TimestampTz),
            (Type::BYTEA, Read::Bytes),
            (Type::JSON, Read::Json),
            (Type::JSONB, Read::Json),
        ];
        DIRECT
            .iter()
            .find(|(ty, _)| ty == t)
            .map_or(Read::CastText, |(_, read)| *read)
    }

    /// Whether the select list reads the column as `::text`.
    fn selects_text(self) -> bool {
        matches!(self, Read::Numeric | Read::Json | Read::CastText)
    }
}

/// How a first cursor column is bounded by the horizon.
#[derive(Debug, Clone, Copy)]
enum HorizonKind {
    /// `timestamp` or `timestamptz`: `c1 < horizon`.
    Instant,
    /// `date`: `c1 < horizon::date`.
    Date,
}

/// Why an operation on a session failed.
enum Failure {
    /// The session broke or the server is going away: reconnect.
    Broken(String),
    /// A prepared statement no longer matches the relation (schema changed): re-plan.
    Stale(String),
    /// The server refused the statement.
    Statement(String),
    /// The request or configuration is wrong.
    Config(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            let reason = describe_db(db);
            return if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") {
                Failure::Broken(reason)
            } else if code == "0A000" && db.message().contains("cached plan") {
                Failure::Stale(reason)
            } else {
                Failure::Statement(reason)
            };
        }
        let io = e
            .source()
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
        if e.is_closed() || io {
            Failure::Broken(error_reason(&e))
        } else {
            Failure::Statement(error_reason(&e))
        }
    }
}

/// A server error as a sentence without the parts that may quote row values.
fn describe_db(db: &DbError) -> String {
    let code = db.code().code();
    let may_quote_data = ["22", "23", "P0"].iter().any(|c| code.starts_with(c));
    if may_quote_data {
        let message = db.message();
        let cut = message.split(": ").next().unwrap_or(message);
        format!(
            "{cut} (SQLSTATE {code}; the rest of the server's message is withheld because \
             it may quote data)"
        )
    } else {
        match db.hint() {
            Some(hint) => format!("{} (SQLSTATE {code}; hint: {hint})", db.message()),
            None => format!("{} (SQLSTATE {code})", db.message()),
        }
    }
}

/// A client-side error as a sentence, with the TLS explanation when TLS failed.
fn error_reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return describe_db(db);
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(c) = cause {
        let tls = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return format!(
                "TLS handshake failed: {}",
                exchange_protocol::tls::explain(tls)
            );
        }
        cause = c.source();
    }
    e.to_string()
}

/// Removes `sslmode` from a connection string (URL or `key=value` form); returns the rest and
/// the value, lower-cased.
fn take_sslmode(url: &str) -> (String, Option<String>) {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), None);
        };
        let mut mode = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.split_once('=') {
                Some(("sslmode", v)) => {
                    mode = Some(v.to_ascii_lowercase());
                    false
                }
                _ => !pair.is_empty(),
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, mode)
    } else {
        // key=value form: `sslmode` [spaces] `=` [spaces] value
        let mut mode = None;
        let mut rest = String::with_capacity(url.len());
        let mut tail = url;
        while let Some(at) = tail.find("sslmode") {
            let starts_word = at == 0 || tail[..at].ends_with(char::is_whitespace);
            let after = tail[at + "sslmode".len()..].trim_start();
            match after.strip_prefix('=') {
                Some(value) if starts_word => {
                    let value = value.trim_start();
                    let end = value.find(char::is_whitespace).unwrap_or(value.len());
                    mode = Some(value[..end].trim_matches('\'').to_ascii_lowercase());
                    rest.push_str(&tail[..at]);
                    tail = &value[end..];
                }
                _ => {
                    rest.push_str(&tail[..at + "sslmode".len()]);
                    tail = &tail[at + "sslmode".len()..];
                }
            }
        }
        rest.push_str(tail);
        (rest, mode)
    }
}

/// `host:port[,host:port]/dbname` of a configuration.
fn address_of(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(h) if h.contains(':') => format!("[{h}]:{port}"),
                Host::Tcp(h) => format!("{h}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default();
    format!("{hosts}/{db}")
}

impl PostgresConnector {
    /// Prepares a connector from the source's URL; connects lazily.
    pub fn new(spec: &SourceSpec) -> Result<Self, ConnectorError> {
        let config_error = |reason: String| ConnectorError::Config {
            source_name: spec.name.clone(),
            reason,
        };
        let (url, sslmode) = take_sslmode(&spec.url);
        let tls = match sslmode.as_deref() {
            None => spec.ca.is_some(),
            Some("disable" | "allow") => false,
            Some("prefer" | "require" | "verify-ca" | "verify-full") => true,
            Some(other) => {
                return Err(config_error(format!(
                    "unknown sslmode `{other}` in the URL (expected disable, prefer, require, \
                     verify-ca or verify-full)"
                )));
            }
        };
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

    /// Opens a new session and starts its connection task.
    async fn connect(&self) -> Result<Session, ConnectorError> {
        let deadline = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        let timed_out = || {
            self.unreachable(format!(
                "no answer within {} s (connect_timeout)",
                deadline.as_secs()
            ))
        };
        let name = self.name.clone();
        let client = if self.tls {
            let tls_config = exchange_protocol::tls::source_client_config(self.ca.as_deref())
                .map_err(|e| self.config_error(format!("TLS to the source: {e}")))?;
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config);
            let (client, connection) = tokio::time::timeout(deadline, self.config.connect(tls))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| self.unreachable(error_reason(&e)))?;
            tokio::spawn(drive(connection, name));
            client
        } else {
            let (client, connection) = tokio::time::timeout(deadline, self.config.connect(NoTls))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| self.unreachable(error_reason(&e)))?;
            tokio::spawn(drive(connection, name));
            client
        };
        tracing::debug!(
            source = %self.name,
            address = %self.address,
            tls = self.tls,
            "connected to PostgreSQL"
        );
        Ok(Session {
            client,
            statements: HashMap::new(),
        })
    }

    /// Waits for a free place in the pool and takes an idle session if there is one.
    async fn lease(&self) -> Lease<'_> {
        // The semaphore is never closed.
        let permit = self
            .permits
            .acquire()
            .await
            .unwrap_or_else(|_| unreachable!("the pool's semaphore is never closed"));
        let session = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        Lease {
            pool: &self.idle,
            _permit: permit,
            session,
        }
    }

    /// The live session in `slot`, connecting when there is none or it closed; the flag says
    /// whether it is new.
    async fn session<'a>(
        &self,
        slot: &'a mut Option<Session>,
    ) -> Result<(&'a mut Session, bool), ConnectorError> {
        let (session, fresh) = match slot.take() {
            Some(session) if !session.client.is_closed() => (session, false),
            _ => {
                self.forget_plans();
                (self.connect().await?, true)
            }
        };
        Ok((slot.insert(session), fresh))
    }

    fn forget_plans(&self) {
        self.plans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Decides what a failure means: `Ok(())` to retry once more, or the error to return.
    fn settle(
        &self,
        failure: Failure,
        slot: &mut Option<Session>,
        may_retry: bool,
    ) -> Result<(), ConnectorError> {
        match failure {
            Failure::Broken(reason) => {
                *slot = None;
                if may_retry {
                    tracing::info!(
                        source = %self.name,
                        %reason,
                        "PostgreSQL session broke; reconnecting"
                    );
                    Ok(())
                } else {
                    Err(self.unreachable(reason))
                }
            }
            Failure::Stale(reason) => {
                self.forget_plans();
                if let Some(session) = slot.as_mut() {
                    session.statements.clear();
                }
                if may_retry {
                    Ok(())
                } else {
                    Err(ConnectorError::Statement {
                        source_name: self.name.clone(),
                        reason,
                    })
                }
            }
            Failure::Statement(reason) => {
                // The relation may have changed: learn it again next time.
                self.forget_plans();
                if let Some(session) = slot.as_mut() {
                    session.statements.clear();
                }
                Err(ConnectorError::Statement {
                    source_name: self.name.clone(),
                    reason,
                })
            }
            Failure::Config(reason) => Err(self.config_error(reason)),
        }
    }

    /// The plan of a selection, prepared on `session` unless known.
    async fn plan(
        &self,
        session: &mut Session,
        selection: &Selection,
    ) -> Result<Arc<Plan>, Failure> {
        let key = plan_key(selection);
        let cached = self
            .plans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        if let Some(plan) = cached {
            // The table may have changed since (a column dropped, a function of the same name
            // created): resolve the columns again, one cheap catalogue query.
            if matches!(selection.relation, Relation::Table(_)) {
                self.resolve(session, selection, &plan.from).await?;
            }
            return Ok(plan);
        }
        if selection.columns.is_empty() {
            return Err(Failure::Config("the selection reads no column".into()));
        }
        let refs: Vec<String> = sql::column_refs(&selection.columns, '"');
        let from = from_clause(&selection.relation, '"');
        let catalogue = self.resolve(session, selection, &from).await?;
        let probe = format!("SELECT {} FROM {from} LIMIT 0", refs.join(", "));
        let statement = session.client.prepare(&probe).await?;
        if statement.columns().len() != selection.columns.len() {
            return Err(Failure::Statement(format!(
                "the relation returned {} columns for {} selected",
                statement.columns().len(),
                selection.columns.len()
            )));
        }
        // Default deny, second check: each result column must be the relation's own column
        // (a function over the row, `name(src)`, has no origin).
        for ((name, column), resolved) in selection
            .columns
            .iter()
            .zip(statement.columns())
            .zip(&catalogue.columns)
        {
            let origin_ok = match (catalogue.oid, resolved.attnum) {
                (Some(oid), Some(attnum)) => {
                    column.table_oid() == Some(oid) && column.column_id() == Some(attnum)
                }
                _ => true,
            };
            if column.name() != name || !origin_ok {
                return Err(Failure::Config(format!(
                    "column `{name}` does not read the relation's own column of that name; \
                     it is refused (only columns of the table or query may be read)"
                )));
            }
        }
        let columns: Vec<PlanColumn> = selection
            .columns
            .iter()
            .zip(statement.columns())
            .zip(catalogue.columns)
            .map(|((name, column), resolved)| PlanColumn {
                name: name.clone(),
                pg_type: column.type_().clone(),
                read: Read::for_type(column.type_()),
                nullable: resolved.nullable,
            })
            .collect();
        let select_list = columns
            .iter()
            .zip(refs)
            .map(|(c, r)| {
                if c.read.selects_text() {
                    format!("{r}::text")
                } else {
                    r
                }
            })
            .collect();
        let plan = Arc::new(Plan {
            columns,
            select_list,
            from,
        });
        self.plans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, plan.clone());
        Ok(plan)
    }

    /// Resolves every selected column against the catalogue: the table's or view's own
    /// attributes, or the query's output columns. A name that is not one of them is refused
    /// ([`Failure::Config`]) whatever PostgreSQL would make of it (`src.name` is the
    /// function call `name(src)` when the relation has no column `name`).
    async fn resolve(
        &self,
        session: &mut Session,
        selection: &Selection,
        from: &str,
    ) -> Result<Catalogue, Failure> {
        let missing = |column: &str, what: &str| {
            Failure::Config(format!(
                "column `{column}` is not a column of {what}; only the relation's own columns \
                 can be read (check the spelling and the case)"
            ))
        };
        match &selection.relation {
            Relation::Table(table) => {
                let quoted: Vec<String> = table.split('.').map(|p| quote_ident(p, '"')).collect();
                let statement = session.prepare(COLUMNS_SQL).await?;
                let rows = session
                    .client
                    .query(&statement, &[&quoted.join(".")])
                    .await?;
                if rows.is_empty() {
                    // No such relation: preparing the page query names it.
                    session
                        .client
                        .prepare(&format!("SELECT FROM {from} LIMIT 0"))
                        .await?;
                }
                let mut oid = None;
                let mut attributes = Vec::with_capacity(rows.len());
                for row in &rows {
                    oid = Some(row.try_get::<_, u32>(0)?);
                    let kind: String = row.try_get(1)?;
                    let name: String = row.try_get(2)?;
                    let attnum: i16 = row.try_get(3)?;
                    let not_null: bool = row.try_get(4)?;
                    // Only a table's NOT NULL is a promise; a view's columns say nothing.
                    let nullable = matches!(kind.as_str(), "r" | "p").then_some(!not_null);
                    attributes.push((name, attnum, nullable));
                }
                let columns = selection
                    .columns
                    .iter()
                    .map(|c| {
                        attributes
                            .iter()
                            .find(|(name, _, _)| name == c)
                            .map(|(_, attnum, nullable)| Resolved {
                                attnum: Some(*attnum),
                                nullable: *nullable,
                            })
                            .ok_or_else(|| missing(c, &format!("table `{table}`")))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Catalogue { oid, columns })
            }
            Relation::Query(_) => {
                let statement = session
                    .client
                    .prepare(&format!("SELECT * FROM {from} LIMIT 0"))
                    .await?;
                let columns = selection
                    .columns
                    .iter()
                    .map(|c| {
                        statement
                            .columns()
                            .iter()
                            .any(|o| o.name() == c)
                            .then_some(Resolved {
                                attnum: None,
                                nullable: None,
                            })
                            .ok_or_else(|| missing(c, "the query's output"))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Catalogue { oid: None, columns })
            }
        }
    }

    /// Reads the horizon (before the page query; see the module documentation): the instant
    /// below which the first cursor column is read, and why.
    async fn horizon(
        &self,
        session: &mut Session,
        safety_lag: Duration,
    ) -> Result<(DateTime<Utc>, HorizonInfo), Failure> {
        let statement = session.prepare(HORIZON_SQL).await?;
        let row = session.client.query_one(&statement, &[]).await?;
        let clock: DateTime<Utc> = row.try_get(0)?;
        let oldest: Option<DateTime<Utc>> = row.try_get(1)?;
        let pid: Option<i32> = row.try_get(2)?;
        let user: Option<String> = row.try_get(3)?;
        let application: Option<String> = row.try_get(4)?;
        let client: Option<String> = row.try_get(5)?;
        let prepared: Option<DateTime<Utc>> = row.try_get(6)?;
        let replica: Option<bool> = row.try_get(7)?;
        let sees_all: Option<bool> = row.try_get(8)?;
        let sees_all = sees_all.unwrap_or(false);

        let too_large = || Failure::Config("the safety lag or replica lag is too large".into());
        let mut bound = (
            clock,
            if sees_all {
                HorizonInfo::Clock
            } else {
                HorizonInfo::LagOnly
            },
        );
        let mut lower = |at: DateTime<Utc>, info: HorizonInfo| {
            if at < bound.0 {
                bound = (at, info);
            }
        };
        if replica.unwrap_or(false) {
            let at = TimeDelta::from_std(self.replica_lag)
                .ok()
                .and_then(|lag| clock.checked_sub_signed(lag))
                .ok_or_else(too_large)?;
            lower(
                at,
                HorizonInfo::Replica {
                    lag: self.replica_lag,
                },
            );
        }
        if let (true, Some(oldest)) = (sees_all, oldest) {
            lower(
                oldest,
                HorizonInfo::OpenTransaction {
                    since: rfc3339(oldest),
                    session: pid.map(|pid| holder(pid, user, application, client)),
                },
            );
        }
        if let Some(prepared) = prepared {
            lower(
                prepared,
                HorizonInfo::PreparedTransaction {
                    since: rfc3339(prepared),
                },
            );
        }
        let (at, info) = bound;
        let horizon = TimeDelta::from_std(safety_lag)
            .ok()
            .and_then(|lag| at.checked_sub_signed(lag))
            .ok_or_else(too_large)?;
        Ok((horizon, info))
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
        let Some(predicate) = sql::null_cursor_predicate(selection, &nullable, '"') else {
            return Ok(NullRows {
                total: 0,
                rows: Vec::new(),
            });
        };
        let count = session
            .prepare(&format!(
                "SELECT pg_catalog.count(*) FROM {} WHERE {predicate}",
                plan.from
            ))
            .await?;
        let sample = session
            .prepare(&format!(
                "SELECT {} FROM {} WHERE {predicate} LIMIT $1::int8",
                plan.select_list.join(", "),
                plan.from
            ))
            .await?;
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
        let array = if column.read == Read::Bytes {
            "ARRAY(SELECT pg_catalog.decode(k, 'base64') FROM pg_catalog.unnest($1::text[]) AS k)"
                .to_owned()
        } else {
            format!("$1::text[]::{}[]", type_sql(&column.pg_type))
        };
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = ANY({array})",
            plan.select_list.join(", "),
            plan.from,
            column_ref(key, '"')
        );
        let statement = session.prepare(&sql).await?;
        let read_only = matches!(selection.relation, Relation::Query(_));
        let rows = query_rows(&mut session.client, &statement, &[&texts], read_only).await?;
        Ok(convert_rows(&plan, &rows))
    }

    /// One attempt at reading a page on `session`.
    async fn read_page_on(
        &self,
        session: &mut Session,
        request: &PageRequest<'_>,
        positions: &[usize],
    ) -> Result<Page, Failure> {
        let selection = request.selection;
        let plan = self.plan(session, selection).await?;
        let cursor: Vec<String> = sql::column_refs(&selection.cursor, '"');

        let mut texts: Vec<String> = Vec::new();
        let mut after_exprs: Vec<String> = Vec::new();
        if let Some(after) = request.after {
            for (i, (value, &pos)) in after.iter().zip(positions).enumerate() {
                let column = &plan.columns[pos];
                let n = i + 1;
                let (text, expr) = if column.read == Read::Bytes {
                    (
                        value.to_text(),
                        format!("pg_catalog.decode(${n}::text, 'base64')"),
                    )
                } else {
                    (
                        bind_text(value),
                        format!("${n}::text::{}", type_sql(&column.pg_type)),
                    )
                };
                let text = text.ok_or_else(|| {
                    Failure::Config(format!(
                        "the stored cursor value of column `{}` cannot be bound",
                        column.name
                    ))
                })?;
                texts.push(text);
                after_exprs.push(expr);
            }
        }

        let first = &plan.columns[positions[0]];
        let kind = match first.read {
            Read::Date => Some(HorizonKind::Date),
            Read::Timestamp | Read::TimestampTz => Some(HorizonKind::Instant),
            _ => None,
        };
        let (horizon, info) = match (request.bound, kind) {
            (Bound::Horizon { safety_lag }, Some(kind)) => {
                let (at, info) = self.horizon(session, safety_lag).await?;
                (Some((at, kind)), info)
            }
            _ => (None, HorizonInfo::Unbounded),
        };
        let mut next = texts.len() + 1;
        let mut upper = sql::cursor_not_null(&cursor);
        if let Some((_, kind)) = horizon {
            let p = next;
            next += 1;
            upper.push_str(&match kind {
                HorizonKind::Instant => format!(" AND {} < ${p}::timestamptz", cursor[0]),
                HorizonKind::Date => format!(" AND {} < (${p}::timestamptz)::date", cursor[0]),
            });
        }
        let limit_expr = format!("${next}::int8");
        let sql = PageQuery {
            select_list: &plan.select_list,
            from: &plan.from,
            cursor: &cursor,
            after: request.after.map(|_| after_exprs.as_slice()),
            upper: Some(&upper),
            limit: &limit_expr,
        }
        .sql();

        let horizon_at = horizon.map(|(at, _)| at);
        let reached = match horizon {
            // A day is read once the bound's day has begun: rows committed before the
            // midnight (in the session's time zone) that starts it are all below the bound.
            Some((at, HorizonKind::Date)) => Some(
                session
                    .client
                    .query_one("SELECT (($1::timestamptz)::date)::timestamptz", &[&at])
                    .await?
                    .try_get(0)?,
            ),
            Some((at, HorizonKind::Instant)) => Some(at),
            None => None,
        };
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let mut params: Vec<&(dyn ToSql + Sync)> =
            texts.iter().map(|t| t as &(dyn ToSql + Sync)).collect();
        if let Some(at) = &horizon_at {
            params.push(at);
        }
        params.push(&limit);

        let statement = session.prepare(&sql).await?;
        let read_only = matches!(selection.relation, Relation::Query(_));
        let rows = query_rows(&mut session.client, &statement, &params, read_only).await?;
        let columns: Columns = selection.columns.clone().into();
        let rows = convert_rows(&plan, &rows);
        Ok(Page {
            columns,
            rows,
            horizon: crate::Horizon { info, reached },
        })
    }
}

/// An instant as RFC 3339 text (UTC), as [`HorizonInfo`] reports it.
fn rfc3339(at: DateTime<Utc>) -> String {
    Value::TimestampTz(at).to_text().unwrap_or_default()
}

/// Who holds an open transaction, without any data: "pid 4711, user `hr_app`, application
/// `psql`, client 10.0.0.5" (the client is "local socket" for Unix-domain connections).
fn holder(
    pid: i32,
    user: Option<String>,
    application: Option<String>,
    client: Option<String>,
) -> String {
    let mut out = format!("pid {pid}");
    if let Some(user) = user {
        out.push_str(&format!(", user `{user}`"));
    }
    if let Some(application) = application.filter(|a| !a.is_empty()) {
        out.push_str(&format!(", application `{application}`"));
    }
    out.push_str(&format!(
        ", client {}",
        client.as_deref().unwrap_or("local socket")
    ));
    out
}

/// Runs a connection until it closes, logging why it ended.
async fn drive<F>(connection: F, source: String)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::warn!(source = %source, reason = %error_reason(&e), "PostgreSQL session ended");
    }
}

/// A value as the text PostgreSQL parses back into the column's type (`bytea` as base64, to
/// be decoded by the statement); `None` for NULL.
fn bind_text(value: &Value) -> Option<String> {
    match value {
        Value::Json(j) => serde_json::to_string(j).ok(),
        other => other.to_text(),
    }
}

/// Runs `statement`, inside a read-only transaction when `read_only` (query resources).
async fn query_rows(
    client: &mut Client,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
    read_only: bool,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    if read_only {
        let transaction = client.build_transaction().read_only(true).start().await?;
        let rows = transaction.query(statement, params).await?;
        transaction.commit().await?;
        Ok(rows)
    } else {
        client.query(statement, params).await
    }
}

/// Converts the rows of a statement whose select list is `plan.select_list`.
fn convert_rows(plan: &Plan, rows: &[tokio_postgres::Row]) -> Vec<Row> {
    rows.iter()
        .map(|row| Row {
            values: plan
                .columns
                .iter()
                .enumerate()
                .map(|(i, column)| convert(row, i, column))
                .collect(),
        })
        .collect()
}

/// A type's name for a cast, schema-qualified and quoted: `"pg_catalog"."int4"`.
fn type_sql(t: &Type) -> String {
    format!(
        "{}.{}",
        quote_ident(t.schema(), '"'),
        quote_ident(t.name(), '"')
    )
}

/// Converts one cell (the module's type mapping); never panics on data.
fn convert(
    row: &tokio_postgres::Row,
    i: usize,
    column: &PlanColumn,
) -> Result<Value, ConvertError> {
    let fail = |reason: &str| ConvertError {
        column: column.name.clone(),
        source_type: column.pg_type.name().to_owned(),
        reason: reason.to_owned(),
    };
    fn get<'a, T: FromSql<'a>>(
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

#[async_trait]
impl Connector for PostgresConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn clock(&self) -> Result<DateTime<Utc>, ConnectorError> {
        let mut lease = self.lease().await;
        let slot = &mut lease.session;
        let mut may_retry = true;
        loop {
            let (session, fresh) = self.session(slot).await?;
            let attempt = async {
                let row = session
                    .client
                    .query_one("SELECT pg_catalog.statement_timestamp()", &[])
                    .await?;
                Ok::<DateTime<Utc>, Failure>(row.try_get(0)?)
            }
            .await;
            match attempt {
                Ok(t) => return Ok(t),
                Err(failure) => {
                    self.settle(failure, slot, may_retry && !fresh)?;
                    may_retry = false;
                }
            }
        }
    }

    async fn probe(&self) -> Result<Probe, ConnectorError> {
        let mut lease = self.lease().await;
        let slot = &mut lease.session;
        let mut may_retry = true;
        loop {
            let (session, fresh) = self.session(slot).await?;
            let attempt = async {
                let statement = session.prepare(PROBE_SQL).await?;
                let row = session.client.query_one(&statement, &[]).await?;
                let version: String = row.try_get(0)?;
                let user: String = row.try_get(1)?;
                let sees: Option<bool> = row.try_get(2)?;
                let recovery: bool = row.try_get(3)?;
                let replica: Option<bool> = row.try_get(4)?;
                let replica = if recovery {
                    Some(format!(
                        "the server is a standby in recovery (pg_is_in_recovery()): it cannot \
                         see the primary's open transactions, so pages are bounded by the \
                         clock minus replica_lag ({} s)",
                        self.replica_lag.as_secs()
                    ))
                } else if replica.unwrap_or(false) {
                    Some(format!(
                        "the database is a logical-replication subscriber (pg_subscription): \
                         it cannot see the publisher's open transactions, so pages are bounded \
                         by the clock minus replica_lag ({} s)",
                        self.replica_lag.as_secs()
                    ))
                } else {
                    None
                };
                Ok::<_, Failure>((version, user, sees.unwrap_or(false), replica))
            }
            .await;
            match attempt {
                Ok((version, user, sees, replica)) => {
                    return Ok(Probe {
                        replica,
                        server: format!("PostgreSQL {version}"),
                        sees_open_transactions: sees,
                        missing_privilege: (!sees).then(|| {
                            format!(
                                "GRANT pg_read_all_stats TO {}; — without it the agent cannot \
                                 see other sessions' open transactions, so rows that commit \
                                 late are protected by the safety lag only",
                                quote_ident(&user, '"')
                            )
                        }),
                    });
                }
                Err(failure) => {
                    self.settle(failure, slot, may_retry && !fresh)?;
                    may_retry = false;
                }
            }
        }
    }

    async fn describe(&self, selection: &Selection) -> Result<Vec<ColumnInfo>, ConnectorError> {
        let mut lease = self.lease().await;
        let slot = &mut lease.session;
        let mut may_retry = true;
        loop {
            let (session, fresh) = self.session(slot).await?;
            match self.plan(session, selection).await {
                Ok(plan) => {
                    return Ok(plan
                        .columns
                        .iter()
                        .map(|c| ColumnInfo {
                            name: c.name.clone(),
                            source_type: c.pg_type.name().to_owned(),
                            nullable: c.nullable,
                        })
                        .collect());
                }
                Err(failure) => {
                    self.settle(failure, slot, may_retry && !fresh)?;
                    may_retry = false;
                }
            }
        }
    }

    async fn null_cursor_rows(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<NullRows, ConnectorError> {
        sql::cursor_positions(selection, None).map_err(|reason| self.config_error(reason))?;
        with_session!(self, |session| self
            .null_rows_on(session, selection, limit)
            .await)
    }

    async fn lookup(
        &self,
        selection: &Selection,
        key: &str,
        keys: &[Value],
    ) -> Result<Vec<Row>, ConnectorError> {
        with_session!(self, |session| self
            .lookup_on(session, selection, key, keys)
            .await)
    }

    async fn read_page(&self, request: &PageRequest<'_>) -> Result<Page, ConnectorError> {
        let positions = sql::cursor_positions(request.selection, request.after)
            .map_err(|reason| self.config_error(reason))?;
        let mut lease = self.lease().await;
        let slot = &mut lease.session;
        let mut may_retry = true;
        loop {
            let (session, fresh) = self.session(slot).await?;
            match self.read_page_on(session, request, &positions).await {
                Ok(page) => return Ok(page),
                Err(failure) => {
                    let retry = may_retry && (!fresh || matches!(failure, Failure::Stale(_)));
                    self.settle(failure, slot, retry)?;
                    may_retry = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_names_the_session_without_data() {
        assert_eq!(
            holder(
                4711,
                Some("hr_app".into()),
                Some("psql".into()),
                Some("10.0.0.5".into())
            ),
            "pid 4711, user `hr_app`, application `psql`, client 10.0.0.5"
        );
        assert_eq!(
            holder(7, None, Some(String::new()), None),
            "pid 7, client local socket"
        );
    }

    #[test]
    fn sslmode_is_taken_out_of_urls_and_key_value_strings() {
        let cases = [
            ("postgres://u@h/db", "postgres://u@h/db", None),
            (
                "postgres://u:p@h:5/db?sslmode=verify-full",
                "postgres://u:p@h:5/db",
                Some("verify-full"),
            ),
            (
                "postgresql://u@h/db?application_name=x&sslmode=REQUIRE&connect_timeout=3",
                "postgresql://u@h/db?application_name=x&connect_timeout=3",
                Some("require"),
            ),
            (
                "host=h user=u sslmode = verify-ca dbname=d",
                "host=h user=u  dbname=d",
                Some("verify-ca"),
            ),
            ("host=h user=sslmode", "host=h user=sslmode", None),
        ];
        for (url, rest, mode) in cases {
            let (r, m) = take_sslmode(url);
            assert_eq!(r, rest, "{url}");
            assert_eq!(m.as_deref(), mode, "{url}");
        }
    }

    #[test]
    fn tls_is_required_when_the_url_asks_for_any_tls_mode() {
        for (url, tls) in [
            ("postgres://u@h/db", false),
            ("postgres://u@h/db?sslmode=disable", false),
            ("postgres://u@h/db?sslmode=prefer", true),
            ("postgres://u@h/db?sslmode=require", true),
            ("postgres://u@h/db?sslmode=verify-ca", true),
            ("postgres://u@h/db?sslmode=verify-full", true),
        ] {
            let spec = SourceSpec {
                name: "s".into(),
                kind: crate::SourceKind::Postgres,
                url: url.into(),
                password: None,
                ca: None,
                pool_size: 1,
                replica_lag: std::time::Duration::from_secs(300),
            };
            let c = PostgresConnector::new(&spec).unwrap();
            assert_eq!(c.tls, tls, "{url}");
            let expected = if tls {
                SslMode::Require
            } else {
                SslMode::Disable
            };
            assert_eq!(c.config.get_ssl_mode(), expected, "{url}");
        }
    }

    #[test]
    fn address_names_host_port_and_database_without_password() {
        let config = Config::from_str("postgres://u:secret@db.example:6543/hr").unwrap();
        assert_eq!(address_of(&config), "db.example:6543/hr");
        let config = Config::from_str("postgres://u@[::1]/hr").unwrap();
        assert_eq!(address_of(&config), "[::1]:5432/hr");
    }
}
