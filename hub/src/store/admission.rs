//! The checks a batch passes before it is written, alike in both backends (the invariants in
//! [`super`]): its sequence number fits the store, its node owns the resource, the resource is
//! shared, and it is the next batch of its stream.

use super::{Outcome, StoreError};

/// `seq` as the store holds it (a signed 64-bit column); `target` names the refusing side.
pub(super) fn stored_seq(seq: u64, target: &str) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Failed {
        target: target.to_owned(),
        reason: format!("sequence number {seq} is larger than the store can hold"),
    })
}

/// Refuses `node` writing `resource` when `owner`, the node that provided it first, is another.
pub(super) fn check_owner(resource: &str, owner: String, node: &str) -> Result<(), StoreError> {
    if owner == node {
        return Ok(());
    }
    Err(StoreError::NotOwner {
        resource: resource.to_owned(),
        owner,
        node: node.to_owned(),
    })
}

/// Refuses a batch of `resource` when its catalogue entry says `share = "none"`.
pub(super) fn check_shared(resource: &str, node: &str, not_shared: bool) -> Result<(), StoreError> {
    if !not_shared {
        return Ok(());
    }
    Err(StoreError::NotShared {
        resource: resource.to_owned(),
        node: node.to_owned(),
    })
}

/// What the stream's high-water mark (`last_seq`, the digest of that batch) says of batch
/// `seq`: `None` when it is the next one, to be applied; else the answer that changes nothing
/// (a duplicate, or a gap).
pub(super) fn against_mark(seq: i64, last_seq: i64, last_digest: String) -> Option<Outcome> {
    if seq <= last_seq {
        return Some(Outcome::Duplicate {
            last_seq: last_seq.max(0) as u64,
            last_digest,
        });
    }
    if seq > last_seq + 1 {
        return Some(Outcome::Gap {
            last_seq: last_seq.max(0) as u64,
        });
    }
    None
}
