//! The one place that decides what may leave the source database.
//!
//! Architecture invariants:
//! - default deny: only columns named in a resource's `[resources.fields]` (plus its key and
//!   cursor columns) are read from the source; a `drop` field is not even selected;
//! - [`Plan::apply`] is the only function that turns a source row into an outgoing record, and
//!   it runs before anything is written to disk;
//! - a row that cannot be converted becomes a [`Quarantine`] reason naming the column and the
//!   problem, never a value.
//!
//! Rules implemented: `plain` (delivered as converted) and `drop` (never read). The
//! desensitization engine (mask, pseudonym, generalize) plugs in as further [`Rule`]s here.

use exchange_connectors::{Row, Selection, Value};
use serde_json::Map;

use crate::config::{Mode, Resource};

/// What happens to a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Delivered as converted.
    Plain,
    /// Never read, never delivered.
    Drop,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rule::Plain => "plain",
            Rule::Drop => "drop",
        })
    }
}

impl Rule {
    /// Parses a rule as written in `[resources.fields]`.
    pub fn parse(s: &str) -> Result<Rule, String> {
        match s {
            "plain" => Ok(Rule::Plain),
            "drop" => Ok(Rule::Drop),
            other
                if other.starts_with("mask")
                    || other.starts_with("pseudonym")
                    || other.starts_with("generalize")
                    || other.starts_with("fpe") =>
            {
                Err(format!(
                    "rule `{other}` belongs to the desensitization engine, which this version does not have yet; expected \"plain\" or \"drop\""
                ))
            }
            other => Err(format!(
                "`{other}` is not a field rule; expected \"plain\" or \"drop\""
            )),
        }
    }
}

/// Deepest JSON value delivered: a record line adds two levels and parsers commonly stop at
/// 128, so deeper documents would make the whole batch unreadable at the hub.
pub const MAX_JSON_DEPTH: usize = 100;

fn json_depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The cursor position of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum CursorOf {
    /// The values of the cursor columns.
    Values(Vec<Value>),
    /// A cursor column is NULL: the row cannot be placed; it is quarantined and the cursor
    /// stays where it was.
    Null(String),
    /// A cursor value cannot be converted: the resource cannot move past the row and stops.
    Unusable(String),
}

/// An outgoing record: what the hub receives for one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The subject identifier, as text.
    pub key: String,
    /// Delivered fields in configuration order.
    pub fields: Map<String, serde_json::Value>,
}

/// Why a row was not delivered. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The key as it would have left, when it could be converted.
    pub key: Option<String>,
    /// What was wrong.
    pub reason: String,
}

/// The compiled policy of one resource.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to read from the source.
    pub selection: Selection,
    /// (index in the row, field name) of every delivered field.
    emit: Vec<(usize, String)>,
    /// Index of the key column in the row.
    key_index: usize,
    /// Indexes of the cursor columns in the row.
    cursor_index: Vec<usize>,
}

impl Plan {
    /// Compiles the plan of a resource. Snapshot resources page by their key.
    pub fn new(resource: &Resource) -> Plan {
        let mut columns: Vec<String> = Vec::new();
        let add = |c: &str, columns: &mut Vec<String>| -> usize {
            match columns.iter().position(|x| x == c) {
                Some(i) => i,
                None => {
                    columns.push(c.to_owned());
                    columns.len() - 1
                }
            }
        };
        let mut emit = Vec::new();
        for (name, rule) in &resource.fields {
            if *rule == Rule::Plain {
                let i = add(name, &mut columns);
                emit.push((i, name.clone()));
            }
        }
        let key_index = add(&resource.key, &mut columns);
        // The key ends every cursor as a tiebreaker: with a strict tuple comparison, a page
        // boundary inside a group of rows sharing `updated_at` must not skip the rest of the
        // group, and the key is unique.
        let cursor: Vec<String> = match &resource.mode {
            Mode::Incremental { cursor, .. } if cursor.contains(&resource.key) => cursor.clone(),
            Mode::Incremental { cursor, .. } => cursor
                .iter()
                .cloned()
                .chain([resource.key.clone()])
                .collect(),
            Mode::Snapshot => vec![resource.key.clone()],
        };
        let cursor_index = cursor.iter().map(|c| add(c, &mut columns)).collect();
        Plan {
            selection: Selection {
                relation: resource.relation.clone(),
                columns,
                cursor,
            },
            emit,
            key_index,
            cursor_index,
        }
    }

    /// The cursor values of a row.
    pub fn cursor_of(&self, row: &Row) -> CursorOf {
        let mut values = Vec::with_capacity(self.cursor_index.len());
        for &i in &self.cursor_index {
            match &row.values[i] {
                Ok(Value::Null) if i == self.key_index => {
                    return CursorOf::Null(format!(
                        "key column `{}` is NULL",
                        self.selection.columns[i]
                    ));
                }
                Ok(Value::Null) => {
                    return CursorOf::Null(format!(
                        "cursor column `{}` is NULL, so the row has no place in the cursor order; give the column a value (NOT NULL)",
                        self.selection.columns[i]
                    ));
                }
                Ok(v) => values.push(v.clone()),
                Err(e) => {
                    return CursorOf::Unusable(format!("cursor value cannot be converted: {e}"));
                }
            }
        }
        CursorOf::Values(values)
    }

