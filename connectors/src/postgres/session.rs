//! Sessions: connecting (plaintext or verified TLS, never a fallback), the pool of up to
//! `pool_size` sessions with their prepared-statement caches, and what a failure means
//! (reconnect, re-plan, or report).

use super::*;

/// Connect timeout unless the URL sets `connect_timeout`.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per session before the cache is emptied.
pub(super) const MAX_CACHED_STATEMENTS: usize = 256;

/// One open connection and the statements prepared on it.
pub(super) struct Session {
    /// The tokio-postgres client; its connection task runs on the runtime.
    pub(super) client: Client,
    /// Prepared statements by SQL text (statements are per connection).
    pub(super) statements: HashMap<String, Statement>,
    /// This session's backend, one of the process's own until the session is dropped.
    _backend: OwnBackend,
}

/// The server processes (`pg_backend_pid()`) of this process's open sessions, by server
/// address: the horizon never counts them as holding a page back. The agent writes nothing to
/// a source, so a transaction of its own (a long page read of another resource, a lookup of
/// the verification service) can hide no late commit; counted, it would hold the other
/// resources of the same database back for as long as the read runs.
static OWN_BACKENDS: std::sync::Mutex<std::collections::BTreeMap<String, Vec<i32>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// One backend of this process's, registered in [`OWN_BACKENDS`] until dropped with its
/// session.
struct OwnBackend {
    address: String,
    pid: i32,
}

impl OwnBackend {
    fn register(address: &str, pid: i32) -> OwnBackend {
        own_backends_lock()
            .entry(address.to_owned())
            .or_default()
            .push(pid);
        OwnBackend {
            address: address.to_owned(),
            pid,
        }
    }
}

impl Drop for OwnBackend {
    fn drop(&mut self) {
        let mut all = own_backends_lock();
        if let Some(pids) = all.get_mut(&self.address) {
            if let Some(i) = pids.iter().position(|p| *p == self.pid) {
                pids.swap_remove(i);
            }
            if pids.is_empty() {
                all.remove(&self.address);
            }
        }
    }
}

fn own_backends_lock()
-> std::sync::MutexGuard<'static, std::collections::BTreeMap<String, Vec<i32>>> {
    OWN_BACKENDS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The backends of this process's open sessions to the server at `address`.
pub(super) fn own_backends(address: &str) -> Vec<i32> {
    own_backends_lock()
        .get(address)
        .cloned()
        .unwrap_or_default()
}

impl Session {
    /// Prepares `sql`, or returns the statement prepared before on this session.
    pub(super) async fn prepare(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
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
pub(super) struct Lease<'a> {
    /// The connector whose pool this lease belongs to.
    pub(super) pool: &'a StdMutex<Vec<Session>>,
    /// Held while the lease lives: at most `pool_size` leases at once.
    pub(super) _permit: tokio::sync::SemaphorePermit<'a>,
    /// The session in use; `None` until connected and after it broke.
    pub(super) session: Option<Session>,
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

/// Why an operation on a session failed.
pub(super) enum Failure {
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
pub(super) fn describe_db(db: &DbError) -> String {
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
pub(super) fn error_reason(e: &tokio_postgres::Error) -> String {
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
    // Keep the cause ("connection refused", "no route to host", a timeout): tokio-postgres
    // says only "error connecting to server" itself.
    exchange_protocol::cause::chain(e)
}

/// `host:port[,host:port]/dbname` of a configuration.
pub(super) fn address_of(config: &Config) -> String {
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
    /// Opens a new session and starts its connection task.
    pub(super) async fn connect(&self) -> Result<Session, ConnectorError> {
        let deadline = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        let client = if self.tls {
            let tls_config = exchange_protocol::tls::source_client_config(self.ca.as_deref())
                .map_err(|e| self.config_error(format!("TLS to the source: {e}")))?;
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config);
            self.open(tls, deadline).await?
        } else {
            self.open(NoTls, deadline).await?
        };
        tracing::debug!(
            source = %self.name,
            address = %self.address,
            tls = self.tls,
            "connected to PostgreSQL"
        );
        let pid: i32 = client
            .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| self.unreachable(error_reason(&e)))?;
        Ok(Session {
            client,
            statements: HashMap::new(),
            _backend: OwnBackend::register(&self.address, pid),
        })
    }

    /// Connects within `deadline` over `tls` (rustls, or `NoTls`) and starts the connection's
    /// task.
    async fn open<T>(&self, tls: T, deadline: Duration) -> Result<Client, ConnectorError>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = tokio::time::timeout(deadline, self.config.connect(tls))
            .await
            .map_err(|_| {
                self.unreachable(format!(
                    "no answer within {} s (connect_timeout)",
                    deadline.as_secs()
                ))
            })?
            .map_err(|e| self.unreachable(error_reason(&e)))?;
        tokio::spawn(drive(connection, self.name.clone()));
        Ok(client)
    }

    /// Waits for a free place in the pool and takes an idle session if there is one.
    pub(super) async fn lease(&self) -> Lease<'_> {
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
    pub(super) async fn session<'a>(
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

    pub(super) fn forget_plans(&self) {
        self.plans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Decides what a failure means: `Ok(())` to retry once more, or the error to return.
    pub(super) fn settle(
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
}

/// Runs a connection until it closes, logging why it ended.
pub(super) async fn drive<F>(connection: F, source: String)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::warn!(source = %source, reason = %error_reason(&e), "PostgreSQL session ended");
    }
}

/// Runs `statement`, inside a read-only transaction when `read_only` (query resources).
pub(super) async fn query_rows(
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

#[cfg(test)]
mod tests {
    use super::*;

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
