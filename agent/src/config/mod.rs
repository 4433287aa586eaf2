//! The agent's configuration, in two stages (like ripgrep's low and high args):
//! [`raw`] mirrors the TOML with `deny_unknown_fields`; [`Config`] is the validated runtime
//! form in which every invariant holds (paths resolved and present, secrets read and their
//! permissions checked, schedules parsed, field rules known). Code past [`Config::load`] never
//! re-checks.
//!
//! Every error names the file, the line and the key, what was found and what is expected.

mod location;
pub mod origin;
pub mod raw;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use exchange_connectors::{Relation, SourceKind, SourceSpec};
use exchange_protocol::tls::{MinTlsVersion, MutualTls};

pub use exchange_protocol::quantity::{parse_duration, parse_size};
pub use location::Locator;

use crate::identifier;
use crate::policy::Rule;
use crate::schedule::Schedule;

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
    /// 无条件共享: delivered.
    Unconditional,
    /// 不予共享: catalogued only; never pulled or delivered.
    None,
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
    /// Field rules, in file order.
    pub fields: Vec<(String, Rule)>,
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
        let path = self.path(p);
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
            resources.push(res);
        }
        Ok(Config {
            file: self.file.to_owned(),
            node,
            hub,
            queue,
            batch,
            sources,
            resources,
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
            },
            timeout,
        })
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
        let share = match r.share.as_str() {
            "unconditional" => Share::Unconditional,
            "none" => Share::None,
            "conditional" => return Err(self.err(&key("share"), "`conditional` needs desensitization rules, which this version does not have yet; use \"unconditional\" or \"none\"")),
            other => return Err(self.err(&key("share"), format!("`{other}` is not a share class; expected \"unconditional\", \"conditional\" or \"none\""))),
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
        for (name, rule) in r.fields {
            let rule = Rule::parse(&rule)
                .map_err(|e| self.err(&format!("resources[{i}].fields.{name}"), e))?;
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
        match fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(&r.key)) {
            Some((_, Rule::Plain)) => {}
            Some((_, Rule::Drop)) => return Err(self.err(&key("key"), format!("the key column `{}` is dropped in [resources.fields]; the key must be delivered", r.key))),
            None => return Err(self.err(&key("key"), format!("the key column `{}` must be listed in [resources.fields]", r.key))),
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
        Ok(Resource {
            code: r.code,
            name: r.name,
            share,
            source: r.source,
            relation,
            key: r.key,
            mode,
            schedule,
            fields,
        })
    }
}

#[cfg(test)]
mod tests;
