//! `[[resources]]`: each resource validated in named steps (its code, share class, source,
//! relation, fields, mode, schedule), then checked against the keys `[policy]` and `[verify]`
//! provide ([`resource_keys`](super::resource_keys)).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use exchange_connectors::{Relation, SourceSpec};
use exchange_protocol::tr;

use super::fields::Fields;
use super::verify::{RawVerification, Verify};
/// What a resource reads, its file drop settings, and the mode a file drop implies.
type ReadSide = (Relation, Option<super::FileResource>, Option<Mode>);

/// The sources by name, and the file drops among them.
type Sources<'a> = (
    &'a BTreeMap<String, SourceSpec>,
    &'a BTreeMap<String, FileDrop>,
);

use super::file_drop::FileDrop;
use super::{
    ConfigError, InvalidKey, Keys, Mode, Resource, Share, Staleness, Validator, parse_duration, raw,
};
use crate::schedule::Schedule;
use exchange_rules::rule::Rule;

impl Validator<'_> {
    /// Every resource, in file order, each code once; each resource's rules with the keys
    /// they need.
    pub(super) fn resources(
        &self,
        raw: Vec<raw::RawResource>,
        sources: Sources<'_>,
        keys: &Keys,
        key_files: &raw::RawPolicy,
        verify: Option<&Verify>,
    ) -> Result<Vec<Resource>, ConfigError> {
        let mut resources = Vec::new();
        let mut codes = HashSet::new();
        let mut dirs = HashSet::new();
        for (i, r) in raw.into_iter().enumerate() {
            let res = self.resource(i, r, sources)?;
            if let Some(f) = &res.files
                && !dirs.insert(f.dir())
            {
                return Err(self.err(
                    &format!("resources[{i}].directory"),
                    tr!(
                        "another resource reads {} already: each resource of a file drop has a directory of its own",
                        "另一个资源已经读取 {}：文件交换目录中的每个资源都应有自己的子目录",
                        f.dir().display()
                    ),
                ));
            }
            if !codes.insert(res.code.clone()) {
                return Err(self.err(
                    &format!("resources[{i}].code"),
                    tr!(
                        "resource `{}` is defined twice",
                        "资源 `{}` 重复定义",
                        res.code
                    ),
                ));
            }
            self.rule_keys(i, &res, keys)?;
            self.seal_key(i, &res, keys, key_files)?;
            self.comparison_key(i, &res, verify)?;
            resources.push(res);
        }
        Ok(resources)
    }

    fn resource(
        &self,
        i: usize,
        mut r: raw::RawResource,
        (sources, drops): Sources<'_>,
    ) -> Result<Resource, ConfigError> {
        let key = |k: &str| format!("resources[{i}].{k}");
        self.resource_code(&key("code"), &r.code)?;
        let code = r.code.clone();
        let share = self.share(i, &code, &r.share, r.deliver)?;
        let invalid_key = self.invalid_key(&key("invalid_key"), r.invalid_key.as_deref())?;
        self.known_source(&key("source"), &r.source, sources)?;
        let Fields {
            rules: fields,
            kinds,
            types,
        } = self.fields(i, &code, std::mem::take(&mut r.fields))?;
        let (relation, files, mode) = self.read_side(i, &mut r, drops, types)?;
        let key_kind = self.key_kind(i, &code, &fields, &kinds, &r.key)?;
        let plain_allowed = r.plain_allowed.unwrap_or_default();
        self.plain_allowed(&key("plain_allowed"), &code, &fields, &plain_allowed)?;
        let plain_reason = r.plain_reason.filter(|s| !s.trim().is_empty());
        let verification = self.verification(
            i,
            &code,
            &fields,
            &r.key,
            RawVerification {
                compare: r.compare,
                grants: r.grants,
                reveal_not_found: r.reveal_not_found,
                enumerable: r.enumerable,
            },
        )?;
        if !plain_allowed.is_empty() && plain_reason.is_none() {
            return Err(self.err(&key("plain_allowed"), tr!("resource `{code}`: plain_allowed needs `plain_reason`, the approval reference (e.g. \"市数据局 2024-17 号批复\")", "资源 `{code}`：设置了 plain_allowed，就必须在 `plain_reason` 中写明审批文号（例如 \"市数据局 2024-17 号批复\"）")));
        }
        if matches!(share, Share::Conditional { .. }) {
            self.conditional_fields(i, &code, &fields, &plain_allowed)?;
        }
        let mode = match mode {
            Some(mode) => mode,
            None => self.mode(i, &r.mode, r.cursor, r.safety_lag)?,
        };
        if let Mode::Incremental { cursor, .. } = &mode {
            self.cursor_columns(&key("cursor"), &code, cursor, &fields, &r.key)?;
        }
        let locator =
            self.row_locator(&key("locator"), &code, r.locator, &fields, &r.key, &mode)?;
        let schedule = self.schedule(i, r.schedule, r.every)?;
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
            locator,
            files,
        })
    }

    /// What a resource reads: a file drop's directory (with its mode), or a table or query.
    fn read_side(
        &self,
        i: usize,
        r: &mut raw::RawResource,
        drops: &BTreeMap<String, FileDrop>,
        types: Vec<(String, exchange_connectors::files::FieldType)>,
    ) -> Result<ReadSide, ConfigError> {
        let key = |k: &str| format!("resources[{i}].{k}");
        Ok(match drops.get(&r.source) {
            Some(drop) => {
                let (file, mode) = self.file_resource(i, r, drop, types)?;
                (
                    Relation::Table(file.directory.clone()),
                    Some(file),
                    Some(mode),
                )
            }
            None => {
                if r.directory.is_some() {
                    return Err(self.err(&key("directory"), tr!("`directory` applies to a resource of a file drop (kind = \"files\"); a database resource gives `table` or `query`", "`directory` 只适用于文件交换目录（kind = \"files\"）的资源；数据库资源请设置 `table` 或 `query`")));
                }
                if let Some((name, _)) = types.first() {
                    return Err(self.err(&key(&format!("fields.{name}")), tr!("`type` applies to fields of a file drop resource; a database says its columns' types", "`type` 只适用于文件交换资源的字段；数据库列的类型由数据库给出")));
                }
                (
                    self.relation(i, r.table.take(), r.query.take())?,
                    None,
                    None,
                )
            }
        })
    }

    /// The resource code (资源代码): visible ASCII, no `/`, at most 128 characters.
    fn resource_code(&self, key: &str, code: &str) -> Result<(), ConfigError> {
        if code.is_empty()
            || code.len() > 128
            || !code.chars().all(|c| c.is_ascii_graphic() && c != '/')
        {
            return Err(self.err(
                key,
                tr!(
                    "expected 1 to 128 visible ASCII characters without `/`, e.g. \"330100-RSJ-0001\"",
                    "应为 1 到 128 个可见 ASCII 字符，不含 `/`，例如 \"330100-RSJ-0001\""
                ),
            ));
        }
        Ok(())
    }

    /// The share class, with `deliver` for a conditional resource only.
    fn share(
        &self,
        i: usize,
        code: &str,
        share: &str,
        deliver: Option<bool>,
    ) -> Result<Share, ConfigError> {
        let key = |k: &str| format!("resources[{i}].{k}");
        let share = match share {
            "unconditional" => Share::Unconditional,
            "none" => Share::None,
            "conditional" => Share::Conditional {
                deliver: deliver.unwrap_or(false),
            },
            other => return Err(self.err(&key("share"), tr!("`{other}` is not a share class; expected \"unconditional\", \"conditional\" or \"none\"", "`{other}` 不是共享类型；应为 \"unconditional\"（无条件共享）、\"conditional\"（有条件共享）或 \"none\"（不予共享）"))),
        };
        if deliver.is_some() && !matches!(share, Share::Conditional { .. }) {
            return Err(self.err(
                &key("deliver"),
                tr!("resource `{code}`: `deliver` applies to share = \"conditional\" only (unconditional resources are always delivered, `none` never)", "资源 `{code}`：`deliver` 只适用于 share = \"conditional\"（无条件共享的资源总是推送，不予共享的资源从不推送）"),
            ));
        }
        Ok(share)
    }

    fn invalid_key(&self, key: &str, value: Option<&str>) -> Result<InvalidKey, ConfigError> {
        match value {
            None | Some("quarantine") => Ok(InvalidKey::Quarantine),
            Some("deliver") => Ok(InvalidKey::Deliver),
            Some(other) => Err(self.err(
                key,
                tr!("`{other}` is not allowed; expected \"quarantine\" (default) or \"deliver\" (delivered, flagged)", "不允许 `{other}`；应为 \"quarantine\"（隔离，默认）或 \"deliver\"（照常推送并加标记）"),
            )),
        }
    }

    /// The resource's source is one of `[[sources]]`.
    fn known_source(
        &self,
        key: &str,
        source: &str,
        sources: &BTreeMap<String, SourceSpec>,
    ) -> Result<(), ConfigError> {
        if sources.contains_key(source) {
            return Ok(());
        }
        let known: Vec<_> = sources.keys().map(|k| format!("`{k}`")).collect();
        Err(self.err(
            key,
            tr!(
                "no source named `{}`; defined: {}",
                "没有名为 `{}` 的数据源；已定义的数据源：{}",
                source,
                if known.is_empty() {
                    tr!("none", "无")
                } else {
                    known.join(", ")
                }
            ),
        ))
    }

    /// Exactly one of `table` or `query`, a query read-only.
    fn relation(
        &self,
        i: usize,
        table: Option<String>,
        query: Option<String>,
    ) -> Result<Relation, ConfigError> {
        let key = |k: &str| format!("resources[{i}].{k}");
        match (table, query) {
            (Some(t), None) => Ok(Relation::Table(t)),
            (None, Some(q)) => {
                let head = q.trim_start().to_ascii_lowercase();
                if !(head.starts_with("select") || head.starts_with("with")) {
                    return Err(self.err(
                        &key("query"),
                        tr!(
                            "expected a read-only SELECT (or WITH … SELECT) statement",
                            "应为只读的 SELECT（或 WITH … SELECT）语句"
                        ),
                    ));
                }
                Ok(Relation::Query(q))
            }
            _ => Err(self.err(
                &key("table"),
                tr!(
                    "give exactly one of `table` or `query`",
                    "`table` 和 `query` 必须设置其中一个，且只能设置一个"
                ),
            )),
        }
    }
}

