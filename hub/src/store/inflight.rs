//! Batches being applied by this hub right now, per stream, so that a batch arriving ahead of
//! its predecessor (an agent with several batches in flight, docs/PROTOCOL.md §5) waits for it
//! instead of being refused as a gap.
//!
//! Invariants:
//! - a batch waits only for batches of the same (node, resource, stream) with a lower seq that
//!   this process is applying at that moment, and at most [`WAIT`]; then it is applied (or
//!   refused) as if it had arrived alone — the store's own checks decide, never this module;
//! - an entry is removed when its request ends, however it ends (completed, refused, or the
//!   connection dropped), and waiters are woken then.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exchange_protocol::batch::BatchId;
use tokio::sync::Notify;

/// The longest a batch waits for its predecessors.
pub const WAIT: Duration = Duration::from_secs(30);

type StreamKey = (String, String, String);

/// The seqs in progress per stream (a count per seq: a resend may overlap the original).
#[derive(Default)]
pub struct InFlight {
    seqs: Mutex<HashMap<StreamKey, BTreeMap<u64, usize>>>,
    done: Notify,
}

/// What keeps a batch's successors waiting: its arrival entry and the entry it took when it
/// entered; dropping it releases them.
pub struct Hold {
    _arrival: Entry,
    _entered: Entry,
}

impl Hold {
    /// Both entries of a batch.
    pub fn new(arrival: Entry, entered: Entry) -> Hold {
        Hold {
            _arrival: arrival,
            _entered: entered,
        }
    }
}

/// A batch registered as in progress; dropping it deregisters it and wakes the waiters.
pub struct Entry {
    registry: Arc<InFlight>,
    key: StreamKey,
    seq: u64,
}

impl InFlight {
    /// Registers `id` as in progress (the hub calls this as soon as it has read a batch's
    /// headers, so a batch that overtakes it while its body is read still waits for it).
    pub fn register(self: &Arc<Self>, id: &BatchId) -> Entry {
        let key = (id.node.clone(), id.resource.clone(), id.stream.clone());
        {
            let mut seqs = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
            *seqs
                .entry(key.clone())
                .or_default()
                .entry(id.seq)
                .or_default() += 1;
        }
        Entry {
            registry: self.clone(),
            key,
            seq: id.seq,
        }
    }

    /// Registers `id` as in progress, then waits (at most [`WAIT`]) until no batch of its
    /// stream with a lower seq is in progress.
    pub async fn enter(self: &Arc<Self>, id: &BatchId) -> Entry {
        let entry = self.register(id);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.done.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if !self.has_lower(&entry.key, entry.seq) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        entry
    }

    fn has_lower(&self, key: &StreamKey, seq: u64) -> bool {
        let seqs = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
        seqs.get(key)
            .and_then(|m| m.keys().next())
            .is_some_and(|lowest| *lowest < seq)
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        {
            let mut seqs = self.registry.seqs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = seqs.get_mut(&self.key) {
                if let Some(n) = m.get_mut(&self.seq) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&self.seq);
                    }
                }
                if m.is_empty() {
                    seqs.remove(&self.key);
                }
            }
        }
        self.registry.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> BatchId {
        BatchId {
            node: "n".into(),
            resource: "r".into(),
            stream: "s".into(),
            seq,
        }
    }

    #[tokio::test]
    async fn a_batch_waits_for_its_predecessor_and_not_for_its_successor() {
        let registry = Arc::new(InFlight::default());
        let first = registry.enter(&id(1)).await;
        let second = {
            let registry = registry.clone();
            tokio::spawn(async move {
                let e = registry.enter(&id(2)).await;
                drop(e);
                tokio::time::Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !second.is_finished(),
            "seq 2 must wait while seq 1 is applied"
        );
        let released = tokio::time::Instant::now();
        drop(first);
        let entered = second.await.unwrap();
        assert!(entered >= released);
        // Nothing in flight: a batch does not wait.
        let _alone = tokio::time::timeout(Duration::from_secs(1), registry.enter(&id(7)))
            .await
            .expect("no wait without predecessors");
        assert!(registry.seqs.lock().unwrap().len() == 1);
    }
}
