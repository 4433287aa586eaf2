//! MySQL and MariaDB sources, read with `mysql_async` over the binary protocol.
//!
//! # Connection
//!
//! The URL is a `mysql_async` URL: `mysql://user[:password]@host[:port]/db[?param=value…]`.
//! [`SourceSpec::password`] overrides a password in the URL; [`SourceSpec::pool_size`] sets
//! the pool's maximum. The connector always connects to the configured `host:port` (it never
//! silently switches to the server's unix socket, which would change the account that logs in
//! and bypass TLS); a unix socket is used only when the URL names one with `socket=/path`.
//!
//! Every connection (new, or reset when it goes back to the pool) runs
//! `SET NAMES utf8mb4, time_zone = '+00:00'`: the server converts every text column, whatever
//! its character set (`gbk`, `gb2312`, `gb18030`, `latin1` …) to UTF-8, and sends `TIMESTAMP`
//! columns in UTC.
//!
//! The connector's own URL parameter `time_zone` (removed before the URL is given to
//! `mysql_async`) names the zone in which the applications write `DATETIME` values, i.e. the
//! session time zone of the writers, in which their `NOW()` is stamped: an offset (`+08:00`;
//! a `+` may also be written `%2B`), `SYSTEM`, or a named zone (`Asia/Shanghai`, which needs
//! the server's time zone tables). Without it, the server's default session zone
//! `@@global.time_zone` is used (`SYSTEM`: the server's system zone), which is what `NOW()`
//! writes in every session that does not set its own zone.
//!
//! # TLS
//!
//! The convention is `mysql_async`'s own: TLS is requested with `?require_ssl=true`. Setting
//! [`SourceSpec::ca`] requests TLS as well. When TLS is requested:
//! - the connection fails if the server does not offer TLS; it never falls back to plaintext;
//! - the server certificate is always verified, chain and host name: `verify_ca=false` and
//!   `verify_identity=false` are refused with a configuration error, as is a `socket=` path
//!   (`mysql_async` does not encrypt unix sockets);
//! - with `ca`, exactly that CA file is trusted; without it, the Mozilla root list built into
//!   `mysql_async` (webpki-roots) is used — not the operating system's store, so a private CA
//!   must be given with `ca`.
//!
//! Other spellings (`ssl-mode=…`, `sslmode=…`) are unknown parameters and refused, never
//! ignored.
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
//!
//! # Pages and the horizon (late-commit protection)
//!
//! A page is `SELECT <columns> FROM <table | (query) AS src> WHERE <cursor> > <after> AND
//! <first cursor column> < <horizon> ORDER BY <cursor> LIMIT n`. The cursor tuple comparison is
//! written `c1 >= ? AND (c1, c2, …) > (?, ?, …)` so the optimizer gets a range on `c1`.
//!
//! With [`Bound::Horizon`] and a first cursor column of type `DATE`, `DATETIME` or `TIMESTAMP`
//! (learnt from the prepared statement's metadata), the horizon is computed in separate
//! statements *before* the page query (a page query's snapshot cannot see a transaction that
//! commits after it; reading the horizon first means such a transaction is already counted):
//!
//! 1. the clock: `now_utc = UTC_TIMESTAMP(6)`, `now_zone = CONVERT_TZ(now_utc, '+00:00',
//!    zone)` where `zone` is the `DATETIME` zone (the URL's `time_zone`, or
//!    `@@global.time_zone`): what `NOW()` returns in a writer's session;
//! 2. whether the server is a replica (below); if so, the horizon is
//!    `now_utc - replica_lag - safety_lag` ([`HorizonInfo::Replica`]) and steps 3–4 are
//!    skipped: a replica cannot see the primary's open transactions;
//! 3. a read-only *canary* transaction `START TRANSACTION WITH CONSISTENT SNAPSHOT` on the
//!    same connection, then, in one scan of `information_schema.innodb_trx` (joined with
//!    `information_schema.processlist` on `trx_mysql_thread_id` for the holder's thread id,
//!    account and client address, never its statement): the oldest `trx_started` of other
//!    sessions' read-write transactions (read-only ones cannot write), converted from the
//!    SYSTEM time zone to UTC, and whether the canary is listed.
//!    `innodb_trx` is a cache that InnoDB refreshes only when nobody has read it for 0.1 s
//!    (observed on MariaDB 10.11: while another session polls it, a new transaction stays
//!    invisible indefinitely). A view that lists the canary was taken after the clock was
//!    read, so every transaction missing from it started after `now_utc`; a view without the
//!    canary is stale and is read again, for at most 3 s, then the page fails with a
//!    statement error rather than guess. All connectors of the process space their reads of
//!    one server's `innodb_trx` by 150 ms, so they never keep it stale themselves, and each
//!    reuses its view for 1 s (an older view only makes the horizon earlier), so a source
//!    reads `innodb_trx` about once a second;
//! 4. `horizon_utc = min(oldest, now_utc) - 1 s - safety_lag`. The fixed second covers what
//!    `innodb_trx` shows coarsely: `trx_started` has one-second precision (and is in the
//!    server's SYSTEM time zone whatever the session's zone: InnoDB formats it with the C
//!    library's local time; the test `innodb_trx_started_is_in_the_system_time_zone_not_the_session_zone`
//!    pins that it does not follow the session zone),
//!    and InnoDB starts a transaction at its first row access, after `NOW()` was fixed for
//!    that statement. The safety lag covers what the server cannot show at all: statements
//!    that waited (e.g. for a lock) between fixing `NOW()` and writing, and timestamps an
//!    application computed before writing them.
//!
//! The bound is strict (`c1 < horizon`): a row stamped exactly at the horizon may still have
//! siblings in a transaction that starts at that instant. The horizon is expressed in the
//! column's own terms:
//! - `TIMESTAMP`: `horizon_utc` (the session time zone is UTC);
//! - `DATETIME`: the same instant in the `DATETIME` zone,
//!   `horizon_zone = horizon_utc + (now_zone - now_utc)` — the zone in which the writers'
//!   `NOW()` stamps them (a writer in another zone than the configured one makes the horizon
//!   wrong by the difference: set `time_zone` in the URL to the writers' zone);
//! - `DATE`: `c1 < DATE(horizon_zone)`. Any transaction that can still write started at or
//!   after the horizon, so it can only write dates from `DATE(horizon_zone)` on; every earlier
//!   date is complete. A row dated today is therefore read only after midnight (in the
//!   `DATETIME` zone) plus the margins, once no transaction from today is open.
//!
//! [`crate::Horizon::reached`] is `horizon_utc` for `TIMESTAMP` and `DATETIME` columns, and
//! the midnight (in the `DATETIME` zone, as UTC) that starts the bound's day for `DATE`.
//!
//! Without the `PROCESS` privilege `innodb_trx` is refused (error 1227): the horizon is
//! `now - safety_lag` ([`HorizonInfo::LagOnly`]) and [`Connector::probe`] names the missing
//! grant. [`HorizonInfo::OpenTransaction`] reports the start (UTC) of the open transaction that
//! bounded the page and who holds it (`thread 12, user `hr_app`, client 10.0.0.5:51234`),
//! [`HorizonInfo::Clock`] a page bounded by the clock alone.
//!
//! # Replicas
//!
//! A server is a replica when it lists a replication connection: `SHOW ALL SLAVES STATUS`
//! (MariaDB), `SHOW REPLICA STATUS` (MySQL 8.0.22+) or `SHOW SLAVE STATUS` (older MySQL), the
//! first the server knows. These need `SLAVE MONITOR` (MariaDB) or `REPLICATION CLIENT`
//! (MySQL); without it (error 1227) `@@read_only = 1` is taken as a replica, and a writable
//! server as a primary, and [`Connector::probe`] names the missing grant. The status is read
//! with each view of open transactions (about once a second).
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
//!
//! A `query` resource is read inside `START TRANSACTION READ ONLY` (after the horizon
//! statement), so a query that tries to write fails.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{NaiveDate, NaiveDateTime, TimeDelta};
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{
    Column, Conn, DriverError, Opts, OptsBuilder, Params, Pool, PoolConstraints, Row, ServerError,
    TxOpts,
};

