//! The catalogue entry of a resource (目录), which an agent reports to the hub
//! (docs/PROTOCOL.md §10): code, name, share class, and the names and source types of its
//! fields — never a value. For a `none` (不予共享) resource it is all the hub ever receives.
//!
//! `PUT /v1/catalogue` with the headers `exchange-protocol: 1` and `exchange-node`, body:
//!
//! ```json
//! {"resource":"330100-RSJ-0002","name":"社保缴费单位","share":"none",
//!  "fields":[{"name":"uscc","type":"character varying"}]}
//! ```

use serde::{Deserialize, Serialize};

/// Path of the catalogue endpoint.
pub const CATALOGUE_PATH: &str = "/v1/catalogue";

/// Largest accepted entry body.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// One resource's catalogue entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueEntry {
    /// Resource code (资源代码).
    pub resource: String,
    /// Catalogue name (资源名称).
    pub name: String,
    /// Share class: `unconditional`, `conditional` or `none`.
    pub share: String,
    /// The fields, in configuration order.
    pub fields: Vec<CatalogueField>,
}

/// One field of a catalogue entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueField {
    /// The field (column) name.
    pub name: String,
    /// Its type as the source names it (`character varying`, `DATETIME`); empty when the
    /// source does not tell.
    #[serde(rename = "type")]
    pub source_type: String,
}

impl CatalogueEntry {
    /// Parses and checks an entry: a resource code of 1–128 visible ASCII characters without
    /// `/`, a known share class, non-empty field names.
    pub fn parse(body: &[u8]) -> Result<CatalogueEntry, String> {
        let e: CatalogueEntry = serde_json::from_slice(body)
            .map_err(|e| format!("the catalogue entry is not valid: {e}"))?;
        if e.resource.is_empty()
            || e.resource.len() > 128
            || !e.resource.chars().all(|c| c.is_ascii_graphic() && c != '/')
        {
            return Err("`resource` must be 1 to 128 visible ASCII characters without `/`".into());
        }
        if !matches!(e.share.as_str(), "unconditional" | "conditional" | "none") {
            return Err(format!(
                "`share` is `{}`; expected \"unconditional\", \"conditional\" or \"none\"",
                e.share
            ));
        }
        if e.fields.iter().any(|f| f.name.is_empty()) {
            return Err("every field needs a name".into());
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_bad_ones_are_refused() {
        let ok = br#"{"resource":"R-1","name":"n","share":"none","fields":[{"name":"a","type":"text"}]}"#;
        let e = CatalogueEntry::parse(ok).unwrap();
        assert_eq!(e.fields[0].source_type, "text");
        for bad in [
            &br#"{"resource":"a/b","name":"n","share":"none","fields":[]}"#[..],
            br#"{"resource":"R","name":"n","share":"public","fields":[]}"#,
            br#"{"resource":"R","name":"n","share":"none","fields":[],"values":[1]}"#,
            br#"{"resource":"R","name":"n","share":"none","fields":[{"name":"","type":""}]}"#,
        ] {
            assert!(CatalogueEntry::parse(bad).is_err());
        }
    }
}
