//! What offline exchange wrote to the outbox (docs/PROTOCOL.md §12.5), kept across restarts:
//! for each resource, the stream, the seq through which every queued batch was written, the
//! latest writing of each queued batch (the SM3 of the file and when), and when an answer last
//! released a batch.
//!
//! Format: `<data_dir>/offline-writings.json`, one JSON object
//! `{"RESOURCE": {"stream": S, "through": N, "files": {"SEQ": ["SM3", UNIX_MS]}, "released_at": UNIX_MS|null}}`,
//! replaced whole (temporary file, sync, rename) after every change.
//!
//! Invariants:
//! - a writing is recorded only after its file is in the outbox, so the record never names a
//!   file that was not written; writings are kept in the file once per round of writing, so a
//!   crash may leave some unrecorded: they are written again (the hub imports the copies as
//!   duplicates); a release is kept at once, since an answer is judged against it;
//! - an answer saying earlier batches are missing is believed only if it answers the latest
//!   writing of its batch made after the last release ([`Writings::is_latest`]): an older one
//!   may predate batches the hub applied since;
//! - the file is a hint for when to write: lost or unreadable, every queued batch is written
//!   again and nothing else changes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
const FILE: &str = "offline-writings.json";

/// What was written of one resource.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Written {
    /// The stream written.
    stream: String,
    /// Every queued batch up to this seq was written.
    through: u64,
    /// The latest writing of each queued batch: the SM3 of the file, when (Unix ms).
    files: BTreeMap<u64, (String, u64)>,
    /// When an answer last released a batch (Unix ms).
    released_at: Option<u64>,
}

/// The record of writings, in memory and in its file.
pub(super) struct Writings {
    path: PathBuf,
    resend_after: Duration,
    state: Mutex<HashMap<String, Written>>,
    /// Writings recorded since the file was last replaced.
    dirty: AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Writings {
    /// The record kept in `data_dir` (empty when there is none or it cannot be read).
    pub(super) fn open(data_dir: &Path, resend_after: Duration) -> Writings {
        let path = data_dir.join(FILE);
        let state = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Writings {
            path,
            resend_after,
            state: Mutex::new(state),
            dirty: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<String, Written>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the file (module doc); a failure is logged: the file is only a hint.
    fn save(&self, state: &HashMap<String, Written>) {
        let bytes = serde_json::to_vec(state).expect("the record serializes");
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if let Err(e) = exchange_protocol::offline::write_atomic(dir, FILE, &bytes) {
            tracing::warn!(path = %self.path.display(), error = %e, "Cannot keep the record of offline writings; queued batches are written again after a restart.");
        }
    }

    /// Batches of `resource` up to this seq were written.
    pub(super) fn through(&self, resource: &str) -> u64 {
        self.state().get(resource).map_or(0, |w| w.through)
    }

    /// Where writing stands for `resource` on `stream`, whose oldest queued batch is `head`:
    /// written through which seq. Everything from `head` on is due again when it was not
    /// written, or was written `resend_after` ago and is still queued.
    pub(super) fn due(&self, resource: &str, stream: &str, head: Option<u64>) -> u64 {
        let mut state = self.state();
        let w = state.entry(resource.to_owned()).or_default();
        if w.stream != stream {
            *w = Written {
                stream: stream.to_owned(),
                ..Written::default()
            };
        }
        if let Some(head) = head {
            w.files = w.files.split_off(&head);
            let resend = self.resend_after.as_millis() as u64;
            let stale = w
                .files
                .get(&head)
                .is_none_or(|(_, at)| now_ms().saturating_sub(*at) >= resend);
            if stale {
                w.through = w.through.min(head - 1);
            }
        }
        w.through
    }

    /// Batch `seq` of `resource` was written as the file whose SM3 is `file_sm3` (kept in the
    /// file at the next [`Writings::flush`]: a writing not kept is only written again).
    pub(super) fn wrote(&self, resource: &str, seq: u64, file_sm3: String) {
        if let Some(w) = self.state().get_mut(resource) {
            w.through = w.through.max(seq);
            w.files.insert(seq, (file_sm3, now_ms()));
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Keeps the writings so far in the file (once per round of writing, not per file).
    pub(super) fn flush(&self) {
        let state = self.state();
        if self.dirty.swap(false, Ordering::Relaxed) {
            self.save(&state);
        }
    }

    /// An answer released a batch of `resource`.
    pub(super) fn released(&self, resource: &str) {
        let mut state = self.state();
        if let Some(w) = state.get_mut(resource) {
            // Strictly after every writing so far, even within one millisecond.
            let latest = w.files.values().map(|(_, at)| *at).max().unwrap_or(0);
            w.released_at = Some(now_ms().max(latest));
            self.save(&state);
        }
    }

    /// Batch `seq` of `resource` and those after it are to be written again.
    pub(super) fn rewrite_from(&self, resource: &str, seq: u64) {
        if let Some(w) = self.state().get_mut(resource) {
            w.through = w.through.min(seq.saturating_sub(1));
        }
    }

    /// Whether `file_sm3` is the latest writing of batch `seq` of `resource`, made after the
    /// last release (module doc).
    pub(super) fn is_latest(&self, resource: &str, seq: u64, file_sm3: &str) -> bool {
        self.state().get(resource).is_some_and(|w| {
            w.files.get(&seq).is_some_and(|(sm3, at)| {
                sm3.eq_ignore_ascii_case(file_sm3) && w.released_at.is_none_or(|r| *at > r)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_writing_after_the_last_release_is_latest_and_it_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writings::open(dir.path(), Duration::from_secs(3600));
        assert_eq!(w.due("R", "s1", Some(1)), 0);
        w.wrote("R", 1, "aa".into());
        w.wrote("R", 2, "bb".into());
        w.flush();
        assert!(w.is_latest("R", 2, "BB"));
        assert!(!w.is_latest("R", 2, "cc"));
        // A release after the writing of 2: an answer to that writing may be stale.
        std::thread::sleep(Duration::from_millis(2));
        w.released("R");
        assert!(!w.is_latest("R", 2, "bb"));
        std::thread::sleep(Duration::from_millis(2));
        w.wrote("R", 2, "dd".into());
        w.flush();
        assert!(w.is_latest("R", 2, "dd"));
        // Read back after a restart: nothing due again before resend_after.
        let again = Writings::open(dir.path(), Duration::from_secs(3600));
        assert_eq!(again.due("R", "s1", Some(2)), 2);
        assert!(again.is_latest("R", 2, "dd"));
        // Another stream starts afresh; an expired head is due again.
        assert_eq!(again.due("R", "s2", Some(2)), 0);
        let soon = Writings::open(dir.path(), Duration::ZERO);
        assert_eq!(soon.due("R", "s1", Some(2)), 1);
    }
}
