//! Where each resource stands (`state` table): its cursor, sequence numbers, counters,
//! stream and halts, as JSON [`ResourceState`] (format in the module doc of
//! [`crate::pipeline::queue`]).

use std::collections::BTreeMap;

use exchange_connectors::Value;
use exchange_protocol::lang::Text;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::{BATCHES, MAX_IN_FLIGHT, Queue, QueueError, STATE, Txn, now, storage};

/// Persistent state of one resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceState {
    /// Incremental mode: cursor of the last row enqueued or quarantined.
    pub cursor: Option<Vec<Value>>,
    /// Sequence number the next batch gets (from 1).
    pub next_seq: u64,
    /// Batches waiting for the hub.
    pub queued_batches: u64,
    /// Records in those batches.
    pub queued_records: u64,
    /// Stored (compressed) bytes of those batches.
    pub queued_bytes: u64,
    /// Records enqueued since the queue was created.
    pub pulled_records: u64,
    /// Records acknowledged by the hub since the queue was created.
    pub pushed_records: u64,
    /// The highest seq of this stream that may have left the agent (0: none). Committed
    /// before any batch above it is sent, never above `next_seq - 1`: a hub mark above it is
    /// not one this queue's history set (module doc). States written before the field get it
    /// when the queue is opened.
    #[serde(default)]
    pub sent_through: u64,
    /// Rows sent to quarantine since the queue was created.
    pub quarantined: u64,
    /// Rows whose key is not a valid identifier of its kind (quarantined or delivered
    /// flagged), the data-quality figure: for a snapshot resource, the rows of the last
    /// complete scan; for an incremental one, the rows read since `invalid_keys_since` (a row
    /// counted again each time it changes and is read again).
    #[serde(default)]
    pub invalid_keys: u64,
    /// Snapshot: when the scan that `invalid_keys` counts ended; incremental: since when rows
    /// are counted (the stream's first pull, or a `cursor reset`). RFC 3339.
    #[serde(default)]
    pub invalid_keys_since: Option<String>,
    /// End of the last successful pull (RFC 3339).
    pub last_pull: Option<String>,
    /// Last acknowledgement by the hub (RFC 3339).
    pub last_push: Option<String>,
    /// Snapshot mode progress.
    pub snapshot: SnapshotState,
    /// The stream this resource's batches belong to (32 hex digits), drawn anew by a resync;
    /// `None`: the queue's own stream ([`Queue::stream`]).
    #[serde(default)]
    pub stream: Option<String>,
    /// Where the stream's baseline (its first full read of the resource) stands.
    #[serde(default = "Baseline::legacy")]
    pub baseline: Baseline,
    /// Why the resource is stopped until an operator acts; pulling and pushing skip it.
    #[serde(default)]
    pub halt: Option<Halt>,
    /// What determined the stream when it started: relation, key, cursor, field rules.
    #[serde(default)]
    pub shape: Option<crate::pipeline::fingerprint::Shape>,
    /// Source type of every selected column when the stream started reading under its
    /// shape: a column that changes type pauses the resource until it is back, or an operator
    /// accepts it (`accept-config`, `resync`).
    #[serde(default)]
    pub columns: Option<BTreeMap<String, String>>,
    /// The last pull error, kept across processes until a pull succeeds.
    #[serde(default)]
    pub pull_error: Option<Note>,
    /// The last push error, kept across processes until a push succeeds.
    #[serde(default)]
    pub push_error: Option<Note>,
    /// A file drop resource: the file being read, or the last one read.
    #[serde(default)]
    pub file: Option<FileProgress>,
}

/// How far a file drop resource has read its current file, committed with the rows it covers
/// (`pipeline/pull/files.rs`): a crash resumes the same file (same name and digest) after
/// `rows`, and a file whose rows are all queued is moved, never read again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileProgress {
    /// Its name in the drop directory.
    pub name: String,
    /// SM3 of its content, 64 hex digits.
    pub digest: String,
    /// Rows (lines after the header) whose records or quarantine entries are committed.
    pub rows: u64,
    /// Records enqueued from it.
    #[serde(default)]
    pub records: u64,
    /// Rows of it quarantined.
    #[serde(default)]
    pub quarantined: u64,
    /// Rows of it quarantined without a readable key: a snapshot file with any is not swept.
    #[serde(default)]
    pub unkeyed: u64,
    /// Set when every row is committed: the name it gets in `done/`.
    pub done_as: Option<String>,
    /// Whether it has been moved there.
    pub moved: bool,
}

impl ResourceState {
    /// The stream id of this resource's batches.
    pub fn stream_or<'a>(&'a self, queue_stream: &'a str) -> &'a str {
        self.stream.as_deref().unwrap_or(queue_stream)
    }
}

