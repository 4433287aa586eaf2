//! `[resources.fields]`: each column's rule (default deny: only listed columns leave), the key
//! column's rule and identifier kind, `plain_allowed`, and what a conditional resource
//! (有条件共享) may not deliver.

use std::collections::HashSet;

use super::{ConfigError, Validator, raw};
use crate::identifier::IdKind;
use exchange_protocol::tr;
use exchange_rules::rule::Rule;

/// A resource's fields as validated.
pub(super) struct Fields {
    /// Each field's name and rule, in file order.
    pub rules: Vec<(String, Rule)>,
    /// Each field's identifier kind, in the same order.
    pub kinds: Vec<IdKind>,
    /// Declared types (`type = …`, file drop resources only), by field name.
    pub types: Vec<(String, exchange_connectors::files::FieldType)>,
}

impl Validator<'_> {
    /// The fields in file order with their rules, and each field's identifier kind; at least
    /// one, no name twice (compared without case).
    pub(super) fn fields(
        &self,
        i: usize,
        code: &str,
        raw: raw::indexmap_like::OrderedFields,
    ) -> Result<Fields, ConfigError> {
        let mut fields = Vec::new();
        let mut kinds = Vec::new();
        let mut types = Vec::new();
        for (name, f) in raw {
            let at = format!("resources[{i}].fields.{name}");
            let named = |e: String| {
                self.err(
                    &at,
                    tr!(
                        "resource `{code}`, field `{name}`: {e}",
                        "资源 `{code}` 的字段 `{name}`：{e}"
                    ),
                )
            };
            let kind = match &f.identifier {
                Some(k) => IdKind::parse(k).map_err(named)?,
                None => IdKind::Other,
            };
            if let Some(d) = &f.domain
                && (d.is_empty() || d.contains('\0') || d.len() > 64)
            {
                return Err(named(tr!(
                    "`domain` must be 1 to 64 characters without NUL",
                    "`domain` 应为 1 到 64 个字符，且不含 NUL 字符"
                )));
            }
            let rule = Rule::parse(&f.rule, kind, f.domain.as_deref()).map_err(named)?;
            if let Some(ty) = &f.ty {
                let known = exchange_connectors::files::FieldType::ALL
                    .map(|(n, _)| n)
                    .join(", ");
                let ty = exchange_connectors::files::FieldType::parse(ty).ok_or_else(|| {
                    named(tr!(
                        "`{ty}` is not a field type; expected one of {known}",
                        "`{ty}` 不是字段类型；应为以下之一：{known}"
                    ))
                })?;
                types.push((name.clone(), ty));
            }
            kinds.push(kind);
            fields.push((name, rule));
        }
        if fields.is_empty() {
            return Err(self.err(
                &format!("resources[{i}].fields"),
                tr!(
                    "no fields: list every column that may leave, with its rule (default deny)",
                    "没有字段：请列出每个允许推送的列及其规则（未列出的列一律不推送）"
                ),
            ));
        }
        // Column names are case-insensitive in MySQL and SQLite: a name that differs only in
        // case would read the same column twice, possibly a dropped one.
        let mut seen: HashSet<String> = HashSet::new();
        for (name, _) in &fields {
            if !seen.insert(name.to_lowercase()) {
                return Err(self.err(
                    &format!("resources[{i}].fields.{name}"),
                    tr!(
                        "`{name}` is listed twice (column names are compared without case)",
                        "`{name}` 列出了两次（列名比较时不区分大小写）"
                    ),
                ));
            }
        }
        Ok(Fields {
            rules: fields,
            kinds,
            types,
        })
    }

    /// The identifier kind of the key column, which must be listed and leave in a form that
    /// keeps keys apart (plain, pseudonym or fpe:digits).
    pub(super) fn key_kind(
        &self,
        i: usize,
        code: &str,
        fields: &[(String, Rule)],
        kinds: &[IdKind],
        key_column: &str,
    ) -> Result<IdKind, ConfigError> {
        let key = |k: &str| format!("resources[{i}].{k}");
        match fields.iter().position(|(n, _)| n.eq_ignore_ascii_case(key_column)) {
            Some(p) => match &fields[p].1 {
                Rule::Plain | Rule::Pseudonym { .. } | Rule::FpeDigits { .. } => Ok(kinds[p]),
                Rule::Drop => Err(self.err(&key("key"), tr!("resource `{code}`: the key column `{}` is dropped in [resources.fields]; the key must be delivered", "资源 `{code}`：键列 `{}` 在 [resources.fields] 中设为丢弃；键必须推送", key_column))),
                other => Err(self.err(&format!("resources[{i}].fields.{}", fields[p].0), tr!("resource `{code}`, field `{}` (the key): rule {other} would make keys collide; a key leaves \"plain\", as a \"pseudonym\" or as \"fpe:digits\"", "资源 `{code}` 的字段 `{}`（键列）：规则 {other} 会使不同的键变得相同；键只能以 \"plain\"（明文）、\"pseudonym\"（假名）或 \"fpe:digits\"（格式保留加密）推送", fields[p].0))),
            },
            None => Err(self.err(&key("key"), tr!("the key column `{}` must be listed in [resources.fields]", "键列 `{}` 必须在 [resources.fields] 中列出", key_column))),
        }
    }

    /// Every name in `plain_allowed` is a plain field.
    pub(super) fn plain_allowed(
        &self,
        key: &str,
        code: &str,
        fields: &[(String, Rule)],
        plain_allowed: &[String],
    ) -> Result<(), ConfigError> {
        for name in plain_allowed {
            match fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some((_, Rule::Plain)) => {}
                Some((_, rule)) => return Err(self.err(key, tr!("resource `{code}`, field `{name}`: listed in plain_allowed but its rule is {rule}; list only plain fields", "资源 `{code}` 的字段 `{name}`：列在 plain_allowed 中，但它的规则是 {rule}；plain_allowed 只能列明文（plain）字段"))),
                None => return Err(self.err(key, tr!("resource `{code}`: `{name}` in plain_allowed is not a field of [resources.fields]", "资源 `{code}`：plain_allowed 中的 `{name}` 不是 [resources.fields] 中的字段"))),
            }
        }
        Ok(())
    }

    /// A conditional resource (有条件共享) delivers no field plain unless approved, and no
    /// exact age.
    pub(super) fn conditional_fields(
        &self,
        i: usize,
        code: &str,
        fields: &[(String, Rule)],
        plain_allowed: &[String],
    ) -> Result<(), ConfigError> {
        for (name, rule) in fields {
            if *rule == Rule::Generalize(exchange_rules::rule::Generalize::AgeBand(1)) {
                return Err(self.err(&format!("resources[{i}].fields.{name}"), tr!("resource `{code}` is conditional (有条件共享), so field `{name}` may not leave as its exact age: generalize:age_band(1) is a band of one year; give a width of 2 or more, e.g. generalize:age_band(5)", "资源 `{code}` 为有条件共享，字段 `{name}` 不得以精确年龄推送：generalize:age_band(1) 的年龄段只有一岁宽；请将宽度设为 2 或以上，例如 generalize:age_band(5)")));
            }
            if rule.is_plain() && !plain_allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                return Err(self.err(&format!("resources[{i}].fields.{name}"), tr!("resource `{code}` is conditional (有条件共享), so field `{name}` may not leave plain: give it a desensitizing rule (mask:…, pseudonym, generalize:…, fpe:digits, drop), or list it in `plain_allowed` with the approval in `plain_reason`", "资源 `{code}` 为有条件共享，字段 `{name}` 不得以明文推送：请为它设置脱敏规则（mask:…、pseudonym、generalize:…、fpe:digits、drop），或将它列入 `plain_allowed`，并在 `plain_reason` 中写明审批文号")));
            }
        }
        Ok(())
    }
}
