//! The `quarantine` and `quarantine_index` tables: rows that could not be delivered, by key
//! and reason, never their values (format in the module doc of [`crate::pipeline::queue`]).
//! An entry may also hold the row's locator, the values of columns the policy keeps in clear
//! (`policy::locator`); entries written before it existed have none and read as such (the
//! field is optional, the format stays 1).

use exchange_protocol::lang::Text;
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
    /// What was wrong, in both languages when the agent wrote it (an older entry, or the hub's
    /// explanation of a record it refused, in one).
    pub reason: Text,
    /// Where the row is at the source (`id=123, updated_at=…`), from the resource's locator
    /// columns; of the latest sighting. `None`: the resource records none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locator: Option<String>,
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
    /// Records a quarantined row without a locator ([`Txn::quarantine_row`]); also a record
    /// the hub refused (removed from its batch by [`Queue::replace_refused`]).
    pub fn quarantine(
        &mut self,
        resource: &str,
        state: &mut ResourceState,
        key: Option<String>,
        reason: Text,
    ) -> Result<(), QueueError> {
        self.quarantine_row(resource, state, key, reason, None)
    }

    /// Records a quarantined row. The same key quarantined again for the same reason updates
    /// its entry (time, count, and the locator when this sighting has one) instead of adding
    /// one; `state.quarantined` counts entries.
    pub fn quarantine_row(
        &mut self,
        resource: &str,
        state: &mut ResourceState,
        key: Option<String>,
        reason: Text,
        locator: Option<String>,
    ) -> Result<(), QueueError> {
        let mut id = key.clone().unwrap_or_default().into_bytes();
        id.push(0);
        id.extend_from_slice(reason.en().as_bytes());
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
                let old = old.and_then(|b| serde_json::from_slice::<QuarantineEntry>(&b).ok());
                let times = old.as_ref().map_or(0, |e| e.times);
                (
                    n,
                    QuarantineEntry {
                        at: now(),
                        times: times + 1,
                        key,
                        reason,
                        locator: locator.or_else(|| old.and_then(|e| e.locator)),
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
                        locator,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn quarantine(q: &Queue, key: &str, reason: &str, locator: Option<&str>) {
        let mut txn = q.begin().unwrap();
        let mut st = txn.state("R").unwrap();
        txn.quarantine_row(
            "R",
            &mut st,
            Some(key.into()),
            reason.into(),
            locator.map(str::to_owned),
        )
        .unwrap();
        txn.set_state("R", &st).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_row_seen_again_keeps_one_entry_with_its_latest_locator() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("data")).unwrap();
        quarantine(&q, "v1:aa", "bad", Some("id=1"));
        quarantine(&q, "v1:aa", "bad", Some("id=2"));
        let entries = q.quarantined("R", 10).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].times, 2);
        assert_eq!(entries[0].locator.as_deref(), Some("id=2"));
        // A sighting without a locator (a record found too large after the policy) keeps it.
        quarantine(&q, "v1:aa", "bad", None);
        let entries = q.quarantined("R", 10).unwrap();
        assert_eq!(
            (entries[0].times, entries[0].locator.as_deref()),
            (3, Some("id=2"))
        );
        assert_eq!(q.state("R").unwrap().quarantined, 1);
    }

    #[test]
    fn an_entry_written_before_locators_reads_without_one_and_gains_one() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("data")).unwrap();
        quarantine(&q, "v1:aa", "bad", None);
        // As an earlier version wrote it: no `locator` field.
        let json = serde_json::to_vec(&QuarantineEntry {
            at: now(),
            times: 1,
            key: Some("v1:aa".into()),
            reason: "bad".into(),
            locator: None,
        })
        .unwrap();
        assert!(!String::from_utf8_lossy(&json).contains("locator"));
        let txn = q.begin().unwrap();
        txn.tx
            .open_table(QUARANTINE)
            .unwrap()
            .insert(("R", 1u64), json.as_slice())
            .unwrap();
        txn.commit().unwrap();
        let entries = q.quarantined("R", 10).unwrap();
        assert_eq!(entries[0].locator, None);
        quarantine(&q, "v1:aa", "bad", Some("id=7"));
        let entries = q.quarantined("R", 10).unwrap();
        assert_eq!(
            (
                entries.len(),
                entries[0].times,
                entries[0].locator.as_deref()
            ),
            (1, 2, Some("id=7"))
        );
    }
}
