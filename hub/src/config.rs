//! The hub's configuration file, read in two stages.
//!
//! 1. [`RawConfig`] and its parts mirror the TOML exactly (`deny_unknown_fields`), so a typo
//!    is an error that names the file, the line and the key.
//! 2. [`HubConfig`] is the validated form: addresses parsed, paths resolved against the
//!    configuration file's directory and checked to exist, the store URL understood. Code
//!    past [`HubConfig::load`] never re-checks any of this.
//!
//! ```toml
//! [listen]
//! addr = "0.0.0.0:8443"
//! ca = "tls/ca.pem"        # the CA that issues the agents' client certificates
//! cert = "tls/hub.pem"     # the hub's certificate chain
//! key = "tls/hub.key"      # the hub's private key (mode 0600)
//! min_tls = "1.3"          # or "1.2"; optional, default "1.3"
//! crl = ["tls/ca.crl"]     # optional: revoked agent certificates (re-read on SIGHUP)
//!
//! [store]
//! url = "sqlite:///var/lib/exchange-hub/hub.db"   # or sqlite://relative.db, postgres://user@host/db
//! password_file = "/etc/exchange-hub/pg.password" # optional, PostgreSQL only
//! ca = "/etc/exchange-hub/pg-ca.pem"              # optional, PostgreSQL only: TLS to the store
//!
//! [admin]                                         # optional: GET /metrics, GET /health
//! listen = "127.0.0.1:9465"                       # loopback only, no authentication
//!
//! [limits]                                        # every key optional (docs/HUB.md)
//! max_batch_bytes = "64MiB"
//! max_key_bytes = 2048       # longest record key; a longer one is refused (that record only)
//! max_concurrent_requests = 16
//! max_connections = 1024
//! body_timeout = "60s"
//! header_timeout = "30s"
//! handshake_timeout = "10s"
//! max_handshakes = 64        # in progress; a new connection over it drops the oldest
//! idle_timeout = "120s"      # a connection without a request this long is closed
//! max_streams = 64           # HTTP/2 requests open at once per connection
//! max_requests = 256         # requests in flight over all connections (503 above)
//! require_signatures = false # true: a batch without the node's signature is refused (400)
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use exchange_protocol::batch::DEFAULT_MAX_BATCH_BYTES;
use exchange_protocol::tls::{self, MinTlsVersion, MutualTls, TlsError};
use exchange_protocol::tr;
use serde::Deserialize;
use toml::Spanned;

/// The default `limits.max_key_bytes`: far above any identifier or pseudonym, and below the
/// index limit of a PostgreSQL store.
const DEFAULT_MAX_KEY_BYTES: usize = 2048;

/// The smallest `limits.max_batch_bytes` accepted.
const MIN_BATCH_BYTES: u64 = 1024;
/// The largest `limits.max_batch_bytes` accepted: a batch is held in memory while it is checked.
const MAX_BATCH_BYTES: u64 = 1 << 30;

/// What is wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}", tr!("cannot read hub configuration {}: {reason}", "无法读取交换中心配置文件 {}：{reason}", .path.display()))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why, in the reader's language.
        reason: String,
    },
    /// The file is not valid TOML or does not have the expected shape, or a value is invalid.
    #[error("{location}: {key}{message}")]
    Invalid {
        /// `file:line:column`, or just the file when the position is unknown.
        location: String,
        /// `key `a.b`: `, or empty when the error is about the whole document.
        key: String,
        /// What was found and what is expected.
        message: String,
    },
}

/// `[listen]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// `ip:port` to listen on.
    pub addr: Spanned<String>,
    /// The CA certificate that issues the agents' client certificates.
    pub ca: Spanned<PathBuf>,
    /// The hub's certificate chain, PEM.
    pub cert: Spanned<PathBuf>,
    /// The hub's private key, PEM.
    pub key: Spanned<PathBuf>,
    /// Lowest TLS version: "1.3" (default) or "1.2".
    #[serde(default)]
    pub min_tls: Option<MinTlsVersion>,
    /// Certificate revocation lists of `ca` (PEM or DER files).
    #[serde(default)]
    pub crl: Vec<Spanned<PathBuf>>,
}

/// `[client]` as written: what `exchange-hub verify` presents to an agent's verification
/// service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// The hub's client certificate chain, PEM (default: `[listen] cert`).
    pub cert: Option<Spanned<PathBuf>>,
    /// Its private key, PEM (default: `[listen] key`).
    pub key: Option<Spanned<PathBuf>>,
    /// The CA that issued the agents' server certificates (default: `[listen] ca`).
    pub ca: Option<Spanned<PathBuf>>,
    /// The comparison key shared with providers, for `verify --hmac` (64+ hex digits).
    pub comparison_key_file: Option<Spanned<PathBuf>>,
    /// Its version (default 1).
    pub comparison_key_version: Option<u32>,
}

