//! `[[sources]] kind = "files"` and the resources that read one: the drop directory and how
//! its files are recognised as complete and decoded; each resource's subdirectory, what a file
//! means (`mode`), and its fields' declared types.

use std::path::{Path, PathBuf};
use std::time::Duration;

use exchange_connectors::files::{FieldType, Ready, TextEncoding};
use exchange_protocol::tr;

use super::{ConfigError, Mode, Validator, parse_duration, raw};

/// A file drop source as validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FileDrop {
    /// The drop directory: one subdirectory per resource.
    pub root: PathBuf,
    /// How text files are decoded.
    pub encoding: TextEncoding,
    /// When a dropped file counts as complete.
    pub ready: Ready,
    /// How long processed files stay in `done/` (`None`: until someone removes them).
    pub delete_after: Option<Duration>,
}

/// What each file of a resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EachFile {
    /// The whole resource: keys absent from the file are deleted at the hub (`mode = "snapshot"`).
    Snapshot,
    /// Rows to add or replace by key; keys absent stay as they are (`mode = "upsert"`).
    Upsert,
}

/// A resource read from a file drop.
#[derive(Debug, Clone, PartialEq)]
pub struct FileResource {
    /// Its source's settings.
    pub drop: FileDrop,
    /// Its subdirectory of the drop.
    pub directory: String,
    /// What each file is.
    pub each_file: EachFile,
    /// Declared types by field name (a field not listed is text).
    pub types: Vec<(String, FieldType)>,
}

impl FileResource {
    /// The resource's directory.
    pub fn dir(&self) -> PathBuf {
        self.drop.root.join(&self.directory)
    }

    /// The declared type of `column` (text unless declared).
    pub fn type_of(&self, column: &str) -> FieldType {
        self.types
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(column))
            .map_or(FieldType::Text, |(_, t)| *t)
    }
}

