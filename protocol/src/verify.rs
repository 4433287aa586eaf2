//! The verification request and answer (数据不落地核验, docs/PROTOCOL.md §11): the hub asks
//! whether claimed values equal what a provider holds about a subject; the agent answers
//! match / mismatch / no value per field (and, where the resource reveals it, found / not
//! found per subject), and nothing else.
//!
//! # Format
//!
//! `POST /v1/verify`, `content-type: application/json`:
//!
//! ```json
//! {"request_id": "r-1", "purpose": "社保待遇资格认证", "case_ref": "2024-0001",
//!  "resource": "330100-RSJ-0001",
//!  "items": [{"subject": "11010519491231002X",
//!             "claims": {"name": "张三", "birth": "1949-12-31", "address": {"hmac": "9f…"}}}]}
//! ```
//!
//! Answer (`200`, in request order):
//!
//! ```json
//! {"request_id": "r-1", "items": [{"subject": "found", "fields": {"name": "match", "birth": "mismatch", "address": "no_value"}}]}
//! ```
//!
//! # Invariants
//! - A request is parsed whole or refused ([`VerifyRequest::parse`]): unknown members, a claim
//!   that is neither a string nor `{"hmac": "<64 hex digits>"}`, an empty or oversized
//!   member, more items than the server's maximum: refused with a sentence that never
//!   repeats a subject or a claimed value.
//! - An answer holds the request id, one item per request item in order, and per item only
//!   [`SubjectResult`] and [`FieldResult`] values: no stored value, no length, no partial
//!   match.

use std::collections::BTreeMap;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The path of the verification endpoint.
pub const VERIFY_PATH: &str = "/v1/verify";

/// Longest request id, purpose or case reference, in characters.
pub const MAX_TEXT_CHARS: usize = 256;
/// Longest subject or claimed value, in characters.
pub const MAX_VALUE_CHARS: usize = 1024;
/// Most claims in one item.
pub const MAX_CLAIMS: usize = 64;

/// A verification request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The requester's id for this request (1–256 visible ASCII characters), echoed in the
    /// answer and kept in the audit record.
    pub request_id: String,
    /// What the answer is for (用途), e.g. `社保待遇资格认证`; must be allowed by a grant.
    pub purpose: String,
    /// The requester's case reference (业务流水号), kept in the audit record.
    pub case_ref: String,
    /// The resource code (资源代码) whose data is compared.
    pub resource: String,
    /// What to compare, in order.
    pub items: Vec<Item>,
}

/// One subject and its claimed values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The subject's identifier (公民身份号码, 统一社会信用代码 …), as the requester has it.
    pub subject: String,
    /// Field name → claimed value.
    pub claims: BTreeMap<String, Claim>,
}

/// A claimed value: in clear, or as HMAC-SM3 under the comparison key shared with the
/// provider (the claim then never travels in clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The value as text (numbers and dates are sent as strings).
    Value(String),
    /// `{"hmac": "<64 hex digits>"}`: the MAC bytes.
    Hmac([u8; 32]),
}