    /// The key of a row as text.
    pub fn key_of(&self, row: &Row) -> Result<String, String> {
        let column = &self.selection.columns[self.key_index];
        let key = match &row.values[self.key_index] {
            Ok(Value::Null) => Err(format!(
                "key column `{}` is NULL",
                self.selection.columns[self.key_index]
            )),
            Ok(v) => v.to_text().ok_or_else(|| {
                format!(
                    "key column `{}` has a type that cannot be a key",
                    self.selection.columns[self.key_index]
                )
            }),
            Err(e) => Err(format!("key cannot be converted: {e}")),
        }?;
        if key.is_empty() {
            return Err(format!("key column `{column}` is empty"));
        }
        if key.contains('\0') {
            return Err(format!("key column `{column}` contains a NUL character"));
        }
        Ok(key)
    }

    /// Turns a source row into the record that leaves, or a quarantine reason.
    pub fn apply(&self, row: &Row) -> Result<Outgoing, Quarantine> {
        let key = self
            .key_of(row)
            .map_err(|reason| Quarantine { key: None, reason })?;
        let mut fields = Map::new();
        for (i, name) in &self.emit {
            match &row.values[*i] {
                Ok(Value::Json(j)) if json_depth(j) > MAX_JSON_DEPTH => {
                    return Err(Quarantine {
                        key: Some(key),
                        reason: format!(
                            "column `{name}`: JSON nested deeper than {MAX_JSON_DEPTH} levels"
                        ),
                    });
                }
                Ok(v) => {
                    fields.insert(name.clone(), v.to_json());
                }
                Err(e) => {
                    return Err(Quarantine {
                        key: Some(key),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(Outgoing { key, fields })
    }
}

impl Plan {
    /// [`Plan::apply`] written straight into `out` as the batch line of an upsert, byte for
    /// byte what `push_line` writes for the [`Outgoing`] that `apply` returns (the same
    /// decision, without building the fields map); returns the key. On `Err` nothing of
    /// the row stays in `out`.
    pub fn write_upsert(&self, row: &Row, out: &mut Vec<u8>) -> Result<String, Quarantine> {
        let key = self
            .key_of(row)
            .map_err(|reason| Quarantine { key: None, reason })?;
        let start = out.len();
        out.extend_from_slice(br#"{"op":"upsert","key":"#);
        json(out, key.as_str());
        out.extend_from_slice(br#","fields":{"#);
        for (n, (i, name)) in self.emit.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            json(out, name.as_str());
            out.push(b':');
            match &row.values[*i] {
                Ok(Value::Json(j)) if json_depth(j) > MAX_JSON_DEPTH => {
                    out.truncate(start);
                    return Err(Quarantine {
                        key: Some(key),
                        reason: format!(
                            "column `{name}`: JSON nested deeper than {MAX_JSON_DEPTH} levels"
                        ),
                    });
                }
                Ok(Value::Text(t)) => json(out, t.as_str()),
                Ok(v) => json(out, &v.to_json()),
                Err(e) => {
                    out.truncate(start);
                    return Err(Quarantine {
                        key: Some(key),
                        reason: e.to_string(),
                    });
                }
            }
        }
        out.extend_from_slice(b"}}\n");
        Ok(key)
    }
}

/// Appends one JSON value, compact (as serde_json writes it inside a record).
fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("a JSON value serializes");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Share;
    use crate::schedule::Schedule;
    use exchange_connectors::{ConvertError, Relation};
    use std::time::Duration;

    fn resource() -> Resource {
        Resource {
            code: "R1".into(),
            name: "n".into(),
            share: Share::Unconditional,
            source: "s".into(),
            relation: Relation::Table("t".into()),
            key: "id_card".into(),
            mode: Mode::Incremental {
                cursor: vec!["updated_at".into(), "id".into()],
                safety_lag: Duration::ZERO,
            },
            schedule: Schedule::Every(Duration::from_secs(1)),
            fields: vec![
                ("id_card".into(), Rule::Plain),
                ("name".into(), Rule::Plain),
                ("internal_note".into(), Rule::Drop),
            ],
        }
    }

    #[test]
    fn dropped_fields_are_never_selected() {
        let plan = Plan::new(&resource());
        assert_eq!(
            plan.selection.columns,
            vec!["id_card", "name", "updated_at", "id"]
        );
        assert!(!plan.selection.columns.iter().any(|c| c == "internal_note"));
    }

    #[test]
    fn cursor_columns_are_read_but_not_delivered() {
        let plan = Plan::new(&resource());
        let row = Row {
            values: vec![
                Ok(Value::Text("11010519491231002X".into())),
                Ok(Value::Text("张三".into())),
                Ok(Value::Text("2024-01-01".into())),
                Ok(Value::Int(7)),
            ],
        };
        let out = plan.apply(&row).unwrap();
        assert_eq!(out.key, "11010519491231002X");
        assert_eq!(
            serde_json::to_string(&out.fields).unwrap(),
            r#"{"id_card":"11010519491231002X","name":"张三"}"#
        );
        assert_eq!(
            plan.cursor_of(&row),
            CursorOf::Values(vec![
                Value::Text("2024-01-01".into()),
                Value::Int(7),
                Value::Text("11010519491231002X".into())
            ])
        );
    }

    #[test]
    fn a_written_upsert_is_the_line_of_the_applied_record() {
        let plan = Plan::new(&resource());
        for name in ["张三", "tab\there \"quoted\" \\ \u{1}", ""] {
            let row = Row {
                values: vec![
                    Ok(Value::Text("11010519491231002X".into())),
                    Ok(Value::Text(name.into())),
                    Ok(Value::Text("2024-01-01".into())),
                    Ok(Value::Int(7)),
                ],
            };
            let out = plan.apply(&row).unwrap();
            let mut expected = Vec::new();
            exchange_protocol::batch::push_line(
                &mut expected,
                &exchange_protocol::batch::Record {
                    op: exchange_protocol::batch::Op::Upsert,
                    key: out.key,
                    fields: Some(out.fields),
                },
            );
            let mut written = b"before".to_vec();
            assert_eq!(
                plan.write_upsert(&row, &mut written).unwrap(),
                "11010519491231002X"
            );
            assert_eq!(
                String::from_utf8(written).unwrap(),
                format!("before{}", String::from_utf8(expected).unwrap())
            );
        }
        let bad = Row {
            values: vec![
                Ok(Value::Text("K1".into())),
                Err(ConvertError {
                    column: "name".into(),
                    source_type: "text".into(),
                    reason: "invalid UTF-8".into(),
                }),
                Ok(Value::Int(1)),
                Ok(Value::Int(7)),
            ],
        };
        let mut written = b"before".to_vec();
        assert!(plan.write_upsert(&bad, &mut written).is_err());
        assert_eq!(written, b"before");
    }

    #[test]
    fn an_unconvertible_value_quarantines_the_row_without_the_value() {
        let plan = Plan::new(&resource());
        let row = Row {
            values: vec![
                Ok(Value::Text("K1".into())),
                Err(ConvertError {
                    column: "name".into(),
                    source_type: "text".into(),
                    reason: "invalid UTF-8".into(),
                }),
                Ok(Value::Int(1)),
                Ok(Value::Int(7)),
            ],
        };
        let q = plan.apply(&row).unwrap_err();
        assert_eq!(q.key.as_deref(), Some("K1"));
        assert!(q.reason.contains("name"), "{}", q.reason);
    }

    #[test]
    fn a_null_key_is_quarantined() {
        let plan = Plan::new(&resource());
        let row = Row {
            values: vec![
                Ok(Value::Null),
                Ok(Value::Null),
                Ok(Value::Int(1)),
                Ok(Value::Int(7)),
            ],
        };
        let q = plan.apply(&row).unwrap_err();
        assert!(q.reason.contains("NULL"));
    }

    #[test]
    fn empty_keys_null_cursors_and_deep_json_are_quarantined() {
        let plan = Plan::new(&resource());
        let row = Row {
            values: vec![
                Ok(Value::Text(String::new())),
                Ok(Value::Null),
                Ok(Value::Int(1)),
                Ok(Value::Int(7)),
            ],
        };
        assert!(plan.apply(&row).unwrap_err().reason.contains("empty"));
        let row = Row {
            values: vec![
                Ok(Value::Text("K".into())),
                Ok(Value::Null),
                Ok(Value::Null),
                Ok(Value::Int(7)),
            ],
        };
        assert!(matches!(plan.cursor_of(&row), CursorOf::Null(r) if r.contains("updated_at")));
        let mut deep = serde_json::json!(1);
        for _ in 0..=MAX_JSON_DEPTH {
            deep = serde_json::json!([deep]);
        }
        let row = Row {
            values: vec![
                Ok(Value::Text("K".into())),
                Ok(Value::Json(deep)),
                Ok(Value::Int(1)),
                Ok(Value::Int(7)),
            ],
        };
        assert!(plan.apply(&row).unwrap_err().reason.contains("deeper"));
    }

    #[test]
    fn unknown_rules_are_refused_with_the_expected_ones() {
        assert!(
            Rule::parse("mask:name")
                .unwrap_err()
                .contains("desensitization")
        );
        assert!(
            Rule::parse("hide")
                .unwrap_err()
                .contains("\"plain\" or \"drop\"")
        );
    }
}