use crate::{
    Bound, ColumnInfo, Connector, ConnectorError, ConvertError, HorizonInfo, NullRows, Page,
    PageRequest, Probe, Relation, Row as SourceRow, Selection, SourceSpec, Value,
};

/// How long to wait for a connection (connect, TLS, login) before calling the source
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Session setup run on every new or reset connection.
const SESSION_SETUP: &str = "SET NAMES utf8mb4, time_zone = '+00:00'";

/// The `binary` character set: byte strings, not text.
const BINARY_CHARSET: u16 = 63;

/// `ER_SPECIFIC_ACCESS_DENIED_ERROR`: returned for `innodb_trx` without `PROCESS`.
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;

/// Taken off the horizon where open transactions are seen: `trx_started` has one-second
/// precision, and a statement fixes `NOW()` before its transaction starts in InnoDB.
const VISIBILITY_MARGIN: TimeDelta = TimeDelta::seconds(1);

/// A view of open transactions is reused for this long: an older view gives an earlier (more
/// conservative) horizon, never a wrong one, and reading `innodb_trx` at most about once a
/// second per source leaves InnoDB idle time to refresh it.
const VIEW_REUSE: Duration = Duration::from_secs(1);

/// InnoDB refreshes the `innodb_trx` cache only when nobody read it for 0.1 s: this process
/// spaces its own reads of one server by this much (see [`innodb_trx_slot`]).
const CACHE_IDLE_WAIT: Duration = Duration::from_millis(150);

/// When this process last scheduled a read of `innodb_trx`, per server (`host:port`): shared
/// by every connector, so that sources on one server do not keep each other's view stale.
static INNODB_TRX_SLOTS: std::sync::Mutex<BTreeMap<String, Instant>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Waits for this process's next turn to read `innodb_trx` on `server`: at least
/// [`CACHE_IDLE_WAIT`] after its previous read there.
async fn innodb_trx_slot(server: &str) {
    let slot = {
        let mut slots = INNODB_TRX_SLOTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let slot = slots
            .get(server)
            .map_or(now, |last| (*last + CACHE_IDLE_WAIT).max(now));
        slots.insert(server.to_owned(), slot);
        slot
    };
    tokio::time::sleep_until(slot.into()).await;
}

/// How long to wait for a fresh view of `innodb_trx` before giving up on the page.
const FRESH_VIEW_DEADLINE: Duration = Duration::from_secs(3);

/// The clock, in UTC and in the zone `DATETIME` columns are written in: the bound parameter
/// (the URL's `time_zone`) or, when it is NULL, the server's default `@@global.time_zone`.
const CLOCK_SQL: &str = "SELECT UTC_TIMESTAMP(6), \
     CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', COALESCE(?, @@global.time_zone)), \
     COALESCE(?, @@global.time_zone)";

/// Every open transaction, in one scan of the cache: whether it is this session's own
/// (canary), whether it is read-only, its start (converted from the SYSTEM time zone to UTC),
/// and who holds it (thread id, account, client; never what it does).
const OPEN_TRX_SQL: &str = "SELECT t.trx_mysql_thread_id = CONNECTION_ID(), \
       t.trx_is_read_only, CONVERT_TZ(t.trx_started, 'SYSTEM', '+00:00'), \
       t.trx_mysql_thread_id, p.USER, p.HOST \
     FROM information_schema.innodb_trx t \
     LEFT JOIN information_schema.processlist p ON p.ID = t.trx_mysql_thread_id";

/// The columns of a table, with their nullability, from the catalogue (default deny).
const COLUMNS_SQL: &str = "SELECT COLUMN_NAME, IS_NULLABLE FROM information_schema.columns \
     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?";

/// Statements that list a server's replication connections, tried in this order: MariaDB,
/// MySQL 8.0.22 and later, older MySQL. A server that accepts one and lists a row is a replica.
const REPLICA_STATUS_SQL: &[&str] = &[
    "SHOW ALL SLAVES STATUS",
    "SHOW REPLICA STATUS",
    "SHOW SLAVE STATUS",
];

/// `ER_PARSE_ERROR`: the server does not know the statement (another flavour's spelling).
const ER_PARSE_ERROR: u16 = 1064;

/// Keys per `IN (…)` list of a lookup.
const LOOKUP_CHUNK: usize = 1000;

