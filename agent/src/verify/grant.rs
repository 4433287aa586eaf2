//! Authorization of a verification request: a resource's `[[resources.grants]]` (who may
//! compare which fields, for which purposes, until when) and its share class.
//!
//! Two steps, so that nothing about a resource is told to a requester it is not granted to:
//! [`resource_for`] runs first, before anything resource-specific, and answers an unknown
//! resource and a resource without a grant for the requester with the same [`Denied::NoGrant`]
//! (one sentence, one status); then, for a requester holding a grant, the share class, the
//! grant's expiry and purpose. [`covers`] runs once the claimed field names are resolved: one
//! live grant for the purpose covers every claimed field (and, for private set intersection,
//! the grant says `psi = true`, and an enumerable field needs `psi_enumerable = true` too). Refusals name the requester,
//! the resource, the purpose and field names, never a subject or a value.

use chrono::{DateTime, Utc};

use crate::config::{Config, Resource, Share};

pub use crate::config::verify::Grant;

/// Why a request is refused (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The resource is not shared.
    #[error("{}", exchange_protocol::tr!(
        "resource `{resource}` is not shared (share = \"none\"); it is never verified",
        "资源 `{resource}` 不予共享（share = \"none\"），从不接受核验"
    ))]
    NotShared {
        /// The resource code.
        resource: String,
    },
    /// No grant names the requester, or there is no such resource: the same sentence, so
    /// that a requester cannot tell which resources exist.
    #[error("{}", exchange_protocol::tr!(
        "requester `{requester}` has no grant on resource `{resource}`; the provider must add a [[resources.grants]] entry for it",
        "请求方 `{requester}` 没有资源 `{resource}` 的授权；须由提供方为其添加 [[resources.grants]] 条目"
    ))]
    NoGrant {
        /// The requester.
        requester: String,
        /// The resource code.
        resource: String,
    },
    /// Every grant of the requester has expired.
    #[error("{}", exchange_protocol::tr!(
        "the grant of requester `{requester}` on resource `{resource}` expired at {expired}",
        "请求方 `{requester}` 对资源 `{resource}` 的授权已于 {expired} 过期"
    ))]
    Expired {
        /// The requester.
        requester: String,
        /// The resource code.
        resource: String,
        /// The latest expiry among its grants (RFC 3339).
        expired: String,
    },
    /// The purpose is not allowed.
    #[error("{}", exchange_protocol::tr!(
        "purpose `{purpose}` is not allowed for requester `{requester}` on resource `{resource}`; allowed: {allowed}",
        "请求方 `{requester}` 对资源 `{resource}` 不允许用途 `{purpose}`；允许的用途：{allowed}"
    ))]
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
    #[error("{}", exchange_protocol::tr!(
        "field `{field}` of resource `{resource}` is not granted to requester `{requester}` for purpose `{purpose}`",
        "资源 `{resource}` 的字段 `{field}` 未授权给请求方 `{requester}` 用于用途 `{purpose}`"
    ))]
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
    /// Private set intersection without a grant that allows it (`psi = true`).
    #[error("{}", exchange_protocol::tr!(
        "the grant of requester `{requester}` on resource `{resource}` does not allow private set intersection (psi = true), where the provider cannot count guesses per subject; use POST /v1/verify",
        "请求方 `{requester}` 对资源 `{resource}` 的授权不允许隐私集合求交（psi = true），因为在该方式下提供方无法按主体统计猜测次数；请使用 POST /v1/verify"
    ))]
    Psi {
        /// The requester.
        requester: String,
        /// The resource code.
        resource: String,
    },
    /// An enumerable field claimed by private set intersection without `psi_enumerable`.
    #[error("{}", exchange_protocol::tr!(
        "field `{field}` of resource `{resource}` is enumerable (a small value space), and the grant of requester `{requester}` does not allow it by private set intersection (psi_enumerable), where the provider cannot count guesses per subject; use POST /v1/verify",
        "资源 `{resource}` 的字段 `{field}` 可枚举（取值空间小），请求方 `{requester}` 的授权不允许以隐私集合求交方式核验它（psi_enumerable），因为在该方式下提供方无法按主体统计猜测次数；请使用 POST /v1/verify"
    ))]
    PsiEnumerable {
        /// The field.
        field: String,
        /// The requester.
        requester: String,
        /// The resource code.
        resource: String,
    },
}

