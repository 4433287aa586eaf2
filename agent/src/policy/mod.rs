//! The one place that decides what may leave the source database.
//!
//! Architecture invariants:
//! - default deny: only columns named in a resource's `[resources.fields]` (plus its key and
//!   cursor columns) are read from the source; a `drop` field is not even selected;
//! - [`Plan::apply`] (a record) and [`Plan::write_upsert`] (its batch line, written straight
//!   from the row) are the only functions that turn a source row into what leaves; both take
//!   every field through one decision (`Plan::deliver`), so they agree byte for byte, and
//!   they run before anything is written to disk: masks, pseudonyms, generalizations and FPE
//!   are applied here, and the key leaves (and is quarantined, and shown) only in its
//!   delivered form;
//! - fail closed: a value a rule cannot parse, or too short to keep anything, is masked
//!   completely; a rule that lacks its key masks completely;
//! - a row that cannot be converted becomes a [`Quarantine`] reason naming the column and the
//!   problem, never a value;
//! - the raw value of a pseudonymized (or encrypted) key is kept only in the source position,
//!   and there sealed ([`seal`]).
//!
//! Rules ([`rule`]): `plain`, `drop`, `mask:*` ([`mask`]), `pseudonym` ([`pseudonym`]),
//! `generalize:*` ([`generalize`]), `fpe:digits` ([`fpe`]).
//!
//! [`Plan`] by concern: `selection` compiles it (what is read, the cursor of a row), `key` makes
//! the key as it leaves, `record` applies the rules to a row (record and batch line), `position`
//! seals and opens the stored position, `locator` writes what finds a quarantined row at the
//! source.

mod key;
mod locator;
mod position;
mod record;
mod selection;

pub use exchange_rules::{fpe, generalize, mask, pseudonym, rule, seal};

use exchange_connectors::{Selection, Value};
use exchange_protocol::lang::Text;
use serde_json::Map;

use crate::config::{InvalidKey, Resource};
use crate::identifier::IdKind;

pub use crate::config::Keys;
pub use fpe::FpeKey;
pub use pseudonym::PseudonymKey;
pub use rule::{Rule, TypeClass};

/// Checks every field's rule against its column's source type (`check --connect` and every
/// pull); the error names the resource, the field, the type and what the rule accepts.
pub fn check_types(
    resource: &Resource,
    columns: &[exchange_connectors::ColumnInfo],
) -> Result<(), String> {
    for (name, rule) in &resource.fields {
        let Some(c) = columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)) else {
            continue;
        };
        if !rule.accepts(TypeClass::of(&c.source_type)) {
            return Err(exchange_protocol::tr!(
                "resource `{}`, field `{name}`: rule {rule} is not for a column of type {}; it takes {}",
                "资源 `{}`，字段 `{name}`：规则 {rule} 不适用于类型为 {} 的列；它接受 {}",
                resource.code,
                c.source_type,
                rule.accepted_types()
            ));
        }
    }
    Ok(())
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
    /// The subject identifier as it leaves (normalized, pseudonymized or encrypted).
    pub key: String,
    /// Delivered fields in configuration order.
    pub fields: Map<String, serde_json::Value>,
    /// The key is not a valid identifier of its kind and `invalid_key = "deliver"` let it
    /// through (flagged).
    pub invalid_key: bool,
}

/// Why a row was not delivered. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The key as it would have left, when it could be converted.
    pub key: Option<String>,
    /// What was wrong.
    pub reason: String,
    /// The key is not a valid identifier of its kind (`invalid_key = "quarantine"`).
    pub invalid_key: bool,
}

impl Quarantine {
    fn new(key: Option<String>, reason: String) -> Quarantine {
        Quarantine {
            key,
            reason,
            invalid_key: false,
        }
    }

    /// Its reason in both languages, kept for whoever reads it later: `again` converts the
    /// same row again (once per language; the conversion is deterministic, so it fails the
    /// same way). A rare path: only rows that cannot be delivered take it.
    pub fn reason_in_both(&self, again: impl Fn() -> Option<Quarantine>) -> Text {
        Text::render(|| again().map_or_else(|| self.reason.clone(), |q| q.reason))
    }
}

