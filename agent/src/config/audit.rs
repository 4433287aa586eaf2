//! `[audit]`: when the audit log is rotated and where older rotated files go, as written
//! (`RawAudit`, `deny_unknown_fields`) and validated into [`crate::audit::Retention`].
//!
//! A rotated file is never deleted: without `archive_dir` or `archive_command` every one stays
//! in `data_dir`, so `keep` alone (which would have nowhere to put the others) is refused.

use std::path::Path;
use std::time::Duration;

use exchange_protocol::tr;
use serde::Deserialize;

use super::{ConfigError, Validator, is_inside, parse_duration, parse_size};
use crate::audit::{Archive, ArchiveTo, DEFAULT_KEEP, ROTATE_BYTES, Retention};

/// `[audit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub max_file_bytes: Option<String>,
    pub keep: Option<usize>,
    pub archive_dir: Option<String>,
    pub archive_command: Option<Vec<String>>,
    pub archive_timeout: Option<String>,
}

/// How long an archive command may run by default.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(600);

impl Validator<'_> {
    pub(super) fn audit(
        &self,
        raw: Option<RawAudit>,
        data_dir: &Path,
    ) -> Result<Retention, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Retention::default());
        };
        let max_file_bytes = match &raw.max_file_bytes {
            Some(s) => parse_size(s).map_err(|e| self.err("audit.max_file_bytes", e))?,
            None => ROTATE_BYTES,
        };
        if !(1024..=1 << 30).contains(&max_file_bytes) {
            return Err(self.err(
                "audit.max_file_bytes",
                tr!(
                    "expected between 1KiB and 1GiB (default 64MiB)",
                    "应在 1KiB 到 1GiB 之间（默认 64MiB）"
                ),
            ));
        }
        if raw.archive_timeout.is_some() && raw.archive_command.is_none() {
            return Err(self.err(
                "audit.archive_timeout",
                tr!(
                    "a timeout without `archive_command`: it bounds how long the command may run",
                    "设置了超时，却没有设置 `archive_command`：超时限制的是归档命令的运行时间"
                ),
            ));
        }
        let to = match (raw.archive_dir, raw.archive_command) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "audit.archive_command",
                    tr!(
                        "both `archive_dir` and `archive_command` are set: set one (a command can copy into a directory itself)",
                        "`archive_dir` 和 `archive_command` 同时设置了：只能设置其一（归档命令可以自己复制到目录中）"
                    ),
                ));
            }
            (Some(dir), None) => Some(ArchiveTo::Dir(self.archive_dir(&dir, data_dir)?)),
            (None, Some(argv)) => Some(ArchiveTo::Command {
                argv: self.archive_command(argv)?,
                timeout: match &raw.archive_timeout {
                    Some(s) => match parse_duration(s) {
                        Ok(d) if !d.is_zero() => d,
                        Ok(_) => {
                            return Err(self.err(
                                "audit.archive_timeout",
                                tr!("expected more than 0s", "应大于 0s"),
                            ));
                        }
                        Err(e) => return Err(self.err("audit.archive_timeout", e)),
                    },
                    None => ARCHIVE_TIMEOUT,
                },
            }),
            (None, None) => None,
        };
        let archive = match (to, raw.keep) {
            (Some(to), keep) => Some(Archive {
                keep: keep.unwrap_or(DEFAULT_KEEP),
                to,
            }),
            (None, Some(_)) => {
                return Err(self.err(
                    "audit.keep",
                    tr!(
                        "rotated audit files are never deleted, so `keep` needs somewhere to move the older ones: set `archive_dir` or `archive_command` in [audit] (without either, every rotated file stays in data_dir)",
                        "轮转后的审计文件从不删除，因此 `keep` 需要一个存放较旧文件的去处：请在 [audit] 中设置 `archive_dir` 或 `archive_command`（两者都不设置时，所有轮转文件都留在 data_dir 中）"
                    ),
                ));
            }
            (None, None) => None,
        };
        Ok(Retention {
            max_file_bytes,
            archive,
        })
    }

    /// `archive_dir`: an existing directory outside `data_dir`.
    fn archive_dir(&self, dir: &str, data_dir: &Path) -> Result<std::path::PathBuf, ConfigError> {
        let path = self.path(dir);
        if !path.is_dir() {
            return Err(self.err(
                "audit.archive_dir",
                tr!(
                    "directory {} does not exist: create it, writable by the service user (under systemd also name it in ReadWritePaths=, docs/OPERATIONS.md)",
                    "目录 {} 不存在：请创建它，并让服务用户可写（在 systemd 下还须写入 ReadWritePaths=，见 docs/OPERATIONS.md）",
                    path.display()
                ),
            ));
        }
        if is_inside(&path, data_dir) {
            return Err(self.err(
                "audit.archive_dir",
                tr!(
                    "{} is inside data_dir ({}): archived files go elsewhere (another disk or an archive volume)",
                    "{} 位于 data_dir（{}）之内：归档文件应放到别处（另一块磁盘或归档卷）",
                    path.display(),
                    data_dir.display()
                ),
            ));
        }
        Ok(path)
    }

    /// `archive_command`: an executable named by its absolute path, then its arguments.
    fn archive_command(&self, argv: Vec<String>) -> Result<Vec<String>, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let key = "audit.archive_command";
        let Some(program) = argv.first() else {
            return Err(self.err(
                key,
                tr!(
                    "expected the program and its arguments, e.g. [\"/usr/local/bin/archive-audit\", \"--to\", \"backup\"] (the file's path is added as the last argument)",
                    "应为程序及其参数，例如 [\"/usr/local/bin/archive-audit\", \"--to\", \"backup\"]（待归档文件的路径会追加为最后一个参数）"
                ),
            ));
        };
        let path = Path::new(program);
        if !path.is_absolute() {
            return Err(self.err(
                key,
                tr!(
                    "`{program}` is not an absolute path: name the program by its full path (the service's PATH is minimal)",
                    "`{program}` 不是绝对路径：请写出程序的完整路径（服务的 PATH 只含最基本的目录）"
                ),
            ));
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(argv),
            Ok(_) => Err(self.err(
                key,
                tr!(
                    "{program} is not an executable file",
                    "{program} 不是可执行文件"
                ),
            )),
            Err(e) => Err(self.err(
                key,
                tr!(
                    "cannot find {program}: {}",
                    "找不到 {program}：{}",
                    exchange_protocol::translate::io(&e)
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid configuration around an `[audit]` section, in a directory of its own
    /// (with `archive/`).
    struct Fixture(super::super::tests::Fixture);

    impl Fixture {
        fn new() -> Fixture {
            let f = super::super::tests::Fixture::new();
            std::fs::create_dir(f.dir.path().join("archive")).unwrap();
            Fixture(f)
        }

        fn parse(&self, audit: &str) -> Result<Retention, String> {
            let text = format!(
                "[node]\nid = \"rsj-node-01\"\ndepartment = \"11330100MB0123456W\"\ndata_dir = \"data\"\n\n[hub]\nurl = \"https://hub.example:8443\"\nca = \"tls/ca.pem\"\ncert = \"tls/node.pem\"\nkey = \"tls/node.key\"\n\n{audit}"
            );
            self.0
                .parse(&text)
                .map(|c| c.audit)
                .map_err(|e| e.to_string())
        }
    }

    #[test]
    fn without_an_audit_section_every_rotated_file_stays_and_rotation_is_at_64_mib() {
        let f = Fixture::new();
        assert_eq!(f.parse("").unwrap(), Retention::default());
        assert_eq!(Retention::default().max_file_bytes, 64 << 20);
        assert_eq!(Retention::default().archive, None);
    }

    #[test]
    fn an_archive_directory_keeps_sixteen_files_by_default() {
        let f = Fixture::new();
        let r = f
            .parse("[audit]\narchive_dir = \"archive\"\nmax_file_bytes = \"16MiB\"\n")
            .unwrap();
        assert_eq!(r.max_file_bytes, 16 << 20);
        assert_eq!(
            r.archive,
            Some(Archive {
                keep: 16,
                to: ArchiveTo::Dir(f.0.dir.path().join("archive")),
            })
        );
        let r = f
            .parse("[audit]\narchive_command = [\"/bin/true\", \"--to\", \"x\"]\nkeep = 0\narchive_timeout = \"2m\"\n")
            .unwrap();
        assert_eq!(
            r.archive,
            Some(Archive {
                keep: 0,
                to: ArchiveTo::Command {
                    argv: vec!["/bin/true".into(), "--to".into(), "x".into()],
                    timeout: Duration::from_secs(120),
                },
            })
        );
    }

    #[test]
    fn errors_name_the_key_and_what_is_expected() {
        let f = Fixture::new();
        let cases: &[(&str, &[&str])] = &[
            (
                "[audit]\nkeep = 4\n",
                &[
                    "agent.toml:13:1",
                    "key `audit.keep`",
                    "never deleted",
                    "archive_dir",
                ],
            ),
            (
                "[audit]\narchive_dir = \"archive\"\narchive_command = [\"/bin/true\"]\n",
                &["key `audit.archive_command`", "set one"],
            ),
            (
                "[audit]\narchive_dir = \"nowhere\"\n",
                &["key `audit.archive_dir`", "nowhere does not exist"],
            ),
            (
                "[audit]\narchive_dir = \"data/old\"\n",
                &["key `audit.archive_dir`"],
            ),
            (
                "[audit]\narchive_command = [\"archive-audit\"]\n",
                &["key `audit.archive_command`", "not an absolute path"],
            ),
            (
                "[audit]\narchive_command = []\n",
                &["key `audit.archive_command`", "expected the program"],
            ),
            (
                "[audit]\nmax_file_bytes = \"10B\"\n",
                &["key `audit.max_file_bytes`", "between 1KiB and 1GiB"],
            ),
            (
                "[audit]\narchive_dir = \"archive\"\narchive_timeout = \"1m\"\n",
                &["key `audit.archive_timeout`", "without `archive_command`"],
            ),
            (
                "[audit]\nkeeps = 3\n",
                &["unknown key `keeps`; did you mean `keep`?"],
            ),
        ];
        // `data/old` exists, inside data_dir.
        std::fs::create_dir_all(f.0.dir.path().join("data/old")).unwrap();
        for (audit, needles) in cases {
            let e = f.parse(audit).unwrap_err();
            for n in *needles {
                assert!(e.contains(n), "{audit:?}: expected `{n}` in: {e}");
            }
        }
        let plain = f.0.dir.path().join("tls/ca.pem");
        let e = f
            .parse(&format!(
                "[audit]\narchive_command = [\"{}\"]\n",
                plain.display()
            ))
            .unwrap_err();
        assert!(e.contains("is not an executable file"), "{e}");
    }
}
