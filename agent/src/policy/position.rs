//! A row's position as it is stored on disk: the key's value sealed when the key does not
//! leave plain, and opened again (or refused) when the source is read from it.

use exchange_connectors::Value;

use super::{Plan, seal};

impl Plan {
    /// A raw position as it is stored: the key's value sealed when the key does not leave
    /// plain. Without a sealer (its key missing) such a value is not stored at all: `None`.
    pub fn position_to_store(&self, raw: Vec<Value>) -> Option<Vec<Value>> {
        if !self.key_is_hidden() {
            return Some(raw);
        }
        let (sealer, sealed) = self.seal.as_ref()?;
        Some(
            raw.into_iter()
                .zip(sealed)
                .map(|(v, s)| if *s { sealer.seal_value(&v) } else { v })
                .collect(),
        )
    }

    /// A stored position as the source is read with: the key's value opened when the key does
    /// not leave as read. Refused, with the reason: a value where a sealed one belongs (or the
    /// reverse), one sealed under another seal key, a damaged one.
    pub fn position_from_store(&self, stored: &[Value]) -> Result<Vec<Value>, String> {
        stored
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if self.cursor_index.get(i) != Some(&self.key_index) {
                    return Ok(v.clone());
                }
                if !self.key_is_hidden() {
                    return match seal::is_sealed(v) {
                        true => Err(exchange_protocol::tr!(
                            "the key's value is stored sealed, but the key now leaves as read",
                            "主键的值以密封形式存储，但主键现在按原样离开"
                        )),
                        false => Ok(v.clone()),
                    };
                }
                match &self.seal {
                    Some((sealer, _)) => sealer.open_value(v).map_err(|e| e.to_string()),
                    None => Err(exchange_protocol::tr!(
                        "the key's value is stored sealed, but `[policy] seal_key_file` is not configured",
                        "主键的值以密封形式存储，但未配置 `[policy] seal_key_file`"
                    )),
                }
            })
            .collect()
    }
}
