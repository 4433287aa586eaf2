//! Which configuration file a command reads: `--config`, else the environment variable
//! `EXCHANGE_AGENT_CONFIG`, else `/etc/exchange-agent/agent.toml`. The path is made absolute
//! so that every message names the file that was actually looked for.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use exchange_protocol::tr;

/// The environment variable naming the configuration file.
pub const ENV: &str = "EXCHANGE_AGENT_CONFIG";
/// The configuration file when neither `--config` nor [`ENV`] names one.
pub const DEFAULT: &str = "/etc/exchange-agent/agent.toml";

/// Where the configuration path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The `--config` option.
    Flag,
    /// The environment variable [`ENV`].
    Env,
    /// Neither was given: [`DEFAULT`].
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => f.write_str(&tr!("given by --config", "由 --config 指定")),
            Origin::Env => f.write_str(&tr!(
                "from the environment variable {ENV}",
                "来自环境变量 {ENV}"
            )),
            Origin::Default => f.write_str(&tr!(
                "the default; give --config <file> or set {ENV} to use another file",
                "默认路径；要使用其他文件，请用 --config <文件> 指定，或设置环境变量 {ENV}"
            )),
        }
    }
}

/// The configuration file a command reads, and why.
#[derive(Debug, Clone)]
pub struct ConfigPath {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// Where the path came from.
    pub origin: Origin,
}

impl ConfigPath {
    /// Resolves the path from the `--config` value and the value of [`ENV`].
    pub fn resolve(flag: Option<&Path>, env: Option<OsString>) -> ConfigPath {
        let (path, origin) = match (flag, env.filter(|v| !v.is_empty())) {
            (Some(p), _) => (p.to_owned(), Origin::Flag),
            (None, Some(v)) => (PathBuf::from(v), Origin::Env),
            (None, None) => (PathBuf::from(DEFAULT), Origin::Default),
        };
        let path = std::path::absolute(&path).unwrap_or(path);
        ConfigPath { path, origin }
    }

    /// Resolves the path from the `--config` value and this process's environment.
    pub fn from_env(flag: Option<&Path>) -> ConfigPath {
        Self::resolve(flag, std::env::var_os(ENV))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_the_environment_which_wins_over_the_default() {
        let flag = ConfigPath::resolve(Some(Path::new("/a.toml")), Some("/b.toml".into()));
        assert_eq!(
            (flag.path.as_path(), flag.origin),
            (Path::new("/a.toml"), Origin::Flag)
        );
        let env = ConfigPath::resolve(None, Some("/b.toml".into()));
        assert_eq!(
            (env.path.as_path(), env.origin),
            (Path::new("/b.toml"), Origin::Env)
        );
        let default = ConfigPath::resolve(None, Some("".into()));
        assert_eq!(
            (default.path.as_path(), default.origin),
            (Path::new(DEFAULT), Origin::Default)
        );
    }

    #[test]
    fn a_relative_path_is_made_absolute() {
        let p = ConfigPath::resolve(Some(Path::new("agent.toml")), None);
        assert!(p.path.is_absolute());
        assert!(p.path.ends_with("agent.toml"));
    }
}
