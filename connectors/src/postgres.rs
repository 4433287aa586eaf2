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
//! On first use of a selection the connector prepares `SELECT <columns> FROM <relation> AS src
//! LIMIT 0` to learn the column types (kept per selection until a statement fails or the
//! session is re-established), then builds the select list with the casts above (see
//! `sql.rs` for the query shape). A stored cursor value is bound as text and cast back
//! to the column's own type (`$1::text::"pg_catalog"."timestamptz"`; `bytea` through
//! `decode($1, 'base64')`), so rows are compared and ordered by the column's type, not by
//! the cast used to read it. A cursor column must be NOT NULL.
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
//! - Not covered: prepared (two-phase) transactions, and rows whose cursor value is not the
//!   writing transaction's clock (application-supplied stamps): the safety lag is the margin
//!   for those.
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
//! The connector keeps one session (`pool_size` is not used: pages of one source are read one
//! after another), re-established when it breaks; a read that fails because a reused session
//! broke is retried once on a new session. Connecting times out after 10 s (or the URL's
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
    Bound, ColumnInfo, Columns, Connector, ConnectorError, ConvertError, HorizonInfo, Page,
    PageRequest, Probe, Relation, Row, Selection, SourceSpec, Value,
};

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

/// Reads the horizon; see the module documentation for why each part is what it is.
const HORIZON_SQL: &str = concat!(
    "SELECT pg_catalog.statement_timestamp(), \
     (SELECT pg_catalog.min(a.xact_start) FROM pg_catalog.pg_stat_activity a \
       WHERE a.pid <> pg_catalog.pg_backend_pid() \
         AND a.datname = pg_catalog.current_database() \
         AND a.xact_start IS NOT NULL \
         AND a.backend_type IS DISTINCT FROM 'autovacuum worker'), ",
    sees_all_sql!()
);

