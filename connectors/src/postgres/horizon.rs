//! The horizon of a page: the oldest open or prepared transaction, the replica lag, the
//! clock, minus the safety lag (see "Horizon" in the module documentation of `postgres`).

use super::*;

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
pub(super) const HORIZON_SQL: &str = concat!(
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
          AND a.pid <> ALL($1::int4[]) \
          AND a.datname = pg_catalog.current_database() \
          AND a.xact_start IS NOT NULL \
          AND a.backend_type IS DISTINCT FROM 'autovacuum worker' \
        ORDER BY a.xact_start LIMIT 1) AS o ON true"
);

/// Reads what `probe` reports.
pub(super) const PROBE_SQL: &str = concat!(
    "SELECT pg_catalog.current_setting('server_version'), current_user::text, (",
    sees_all_sql!(),
    "), pg_catalog.pg_is_in_recovery(), ",
    replica_sql!()
);

impl PostgresConnector {
    /// One attempt at [`Connector::probe`] on `session`.
    pub(super) async fn probe_on(&self, session: &mut Session) -> Result<Probe, Failure> {
        let statement = session.prepare(PROBE_SQL).await?;
        let row = session.client.query_one(&statement, &[]).await?;
        let version: String = row.try_get(0)?;
        let user: String = row.try_get(1)?;
        let sees = row.try_get::<_, Option<bool>>(2)?.unwrap_or(false);
        let recovery: bool = row.try_get(3)?;
        let subscriber = row.try_get::<_, Option<bool>>(4)?.unwrap_or(false);
        let lag = self.replica_lag.as_secs();
        let replica = if recovery {
            Some(format!(
                "the server is a standby in recovery (pg_is_in_recovery()): it cannot see the \
                 primary's open transactions, so pages are bounded by the clock minus \
                 replica_lag ({lag} s)"
            ))
        } else if subscriber {
            Some(format!(
                "the database is a logical-replication subscriber (pg_subscription): it cannot \
                 see the publisher's open transactions, so pages are bounded by the clock minus \
                 replica_lag ({lag} s)"
            ))
        } else {
            None
        };
        Ok(Probe {
            replica,
            server: format!("PostgreSQL {version}"),
            sees_open_transactions: sees,
            missing_privilege: (!sees).then(|| {
                format!(
                    "GRANT pg_read_all_stats TO {}; — without it the agent cannot see other \
                     sessions' open transactions, so rows that commit late are protected by the \
                     safety lag only",
                    SQL.quote_ident(&user)
                )
            }),
        })
    }

    /// Reads the horizon (before the page query; see the module documentation): the instant
    /// below which the first cursor column is read, and why.
    pub(super) async fn horizon(
        &self,
        session: &mut Session,
        safety_lag: Duration,
    ) -> Result<(DateTime<Utc>, HorizonInfo), Failure> {
        let statement = session.prepare(HORIZON_SQL).await?;
        let own = super::session::own_backends(&self.address);
        let row = session.client.query_one(&statement, &[&own]).await?;
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
}

/// An instant as RFC 3339 text (UTC), as [`HorizonInfo`] reports it.
pub(super) fn rfc3339(at: DateTime<Utc>) -> String {
    Value::TimestampTz(at).to_text().unwrap_or_default()
}

/// Who holds an open transaction, without any data: "pid 4711, user `hr_app`, application
/// `psql`, client 10.0.0.5" (the client is "local socket" for Unix-domain connections).
pub(super) fn holder(
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
}