/// Where a stream's baseline stands. The batch that completes the baseline carries the
/// `exchange-baseline: complete` header: once the hub applied it, the hub deletes the records
/// of the resource that no batch of this stream wrote (docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Baseline {
    /// The stream's first full read is under way; it completes with a caught-up page whose
    /// horizon has passed `since`, the source's clock when the read began (set by the first
    /// pull), so every row that existed then has been re-sent.
    Reading {
        /// The source's clock when the read began.
        #[serde(default)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The full read is complete; the batch `seq` carries the baseline mark (0: none, for
    /// streams that started before this version and never send the mark).
    Complete {
        /// The batch that completes the baseline.
        seq: u64,
    },
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline::Reading { since: None }
    }
}

impl Baseline {
    /// Whether the stream's first full read is still under way.
    pub fn is_reading(&self) -> bool {
        matches!(self, Baseline::Reading { .. })
    }

    /// The baseline of a state written before baselines existed: complete, and never marked
    /// (such a stream's hub records carry no stream, so a sweep would remove them).
    fn legacy() -> Baseline {
        Baseline::Complete { seq: 0 }
    }
}

/// A resource stopped until an operator acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    /// When it stopped (RFC 3339).
    pub at: String,
    /// What happened.
    pub kind: HaltKind,
    /// What happened and which command to run, as sentences, in both languages (`status`
    /// prints it in the operator's).
    pub reason: Text,
}

/// Why a resource stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaltKind {
    /// The hub lacks batches of the stream (its store was restored or wiped): resync.
    HubGap,
    /// The hub has later batches than the queue (the data directory was restored): resync.
    QueueRewound,
    /// What determines the stream changed in the configuration: resync or keep the cursor.
    ConfigChanged,
}

/// An error kept in the state, so `status` shows it after the process that met it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// When (RFC 3339).
    pub at: String,
    /// The error, as shown to the administrator (never a value), in both languages.
    pub message: Text,
}

/// Where a snapshot scan stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// Generation of the current scan; rows seen in it carry this number in `digests`.
    pub generation: u64,
    /// Key of the last row scanned in this generation (none: scan not started).
    pub position: Option<Vec<Value>>,
    /// The scan is complete and deletes are being emitted for rows not seen.
    pub sweeping: bool,
    /// Rows with an invalid key read by the current scan so far; the scan's figure becomes
    /// [`ResourceState::invalid_keys`] when it completes.
    #[serde(default)]
    pub invalid_keys: u64,
}

/// Which stage an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the source and enqueueing.
    Pull,
    /// Sending to the hub.
    Push,
}

/// What a resync discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Discarded {
    /// Batches removed from the queue.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
}

impl Queue {
    /// The state of one resource.
    pub fn state(&self, resource: &str) -> Result<ResourceState, QueueError> {
        self.read(STATE, "reading state", |table| {
            decode_state(
                table
                    .get(resource)
                    .map_err(storage("reading state"))?
                    .map(|v| v.value().to_vec()),
            )
        })
    }

    /// The states of every resource that has one.
    pub fn states(&self) -> Result<BTreeMap<String, ResourceState>, QueueError> {
        self.read(STATE, "reading state", |table| {
            let mut out = BTreeMap::new();
            for entry in table.iter().map_err(storage("reading state"))? {
                let (k, v) = entry.map_err(storage("reading state"))?;
                out.insert(
                    k.value().to_owned(),
                    decode_state(Some(v.value().to_vec()))?,
                );
            }
            Ok(out)
        })
    }

    /// Stored bytes of every queued batch.
    pub fn total_bytes(&self) -> Result<u64, QueueError> {
        Ok(self.states()?.values().map(|s| s.queued_bytes).sum())
    }

    /// Reads, changes and writes the state of one resource in one transaction.
    pub fn update_state<T>(
        &self,
        resource: &str,
        f: impl FnOnce(&mut ResourceState) -> T,
    ) -> Result<T, QueueError> {
        let mut txn = self.begin()?;
        let mut state = txn.state(resource)?;
        let out = f(&mut state);
        txn.set_state(resource, &state)?;
        txn.commit()?;
        Ok(out)
    }

    /// Keeps (or, with `None`, clears) the last pull or push error of a resource; writes only
    /// when something changes.
    pub fn note_error(
        &self,
        resource: &str,
        stage: Stage,
        message: Option<&Text>,
    ) -> Result<(), QueueError> {
        let st = self.state(resource)?;
        let slot = match stage {
            Stage::Pull => &st.pull_error,
            Stage::Push => &st.push_error,
        };
        if slot.as_ref().map(|n| &n.message) == message {
            return Ok(());
        }
        let note = message.map(|m| Note {
            at: now(),
            message: m.clone(),
        });
        self.update_state(resource, |st| match stage {
            Stage::Pull => st.pull_error = note,
            Stage::Push => st.push_error = note,
        })
    }

    /// Stops a resource until an operator acts (keeps the first reason if already stopped).
    pub fn halt(&self, resource: &str, kind: HaltKind, reason: &Text) -> Result<(), QueueError> {
        self.update_state(resource, |st| {
            if st.halt.is_none() {
                st.halt = Some(Halt {
                    at: now(),
                    kind,
                    reason: reason.clone(),
                });
            }
        })
    }