/// Reads a MySQL or MariaDB source.
pub struct MysqlConnector {
    /// The configured source name, for errors and logs.
    name: String,
    /// `host:port/db`, for errors (never the password).
    address: String,
    /// `host:port`, the key of this server's `innodb_trx` reads.
    server: String,
    /// The connection pool; lazy, connects on first use.
    pool: Pool,
    /// The last view of open transactions and when it was taken (see [`VIEW_REUSE`]).
    trx_view: tokio::sync::Mutex<Option<(Instant, TrxView)>>,
    /// The zone `DATETIME` cursor columns are written in (the URL's `time_zone`); `None`: the
    /// server's default session zone, `@@global.time_zone`.
    datetime_zone: Option<String>,
    /// Horizon margin when the server turns out to be a replica.
    replica_lag: Duration,
}

/// What the server showed about its clock and open transactions.
#[derive(Debug, Clone)]
struct TrxView {
    /// UTC clock read before the view was taken: a transaction missing from the view started
    /// after it.
    clock_utc: NaiveDateTime,
    /// The `DATETIME` zone's time minus UTC (see [`MysqlConnector::datetime_zone`]).
    zone_offset: TimeDelta,
    /// Whether open transactions could be seen (the `PROCESS` privilege).
    sees: bool,
    /// Start (UTC) of the oldest open read-write transaction of another session, and who
    /// holds it.
    oldest: Option<(NaiveDateTime, Option<String>)>,
    /// Set when the server is a replica: what it is, as a sentence.
    replica: Option<String>,
}

/// Whether the server replicates from another.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReplicaStatus {
    /// It lists replication connections: a replica, described as a sentence.
    Replica(String),
    /// It lists none.
    Primary,
    /// The account may not list them (error 1227): the missing grant, as a statement.
    Hidden {
        /// The grant that lets the agent see them.
        grant: String,
        /// `@@read_only`: a read-only server is taken to be a replica.
        read_only: bool,
    },
}

/// The selected columns as the server resolved them (default deny passed).
struct Resolved {
    /// Result metadata of each selected column, in selection order.
    columns: Vec<Column>,
    /// Whether each selected column may hold NULL (`None` for a query's columns).
    nullable: Vec<Option<bool>>,
}

impl MysqlConnector {
    /// Prepares a connector; connects lazily.
    pub fn new(spec: &SourceSpec) -> Result<Self, ConnectorError> {
        let config = |reason: String| ConnectorError::Config {
            source_name: spec.name.clone(),
            reason,
        };
        let (url, datetime_zone) = split_url(&spec.url).map_err(config)?;
        let url_opts = Opts::from_url(&url).map_err(|e| {
            config(format!(
                "invalid MySQL URL: {e} (expected mysql://user@host:port/db; \
                 TLS is requested with `?require_ssl=true`)"
            ))
        })?;
        let server = format!("{}:{}", url_opts.ip_or_hostname(), url_opts.tcp_port());
        let address = match url_opts.db_name() {
            Some(db) => format!("{server}/{db}"),
            None => server.clone(),
        };

        let mut ssl = url_opts.ssl_opts().cloned();
        if let Some(ssl) = &ssl {
            if ssl.accept_invalid_certs() {
                return Err(config(
                    "`verify_ca=false` is refused: TLS to a source is always verified; \
                     give the server's CA certificate as `ca` instead"
                        .into(),
                ));
            }
            if ssl.skip_domain_validation() {
                return Err(config(
                    "`verify_identity=false` is refused: TLS to a source is always verified; \
                     connect with the host name in the server certificate"
                        .into(),
                ));
            }
        }
        if let Some(ca) = &spec.ca {
            std::fs::metadata(ca)
                .map_err(|e| config(format!("cannot read CA file {}: {e}", ca.display())))?;
            // A CA file asks for TLS, and it is the only CA trusted.
            ssl = Some(
                ssl.unwrap_or_default()
                    .with_root_certs(vec![ca.clone().into()])
                    .with_disable_built_in_roots(true),
            );
        }
        if ssl.is_some() && url_opts.socket().is_some() {
            return Err(config(
                "`socket=` cannot be combined with TLS (unix socket connections are not \
                 encrypted); connect to host:port"
                    .into(),
            ));
        }

        let max = spec.pool_size.max(1);
        let constraints = PoolConstraints::new(1, max)
            .ok_or_else(|| config(format!("invalid pool size {}", spec.pool_size)))?;
        let pool_opts = url_opts.pool_opts().clone().with_constraints(constraints);

        let mut builder = OptsBuilder::from_opts(url_opts)
            .ssl_opts(ssl)
            .prefer_socket(false)
            .pool_opts(pool_opts)
            .setup(vec![SESSION_SETUP]);
        if let Some(password) = &spec.password {
            builder = builder.pass(Some(password.clone()));
        }

        Ok(Self {
            name: spec.name.clone(),
            address,
            server,
            pool: Pool::new(builder),
            trx_view: tokio::sync::Mutex::new(None),
            datetime_zone,
            replica_lag: spec.replica_lag,
        })
    }

    fn unreachable(&self, reason: String) -> ConnectorError {
        ConnectorError::Unreachable {
            source_name: self.name.clone(),
            address: self.address.clone(),
            reason,
        }
    }

    fn statement(&self, reason: String) -> ConnectorError {
        ConnectorError::Statement {
            source_name: self.name.clone(),
            reason,
        }
    }

    fn config(&self, reason: String) -> ConnectorError {
        ConnectorError::Config {
            source_name: self.name.clone(),
            reason,
        }
    }

    /// Classifies an error from a statement: a broken session is `Unreachable`, a refusal is
    /// `Statement`.
    fn error(&self, e: &mysql_async::Error) -> ConnectorError {
        use mysql_async::Error as E;
        match e {
            E::Server(se) if matches!(se.code, 1040 | 1053 | 1927) => {
                self.unreachable(server_reason(se))
            }
            E::Server(se) => self.statement(server_reason(se)),
            E::Io(_) | E::Driver(DriverError::ConnectionClosed | DriverError::PoolDisconnected) => {
                self.unreachable(error_reason(e))
            }
            E::Url(_) => self.config(error_reason(e)),
            E::Driver(_) | E::Other(_) => self.statement(error_reason(e)),
        }
    }