impl Validator<'_> {
    /// A file drop source: `path` an existing directory, no `url`, `encoding`, `ready`,
    /// `settle` and `delete_after` as documented.
    pub(super) fn file_drop(&self, i: usize, s: &raw::RawSource) -> Result<FileDrop, ConfigError> {
        let key = |k: &str| format!("sources[{i}].{k}");
        if s.url.is_some() {
            return Err(self.err(
                &key("url"),
                tr!(
                    "a file drop has no `url`; give its directory as `path`",
                    "文件交换目录没有 `url`；请用 `path` 指定目录"
                ),
            ));
        }
        let Some(path) = &s.path else {
            return Err(self.err(&key("path"), tr!(
                "a file drop needs `path`, its directory, e.g. \"/var/lib/exchange-agent/drop\"",
                "文件交换目录需要设置 `path`（目录），例如 \"/var/lib/exchange-agent/drop\""
            )));
        };
        let root = self.path(path);
        if !root.is_dir() {
            return Err(self.err(&key("path"), tr!(
                "directory {} does not exist; create it, owned by the agent's user, with the department's systems allowed to write into it",
                "目录 {} 不存在；请创建该目录，属主为本程序的运行用户，并允许本部门系统向其中写入文件",
                root.display()
            )));
        }
        let encoding = match &s.encoding {
            None => TextEncoding::Auto,
            Some(e) => TextEncoding::parse(e).ok_or_else(|| self.err(&key("encoding"), tr!(
                "`{e}` is not an encoding; expected \"auto\" (default), \"utf-8\", \"gbk\" or \"gb18030\"",
                "`{e}` 不是支持的编码；应为 \"auto\"（默认）、\"utf-8\"、\"gbk\" 或 \"gb18030\""
            )))?,
        };
        let settle = match &s.settle {
            Some(t) => parse_duration(t).map_err(|e| self.err(&key("settle"), e))?,
            None => Duration::from_secs(10),
        };
        let ready = match s.ready.as_deref() {
            None | Some("stable") => Ready::Stable(settle),
            Some("marker") if s.settle.is_none() => Ready::Marker,
            Some("marker") => return Err(self.err(&key("settle"), tr!(
                "`settle` applies to ready = \"stable\" only",
                "`settle` 只适用于 ready = \"stable\""
            ))),
            Some(other) => return Err(self.err(&key("ready"), tr!(
                "`{other}` is not allowed; expected \"stable\" (default: unchanged for `settle`) or \"marker\" (a NAME.done file beside it)",
                "不允许 `{other}`；应为 \"stable\"（默认：在 `settle` 时间内未变化）或 \"marker\"（旁边有 NAME.done 标记文件）"
            ))),
        };
        let delete_after = match &s.delete_after {
            Some(t) => Some(parse_duration(t).map_err(|e| self.err(&key("delete_after"), e))?),
            None => None,
        };
        self.refuse_set(
            &format!("sources[{i}]"),
            &[
                ("password_file", s.password_file.is_some()),
                ("password_env", s.password_env.is_some()),
                ("ca", s.ca.is_some()),
                ("pool_size", s.pool_size.is_some()),
                ("replica_lag", s.replica_lag.is_some()),
            ],
            |name| {
                tr!(
                    "`{name}` applies to a database, not to a file drop",
                    "`{name}` 只适用于数据库，不适用于文件交换目录"
                )
            },
        )?;
        Ok(FileDrop {
            root,
            encoding,
            ready,
            delete_after,
        })
    }

    /// A database source has none of a file drop's keys.
    pub(super) fn no_file_keys(&self, i: usize, s: &raw::RawSource) -> Result<(), ConfigError> {
        self.refuse_set(
            &format!("sources[{i}]"),
            &[
                ("path", s.path.is_some()),
                ("encoding", s.encoding.is_some()),
                ("ready", s.ready.is_some()),
                ("settle", s.settle.is_some()),
                ("delete_after", s.delete_after.is_some()),
            ],
            |name| {
                tr!(
                    "`{name}` applies to kind = \"files\" only",
                    "`{name}` 只适用于 kind = \"files\""
                )
            },
        )?;
        Ok(())
    }

    /// The part of a resource that reads a file drop: its `directory` (one name, not `done`
    /// or `rejected`), no `table`, `query` or `cursor`, and `mode` "snapshot" or "upsert".
    pub(super) fn file_resource(
        &self,
        i: usize,
        r: &raw::RawResource,
        drop: &FileDrop,
        types: Vec<(String, FieldType)>,
    ) -> Result<(FileResource, Mode), ConfigError> {
        let key = |k: &str| format!("resources[{i}].{k}");
        self.refuse_set(
            &format!("resources[{i}]"),
            &[
                ("table", r.table.is_some()),
                ("query", r.query.is_some()),
                ("cursor", r.cursor.is_some()),
                ("safety_lag", r.safety_lag.is_some()),
            ],
            |name| {
                tr!(
                    "`{name}` does not apply to a file drop resource; give its `directory`",
                    "文件交换资源不使用 `{name}`；请设置其 `directory`"
                )
            },
        )?;
        let directory = match &r.directory {
            Some(d) if is_one_name(d) => d.clone(),
            _ => return Err(self.err(&key("directory"), tr!(
                "expected the name of the resource's subdirectory of the drop (one name, not \"done\" or \"rejected\"), e.g. \"roster\"",
                "应为该资源在文件交换目录下的子目录名（单个名称，不能是 \"done\" 或 \"rejected\"），例如 \"roster\""
            ))),
        };
        let each_file = match r.mode.as_str() {
            "snapshot" => EachFile::Snapshot,
            "upsert" => EachFile::Upsert,
            other => return Err(self.err(&key("mode"), tr!(
                "`{other}` is not a mode of a file drop resource; expected \"snapshot\" (each file is the whole resource) or \"upsert\" (each file's rows are added or replaced by key)",
                "`{other}` 不是文件交换资源的模式；应为 \"snapshot\"（每个文件是资源的全量）或 \"upsert\"（按主键新增或替换文件中的行）"
            ))),
        };
        if !r.grants.is_empty() || r.compare.is_some() {
            return Err(self.err(&key("grants"), tr!(
                "verification cannot look rows up in a file drop; a file drop resource has no `grants` or `compare`",
                "核验无法在文件交换目录中查找记录；文件交换资源不能设置 `grants` 或 `compare`"
            )));
        }
        let file = FileResource {
            drop: drop.clone(),
            directory,
            each_file,
            types,
        };
        Ok((file, Mode::Snapshot))
    }
}

impl Validator<'_> {
    /// Refuses the first of `keys` (name, whether it is set) that is set, under `prefix`.
    fn refuse_set(
        &self,
        prefix: &str,
        keys: &[(&str, bool)],
        why: impl Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        match keys.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(self.err(&format!("{prefix}.{name}"), why(name))),
            None => Ok(()),
        }
    }
}

fn is_one_name(d: &str) -> bool {
    !d.is_empty()
        && d != "."
        && d != ".."
        && d != exchange_connectors::files::drop::DONE
        && d != exchange_connectors::files::drop::REJECTED
        && Path::new(d).components().count() == 1
        && !d.contains('/')
}
