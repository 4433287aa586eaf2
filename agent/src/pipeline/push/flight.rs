//! What one call of [`super::push_batches`] shares with its requests in flight: the stream the
//! batches go on, which of them are still unanswered, and the queue's committed bound of the
//! batches that may have left (`sent_through`), which acknowledgements raise while other
//! answers are still on their way.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pipeline::queue::Queue;

/// The batches of one resource in flight, and what each answer is judged against.
pub(super) struct InFlight<'a> {
    /// The queue the batches come from (their digests tell an honest `duplicate`).
    pub(super) queue: &'a Queue,
    /// The resource's code.
    pub(super) resource: &'a str,
    /// The stream the batches belong to (the queue's own, or the resource's after a resync).
    pub(super) stream: String,
    /// Batches sent by this call and not acknowledged yet.
    unanswered: Mutex<BTreeSet<u64>>,
    /// The queue's committed bound, as it stands when an answer arrives.
    sent_through: AtomicU64,
}

impl<'a> InFlight<'a> {
    /// Nothing in flight yet; `sent_through` as the queue holds it.
    pub(super) fn new(
        queue: &'a Queue,
        resource: &'a str,
        stream: String,
        sent_through: u64,
    ) -> InFlight<'a> {
        InFlight {
            queue,
            resource,
            stream,
            unanswered: Mutex::default(),
            sent_through: AtomicU64::new(sent_through),
        }
    }

    /// Batch `seq` is about to leave.
    pub(super) fn leaving(&self, seq: u64) {
        self.unanswered().insert(seq);
    }

    /// Batch `seq` was acknowledged.
    pub(super) fn acknowledged(&self, seq: u64) {
        self.unanswered().remove(&seq);
    }

    /// The oldest batch still queued as batch `seq` leaves: every batch below it was
    /// acknowledged.
    pub(super) fn oldest_queued(&self, seq: u64) -> u64 {
        self.unanswered().first().copied().unwrap_or(seq).min(seq)
    }

    /// The committed bound of the batches that may have left, as it stands now.
    pub(super) fn sent_through(&self) -> u64 {
        self.sent_through.load(Ordering::Acquire)
    }

    /// The queue committed a bound of `to` (never lowered).
    pub(super) fn raised_to(&self, to: u64) {
        self.sent_through.fetch_max(to, Ordering::AcqRel);
    }

    fn unanswered(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.unanswered.lock().unwrap_or_else(|e| e.into_inner())
    }
}
