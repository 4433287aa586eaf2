//! What determines a resource's stream, kept with the stream so a change is noticed.
//!
//! A stream is the sequence of batches the hub applies for one resource. What the hub holds
//! is the result of reading the source with one relation, key, cursor and set of field rules:
//! if any of these changes, records already delivered no longer match what the agent would
//! deliver now (a field newly dropped stays at the hub, a new field is missing from every
//! record delivered before). The agent stores the [`Shape`] of each resource when its stream
//! starts (in the queue's resource state) and compares it before every pull; on a difference
//! the resource stops until an operator chooses: `exchange-agent resync` (re-read everything
//! on a new stream) or `exchange-agent accept-config` (keep the cursor; only rows that change
//! from now on carry the new configuration).
//!
//! The shape holds configuration only (names, rules, the SM3 of a query's text), never a value.

use std::collections::BTreeMap;

use exchange_connectors::Relation;
use exchange_protocol::tr;
use serde::{Deserialize, Serialize};

use crate::config::{InvalidKey, Mode, Resource};
use crate::identifier::IdKind;
use crate::policy::Keys;

/// What determines a resource's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// `table <name>`, or `query <SM3 of its text>`.
    pub relation: String,
    /// The key column.
    pub key: String,
    /// `incremental` or `snapshot` (a file drop resource: `snapshot` or `upsert`).
    pub mode: String,
    /// The configured cursor columns (incremental mode).
    pub cursor: Vec<String>,
    /// Field name → rule, as written in the configuration.
    pub fields: BTreeMap<String, String>,
}

impl Shape {
    /// The shape of a configured resource with the keys its rules use (a field's rule text
    /// carries its parameters and the version and check value of its key, never the secret;
    /// the key field's also its identifier kind and what an invalid key does).
    pub fn of(resource: &Resource, keys: &Keys) -> Shape {
        let relation = match &resource.relation {
            Relation::Table(t) => format!("table {t}"),
            Relation::Query(q) => {
                format!(
                    "query {}",
                    hex::encode(exchange_protocol::digest::sm3(q.trim().as_bytes()))
                )
            }
        };
        let (mode, cursor) = match &resource.mode {
            _ if resource
                .files
                .as_ref()
                .is_some_and(|f| f.each_file == crate::config::EachFile::Upsert) =>
            {
                ("upsert", Vec::new())
            }
            Mode::Incremental { cursor, .. } => ("incremental", cursor.clone()),
            Mode::Snapshot => ("snapshot", Vec::new()),
        };
        Shape {
            relation,
            key: resource.key.clone(),
            mode: mode.into(),
            cursor,
            fields: resource
                .fields
                .iter()
                .map(|(name, rule)| {
                    let mut text = format!("{rule}{}", keys.describe(rule));
                    // A file drop's declared type decides the value as a column type would.
                    if let Some(f) = &resource.files
                        && f.type_of(name) != exchange_connectors::files::FieldType::Text
                    {
                        text.push_str(&format!(" type {}", f.type_of(name).name()));
                    }
                    if name.eq_ignore_ascii_case(&resource.key) {
                        if resource.key_kind != IdKind::Other {
                            text.push_str(&format!(" identifier {}", resource.key_kind));
                        }
                        if resource.invalid_key == InvalidKey::Deliver {
                            text.push_str(" invalid_key deliver");
                        }
                    }
                    (name.clone(), text)
                })
                .collect(),
        }
    }

    /// Whether only rules of fields other than the key differ (relation, key and its rule,
    /// mode and cursor unchanged): only then can the stored cursor go on under the new
    /// configuration (a key rule change would leave the hub's records under other keys).
    pub fn keeps_position(&self, now: &Shape) -> bool {
        self.relation == now.relation
            && self.key == now.key
            && self.mode == now.mode
            && self.cursor == now.cursor
            && self.key_rule() == now.key_rule()
    }

