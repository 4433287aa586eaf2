//! The agent's configuration, in two stages (like ripgrep's low and high args):
//! [`raw`] mirrors the TOML with `deny_unknown_fields`; [`Config`] is the validated runtime
//! form in which every invariant holds (paths resolved and present, secrets read and their
//! permissions checked, schedules parsed, field rules known). Code past [`Config::load`] never
//! re-checks.
//!
//! Every error names the file, the line and the key, what was found and what is expected.

pub mod audit;
mod keys;
mod location;
pub mod origin;
pub mod raw;
pub mod verify;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use exchange_connectors::{Relation, SourceKind, SourceSpec};
use exchange_protocol::tls::{MinTlsVersion, MutualTls};

pub use exchange_protocol::quantity::{parse_duration, parse_size};
pub use keys::Keys;
pub use location::Locator;

use crate::identifier::{self, IdKind};
use crate::schedule::Schedule;
use exchange_rules::fpe::FpeKey;
use exchange_rules::pseudonym::PseudonymKey;
use exchange_rules::rule::Rule;

/// A configuration error, located in the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// Line and column (1-based), when known.
    pub location: Option<(usize, usize)>,
    /// What was wrong with which key, and what is expected.
    pub message: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from.
    pub file: PathBuf,
    /// This node.
    pub node: Node,
    /// The hub to push to.
    pub hub: Hub,
    /// Local queue limits.
    pub queue: QueueLimits,
    /// Batch limits.
    pub batch: BatchLimits,
    /// Source databases, by name.
    pub sources: BTreeMap<String, SourceSpec>,
    /// Resources, in file order.
    pub resources: Vec<Resource>,
    /// Key material of the desensitization rules (`[policy]`).
    pub keys: Keys,
    /// Where the admin listener (`/metrics`, `/health`) listens, loopback only; `None`: off.
    pub admin: Option<std::net::SocketAddr>,
    /// The verification service (`[verify]`); `None`: not offered.
    pub verify: Option<verify::Verify>,
    /// Rotation and archival of the audit log (`[audit]`).
    pub audit: crate::audit::Retention,
}

/// Identity of this front-end node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node id; must equal the common name of `hub.cert`.
    pub id: String,
    /// The department's 统一社会信用代码.
    pub department: String,
    /// Where the queue lives.
    pub data_dir: PathBuf,
}

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct Hub {
    /// Base URL, `https://host:port`.
    pub url: String,
    /// Mutual TLS files.
    pub tls: MutualTls,
    /// Timeout of one request.
    pub timeout: Duration,
}

/// Bounds of the local queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Pulling pauses while the queue holds this many bytes or more.
    pub max_bytes: u64,
}

/// Bounds of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Records per batch.
    pub max_records: usize,
    /// Uncompressed NDJSON bytes per batch.
    pub max_bytes: usize,
}

/// Share class (共享类型).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// 无条件共享: delivered, any rule.
    Unconditional,
    /// 有条件共享: every field desensitized unless approved plain; delivered only when
    /// `deliver`, otherwise answered by comparison only.
    Conditional {
        /// `deliver = true`: records are pushed to the hub (desensitized).
        deliver: bool,
    },
    /// 不予共享: catalogued only; never pulled, delivered or verified.
    None,
}

impl Share {
    /// Whether records of the resource are pulled and pushed.
    pub fn delivers(self) -> bool {
        matches!(
            self,
            Share::Unconditional | Share::Conditional { deliver: true }
        )
    }

    /// The class as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Share::Unconditional => "unconditional",
            Share::Conditional { .. } => "conditional",
            Share::None => "none",
        }
    }
}

/// What happens to a row whose key is not a valid identifier of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKey {
    /// Quarantined (the default).
    Quarantine,
    /// Delivered, flagged `invalid_key`.
    Deliver,
}

/// How a resource is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Rows after a cursor over these columns.
    Incremental {
        /// Cursor columns, compared as a strict tuple.
        cursor: Vec<String>,
        /// Margin behind the oldest open transaction (or the clock).
        safety_lag: Duration,
    },
    /// Full read each run, compared with local digests.
    Snapshot,
}

/// A resource's freshness limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    /// This many working days (Monday to Friday): the default, 2, is the regulations' update
    /// deadline.
    WorkingDays(u32),
    /// A fixed duration (`max_staleness = "36h"`).
    Within(Duration),
}

