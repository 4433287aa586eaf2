//! The session: connection URL, pool, TLS, session setup, and errors that never hold a value.
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

use super::*;

/// How long to wait for a connection (connect, TLS, login) before calling the source
/// unreachable.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Session setup run on every new or reset connection.
pub(super) const SESSION_SETUP: &str = "SET NAMES utf8mb4, time_zone = '+00:00'";

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

    pub(super) fn unreachable(&self, reason: String) -> ConnectorError {
        ConnectorError::Unreachable {
            source_name: self.name.clone(),
            address: self.address.clone(),
            reason,
        }
    }

    pub(super) fn statement(&self, reason: String) -> ConnectorError {
        ConnectorError::Statement {
            source_name: self.name.clone(),
            reason,
        }
    }

    pub(super) fn config(&self, reason: String) -> ConnectorError {
        ConnectorError::Config {
            source_name: self.name.clone(),
            reason,
        }
    }

    /// Classifies an error from a statement: a broken session is `Unreachable`, a refusal is
    /// `Statement`.
    pub(super) fn error(&self, e: &mysql_async::Error) -> ConnectorError {
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
    pub(super) async fn conn(&self) -> Result<Conn, ConnectorError> {
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

    /// The first row `sql` returns, as raw values (empty when it returns none).
    pub(super) async fn first_row<P: Into<Params> + Send>(
        &self,
        conn: &mut Conn,
        sql: &str,
        params: P,
    ) -> Result<Vec<Option<mysql_async::Value>>, ConnectorError> {
        Ok(conn
            .exec_first::<Row, _, _>(sql, params)
            .await
            .map_err(|e| self.error(&e))?
            .map(Row::unwrap_raw)
            .unwrap_or_default())
    }
}

/// Splits the connector's own parameters off a source URL and returns the rest (a
/// `mysql_async` URL) and `time_zone`: the zone the applications write `DATETIME` values in
/// (`+08:00`, `-05:30`, `SYSTEM` or a named zone; a `+` may be written `%2B`).
pub(super) fn split_url(url: &str) -> Result<(String, Option<String>), String> {
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
pub(super) fn percent_decode(s: &str) -> Option<String> {
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
pub(super) fn valid_zone(zone: &str) -> bool {
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

/// `root@127.0.0.1` → `'root'@'127.0.0.1'`.
pub(super) fn quote_account(current_user: &str) -> String {
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
pub(super) const IDENTIFIER_ONLY_ERRORS: &[u16] = &[
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

pub(super) fn server_reason(se: &ServerError) -> String {
    let message = if IDENTIFIER_ONLY_ERRORS.contains(&se.code) {
        se.message.clone()
    } else {
        hide_quoted(&se.message)
    };
    format!("ERROR {} ({}): {message}", se.code, se.state)
}

/// Replaces every `'…'` part of a message by `'…'`.
pub(super) fn hide_quoted(message: &str) -> String {
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
pub(super) fn error_reason(e: &mysql_async::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