/// Reads what `probe` reports.
const PROBE_SQL: &str = concat!(
    "SELECT pg_catalog.current_setting('server_version'), current_user::text, ",
    sees_all_sql!()
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
    /// The one session; `None` until first use and after it broke.
    session: tokio::sync::Mutex<Option<Session>>,
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
}

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
            session: tokio::sync::Mutex::new(None),
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
        if let Some(plan) = self
            .plans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(plan.clone());
        }
        if selection.columns.is_empty() {
            return Err(Failure::Config("the selection reads no column".into()));
        }
        let refs: Vec<String> = selection
            .columns
            .iter()
            .map(|c| column_ref(c, '"'))
            .collect();
        let from = from_clause(&selection.relation, '"');
        let probe = format!("SELECT {} FROM {from} LIMIT 0", refs.join(", "));
        let statement = session.client.prepare(&probe).await?;
        if statement.columns().len() != selection.columns.len() {
            return Err(Failure::Statement(format!(
                "the relation returned {} columns for {} selected",
                statement.columns().len(),
                selection.columns.len()
            )));
        }
        let columns: Vec<PlanColumn> = selection
            .columns
            .iter()
            .zip(statement.columns())
            .map(|(name, column)| PlanColumn {
                name: name.clone(),
                pg_type: column.type_().clone(),
                read: Read::for_type(column.type_()),
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

    /// Reads the horizon (before the page query; see the module documentation).
    async fn horizon(
        &self,
        session: &mut Session,
        safety_lag: Duration,
    ) -> Result<(DateTime<Utc>, HorizonInfo), Failure> {
        let statement = session.prepare(HORIZON_SQL).await?;
        let row = session.client.query_one(&statement, &[]).await?;
        let clock: DateTime<Utc> = row.try_get(0)?;
        let oldest: Option<DateTime<Utc>> = row.try_get(1)?;
        let sees_all: Option<bool> = row.try_get(2)?;
        let (at, info) = match (sees_all.unwrap_or(false), oldest) {
            (false, _) => (clock, HorizonInfo::LagOnly),
            (true, Some(oldest)) if oldest < clock => (
                oldest,
                HorizonInfo::OpenTransaction {
                    since: Value::TimestampTz(oldest).to_text().unwrap_or_default(),
                    session: None,
                },
            ),
            (true, _) => (clock, HorizonInfo::Clock),
        };
        let horizon = TimeDelta::from_std(safety_lag)
            .ok()
            .and_then(|lag| at.checked_sub_signed(lag))
            .ok_or_else(|| Failure::Config("the safety lag is too large".into()))?;
        Ok((horizon, info))
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
        let cursor: Vec<String> = selection
            .cursor
            .iter()
            .map(|c| column_ref(c, '"'))
            .collect();

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
                    let text = match value {
                        Value::Json(j) => serde_json::to_string(j).ok(),
                        other => other.to_text(),
                    };
                    (text, format!("${n}::text::{}", type_sql(&column.pg_type)))
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
        let upper = horizon.map(|(_, kind)| {
            let p = next;
            next += 1;
            match kind {
                HorizonKind::Instant => format!("{} < ${p}::timestamptz", cursor[0]),
                HorizonKind::Date => format!("{} < (${p}::timestamptz)::date", cursor[0]),
            }
        });
        let limit_expr = format!("${next}::int8");
        let sql = PageQuery {
            select_list: &plan.select_list,
            from: &plan.from,
            cursor: &cursor,
            after: request.after.map(|_| after_exprs.as_slice()),
            upper: upper.as_deref(),
            limit: &limit_expr,
        }
        .sql();

        let horizon_at = horizon.map(|(at, _)| at);
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
        let mut params: Vec<&(dyn ToSql + Sync)> =
            texts.iter().map(|t| t as &(dyn ToSql + Sync)).collect();
        if let Some(at) = &horizon_at {
            params.push(at);
        }
        params.push(&limit);

        let statement = session.prepare(&sql).await?;
        let rows = if matches!(selection.relation, Relation::Query(_)) {
            let transaction = session
                .client
                .build_transaction()
                .read_only(true)
                .start()
                .await?;
            let rows = transaction.query(&statement, &params).await?;
            transaction.commit().await?;
            rows
        } else {
            session.client.query(&statement, &params).await?
        };

        let columns: Columns = selection.columns.clone().into();
        let rows = rows
            .iter()
            .map(|row| Row {
                values: plan
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, column)| convert(row, i, column))
                    .collect(),
            })
            .collect();
        Ok(Page {
            columns,
            rows,
            horizon: crate::Horizon {
                info,
                reached: horizon_at,
            },
        })
    }
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
        let mut slot = self.session.lock().await;
        let mut may_retry = true;
        loop {
            let (session, fresh) = self.session(&mut slot).await?;
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
                    self.settle(failure, &mut slot, may_retry && !fresh)?;
                    may_retry = false;
                }
            }
        }
    }

    async fn probe(&self) -> Result<Probe, ConnectorError> {
        let mut slot = self.session.lock().await;
        let mut may_retry = true;
        loop {
            let (session, fresh) = self.session(&mut slot).await?;
            let attempt = async {
                let statement = session.prepare(PROBE_SQL).await?;
                let row = session.client.query_one(&statement, &[]).await?;
                let version: String = row.try_get(0)?;
                let user: String = row.try_get(1)?;
                let sees: Option<bool> = row.try_get(2)?;
                Ok::<_, Failure>((version, user, sees.unwrap_or(false)))
            }
            .await;
            match attempt {
                Ok((version, user, sees)) => {
                    return Ok(Probe {
                        replica: None,
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
                    self.settle(failure, &mut slot, may_retry && !fresh)?;
                    may_retry = false;
                }
            }
        }
    }

    async fn describe(&self, selection: &Selection) -> Result<Vec<ColumnInfo>, ConnectorError> {
        let mut slot = self.session.lock().await;
        let mut may_retry = true;
        loop {
            let (session, fresh) = self.session(&mut slot).await?;
            match self.plan(session, selection).await {
                Ok(plan) => {
                    return Ok(plan
                        .columns
                        .iter()
                        .map(|c| ColumnInfo {
                            name: c.name.clone(),
                            source_type: c.pg_type.name().to_owned(),
                            nullable: None,
                        })
                        .collect());
                }
                Err(failure) => {
                    self.settle(failure, &mut slot, may_retry && !fresh)?;
                    may_retry = false;
                }
            }
        }
    }

    async fn read_page(&self, request: &PageRequest<'_>) -> Result<Page, ConnectorError> {
        let positions = sql::cursor_positions(request.selection, request.after)
            .map_err(|reason| self.config_error(reason))?;
        let mut slot = self.session.lock().await;
        let mut may_retry = true;
        loop {
            let (session, fresh) = self.session(&mut slot).await?;
            match self.read_page_on(session, request, &positions).await {
                Ok(page) => return Ok(page),
                Err(failure) => {
                    let retry = may_retry && (!fresh || matches!(failure, Failure::Stale(_)));
                    self.settle(failure, &mut slot, retry)?;
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
