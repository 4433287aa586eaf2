//! The horizon (late-commit protection) and replicas.
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
//!    server's SYSTEM time zone, not the session's: the connector test
//!    `innodb_trx_started_is_in_the_system_time_zone_not_the_session_zone` pins that a session
//!    in `+05:00` sees it in SYSTEM time; where the system zone is UTC, as on the test server,
//!    SYSTEM and UTC cannot be told apart), and InnoDB starts a transaction at its first row
//!    access, after `NOW()` was fixed for that statement. The safety lag covers what the server cannot show at all: statements
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
//! bounded the page and who holds it (e.g. thread 12, user `hr_app`, client 10.0.0.5:51234),
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

use super::*;

/// `ER_SPECIFIC_ACCESS_DENIED_ERROR`: returned for `innodb_trx` without `PROCESS`.
pub(super) const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;

/// Taken off the horizon where open transactions are seen: `trx_started` has one-second
/// precision, and a statement fixes `NOW()` before its transaction starts in InnoDB.
pub(super) const VISIBILITY_MARGIN: TimeDelta = TimeDelta::seconds(1);

/// A view of open transactions is reused for this long: an older view gives an earlier (more
/// conservative) horizon, never a wrong one, and reading `innodb_trx` at most about once a
/// second per source leaves InnoDB idle time to refresh it.
pub(super) const VIEW_REUSE: Duration = Duration::from_secs(1);

/// InnoDB refreshes the `innodb_trx` cache only when nobody read it for 0.1 s: this process
/// spaces its own reads of one server by this much (see [`innodb_trx_slot`]).
pub(super) const CACHE_IDLE_WAIT: Duration = Duration::from_millis(150);

