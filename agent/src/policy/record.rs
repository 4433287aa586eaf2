//! Applying the rules to a row: the record that leaves ([`Plan::apply`]) and its batch line
//! written straight from the row ([`Plan::write_upsert`]), both through one decision per field
//! (`Plan::deliver`).

use exchange_connectors::{Row, Value};
use exchange_protocol::tr;
use exchange_protocol::value::push_json_string;
use serde_json::Map;

use super::{Delivered, Emit, MAX_JSON_DEPTH, Outgoing, Plan, Quarantine, json, json_depth};
use crate::identifier;
use crate::policy::rule::{Rule, TypeClass};
use crate::policy::{generalize, mask};

impl Plan {
    /// Turns a source row into the record that leaves, or a quarantine reason.
    pub fn apply(&self, row: &Row) -> Result<Outgoing, Quarantine> {
        let (key, invalid_key) = self.key_of(row)?;
        let mut fields = Map::with_capacity(self.emit.len());
        for e in &self.emit {
            let value = match self.deliver(e, &row.values[e.index]) {
                Ok(Delivered::Text(t)) => serde_json::Value::String(t.to_owned()),
                Ok(Delivered::Json(j)) => j.clone(),
                Ok(Delivered::Plain(v)) => v.to_json(),
                Ok(Delivered::Key) => serde_json::Value::String(key.clone()),
                Ok(Delivered::Value(v)) => v,
                Err(reason) => return Err(Quarantine::new(Some(key), reason)),
            };
            fields.insert(e.name.clone(), value);
        }
        Ok(Outgoing {
            key,
            fields,
            invalid_key,
        })
    }

    /// [`Plan::apply`] written straight into `out` as the batch line of an upsert: byte for
    /// byte what `push_line` writes for the record `apply` returns (`flags` included), by the
    /// same decision per field (`Plan::deliver`: every rule applied, a plain text written
    /// without a copy), without building the fields map. Returns the key as it leaves and
    /// whether it is an invalid identifier let through. On `Err` nothing of the row stays in
    /// `out`.
    pub fn write_upsert(&self, row: &Row, out: &mut Vec<u8>) -> Result<(String, bool), Quarantine> {
        let (key, invalid_key) = self.key_of(row)?;
        let start = out.len();
        out.extend_from_slice(br#"{"op":"upsert","key":"#);
        push_json_string(out, &key);
        out.extend_from_slice(br#","fields":{"#);
        for (n, e) in self.emit.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&e.label);
            match self.deliver(e, &row.values[e.index]) {
                Ok(Delivered::Text(t)) => push_json_string(out, t),
                Ok(Delivered::Json(j)) => json(out, j),
                Ok(Delivered::Plain(v)) => v.write_json(out),
                Ok(Delivered::Key) => push_json_string(out, &key),
                Ok(Delivered::Value(serde_json::Value::String(t))) => push_json_string(out, &t),
                Ok(Delivered::Value(v)) => json(out, &v),
                Err(reason) => {
                    out.truncate(start);
                    return Err(Quarantine::new(Some(key), reason));
                }
            }
        }
        out.push(b'}');
        if invalid_key {
            out.extend_from_slice(br#","flags":["#);
            json(out, exchange_protocol::batch::FLAG_INVALID_KEY);
            out.push(b']');
        }
        out.extend_from_slice(b"}\n");
        Ok((key, invalid_key))
    }

    /// What field `e` of a row delivers, or why the row is quarantined (never a value): the
    /// one decision behind [`Plan::apply`] and [`Plan::write_upsert`].
    pub(super) fn deliver<'r>(
        &self,
        e: &Emit,
        value: &'r Result<Value, exchange_connectors::ConvertError>,
    ) -> Result<Delivered<'r>, String> {
        match value {
            Ok(Value::Json(j)) if e.rule.is_plain() && json_depth(j) > MAX_JSON_DEPTH => Err(tr!(
                "column `{}`: JSON nested deeper than {MAX_JSON_DEPTH} levels",
                "列 `{}`：JSON 嵌套超过 {MAX_JSON_DEPTH} 层",
                e.name
            )),
            Ok(_)
                if e.index == self.key_index
                    && e.rule == self.key_rule
                    && matches!(e.rule, Rule::Pseudonym { .. } | Rule::FpeDigits { .. }) =>
            {
                // The key field under the key's own rule: the same token, computed once.
                Ok(Delivered::Key)
            }
            Ok(Value::Text(t)) if e.rule.is_plain() => Ok(Delivered::Text(t)),
            Ok(Value::Json(j)) if e.rule.is_plain() => Ok(Delivered::Json(j)),
            Ok(v) if e.rule.is_plain() => Ok(Delivered::Plain(v)),
            Ok(v) => Ok(Delivered::Value(self.field(&e.rule, v))),
            Err(err) => Err(err.to_string()),
        }
    }

    /// The delivered form of one (converted) value under `rule`. NULL stays NULL.
    pub(super) fn field(&self, rule: &Rule, v: &Value) -> serde_json::Value {
        use serde_json::Value as J;
        if matches!(v, Value::Null) {
            return J::Null;
        }
        let text = || match v {
            Value::Text(t) => Some(std::borrow::Cow::Borrowed(t.as_str())),
            Value::Int(_) | Value::UInt(_) | Value::Decimal(_) => {
                v.to_text().map(std::borrow::Cow::Owned)
            }
            _ => None,
        };
        let closed = || J::String(mask::mask_all(&v.to_text().unwrap_or_else(|| "*".into())));
        if !rule.accepts(TypeClass::of_value(v)) {
            return closed();
        }
        match rule {
            Rule::Plain | Rule::Drop => v.to_json(),
            Rule::Mask(m) => match text() {
                Some(t) => J::String(mask::apply(*m, &t)),
                None => closed(),
            },
            Rule::Pseudonym { kind, domain } => match (text(), &self.keys.pseudonym) {
                (Some(t), _) if t.is_empty() => J::String(String::new()),
                (Some(t), Some(k)) => {
                    let normal = match identifier::normalize(*kind, &t) {
                        Ok(n) => n,
                        Err(e) => e.cleaned,
                    };
                    J::String(k.token(domain, &normal))
                }
                _ => closed(),
            },
            Rule::Generalize(g) => J::String(generalize::apply(*g, v, self.keys.time_zone)),
            Rule::FpeDigits { kind, domain } => match (v, &self.keys.fpe) {
                (Value::Text(_) | Value::Int(_) | Value::UInt(_), Some(k)) => {
                    let t = v.to_text().unwrap_or_default();
                    J::String(k.apply_identifier(*kind, domain, &t))
                }
                _ => closed(),
            },
        }
    }
}
