//! `cursor show`, `cursor reset` and `cursor set`: where the next pull of a resource starts.

use exchange_connectors::Value;

use super::command::{OperatorError, Printed, open_queue, resource};
use crate::audit;
use crate::config::{Config, Mode, Resource};

/// The source position as text (each cursor column, the key tiebreaker last). A sealed
/// value (the raw value of a key that leaves pseudonymized) is not shown.
fn position_text(
    resource: &Resource,
    keys: &crate::policy::Keys,
    position: &Option<Vec<Value>>,
) -> String {
    match position {
        None => "at the start (the next pull reads from the first row)".into(),
        Some(values) => {
            let names = crate::policy::Plan::new(resource, keys).selection.cursor;
            names
                .iter()
                .zip(values)
                .map(|(n, v)| {
                    if crate::policy::seal::is_sealed(v) {
                        let form = resource
                            .fields
                            .iter()
                            .find(|(f, _)| f.eq_ignore_ascii_case(&resource.key))
                            .map_or("as read", |(_, rule)| rule.key_form());
                        format!("{n} = (sealed: the key leaves {form})")
                    } else {
                        format!("{n} = {}", v.to_text().unwrap_or_else(|| "?".into()))
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// `cursor show`.
pub fn cursor_show(config: &Config, code: &str) -> Printed {
    let queue = open_queue(config)?;
    let r = resource(config, &queue, code)?;
    let st = queue.state(code)?;
    Ok(match &r.mode {
        Mode::Incremental { .. } => {
            format!("{code}: {}\n", position_text(r, &config.keys, &st.cursor))
        }
        Mode::Snapshot => format!(
            "{code}: snapshot generation {}, {}\n",
            st.snapshot.generation,
            if st.snapshot.sweeping {
                "sweeping deletes".to_owned()
            } else {
                format!(
                    "scan {}",
                    position_text(r, &config.keys, &st.snapshot.position)
                )
            }
        ),
    })
}

/// `cursor reset`: the next pull reads the resource from the start on the same stream (rows
/// are sent again; the hub overwrites them). Audited.
pub fn cursor_reset(config: &Config, code: &str) -> Printed {
    let queue = open_queue(config)?;
    let r = resource(config, &queue, code)?;
    let incremental = matches!(r.mode, Mode::Incremental { .. });
    queue.update_state(code, |st| {
        st.cursor = None;
        if st.snapshot.position.is_some() || st.snapshot.sweeping {
            // A scan cut short: the next scan is a new generation, so rows this one already
            // stamped are not taken for duplicates.
            st.snapshot.generation += 1;
        }
        st.snapshot.position = None;
        st.snapshot.sweeping = false;
        st.snapshot.invalid_keys = 0;
        if incremental {
            // Every row is read again: the invalid keys are counted afresh.
            st.invalid_keys = 0;
            st.invalid_keys_since = None;
        }
    })?;
    audit::append(
        &config.node.data_dir,
        "cursor.reset",
        code,
        serde_json::json!({}),
    )?;
    Ok(format!(
        "The cursor of `{code}` is reset: the next pull reads every row again and the hub overwrites what it holds (rows deleted at the source stay at the hub; `exchange-agent resync {code} --yes` removes those too).\n"
    ))
}

/// `cursor set`: the next pull reads rows after `values` (one per cursor column, the key
/// last, each parsed like the current position's value). Audited (without the values).
pub fn cursor_set(config: &Config, code: &str, values: &[String]) -> Printed {
    let queue = open_queue(config)?;
    let r = resource(config, &queue, code)?;
    if !matches!(r.mode, Mode::Incremental { .. }) {
        return Err(OperatorError::Usage(format!(
            "`{code}` is a snapshot resource: it has no cursor to set (use `cursor reset` to restart its scan)"
        )));
    }
    let plan = crate::policy::Plan::new(r, &config.keys);
    let names = plan.selection.cursor.clone();
    if values.len() != names.len() {
        return Err(OperatorError::Usage(format!(
            "`{code}` has {} cursor columns ({}, the key last as tiebreaker); give one value for each",
            names.len(),
            names.join(", ")
        )));
    }
    let st = queue.state(code)?;
    let Some(current) = st.cursor else {
        return Err(OperatorError::Usage(format!(
            "`{code}` has no cursor yet (it reads from the start); run a pull first, so the column types are known"
        )));
    };
    let current = plan
        .position_from_store(&current)
        .map_err(OperatorError::Usage)?;
    let parsed = current
        .iter()
        .zip(values)
        .zip(&names)
        .map(|((like, text), name)| {
            parse_like(like, text)
                .map_err(|why| OperatorError::Usage(format!("cursor column `{name}`: {why}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let parsed = plan.position_to_store(parsed).ok_or_else(|| {
        OperatorError::Usage(format!(
            "`{code}`: the key leaves pseudonymized or encrypted but `[policy] seal_key_file` is not configured, so the position cannot be sealed"
        ))
    })?;
    queue.update_state(code, |st| st.cursor = Some(parsed))?;
    audit::append(
        &config.node.data_dir,
        "cursor.set",
        code,
        serde_json::json!({ "columns": names }),
    )?;
    Ok(format!(
        "The cursor of `{code}` is set: the next pull reads the rows after it.\n"
    ))
}

/// Parses `text` as a value of the same kind as `like`.
fn parse_like(like: &Value, text: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("expected {what}");
    Ok(match like {
        Value::Null => return Err("the current position is NULL".into()),
        Value::Bool(_) => Value::Bool(text.parse().map_err(|_| bad("true or false"))?),
        Value::Int(_) => Value::Int(text.parse().map_err(|_| bad("an integer"))?),
        Value::UInt(_) => Value::UInt(text.parse().map_err(|_| bad("a non-negative integer"))?),
        Value::Float(_) => Value::Float(
            text.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| bad("a number"))?,
        ),
        Value::Decimal(_) => {
            let digits = text.strip_prefix('-').unwrap_or(text);
            let ok = !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
                && digits.matches('.').count() <= 1;
            if !ok {
                return Err(bad("a decimal number such as 12.50"));
            }
            Value::Decimal(text.to_owned())
        }
        Value::Text(_) => Value::Text(text.to_owned()),
        Value::Date(_) => Value::Date(
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| bad("a date YYYY-MM-DD"))?,
        ),
        Value::Timestamp(_) => Value::Timestamp(
            chrono::NaiveDateTime::parse_from_str(&text.replace(' ', "T"), "%Y-%m-%dT%H:%M:%S%.f")
                .map_err(|_| bad("a timestamp YYYY-MM-DDTHH:MM:SS[.ffffff]"))?,
        ),
        Value::TimestampTz(_) => Value::TimestampTz(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|_| bad("an RFC 3339 instant such as 2024-05-01T08:00:00+08:00"))?
                .with_timezone(&chrono::Utc),
        ),
        Value::Bytes(_) => Value::Bytes(hex::decode(text).map_err(|_| bad("hexadecimal bytes"))?),
        Value::Json(_) => return Err("a JSON cursor cannot be set".into()),
    })
}