    /// The rule of the key field, found like columns are (without case): `key = "ID_NO"`
    /// names the field `id_no`.
    fn key_rule(&self) -> Option<&String> {
        self.fields
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&self.key))
            .map(|(_, rule)| rule)
    }

    /// The fields whose values, as read under `self`, `now` would not deliver as they are:
    /// a field removed, or whose rule changed from anything but `drop` to anything but
    /// `plain` (plain → mask, mask → pseudonym, another key or time zone …). Batches queued
    /// under `self` must not leave under `now` while such a field exists.
    pub fn tightened(&self, now: &Shape) -> Vec<String> {
        let rule = |text: &str| text.split(' ').next().unwrap_or_default().to_owned();
        self.fields
            .iter()
            .filter(|(name, old)| match now.fields.get(*name) {
                None => rule(old) != "drop",
                Some(new) => new != *old && rule(old) != "drop" && rule(new) != "plain",
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// What changed from `self` (the stream's shape) to `now` (the configuration's), one
    /// phrase per change; empty when nothing did.
    pub fn changes(&self, now: &Shape) -> Vec<String> {
        let mut out = Vec::new();
        if self.relation != now.relation {
            if self.relation.starts_with("query") && now.relation.starts_with("query") {
                out.push(tr!("the query text changed", "查询语句已更改"));
            } else {
                out.push(tr!(
                    "the relation changed from {} to {}",
                    "关系从 {} 改为 {}",
                    self.relation,
                    now.relation
                ));
            }
        }
        if self.key != now.key {
            out.push(tr!(
                "the key changed from `{}` to `{}`",
                "主键从 `{}` 改为 `{}`",
                self.key,
                now.key
            ));
        }
        if self.mode != now.mode {
            out.push(tr!(
                "the mode changed from {} to {}",
                "模式从 {} 改为 {}",
                self.mode,
                now.mode
            ));
        } else if self.cursor != now.cursor {
            out.push(tr!(
                "the cursor changed from [{}] to [{}]",
                "游标从 [{}] 改为 [{}]",
                self.cursor.join(", "),
                now.cursor.join(", ")
            ));
        }
        for (name, rule) in &self.fields {
            match now.fields.get(name) {
                None => out.push(tr!(
                    "field `{name}` ({rule}) was removed",
                    "字段 `{name}`（{rule}）已删除"
                )),
                Some(r) if r != rule => out.push(tr!(
                    "field `{name}` changed from {rule} to {r}",
                    "字段 `{name}` 从 {rule} 改为 {r}"
                )),
                Some(_) => {}
            }
        }
        for (name, rule) in &now.fields {
            if !self.fields.contains_key(name) {
                out.push(tr!(
                    "field `{name}` ({rule}) was added",
                    "新增字段 `{name}`（{rule}）"
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(fields: &[(&str, &str)]) -> Shape {
        Shape {
            relation: "table hr.person".into(),
            key: "id_no".into(),
            mode: "incremental".into(),
            cursor: vec!["updated_at".into()],
            fields: fields
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn every_change_that_alters_delivered_records_is_named() {
        let before = shape(&[("name", "plain"), ("phone", "plain"), ("addr", "plain")]);
        let mut after = shape(&[("name", "plain"), ("phone", "drop"), ("email", "plain")]);
        after.cursor = vec!["changed_at".into()];
        after.relation = "table hr.person_v2".into();
        assert_eq!(
            before.changes(&after),
            [
                "the relation changed from table hr.person to table hr.person_v2",
                "the cursor changed from [updated_at] to [changed_at]",
                "field `addr` (plain) was removed",
                "field `phone` changed from plain to drop",
                "field `email` (plain) was added",
            ]
        );
        assert!(before.changes(&before.clone()).is_empty());
    }

    #[test]
    fn a_changed_key_rule_moves_the_position_whatever_the_case_of_its_name() {
        let mut before = shape(&[("id_no", "plain"), ("name", "plain")]);
        before.key = "ID_NO".into();
        let mut after = before.clone();
        after.fields.insert(
            "id_no".into(),
            "pseudonym(citizen_id, domain citizen_id)".into(),
        );
        assert!(!before.keeps_position(&after));
        let mut other = before.clone();
        other.fields.insert("name".into(), "mask:name".into());
        assert!(before.keeps_position(&other));
    }

    #[test]
    fn a_rule_made_stricter_or_a_field_removed_is_a_tightening() {
        let before = shape(&[
            ("a", "plain"),
            ("b", "mask:name"),
            ("c", "drop"),
            ("d", "plain"),
            ("e", "mask:keep(1,1)"),
            ("f", "pseudonym(other, domain other) key v1 check 00000000"),
        ]);
        let after = shape(&[
            ("a", "mask:name"),
            ("b", "plain"),
            ("c", "plain"),
            ("e", "pseudonym(other, domain other) key v1 check 00000000"),
            ("f", "pseudonym(other, domain other) key v2 check 11111111"),
            ("g", "plain"),
        ]);
        assert_eq!(before.tightened(&after), ["a", "d", "e", "f"]);
        assert!(after.tightened(&after.clone()).is_empty());
    }

    #[test]
    fn a_changed_query_is_named_without_its_text() {
        let mut a = shape(&[]);
        a.relation = "query 00".into();
        let mut b = a.clone();
        b.relation = "query 11".into();
        assert_eq!(a.changes(&b), ["the query text changed"]);
    }
}