/// `[store]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `sqlite:///absolute.db`, `sqlite://relative.db` or `postgres://user@host/db`.
    pub url: Spanned<String>,
    /// File holding the PostgreSQL password (one line), instead of putting it in the URL.
    #[serde(default)]
    pub password_file: Option<Spanned<PathBuf>>,
    /// CA certificate (PEM) that issued the PostgreSQL server's certificate; implies TLS.
    #[serde(default)]
    pub ca: Option<Spanned<PathBuf>>,
}

/// A size as written: a number of bytes or a string with a unit.
#[derive(Debug)]
pub enum RawSize {
    /// Plain number of bytes.
    Bytes(u64),
    /// `"64MiB"`, `"512 KiB"`, `"10MB"`.
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&tr!(
                    "a number of bytes or a size such as \"64MiB\"",
                    "字节数，或 \"64MiB\" 这样的大小"
                ))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSize, E> {
                u64::try_from(v)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[limits]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    /// Largest batch body, compressed and decompressed.
    pub max_batch_bytes: Option<Spanned<RawSize>>,
    /// Longest record key, in bytes.
    pub max_key_bytes: Option<Spanned<i64>>,
    /// Batch requests processed at once; more are answered 503 before their body is read.
    pub max_concurrent_requests: Option<Spanned<i64>>,
    /// Open client connections; further connections wait in the kernel's accept queue.
    pub max_connections: Option<Spanned<i64>>,
    /// Longest time to receive a request body, e.g. "60s".
    pub body_timeout: Option<Spanned<String>>,
    /// Longest time to receive the request headers (HTTP/1.1), e.g. "30s".
    pub header_timeout: Option<Spanned<String>>,
    /// Longest time to complete the TLS handshake, e.g. "10s".
    pub handshake_timeout: Option<Spanned<String>>,
    /// TLS handshakes in progress at once.
    pub max_handshakes: Option<Spanned<i64>>,
    /// Longest a connection may stay without a request in flight, e.g. "60s".
    pub idle_timeout: Option<Spanned<String>>,
    /// HTTP/2 streams open at once per connection.
    pub max_streams: Option<Spanned<i64>>,
    /// Requests in flight over all connections.
    pub max_requests: Option<Spanned<i64>>,
    /// Refuse batches without the node's signature.
    pub require_signatures: Option<bool>,
}

/// The validated `[limits]`: what keeps the hub within bounds under many or slow clients.
///
/// Received bodies in memory never exceed `max_concurrent_requests × max_batch_bytes`, and at
/// most `max_concurrent_requests` batches are decoded at once, because a body is read only by
/// a request that holds one of the `max_concurrent_requests` slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest batch body accepted, both compressed and decompressed, in bytes.
    pub max_batch_bytes: usize,
    /// Longest record key accepted, in bytes (UTF-8): a batch with a longer key is refused
    /// `400`, naming that record (the agent quarantines it). The default stays below what a
    /// PostgreSQL store can index (about 2,700 bytes with the resource code).
    pub max_key_bytes: usize,
    /// Batch requests processed at once (reading the body, checking, storing); over it a
    /// request is answered `503` with `Retry-After` before its body is read.
    pub max_concurrent_requests: usize,
    /// Client connections open at once; the accept loop waits while the limit is reached.
    pub max_connections: usize,
    /// Longest time from the start of a batch request's processing to the end of its body;
    /// past it the hub answers `408` and closes the connection.
    pub body_timeout: Duration,
    /// Longest time to receive a request's headers on HTTP/1.1 (the connection is closed).
    pub header_timeout: Duration,
    /// Longest time to complete the TLS handshake (the connection is dropped).
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once; a new connection over it drops the oldest.
    pub max_handshakes: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 streams open at once per connection.
    pub max_streams: u32,
    /// Requests in flight over all connections (health checks included); over it `503`.
    pub max_requests: usize,
    /// A batch without `exchange-signature` (docs/PROTOCOL.md §4.7) is refused `400`; off by
    /// default, for agents from before signatures.
    pub require_signatures: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_concurrent_requests: 16,
            max_connections: 1024,
            body_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 64,
            idle_timeout: Duration::from_secs(120),
            max_streams: 64,
            max_requests: 256,
            require_signatures: false,
        }
    }
}

/// The whole file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where and how agents connect.
    pub listen: RawListen,
    /// Where batches are stored.
    pub store: RawStore,
    /// Resource limits.
    #[serde(default)]
    pub limits: Option<RawLimits>,
    /// What `exchange-hub verify` presents.
    #[serde(default)]
    pub client: Option<RawClient>,
    /// The admin listener.
    #[serde(default)]
    pub admin: Option<RawAdmin>,
}

/// `[admin]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `ip:port` on loopback for `/metrics` and `/health`.
    pub listen: Spanned<String>,
}

/// Where the hub keeps what it received.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A SQLite database file (created if missing; its directory must exist).
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A PostgreSQL database (the tables are created if missing).
    Postgres(Box<PostgresConfig>),
}

