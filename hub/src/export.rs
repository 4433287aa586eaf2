//! The current records of a resource as NDJSON: what `exchange-hub export` prints.
//!
//! One JSON object per line, ordered by key:
//! `{"resource":…,"key":…,"fields":{…},"node":…,"updated_at":…}`, plus `"flags":[…]` for a
//! record delivered with flags (`invalid_key`). `fields` is the stored
//! JSON text parsed with `arbitrary_precision` and `preserve_order`, so every digit and the
//! column order are exactly as the agent sent them.

use std::io::Write;

use serde_json::{Map, Value};

use crate::store::{Store, StoreError, StoredRecord};

/// What can go wrong while exporting.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored `fields` text is not a JSON object (the database was edited by hand?).
    #[error("{}", exchange_protocol::tr!(
        "resource `{resource}`: the stored fields of row {row} (in key order) are not a JSON object: {reason}",
        "资源 `{resource}`：第 {row} 行（按主键排序）存储的字段不是 JSON 对象：{reason}"
    ))]
    Corrupt {
        /// The resource code.
        resource: String,
        /// 1-based position of the row in key order (the key itself is not shown).
        row: u64,
        /// The JSON error, without the text.
        reason: String,
    },
    /// Writing the output failed.
    #[error("{}", exchange_protocol::tr!(
        "cannot write the export: {0}",
        "无法写入导出文件：{0}", .0
    ))]
    Write(std::io::Error),
}

/// The I/O error is in the message, not a `source`: a chain (`{:#}`) names it once.
impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        ExportError::Write(e)
    }
}

/// One stored record as the export's JSON object.
pub fn to_json(record: &StoredRecord, row: u64) -> Result<Value, ExportError> {
    let fields: Map<String, Value> =
        serde_json::from_str(&record.fields).map_err(|e| ExportError::Corrupt {
            resource: record.resource.clone(),
            row,
            reason: format!("{:?} at column {}", e.classify(), e.column()),
        })?;
    let mut object = Map::new();
    object.insert("resource".into(), Value::String(record.resource.clone()));
    object.insert("key".into(), Value::String(record.key.clone()));
    object.insert("fields".into(), Value::Object(fields));
    object.insert("node".into(), Value::String(record.node.clone()));
    object.insert(
        "updated_at".into(),
        Value::String(record.updated_at.clone()),
    );
    if let Some(flags) = &record.flags {
        let flags: Value = serde_json::from_str(flags).map_err(|e| ExportError::Corrupt {
            resource: record.resource.clone(),
            row,
            reason: format!("flags: {:?} at column {}", e.classify(), e.column()),
        })?;
        object.insert("flags".into(), flags);
    }
    Ok(Value::Object(object))
}

/// The current records of `resource`, ordered by key (empty for an unknown resource).
pub async fn export(store: &Store, resource: &str) -> Result<Vec<Value>, ExportError> {
    let mut rows = store.export(resource);
    let mut out = Vec::new();
    while let Some(record) = rows.next().await {
        out.push(to_json(&record?, out.len() as u64 + 1)?);
    }
    Ok(out)
}

/// Writes the current records of `resource` as NDJSON to `out`; returns how many.
pub async fn write_ndjson(
    store: &Store,
    resource: &str,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let mut rows = store.export(resource);
    let mut written = 0;
    while let Some(record) = rows.next().await {
        written += 1;
        let line = to_json(&record?, written)?;
        serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(written)
}
