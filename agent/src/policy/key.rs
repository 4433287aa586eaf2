//! The key of a row as it leaves: normalized as its identifier kind, pseudonymized or
//! encrypted by its rule, or the reason the row is quarantined (never the raw value).

use exchange_connectors::{Row, Value};

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
        let key =
            match &row.values[self.key_index] {
                Ok(Value::Null) => return Err(format!("key column `{column}` is NULL")),
                Ok(Value::Text(t)) => std::borrow::Cow::Borrowed(t.as_str()),
                Ok(v) => std::borrow::Cow::Owned(v.to_text().ok_or_else(|| {
                    format!("key column `{column}` has a type that cannot be a key")
                })?),
                Err(e) => return Err(format!("key cannot be converted: {e}")),
            };
        self.usable_raw(&key)?;
        Ok(key)
    }

    /// A raw key's text can be a key: not empty, no NUL character.
    fn usable_raw(&self, key: &str) -> Result<(), String> {
        let column = &self.selection.columns[self.key_index];
        if key.is_empty() {
            return Err(format!("key column `{column}` is empty"));
        }
        if key.contains('\0') {
            return Err(format!("key column `{column}` contains a NUL character"));
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
        let (normal, invalid) = if kind == IdKind::Other && self.key_rule.is_plain() {
            (raw.to_owned(), None)
        } else {
            match identifier::normalize(kind, raw) {
                Ok(n) => (n, None),
                Err(e) => (e.cleaned, Some(e.reason)),
            }
        };
        let column = &self.selection.columns[self.key_index];
        let out = match &self.key_rule {
            Rule::Pseudonym { domain, .. } => match &self.keys.pseudonym {
                Some(k) => k.token(domain, &normal),
                None => {
                    return Err(Quarantine::new(
                        None,
                        format!("key column `{column}`: the pseudonym key is not configured"),
                    ));
                }
            },
            Rule::FpeDigits { domain } => {
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
                            format!(
                                "key column `{column}`: fewer than 6 digits, or digits of another script than ASCII, which fpe:digits cannot encrypt (or the FPE key is not configured)"
                            ),
                        ));
                    }
                }
            }
            _ => normal,
        };
        if out.is_empty() {
            // A key of spaces or separators only: the hub refuses an empty key, and would refuse
            // the whole batch behind it, whatever `invalid_key` says.
            return Err(Quarantine {
                key: None,
                reason: format!("key column `{column}` is empty once normalized"),
                invalid_key: invalid.is_some(),
            });
        }
        match invalid {
            None => Ok((out, false)),
            Some(_) if self.invalid_key == InvalidKey::Deliver => Ok((out, true)),
            Some(reason) => Err(Quarantine {
                key: Some(out),
                reason: format!("key column `{column}`: {reason}"),
                invalid_key: true,
            }),
        }
    }
}