/// How a resource is read: its mode, its cursor columns and its schedule.
impl Validator<'_> {
    /// The read mode: incremental over a cursor (its columns checked by
    /// [`Validator::cursor_columns`]), or snapshot.
    fn mode(
        &self,
        i: usize,
        mode: &str,
        cursor: Option<Vec<String>>,
        safety_lag: Option<String>,
    ) -> Result<Mode, ConfigError> {
        let key = |k: &str| format!("resources[{i}].{k}");
        let safety_lag = match safety_lag {
            Some(s) => parse_duration(&s).map_err(|e| self.err(&key("safety_lag"), e))?,
            None => Duration::from_secs(2),
        };
        match (mode, cursor) {
            ("incremental", Some(cursor)) if !cursor.is_empty() => {
                Ok(Mode::Incremental { cursor, safety_lag })
            }
            ("incremental", _) => Err(self.err(
                &key("cursor"),
                tr!(
                    "incremental mode needs `cursor`, e.g. [\"updated_at\", \"id\"]",
                    "增量模式需要设置 `cursor`，例如 [\"updated_at\", \"id\"]"
                ),
            )),
            ("snapshot", None) => Ok(Mode::Snapshot),
            ("snapshot", Some(_)) => Err(self.err(
                &key("cursor"),
                tr!(
                    "snapshot mode reads every row; remove `cursor` or use mode = \"incremental\"",
                    "快照模式每次读取全部行，不用游标；请删除 `cursor`，或改用 mode = \"incremental\""
                ),
            )),
            (other, _) => Err(self.err(
                &key("mode"),
                tr!(
                    "`{other}` is not a mode; expected \"incremental\" or \"snapshot\"",
                    "`{other}` 不是读取模式；应为 \"incremental\"（增量）或 \"snapshot\"（快照）"
                ),
            )),
        }
    }

    /// Cursor values are kept on disk: a cursor column is neither dropped nor desensitized
    /// (unless it is the key, whose stored value is sealed).
    fn cursor_columns(
        &self,
        key: &str,
        code: &str,
        cursor: &[String],
        fields: &[(String, Rule)],
        resource_key: &str,
    ) -> Result<(), ConfigError> {
        let dropped: HashSet<String> = fields
            .iter()
            .filter(|(_, r)| *r == Rule::Drop)
            .map(|(n, _)| n.to_lowercase())
            .collect();
        for c in cursor {
            if dropped.contains(&c.to_lowercase()) {
                return Err(self.err(key, tr!("cursor column `{c}` is dropped in [resources.fields]; cursor values are kept on disk, so a cursor column cannot be a dropped field", "游标列 `{c}` 在 [resources.fields] 中设为丢弃（drop）；游标值要保存在磁盘上，因此游标列不能是丢弃的字段")));
            }
            if let Some((_, rule)) = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(c))
                && !rule.is_plain()
                && !c.eq_ignore_ascii_case(resource_key)
            {
                return Err(self.err(key, tr!("resource `{code}`: cursor column `{c}` is desensitized ({rule}) in [resources.fields]; cursor values are kept on disk, so a cursor column must be plain (or not listed)", "资源 `{code}`：游标列 `{c}` 在 [resources.fields] 中做了脱敏（{rule}）；游标值要保存在磁盘上，因此游标列必须是明文（plain）字段，或不在其中列出")));
            }
        }
        Ok(())
    }

    /// `schedule` (cron) or `every` (at least 1s), default every 5 minutes.
    fn schedule(
        &self,
        i: usize,
        schedule: Option<String>,
        every: Option<String>,
    ) -> Result<Schedule, ConfigError> {
        let key = |k: &str| format!("resources[{i}].{k}");
        match (schedule, every) {
            (Some(_), Some(_)) => Err(self.err(
                &key("every"),
                tr!(
                    "give either `schedule` or `every`, not both",
                    "`schedule` 和 `every` 只能设置其一"
                ),
            )),
            (Some(cron), None) => Schedule::cron(&cron).map_err(|e| self.err(&key("schedule"), e)),
            (None, Some(every)) => {
                let d = parse_duration(&every).map_err(|e| self.err(&key("every"), e))?;
                if d < Duration::from_secs(1) {
                    return Err(self.err(&key("every"), tr!("must be at least 1s", "不能小于 1s")));
                }
                Ok(Schedule::Every(d))
            }
            (None, None) => Ok(Schedule::Every(Duration::from_secs(300))),
        }
    }
}