impl StoreConfig {
    /// A SQLite store in `path`.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        StoreConfig::Sqlite { path: path.into() }
    }

    /// A PostgreSQL store at `url` (`postgres://user@host:port/db`), without a password file.
    pub fn postgres(url: &str) -> Result<Self, String> {
        Ok(StoreConfig::Postgres(Box::new(PostgresConfig::parse(
            url, None, None,
        )?)))
    }
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Sqlite { path } => f.write_str(&tr!(
                "SQLite database {}",
                "SQLite 数据库 {}",
                path.display()
            )),
            StoreConfig::Postgres(pg) => f.write_str(&tr!(
                "PostgreSQL database {}",
                "PostgreSQL 数据库 {}",
                pg.display
            )),
        }
    }
}

/// A validated PostgreSQL connection target.
#[derive(Clone)]
pub struct PostgresConfig {
    /// The connection parameters parsed from the URL.
    pub config: tokio_postgres::Config,
    /// `user@host:port/db` without the password, for messages.
    pub display: String,
    /// File holding the password, read when connecting (must be mode 0600).
    pub password_file: Option<PathBuf>,
    /// Every connection uses verified TLS (the URL's `sslmode` asks for it, or `ca` is set).
    pub tls: bool,
    /// The CA that issued the server's certificate; `None`: the system's trusted roots.
    pub ca: Option<PathBuf>,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("target", &self.display)
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .finish()
    }
}

impl PostgresConfig {
    /// Parses a `postgres://` URL (or `key=value` string). TLS is used when `sslmode` is
    /// prefer, require, verify-ca or verify-full, or when `ca` is given (and `sslmode` is not
    /// disable or allow); it is then required and verified — `prefer` never falls back to
    /// plaintext, and `require` also checks the certificate and the host name.
    pub fn parse(
        url: &str,
        password_file: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Self, String> {
        let (rest, sslmode) = tls::take_postgres_sslmode(url);
        let tls = tls::postgres_requires_tls(sslmode.as_deref(), ca.is_some())?;
        if !tls && ca.is_some() {
            return Err(tr!(
                "`ca` is set but the URL says `sslmode={}`; remove one of them",
                "设置了 `ca`，但 URL 中写的是 `sslmode={}`；请删除其中之一",
                sslmode.as_deref().unwrap_or_default()
            ));
        }
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            tr!(
                "`{}` is not a valid PostgreSQL URL: {e}",
                "`{}` 不是有效的 PostgreSQL URL：{e}",
                redact(url)
            )
        })?;
        config.ssl_mode(if tls {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Disable
        });
        if config.get_dbname().is_none() {
            return Err(tr!(
                "`{}` names no database; expected `postgres://user@host/database`",
                "`{}` 没有指明数据库；应为 `postgres://user@host/database`",
                redact(url)
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        config.application_name("exchange-hub");
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        let display = format!(
            "{}@{}{}/{}",
            config.get_user().unwrap_or("(current user)"),
            if hosts.is_empty() {
                "localhost".to_owned()
            } else {
                hosts.join(",")
            },
            if ports.is_empty() {
                String::new()
            } else {
                format!(":{}", ports.join(","))
            },
            config.get_dbname().unwrap_or_default()
        );
        Ok(PostgresConfig {
            config,
            display,
            password_file,
            tls,
            ca,
        })
    }
}

/// Removes a password from a URL before it is shown.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}://{}:****{}",
            &url[..scheme_end],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

/// The validated configuration of a hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The file the configuration was read from, for messages (`None` when built in code).
    pub path: Option<PathBuf>,
    /// The address `exchange-hub serve` binds.
    pub listen: SocketAddr,
    /// Mutual TLS: the CA that issued the agents' certificates, the hub's certificate and key,
    /// and the lowest TLS version.
    pub tls: MutualTls,
    /// Where received batches are stored.
    pub store: StoreConfig,
    /// Body sizes, concurrency, connections and timeouts.
    pub limits: Limits,
    /// What `exchange-hub verify` presents to an agent: `[client]`, each file defaulting to
    /// `[listen]`'s.
    pub client: MutualTls,
    /// Where the admin listener (`/metrics`, `/health`) listens, loopback only; `None`: off.
    pub admin: Option<SocketAddr>,
    /// The comparison key file for `verify --hmac` (`[client] comparison_key_file`).
    pub comparison_key_file: Option<PathBuf>,
    /// Its version.
    pub comparison_key_version: u32,
}

impl HubConfig {
    /// A configuration built in code (the demo and the tests), with default limits.
    pub fn new(listen: SocketAddr, tls: MutualTls, store: StoreConfig) -> Self {
        HubConfig {
            path: None,
            listen,
            client: tls.clone(),
            tls,
            store,
            limits: Limits::default(),
            admin: None,
            comparison_key_file: None,
            comparison_key_version: 1,
        }
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: exchange_protocol::translate::io(&e),
        })?;
        Self::from_toml(&text, path)
    }

    /// Validates configuration text; `path` names it in messages and anchors relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file = Source {
            name: path.display().to_string(),
            text,
        };
        let raw = parse_raw(&file)?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Absolute, so messages and the running hub do not depend on the working directory.
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        let mut config = validate(raw, &file, &dir)?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// Builds the hub's TLS server configuration (client certificates required and verified
    /// against `tls.ca`), offering HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_tls(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = tls::mutual_server_config(&self.tls)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The text being validated, for positions in messages.