    /// Raises (committed, with fsync) the bound of the batches that may have left the agent to
    /// `to`, capped at the last batch committed (`next_seq - 1`); returns the bound now
    /// stored. Writes only when it rises. Called before a batch above the bound is sent.
    pub fn raise_sent_through(&self, resource: &str, to: u64) -> Result<u64, QueueError> {
        let mut txn = self.begin()?;
        let mut state = txn.state(resource)?;
        let to = to.min(state.next_seq.saturating_sub(1));
        if to <= state.sent_through {
            return Ok(state.sent_through);
        }
        state.sent_through = to;
        txn.set_state(resource, &state)?;
        txn.commit()?;
        Ok(to)
    }
}

/// A resource's new stream: what was queued, read and digested for the old one discarded.
impl Queue {
    /// Starts a new stream for a resource: its queued batches, cursor, snapshot progress and
    /// digests are discarded, a new stream id is drawn and the next pull re-reads the whole
    /// resource from the start (a baseline: the hub sweeps what the new stream does not
    /// re-send). `shape` becomes the stream's shape. Quarantine entries are kept.
    pub fn resync(
        &self,
        resource: &str,
        shape: crate::pipeline::fingerprint::Shape,
    ) -> Result<Discarded, QueueError> {
        let mut txn = self.begin()?;
        let old = txn.state(resource)?;
        let discarded = Discarded {
            batches: old.queued_batches,
            records: old.queued_records,
        };
        txn.discard_batches(resource)?;
        txn.discard_digests(resource)?;
        let stream: [u8; 16] = rand::random();
        let state = ResourceState {
            next_seq: 1,
            stream: Some(hex::encode(stream)),
            baseline: Baseline::default(),
            shape: Some(shape),
            pulled_records: old.pulled_records,
            pushed_records: old.pushed_records,
            quarantined: old.quarantined,
            last_pull: old.last_pull,
            last_push: old.last_push,
            ..ResourceState::default()
        };
        txn.set_state(resource, &state)?;
        txn.commit()?;
        Ok(discarded)
    }
}

impl Txn {
    /// The state of a resource as of this transaction.
    pub fn state(&self, resource: &str) -> Result<ResourceState, QueueError> {
        let table = self
            .tx
            .open_table(STATE)
            .map_err(storage("reading state"))?;
        let bytes = table
            .get(resource)
            .map_err(storage("reading state"))?
            .map(|v| v.value().to_vec());
        decode_state(bytes)
    }

    /// Replaces the state of a resource.
    pub fn set_state(&mut self, resource: &str, state: &ResourceState) -> Result<(), QueueError> {
        let mut table = self
            .tx
            .open_table(STATE)
            .map_err(storage("writing state"))?;
        let json = serde_json::to_vec(state).expect("state serializes");
        table
            .insert(resource, json.as_slice())
            .map_err(storage("writing state"))?;
        Ok(())
    }
}

fn decode_state(bytes: Option<Vec<u8>>) -> Result<ResourceState, QueueError> {
    match bytes {
        None => Ok(ResourceState {
            next_seq: 1,
            ..Default::default()
        }),
        Some(b) => serde_json::from_slice(&b)
            .map_err(|e| QueueError::Format(format!("resource state: {e}"))),
    }
}

/// Gives every state written before `sent_through` existed its bound (module doc): what an
/// earlier version may have had in flight, the oldest queued batches up to its window.
pub(super) fn migrate_sent_through(tx: &redb::WriteTransaction) -> Result<(), QueueError> {
    let mut table = tx.open_table(STATE).map_err(storage("migrating state"))?;
    let mut legacy = Vec::new();
    for entry in table.iter().map_err(storage("migrating state"))? {
        let (k, v) = entry.map_err(storage("migrating state"))?;
        let json: serde_json::Value = serde_json::from_slice(v.value())
            .map_err(|e| QueueError::Format(format!("resource state: {e}")))?;
        if json.get("sent_through").is_none() {
            legacy.push((
                k.value().to_owned(),
                decode_state(Some(v.value().to_vec()))?,
            ));
        }
    }
    if legacy.is_empty() {
        return Ok(());
    }
    let batches = tx.open_table(BATCHES).map_err(storage("migrating state"))?;
    for (resource, mut state) in legacy {
        let last = state.next_seq.saturating_sub(1);
        let head = batches
            .range((resource.as_str(), 0u64)..=(resource.as_str(), u64::MAX))
            .map_err(storage("migrating state"))?
            .next()
            .transpose()
            .map_err(storage("migrating state"))?
            .map(|(k, _)| k.value().1);
        state.sent_through = match head {
            Some(head) => (head + MAX_IN_FLIGHT as u64 - 1).min(last),
            None => last,
        };
        let json = serde_json::to_vec(&state).expect("state serializes");
        table
            .insert(resource.as_str(), json.as_slice())
            .map_err(storage("migrating state"))?;
    }
    Ok(())
}