impl Staleness {
    /// The instant after which a resource last pushed at `since` is stale.
    pub fn deadline(self, since: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
        use chrono::Datelike;
        match self {
            Staleness::Within(d) => chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| since.checked_add_signed(d))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
            Staleness::WorkingDays(n) => {
                let mut t = since;
                let mut left = n;
                while left > 0 {
                    t += chrono::Duration::days(1);
                    if !matches!(t.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun) {
                        left -= 1;
                    }
                }
                t
            }
        }
    }
}

/// A configured resource (政务信息资源).
#[derive(Debug, Clone)]
pub struct Resource {
    /// Resource code (资源代码).
    pub code: String,
    /// Catalogue name.
    pub name: String,
    /// Share class.
    pub share: Share,
    /// Name of the source it reads.
    pub source: String,
    /// Table or query.
    pub relation: Relation,
    /// Subject identifier column.
    pub key: String,
    /// Read mode.
    pub mode: Mode,
    /// When to pull.
    pub schedule: Schedule,
    /// How old the last acknowledged push may get before the resource counts as stale
    /// (metric `exchange_stale`, a warning in the log).
    pub max_staleness: Staleness,
    /// Field rules, in file order.
    pub fields: Vec<(String, Rule)>,
    /// The identifier kind of the key column.
    pub key_kind: IdKind,
    /// What an invalid key does.
    pub invalid_key: InvalidKey,
    /// Fields approved to leave plain on a conditional resource.
    pub plain_allowed: Vec<String>,
    /// The approval reference for `plain_allowed`.
    pub plain_reason: Option<String>,
    /// Comparison semantics, grants and disclosure of the verification service.
    pub verification: verify::Verification,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            location: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Reads the configuration file a command resolved; a file that cannot be read is named
    /// with its absolute path and where that path came from (`--config`, the environment or
    /// the default).
    pub fn load_from(file: &origin::ConfigPath) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(&file.path).map_err(|e| ConfigError {
            file: file.path.clone(),
            location: None,
            message: format!("cannot read the configuration file ({}): {e}", file.origin),
        })?;
        Self::parse(&file.path, &text)
    }

    /// Parses and validates configuration text; `path` is used for messages and to resolve
    /// relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw = raw::parse(path, text)?;
        let locator = Locator::new(text);
        Validator {
            file: path,
            base: path.parent().unwrap_or(Path::new(".")),
            locator: &locator,
        }
        .validate(raw)
    }

    /// The resource with this code.
    pub fn resource(&self, code: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.code == code)
    }
}

/// A path under `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`): `p` starting with
/// `${CREDENTIALS_DIRECTORY}/` or `$CREDENTIALS_DIRECTORY/` is resolved against the variable;
/// `Some(Err)` when it is not set, `None` for any other path.
fn credential(p: &str) -> Option<Result<PathBuf, ()>> {
    let rest = p
        .strip_prefix("${CREDENTIALS_DIRECTORY}/")
        .or_else(|| p.strip_prefix("$CREDENTIALS_DIRECTORY/"))?;
    Some(match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir).join(rest)),
        _ => Err(()),
    })
}

struct Validator<'a> {
    file: &'a Path,
    base: &'a Path,
    locator: &'a Locator,
}