struct Source<'a> {
    /// The file name as shown.
    name: String,
    /// The whole file.
    text: &'a str,
}

impl Source<'_> {
    /// `file:line:column` of a byte offset (line and column from 1, column in characters).
    fn at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        format!("{}:{line}:{column}", self.name)
    }

    /// An error about the value at `span`.
    fn error(&self, key: &str, span: std::ops::Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            location: self.at(span.start),
            key: tr!("key `{key}`: ", "配置项 `{key}`："),
            message,
        }
    }
}

fn parse_raw(file: &Source<'_>) -> Result<RawConfig, ConfigError> {
    let deserializer = toml::Deserializer::parse(file.text).map_err(|e| ConfigError::Invalid {
        location: e
            .span()
            .map(|s| file.at(s.start))
            .unwrap_or_else(|| file.name.clone()),
        key: String::new(),
        message: words(e.message()),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = key_path(e.path());
        let inner = e.into_inner();
        ConfigError::Invalid {
            location: inner
                .span()
                .map(|s| file.at(s.start))
                .unwrap_or_else(|| file.name.clone()),
            key: if key.is_empty() {
                String::new()
            } else {
                tr!("key `{key}`: ", "配置项 `{key}`：")
            },
            message: words(inner.message()),
        }
    })
}

/// `listen.addr` from serde_path_to_error's path, without the private segments that
/// `toml::Spanned` adds.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        let part = match segment {
            Segment::Map { key } if key.starts_with("$__serde_spanned") => continue,
            Segment::Map { key } => key.clone(),
            Segment::Seq { index } => index.to_string(),
            Segment::Enum { variant } => variant.clone(),
            Segment::Unknown => "?".to_owned(),
        };
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(&part);
    }
    key
}

fn first_line(message: &str) -> String {
    message.trim().lines().next().unwrap_or_default().to_owned()
}

/// The first line of a deserializer's message, in Chinese under a Chinese locale.
fn words(message: &str) -> String {
    let line = first_line(message);
    if exchange_protocol::lang::is_zh() {
        exchange_protocol::translate::deserializer_zh(&line, None)
    } else {
        line
    }
}

fn validate(raw: RawConfig, file: &Source<'_>, dir: &Path) -> Result<HubConfig, ConfigError> {
    let v = Validator { file, dir };
    let listen = v.listen_addr(&raw.listen.addr)?;
    let tls = v.listen_tls(&raw.listen)?;
    let store = v.store(&raw.store)?;
    let limits = match raw.limits {
        None => Limits::default(),
        Some(raw) => limits(raw, file)?,
    };
    let (client, comparison_key_file, comparison_key_version) = match &raw.client {
        None => (tls.clone(), None, 1),
        Some(c) => v.client(c, &tls)?,
    };
    let admin = match &raw.admin {
        None => None,
        Some(a) => Some(v.admin_addr(&a.listen)?),
    };
    Ok(HubConfig {
        path: None,
        listen,
        tls,
        store,
        limits,
        client,
        admin,
        comparison_key_file,
        comparison_key_version,
    })
}

/// Validates the sections of a [`RawConfig`] one by one.
struct Validator<'a> {
    /// The file, for positions in messages.
    file: &'a Source<'a>,
    /// The directory relative paths are resolved against (the file's, absolute).
    dir: &'a Path,
}

