//! The configuration exactly as written in TOML; unknown keys are rejected.

use std::collections::BTreeMap;
use std::path::Path;

use exchange_protocol::tr;
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
    pub policy: Option<RawPolicy>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub resources: Vec<RawResource>,
    pub verify: Option<super::verify::RawVerify>,
    pub audit: Option<super::audit::RawAudit>,
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
    pub crl: Option<Vec<String>>,
    pub mode: Option<String>,
    pub outbox: Option<String>,
    pub inbox: Option<String>,
    pub resend_after: Option<String>,
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
    pub compression_level: Option<i32>,
}

/// `[admin]`: the loopback listener for metrics and health.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

/// `[policy]`: key material of the desensitization rules.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub pseudonym_key_file: Option<String>,
    pub pseudonym_key_version: Option<u32>,
    pub fpe_key_file: Option<String>,
    pub seal_key_file: Option<String>,
    pub time_zone: Option<String>,
}

/// `[[sources]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: String,
    pub kind: String,
    /// A database's URL (SQLite: its file); not for a file drop.
    pub url: Option<String>,
    /// A file drop's directory (`kind = "files"` only), and how it is read.
    pub path: Option<String>,
    pub encoding: Option<String>,
    pub ready: Option<String>,
    pub settle: Option<String>,
    pub delete_after: Option<String>,
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
    /// A file drop resource's subdirectory of its source's `path`.
    pub directory: Option<String>,
    pub key: String,
    pub mode: String,
    pub cursor: Option<Vec<String>>,
    /// Columns recorded with a quarantined row to find it at the source.
    pub locator: Option<Vec<String>>,
    pub safety_lag: Option<String>,
    pub schedule: Option<String>,
    pub every: Option<String>,
    pub max_staleness: Option<String>,
    pub deliver: Option<bool>,
    pub plain_allowed: Option<Vec<String>>,
    pub plain_reason: Option<String>,
    pub invalid_key: Option<String>,
    pub reveal_not_found: Option<bool>,
    pub enumerable: Option<Vec<String>>,
    pub compare: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub grants: Vec<super::verify::RawGrant>,
    /// Column → rule, in file order.
    pub fields: indexmap_like::OrderedFields,
}

/// Keeps `[resources.fields]` in file order.
pub mod indexmap_like {
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    /// One field: `column = "rule"`, or `column = { rule = "…", identifier = "…", domain = "…" }`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RawField {
        /// The rule text.
        pub rule: String,
        /// The identifier kind (`citizen_id`, `uscc`, `property_unit`, `mobile`, `other`).
        pub identifier: Option<String>,
        /// The pseudonym or FPE domain.
        pub domain: Option<String>,
        /// A file drop resource's field type (`text`, `int`, `date`, …).
        #[serde(rename = "type")]
        pub ty: Option<String>,
    }

    impl RawField {
        fn deserialize_any<'de, D: Deserializer<'de>>(d: D) -> Result<RawField, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = RawField;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str(&exchange_protocol::tr!("a rule (\"plain\", \"mask:name\", …) or a table {{ rule = …, identifier = …, domain = … }}", "规则（\"plain\"、\"mask:name\" 等）或表 {{ rule = …, identifier = …, domain = … }}"))
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawField, E> {
                    Ok(RawField {
                        rule: v.to_owned(),
                        ..RawField::default()
                    })
                }
                fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawField, A::Error> {
                    RawField::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// A field entry, deserialized from a string or a table.
    #[derive(Debug)]
    struct AnyField(RawField);

    impl<'de> Deserialize<'de> for AnyField {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            RawField::deserialize_any(d).map(AnyField)
        }
    }

    /// Column → field pairs in the order written.
    #[derive(Debug, Default)]
    pub struct OrderedFields(pub Vec<(String, RawField)>);

    impl IntoIterator for OrderedFields {
        type Item = (String, RawField);
        type IntoIter = std::vec::IntoIter<(String, RawField)>;
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
                    f.write_str(&exchange_protocol::tr!(
                        "a table of column = \"rule\"",
                        "由 列名 = \"规则\" 组成的表"
                    ))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedFields, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = m.next_entry::<String, AnyField>()? {
                        out.push((k, v.0));
                    }
                    Ok(OrderedFields(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}

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
    let message = reader_words(e.message().trim_end());
    let message = match path {
        Some(p) if p != "." && !p.is_empty() => {
            tr!("key `{p}`: {message}", "配置项 `{p}`：{message}")
        }
        _ => message,
    };
    ConfigError {
        file: file.to_owned(),
        location,
        message,
    }
}

/// A deserializer message in the reader's language: [`plain_words`] in English, in Chinese
/// by [`exchange_protocol::translate::deserializer_zh`] (with the same nearest valid key for
/// an unknown one).
fn reader_words(message: &str) -> String {
    if !exchange_protocol::lang::is_zh() {
        return plain_words(message);
    }
    let nearest = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .and_then(|(found, expected)| {
            let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            nearest(found, &valid)
        });
    exchange_protocol::translate::deserializer_zh(message, nearest)
}

/// Rewrites a deserializer message for an administrator: Rust type names become words
/// ("usize" → "an integer (0 or more)"), and an unknown key gets the nearest valid one
/// ("unknown key `evry`; did you mean `every`?").
pub(crate) fn plain_words(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((found, expected)) = rest.split_once('`')
    {
        let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let hint = nearest(found, &valid)
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default();
        let expected = expected.trim_start_matches(',').trim_start();
        return format!("unknown key `{found}`{hint} ({expected})");
    }
    let mut out = String::with_capacity(message.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(match word.as_str() {
            "usize" | "u64" | "u32" | "u16" | "u8" => "an integer (0 or more)",
            "isize" | "i64" | "i32" | "i16" | "i8" => "an integer",
            "f64" | "f32" => "a number",
            "bool" => "true or false",
            other => other,
        });
        word.clear();
    };
    for c in message.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.replace("a sequence", "an array")
}

/// The valid key closest to `found` by edit distance, if close enough to be a typo.
fn nearest<'a>(found: &str, valid: &[&'a str]) -> Option<&'a str> {
    let limit = (found.chars().count() / 3).max(1);
    valid
        .iter()
        .map(|v| (edit_distance(found, v), *v))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_type_names_become_words() {
        assert_eq!(
            plain_words("invalid type: string \"ten\", expected usize"),
            "invalid type: string \"ten\", expected an integer (0 or more)"
        );
        assert_eq!(plain_words("expected a sequence"), "expected an array");
    }

    #[test]
    fn an_unknown_key_suggests_the_nearest_valid_one() {
        assert_eq!(
            plain_words("unknown field `evry`, expected one of `schedule`, `every`, `fields`"),
            "unknown key `evry`; did you mean `every`? (expected one of `schedule`, `every`, `fields`)"
        );
        assert_eq!(
            plain_words("unknown field `colour`, expected `max_bytes`"),
            "unknown key `colour` (expected `max_bytes`)"
        );
    }
}