/// When this process last scheduled a read of `innodb_trx`, per server (`host:port`): shared
/// by every connector, so that sources on one server do not keep each other's view stale.
pub(super) static INNODB_TRX_SLOTS: std::sync::Mutex<BTreeMap<String, Instant>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Waits for this process's next turn to read `innodb_trx` on `server`: at least
/// [`CACHE_IDLE_WAIT`] after its previous read there.
pub(super) async fn innodb_trx_slot(server: &str) {
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
pub(super) const FRESH_VIEW_DEADLINE: Duration = Duration::from_secs(3);

/// The clock, in UTC and in the zone `DATETIME` columns are written in: the bound parameter
/// (the URL's `time_zone`) or, when it is NULL, the server's default `@@global.time_zone`.
pub(super) const CLOCK_SQL: &str = "SELECT UTC_TIMESTAMP(6), \
     CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', COALESCE(?, @@global.time_zone)), \
     COALESCE(?, @@global.time_zone)";

/// Every open transaction, in one scan of the cache: whether it is this session's own
/// (canary), whether it is read-only, its start (converted from the SYSTEM time zone to UTC),
/// and who holds it (thread id, account, client; never what it does).
pub(super) const OPEN_TRX_SQL: &str = "SELECT t.trx_mysql_thread_id = CONNECTION_ID(), \
       t.trx_is_read_only, CONVERT_TZ(t.trx_started, 'SYSTEM', '+00:00'), \
       t.trx_mysql_thread_id, p.USER, p.HOST \
     FROM information_schema.innodb_trx t \
     LEFT JOIN information_schema.processlist p ON p.ID = t.trx_mysql_thread_id";

/// Statements that list a server's replication connections, tried in this order: MariaDB,
/// MySQL 8.0.22 and later, older MySQL. A server that accepts one and lists a row is a replica.
pub(super) const REPLICA_STATUS_SQL: &[&str] = &[
    "SHOW ALL SLAVES STATUS",
    "SHOW REPLICA STATUS",
    "SHOW SLAVE STATUS",
];

/// `ER_PARSE_ERROR`: the server does not know the statement (another flavour's spelling).
pub(super) const ER_PARSE_ERROR: u16 = 1064;

/// What the server showed about its clock and open transactions.
#[derive(Debug, Clone)]
pub(super) struct TrxView {
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
pub(super) enum ReplicaStatus {
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

/// The temporal kinds of a first cursor column that get a horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Temporal {
    Date,
    DateTime,
    Timestamp,
}

impl Temporal {
    pub(super) fn of(column: &Column) -> Option<Self> {
        use ColumnType::*;
        match column.column_type() {
            MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => Some(Self::Date),
            MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => Some(Self::DateTime),
            MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => Some(Self::Timestamp),
            _ => None,
        }
    }
}

impl MysqlConnector {
    /// Computes the horizon for a first cursor column of the given kind: the bound parameter
    /// and the [`crate::Horizon`] it gives the page.
    pub(super) async fn horizon(
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
    pub(super) async fn trx_view(&self, conn: &mut Conn) -> Result<TrxView, ConnectorError> {
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
    pub(super) async fn read_trx_view(&self, conn: &mut Conn) -> Result<TrxView, ConnectorError> {
        let (now_utc, now_zone) = self.read_clock(conn).await?;
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
        (view.sees, view.oldest) = self.read_open_transactions(conn).await?;
        Ok(view)
    }

    /// The server's clock now, in UTC and in the `DATETIME` zone (refused when the server
    /// cannot convert to that zone).
    async fn read_clock(
        &self,
        conn: &mut Conn,
    ) -> Result<(NaiveDateTime, NaiveDateTime), ConnectorError> {
        let zone = self.datetime_zone.clone();
        let clock = self
            .first_row(conn, CLOCK_SQL, (zone.clone(), zone))
            .await?;
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
        Ok((now_utc, now_zone))
    }

    /// Open transactions, from a view of `innodb_trx` proven fresh by a canary transaction
    /// appearing in it: whether they could be seen (the `PROCESS` privilege), and the oldest
    /// read-write one of another session (its start, UTC, and who holds it).
    async fn read_open_transactions(
        &self,
        conn: &mut Conn,
    ) -> Result<(bool, Option<(NaiveDateTime, Option<String>)>), ConnectorError> {
        // Read-only, so that other connectors' views do not count it as a writer.
        let mut options = TxOpts::default();
        options.with_consistent_snapshot(true).with_readonly(true);
        let mut canary = conn
            .start_transaction(options)
            .await
            .map_err(|e| self.error(&e))?;
        let deadline = Instant::now() + FRESH_VIEW_DEADLINE;
        let seen = loop {
            innodb_trx_slot(&self.server).await;
            match canary.exec::<Row, _, _>(OPEN_TRX_SQL, ()).await {
                Ok(rows) => {
                    let rows: Vec<_> = rows.into_iter().map(Row::unwrap_raw).collect();
                    if rows.iter().any(|row| int_at(row, 0) == Some(1)) {
                        let oldest = rows
                            .iter()
                            .filter(|row| int_at(row, 0) == Some(0) && int_at(row, 1) == Some(0))
                            .filter_map(|row| Some((datetime_at(row, 2)?, row)))
                            .min_by_key(|(started, _)| *started)
                            .map(|(started, row)| (started, holder(row)));
                        break (true, oldest);
                    }
                }
                Err(mysql_async::Error::Server(se)) if se.code == ER_SPECIFIC_ACCESS_DENIED => {
                    break (false, None);
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
        };
        canary.rollback().await.map_err(|e| self.error(&e))?;
        Ok(seen)
    }

    /// Whether the server is a replica: the first of [`REPLICA_STATUS_SQL`] it knows lists
    /// its replication connections.
    pub(super) async fn replica_status(
        &self,
        conn: &mut Conn,
    ) -> Result<ReplicaStatus, ConnectorError> {
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
}

/// The replica description used when the server is read-only and the account may not list
/// its replication connections.
pub(super) fn read_only_replica() -> String {
    "the server is read-only (`@@read_only`), so it is taken to be a replica: it cannot see the \
     primary's open transactions, so pages are bounded by its clock minus `replica_lag` and \
     the safety lag"
        .into()
}

/// Who holds an open transaction, from a row of [`OPEN_TRX_SQL`]: thread id, account and
/// client address, never what it does.
pub(super) fn holder(row: &[Option<mysql_async::Value>]) -> Option<String> {
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
