//! The agent's configuration, in two stages (like ripgrep's low and high args):
//! [`raw`] mirrors the TOML with `deny_unknown_fields`; [`Config`] is the validated runtime
//! form in which every invariant holds (paths resolved and present, secrets read and their
//! permissions checked, schedules parsed, field rules known). Code past [`Config::load`] never
//! re-checks.
//!
//! Every error names the file, the line and the key, what was found and what is expected.
//!
//! Validation goes section by section, each in a module named after what it validates: `node`
//! (`[node]`, `[admin]`), `hub`, `limits` (`[queue]`, `[batch]`), `source`, `policy_keys`
//! (`[policy]`), [`verify`] (`[verify]`), `resource`, `fields` and `verification` (a resource's
//! fields, its compare and grants), `resource_keys` (the keys a resource's rules need),
//! `row_locator` (the columns a quarantine entry records), [`audit`].

pub mod audit;
mod fields;
mod file_drop;
mod hub;
mod keys;
mod limits;
mod location;
mod node;
pub mod origin;
mod policy_keys;
pub mod raw;
mod resource;
mod resource_keys;
mod row_locator;
mod source;
mod verification;
pub mod verify;

pub use file_drop::{EachFile, FileDrop, FileResource};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use exchange_connectors::{Relation, SourceSpec};
use exchange_protocol::tls::MutualTls;
use exchange_protocol::tr;

pub use exchange_protocol::quantity::{parse_duration, parse_size};
pub use keys::Keys;
pub use location::Locator;

use crate::identifier::IdKind;
use crate::schedule::Schedule;
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
    /// Offline exchange (`mode = "offline"`): batches leave as files, answers come back as
    /// files; `None` online.
    pub offline: Option<Offline>,
}

/// `[hub] mode = "offline"`: the directories a one-way gateway (网闸) carries files through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offline {
    /// Where batch files are written, for the gateway to carry to the hub.
    pub outbox: PathBuf,
    /// Where the hub's answer files arrive.
    pub inbox: PathBuf,
    /// A batch written and still unanswered this long is written again.
    pub resend_after: Duration,
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
    /// The zstd level batches are compressed at when enqueued.
    pub compression_level: i32,
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
    /// Columns whose values a quarantine entry records (kept on this machine, in clear) so
    /// the row can be found at the source; empty: none (`config::row_locator`).
    pub locator: Vec<String>,
    /// A resource read from a file drop: its directory and what each file is (its `mode`
    /// is then [`Mode::Snapshot`]); `None` for a database's.
    pub files: Option<FileResource>,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            location: None,
            message: tr!(
                "cannot read the configuration file: {}",
                "无法读取配置文件：{}",
                exchange_protocol::translate::io(&e)
            ),
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
            message: tr!(
                "cannot read the configuration file ({}): {}",
                "无法读取配置文件（{}）：{}",
                file.origin,
                exchange_protocol::translate::io(&e)
            ),
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
            message: tr!("key `{key}`: {message}", "配置项 `{key}`：{message}"),
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
                    tr!(
                        "`{p}` names a systemd credential, but CREDENTIALS_DIRECTORY is not set: systemd sets it for a unit with LoadCredential= (systemd/exchange-agent.service); elsewhere set it to the directory holding the files, or write a plain path",
                        "`{p}` 指向 systemd 凭据，但环境变量 CREDENTIALS_DIRECTORY 未设置：systemd 只为配置了 LoadCredential= 的服务单元设置它（见 systemd/exchange-agent.service）；在其他环境中，请将它设为存放这些文件的目录，或改写为普通路径"
                    ),
                ));
            }
            None => self.path(p),
        };
        if !path.is_file() {
            return Err(self.err(
                key,
                tr!("file {} does not exist", "文件 {} 不存在", path.display()),
            ));
        }
        Ok(path)
    }

    /// A file that holds a secret: it exists and is readable by its owner only.
    fn secret_path(&self, key: &str, p: &str) -> Result<PathBuf, ConfigError> {
        let path = self.existing_file(key, p)?;
        exchange_protocol::tls::check_secret_permissions(&path).map_err(|e| self.err(key, e))?;
        Ok(path)
    }

    /// The steps, section by section in this order (the first error found is the one
    /// reported): `[node]`, `[hub]` and its certificate, `[queue]` and `[batch]`,
    /// `[[sources]]`, `[policy]`, `[verify]`, `[[resources]]`, `[audit]`, `[admin]`.
    fn validate(&self, raw: raw::RawConfig) -> Result<Config, ConfigError> {
        let node = self.node(raw.node)?;
        let hub = self.hub(raw.hub)?;
        self.node_certificate(&hub, &node)?;
        let (queue, batch) = self.limits(raw.queue, raw.batch)?;
        let (sources, drops) = self.sources(raw.sources)?;
        let key_files = raw.policy.unwrap_or_default();
        let keys = self.keys(&key_files, &node.data_dir)?;
        let verify = match raw.verify {
            Some(v) => Some(self.verify(v, &keys, &node.data_dir)?),
            None => None,
        };
        let resources = self.resources(
            raw.resources,
            (&sources, &drops),
            &keys,
            &key_files,
            verify.as_ref(),
        )?;
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