/// The resource `code` for `requester` asking for `purpose` at `now`: it exists, the requester
/// holds a grant on it, it is shared, one of the requester's grants is live and allows the
/// purpose. An unknown resource is [`Denied::NoGrant`], exactly as an ungranted one.
pub fn resource_for<'c>(
    config: &'c Config,
    code: &str,
    requester: &str,
    purpose: &str,
    now: DateTime<Utc>,
) -> Result<&'c Resource, Denied> {
    let no_grant = || Denied::NoGrant {
        requester: requester.to_owned(),
        resource: code.to_owned(),
    };
    let resource = config.resource(code).ok_or_else(no_grant)?;
    let mine: Vec<&Grant> = resource
        .verification
        .grants
        .iter()
        .filter(|g| g.requester == requester)
        .collect();
    if mine.is_empty() {
        return Err(no_grant());
    }
    let code = || resource.code.clone();
    if resource.share == Share::None {
        return Err(Denied::NotShared { resource: code() });
    }
    let live = live_grants(resource, requester, now);
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
    if !live.iter().any(|g| allows(g, purpose)) {
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
    Ok(resource)
}

/// The grants of `requester` on `resource` that hold at `now`.
fn live_grants<'r>(resource: &'r Resource, requester: &str, now: DateTime<Utc>) -> Vec<&'r Grant> {
    resource
        .verification
        .grants
        .iter()
        .filter(|g| g.requester == requester && g.expires.is_none_or(|e| now < e))
        .collect()
}

/// Whether `grant` allows `purpose`.
fn allows(grant: &Grant, purpose: &str) -> bool {
    grant
        .purposes
        .as_ref()
        .is_none_or(|ps| ps.iter().any(|p| p == purpose))
}

/// Decides whether one grant of `requester`, live at `now` and allowing `purpose`, covers
/// every field in `fields` (configured names) of `resource` (which [`resource_for`] gave); by
/// private set intersection (`psi`), an enumerable field also needs `psi_enumerable`.
pub fn covers(
    resource: &Resource,
    requester: &str,
    purpose: &str,
    fields: &[&str],
    psi: bool,
    now: DateTime<Utc>,
) -> Result<(), Denied> {
    let for_purpose: Vec<&Grant> = live_grants(resource, requester, now)
        .into_iter()
        .filter(|g| allows(g, purpose) && (!psi || g.psi))
        .collect();
    if psi && for_purpose.is_empty() {
        return Err(Denied::Psi {
            requester: requester.to_owned(),
            resource: resource.code.clone(),
        });
    }
    let covers = |g: &Grant, f: &str| {
        g.fields.iter().any(|x| x.eq_ignore_ascii_case(f))
            && (!psi || g.psi_enumerable || !resource.verification.is_enumerable(f))
    };
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
        .ok_or_else(|| Denied::NoGrant {
            requester: requester.to_owned(),
            resource: resource.code.clone(),
        })?;
    let field = fields
        .iter()
        .find(|f| !covers(best, f))
        .expect("some field is not covered");
    let granted = best.fields.iter().any(|x| x.eq_ignore_ascii_case(field));
    Err(if granted {
        Denied::PsiEnumerable {
            field: (*field).to_owned(),
            requester: requester.to_owned(),
            resource: resource.code.clone(),
        }
    } else {
        Denied::Field {
            field: (*field).to_owned(),
            requester: requester.to_owned(),
            resource: resource.code.clone(),
            purpose: purpose.to_owned(),
        }
    })
}
