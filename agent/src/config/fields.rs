//! `[resources.fields]`: each column's rule (default deny: only listed columns leave), the key
//! column's rule and identifier kind, `plain_allowed`, and what a conditional resource
//! (有条件共享) may not deliver.

use std::collections::HashSet;

use super::{ConfigError, Validator, raw};
use crate::identifier::IdKind;
use exchange_rules::rule::Rule;

/// A resource's fields as validated.
pub(super) struct Fields {
    /// Each field's name and rule, in file order.
    pub rules: Vec<(String, Rule)>,
    /// Each field's identifier kind, in the same order.
    pub kinds: Vec<IdKind>,
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
        for (name, f) in raw {
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
                &format!("resources[{i}].fields"),
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
        Ok(Fields {
            rules: fields,
            kinds,
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
                Rule::Drop => Err(self.err(&key("key"), format!("resource `{code}`: the key column `{}` is dropped in [resources.fields]; the key must be delivered", key_column))),
                other => Err(self.err(&format!("resources[{i}].fields.{}", fields[p].0), format!("resource `{code}`, field `{}` (the key): rule {other} would make keys collide; a key leaves \"plain\", as a \"pseudonym\" or as \"fpe:digits\"", fields[p].0))),
            },
            None => Err(self.err(&key("key"), format!("the key column `{}` must be listed in [resources.fields]", key_column))),
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
                Some((_, rule)) => return Err(self.err(key, format!("resource `{code}`, field `{name}`: listed in plain_allowed but its rule is {rule}; list only plain fields"))),
                None => return Err(self.err(key, format!("resource `{code}`: `{name}` in plain_allowed is not a field of [resources.fields]"))),
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
                return Err(self.err(&format!("resources[{i}].fields.{name}"), format!("resource `{code}` is conditional (有条件共享), so field `{name}` may not leave as its exact age: generalize:age_band(1) is a band of one year; give a width of 2 or more, e.g. generalize:age_band(5)")));
            }
            if rule.is_plain() && !plain_allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                return Err(self.err(&format!("resources[{i}].fields.{name}"), format!("resource `{code}` is conditional (有条件共享), so field `{name}` may not leave plain: give it a desensitizing rule (mask:…, pseudonym, generalize:…, fpe:digits, drop), or list it in `plain_allowed` with the approval in `plain_reason`")));
            }
        }
        Ok(())
    }
}