    /// A connection from the pool, with the session set up.
    async fn conn(&self) -> Result<Conn, ConnectorError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.pool.get_conn()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(mysql_async::Error::Url(e))) => Err(self.config(format!("invalid URL: {e}"))),
            Ok(Err(e)) => Err(self.unreachable(error_reason(&e))),
            Err(_) => Err(self.unreachable(format!(
                "no connection within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Checks the selection's shape; errors are configuration errors.
    fn check_selection(&self, selection: &Selection) -> Result<(), ConnectorError> {
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

    /// Computes the horizon for a first cursor column of the given kind: the bound parameter
    /// and the [`crate::Horizon`] it gives the page.
    async fn horizon(
        &self,
        conn: &mut Conn,
        kind: Temporal,
        safety_lag: Duration,
    ) -> Result<(mysql_async::Value, crate::Horizon), ConnectorError> {
        let lag = TimeDelta::from_std(safety_lag)
            .map_err(|_| self.config("safety lag is too large".into()))?;
        let replica_lag = TimeDelta::from_std(self.replica_lag)
            .map_err(|_| self.config("replica lag is too large".into()))?;
        let view = self.trx_view(conn).await?;
        // The visibility margin applies only where open transactions are seen; without them
        // the lags are all there is.
        let (base, margin, info) = match (&view.replica, view.sees, &view.oldest) {
            (Some(_), _, _) => (
                view.clock_utc - replica_lag,
                TimeDelta::zero(),
                HorizonInfo::Replica {
                    lag: self.replica_lag,
                },
            ),
            (None, true, Some((since, session))) => (
                (*since).min(view.clock_utc),
                VISIBILITY_MARGIN,
                HorizonInfo::OpenTransaction {
                    since: Value::TimestampTz(since.and_utc())
                        .to_text()
                        .unwrap_or_default(),
                    session: session.clone(),
                },
            ),
            (None, true, None) => (view.clock_utc, VISIBILITY_MARGIN, HorizonInfo::Clock),
            (None, false, _) => (view.clock_utc, TimeDelta::zero(), HorizonInfo::LagOnly),
        };
        let horizon_utc = base - margin - lag;
        let horizon_zone = horizon_utc + view.zone_offset;
        let (bound, reached) = match kind {
            Temporal::Timestamp => (datetime_param(horizon_utc), horizon_utc),
            Temporal::DateTime => (datetime_param(horizon_zone), horizon_utc),
            Temporal::Date => {
                // Rows of the bound's day are not read: the instant reached is its midnight.
                let day = horizon_zone.date();
                (
                    date_param(day),
                    day.and_time(chrono::NaiveTime::MIN) - view.zone_offset,
                )
            }
        };
        let bound = bound
            .ok_or_else(|| self.config("the horizon is out of the server's date range".into()))?;
        tracing::debug!(source = %self.name, horizon = ?info, "page horizon");
        Ok((
            bound,
            crate::Horizon {
                info,
                reached: Some(reached.and_utc()),
            },
        ))
    }

    /// The server's view of open transactions: a recent one (see [`VIEW_REUSE`]) or a new one.
    /// Calls are serialized so that this connector's own reads of `innodb_trx` do not keep
    /// InnoDB from refreshing it.
    async fn trx_view(&self, conn: &mut Conn) -> Result<TrxView, ConnectorError> {
        let mut cached = self.trx_view.lock().await;
        if let Some((taken, view)) = &*cached
            && taken.elapsed() < VIEW_REUSE
        {
            return Ok(view.clone());
        }
        let taken = Instant::now();
        let view = self.read_trx_view(conn).await?;
        *cached = Some((taken, view.clone()));
        Ok(view)
    }

    /// Reads the clock, whether the server is a replica, then open transactions from a view of
    /// `innodb_trx` proven fresh: a canary transaction, started after the clock was read, must
    /// appear in it.
    async fn read_trx_view(&self, conn: &mut Conn) -> Result<TrxView, ConnectorError> {
        let zone = self.datetime_zone.clone();
        let clock = conn
            .exec_first::<Row, _, _>(CLOCK_SQL, (zone.clone(), zone))
            .await
            .map_err(|e| self.error(&e))?
            .map(Row::unwrap_raw)
            .unwrap_or_default();
        let now_utc = datetime_at(&clock, 0)
            .ok_or_else(|| self.statement("UTC_TIMESTAMP() returned no timestamp".into()))?;
        let now_zone = datetime_at(&clock, 1).ok_or_else(|| {
            let zone = text_at(&clock, 2).unwrap_or_default();
            self.config(format!(
                "the server cannot convert to the time zone `{zone}` (CONVERT_TZ returned \
                 NULL): give `time_zone` in the URL as an offset such as `+08:00`, or load the \
                 server's time zone tables (mysql_tzinfo_to_sql)"
            ))
        })?;
        let mut view = TrxView {
            clock_utc: now_utc,
            zone_offset: now_zone - now_utc,
            sees: true,
            oldest: None,
            replica: None,
        };
        match self.replica_status(conn).await? {
            ReplicaStatus::Replica(what) => {
                view.replica = Some(what);
                return Ok(view);
            }
            ReplicaStatus::Hidden {
                read_only: true, ..
            } => {
                view.replica = Some(read_only_replica());
                return Ok(view);
            }
            ReplicaStatus::Primary | ReplicaStatus::Hidden { .. } => {}
        }

        // Read-only, so that other connectors' views do not count it as a writer.
        let mut options = TxOpts::default();
        options.with_consistent_snapshot(true).with_readonly(true);
        let mut canary = conn
            .start_transaction(options)
            .await
            .map_err(|e| self.error(&e))?;
        let deadline = Instant::now() + FRESH_VIEW_DEADLINE;
        loop {
            innodb_trx_slot(&self.server).await;
            match canary.exec::<Row, _, _>(OPEN_TRX_SQL, ()).await {
                Ok(rows) => {
                    let rows: Vec<_> = rows.into_iter().map(Row::unwrap_raw).collect();
                    if rows.iter().any(|row| int_at(row, 0) == Some(1)) {
                        view.oldest = rows
                            .iter()
                            .filter(|row| int_at(row, 0) == Some(0) && int_at(row, 1) == Some(0))
                            .filter_map(|row| Some((datetime_at(row, 2)?, row)))
                            .min_by_key(|(started, _)| *started)
                            .map(|(started, row)| (started, holder(row)));
                        break;
                    }
                }
                Err(mysql_async::Error::Server(se)) if se.code == ER_SPECIFIC_ACCESS_DENIED => {
                    view.sees = false;
                    break;
                }
                Err(e) => return Err(self.error(&e)),
            }
            if Instant::now() >= deadline {
                return Err(self.statement(format!(
                    "open transactions could not be read: information_schema.innodb_trx did \
                     not show this session's own transaction within {} s (InnoDB refreshes it \
                     only after 0.1 s without readers, so another session may be reading it \
                     continuously; or this account cannot see other sessions' transactions: \
                     GRANT PROCESS)",
                    FRESH_VIEW_DEADLINE.as_secs()
                )));
            }
        }
        canary.rollback().await.map_err(|e| self.error(&e))?;
        Ok(view)
    }

    /// Whether the server is a replica: the first of [`REPLICA_STATUS_SQL`] it knows lists
    /// its replication connections.
    async fn replica_status(&self, conn: &mut Conn) -> Result<ReplicaStatus, ConnectorError> {
        for sql in REPLICA_STATUS_SQL {
            match conn.query::<Row, _>(*sql).await {
                Ok(rows) => {
                    let Some(row) = rows.first() else {
                        return Ok(ReplicaStatus::Primary);
                    };
                    let get = |names: &[&str]| {
                        names.iter().find_map(|name| {
                            row.get_opt::<Option<String>, _>(*name)
                                .and_then(Result::ok)
                                .flatten()
                                .filter(|v| !v.is_empty())
                        })
                    };
                    let from = match (
                        get(&["Master_Host", "Source_Host"]),
                        get(&["Master_Port", "Source_Port"]),
                    ) {
                        (Some(host), Some(port)) => format!(" of {host}:{port}"),
                        _ => String::new(),
                    };
                    let channels = match rows.len() {
                        1 => String::new(),
                        n => format!(" ({n} replication connections)"),
                    };
                    return Ok(ReplicaStatus::Replica(format!(
                        "the server is a replica{from}{channels}: it cannot see the primary's \
                         open transactions, so pages are bounded by its clock minus \
                         `replica_lag` ({} s) and the safety lag",
                        self.replica_lag.as_secs()
                    )));
                }
                Err(mysql_async::Error::Server(se)) if se.code == ER_PARSE_ERROR => continue,
                Err(mysql_async::Error::Server(se)) if se.code == ER_SPECIFIC_ACCESS_DENIED => {
                    let read_only: Option<i64> = conn
                        .query_first("SELECT @@read_only")
                        .await
                        .map_err(|e| self.error(&e))?;
                    let privilege = if *sql == "SHOW ALL SLAVES STATUS" {
                        "SLAVE MONITOR"
                    } else {
                        "REPLICATION CLIENT"
                    };
                    return Ok(ReplicaStatus::Hidden {
                        grant: format!("GRANT {privilege} ON *.*"),
                        read_only: read_only == Some(1),
                    });
                }
                Err(e) => return Err(self.error(&e)),
            }
        }
        Ok(ReplicaStatus::Primary)
    }

    /// Resolves every selected column against the relation (default deny): a table's columns
    /// in `information_schema.columns`, a query's own output columns; then checks that the
    /// plain `SELECT` of the selection returns exactly the selected columns.
    async fn resolve(
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
    fn check_result_columns(
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
    async fn fetch(
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
    async fn exec_checked<Q: Queryable + Send>(
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
    async fn read_only<'a>(
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

#[async_trait]
impl Connector for MysqlConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn clock(&self) -> Result<chrono::DateTime<chrono::Utc>, ConnectorError> {
        let mut conn = self.conn().await?;
        let row = conn
            .exec_first::<Row, _, _>("SELECT UTC_TIMESTAMP(6)", ())
            .await
            .map_err(|e| self.error(&e))?
            .map(Row::unwrap_raw)
            .unwrap_or_default();
        datetime_at(&row, 0)
            .map(|t| t.and_utc())
            .ok_or_else(|| self.statement("UTC_TIMESTAMP() returned no timestamp".into()))
    }

    async fn probe(&self) -> Result<Probe, ConnectorError> {
        let mut conn = self.conn().await?;
        let row = conn
            .exec_first::<Row, _, _>("SELECT VERSION(), CURRENT_USER()", ())
            .await
            .map_err(|e| self.error(&e))?
            .map(Row::unwrap_raw)
            .unwrap_or_default();
        let version = text_at(&row, 0).unwrap_or_default();
        let account = quote_account(&text_at(&row, 1).unwrap_or_default());
        let product = if version.contains("MariaDB") {
            "MariaDB"
        } else {
            "MySQL"
        };
        let server = format!("{product} {version}");

        let mut missing = Vec::new();
        innodb_trx_slot(&self.server).await;
        let sees_open_transactions = match conn
            .exec_drop("SELECT COUNT(*) FROM information_schema.innodb_trx", ())
            .await
        {
            Ok(()) => true,
            Err(mysql_async::Error::Server(se)) if se.code == ER_SPECIFIC_ACCESS_DENIED => {
                missing.push(format!(
                    "GRANT PROCESS ON *.* TO {account}; -- lets the agent see open \
                     transactions (information_schema.innodb_trx), so rows of transactions \
                     that commit late are not skipped"
                ));
                false
            }
            Err(e) => return Err(self.error(&e)),
        };
        let replica = match self.replica_status(&mut conn).await? {
            ReplicaStatus::Replica(what) => Some(what),
            ReplicaStatus::Primary => None,
            ReplicaStatus::Hidden { grant, read_only } => {
                missing.push(format!(
                    "{grant} TO {account}; -- lets the agent see whether the server is a \
                     replica (a replica cannot see the primary's open transactions){}",
                    if read_only {
                        ""
                    } else {
                        "; until then a writable server is taken to be a primary"
                    }
                ));
                read_only.then(read_only_replica)
            }
        };
        Ok(Probe {
            server,
            sees_open_transactions,
            missing_privilege: (!missing.is_empty()).then(|| missing.join("\n")),
            replica,
        })
    }

    async fn describe(&self, selection: &Selection) -> Result<Vec<ColumnInfo>, ConnectorError> {
        self.check_selection(selection)?;
        let mut conn = self.conn().await?;
        let resolved = self.resolve(&mut conn, selection).await?;
        Ok(selection
            .columns
            .iter()
            .zip(&resolved.columns)
            .zip(&resolved.nullable)
            .map(|((name, column), nullable)| ColumnInfo {
                name: name.clone(),
                source_type: source_type(column),
                nullable: *nullable,
            })
            .collect())
    }

    async fn read_page(&self, request: &PageRequest<'_>) -> Result<Page, ConnectorError> {
        let selection = request.selection;
        self.check_selection(selection)?;
        let positions =
            crate::sql::cursor_positions(selection, request.after).map_err(|e| self.config(e))?;
        let mut conn = self.conn().await?;
        let resolved = self.resolve(&mut conn, selection).await?;
        let cursor_columns: Vec<&Column> =
            positions.iter().map(|&i| &resolved.columns[i]).collect();

        let mut params = Vec::new();
        let mut marks = None;
        if let Some(after) = request.after {
            let after = after
                .iter()
                .map(cursor_param)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.config("a stored cursor value is out of range".into()))?;
            // `c1 >= ?` then `(c1, …) > (?, …)`, or only `c1 > ?`.
            if after.len() > 1 {
                params.push(after[0].clone());
            }
            params.extend(after);
            marks = Some(
                cursor_columns
                    .iter()
                    .map(|c| placeholder(c))
                    .collect::<Vec<_>>(),
            );
        }

        // The horizon is read before the page query, in its own statement.
        let mut horizon = crate::Horizon::unbounded();
        if let (Bound::Horizon { safety_lag }, Some(first)) =
            (request.bound, cursor_columns.first())
            && let Some(kind) = Temporal::of(first)
        {
            let (bound, bounded) = self.horizon(&mut conn, kind, safety_lag).await?;
            params.push(bound);
            horizon = bounded;
        }
        let bounded = horizon.info != HorizonInfo::Unbounded;
        params.push(mysql_async::Value::UInt(request.limit as u64));
        let sql = select_sql(selection, marks.as_deref(), bounded, true);
        let rows = self.fetch(&mut conn, selection, sql, params).await?;
        Ok(Page {
            columns: selection.columns.clone().into(),
            rows,
            horizon,
        })
    }

    async fn null_cursor_rows(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<NullRows, ConnectorError> {
        self.check_selection(selection)?;
        let positions =
            crate::sql::cursor_positions(selection, None).map_err(|e| self.config(e))?;
        let mut conn = self.conn().await?;
        let resolved = self.resolve(&mut conn, selection).await?;
        let nullable: Vec<String> = positions
            .iter()
            .filter(|&&i| resolved.nullable[i] != Some(false))
            .map(|&i| format!("{} IS NULL", quote_ident(&selection.columns[i])))
            .collect();
        if nullable.is_empty() {
            return Ok(NullRows {
                total: 0,
                rows: Vec::new(),
            });
        }
        let condition = nullable.join(" OR ");
        let from = from_sql(&selection.relation);
        // Both statements read one snapshot, so the count and the rows agree.
        let mut tx = self.read_only(&mut conn).await?;
        let total: Option<u64> = tx
            .exec_first(format!("SELECT COUNT(*) FROM {from} WHERE {condition}"), ())
            .await
            .map_err(|e| self.error(&e))?;
        let sql = format!(
            "{} WHERE {condition} LIMIT ?",
            select_sql(selection, None, false, false)
        );
        let rows = self
            .exec_checked(
                &mut tx,
                selection,
                sql,
                vec![mysql_async::Value::UInt(limit as u64)],
            )
            .await?;
        tx.rollback().await.map_err(|e| self.error(&e))?;
        let rows = rows
            .into_iter()
            .map(|row| self.convert_row(&selection.columns, row))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NullRows {
            total: total.unwrap_or(0),
            rows,
        })
    }

    async fn lookup(
        &self,
        selection: &Selection,
        key: &str,
        keys: &[Value],
    ) -> Result<Vec<SourceRow>, ConnectorError> {
        self.check_selection(selection)?;
        let Some(index) = selection.columns.iter().position(|c| c == key) else {
            return Err(self.config(format!(
                "key column `{key}` is not among the selected columns"
            )));
        };
        let mut conn = self.conn().await?;
        let resolved = self.resolve(&mut conn, selection).await?;
        let column = &resolved.columns[index];
        let params = keys
            .iter()
            .map(|k| typed_param(column, k))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                self.config(format!(
                    "a key value does not fit the type of key column `{key}` ({})",
                    source_type(column)
                ))
            })?;
        let mark = placeholder(column);
        let mut rows = Vec::new();
        for chunk in params.chunks(LOOKUP_CHUNK) {
            let sql = format!(
                "{} WHERE {} IN ({})",
                select_sql(selection, None, false, false),
                quote_ident(key),
                vec![mark.as_str(); chunk.len()].join(", ")
            );
            rows.extend(
                self.fetch(&mut conn, selection, sql, chunk.to_vec())
                    .await?,
            );
        }
        Ok(rows)
    }
}

impl MysqlConnector {
    fn convert_row(&self, names: &[String], row: Row) -> Result<SourceRow, ConnectorError> {
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

/// The replica description used when the server is read-only and the account may not list
/// its replication connections.
fn read_only_replica() -> String {
    "the server is read-only (`@@read_only`), so it is taken to be a replica: it cannot see the \
     primary's open transactions, so pages are bounded by its clock minus `replica_lag` and \
     the safety lag"
        .into()
}

/// Who holds an open transaction, from a row of [`OPEN_TRX_SQL`]: thread id, account and
/// client address, never what it does.
fn holder(row: &[Option<mysql_async::Value>]) -> Option<String> {
    let thread = int_at(row, 3)?;
    let mut out = format!("thread {thread}");
    if let Some(user) = text_at(row, 4) {
        out.push_str(&format!(", user `{user}`"));
    }
    if let Some(host) = text_at(row, 5).filter(|h| !h.is_empty()) {
        out.push_str(&format!(", client {host}"));
    }
    Some(out)
}

/// The integer in column `i` of a raw row.
fn int_at(row: &[Option<mysql_async::Value>], i: usize) -> Option<i64> {
    match row.get(i)?.as_ref()? {
        mysql_async::Value::Int(n) => Some(*n),
        mysql_async::Value::UInt(n) => i64::try_from(*n).ok(),
        mysql_async::Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// The text in column `i` of a raw row.
fn text_at(row: &[Option<mysql_async::Value>], i: usize) -> Option<String> {
    match row.get(i)?.as_ref()? {
        mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Whether two column names are the same to the server (MySQL compares them without case).
fn same_name(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// `schema.table` → (`Some(schema)`, `table`); `table` → (`None`, `table`).
fn split_table(name: &str) -> Result<(Option<String>, String), String> {
    match name.split('.').collect::<Vec<_>>().as_slice() {
        [table] => Ok((None, (*table).to_owned())),
        [schema, table] => Ok((Some((*schema).to_owned()), (*table).to_owned())),
        _ => Err(format!("table `{name}` is not `table` or `schema.table`")),
    }
}

/// The temporal kinds of a first cursor column that get a horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Temporal {
    Date,
    DateTime,
    Timestamp,
}

impl Temporal {
    fn of(column: &Column) -> Option<Self> {
        use ColumnType::*;
        match column.column_type() {
            MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => Some(Self::Date),
            MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => Some(Self::DateTime),
            MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => Some(Self::Timestamp),
            _ => None,
        }
    }
}

/// Backtick-quotes one identifier.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes `table` or `schema.table`, each part on its own.
fn quote_table(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

/// The `FROM` item of a relation: a quoted table, or the query as a derived table `src`.
fn from_sql(relation: &Relation) -> String {
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
fn select_sql(
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
fn placeholder(column: &Column) -> String {
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
fn typed_param(column: &Column, value: &Value) -> Option<mysql_async::Value> {
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
fn is_decimal_literal(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Splits the connector's own parameters off a source URL and returns the rest (a
/// `mysql_async` URL) and `time_zone`: the zone the applications write `DATETIME` values in
/// (`+08:00`, `-05:30`, `SYSTEM` or a named zone; a `+` may be written `%2B`).
fn split_url(url: &str) -> Result<(String, Option<String>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut zone = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("time_zone", value)) => {
                let value = percent_decode(value)
                    .filter(|v| valid_zone(v))
                    .ok_or_else(|| {
                        "`time_zone` in the URL is not a time zone: expected an offset such as \
                         `+08:00` (or `%2B08:00`), `SYSTEM`, or a named zone such as \
                         `Asia/Shanghai`"
                            .to_owned()
                    })?;
                zone = Some(value);
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, zone))
}

/// Decodes `%XX` escapes (a `+` stays a `+`).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `±H:MM`/`±HH:MM`, `SYSTEM`, or a zone name (`Asia/Shanghai`, `UTC`).
fn valid_zone(zone: &str) -> bool {
    if let Some(offset) = zone.strip_prefix(['+', '-']) {
        return matches!(offset.split_once(':'), Some((h, m))
            if (1..=2).contains(&h.len()) && m.len() == 2
                && h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()));
    }
    zone.len() <= 64
        && zone.starts_with(|c: char| c.is_ascii_alphabetic())
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
}

/// A stored cursor value as a parameter of the matching MySQL type; `None` if out of range.
fn cursor_param(value: &Value) -> Option<mysql_async::Value> {
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

fn date_param(d: NaiveDate) -> Option<mysql_async::Value> {
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

fn datetime_param(ts: NaiveDateTime) -> Option<mysql_async::Value> {
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

/// A binary-protocol date/time value as a `NaiveDateTime` (`None` for zero or invalid dates).
fn naive_datetime(value: &mysql_async::Value) -> Option<NaiveDateTime> {
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
fn datetime_at(row: &[Option<mysql_async::Value>], i: usize) -> Option<NaiveDateTime> {
    row.get(i)?.as_ref().and_then(naive_datetime)
}

/// `root@127.0.0.1` → `'root'@'127.0.0.1'`.
fn quote_account(current_user: &str) -> String {
    match current_user.rsplit_once('@') {
        Some((user, host)) => format!(
            "'{}'@'{}'",
            user.replace('\'', "''"),
            host.replace('\'', "''")
        ),
        None => "<the agent's account>".into(),
    }
}

/// Server errors whose messages hold only identifiers and SQL text (no row values): passed on
/// as they are. Any other message has its quoted parts hidden, since servers quote values in
/// messages such as "Incorrect datetime value: '…'".
const IDENTIFIER_ONLY_ERRORS: &[u16] = &[
    1044, // access denied to database
    1045, // access denied for user
    1049, // unknown database
    1052, // ambiguous column
    1054, // unknown column
    1060, // duplicate column name
    1064, // syntax error (quotes the statement, which holds no values: they are parameters)
    1109, // unknown table
    1142, // command denied on table
    1143, // command denied on column
    1146, // table does not exist
    1227, // missing privilege
    1248, // derived table needs an alias
    1305, // function does not exist
    1356, // view references invalid objects
    1792, // cannot execute in a read-only transaction
];

fn server_reason(se: &ServerError) -> String {
    let message = if IDENTIFIER_ONLY_ERRORS.contains(&se.code) {
        se.message.clone()
    } else {
        hide_quoted(&se.message)
    };
    format!("ERROR {} ({}): {message}", se.code, se.state)
}

/// Replaces every `'…'` part of a message by `'…'`.
fn hide_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '\'' {
            if inside {
                out.push_str("…'");
            } else {
                out.push('\'');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    if inside {
        out.push('…');
    }
    out
}

/// A message for any `mysql_async` error that never holds a row's values.
fn error_reason(e: &mysql_async::Error) -> String {
    use mysql_async::Error as E;
    match e {
        E::Server(se) => server_reason(se),
        E::Driver(
            DriverError::FromValue { .. }
            | DriverError::FromRow { .. }
            | DriverError::UnexpectedPacket { .. },
        ) => "the driver could not decode the server's answer".into(),
        E::Driver(DriverError::NoClientSslFlagFromServer) => {
            "TLS was requested but the server does not offer TLS (SSL); refusing to connect \
             in plaintext"
                .into()
        }
        E::Driver(d) => d.to_string(),
        E::Io(io) => io.to_string(),
        E::Url(u) => u.to_string(),
        E::Other(o) => o.to_string(),
    }
}

/// The type name of a result column, e.g. `BIGINT UNSIGNED`, `DATETIME`, `VARCHAR`.
fn source_type(column: &Column) -> String {
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
fn convert(
    name: &str,
    column: &Column,
    value: Option<mysql_async::Value>,
) -> Result<Value, ConvertError> {
    use ColumnType::*;
    use mysql_async::Value as M;
    let fail = |reason: &str| ConvertError {
        column: name.to_owned(),
        source_type: source_type(column),
        reason: reason.to_owned(),
    };
    let unexpected = || fail("unexpected wire form for this type");
    let value = match value {
        None => return Err(fail("the driver returned no value")),
        Some(M::NULL) => return Ok(Value::Null),
        Some(v) => v,
    };
    let flags = column.flags();
    let unsigned = flags.contains(ColumnFlags::UNSIGNED_FLAG);
    let is_text_kind = flags.intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG);
    match column.column_type() {
        MYSQL_TYPE_YEAR => match value {
            M::Int(i) => Ok(Value::Int(i)),
            M::UInt(u) => i64::try_from(u).map(Value::Int).map_err(|_| unexpected()),
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG
        | MYSQL_TYPE_LONGLONG => match (value, unsigned) {
            (M::Int(i), false) => Ok(Value::Int(i)),
            (M::Int(i), true) => u64::try_from(i).map(Value::UInt).map_err(|_| unexpected()),
            (M::UInt(u), true) => Ok(Value::UInt(u)),
            (M::UInt(u), false) => i64::try_from(u).map(Value::Int).map_err(|_| unexpected()),
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => match value {
            M::Bytes(b) => String::from_utf8(b)
                .map(Value::Decimal)
                .map_err(|_| fail("decimal is not ASCII text")),
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_FLOAT => match value {
            // The f32's shortest round-trip decimal form, read as f64: 0.1 stays 0.1.
            M::Float(f) if f.is_finite() => f
                .to_string()
                .parse::<f64>()
                .map(Value::Float)
                .map_err(|_| unexpected()),
            M::Double(d) if d.is_finite() => Ok(Value::Float(d)),
            M::Float(_) | M::Double(_) => Err(fail("not a finite number")),
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_DOUBLE => match value {
            M::Double(d) if d.is_finite() => Ok(Value::Float(d)),
            M::Double(_) => Err(fail("not a finite number")),
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_BIT => match value {
            M::Bytes(b) if b.len() <= 8 => Ok(Value::UInt(
                b.iter()
                    .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte)),
            )),
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => match value {
            M::Date(y, mo, d, ..) => calendar_date(y, mo, d).map(Value::Date).map_err(fail),
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => match value {
            M::Date(y, mo, d, h, mi, s, us) => date_time(y, mo, d, h, mi, s, us)
                .map(Value::Timestamp)
                .map_err(fail),
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => match value {
            // The session time zone is UTC, so the server sends UTC.
            M::Date(y, mo, d, h, mi, s, us) => date_time(y, mo, d, h, mi, s, us)
                .map(|ts| Value::TimestampTz(ts.and_utc()))
                .map_err(fail),
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => match value {
            M::Time(negative, days, h, mi, s, us) => {
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
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_JSON => match value {
            M::Bytes(b) => serde_json::from_slice(&b)
                .map(Value::Json)
                .map_err(|_| fail("not a valid JSON document")),
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_STRING
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_SET => match value {
            M::Bytes(b) if column.character_set() == BINARY_CHARSET && !is_text_kind => {
                Ok(Value::Bytes(b))
            }
            M::Bytes(b) => String::from_utf8(b)
                .map(Value::Text)
                .map_err(|_| fail("text is not valid UTF-8")),
            _ => Err(unexpected()),
        },
        MYSQL_TYPE_NULL => Ok(Value::Null),
        _ => Err(fail("unsupported type")),
    }
}

fn calendar_date(y: u16, mo: u8, d: u8) -> Result<NaiveDate, &'static str> {
    if mo == 0 || d == 0 {
        return Err("zero date cannot be converted");
    }
    NaiveDate::from_ymd_opt(i32::from(y), u32::from(mo), u32::from(d)).ok_or("invalid date")
}

fn date_time(
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
    fn the_time_zone_parameter_is_taken_off_the_url() {
        let cases = [
            ("mysql://u@h/db", Ok(("mysql://u@h/db", None))),
            (
                "mysql://u@h/db?time_zone=+08:00",
                Ok(("mysql://u@h/db", Some("+08:00"))),
            ),
            (
                "mysql://u@h/db?require_ssl=true&time_zone=%2B08:00&pool_max=3",
                Ok(("mysql://u@h/db?require_ssl=true&pool_max=3", Some("+08:00"))),
            ),
            (
                "mysql://u@h/db?time_zone=Asia%2FShanghai",
                Ok(("mysql://u@h/db", Some("Asia/Shanghai"))),
            ),
            (
                "mysql://u@h/db?time_zone=SYSTEM",
                Ok(("mysql://u@h/db", Some("SYSTEM"))),
            ),
            ("mysql://u@h/db?time_zone=8", Err(())),
            ("mysql://u@h/db?time_zone='x'", Err(())),
            ("mysql://u@h/db?time_zone=%ZZ", Err(())),
        ];
        for (url, expected) in cases {
            let got = split_url(url);
            match expected {
                Ok((rest, zone)) => {
                    let (got_rest, got_zone) = got.expect(url);
                    assert_eq!(got_rest, rest);
                    assert_eq!(got_zone.as_deref(), zone);
                }
                Err(()) => assert!(got.is_err(), "{url}"),
            }
        }
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

    #[test]
    fn quoted_parts_of_server_messages_are_hidden() {
        let cases = [
            (
                "Incorrect datetime value: '2024-13-01' for column `t`.`c` at row 1",
                "Incorrect datetime value: '…' for column `t`.`c` at row 1",
            ),
            (
                "Duplicate entry '张三' for key 'PRIMARY'",
                "Duplicate entry '…' for key '…'",
            ),
            ("unterminated 'abc", "unterminated '…"),
            ("no quotes", "no quotes"),
        ];
        for (input, expected) in cases {
            assert_eq!(hide_quoted(input), expected);
        }
    }

    #[test]
    fn accounts_are_quoted_for_the_grant_statement() {
        assert_eq!(quote_account("exchange@10.0.0.%"), "'exchange'@'10.0.0.%'");
        assert_eq!(quote_account("o'neil@localhost"), "'o''neil'@'localhost'");
    }

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