impl Serialize for Claim {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Claim::Value(v) => s.serialize_str(v),
            Claim::Hmac(mac) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hmac", &hex::encode(mac))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Claim {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Claim, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Claim;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a claim: a string, or {\"hmac\": \"<64 hex digits>\"}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Claim, E> {
                Ok(Claim::Value(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Claim, E> {
                Ok(Claim::Value(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Claim, A::Error> {
                let mut mac = None;
                while let Some(k) = m.next_key::<String>()? {
                    if k != "hmac" || mac.is_some() {
                        return Err(de::Error::custom(
                            "a claim object has exactly one member, `hmac`",
                        ));
                    }
                    let text: String = m.next_value()?;
                    let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
                    let Some(bytes) = bytes else {
                        return Err(de::Error::custom(
                            "`hmac` must be 64 hexadecimal digits (HMAC-SM3)",
                        ));
                    };
                    let mut out = [0u8; 32];
                    out.copy_from_slice(&bytes);
                    mac = Some(out);
                }
                mac.map(Claim::Hmac)
                    .ok_or_else(|| de::Error::custom("a claim object needs `hmac`"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Why a request body was refused (400): a sentence without any subject or claimed value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

impl VerifyRequest {
    /// Parses and checks a request body; `max_items` is the server's limit.
    pub fn parse(body: &[u8], max_items: usize) -> Result<VerifyRequest, RequestError> {
        let request: VerifyRequest = serde_json::from_slice(body).map_err(|e| {
            // serde_json's messages may quote a piece of the input (an unknown variant, an
            // invalid type "string \"…\""): keep only the category and position.
            let what = match e.classify() {
                serde_json::error::Category::Syntax => "malformed JSON",
                serde_json::error::Category::Eof => "the JSON ends early",
                serde_json::error::Category::Io => "the body cannot be read",
                serde_json::error::Category::Data => "the JSON does not have the request's shape",
            };
            RequestError(format!(
                "{what} at line {} column {}: expected {{\"request_id\", \"purpose\", \"case_ref\", \"resource\", \"items\": [{{\"subject\", \"claims\": {{field: \"value\" | {{\"hmac\": \"<hex>\"}}}}}}]}}{}",
                e.line(),
                e.column(),
                shape_hint(&e)
            ))
        })?;
        request.check(max_items)?;
        Ok(request)
    }

    /// The checks of [`VerifyRequest::parse`] past the JSON shape.
    pub fn check(&self, max_items: usize) -> Result<(), RequestError> {
        let bad = |m: String| Err(RequestError(m));
        if self.request_id.is_empty()
            || self.request_id.len() > MAX_TEXT_CHARS
            || !self.request_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return bad(format!(
                "`request_id` must be 1 to {MAX_TEXT_CHARS} visible ASCII characters"
            ));
        }
        for (name, text) in [("purpose", &self.purpose), ("case_ref", &self.case_ref)] {
            if text.trim().is_empty()
                || text.chars().count() > MAX_TEXT_CHARS
                || text.chars().any(char::is_control)
            {
                return bad(format!(
                    "`{name}` must be 1 to {MAX_TEXT_CHARS} characters without control characters"
                ));
            }
        }
        if self.resource.is_empty()
            || self.resource.len() > 128
            || !self
                .resource
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/')
        {
            return bad(
                "`resource` must be a resource code: 1 to 128 visible ASCII characters without `/`"
                    .into(),
            );
        }
        if self.items.is_empty() {
            return bad("`items` is empty: send at least one subject".into());
        }
        if self.items.len() > max_items {
            return bad(format!(
                "{} items; at most {max_items} are answered per request",
                self.items.len()
            ));
        }
        for (i, item) in self.items.iter().enumerate() {
            if item.subject.trim().is_empty()
                || item.subject.chars().count() > MAX_VALUE_CHARS
                || item.subject.contains('\0')
            {
                return bad(format!(
                    "items[{i}].subject must be 1 to {MAX_VALUE_CHARS} characters without NUL"
                ));
            }
            if item.claims.is_empty() {
                return bad(format!(
                    "items[{i}].claims is empty: claim at least one field"
                ));
            }
            if item.claims.len() > MAX_CLAIMS {
                return bad(format!(
                    "items[{i}] claims {} fields; at most {MAX_CLAIMS}",
                    item.claims.len()
                ));
            }
            for (field, claim) in &item.claims {
                if field.is_empty() || field.len() > 128 || field.chars().any(char::is_control) {
                    return bad(format!(
                        "items[{i}].claims: a field name must be 1 to 128 bytes without control characters"
                    ));
                }
                if let Claim::Value(v) = claim
                    && (v.chars().count() > MAX_VALUE_CHARS || v.contains('\0'))
                {
                    return bad(format!(
                        "items[{i}].claims.{field} must be at most {MAX_VALUE_CHARS} characters without NUL"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The fields claimed anywhere in the request, each once, sorted.
    pub fn fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .items
            .iter()
            .flat_map(|i| i.claims.keys().map(String::as_str))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A hint for the shape errors serde reports with a member name (never a value).
fn shape_hint(e: &serde_json::Error) -> String {
    let text = e.to_string();
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = text.split(marker).nth(1)
            && let Some(name) = rest.split('`').next()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            let what = if marker.starts_with("unknown") {
                "unknown member"
            } else {
                "missing member"
            };
            return format!(" ({what} `{name}`)");
        }
    }
    if text.contains("hmac") {
        return " (a claim object is {\"hmac\": \"<64 hex digits>\"})".into();
    }
    String::new()
}

/// Whether the provider holds the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectResult {
    /// The subject is in the provider's data.
    Found,
    /// It is not (库中无此号).
    NotFound,
}

/// The comparison of one claimed field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldResult {
    /// The claim equals the stored value (一致).
    Match,
    /// It does not, or the subject is unknown and the resource does not reveal it (不一致).
    Mismatch,
    /// The stored value is NULL (only where the resource reveals whether a subject is known).
    NoValue,
}

impl FieldResult {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldResult::Match => "match",
            FieldResult::Mismatch => "mismatch",
            FieldResult::NoValue => "no_value",
        }
    }
}

/// The answer to a [`VerifyRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyAnswer {
    /// The request's id.
    pub request_id: String,
    /// One per request item, in request order.
    pub items: Vec<AnswerItem>,
}

/// The answer for one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerItem {
    /// Found or not; absent when the resource does not reveal it (`reveal_not_found = false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<SubjectResult>,
    /// Field → result, for every claimed field.
    pub fields: BTreeMap<String, FieldResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(items: &str) -> String {
        format!(
            r#"{{"request_id":"r1","purpose":"p","case_ref":"c","resource":"R-1","items":{items}}}"#
        )
    }

    #[test]
    fn a_request_with_value_and_hmac_claims_parses() {
        let mac = "ab".repeat(32);
        let text = body(&format!(
            r#"[{{"subject":"11010519491231002X","claims":{{"name":"张三","address":{{"hmac":"{mac}"}}}}}}]"#
        ));
        let r = VerifyRequest::parse(text.as_bytes(), 10).unwrap();
        assert_eq!(r.items[0].claims["name"], Claim::Value("张三".into()));
        assert_eq!(r.items[0].claims["address"], Claim::Hmac([0xab; 32]));
        assert_eq!(r.fields(), vec!["address", "name"]);
    }

    #[test]
    fn refusals_never_repeat_values() {
        let cases = [
            body(r#"[{"subject":"SECRET-SUBJECT","claims":{"f":12345}}]"#),
            body(r#"[{"subject":"SECRET-SUBJECT","claims":{"f":{"hmac":"SECRET-VALUE"}}}]"#),
            body(
                r#"[{"subject":"SECRET-SUBJECT","claims":{"f":"SECRET-VALUE"},"x":"SECRET-VALUE"}]"#,
            ),
            body(r#"[{"subject":"SECRET-SUBJECT","claims":{}}]"#),
            body(r#"[{"subject":"","claims":{"f":"SECRET-VALUE"}}]"#),
            body(r#"[]"#),
            r#"{"request_id":"SECRET-VALUE", "#.into(),
            body(
                r#"[{"subject":"SECRET-SUBJECT","claims":{"f":"SECRET-VALUE"}},{"subject":"SECRET-SUBJECT","claims":{"f":"x"}}]"#,
            ),
        ];
        for case in cases {
            let e = VerifyRequest::parse(case.as_bytes(), 1).unwrap_err();
            assert!(!e.0.contains("SECRET"), "{case} → {e}");
        }
    }

    #[test]
    fn an_answer_without_subject_leaves_the_member_out() {
        let a = VerifyAnswer {
            request_id: "r".into(),
            items: vec![AnswerItem {
                subject: None,
                fields: BTreeMap::from([("name".into(), FieldResult::NoValue)]),
            }],
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"request_id":"r","items":[{"fields":{"name":"no_value"}}]}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn the_parser_never_panics_and_refuses_with_a_value_free_sentence(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Err(e) = VerifyRequest::parse(&bytes, 1000) {
                proptest::prop_assert!(!e.0.is_empty());
            }
        }

        #[test]
        fn a_well_formed_request_round_trips(
            subject in "[^\u{0}]{1,40}",
            field in "[a-z_]{1,12}",
            value in "[^\u{0}]{0,40}",
        ) {
            proptest::prop_assume!(!subject.trim().is_empty());
            let request = VerifyRequest {
                request_id: "r".into(),
                purpose: "p".into(),
                case_ref: "c".into(),
                resource: "R".into(),
                items: vec![Item { subject, claims: BTreeMap::from([(field, Claim::Value(value))]) }],
            };
            let text = serde_json::to_vec(&request).unwrap();
            proptest::prop_assert_eq!(VerifyRequest::parse(&text, 1).unwrap(), request);
        }
    }
}