impl Validator<'_> {
    fn err(&self, key: &str, message: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            location: self.locator.locate(key),
            message: format!("key `{key}`: {message}"),
        }
    }

    /// A path from the file, resolved against the configuration's directory and made
    /// absolute, so that messages name the file that was actually looked for.
    fn path(&self, p: &str) -> PathBuf {
        let joined = self.base.join(p);
        std::path::absolute(&joined).unwrap_or(joined)
    }

    fn existing_file(&self, key: &str, p: &str) -> Result<PathBuf, ConfigError> {
        let path = match credential(p) {
            Some(Ok(path)) => path,
            Some(Err(())) => {
                return Err(self.err(
                    key,
                    format!(
                        "`{p}` names a systemd credential, but CREDENTIALS_DIRECTORY is not set: systemd sets it for a unit with LoadCredential= (systemd/exchange-agent.service); elsewhere set it to the directory holding the files, or write a plain path"
                    ),
                ));
            }
            None => self.path(p),
        };
        if !path.is_file() {
            return Err(self.err(key, format!("file {} does not exist", path.display())));
        }
        Ok(path)
    }

    fn validate(&self, raw: raw::RawConfig) -> Result<Config, ConfigError> {
        let node = self.node(raw.node)?;
        let hub = self.hub(raw.hub)?;
        let certs = exchange_protocol::tls::load_certs("node certificate", &hub.tls.cert)
            .map_err(|e| self.err("hub.cert", e))?;
        match certs
            .first()
            .and_then(exchange_protocol::tls::peer_common_name)
        {
            Some(cn) if cn == node.id => {}
            cn => {
                return Err(self.err(
                    "hub.cert",
                    format!(
                        "the certificate's common name is {} but node.id is `{}`; the hub takes the node id from the certificate, so they must be equal",
                        cn.map(|c| format!("`{c}`")).unwrap_or_else(|| "missing".into()),
                        node.id
                    ),
                ));
            }
        }
        let queue = QueueLimits {
            max_bytes: match raw.queue.and_then(|q| q.max_bytes) {
                Some(s) => parse_size(&s).map_err(|e| self.err("queue.max_bytes", e))?,
                None => 1 << 30,
            },
        };
        let rb = raw.batch.unwrap_or_default();
        let batch = BatchLimits {
            max_records: rb.max_records.unwrap_or(5000),
            max_bytes: match rb.max_bytes {
                Some(s) => parse_size(&s).map_err(|e| self.err("batch.max_bytes", e))? as usize,
                None => 4 << 20,
            },
        };
        if !(1..=100_000).contains(&batch.max_records) {
            return Err(self.err(
                "batch.max_records",
                format!(
                    "{} is out of range; expected 1 to 100000",
                    batch.max_records
                ),
            ));
        }
        if !(1024..=exchange_protocol::batch::DEFAULT_MAX_BATCH_BYTES).contains(&batch.max_bytes) {
            return Err(self.err(
                "batch.max_bytes",
                "expected between 1KiB and 64MiB (the hub's default limit)",
            ));
        }
        if queue.max_bytes < 2 * batch.max_bytes as u64 {
            return Err(self.err(
                "queue.max_bytes",
                "must be at least twice batch.max_bytes, so a full batch always fits",
            ));
        }
        let mut sources = BTreeMap::new();
        for (i, s) in raw.sources.into_iter().enumerate() {
            let spec = self.source(i, s)?;
            if sources.contains_key(&spec.name) {
                return Err(self.err(
                    &format!("sources[{i}].name"),
                    format!("source `{}` is defined twice", spec.name),
                ));
            }
            sources.insert(spec.name.clone(), spec);
        }
        let key_files = raw.policy.unwrap_or_default();
        let keys = self.keys(&key_files, &node.data_dir)?;
        let verify = match raw.verify {
            Some(v) => {
                if keys.pseudonym.is_none() {
                    return Err(self.err(
                        "verify",
                        "the verification service names subjects in its audit records by their keyed pseudonym, never in clear: set `pseudonym_key_file` in [policy]",
                    ));
                }
                Some(self.verify(v, &node.data_dir)?)
            }
            None => None,
        };
        let mut resources = Vec::new();
        let mut codes = HashSet::new();
        for (i, r) in raw.resources.into_iter().enumerate() {
            let res = self.resource(i, r, &sources)?;
            if !codes.insert(res.code.clone()) {
                return Err(self.err(
                    &format!("resources[{i}].code"),
                    format!("resource `{}` is defined twice", res.code),
                ));
            }
            for (name, rule) in &res.fields {
                let (missing, what) = match rule {
                    Rule::Pseudonym { .. } if keys.pseudonym.is_none() => {
                        (true, "policy.pseudonym_key_file")
                    }
                    Rule::FpeDigits { .. } if keys.fpe.is_none() => (true, "policy.fpe_key_file"),
                    _ => (false, ""),
                };
                if missing {
                    return Err(self.err(
                        &format!("resources[{i}].fields.{name}"),
                        format!(
                            "resource `{}`, field `{name}`: rule {rule} needs a key: set `{what}` in [policy]",
                            res.code
                        ),
                    ));
                }
            }
            if res.share.delivers() && keys.seal.is_none() {
                let hidden = res
                    .fields
                    .iter()
                    .find(|(n, rule)| n.eq_ignore_ascii_case(&res.key) && !rule.is_plain());
                if let Some((name, rule)) = hidden {
                    let dir = [&key_files.pseudonym_key_file, &key_files.fpe_key_file]
                        .into_iter()
                        .flatten()
                        .filter_map(|f| self.path(f).parent().map(Path::to_path_buf))
                        .next()
                        .unwrap_or_else(|| PathBuf::from("/etc/exchange-agent/keys"));
                    let file = dir.join("seal.key");
                    return Err(self.err(
                        &format!("resources[{i}].fields.{name}"),
                        format!(
                            "resource `{}`: its key `{name}` leaves {}, so its raw value is kept only sealed in the stored source position, under this node's own seal key: set `seal_key_file` in [policy]. Create the file once, outside data_dir, and never share it: `openssl rand -hex 32 > {f} && chmod 600 {f} && chown exchange-agent {f}`",
                            res.code,
                            rule.key_form(),
                            f = file.display()
                        ),
                    ));
                }
            }
            if let Some(v) = &verify
                && v.comparison_key.is_none()
                && let Some((field, _)) = res
                    .verification
                    .compare
                    .iter()
                    .find(|(_, c)| **c == exchange_rules::compare::Compare::Hmac)
            {
                return Err(self.err(
                    &format!("resources[{i}].compare.{field}"),
                    format!("resource `{}`, field `{field}`: \"hmac\" needs the comparison key shared with the requesters: set `comparison_key_file` in [verify]", res.code),
                ));
            }
            resources.push(res);
        }
        let audit = self.audit(raw.audit, &node.data_dir)?;
        Ok(Config {
            file: self.file.to_owned(),
            node,
            hub,
            queue,
            batch,
            sources,
            resources,
            keys,
            admin: self.admin(raw.admin)?,
            verify,
            audit,
        })
    }

    fn admin(&self, a: Option<raw::RawAdmin>) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(listen) = a.and_then(|a| a.listen) else {
            return Ok(None);
        };
        if listen.is_empty() || listen == "off" {
            return Ok(None);
        }
        let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
            self.err(
                "admin.listen",
                format!(
                    "`{listen}` is not an address and port, e.g. \"127.0.0.1:9464\" (or \"off\")"
                ),
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(self.err(
                "admin.listen",
                format!("{addr} is not a loopback address: the admin listener has no authentication, so it listens on 127.0.0.1 or ::1 only (scrape through a local agent or an SSH tunnel)"),
            ));
        }
        Ok(Some(addr))
    }

    /// The text of a key file: outside `data_dir`, readable by its owner only.
    fn secret_file(&self, key: &str, f: &str, data_dir: &Path) -> Result<String, ConfigError> {
        let path = self.existing_file(key, f)?;
        if is_inside(&path, data_dir) {
            return Err(self.err(
                key,
                format!(
                    "{} is inside data_dir ({}): keys live outside it (e.g. in /etc/exchange-agent/keys), so that a copy of data_dir alone opens nothing",
                    path.display(),
                    data_dir.display()
                ),
            ));
        }
        exchange_protocol::tls::check_secret_permissions(&path).map_err(|e| self.err(key, e))?;
        std::fs::read_to_string(&path)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))
    }

    fn keys(&self, p: &raw::RawPolicy, data_dir: &Path) -> Result<Keys, ConfigError> {
        let read = |key: &str, f: &str| self.secret_file(key, f, data_dir);
        // The secrets of the other keys, which the seal key must not repeat.
        let mut others: Vec<Vec<u8>> = Vec::new();
        let pseudonym = match &p.pseudonym_key_file {
            Some(f) => {
                let text = read("policy.pseudonym_key_file", f)?;
                others.extend(hex::decode(text.trim()));
                Some(
                    PseudonymKey::from_hex(p.pseudonym_key_version.unwrap_or(1), &text).map_err(
                        |e| match e {
                            exchange_rules::pseudonym::KeyError::Version => {
                                self.err("policy.pseudonym_key_version", e)
                            }
                            e => self.err("policy.pseudonym_key_file", e),
                        },
                    )?,
                )
            }
            None if p.pseudonym_key_version.is_some() => {
                return Err(self.err(
                    "policy.pseudonym_key_version",
                    "a key version without `pseudonym_key_file`",
                ));
            }
            None => None,
        };
        let fpe = match &p.fpe_key_file {
            Some(f) => {
                let text = read("policy.fpe_key_file", f)?;
                others.extend(hex::decode(text.trim()));
                Some(FpeKey::from_hex(&text).map_err(|e| self.err("policy.fpe_key_file", e))?)
            }
            None => None,
        };
        let seal = match &p.seal_key_file {
            Some(f) => {
                let text = read("policy.seal_key_file", f)?;
                if hex::decode(text.trim()).is_ok_and(|s| others.contains(&s)) {
                    return Err(self.err(
                        "policy.seal_key_file",
                        "the seal key must be a key of its own, not the pseudonym or FPE key (the pseudonym key is shared with other departments): `openssl rand -hex 32` makes one",
                    ));
                }
                Some(
                    exchange_rules::seal::SealKey::from_hex(&text)
                        .map_err(|e| self.err("policy.seal_key_file", e))?,
                )
            }
            None => None,
        };
        let time_zone = match &p.time_zone {
            Some(z) => exchange_rules::generalize::parse_time_zone(z)
                .map_err(|e| self.err("policy.time_zone", e))?,
            None => exchange_rules::generalize::china(),
        };
        Ok(Keys {
            pseudonym,
            fpe,
            seal,
            time_zone,
        })
    }

    fn node(&self, n: raw::RawNode) -> Result<Node, ConfigError> {
        if n.id.is_empty()
            || !n
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(self.err("node.id", "expected letters, digits, `-`, `_` or `.` (it must equal the common name of the node certificate)"));
        }
        if !identifier::is_valid_uscc(&n.department) {
            return Err(self.err("node.department", format!("`{}` is not a valid 统一社会信用代码 (18 characters, GB 32100-2015 check character)", n.department)));
        }
        Ok(Node {
            id: n.id,
            department: n.department,
            data_dir: self.path(&n.data_dir),
        })
    }

    fn hub(&self, h: raw::RawHub) -> Result<Hub, ConfigError> {
        if !h.url.starts_with("https://") {
            return Err(self.err(
                "hub.url",
                format!(
                    "`{}` must start with https:// (the hub is reached over mutual TLS only)",
                    h.url
                ),
            ));
        }
        let min_version = match h.min_tls.as_deref() {
            None | Some("1.3") => MinTlsVersion::Tls13,
            Some("1.2") => MinTlsVersion::Tls12,
            Some(other) => {
                return Err(self.err(
                    "hub.min_tls",
                    format!("`{other}` is not supported; expected \"1.3\" (default) or \"1.2\""),
                ));
            }
        };
        let timeout = match h.timeout {
            Some(t) => parse_duration(&t).map_err(|e| self.err("hub.timeout", e))?,
            None => Duration::from_secs(30),
        };
        if timeout < Duration::from_secs(1) {
            return Err(self.err("hub.timeout", "must be at least 1s"));
        }
        let key = self.existing_file("hub.key", &h.key)?;
        exchange_protocol::tls::check_secret_permissions(&key)
            .map_err(|e| self.err("hub.key", e))?;
        Ok(Hub {
            url: h.url.trim_end_matches('/').to_owned(),
            tls: MutualTls {
                ca: self.existing_file("hub.ca", &h.ca)?,
                cert: self.existing_file("hub.cert", &h.cert)?,
                key,
                min_version,
                crls: self.crls("hub.crl", h.crl.as_deref())?,
            },
            timeout,
        })
    }

    /// The certificate revocation list files of `key`: each must exist and hold CRLs.
    fn crls(&self, key: &str, files: Option<&[String]>) -> Result<Vec<PathBuf>, ConfigError> {
        files
            .unwrap_or_default()
            .iter()
            .map(|f| {
                let path = self.existing_file(key, f)?;
                exchange_protocol::tls::load_crls(std::slice::from_ref(&path))
                    .map_err(|e| self.err(key, e))?;
                Ok(path)
            })
            .collect()
    }

    fn source(&self, i: usize, s: raw::RawSource) -> Result<SourceSpec, ConfigError> {
        let key = |k: &str| format!("sources[{i}].{k}");
        let kind = match s.kind.as_str() {
            "postgres" => SourceKind::Postgres,
            "mysql" => SourceKind::Mysql,
            "sqlite" => SourceKind::Sqlite,
            other => return Err(self.err(
                &key("kind"),
                format!(
                    "`{other}` is not a source kind; expected \"postgres\", \"mysql\" or \"sqlite\""
                ),
            )),
        };
        let url = if kind == SourceKind::Sqlite {
            let path = s.url.strip_prefix("sqlite://").unwrap_or(&s.url);
            let path = self.path(path);
            if !path.is_file() {
                return Err(self.err(
                    &key("url"),
                    format!("SQLite database {} does not exist", path.display()),
                ));
            }
            format!("sqlite://{}", path.display())
        } else {
            let scheme_ok = match kind {
                SourceKind::Postgres => {
                    s.url.starts_with("postgres://") || s.url.starts_with("postgresql://")
                }
                _ => s.url.starts_with("mysql://"),
            };
            if !scheme_ok {
                return Err(self.err(
                    &key("url"),
                    format!(
                        "expected a {} URL",
                        if kind == SourceKind::Postgres {
                            "postgres://"
                        } else {
                            "mysql://"
                        }
                    ),
                ));
            }
            s.url.clone()
        };
        let password = match (s.password_file, s.password_env) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    &key("password_env"),
                    "give either password_file or password_env, not both",
                ));
            }
            (Some(f), None) => {
                let path = self.existing_file(&key("password_file"), &f)?;
                exchange_protocol::tls::check_secret_permissions(&path)
                    .map_err(|e| self.err(&key("password_file"), e))?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| self.err(&key("password_file"), e))?;
                Some(text.trim_end_matches(['\n', '\r']).to_owned())
            }
            (None, Some(var)) => Some(std::env::var(&var).map_err(|_| {
                self.err(
                    &key("password_env"),
                    format!("environment variable `{var}` is not set"),
                )
            })?),
            (None, None) => None,
        };
        let ca = match s.ca {
            Some(p) => Some(self.existing_file(&key("ca"), &p)?),
            None => None,
        };
        let replica_lag = match s.replica_lag {
            Some(l) => parse_duration(&l).map_err(|e| self.err(&key("replica_lag"), e))?,
            None => Duration::from_secs(300),
        };
        Ok(SourceSpec {
            name: s.name,
            kind,
            url,
            password,
            ca,
            pool_size: s.pool_size.unwrap_or(4).max(1),
            replica_lag,
        })
    }

    fn resource(
        &self,
        i: usize,
        r: raw::RawResource,
        sources: &BTreeMap<String, SourceSpec>,
    ) -> Result<Resource, ConfigError> {
        let key = |k: &str| format!("resources[{i}].{k}");
        if r.code.is_empty()
            || r.code.len() > 128
            || !r.code.chars().all(|c| c.is_ascii_graphic() && c != '/')
        {
            return Err(self.err(
                &key("code"),
                "expected 1 to 128 visible ASCII characters without `/`, e.g. \"330100-RSJ-0001\"",
            ));
        }
        let code = r.code.clone();
        let share = match r.share.as_str() {
            "unconditional" => Share::Unconditional,
            "none" => Share::None,
            "conditional" => Share::Conditional {
                deliver: r.deliver.unwrap_or(false),
            },
            other => return Err(self.err(&key("share"), format!("`{other}` is not a share class; expected \"unconditional\", \"conditional\" or \"none\""))),
        };
        if r.deliver.is_some() && !matches!(share, Share::Conditional { .. }) {
            return Err(self.err(
                &key("deliver"),
                format!("resource `{code}`: `deliver` applies to share = \"conditional\" only (unconditional resources are always delivered, `none` never)"),
            ));
        }
        let invalid_key = match r.invalid_key.as_deref() {
            None | Some("quarantine") => InvalidKey::Quarantine,
            Some("deliver") => InvalidKey::Deliver,
            Some(other) => {
                return Err(self.err(
                    &key("invalid_key"),
                    format!("`{other}` is not allowed; expected \"quarantine\" (default) or \"deliver\" (delivered, flagged)"),
                ));
            }
        };
        if !sources.contains_key(&r.source) {
            let known: Vec<_> = sources.keys().map(|k| format!("`{k}`")).collect();
            return Err(self.err(
                &key("source"),
                format!(
                    "no source named `{}`; defined: {}",
                    r.source,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        let relation = match (r.table, r.query) {
            (Some(t), None) => Relation::Table(t),
            (None, Some(q)) => {
                let head = q.trim_start().to_ascii_lowercase();
                if !(head.starts_with("select") || head.starts_with("with")) {
                    return Err(self.err(
                        &key("query"),
                        "expected a read-only SELECT (or WITH … SELECT) statement",
                    ));
                }
                Relation::Query(q)
            }
            _ => return Err(self.err(&key("table"), "give exactly one of `table` or `query`")),
        };
        let mut fields = Vec::new();
        let mut kinds = Vec::new();
        for (name, f) in r.fields {
            let at = format!("resources[{i}].fields.{name}");
            let named =
                |e: String| self.err(&at, format!("resource `{code}`, field `{name}`: {e}"));
            let kind = match &f.identifier {
                Some(k) => IdKind::parse(k).map_err(named)?,
                None => IdKind::Other,
            };
            if let Some(d) = &f.domain
                && (d.is_empty() || d.contains('\0') || d.len() > 64)
            {
                return Err(named(
                    "`domain` must be 1 to 64 characters without NUL".into(),
                ));
            }
            let rule = Rule::parse(&f.rule, kind, f.domain.as_deref()).map_err(named)?;
            kinds.push(kind);
            fields.push((name, rule));
        }
        if fields.is_empty() {
            return Err(self.err(
                &key("fields"),
                "no fields: list every column that may leave, with its rule (default deny)",
            ));
        }
        // Column names are case-insensitive in MySQL and SQLite: a name that differs only in
        // case would read the same column twice, possibly a dropped one.
        let mut seen: HashSet<String> = HashSet::new();
        for (name, _) in &fields {
            if !seen.insert(name.to_lowercase()) {
                return Err(self.err(
                    &format!("resources[{i}].fields.{name}"),
                    format!("`{name}` is listed twice (column names are compared without case)"),
                ));
            }
        }
        let dropped: HashSet<String> = fields
            .iter()
            .filter(|(_, r)| *r == Rule::Drop)
            .map(|(n, _)| n.to_lowercase())
            .collect();
        let key_kind = match fields.iter().position(|(n, _)| n.eq_ignore_ascii_case(&r.key)) {
            Some(p) => match &fields[p].1 {
                Rule::Plain | Rule::Pseudonym { .. } | Rule::FpeDigits { .. } => kinds[p],
                Rule::Drop => return Err(self.err(&key("key"), format!("resource `{code}`: the key column `{}` is dropped in [resources.fields]; the key must be delivered", r.key))),
                other => return Err(self.err(&format!("resources[{i}].fields.{}", fields[p].0), format!("resource `{code}`, field `{}` (the key): rule {other} would make keys collide; a key leaves \"plain\", as a \"pseudonym\" or as \"fpe:digits\"", fields[p].0))),
            },
            None => return Err(self.err(&key("key"), format!("the key column `{}` must be listed in [resources.fields]", r.key))),
        };
        let plain_allowed = r.plain_allowed.unwrap_or_default();
        for name in &plain_allowed {
            match fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some((_, Rule::Plain)) => {}
                Some((_, rule)) => return Err(self.err(&key("plain_allowed"), format!("resource `{code}`, field `{name}`: listed in plain_allowed but its rule is {rule}; list only plain fields"))),
                None => return Err(self.err(&key("plain_allowed"), format!("resource `{code}`: `{name}` in plain_allowed is not a field of [resources.fields]"))),
            }
        }
        let plain_reason = r.plain_reason.filter(|s| !s.trim().is_empty());
        let verification = self.verification(
            i,
            &code,
            &fields,
            &r.key,
            verify::RawVerification {
                compare: r.compare,
                grants: r.grants,
                reveal_not_found: r.reveal_not_found,
                enumerable: r.enumerable,
            },
        )?;
        if !plain_allowed.is_empty() && plain_reason.is_none() {
            return Err(self.err(&key("plain_allowed"), format!("resource `{code}`: plain_allowed needs `plain_reason`, the approval reference (e.g. \"市数据局 2024-17 号批复\")")));
        }
        if matches!(share, Share::Conditional { .. }) {
            for (name, rule) in &fields {
                if *rule == Rule::Generalize(exchange_rules::rule::Generalize::AgeBand(1)) {
                    return Err(self.err(&format!("resources[{i}].fields.{name}"), format!("resource `{code}` is conditional (有条件共享), so field `{name}` may not leave as its exact age: generalize:age_band(1) is a band of one year; give a width of 2 or more, e.g. generalize:age_band(5)")));
                }
                if rule.is_plain() && !plain_allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                    return Err(self.err(&format!("resources[{i}].fields.{name}"), format!("resource `{code}` is conditional (有条件共享), so field `{name}` may not leave plain: give it a desensitizing rule (mask:…, pseudonym, generalize:…, fpe:digits, drop), or list it in `plain_allowed` with the approval in `plain_reason`")));
                }
            }
        }
        let safety_lag = match r.safety_lag {
            Some(s) => parse_duration(&s).map_err(|e| self.err(&key("safety_lag"), e))?,
            None => Duration::from_secs(2),
        };
        let mode = match (r.mode.as_str(), r.cursor) {
            ("incremental", Some(cursor)) if !cursor.is_empty() => {
                for c in &cursor {
                    if dropped.contains(&c.to_lowercase()) {
                        return Err(self.err(&key("cursor"), format!("cursor column `{c}` is dropped in [resources.fields]; cursor values are kept on disk, so a cursor column cannot be a dropped field")));
                    }
                    if let Some((_, rule)) = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(c))
                        && !rule.is_plain()
                        && !c.eq_ignore_ascii_case(&r.key)
                    {
                        return Err(self.err(&key("cursor"), format!("resource `{code}`: cursor column `{c}` is desensitized ({rule}) in [resources.fields]; cursor values are kept on disk, so a cursor column must be plain (or not listed)")));
                    }
                }
                Mode::Incremental { cursor, safety_lag }
            }
            ("incremental", _) => {
                return Err(self.err(
                    &key("cursor"),
                    "incremental mode needs `cursor`, e.g. [\"updated_at\", \"id\"]",
                ));
            }
            ("snapshot", None) => Mode::Snapshot,
            ("snapshot", Some(_)) => {
                return Err(self.err(
                    &key("cursor"),
                    "snapshot mode reads every row; remove `cursor` or use mode = \"incremental\"",
                ));
            }
            (other, _) => {
                return Err(self.err(
                    &key("mode"),
                    format!("`{other}` is not a mode; expected \"incremental\" or \"snapshot\""),
                ));
            }
        };
        let schedule = match (r.schedule, r.every) {
            (Some(_), Some(_)) => {
                return Err(self.err(&key("every"), "give either `schedule` or `every`, not both"));
            }
            (Some(cron), None) => {
                Schedule::cron(&cron).map_err(|e| self.err(&key("schedule"), e))?
            }
            (None, Some(every)) => {
                let d = parse_duration(&every).map_err(|e| self.err(&key("every"), e))?;
                if d < Duration::from_secs(1) {
                    return Err(self.err(&key("every"), "must be at least 1s"));
                }
                Schedule::Every(d)
            }
            (None, None) => Schedule::Every(Duration::from_secs(300)),
        };
        let max_staleness = match r.max_staleness {
            None => Staleness::WorkingDays(2),
            Some(text) => Staleness::Within(
                parse_duration(&text).map_err(|e| self.err(&key("max_staleness"), e))?,
            ),
        };
        Ok(Resource {
            max_staleness,
            code: r.code,
            name: r.name,
            share,
            source: r.source,
            relation,
            key: r.key,
            mode,
            schedule,
            fields,
            key_kind,
            invalid_key,
            plain_allowed,
            plain_reason,
            verification,
        })
    }
}

/// Whether `path` (an existing file) lies inside `dir`, symbolic links and `..` resolved
/// where they exist.
fn is_inside(path: &Path, dir: &Path) -> bool {
    let resolve = |p: &Path| {
        std::fs::canonicalize(p).unwrap_or_else(|_| {
            p.components().fold(PathBuf::new(), |mut out, c| {
                match c {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => out.push(other),
                }
                out
            })
        })
    };
    resolve(path).starts_with(resolve(dir))
}

#[cfg(test)]
mod tests;
