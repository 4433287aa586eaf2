//! Rows as the tests compare them: key → fields (a JSON object), for both the hub's export and
//! the expected rows computed from the source by the test itself, from the documented type
//! mapping (not from the agent's code).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Timelike, Utc};
use serde_json::{Map, Value};

/// The fields of one record.
pub type Fields = Map<String, Value>;

/// Records by key.
pub type Rows = BTreeMap<String, Fields>;

/// The hub's export as rows; fails the test on a duplicate key or a malformed line.
pub fn from_export(export: &[Value]) -> Rows {
    let mut rows = Rows::new();
    for line in export {
        let key = line["key"]
            .as_str()
            .unwrap_or_else(|| panic!("export line without a string key: {line}"))
            .to_owned();
        let fields = line["fields"]
            .as_object()
            .unwrap_or_else(|| panic!("export line without fields: {line}"))
            .clone();
        if rows.insert(key.clone(), fields).is_some() {
            panic!("the hub's export holds key {key} twice");
        }
    }
    rows
}

/// A readable description of how `hub` differs from `source`, or `None` when they are equal.
pub fn diff(hub: &Rows, source: &Rows) -> Option<String> {
    if hub == source {
        return None;
    }
    let missing: Vec<&String> = source.keys().filter(|k| !hub.contains_key(*k)).collect();
    let extra: Vec<&String> = hub.keys().filter(|k| !source.contains_key(*k)).collect();
    let differing: Vec<&String> = source
        .iter()
        .filter(|(k, v)| hub.get(*k).is_some_and(|h| h != *v))
        .map(|(k, _)| k)
        .collect();
    let mut out = format!(
        "the hub holds {} records, the source {}: {} missing from the hub, {} not in the source, {} with different fields",
        hub.len(),
        source.len(),
        missing.len(),
        extra.len(),
        differing.len()
    );
    let sample = |keys: &[&String]| {
        keys.iter()
            .take(8)
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !missing.is_empty() {
        let _ = write!(out, "\n  missing, e.g.: {}", sample(&missing));
    }
    if !extra.is_empty() {
        let _ = write!(out, "\n  not in the source, e.g.: {}", sample(&extra));
    }
    for k in differing.iter().take(5) {
        let _ = write!(
            out,
            "\n  key {k}:\n    hub:    {}\n    source: {}",
            Value::Object(hub[*k].clone()),
            Value::Object(source[*k].clone())
        );
    }
    Some(out)
}

/// Fails the test when the hub's rows differ from the source's.
#[track_caller]
pub fn assert_same(hub: &Rows, source: &Rows) {
    if let Some(d) = diff(hub, source) {
        panic!("{d}");
    }
}

fn fraction(micros: u32) -> String {
    if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    }
}

/// A timestamp with time zone as the agent delivers it: RFC 3339 in UTC, `Z`, microseconds
/// only when non-zero.
pub fn timestamptz(t: DateTime<Utc>) -> Value {
    Value::String(format!(
        "{}{}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        fraction(t.nanosecond() / 1000)
    ))
}

/// A timestamp without time zone as the agent delivers it: `YYYY-MM-DDTHH:MM:SS[.ffffff]`.
pub fn timestamp(t: NaiveDateTime) -> Value {
    Value::String(format!(
        "{}{}",
        t.format("%Y-%m-%dT%H:%M:%S"),
        fraction(t.nanosecond() / 1000)
    ))
}

/// A date as the agent delivers it: `YYYY-MM-DD`.
pub fn date(d: NaiveDate) -> Value {
    Value::String(d.format("%Y-%m-%d").to_string())
}

/// Bytes as the agent delivers them: standard padded base64.
pub fn bytes(b: &[u8]) -> Value {
    use base64::Engine as _;
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

/// A JSON value from its text (numbers keep every digit).
pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON in a test: {e}: {text}"))
}

/// Builds a [`Fields`] map from pairs.
pub fn fields<const N: usize>(pairs: [(&str, Value); N]) -> Fields {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