/// One delivered field.
#[derive(Debug, Clone)]
struct Emit {
    /// Index of the column in the row.
    index: usize,
    /// The field name.
    name: String,
    /// The name as a batch line writes it before the value: a JSON string and `:`.
    label: Vec<u8>,
    /// Its rule.
    rule: Rule,
}

impl Emit {
    /// Column `index` of the row, delivered as field `name` under `rule`.
    fn new(index: usize, name: &str, rule: &Rule) -> Emit {
        let mut label = Vec::with_capacity(name.len() + 3);
        json(&mut label, name);
        label.push(b':');
        Emit {
            index,
            name: name.to_owned(),
            label,
            rule: rule.clone(),
        }
    }
}

/// What one delivered field carries (`Plan::deliver`).
enum Delivered<'r> {
    /// A plain text value, as read.
    Text(&'r str),
    /// A plain JSON value, as read.
    Json(&'r serde_json::Value),
    /// A plain value of another type, as read (written without building its JSON value).
    Plain(&'r Value),
    /// The key as it leaves (the key field under the key's own pseudonym or FPE rule).
    Key,
    /// Any other value after its rule.
    Value(serde_json::Value),
}

/// Appends one JSON value, compact (as serde_json writes it inside a record).
fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("a JSON value serializes");
}

/// The compiled policy of one resource.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to read from the source.
    pub selection: Selection,
    /// Every delivered field, in configuration order.
    emit: Vec<Emit>,
    /// Index of the key column in the row.
    key_index: usize,
    /// The key column's rule.
    key_rule: Rule,
    /// The key column's identifier kind.
    key_kind: IdKind,
    /// What an invalid key does.
    invalid_key: InvalidKey,
    /// Indexes of the cursor columns in the row.
    cursor_index: Vec<usize>,
    /// Which cursor values are stored sealed (those of the key, when it does not leave
    /// plain), and the sealer.
    seal: Option<(seal::Sealer, Vec<bool>)>,
    /// The key material.
    keys: Keys,
    /// The locator columns (name, index in the row): what a quarantine entry records to find
    /// the row at the source ([`Plan::locator_of`]).
    locator: Vec<(String, usize)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InvalidKey, Mode, Share};
    use crate::schedule::Schedule;
    use exchange_connectors::{ConvertError, Relation, Row};
    use proptest::prelude::*;
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
            max_staleness: crate::config::Staleness::WorkingDays(2),
            fields: vec![
                ("id_card".into(), Rule::Plain),
                ("name".into(), Rule::Plain),
                ("internal_note".into(), Rule::Drop),
            ],
            key_kind: IdKind::Other,
            invalid_key: InvalidKey::Quarantine,
            plain_allowed: Vec::new(),
            plain_reason: None,
            verification: Default::default(),
            locator: Vec::new(),
            files: None,
        }
    }

    #[test]
    fn dropped_fields_are_never_selected() {
        let plan = Plan::new(&resource(), &Keys::default());
        assert_eq!(
            plan.selection.columns,
            vec!["id_card", "name", "updated_at", "id"]
        );
        assert!(!plan.selection.columns.iter().any(|c| c == "internal_note"));
    }

    #[test]
    fn cursor_columns_are_read_but_not_delivered() {
        let plan = Plan::new(&resource(), &Keys::default());
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
    fn an_unconvertible_value_quarantines_the_row_without_the_value() {
        let plan = Plan::new(&resource(), &Keys::default());
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
        let plan = Plan::new(&resource(), &Keys::default());
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
        let plan = Plan::new(&resource(), &Keys::default());
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

    const PSEUDONYM_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn keys() -> Keys {
        Keys {
            pseudonym: Some(PseudonymKey::from_hex(1, PSEUDONYM_HEX).unwrap()),
            fpe: Some(FpeKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap()),
            seal: Some(seal::SealKey::new(&[0x5a; 32]).unwrap()),
            ..Keys::default()
        }
    }

    fn rule(text: &str, kind: IdKind) -> Rule {
        Rule::parse(text, kind, None).unwrap()
    }

    /// A conditional resource with a pseudonymized citizen-ID key and every kind of rule.
    fn desensitized() -> Resource {
        Resource {
            key: "id_no".into(),
            key_kind: IdKind::CitizenId,
            mode: Mode::Snapshot,
            fields: vec![
                ("id_no".into(), rule("pseudonym", IdKind::CitizenId)),
                ("name".into(), rule("mask:name", IdKind::Other)),
                ("mobile".into(), rule("mask:mobile", IdKind::Other)),
                ("birth".into(), rule("generalize:year", IdKind::Other)),
                ("card".into(), rule("fpe:digits", IdKind::Other)),
                ("note".into(), Rule::Drop),
            ],
            ..resource()
        }
    }

    fn text(s: &str) -> Result<Value, ConvertError> {
        Ok(Value::Text(s.into()))
    }

    #[test]
    fn every_rule_applies_and_the_key_leaves_as_a_pseudonym() {
        let plan = Plan::new(&desensitized(), &keys());
        assert_eq!(
            plan.selection.columns,
            vec!["id_no", "name", "mobile", "birth", "card"]
        );
        let row = Row {
            values: vec![
                text(" 11010519491231002x"),
                text("买买提·艾力"),
                text("13812345678"),
                Ok(Value::Date(
                    chrono::NaiveDate::from_ymd_opt(1949, 12, 31).unwrap(),
                )),
                text("6228480402564890018"),
            ],
        };
        let out = plan.apply(&row).unwrap();
        let token = keys()
            .pseudonym
            .unwrap()
            .token("citizen_id", "11010519491231002X");
        assert_eq!(out.key, token);
        assert!(!out.invalid_key);
        assert_eq!(out.fields["id_no"], serde_json::json!(token));
        assert_eq!(out.fields["name"], serde_json::json!("买**·**"));
        assert_eq!(out.fields["mobile"], serde_json::json!("138****5678"));
        assert_eq!(out.fields["birth"], serde_json::json!("1949"));
        let card = out.fields["card"].as_str().unwrap();
        assert_eq!(card.len(), 19);
        assert_ne!(card, "6228480402564890018");
        assert_eq!(
            keys().fpe.unwrap().decrypt("other", card).as_deref(),
            Some("6228480402564890018")
        );
        let line = serde_json::to_string(&out.fields).unwrap();
        for secret in [
            "11010519491231002",
            "买买提",
            "艾力",
            "12345678",
            "6228480402564890018",
        ] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
    }

    #[test]
    fn nulls_stay_null_and_empty_strings_stay_empty() {
        let plan = Plan::new(&desensitized(), &keys());
        let row = Row {
            values: vec![
                text("11010519491231002X"),
                Ok(Value::Null),
                text(""),
                Ok(Value::Null),
                Ok(Value::Null),
            ],
        };
        let out = plan.apply(&row).unwrap();
        assert_eq!(out.fields["name"], serde_json::Value::Null);
        assert_eq!(out.fields["mobile"], serde_json::json!(""));
        assert_eq!(out.fields["birth"], serde_json::Value::Null);
    }

    #[test]
    fn values_a_rule_cannot_read_are_masked_completely() {
        let plan = Plan::new(&desensitized(), &keys());
        let row = Row {
            values: vec![
                text("11010519491231002X"),
                Ok(Value::Int(42)),
                text("12345"),
                text("not a date"),
                text("123"),
            ],
        };
        let out = plan.apply(&row).unwrap();
        assert_eq!(out.fields["name"], serde_json::json!("**"));
        assert_eq!(out.fields["mobile"], serde_json::json!("*****"));
        assert_eq!(out.fields["birth"], serde_json::json!("**********"));
        assert_eq!(out.fields["card"], serde_json::json!("***"));
    }

    #[test]
    fn a_rule_without_its_key_masks_completely() {
        let plan = Plan::new(&desensitized(), &Keys::default());
        let row = Row {
            values: vec![
                text("11010519491231002X"),
                text("张三"),
                text("13812345678"),
                Ok(Value::Null),
                text("6228480402564890018"),
            ],
        };
        // The key cannot be pseudonymized: quarantined, without a key.
        let q = plan.apply(&row).unwrap_err();
        assert_eq!(q.key, None);
        let mut r = desensitized();
        r.fields[0].1 = Rule::Plain;
        let out = Plan::new(&r, &Keys::default()).apply(&row).unwrap();
        assert_eq!(out.fields["card"], serde_json::json!("*******************"));
    }

    #[test]
    fn a_key_empty_once_normalized_is_quarantined_even_when_invalid_keys_are_delivered() {
        let mut r = desensitized();
        r.fields[0].1 = Rule::Plain;
        for invalid_key in [InvalidKey::Quarantine, InvalidKey::Deliver] {
            r.invalid_key = invalid_key;
            for blank in [" ", "   ", "\u{3000}"] {
                let row = Row {
                    values: vec![
                        text(blank),
                        Ok(Value::Null),
                        Ok(Value::Null),
                        Ok(Value::Null),
                        Ok(Value::Null),
                    ],
                };
                let q = Plan::new(&r, &keys()).apply(&row).unwrap_err();
                assert!(q.reason.contains("empty once normalized"), "{}", q.reason);
                assert_eq!(q.key, None);
            }
        }
    }

    #[test]
    fn an_invalid_key_is_quarantined_under_its_pseudonym_or_delivered_flagged() {
        let row = Row {
            values: vec![
                text("110105194912310021"),
                text("张三"),
                Ok(Value::Null),
                Ok(Value::Null),
                Ok(Value::Null),
            ],
        };
        let q = Plan::new(&desensitized(), &keys()).apply(&row).unwrap_err();
        assert!(q.invalid_key);
        assert!(
            q.reason.contains("公民身份号码") && q.reason.contains("id_no"),
            "{}",
            q.reason
        );
        let k = q.key.unwrap();
        assert!(k.starts_with("v1:") && !k.contains("110105"), "{k}");
        assert!(!q.reason.contains("110105"));
        let mut r = desensitized();
        r.invalid_key = InvalidKey::Deliver;
        let out = Plan::new(&r, &keys()).apply(&row).unwrap();
        assert!(out.invalid_key);
        assert_eq!(out.key, k);
        // A plain key of kind citizen_id leaves normalized.
        let mut r = desensitized();
        r.fields[0].1 = Rule::Plain;
        let row = Row {
            values: vec![
                text("150102880730303"),
                Ok(Value::Null),
                Ok(Value::Null),
                Ok(Value::Null),
                Ok(Value::Null),
            ],
        };
        assert_eq!(
            Plan::new(&r, &keys()).apply(&row).unwrap().key,
            "150102198807303035"
        );
    }

    #[test]
    fn an_encrypted_key_in_digits_of_another_script_is_quarantined_not_delivered() {
        let mut r = desensitized();
        r.key_kind = IdKind::Other;
        r.fields[0].1 = rule("fpe:digits", IdKind::Other);
        let plan = Plan::new(&r, &keys());
        let row = |key: &str| Row {
            values: vec![
                text(key),
                Ok(Value::Null),
                Ok(Value::Null),
                Ok(Value::Null),
                Ok(Value::Null),
            ],
        };
        let q = plan.apply(&row("٦٢٢٨٤٨٠٤٠٢٥٦")).unwrap_err();
        assert_eq!(q.key, None);
        assert!(q.reason.contains("another script"), "{}", q.reason);
        // Full-width digits are read as ASCII ones.
        assert_eq!(
            plan.apply(&row("６２２８４８０４０２５６")).unwrap().key,
            plan.apply(&row("622848040256")).unwrap().key
        );
    }

    #[test]
    fn the_position_of_a_pseudonymized_key_is_stored_sealed() {
        let mut r = desensitized();
        r.mode = Mode::Incremental {
            cursor: vec!["updated_at".into()],
            safety_lag: Duration::ZERO,
        };
        let plan = Plan::new(&r, &keys());
        let raw = vec![Value::Int(7), Value::Text("11010519491231002X".into())];
        let stored = plan.position_to_store(raw.clone()).unwrap();
        assert_eq!(stored[0], Value::Int(7));
        assert!(seal::is_sealed(&stored[1]));
        assert!(
            !serde_json::to_string(&stored)
                .unwrap()
                .contains("1101051949")
        );
        assert_eq!(plan.position_from_store(&stored).unwrap(), raw);
        // Without the seal key it cannot be stored, nor opened.
        let blind = Plan::new(
            &r,
            &Keys {
                seal: None,
                ..keys()
            },
        );
        assert_eq!(blind.position_to_store(raw.clone()), None);
        assert!(blind.position_from_store(&stored).is_err());
        // Under another seal key, it is refused, saying why.
        let other = Plan::new(
            &r,
            &Keys {
                seal: Some(seal::SealKey::new(&[9; 32]).unwrap()),
                ..keys()
            },
        );
        let e = other.position_from_store(&stored).unwrap_err();
        assert!(e.contains("seal_key_file"), "{e}");
        // The seal key is the node's own: the pseudonym key (shared with other departments)
        // does not open it.
        let shared = Plan::new(
            &r,
            &Keys {
                seal: Some(seal::SealKey::new(&hex::decode(PSEUDONYM_HEX).unwrap()).unwrap()),
                ..keys()
            },
        );
        assert!(shared.position_from_store(&stored).is_err());
        // A plain key's position is stored as read.
        let plain = Plan::new(&resource(), &keys());
        assert_eq!(plain.position_to_store(raw.clone()), Some(raw));
    }

    #[test]
    fn the_key_is_sealed_in_the_position_whatever_the_case_of_its_name() {
        let mut r = desensitized();
        r.key = "ID_NO".into();
        r.mode = Mode::Incremental {
            cursor: vec!["updated_at".into(), "id_no".into()],
            safety_lag: Duration::ZERO,
        };
        let plan = Plan::new(&r, &keys());
        assert_eq!(plan.selection.cursor, ["updated_at", "id_no"]);
        assert_eq!(
            plan.selection
                .columns
                .iter()
                .filter(|c| c.eq_ignore_ascii_case("id_no"))
                .count(),
            1,
            "{:?}",
            plan.selection.columns
        );
        let stored = plan
            .position_to_store(vec![
                Value::Int(7),
                Value::Text("11010519491231002X".into()),
            ])
            .unwrap();
        assert!(seal::is_sealed(&stored[1]));
        assert!(
            !serde_json::to_string(&stored)
                .unwrap()
                .contains("1101051949")
        );
    }

    #[test]
    fn an_unsealed_value_where_a_sealed_one_belongs_is_refused() {
        let mut r = desensitized();
        r.mode = Mode::Incremental {
            cursor: vec!["updated_at".into()],
            safety_lag: Duration::ZERO,
        };
        let plan = Plan::new(&r, &keys());
        let e = plan
            .position_from_store(&[Value::Int(7), Value::Text("11010519491231002X".into())])
            .unwrap_err();
        assert!(e.contains("unsealed"), "{e}");
        // Other cursor columns are stored as read.
        let stored = plan
            .position_to_store(vec![Value::Int(7), Value::Text("K".into())])
            .unwrap();
        assert_eq!(stored[0], Value::Int(7));
        // A sealed value where the key now leaves plain is refused too.
        let mut plain = r.clone();
        plain.fields[0].1 = Rule::Plain;
        assert!(
            Plan::new(&plain, &keys())
                .position_from_store(&stored)
                .is_err()
        );
    }

    /// `write_upsert` writes exactly the line that `apply` and the pull's line builder write
    /// (flags included), or refuses with the same quarantine and leaves `out` as it was.
    fn assert_written_as_applied(plan: &Plan, row: &Row) {
        let mut written = b"before".to_vec();
        let got = plan.write_upsert(row, &mut written);
        match plan.apply(row) {
            Ok(out) => {
                let key = out.key.clone();
                let invalid = out.invalid_key;
                let mut expected = b"before".to_vec();
                expected.extend(crate::pipeline::pull::line_of(
                    exchange_protocol::batch::Op::Upsert,
                    out.key,
                    Some(out.fields),
                    out.invalid_key,
                ));
                assert_eq!(got, Ok((key, invalid)));
                assert_eq!(
                    String::from_utf8(written).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
            }
            Err(q) => {
                assert_eq!(got, Err(q));
                assert_eq!(written, b"before");
            }
        }
    }

    /// Every rule, with a value it reads, one it cannot read, NULL and empty text.
    fn every_rule(key_rule: &str, key_kind: IdKind, invalid_key: InvalidKey) -> Resource {
        let mut fields = vec![("id_no".to_owned(), rule(key_rule, key_kind))];
        for (name, text, kind) in [
            ("name", "mask:name", IdKind::Other),
            ("mobile", "mask:mobile", IdKind::Other),
            ("addr", "mask:address", IdKind::Other),
            ("email", "mask:email", IdKind::Other),
            ("bank", "mask:bank_card", IdKind::Other),
            ("cid", "mask:citizen_id", IdKind::Other),
            ("uscc", "mask:uscc", IdKind::Other),
            ("unit", "mask:property_unit", IdKind::Other),
            ("keep", "mask:keep(1,2)", IdKind::Other),
            ("phone_ps", "pseudonym", IdKind::Mobile),
            ("year", "generalize:year", IdKind::Other),
            ("ym", "generalize:year_month", IdKind::Other),
            ("age", "generalize:age_band(10)", IdKind::Other),
            ("acct", "fpe:digits", IdKind::Other),
            ("plain_a", "plain", IdKind::Other),
            ("plain_b", "plain", IdKind::Other),
        ] {
            fields.push((name.to_owned(), rule(text, kind)));
        }
        fields.push(("note".to_owned(), Rule::Drop));
        Resource {
            key: "id_no".into(),
            key_kind,
            invalid_key,
            mode: Mode::Snapshot,
            fields,
            ..resource()
        }
    }

    /// The columns of [`every_rule`] after the key, in order.
    const EVERY_RULE_FIELDS: usize = 16;

    #[test]
    fn a_written_upsert_is_the_line_of_the_applied_record_for_plain_fields() {
        let plan = Plan::new(&resource(), &Keys::default());
        for name in ["张三", "tab\there \"quoted\" \\ \u{1}", ""] {
            let row = Row {
                values: vec![
                    text("11010519491231002X"),
                    text(name),
                    text("2024-01-01"),
                    Ok(Value::Int(7)),
                ],
            };
            assert_written_as_applied(&plan, &row);
        }
        let deep = (0..=MAX_JSON_DEPTH).fold(serde_json::json!(1), |v, _| serde_json::json!([v]));
        for value in [
            Ok(Value::Json(
                serde_json::json!({"b": 1.10, "a": [18446744073709551615u64]}),
            )),
            Ok(Value::Json(deep)),
            Ok(Value::Null),
            Ok(Value::Float(0.1)),
            Err(ConvertError {
                column: "name".into(),
                source_type: "text".into(),
                reason: "invalid UTF-8".into(),
            }),
        ] {
            let row = Row {
                values: vec![text("K1"), value, Ok(Value::Int(1)), Ok(Value::Int(7))],
            };
            assert_written_as_applied(&plan, &row);
        }
    }

    #[test]
    fn a_written_upsert_is_the_line_of_the_applied_record_under_every_rule() {
        let date = || {
            Ok(Value::Date(
                chrono::NaiveDate::from_ymd_opt(1949, 12, 31).unwrap(),
            ))
        };
        let readable = vec![
            text("买买提·艾力"),
            text("13812345678"),
            text("浙江省杭州市上城区解放路123号"),
            text("zhangsan@example.cn"),
            text("6228480402564890018"),
            text("11010519491231002X"),
            text("91350100M000100Y43"),
            text("330102001001GB00001F00010001"),
            text("abcdef"),
            text("13812345678"),
            date(),
            Ok(Value::TimestampTz(
                chrono::DateTime::parse_from_rfc3339("1949-12-31T20:00:00Z")
                    .unwrap()
                    .to_utc(),
            )),
            Ok(Value::Int(45)),
            Ok(Value::Int(6228480402564890018)),
            text("as read"),
            Ok(Value::Json(serde_json::json!({"x": 1.10}))),
        ];
        let unreadable = vec![
            Ok(Value::Int(42)),
            text("12345"),
            Ok(Value::Bool(true)),
            text("not an address"),
            text("123"),
            text("1101"),
            text("x"),
            text("unit"),
            text("ab"),
            Ok(Value::Float(1.5)),
            text("not a date"),
            text("1949-13"),
            text("old"),
            text("12"),
            Ok(Value::Bytes(vec![0, 1, 2])),
            Ok(Value::Null),
        ];
        let nulls = vec![Ok(Value::Null); EVERY_RULE_FIELDS];
        let empty = vec![text(""); EVERY_RULE_FIELDS];
        let unconvertible = {
            let mut v = readable.clone();
            v[3] = Err(ConvertError {
                column: "email".into(),
                source_type: "text".into(),
                reason: "invalid UTF-8".into(),
            });
            v
        };
        let keys_of = [
            "11010519491231002X",  // valid
            " 11010519491231002x", // valid once normalized
            "110105194912310021",  // wrong check character
            "622848040256",        // digits
            "٦٢٢٨٤٨٠٤٠٢٥٦",        // digits of another script
            "",
        ];
        let mut flagged = 0;
        for (key_rule, key_kind) in [
            ("plain", IdKind::Other),
            ("plain", IdKind::CitizenId),
            ("pseudonym", IdKind::CitizenId),
            ("pseudonym", IdKind::Other),
            ("fpe:digits", IdKind::Other),
        ] {
            for invalid_key in [InvalidKey::Quarantine, InvalidKey::Deliver] {
                let r = every_rule(key_rule, key_kind, invalid_key);
                for keys in [keys(), Keys::default()] {
                    let plan = Plan::new(&r, &keys);
                    assert_eq!(plan.selection.columns.len(), EVERY_RULE_FIELDS + 1);
                    for key in keys_of {
                        for rest in [&readable, &unreadable, &nulls, &empty, &unconvertible] {
                            let mut values = vec![text(key)];
                            values.extend(rest.iter().cloned());
                            let row = Row { values };
                            assert_written_as_applied(&plan, &row);
                            if let Ok((_, true)) = plan.write_upsert(&row, &mut Vec::new()) {
                                flagged += 1;
                            }
                        }
                    }
                }
            }
        }
        // The flagged records (invalid keys delivered) were among those compared.
        assert!(flagged > 0);
        let plan = Plan::new(
            &every_rule("pseudonym", IdKind::CitizenId, InvalidKey::Deliver),
            &keys(),
        );
        let mut values = vec![text("110105194912310021")];
        values.extend(readable.iter().cloned());
        let mut line = Vec::new();
        plan.write_upsert(&Row { values }, &mut line).unwrap();
        let line = String::from_utf8(line).unwrap();
        assert!(line.ends_with("},\"flags\":[\"invalid_key\"]}\n"), "{line}");
        for secret in [
            "110105194912310021",
            "买买提",
            "13812345678",
            "6228480402564890018",
        ] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
    }

    fn any_value() -> impl Strategy<Value = Result<Value, ConvertError>> {
        prop_oneof![
            Just(Ok(Value::Null)),
            any::<bool>().prop_map(|b| Ok(Value::Bool(b))),
            any::<i64>().prop_map(|i| Ok(Value::Int(i))),
            any::<u64>().prop_map(|u| Ok(Value::UInt(u))),
            (-1e12f64..1e12).prop_map(|f| Ok(Value::Float(f))),
            "-?[0-9]{1,8}\\.[0-9]{0,4}".prop_map(|d| Ok(Value::Decimal(d))),
            any::<String>().prop_map(|t| Ok(Value::Text(t))),
            "[0-9０-９Xx -]{0,24}".prop_map(|t| Ok(Value::Text(t))),
            "[\\u{4e00}-\\u{4e20}·市区县路号0-9]{0,12}".prop_map(|t| Ok(Value::Text(t))),
            (1i32..3_000_000).prop_map(|d| Ok(Value::Date(
                chrono::NaiveDate::from_num_days_from_ce_opt(d).unwrap()
            ))),
            (0i64..4_000_000_000).prop_map(|s| Ok(Value::TimestampTz(
                chrono::DateTime::from_timestamp(s, 0).unwrap()
            ))),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(|b| Ok(Value::Bytes(b))),
            "[a-z]{0,4}".prop_map(|k| Ok(Value::Json(serde_json::json!({ k: [1.10, null] })))),
            Just(Err(ConvertError {
                column: "c".into(),
                source_type: "t".into(),
                reason: "cannot be converted".into(),
            })),
        ]
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// For any row, any key rule and kind, either invalid-key decision and with or without
        /// the key material, `write_upsert` writes what `apply` and the line builder write.
        #[test]
        fn a_written_upsert_is_always_the_line_of_the_applied_record(
            key in prop_oneof![
                any_value(),
                "[0-9]{17}[0-9Xx]".prop_map(|t| Ok(Value::Text(t))),
                proptest::sample::select(vec![
                    "11010519491231002X", "440524188001010014", "150102880730303",
                    "91350100M000100Y43", "13812345678",
                ]).prop_map(|t| Ok(Value::Text(t.to_owned()))),
            ],
            rest in proptest::collection::vec(any_value(), EVERY_RULE_FIELDS),
            key_rule in proptest::sample::select(vec!["plain", "pseudonym", "fpe:digits"]),
            key_kind in proptest::sample::select(vec![
                IdKind::Other, IdKind::CitizenId, IdKind::Mobile, IdKind::Uscc,
            ]),
            deliver in any::<bool>(),
            with_keys in any::<bool>(),
        ) {
            let invalid_key = if deliver { InvalidKey::Deliver } else { InvalidKey::Quarantine };
            let keys = if with_keys { keys() } else { Keys::default() };
            let plan = Plan::new(&every_rule(key_rule, key_kind, invalid_key), &keys);
            let mut values = vec![key];
            values.extend(rest);
            assert_written_as_applied(&plan, &Row { values });
        }
    }

    #[test]
    fn a_locator_names_its_columns_values_without_reading_another_column() {
        let mut r = resource();
        r.locator = vec!["id".into(), "updated_at".into(), "not_read".into()];
        let plan = Plan::new(&r, &Keys::default());
        assert_eq!(
            plan.selection.columns,
            vec!["id_card", "name", "updated_at", "id"]
        );
        let row = Row {
            values: vec![text("K1"), text("张三"), Ok(Value::Null), Ok(Value::Int(7))],
        };
        assert_eq!(
            plan.locator_of(&row).as_deref(),
            Some("id=7, updated_at=NULL")
        );
        assert_eq!(
            Plan::new(&resource(), &Keys::default()).locator_of(&row),
            None
        );
    }

    #[test]
    fn a_typed_raw_key_becomes_the_key_its_row_leaves_or_is_quarantined_under() {
        let plan = Plan::new(&desensitized(), &keys());
        let row = |id: &str| Row {
            values: vec![
                text(id),
                text("张三"),
                Ok(Value::Null),
                Ok(Value::Null),
                text("1"),
            ],
        };
        // Valid (lower-case check character), and invalid (wrong check character).
        let (valid, _) = plan.key_of(&row("11010519491231002x")).unwrap();
        assert_eq!(
            plan.key_as_it_leaves("11010519491231002x"),
            Ok(valid.clone())
        );
        assert_eq!(plan.key_as_it_leaves("11010519491231002X"), Ok(valid));
        let quarantined = plan.key_of(&row("110105194912310021")).unwrap_err();
        assert!(quarantined.key.as_deref().unwrap().starts_with("v1:"));
        assert_eq!(
            plan.key_as_it_leaves("110105194912310021").ok(),
            quarantined.key
        );
        let empty = plan.key_as_it_leaves("").unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
    }
}
