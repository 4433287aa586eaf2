//! Authorization of a verification request: a resource's `[[resources.grants]]` (who may
//! compare which fields, for which purposes, until when) and its share class.
//!
//! A request is allowed when one grant of its requester is unexpired, allows its purpose
//! (a grant without `purposes` allows any) and covers every field it claims. Otherwise the
//! refusal names what is missing, checked in this order: the resource is `share = "none"`;
//! the requester has no grant; every grant of the requester has expired; none allows the
//! purpose; a claimed field is not granted. Refusals name the requester, the resource, the
//! purpose and field names, never a subject or a value.

use chrono::{DateTime, Utc};

use crate::config::{Resource, Share};

/// One `[[resources.grants]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The requester's identity, as read from its certificate (`[verify] requester_identity`).
    pub requester: String,
    /// The fields it may compare (names as in `[resources.fields]`).
    pub fields: Vec<String>,
    /// The purposes (用途) it may give; `None`: any.
    pub purposes: Option<Vec<String>>,
    /// The first instant the grant no longer holds; `None`: no end.
    pub expires: Option<DateTime<Utc>>,
}

/// Why a request is refused (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The resource is not shared.
    #[error("resource `{resource}` is not shared (share = \"none\"); it is never verified")]
    NotShared {
        /// The resource code.
        resource: String,
    },
    /// No grant names the requester.
    #[error(
        "requester `{requester}` has no grant on resource `{resource}`; the provider must add a [[resources.grants]] entry for it"
    )]
    UnknownRequester {
        /// The requester.
        requester: String,
        /// The resource code.
        resource: String,
    },
    /// Every grant of the requester has expired.
    #[error("the grant of requester `{requester}` on resource `{resource}` expired at {expired}")]
    Expired {
        /// The requester.
        requester: String,
        /// The resource code.
        resource: String,
        /// The latest expiry among its grants (RFC 3339).
        expired: String,
    },
    /// The purpose is not allowed.
    #[error(
        "purpose `{purpose}` is not allowed for requester `{requester}` on resource `{resource}`; allowed: {allowed}"
    )]
    Purpose {
        /// The purpose given.
        purpose: String,
        /// The requester.
        requester: String,
        /// The resource code.
        resource: String,
        /// The purposes its grants allow.
        allowed: String,
    },
    /// A claimed field is not granted.
    #[error(
        "field `{field}` of resource `{resource}` is not granted to requester `{requester}` for purpose `{purpose}`"
    )]
    Field {
        /// The field.
        field: String,
        /// The requester.
        requester: String,
        /// The resource code.
        resource: String,
        /// The purpose given.
        purpose: String,
    },
}

/// Decides whether `requester` may compare `fields` of `resource` for `purpose` at `now`.
pub fn authorize(
    resource: &Resource,
    requester: &str,
    purpose: &str,
    fields: &[&str],
    now: DateTime<Utc>,
) -> Result<(), Denied> {
    let code = || resource.code.clone();
    if resource.share == Share::None {
        return Err(Denied::NotShared { resource: code() });
    }
    let mine: Vec<&Grant> = resource
        .verification
        .grants
        .iter()
        .filter(|g| g.requester == requester)
        .collect();
    if mine.is_empty() {
        return Err(Denied::UnknownRequester {
            requester: requester.to_owned(),
            resource: code(),
        });
    }
    let live: Vec<&Grant> = mine
        .iter()
        .copied()
        .filter(|g| g.expires.is_none_or(|e| now < e))
        .collect();
    if live.is_empty() {
        let expired = mine
            .iter()
            .filter_map(|g| g.expires)
            .max()
            .map(|e| e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        return Err(Denied::Expired {
            requester: requester.to_owned(),
            resource: code(),
            expired,
        });
    }
    let for_purpose: Vec<&Grant> = live
        .iter()
        .copied()
        .filter(|g| {
            g.purposes
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| p == purpose))
        })
        .collect();
    if for_purpose.is_empty() {
        let mut allowed: Vec<String> = live
            .iter()
            .flat_map(|g| g.purposes.iter().flatten())
            .map(|p| format!("`{p}`"))
            .collect();
        allowed.sort();
        allowed.dedup();
        return Err(Denied::Purpose {
            purpose: purpose.to_owned(),
            requester: requester.to_owned(),
            resource: code(),
            allowed: allowed.join(", "),
        });
    }
    let covers = |g: &Grant, f: &str| g.fields.iter().any(|x| x.eq_ignore_ascii_case(f));
    if for_purpose
        .iter()
        .any(|g| fields.iter().all(|f| covers(g, f)))
    {
        return Ok(());
    }
    // Name the first field that no single grant covers along with the others: the first
    // one missing from the grant that covers the most.
    let best = for_purpose
        .iter()
        .max_by_key(|g| fields.iter().filter(|f| covers(g, f)).count())
        .expect("not empty");
    let field = fields
        .iter()
        .find(|f| !covers(best, f))
        .expect("some field is not covered");
    Err(Denied::Field {
        field: (*field).to_owned(),
        requester: requester.to_owned(),
        resource: code(),
        purpose: purpose.to_owned(),
    })
}
