//! The push stage: the oldest queued batch of a resource goes to the hub; it leaves the
//! queue only after the hub's 200 acknowledgement (docs/PROTOCOL.md §5).
//!
//! Invariants:
//! - batches of a resource are sent in seq order: one at a time (a probe) until an
//!   acknowledgement in this process (since the last failure) has shown where the hub's mark
//!   stands, then up to [`MAX_IN_FLIGHT`] at once ([`Flow`]);
//! - no batch leaves above the queue's committed `sent_through` bound: the bound is raised
//!   first (`Queue::raise_sent_through`; before a probe only to the probe's own seq), or by
//!   `Queue::ack` for the window after an acknowledged batch;
//! - a `duplicate` is taken as an acknowledgement only when the hub's mark lies between the
//!   batch's seq and that bound and its digest is the one of the queued batch at the mark;
//!   any other mark at or above the batch means the queue went back in time (a restored data
//!   directory), and the resource stops;
//! - `Queue::ack` is called only for an `Ack` whose seq is the batch's seq, in seq order;
//! - on any failure the batch stays queued and is retried with backoff (honouring
//!   `Retry-After` on 429 and 503); nothing is dropped, whatever the hub answers — except one
//!   record the hub refuses by naming its line (a `400` with `record`, docs/PROTOCOL.md §7):
//!   that record goes to quarantine, audited, and the rest of its batch leaves at once under
//!   the same seq (the hub applied nothing of it).
//!
//! The window that keeps these invariants is a small state machine: `window` names its
//! states ([`Flow`] between calls: probing or streaming; within a call: sending, awaiting,
//! acknowledged, failed, closed).
//!
//! - `client`: the hub's client, one batch per request;
//! - `answer`: how the hub's answer to a batch is read (acknowledgement, overtaken, gap,
//!   rewound, refused);
//! - `flight`: what one call shares with its requests in flight (the committed bound, the
//!   batches unanswered);
//! - `receipt`: an acknowledged batch removed from the queue, with its audit entry;
//! - `refused`: a record the hub refused, quarantined and cut out of its batch;
//! - `window`: the push window;
//! - `offline`: offline exchange, batches as files in the outbox; `inbox`: the hub's answer
//!   files read back (docs/PROTOCOL.md §12); `writings`: what was written, kept across
//!   restarts;
//! - `error`: why a push failed.

mod answer;
mod client;
mod error;
mod flight;
mod inbox;
mod offline;
mod receipt;
mod refused;
mod window;
mod writings;

pub use crate::pipeline::queue::MAX_IN_FLIGHT;
pub use client::{HubClient, MAX_RETRY_AFTER};
pub use error::PushError;
pub use offline::{OfflineLink, push_offline, withdraw};
pub use window::{Flow, push_batches};
