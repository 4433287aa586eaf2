//! The key of a row as it leaves: normalized as its identifier kind, pseudonymized or
//! encrypted by its rule, or the reason the row is quarantined (never the raw value).

use exchange_connectors::{Row, Value};
use exchange_protocol::tr;

use super::{Plan, Quarantine};
use crate::config::{InvalidKey, Keys};
use crate::identifier::{self, IdKind};
use crate::policy::rule::Rule;

impl Plan {
    /// The key material the plan was compiled with.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether the key leaves in another form than read (so its raw value is sealed in the
    /// stored position and never shown).
    pub fn key_is_hidden(&self) -> bool {
        !self.key_rule.is_plain()
    }

    /// The raw key of a row as text (never leaves the plan).
    pub(super) fn raw_key<'r>(&self, row: &'r Row) -> Result<std::borrow::Cow<'r, str>, String> {
        let column = &self.selection.columns[self.key_index];
        let key = match &row.values[self.key_index] {
            Ok(Value::Null) => {
                return Err(tr!(
                    "key column `{column}` is NULL",
                    "主键列 `{column}` 为 NULL"
                ));
            }
            Ok(Value::Text(t)) => std::borrow::Cow::Borrowed(t.as_str()),
            Ok(v) => std::borrow::Cow::Owned(v.to_text().ok_or_else(|| {
                tr!(
                    "key column `{column}` has a type that cannot be a key",
                    "主键列 `{column}` 的类型不能作为主键"
                )
            })?),
            Err(e) => return Err(tr!("key cannot be converted: {e}", "主键无法转换：{e}")),
        };
        self.usable_raw(&key)?;
        Ok(key)
    }

    /// A raw key's text can be a key: not empty, no NUL character.
    fn usable_raw(&self, key: &str) -> Result<(), String> {
        let column = &self.selection.columns[self.key_index];
        if key.is_empty() {
            return Err(tr!(
                "key column `{column}` is empty",
                "主键列 `{column}` 为空"
            ));
        }
        if key.contains('\0') {
            return Err(tr!(
                "key column `{column}` contains a NUL character",
                "主键列 `{column}` 含有 NUL 字符"
            ));
        }
        Ok(())
    }

    /// The key of a row as it leaves, and whether it is an invalid identifier let through;
    /// or why the row is quarantined (with the key as it would have left, when there is one).
    pub fn key_of(&self, row: &Row) -> Result<(String, bool), Quarantine> {
        let raw = self
            .raw_key(row)
            .map_err(|reason| Quarantine::new(None, reason))?;
        self.key_from_raw(&raw)
    }

    /// A raw key typed by an operator as it leaves, computed exactly as for a row whose key
    /// column holds that text (normalized, then pseudonymized or encrypted): the key its
    /// quarantine entry is listed under (`quarantine find`). `Err`: why no row with this key
    /// has a key to leave with (such rows are listed without a key). The raw text is never
    /// part of the result.
    pub fn key_as_it_leaves(&self, raw: &str) -> Result<String, String> {
        self.usable_raw(raw)?;
        match self.key_from_raw(raw) {
            Ok((key, _)) => Ok(key),
            Err(Quarantine { key: Some(key), .. }) => Ok(key),
            Err(q) => Err(q.reason),
        }
    }

    /// The key as it leaves from a raw key's text (see [`Plan::key_of`]).
    fn key_from_raw(&self, raw: &str) -> Result<(String, bool), Quarantine> {
        let kind = match &self.key_rule {
            Rule::Pseudonym { kind, .. } => *kind,
            _ => self.key_kind,
        };
        // The key is validated in its normalized form, whatever form it leaves in: a key
        // valid only as read (spaces only) or invalid once normalized is an invalid key.
        let (normal, invalid) = match identifier::normalize(kind, raw) {
            // A valid `other` key leaving plain leaves as read.
            Ok(_) if kind == IdKind::Other && self.key_rule.is_plain() => (raw.to_owned(), None),
            Ok(n) => (n, None),
            Err(e) => (e.cleaned, Some(e.reason)),
        };
        // Nothing left once normalized: every such row would leave under one key (a pseudonym
        // or an encryption of nothing) or an empty one, which the hub refuses with the whole
        // batch behind it, whatever `invalid_key` says.
        let column = &self.selection.columns[self.key_index];
        let blank = || Quarantine {
            key: None,
            reason: exchange_protocol::tr!(
                "key column `{column}` is empty once normalized (spaces or separators only)",
                "键列 `{column}` 规范化后为空（只有空格或分隔符）"
            ),
            invalid_key: true,
        };
        if normal.is_empty() {
            return Err(blank());
        }
        let out = match &self.key_rule {
            Rule::Pseudonym { domain, .. } => match &self.keys.pseudonym {
                Some(k) => k.token(domain, &normal),
                None => {
                    return Err(Quarantine::new(
                        None,
                        tr!(
                            "key column `{column}`: the pseudonym key is not configured",
                            "主键列 `{column}`：未配置假名化密钥"
                        ),
                    ));
                }
            },
            Rule::FpeDigits { domain, .. } => {
                match self
                    .keys
                    .fpe
                    .as_ref()
                    .and_then(|k| k.encrypt(domain, &normal))
                {
                    Some(e) => e,
                    None => {
                        return Err(Quarantine::new(
                            None,
                            tr!(
                                "key column `{column}`: fewer than 6 digits, or digits of another script than ASCII, which fpe:digits cannot encrypt (or the FPE key is not configured)",
                                "主键列 `{column}`：数字少于 6 位，或含有非 ASCII 的数字，fpe:digits 无法加密（或未配置 FPE 密钥）"
                            ),
                        ));
                    }
                }
            }
            _ => normal,
        };
        if out.is_empty() {
            return Err(blank());
        }
        match invalid {
            None => Ok((out, false)),
            Some(_) if self.invalid_key == InvalidKey::Deliver => Ok((out, true)),
            Some(reason) => Err(Quarantine {
                key: Some(out),
                reason: exchange_protocol::tr!(
                    "key column `{column}`: {reason}",
                    "键列 `{column}`：{reason}"
                ),
                invalid_key: true,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, Resource, Share};
    use crate::policy::{FpeKey, PseudonymKey};
    use exchange_connectors::Relation;

    fn keys() -> Keys {
        Keys {
            pseudonym: Some(
                PseudonymKey::from_hex(
                    1,
                    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                )
                .unwrap(),
            ),
            fpe: Some(FpeKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap()),
            ..Keys::default()
        }
    }

    /// A plan of one key column `k` of `kind` under `rule`.
    fn plan(rule: &str, kind: IdKind, invalid_key: InvalidKey) -> Plan {
        Plan::new(&resource(rule, kind, invalid_key), &keys())
    }

    fn resource(rule: &str, kind: IdKind, invalid_key: InvalidKey) -> Resource {
        Resource {
            code: "R1".into(),
            name: "n".into(),
            share: Share::Unconditional,
            source: "s".into(),
            relation: Relation::Table("t".into()),
            key: "k".into(),
            mode: Mode::Snapshot,
            schedule: crate::schedule::Schedule::Every(std::time::Duration::from_secs(1)),
            max_staleness: crate::config::Staleness::WorkingDays(2),
            fields: vec![("k".into(), Rule::parse(rule, kind, None).unwrap())],
            locator: Vec::new(),
            files: None,
            key_kind: kind,
            invalid_key,
            plain_allowed: Vec::new(),
            plain_reason: None,
            verification: Default::default(),
        }
    }

    fn row(key: &str) -> Row {
        Row {
            values: vec![Ok(Value::Text(key.into()))],
        }
    }

    const RULES: [&str; 3] = ["plain", "pseudonym", "fpe:digits"];

    #[test]
    fn a_key_blank_once_normalized_is_quarantined_under_every_rule_and_kind() {
        for rule in RULES {
            for kind in IdKind::ALL {
                for invalid_key in [InvalidKey::Quarantine, InvalidKey::Deliver] {
                    let plan = plan(rule, kind, invalid_key);
                    for blank in [" ", "\u{3000}", " \t "] {
                        let q = plan.key_of(&row(blank)).unwrap_err();
                        assert!(
                            q.reason.contains("empty once normalized"),
                            "{rule} {kind} {blank:?}: {}",
                            q.reason
                        );
                        assert_eq!(q.key, None);
                        assert!(q.invalid_key);
                    }
                }
            }
        }
    }

    #[test]
    fn a_key_valid_as_read_but_not_once_normalized_follows_invalid_key() {
        // 18 characters with a good check character, but region 999999 is not GB/T 2260: the
        // normalized form decides, not the shape of what was read.
        let made_up = format!(
            "99999919491231002{}",
            identifier::citizen_id_check("99999919491231002").unwrap()
        );
        for rule in RULES {
            let quarantine = plan(rule, IdKind::CitizenId, InvalidKey::Quarantine);
            let deliver = plan(rule, IdKind::CitizenId, InvalidKey::Deliver);
            for raw in [made_up.as_str(), "999999491231002", " 110105194912310021 "] {
                let q = quarantine.key_of(&row(raw)).unwrap_err();
                assert!(q.invalid_key, "{rule} {raw}");
                assert!(q.reason.contains("公民身份号码"), "{}", q.reason);
                assert!(!q.reason.contains(raw.trim()), "{}", q.reason);
                let (key, flagged) = deliver.key_of(&row(raw)).unwrap();
                assert!(flagged, "{rule} {raw}");
                assert_eq!(q.key.as_deref(), Some(key.as_str()));
                assert!(!key.is_empty());
            }
            // The 15-digit form leaves as its 18 characters, flagged.
            let (key, _) = deliver.key_of(&row("999999491231002")).unwrap();
            if rule == "plain" {
                assert_eq!(key.len(), 18);
                assert!(key.starts_with("99999919491231002"));
            }
        }
    }

    #[test]
    fn a_key_invalid_as_read_but_valid_once_normalized_leaves_normalized() {
        for rule in RULES {
            let plan = plan(rule, IdKind::CitizenId, InvalidKey::Quarantine);
            let (expected, _) = plan.key_of(&row("11010519491231002X")).unwrap();
            for raw in [
                " 11010519491231002x ",
                "１１０１０５１９４９１２３１００２ｘ",
                "110105 19491231 002X",
            ] {
                assert_eq!(
                    plan.key_of(&row(raw)),
                    Ok((expected.clone(), false)),
                    "{raw}"
                );
            }
        }
        // An `other` key leaving plain leaves as read once it is not blank.
        let plan = plan("plain", IdKind::Other, InvalidKey::Quarantine);
        assert_eq!(
            plan.key_of(&row(" A-17 ")),
            Ok((" A-17 ".to_owned(), false))
        );
    }

    #[test]
    fn an_fpe_field_holding_a_citizen_id_is_normalized_before_it_is_encrypted() {
        let mut r = resource("plain", IdKind::Other, InvalidKey::Quarantine);
        r.fields.push((
            "id".into(),
            Rule::parse("fpe:digits", IdKind::CitizenId, None).unwrap(),
        ));
        r.fields.push((
            "acct".into(),
            Rule::parse("fpe:digits", IdKind::Other, None).unwrap(),
        ));
        let plan = Plan::new(&r, &keys());
        let apply = |id: &str| {
            let row = Row {
                values: vec![
                    Ok(Value::Text("K1".into())),
                    Ok(Value::Text(id.into())),
                    Ok(Value::Text(" 6228-4804-0256 ".into())),
                ],
            };
            plan.apply(&row).unwrap().fields
        };
        // The test vector of docs/CONFIG.md: 11010519491231002X → 68255778106907692X.
        for id in [
            "11010519491231002X",
            "11010519491231002x",
            " １１０１０５１９４９１２３１００２Ｘ ",
            "110105491231002",
        ] {
            let fields = apply(id);
            assert_eq!(
                fields["id"],
                serde_json::json!("68255778106907692X"),
                "{id}"
            );
            // A field of kind `other` is encrypted as read.
            assert_eq!(
                fields["acct"],
                serde_json::json!(keys().fpe.unwrap().apply("other", " 6228-4804-0256 "))
            );
        }
        // The same for the line written straight from the row.
        let row = Row {
            values: vec![
                Ok(Value::Text("K1".into())),
                Ok(Value::Text("110105491231002".into())),
                Ok(Value::Null),
            ],
        };
        let mut line = Vec::new();
        plan.write_upsert(&row, &mut line).unwrap();
        let line = String::from_utf8(line).unwrap();
        assert!(line.contains(r#""id":"68255778106907692X""#), "{line}");
    }
}
