//! The configuration exactly as written in TOML; unknown keys are rejected.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node: RawNode,
    pub hub: RawHub,
    pub queue: Option<RawQueue>,
    pub batch: Option<RawBatch>,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub resources: Vec<RawResource>,
}

/// `[node]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: String,
    pub department: String,
    pub data_dir: String,
}

/// `[hub]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHub {
    pub url: String,
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub min_tls: Option<String>,
    pub timeout: Option<String>,
}

/// `[queue]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub max_bytes: Option<String>,
}

/// `[batch]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    pub max_records: Option<usize>,
    pub max_bytes: Option<String>,
}

/// `[[sources]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: String,
    pub kind: String,
    pub url: String,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub ca: Option<String>,
    pub pool_size: Option<usize>,
    pub replica_lag: Option<String>,
}

/// `[[resources]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResource {
    pub code: String,
    pub name: String,
    pub share: String,
    pub source: String,
    pub table: Option<String>,
    pub query: Option<String>,
    pub key: String,
    pub mode: String,
    pub cursor: Option<Vec<String>>,
    pub safety_lag: Option<String>,
    pub schedule: Option<String>,
    pub every: Option<String>,
    /// Column → rule, in file order.
    pub fields: indexmap_like::OrderedFields,
}

/// Keeps `[resources.fields]` in file order.
pub mod indexmap_like {
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    /// Column → rule pairs in the order written.
    #[derive(Debug, Default)]
    pub struct OrderedFields(pub Vec<(String, String)>);

    impl IntoIterator for OrderedFields {
        type Item = (String, String);
        type IntoIter = std::vec::IntoIter<(String, String)>;
        fn into_iter(self) -> Self::IntoIter {
            self.0.into_iter()
        }
    }

    impl<'de> Deserialize<'de> for OrderedFields {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = OrderedFields;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a table of column = \"rule\"")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedFields, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = m.next_entry::<String, String>()? {
                        out.push((k, v));
                    }
                    Ok(OrderedFields(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}

#[allow(dead_code)]
type Unused = BTreeMap<(), ()>;

/// Parses TOML into the raw structs; errors carry line, column and key path.
pub fn parse(file: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(file, text, &e, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        toml_error(file, text, e.inner(), Some(path))
    })
}

fn toml_error(file: &Path, text: &str, e: &toml::de::Error, path: Option<String>) -> ConfigError {
    let location = e
        .span()
        .map(|span| super::location::line_col(text, span.start));
    let message = e.message().trim_end().to_owned();
    let message = match path {
        Some(p) if p != "." && !p.is_empty() => format!("key `{p}`: {message}"),
        _ => message,
    };
    ConfigError {
        file: file.to_owned(),
        location,
        message,
    }
}
