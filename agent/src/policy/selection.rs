//! Compiling a resource's [`Plan`]: which columns are read (default deny: only the
//! configured fields, the key and the cursor columns; a `drop` field is not selected), and
//! the cursor values of a row read with it.

use exchange_connectors::{Row, Selection, Value};
use exchange_protocol::tr;

use super::{CursorOf, Emit, Plan};
use crate::config::{Keys, Mode, Resource};
use crate::policy::rule::Rule;

impl Plan {
    /// Compiles the plan of a resource with the key material its rules use. Snapshot
    /// resources page by their key.
    pub fn new(resource: &Resource, keys: &Keys) -> Plan {
        let mut columns: Vec<String> = Vec::new();
        // Names are compared without case, like configuration validation does (MySQL and
        // SQLite ignore it): `key = "ID_NO"` and a field or cursor column `id_no` are one
        // column, read once, and sealed as the key wherever it is stored.
        let add = |c: &str, columns: &mut Vec<String>| -> usize {
            match columns.iter().position(|x| x.eq_ignore_ascii_case(c)) {
                Some(i) => i,
                None => {
                    columns.push(c.to_owned());
                    columns.len() - 1
                }
            }
        };
        let mut emit = Vec::new();
        for (name, rule) in &resource.fields {
            if *rule != Rule::Drop {
                let index = add(name, &mut columns);
                emit.push(Emit::new(index, name, rule));
            }
        }
        let key_index = add(&resource.key, &mut columns);
        let key_rule = resource
            .fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&resource.key))
            .map(|(_, r)| r.clone())
            .unwrap_or(Rule::Plain);
        // The key ends every cursor as a tiebreaker: with a strict tuple comparison, a page
        // boundary inside a group of rows sharing `updated_at` must not skip the rest of the
        // group, and the key is unique.
        let cursor: Vec<String> = match &resource.mode {
            Mode::Incremental { cursor, .. }
                if cursor.iter().any(|c| c.eq_ignore_ascii_case(&resource.key)) =>
            {
                cursor.clone()
            }
            Mode::Incremental { cursor, .. } => cursor
                .iter()
                .cloned()
                .chain([resource.key.clone()])
                .collect(),
            Mode::Snapshot => vec![resource.key.clone()],
        };
        let cursor_index: Vec<usize> = cursor.iter().map(|c| add(c, &mut columns)).collect();
        let locator = super::locator::columns(&resource.locator, &columns);
        let sealer = keys.seal.as_ref().map(|k| k.sealer(&resource.code));
        let sealed: Vec<bool> = cursor_index
            .iter()
            .map(|&i| i == key_index && !key_rule.is_plain())
            .collect();
        Plan {
            selection: Selection {
                relation: resource.relation.clone(),
                columns,
                cursor,
            },
            emit,
            key_index,
            key_rule,
            key_kind: resource.key_kind,
            invalid_key: resource.invalid_key,
            cursor_index,
            seal: sealer.map(|s| (s, sealed)),
            keys: keys.clone(),
            locator,
        }
    }

    /// The cursor values of a row (raw: for reading the source; store them with
    /// [`Plan::position_to_store`]).
    pub fn cursor_of(&self, row: &Row) -> CursorOf {
        let mut values = Vec::with_capacity(self.cursor_index.len());
        for &i in &self.cursor_index {
            match &row.values[i] {
                Ok(Value::Null) if i == self.key_index => {
                    return CursorOf::Null(tr!(
                        "key column `{}` is NULL",
                        "主键列 `{}` 为 NULL",
                        self.selection.columns[i]
                    ));
                }
                Ok(Value::Null) => {
                    return CursorOf::Null(tr!(
                        "cursor column `{}` is NULL, so the row has no place in the cursor order; give the column a value (NOT NULL)",
                        "游标列 `{}` 为 NULL，该行在游标顺序中没有位置；请为该列赋值（NOT NULL）",
                        self.selection.columns[i]
                    ));
                }
                Ok(v) => values.push(v.clone()),
                Err(e) => {
                    return CursorOf::Unusable(tr!(
                        "cursor value cannot be converted: {e}",
                        "游标值无法转换：{e}"
                    ));
                }
            }
        }
        CursorOf::Values(values)
    }
}
