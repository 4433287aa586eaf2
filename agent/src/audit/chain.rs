//! Appending to the chain: one write and one fsync for a group of entries, each chained to
//! the line before, under a lock within the process and one across processes.

use std::io::Write;
use std::path::Path;

use super::files::rotate;
use super::head::{Head, write_head};
use super::recovery::{Tail, cut_path, repairs_due};
use super::retention::retention_of;
use super::{AuditError, Entry, ROTATE_BYTES, ZEROS, path};

/// Serializes appends within the process.
static APPEND: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What an append wrote.
pub(super) struct Appended {
    /// The entries, as written.
    pub(super) entries: Vec<Entry>,
    /// Whether `audit.jsonl` was rotated first: an archival pass is then due
    /// ([`super::archiver::archive_after`]).
    pub(super) rotated: bool,
}

/// What one entry says: actor, action, resource, detail.
pub(super) type Fields = (String, String, String, serde_json::Value);

/// Appends entries chained after the last one with one write and one fsync, calls `durable`
/// with them once they are on disk, then writes the head (still holding the append lock):
/// a caller waiting for its entry need not wait for the head. The caller asks for an archival
/// pass when the log was rotated ([`Appended::rotated`]).
///
/// The chain continues from the last complete line of the newest file, whatever the head
/// says ([`Tail::read`]): a line cut short by a crash (never acknowledged: its fsync did not
/// complete) is cut off first, and the head, if it disagrees (a crash between the log's fsync
/// and the head's write, or a head rolled back or deleted), is counted afresh; both repairs
/// are recorded as an `audit.recovered` entry before the new ones.
pub(super) fn append_many(
    data_dir: &Path,
    jobs: Vec<Fields>,
    durable: impl FnOnce(&[Entry]),
) -> Result<Appended, AuditError> {
    let _one = APPEND.lock().unwrap_or_else(|e| e.into_inner());
    let path = path(data_dir);
    let err = |cause| AuditError {
        path: path.clone(),
        cause,
    };
    // Appends of other processes (operator commands while the service runs) wait too.
    let _all = ProcessLock::take(data_dir).map_err(err)?;
    let tail = Tail::read(data_dir).map_err(err)?;
    let (mut head, recovered) = repairs_due(data_dir, &tail).map_err(err)?;
    let rotated = rotate_when_due(data_dir, head.entries).map_err(err)?;
    let mut file = open_current(data_dir).map_err(err)?;
    let notes = recovered.into_iter().map(|detail| {
        (
            "-".to_owned(),
            "audit.recovered".to_owned(),
            String::new(),
            detail,
        )
    });
    let first_job = notes.len();
    let (bytes, mut entries) = chain_lines(notes.chain(jobs), tail.last, &mut head);
    file.write_all(&bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    if tail.cut > 0 {
        // The cut is on record now: its note may go (a crash before this repeats the note).
        let _ = std::fs::remove_file(cut_path(data_dir));
    }
    let entries = entries.split_off(first_job);
    durable(&entries);
    write_head(data_dir, &head).map_err(err)?;
    Ok(Appended { entries, rotated })
}

/// Rotates `audit.jsonl` when it has reached the size the retention sets ([`ROTATE_BYTES`]
/// by default), `entries` in the chain so far; whether it did.
fn rotate_when_due(data_dir: &Path, entries: u64) -> std::io::Result<bool> {
    let rotate_at = retention_of(data_dir).map_or(ROTATE_BYTES, |r| r.max_file_bytes);
    let due = std::fs::metadata(path(data_dir)).is_ok_and(|m| m.len() >= rotate_at);
    if due {
        rotate(data_dir, entries)?;
    }
    Ok(due)
}

/// Opens `audit.jsonl` for appending, created 0600 (and the directory synced) when missing.
fn open_current(data_dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path(data_dir);
    let created = !path.exists();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)?;
    if created {
        std::fs::File::open(data_dir)?.sync_all()?;
    }
    Ok(file)
}

/// The lines of the entries saying `fields`, all stamped now, each chained to the one before
/// from the line of SM3 `last` (the chain's first entry when `None`), and the entries; `head`
/// is moved past them.
fn chain_lines(
    fields: impl Iterator<Item = Fields>,
    last: Option<[u8; 32]>,
    head: &mut Head,
) -> (Vec<u8>, Vec<Entry>) {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut prev = last.map_or_else(|| ZEROS.to_owned(), hex::encode);
    let mut bytes = Vec::new();
    let mut entries = Vec::with_capacity(fields.size_hint().0);
    for (actor, action, resource, detail) in fields {
        let entry = Entry {
            at: at.clone(),
            actor,
            action,
            resource,
            detail,
            prev,
        };
        let line = serde_json::to_vec(&entry).expect("entry serializes");
        prev = hex::encode(exchange_protocol::digest::sm3(&line));
        head.entries += 1;
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
        entries.push(entry);
    }
    head.last_sm3 = prev;
    (bytes, entries)
}

/// An exclusive lock on `<data_dir>/audit.lock` (flock), held while appending, so that an
/// operator command appending while the service runs never interleaves with it.
struct ProcessLock(#[allow(dead_code)] std::fs::File);

impl ProcessLock {
    fn take(data_dir: &Path) -> std::io::Result<ProcessLock> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(data_dir.join("audit.lock"))?;
        // SAFETY: flock(2) on a descriptor this struct owns; released when it is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ProcessLock(f))
    }
}

/// The login running this process, for the audit trail.
pub(super) fn actor() -> String {
    for var in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            return v;
        }
    }
    // SAFETY-free fallback: the numeric uid from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| format!("uid {u}")))
        })
        .unwrap_or_else(|| "unknown".into())
}