impl Validator<'_> {
    /// `value` resolved against the configuration's directory, which must be an existing
    /// file; `what` names it in the message.
    fn existing(
        &self,
        key: &str,
        value: &Spanned<PathBuf>,
        what: &str,
    ) -> Result<PathBuf, ConfigError> {
        let path = self.dir.join(value.get_ref());
        if path.is_file() {
            Ok(path)
        } else {
            Err(self.file.error(
                key,
                value.span(),
                tr!(
                    "{what} {} does not exist or is not a file (relative paths are resolved against {})",
                    "{what} {} 不存在或不是文件（相对路径以 {} 为基准）",
                    path.display(),
                    self.dir.display()
                ),
            ))
        }
    }

    /// Like [`Validator::existing`] for an optional key.
    fn existing_if_set(
        &self,
        key: &str,
        value: &Option<Spanned<PathBuf>>,
        what: &str,
    ) -> Result<Option<PathBuf>, ConfigError> {
        match value {
            Some(v) => Ok(Some(self.existing(key, v, what)?)),
            None => Ok(None),
        }
    }

    /// `listen.addr`.
    fn listen_addr(&self, addr: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        let addr_text = addr.get_ref();
        addr_text.trim().parse().map_err(|_| {
            self.file.error(
                "listen.addr",
                addr.span(),
                tr!(
                    "`{addr_text}` is not an address; expected an IP address and port such as \"0.0.0.0:8443\" or \"[::]:8443\"",
                    "`{addr_text}` 不是有效地址；应为 IP 地址加端口，例如 \"0.0.0.0:8443\" 或 \"[::]:8443\""
                ),
            )
        })
    }

    /// `[listen]`'s TLS material.
    fn listen_tls(&self, listen: &RawListen) -> Result<MutualTls, ConfigError> {
        Ok(MutualTls {
            ca: self.existing(
                "listen.ca",
                &listen.ca,
                exchange_protocol::lang::pick(
                    "the CA certificate that issues agent certificates,",
                    "签发代理证书的 CA 证书",
                ),
            )?,
            cert: self.existing(
                "listen.cert",
                &listen.cert,
                exchange_protocol::lang::pick("the hub certificate", "交换中心证书"),
            )?,
            key: self.existing(
                "listen.key",
                &listen.key,
                exchange_protocol::lang::pick("the hub private key", "交换中心私钥"),
            )?,
            min_version: listen.min_tls.unwrap_or_default(),
            crls: listen
                .crl
                .iter()
                .map(|c| {
                    self.existing(
                        "listen.crl",
                        c,
                        exchange_protocol::lang::pick(
                            "a certificate revocation list of listen.ca",
                            "listen.ca 的证书吊销列表",
                        ),
                    )
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// `[store]`: a SQLite file or a PostgreSQL database, by the URL's scheme.
    fn store(&self, store: &RawStore) -> Result<StoreConfig, ConfigError> {
        let url = store.url.get_ref().trim();
        if let Some(rest) = url.strip_prefix("sqlite://") {
            self.sqlite_store(store, rest)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let password_file = self.existing_if_set(
                "store.password_file",
                &store.password_file,
                exchange_protocol::lang::pick("the password file", "密码文件"),
            )?;
            let ca = self.existing_if_set(
                "store.ca",
                &store.ca,
                exchange_protocol::lang::pick(
                    "the CA certificate of the PostgreSQL server,",
                    "PostgreSQL 服务器的 CA 证书",
                ),
            )?;
            Ok(StoreConfig::Postgres(Box::new(
                PostgresConfig::parse(url, password_file, ca)
                    .map_err(|m| self.file.error("store.url", store.url.span(), m))?,
            )))
        } else {
            Err(self.file.error(
                "store.url",
                store.url.span(),
                tr!(
                    "`{}` is not a supported store; expected \"sqlite:///absolute/path.db\", \"sqlite://relative/path.db\" or \"postgres://user@host/database\"",
                    "`{}` 不是支持的存储；应为 \"sqlite:///absolute/path.db\"（绝对路径）、\"sqlite://relative/path.db\"（相对路径）或 \"postgres://user@host/database\"",
                    redact(url)
                ),
            ))
        }
    }

    /// A `sqlite://` store whose URL goes on with `rest`: no PostgreSQL keys, a file name in
    /// an existing directory.
    fn sqlite_store(&self, store: &RawStore, rest: &str) -> Result<StoreConfig, ConfigError> {
        if let Some(p) = &store.password_file {
            return Err(self.file.error(
                "store.password_file",
                p.span(),
                tr!(
                    "a password file applies only to a postgres:// store; remove it",
                    "密码文件只适用于 postgres:// 存储；请删除此项"
                ),
            ));
        }
        if let Some(ca) = &store.ca {
            return Err(self.file.error(
                "store.ca",
                ca.span(),
                tr!(
                    "a CA applies only to a postgres:// store; remove it",
                    "CA 只适用于 postgres:// 存储；请删除此项"
                ),
            ));
        }
        if rest.is_empty() {
            return Err(self.file.error(
                "store.url",
                store.url.span(),
                tr!(
                    "the SQLite URL names no file; expected \"sqlite:///absolute/path.db\" or \"sqlite://relative/path.db\"",
                    "SQLite URL 没有指明文件；应为 \"sqlite:///absolute/path.db\"（绝对路径）或 \"sqlite://relative/path.db\"（相对路径）"
                ),
            ));
        }
        let path = self.dir.join(rest);
        let parent = path.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            return Err(self.file.error(
                "store.url",
                store.url.span(),
                tr!(
                    "the directory {} of the SQLite database does not exist; create it (owned by the service user) or change the URL",
                    "SQLite 数据库所在的目录 {} 不存在；请创建它（属主为服务用户），或修改 URL",
                    parent.display()
                ),
            ));
        }
        Ok(StoreConfig::Sqlite { path })
    }

    /// `[client]`: what `verify` presents, each file defaulting to `[listen]`'s (`tls`), and
    /// the comparison key file and version.
    fn client(
        &self,
        c: &RawClient,
        tls: &MutualTls,
    ) -> Result<(MutualTls, Option<PathBuf>, u32), ConfigError> {
        let pick = |key: &str,
                    v: &Option<Spanned<PathBuf>>,
                    fallback: &PathBuf,
                    what: &str|
         -> Result<PathBuf, ConfigError> {
            Ok(self
                .existing_if_set(key, v, what)?
                .unwrap_or_else(|| fallback.clone()))
        };
        let client = MutualTls {
            ca: pick(
                "client.ca",
                &c.ca,
                &tls.ca,
                exchange_protocol::lang::pick(
                    "the CA certificate of the agents' verification services,",
                    "各代理核验服务的 CA 证书",
                ),
            )?,
            cert: pick(
                "client.cert",
                &c.cert,
                &tls.cert,
                exchange_protocol::lang::pick(
                    "the hub's client certificate",
                    "交换中心的客户端证书",
                ),
            )?,
            key: pick(
                "client.key",
                &c.key,
                &tls.key,
                exchange_protocol::lang::pick(
                    "the hub's client private key",
                    "交换中心的客户端私钥",
                ),
            )?,
            min_version: tls.min_version,
            crls: Vec::new(),
        };
        let key_file = self.existing_if_set(
            "client.comparison_key_file",
            &c.comparison_key_file,
            exchange_protocol::lang::pick("the comparison key file", "比对密钥文件"),
        )?;
        Ok((client, key_file, c.comparison_key_version.unwrap_or(1)))
    }

    /// `admin.listen`: a loopback address.
    fn admin_addr(&self, listen: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        let text = listen.get_ref();
        let addr: SocketAddr = text.trim().parse().map_err(|_| {
            self.file.error(
                "admin.listen",
                listen.span(),
                tr!("`{text}` is not an address; expected a loopback address and port such as \"127.0.0.1:9465\"", "`{text}` 不是有效地址；应为回环地址加端口，例如 \"127.0.0.1:9465\""),
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(self.file.error(
                "admin.listen",
                listen.span(),
                tr!("{addr} is not a loopback address: the admin listener has no authentication, so it listens on 127.0.0.1 or ::1 only", "{addr} 不是回环地址：管理监听没有身份认证，因此只能监听 127.0.0.1 或 ::1"),
            ));
        }
        Ok(addr)
    }
}

/// Validates `[limits]`; an absent key keeps its default.
/// `[limits] max_batch_bytes`: a size between 1 KiB and 1 GiB.
fn batch_bytes(size: &Spanned<RawSize>, file: &Source<'_>) -> Result<usize, ConfigError> {
    let bytes = parse_size(size.get_ref())
        .map_err(|m| file.error("limits.max_batch_bytes", size.span(), m))?;
    if !(MIN_BATCH_BYTES..=MAX_BATCH_BYTES).contains(&bytes) {
        return Err(file.error(
            "limits.max_batch_bytes",
            size.span(),
            tr!(
                "{bytes} bytes is out of range; expected between 1KiB and 1GiB (a batch is held in memory while it is checked)",
                "{bytes} 字节超出范围；应在 1KiB 到 1GiB 之间（批次在校验期间整个保存在内存中）"
            ),
        ));
    }
    Ok(usize::try_from(bytes).unwrap_or(usize::MAX))
}

fn limits(raw: RawLimits, file: &Source<'_>) -> Result<Limits, ConfigError> {
    let mut limits = Limits::default();
    if let Some(size) = &raw.max_batch_bytes {
        limits.max_batch_bytes = batch_bytes(size, file)?;
    }
    let count = |key: &str, value: &Spanned<i64>, max: i64| -> Result<usize, ConfigError> {
        let n = *value.get_ref();
        if (1..=max).contains(&n) {
            Ok(n as usize)
        } else {
            Err(file.error(
                key,
                value.span(),
                tr!(
                    "{n} is out of range; expected an integer between 1 and {max}",
                    "{n} 超出范围；应为 1 到 {max} 之间的整数"
                ),
            ))
        }
    };
    if let Some(v) = &raw.max_key_bytes {
        limits.max_key_bytes = count("limits.max_key_bytes", v, 65_536)?;
    }
    if let Some(v) = &raw.max_concurrent_requests {
        limits.max_concurrent_requests = count("limits.max_concurrent_requests", v, 4096)?;
    }
    if let Some(v) = &raw.max_connections {
        limits.max_connections = count("limits.max_connections", v, 1_000_000)?;
    }
    let duration = |key: &str, value: &Spanned<String>| -> Result<Duration, ConfigError> {
        let d = exchange_protocol::quantity::parse_duration(value.get_ref())
            .map_err(|m| file.error(key, value.span(), m))?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
            return Err(file.error(
                key,
                value.span(),
                tr!(
                    "`{}` is out of range; expected between \"1s\" and \"1h\"",
                    "`{}` 超出范围；应在 \"1s\" 到 \"1h\" 之间",
                    value.get_ref()
                ),
            ));
        }
        Ok(d)
    };
    if let Some(v) = &raw.body_timeout {
        limits.body_timeout = duration("limits.body_timeout", v)?;
    }
    if let Some(v) = &raw.header_timeout {
        limits.header_timeout = duration("limits.header_timeout", v)?;
    }
    if let Some(v) = &raw.handshake_timeout {
        limits.handshake_timeout = duration("limits.handshake_timeout", v)?;
    }
    if let Some(v) = &raw.max_handshakes {
        limits.max_handshakes = count("limits.max_handshakes", v, 10_000)?;
    }
    if let Some(v) = &raw.idle_timeout {
        limits.idle_timeout = duration("limits.idle_timeout", v)?;
    }
    if let Some(v) = &raw.max_streams {
        limits.max_streams = count("limits.max_streams", v, 10_000)? as u32;
    }
    if let Some(v) = &raw.max_requests {
        limits.max_requests = count("limits.max_requests", v, 100_000)?;
    }
    if let Some(v) = raw.require_signatures {
        limits.require_signatures = v;
    }
    Ok(limits)
}

/// Parses `"64MiB"`, `"10MB"`, `"1048576"` or a plain number (the units of
/// [`exchange_protocol::quantity::parse_size`]).
fn parse_size(raw: &RawSize) -> Result<u64, String> {
    match raw {
        RawSize::Bytes(n) => Ok(*n),
        RawSize::Text(t) => exchange_protocol::quantity::parse_size(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory with the TLS files a valid configuration points to.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        for f in ["ca.pem", "hub.pem", "hub.key"] {
            std::fs::write(dir.path().join("tls").join(f), "x").unwrap();
        }
        dir
    }

    const VALID: &str = r#"
[listen]
addr = "127.0.0.1:8443"
ca = "tls/ca.pem"
cert = "tls/hub.pem"
key = "tls/hub.key"

[store]
url = "sqlite://hub.db"
"#;

    fn load(dir: &tempfile::TempDir, text: &str) -> Result<HubConfig, String> {
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, text).unwrap();
        HubConfig::load(&path).map_err(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
    }

    #[test]
    fn a_valid_file_resolves_paths_against_its_directory() {
        let dir = fixture();
        let config = load(&dir, VALID).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(config.tls.ca, dir.path().join("tls/ca.pem"));
        assert_eq!(config.tls.min_version, MinTlsVersion::Tls13);
        assert_eq!(config.limits, Limits::default());
        match config.store {
            StoreConfig::Sqlite { path } => assert_eq!(path, dir.path().join("hub.db")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_key_names_file_line_and_key_path() {
        let dir = fixture();
        let text = "[listen]\naddr = \"127.0.0.1:8443\"\nadress = \"x\"\n";
        let err = load(&dir, text).unwrap_err();
        assert!(
            err.starts_with("DIR/hub.toml:3:1: key `listen.adress`: unknown field `adress`, expected one of `addr`, `ca`, `cert`, `key`, `min_tls`, `crl`"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let dir = fixture();
        let cases: &[(&str, &str, &str)] = &[
            (
                "addr = \"127.0.0.1:8443\"",
                "addr = \"localhost\"",
                "DIR/hub.toml:3:8: key `listen.addr`: `localhost` is not an address",
            ),
            (
                "ca = \"tls/ca.pem\"",
                "ca = \"tls/missing.pem\"",
                "DIR/hub.toml:4:6: key `listen.ca`: the CA certificate that issues agent certificates, DIR/tls/missing.pem does not exist",
            ),
            (
                "key = \"tls/hub.key\"",
                "key = \"tls/hub.key\"\nmin_tls = \"1.1\"",
                "DIR/hub.toml:7:11: key `listen.min_tls`: unknown variant `1.1`, expected `1.3` or `1.2`",
            ),
            (
                "url = \"sqlite://hub.db\"",
                "url = \"mysql://x\"",
                "DIR/hub.toml:9:7: key `store.url`: `mysql://x` is not a supported store",
            ),
            (
                "url = \"sqlite://hub.db\"",
                "url = \"sqlite://nodir/hub.db\"",
                "DIR/hub.toml:9:7: key `store.url`: the directory DIR/nodir of the SQLite database does not exist",
            ),
            (
                "url = \"sqlite://hub.db\"",
                "url = \"sqlite://hub.db\"\n[limits]\nmax_batch_bytes = \"64 parsecs\"",
                "DIR/hub.toml:11:19: key `limits.max_batch_bytes`: `64 parsecs` is not a size",
            ),
            (
                "url = \"sqlite://hub.db\"",
                "url = 5",
                "DIR/hub.toml:9:7: key `store.url`: invalid type: integer `5`, expected a string",
            ),
            (
                "url = \"sqlite://hub.db\"",
                "url = \"sqlite://hub.db\"\n[limits]\nmax_batch_bytes = 5.5",
                "DIR/hub.toml:11:19: key `limits.max_batch_bytes`: invalid type: floating point `5.5`, expected a number of bytes or a size such as \"64MiB\"",
            ),
            (
                "cert = \"tls/hub.pem\"\n",
                "",
                "DIR/hub.toml:2:1: key `listen`: missing field `cert`",
            ),
            (
                "[store]",
                "[store",
                "DIR/hub.toml:8:7: unclosed table, expected `]`",
            ),
            (
                "url = \"sqlite://hub.db\"",
                "url = \"sqlite://hub.db\"\n[admin]\nlisten = \"0.0.0.0:9465\"",
                "DIR/hub.toml:11:10: key `admin.listen`: 0.0.0.0:9465 is not a loopback address",
            ),
            (
                "key = \"tls/hub.key\"",
                "key = \"tls/hub.key\"\ncrl = [\"tls/missing.crl\"]",
                "DIR/hub.toml:7:8: key `listen.crl`: a certificate revocation list of listen.ca DIR/tls/missing.crl does not exist",
            ),
        ];
        for (from, to, expected) in cases {
            let err = load(&dir, &VALID.replace(from, to)).unwrap_err();
            assert!(
                err.starts_with(expected),
                "{to}\n got: {err}\nwant: {expected}"
            );
        }
    }

    #[test]
    fn a_missing_table_is_named() {
        let dir = fixture();
        let err = load(&dir, "[listen]\naddr = \"127.0.0.1:1\"\nca = \"tls/ca.pem\"\ncert = \"tls/hub.pem\"\nkey = \"tls/hub.key\"\n").unwrap_err();
        assert!(
            err.starts_with("DIR/hub.toml:1:1: missing field `store`"),
            "{err}"
        );
    }

    #[test]
    fn sizes_and_postgres_urls_are_understood() {
        let dir = fixture();
        let text = VALID.replace(
            "url = \"sqlite://hub.db\"",
            "url = \"postgres://hub:secret@db.example:5433/exchange\"\n[limits]\nmax_batch_bytes = \"8MiB\"",
        );
        let config = load(&dir, &text).unwrap();
        assert_eq!(config.limits.max_batch_bytes, 8 << 20);
        match &config.store {
            StoreConfig::Postgres(pg) => {
                assert_eq!(pg.display, "hub@db.example:5433/exchange");
                assert!(!format!("{config:?}").contains("secret"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_size(&RawSize::Text("512 KiB".into())), Ok(512 * 1024));
        assert_eq!(parse_size(&RawSize::Text("10MB".into())), Ok(10_000_000));
        assert_eq!(parse_size(&RawSize::Bytes(4096)), Ok(4096));
        assert!(parse_size(&RawSize::Text("99999999999999999GiB".into())).is_err());
        assert_eq!(
            redact("postgres://u:pw@h/db"),
            "postgres://u:****@h/db".to_owned()
        );
    }

    #[test]
    fn limits_and_store_tls_are_read_and_checked() {
        let dir = fixture();
        let text = VALID.replace(
            "url = \"sqlite://hub.db\"",
            "url = \"postgres://hub@db.example/exchange?sslmode=verify-full\"\nca = \"tls/ca.pem\"\n[limits]\nmax_concurrent_requests = 4\nmax_connections = 100\nbody_timeout = \"90s\"\nheader_timeout = \"5s\"\nhandshake_timeout = \"3s\"\nmax_handshakes = 8\nidle_timeout = \"20s\"\nmax_streams = 16\nmax_requests = 32\nmax_key_bytes = 512",
        );
        let config = load(&dir, &text).unwrap();
        let limits = config.limits;
        assert_eq!(limits.max_key_bytes, 512);
        assert_eq!(
            (
                limits.max_handshakes,
                limits.max_streams,
                limits.max_requests
            ),
            (8, 16, 32)
        );
        assert_eq!(limits.idle_timeout, Duration::from_secs(20));
        assert_eq!(
            (limits.max_concurrent_requests, limits.max_connections),
            (4, 100)
        );
        assert_eq!(limits.body_timeout, Duration::from_secs(90));
        assert_eq!(limits.header_timeout, Duration::from_secs(5));
        assert_eq!(limits.handshake_timeout, Duration::from_secs(3));
        match &config.store {
            StoreConfig::Postgres(pg) => {
                assert!(pg.tls);
                assert_eq!(
                    pg.ca.as_deref(),
                    Some(dir.path().join("tls/ca.pem").as_path())
                );
                assert_eq!(
                    pg.config.get_ssl_mode(),
                    tokio_postgres::config::SslMode::Require,
                    "never `prefer`, which would fall back to plaintext"
                );
            }
            other => panic!("{other:?}"),
        }
        for (limits, expected) in [
            (
                "max_concurrent_requests = 0",
                "0 is out of range; expected an integer between 1 and 4096",
            ),
            ("body_timeout = \"0s\"", "`0s` is out of range"),
            ("body_timeout = \"soon\"", "`soon` is not a duration"),
        ] {
            let text = format!("{VALID}[limits]\n{limits}\n");
            let err = load(&dir, &text).unwrap_err();
            assert!(err.contains(expected), "{limits}: {err}");
        }
        let plain = VALID.replace(
            "url = \"sqlite://hub.db\"",
            "url = \"postgres://hub@db.example/exchange?sslmode=disable\"\nca = \"tls/ca.pem\"",
        );
        assert!(
            load(&dir, &plain)
                .unwrap_err()
                .contains("`ca` is set but the URL says `sslmode=disable`")
        );
        let prefer = StoreConfig::postgres("postgres://hub@h/db?sslmode=prefer").unwrap();
        match prefer {
            StoreConfig::Postgres(pg) => assert!(pg.tls),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn absolute_sqlite_urls_are_kept() {
        let dir = fixture();
        let abs = dir.path().join("abs.db");
        let text = VALID.replace("sqlite://hub.db", &format!("sqlite://{}", abs.display()));
        match load(&dir, &text).unwrap().store {
            StoreConfig::Sqlite { path } => assert_eq!(path, abs),
            other => panic!("{other:?}"),
        }
    }
}
