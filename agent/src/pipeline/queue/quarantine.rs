//! The `quarantine` and `quarantine_index` tables: rows that could not be delivered, by key
//! and reason, never their values (format in the module doc of [`crate::pipeline::queue`]).

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{QUARANTINE, QUARANTINE_INDEX, Queue, QueueError, ResourceState, Txn, now, storage};

/// A quarantined row: why, and which key, never its values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// When it was last seen (RFC 3339).
    pub at: String,
    /// How many times it was seen (a snapshot re-reads a bad row every run).
    #[serde(default = "one")]
    pub times: u64,
    /// The key as it would have left, when known.
    pub key: Option<String>,
    /// What was wrong.
    pub reason: String,
}

fn one() -> u64 {
    1
}

impl Queue {
    /// Removes every quarantine entry of a resource; returns how many there were.
    pub fn clear_quarantine(&self, resource: &str) -> Result<u64, QueueError> {
        let mut txn = self.begin()?;
        let n = {
            let mut table = txn
                .tx
                .open_table(QUARANTINE)
                .map_err(storage("clearing quarantine"))?;
            let mut n = 0;
            table
                .retain_in((resource, 0u64)..=(resource, u64::MAX), |_, _| {
                    n += 1;
                    false
                })
                .map_err(storage("clearing quarantine"))?;
            let mut index = txn
                .tx
                .open_table(QUARANTINE_INDEX)
                .map_err(storage("clearing quarantine"))?;
            index
                .retain_in(
                    (resource, [].as_slice())..(resource, [0xffu8; 33].as_slice()),
                    |_, _| false,
                )
                .map_err(storage("clearing quarantine"))?;
            n
        };
        let mut state = txn.state(resource)?;
        state.quarantined = 0;
        txn.set_state(resource, &state)?;
        txn.commit()?;
        Ok(n)
    }

    /// The `limit` most recent quarantined rows of a resource, oldest first.
    pub fn quarantined(
        &self,
        resource: &str,
        limit: usize,
    ) -> Result<Vec<QuarantineEntry>, QueueError> {
        self.read(QUARANTINE, "reading quarantine", |table| {
            let mut out = Vec::new();
            for entry in table
                .range((resource, 0u64)..=(resource, u64::MAX))
                .map_err(storage("reading quarantine"))?
                .rev()
                .take(limit)
            {
                let (_, v) = entry.map_err(storage("reading quarantine"))?;
                out.push(
                    serde_json::from_slice(v.value())
                        .map_err(|e| QueueError::Format(e.to_string()))?,
                );
            }
            out.reverse();
            Ok(out)
        })
    }
}

impl Txn {
    /// Records a record the hub refused (removed from its batch by
    /// [`Queue::replace_refused`]): its key as it left, and the hub's reason.
    pub(super) fn quarantine_refused(
        &mut self,
        resource: &str,
        state: &mut ResourceState,
        key: Option<String>,
        reason: String,
    ) -> Result<(), QueueError> {
        self.quarantine(resource, state, key, reason)
    }

    /// Records a quarantined row. The same key quarantined again for the same reason updates
    /// its entry (time, count) instead of adding one; `state.quarantined` counts entries.
    pub fn quarantine(
        &mut self,
        resource: &str,
        state: &mut ResourceState,
        key: Option<String>,
        reason: String,
    ) -> Result<(), QueueError> {
        let mut id = key.clone().unwrap_or_default().into_bytes();
        id.push(0);
        id.extend_from_slice(reason.as_bytes());
        let id = exchange_protocol::digest::sm3(&id);
        let mut index = self
            .tx
            .open_table(QUARANTINE_INDEX)
            .map_err(storage("writing quarantine"))?;
        let mut table = self
            .tx
            .open_table(QUARANTINE)
            .map_err(storage("writing quarantine"))?;
        let existing = index
            .get((resource, id.as_slice()))
            .map_err(storage("writing quarantine"))?
            .map(|v| v.value());
        let (n, entry) = match existing {
            Some(n) => {
                let old = table
                    .get((resource, n))
                    .map_err(storage("writing quarantine"))?
                    .map(|v| v.value().to_vec());
                let times = old
                    .and_then(|b| serde_json::from_slice::<QuarantineEntry>(&b).ok())
                    .map(|e| e.times)
                    .unwrap_or(0);
                (
                    n,
                    QuarantineEntry {
                        at: now(),
                        times: times + 1,
                        key,
                        reason,
                    },
                )
            }
            None => {
                state.quarantined += 1;
                index
                    .insert((resource, id.as_slice()), state.quarantined)
                    .map_err(storage("writing quarantine"))?;
                (
                    state.quarantined,
                    QuarantineEntry {
                        at: now(),
                        times: 1,
                        key,
                        reason,
                    },
                )
            }
        };
        let json = serde_json::to_vec(&entry).expect("entry serializes");
        table
            .insert((resource, n), json.as_slice())
            .map_err(storage("writing quarantine"))?;
        Ok(())
    }
}
