//! `[[sources]]`: each source database's kind, URL, password (file or environment), CA and
//! replica lag, each name once; a file drop's settings are `file_drop`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use exchange_connectors::{SourceKind, SourceSpec};
use exchange_protocol::tr;

use super::file_drop::FileDrop;
use super::{ConfigError, Validator, parse_duration, raw};

/// The sources by name, and the file drops among them with their settings.
type Sources = (BTreeMap<String, SourceSpec>, BTreeMap<String, FileDrop>);

impl Validator<'_> {
    /// Every source by name, each name once; the file drops among them with their settings.
    pub(super) fn sources(&self, raw: Vec<raw::RawSource>) -> Result<Sources, ConfigError> {
        let mut sources = BTreeMap::new();
        let mut drops = BTreeMap::new();
        for (i, s) in raw.into_iter().enumerate() {
            let spec = if s.kind == "files" {
                let drop = self.file_drop(i, &s)?;
                let spec = SourceSpec {
                    name: s.name.clone(),
                    kind: SourceKind::Files,
                    url: drop.root.display().to_string(),
                    password: None,
                    ca: None,
                    pool_size: 1,
                    replica_lag: Duration::ZERO,
                };
                drops.insert(s.name, drop);
                spec
            } else {
                self.no_file_keys(i, &s)?;
                self.source(i, s)?
            };
            if sources.contains_key(&spec.name) {
                return Err(self.err(
                    &format!("sources[{i}].name"),
                    tr!(
                        "source `{}` is defined twice",
                        "数据源 `{}` 重复定义",
                        spec.name
                    ),
                ));
            }
            sources.insert(spec.name.clone(), spec);
        }
        Ok((sources, drops))
    }

    fn source(&self, i: usize, s: raw::RawSource) -> Result<SourceSpec, ConfigError> {
        let key = |k: &str| format!("sources[{i}].{k}");
        let kind = self.source_kind(&key("kind"), &s.kind)?;
        let Some(url) = &s.url else {
            return Err(self.err(
                &key("url"),
                tr!(
                    "a database source needs `url`",
                    "数据库数据源需要设置 `url`"
                ),
            ));
        };
        let url = self.source_url(&key("url"), kind, url)?;
        let password = self.source_password(i, s.password_file, s.password_env)?;
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

    fn source_kind(&self, key: &str, kind: &str) -> Result<SourceKind, ConfigError> {
        match kind {
            "postgres" => Ok(SourceKind::Postgres),
            "mysql" => Ok(SourceKind::Mysql),
            "sqlite" => Ok(SourceKind::Sqlite),
            other => Err(self.err(
                key,
                tr!(
                    "`{other}` is not a source kind; expected \"postgres\", \"mysql\", \"sqlite\" or \"files\"",
                    "`{other}` 不是支持的数据源类型；应为 \"postgres\"、\"mysql\"、\"sqlite\" 或 \"files\""
                ),
            )),
        }
    }

    /// The URL as the connector takes it: a SQLite file resolved (and present), a server's
    /// URL with the scheme of its kind.
    fn source_url(&self, key: &str, kind: SourceKind, url: &str) -> Result<String, ConfigError> {
        if kind == SourceKind::Sqlite {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            let path = self.path(path);
            if !path.is_file() {
                return Err(self.err(
                    key,
                    tr!(
                        "SQLite database {} does not exist",
                        "SQLite 数据库文件 {} 不存在",
                        path.display()
                    ),
                ));
            }
            return Ok(format!("sqlite://{}", path.display()));
        }
        let scheme_ok = match kind {
            SourceKind::Postgres => {
                url.starts_with("postgres://") || url.starts_with("postgresql://")
            }
            _ => url.starts_with("mysql://"),
        };
        if !scheme_ok {
            return Err(self.err(
                key,
                tr!(
                    "expected a {} URL",
                    "应为以 {} 开头的 URL",
                    if kind == SourceKind::Postgres {
                        "postgres://"
                    } else {
                        "mysql://"
                    }
                ),
            ));
        }
        Ok(url.to_owned())
    }

    /// The password, from a file readable by its owner only or from an environment variable
    /// (not both); `None`: none.
    fn source_password(
        &self,
        i: usize,
        file: Option<String>,
        env: Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        let key = |k: &str| format!("sources[{i}].{k}");
        match (file, env) {
            (Some(_), Some(_)) => Err(self.err(
                &key("password_env"),
                tr!(
                    "give either password_file or password_env, not both",
                    "password_file 和 password_env 只能设置其一"
                ),
            )),
            (Some(f), None) => {
                let path = self.secret_path(&key("password_file"), &f)?;
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.err(&key("password_file"), exchange_protocol::translate::io(&e))
                })?;
                Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
            }
            (None, Some(var)) => Ok(Some(std::env::var(&var).map_err(|_| {
                self.err(
                    &key("password_env"),
                    tr!(
                        "environment variable `{var}` is not set",
                        "环境变量 `{var}` 未设置"
                    ),
                )
            })?)),
            (None, None) => Ok(None),
        }
    }
}
