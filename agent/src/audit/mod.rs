//! The audit log: what the service and operators did, appended to `<data_dir>/audit.jsonl`:
//! service start and configuration loads and reloads (with the file's SM3), every batch the
//! hub acknowledged (resource, seq, record count, content digest), every verification request
//! (answered, denied or throttled), every connection the verification listener refused in
//! its TLS handshake (`connection.rejected`), operator commands that change the queue, and
//! its own upkeep (`audit.recovered`, `audit.archived`).
//!
//! # Format
//! One JSON object per line, [`Entry`], in the order written. Each entry's `prev` is the SM3
//! (hex) of the previous line's bytes (without its newline); the first entry's `prev` is 64
//! zeros. An edited, removed or reordered entry therefore breaks the chain at that point.
//!
//! **Rotation.** When `audit.jsonl` reaches `[audit] max_file_bytes` (default
//! [`ROTATE_BYTES`]) it is renamed
//! `audit.jsonl.<n>`, n the number of entries in the chain so far (older versions used 1, 2,
//! …; files sort by n, oldest lowest), never over an existing file, and a new `audit.jsonl`
//! begins whose first `prev` is the SM3 of the last line of the file before: the chain runs
//! across the files.
//!
//! **Retention and archival.** A rotated file is never deleted. The service keeps the newest
//! `[audit] keep` rotated files in the data directory ([`set_retention`]); after a rotation (and
//! at start), a thread of its own moves older ones, oldest first, to `archive_dir` (a hard link,
//! else a copy synced under a temporary name, never over an existing file) or hands a copy of
//! each (in `audit-archiving/`, which the command may move or compress) to `archive_command`
//! (the copy's path as its last argument), then appends an `audit.archived`
//! entry (file, first and last entry number, SM3 of the file and of its last line,
//! destination), and only then, under the append lock, removes the file from the data directory.
//! A file that cannot be archived stays and is tried again at the next rotation or start; no
//! newer file is archived before it, so the files present always hold the chain's end without
//! a hole. Without an archive every rotated file stays. Only the process holding the queue
//! archives (it sets the retention), and one pass at a time (a rotation during a pass asks for
//! one more). The oldest file present then continues the chain from the last line of an
//! archived one: `audit verify` accepts that only when an `audit.archived` entry in the files
//! present names that line (`last_sm3`), takes the number of entries before from it
//! (`last_entry`), and checks from there, saying the entries before were not checked. Given
//! the archive directory, it checks from the first entry and requires every file an
//! `audit.archived` entry names, with the SM3 recorded. The head counts the whole chain, archived entries
//! included.
//!
//! **Head.** `audit.head` holds `{"entries": N, "last_sm3": "…"}` padded with spaces to a
//! fixed length: how many entries the chain holds and the SM3 of its last line, rewritten in
//! place after each append. A log cut short at an entry boundary (the last entries removed),
//! which the chain alone cannot show, disagrees with it. (Someone who can rewrite both files
//! and recompute the chain is caught only by comparing with an exported copy: `audit export`
//! for archiving, `audit verify` against it.)
//!
//! **Crashes.** The log, not the head, is the source of truth: an append continues the chain
//! from the last complete line of the newest file. A line cut short by a crash (its fsync never
//! completed, so it was never acknowledged) is cut off first; a head that does not name the
//! log's last entry (a crash between the log's fsync and the head's write, a head rolled back
//! or deleted) is counted afresh. Each repair is recorded as an `audit.recovered` entry, the
//! first of that append, saying what was found (`removed_bytes`, `entries`) and never the
//! removed bytes. `audit verify` names a cut-short last line and a head behind the log as what
//! a crash leaves, before the next append repairs them.
//!
//! # Invariants
//! - Append only: entries are appended, never rewritten; each is flushed to disk (fsync)
//!   before the command reports success. Appends within a process are serialized, so
//!   concurrent push loops never fork the chain. The only bytes ever removed are a torn last
//!   line, which was never acknowledged, and that removal is itself recorded.
//! - A file leaves the data directory only after its copy is in the archive (synced) or the
//!   archive command exited 0, and after the `audit.archived` entry recording it is on disk;
//!   never another way. Files are archived oldest first.
//! - The files are created 0600.
//! - An entry never holds a field value: resource codes, sequence numbers, record counts,
//!   content digests, configuration digests, and the operator's words; a verification's
//!   subjects only as keyed pseudonyms, never a claimed or stored value.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Size at which `audit.jsonl` is rotated unless `[audit] max_file_bytes` says otherwise.
pub const ROTATE_BYTES: u64 = 64 << 20;

/// Rotated files that stay in the data directory when an archive is configured without
/// `[audit] keep`; without an archive, the number past which each rotation warns that they
/// accumulate.
pub const DEFAULT_KEEP: usize = 16;

/// The `prev` of the chain's first entry.
const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How the audit log of a data directory is rotated and where older files go (`[audit]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Size at which `audit.jsonl` is rotated.
    pub max_file_bytes: u64,
    /// Where rotated files beyond those kept go; `None`: every rotated file stays.
    pub archive: Option<Archive>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_file_bytes: ROTATE_BYTES,
            archive: None,
        }
    }
}

/// Archival of older rotated files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// Rotated files that stay in the data directory (the newest); 0: none, every rotated
    /// file is archived at once.
    pub keep: usize,
    /// Where the older ones go.
    pub to: ArchiveTo,
}

/// Where archived files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveTo {
    /// Into this directory, under the same name, never over another file.
    Dir(PathBuf),
    /// To this program (absolute path, then its arguments), run with the file's path as its
    /// last argument; the file is removed from the data directory once it exits 0.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
        /// How long it may run before it is killed (and the file kept).
        timeout: std::time::Duration,
    },
}

/// The retention of each data directory whose queue this process holds ([`set_retention`]).
static RETENTION: std::sync::Mutex<Vec<(PathBuf, std::sync::Arc<Retention>)>> =
    std::sync::Mutex::new(Vec::new());

/// Sets how the audit log of `data_dir` is rotated and archived, and archives what is due in a
/// thread of its own. Called by the process that holds the queue of `data_dir` (the service,
/// `sync`), at start and at each reload: only that process archives, so no two do at once.
/// Other processes (operator commands) rotate at the default size and leave archival to it.
pub fn set_retention(data_dir: &Path, retention: Retention) {
    {
        let mut all = RETENTION.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(d, _)| d != data_dir);
        all.push((data_dir.to_owned(), std::sync::Arc::new(retention)));
    }
    schedule_retention(data_dir);
}

/// The retention set for `data_dir`, if any.
fn retention_of(data_dir: &Path) -> Option<std::sync::Arc<Retention>> {
    RETENTION
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(d, _)| d == data_dir)
        .map(|(_, r)| r.clone())
}

/// Archiver state per data directory: whether a pass runs, and whether another was asked for
/// meanwhile.
static ARCHIVER: std::sync::Mutex<Vec<(PathBuf, Pass)>> = std::sync::Mutex::new(Vec::new());

/// The archiver of one data directory.
#[derive(Default)]
struct Pass {
    /// A pass runs (in its thread).
    running: bool,
    /// A rotation or start asked for a pass while one ran: the thread runs one more.
    requested: bool,
}

/// Runs [`retain`] in a thread of its own when this process set a retention for `data_dir`,
/// off the path of the append that rotated. One pass at a time: asked while one runs, it only
/// notes that another is wanted, which the running thread makes once done (no thread waits
/// on another, however many rotations happen meanwhile).
fn schedule_retention(data_dir: &Path) {
    if retention_of(data_dir).is_none() {
        return;
    }
    {
        let mut all = ARCHIVER.lock().unwrap_or_else(|e| e.into_inner());
        if !all.iter().any(|(d, _)| d == data_dir) {
            all.push((data_dir.to_owned(), Pass::default()));
        }
        let (_, pass) = all
            .iter_mut()
            .find(|(d, _)| d == data_dir)
            .expect("just added");
        if pass.running {
            pass.requested = true;
            return;
        }
        pass.running = true;
    }
    let dir = data_dir.to_owned();
    // Whether another pass is wanted; if not, the thread's work is over.
    let again = |dir: &Path| {
        let mut all = ARCHIVER.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_, pass)) = all.iter_mut().find(|(d, _)| d == dir) else {
            return false;
        };
        if std::mem::take(&mut pass.requested) {
            true
        } else {
            pass.running = false;
            false
        }
    };
    let spawned = std::thread::Builder::new()
        .name("audit-archive".into())
        .spawn(move || {
            loop {
                if let Err(e) = retain(&dir) {
                    tracing::warn!(file = %e.file.display(), error = %e.reason, "Audit file not archived; it stays in the data directory and is tried again at the next rotation or start (审计文件未归档，保留在数据目录中，下次轮转或启动时重试).");
                }
                if !again(&dir) {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        let mut all = ARCHIVER.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, pass)) = all.iter_mut().find(|(d, _)| d == data_dir) {
            *pass = Pass::default();
        }
        tracing::warn!(error = %e, "Cannot start the audit archival thread; rotated files stay in the data directory until the next rotation or start.");
    }
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who: the login that ran the command (`SUDO_USER`, else `USER`, else the uid).
    pub actor: String,
    /// What, e.g. `queue.discard`, `cursor.reset`, `resync`, `batch.acked`, `config.reload`,
    /// `audit.archived`.
    pub action: String,
    /// The resource concerned (empty for the whole service).
    pub resource: String,
    /// Details: sequence numbers, counts, digests, never a field value.
    pub detail: serde_json::Value,
    /// SM3 (hex) of the previous line.
    pub prev: String,
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit log {path}: {source}")]
pub struct AuditError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The audit log file of a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.jsonl")
}

/// The head file of a data directory.
fn head_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.head")
}

/// `audit.head`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    /// Entries in the chain, all files together.
    entries: u64,
    /// SM3 (hex) of the last line.
    last_sm3: String,
}

/// The files of the chain in the data directory, oldest first: `audit.jsonl.1`, `.2`, …, then
/// `audit.jsonl`.
pub fn files(data_dir: &Path) -> Vec<PathBuf> {
    chain_files(data_dir, None)
}

/// The rotated files (`audit.jsonl.<n>`) in a directory, by n.
fn rotated_in(dir: &Path) -> std::collections::BTreeMap<u64, PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("audit.jsonl.")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect()
}

/// The files of the chain, oldest first: the rotated files of the data directory and of an
/// archive directory (the data directory's copy where both hold one), then `audit.jsonl`.
fn chain_files(data_dir: &Path, archive: Option<&Path>) -> Vec<PathBuf> {
    let mut rotated = archive.map(rotated_in).unwrap_or_default();
    rotated.extend(rotated_in(data_dir));
    let mut all: Vec<PathBuf> = rotated.into_values().collect();
    all.push(path(data_dir));
    all
}

/// Serializes appends within the process.
static APPEND: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Appends one entry, chained to the last one, and syncs it to disk.
pub fn append(
    data_dir: &Path,
    action: &str,
    resource: &str,
    detail: serde_json::Value,
) -> Result<Entry, AuditError> {
    let job = (actor(), action.to_owned(), resource.to_owned(), detail);
    append_many(data_dir, vec![job], |_| {}).map(|mut entries| entries.remove(0))
}

/// What one entry says: actor, action, resource, detail.
type Fields = (String, String, String, serde_json::Value);

/// Appends entries chained after the last one with one write and one fsync, calls `durable`
/// with them once they are on disk, then writes the head (still holding the append lock):
/// a caller waiting for its entry need not wait for the head.
///
/// The chain continues from the last complete line of the newest file, whatever the head
/// says ([`Tail::read`]): a line cut short by a crash (never acknowledged: its fsync did not
/// complete) is cut off first, and the head, if it disagrees (a crash between the log's fsync
/// and the head's write, or a head rolled back or deleted), is counted afresh; both repairs
/// are recorded as an `audit.recovered` entry before the new ones.
fn append_many(
    data_dir: &Path,
    jobs: Vec<Fields>,
    durable: impl FnOnce(&[Entry]),
) -> Result<Vec<Entry>, AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let _one = APPEND.lock().unwrap_or_else(|e| e.into_inner());
    let path = path(data_dir);
    let err = |source| AuditError {
        path: path.clone(),
        source,
    };
    // Appends of other processes (operator commands while the service runs) wait too.
    let _all = ProcessLock::take(data_dir).map_err(err)?;
    let tail = Tail::read(data_dir).map_err(err)?;
    let mut recovered = Vec::new();
    if tail.cut > 0 {
        recovered.push(serde_json::json!({
            "what": "a line cut short by a crash was removed from the end of the log (it was never acknowledged)",
            "file": "audit.jsonl",
            "removed_bytes": tail.cut,
        }));
    }
    let prev_hex = tail.last.map(hex::encode);
    // The head as written (not counted from the files when missing: that is a repair too).
    let written: Option<Head> = std::fs::read(head_path(data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let head = match &written {
        None if prev_hex.is_none() => Some(Head::default()),
        written => written.clone().filter(|h| {
            (h.entries == 0 && prev_hex.is_none()) || Some(&h.last_sm3) == prev_hex.as_ref()
        }),
    };
    let mut head = match head {
        Some(h) => h,
        None => {
            let (counted, digests, before) = count_entries(data_dir).map_err(err)?;
            // A crash leaves the head behind the log, naming an entry the log holds; a head
            // ahead of the log, or naming an entry it does not hold, means entries are gone.
            let behind = written.as_ref().is_some_and(|h| {
                h.entries < counted
                    && h.entries > before
                    && digests
                        .get((h.entries - before) as usize - 1)
                        .is_some_and(|d| Some(hex::encode(d)) == Some(h.last_sm3.clone()))
            });
            recovered.push(match &written {
                None => serde_json::json!({
                    "what": "audit.head was missing or unreadable; the entries were counted afresh",
                    "entries": counted,
                }),
                Some(_) if behind => serde_json::json!({
                    "what": "audit.head was behind the log (a crash between writing entries and the head); the entries were counted afresh",
                    "entries": counted,
                }),
                Some(h) => serde_json::json!({
                    "what": "audit.head named an entry the log does not hold: entries were removed from the log, or the head was replaced; the entries were counted afresh, and the head found is kept here",
                    "entries": counted,
                    "head_entries": h.entries,
                    "head_last_sm3": h.last_sm3,
                }),
            });
            Head {
                entries: counted,
                last_sm3: prev_hex.clone().unwrap_or_default(),
            }
        }
    };
    let rotate_at = retention_of(data_dir).map_or(ROTATE_BYTES, |r| r.max_file_bytes);
    let rotated = std::fs::metadata(&path).is_ok_and(|m| m.len() >= rotate_at);
    if rotated {
        rotate(data_dir, head.entries).map_err(err)?;
    }
    let mut prev = prev_hex.unwrap_or_else(|| "0".repeat(64));
    let created = !path.exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    if created {
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut bytes = Vec::new();
    let mut entries = Vec::with_capacity(jobs.len());
    let notes = recovered.into_iter().map(|detail| {
        (
            "-".to_owned(),
            "audit.recovered".to_owned(),
            String::new(),
            detail,
        )
    });
    let first_job = notes.len();
    for (actor, action, resource, detail) in notes.chain(jobs) {
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
    file.write_all(&bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    if tail.cut > 0 {
        // The cut is on record now: its note may go (a crash before this repeats the note).
        let _ = std::fs::remove_file(cut_path(data_dir));
    }
    let entries = entries.split_off(first_job);
    durable(&entries);
    write_head(data_dir, &head).map_err(err)?;
    drop(_all);
    drop(_one);
    if rotated {
        schedule_retention(data_dir);
    }
    Ok(entries)
}

/// Where the chain ends on disk.
struct Tail {
    /// The SM3 of the last complete line of the newest file holding one; `None` for an empty
    /// log.
    last: Option<[u8; 32]>,
    /// Bytes cut from the end of `audit.jsonl` after its last newline (a torn line), now or
    /// by an earlier append that a crash stopped before it recorded the cut (`audit.cut`).
    cut: u64,
}

/// `audit.cut`: the note of a torn line about to be cut off (its length, decimal), written
/// and synced before the cut and removed once the `audit.recovered` entry recording it is on
/// disk, so that power lost between the cut and that entry still leaves the cut on record.
fn cut_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.cut")
}

impl Tail {
    /// Finds the end of the chain: cuts a torn line off the end of `audit.jsonl` (synced), then
    /// reads the last complete line of the newest file holding one (after a rotation that a
    /// crash interrupted, `audit.jsonl` may not exist or be empty yet).
    fn read(data_dir: &Path) -> std::io::Result<Tail> {
        let current = path(data_dir);
        // A cut an earlier append made and could not record.
        let mut cut: u64 = std::fs::read_to_string(cut_path(data_dir))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&current)
        {
            let len = f.metadata()?.len();
            let keep = complete_length(&f, len)?;
            if keep < len {
                cut += len - keep;
                crate::data_dir::replace(data_dir, "audit.cut", cut.to_string().as_bytes())?;
                f.set_len(keep)?;
                f.sync_all()?;
            }
            // The usual case: the current file's own last line, without listing the directory.
            if keep > 0 {
                return Ok(Tail {
                    last: line_before(&f, keep)?.map(|l| exchange_protocol::digest::sm3(&l)),
                    cut,
                });
            }
        }
        for file in files(data_dir).into_iter().rev() {
            let Ok(f) = std::fs::File::open(&file) else {
                continue;
            };
            if let Some(line) = last_line(&f)? {
                return Ok(Tail {
                    last: Some(exchange_protocol::digest::sm3(&line)),
                    cut,
                });
            }
        }
        Ok(Tail { last: None, cut })
    }
}

/// The length of a file up to and including its last newline (0 if it has none).
fn complete_length(f: &std::fs::File, len: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut end = len;
    let mut chunk = vec![0u8; 8192];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        f.read_exact_at(&mut chunk[..n], start)?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The last complete line of a file (without its newline), if any.
fn last_line(f: &std::fs::File) -> std::io::Result<Option<Vec<u8>>> {
    let end = complete_length(f, f.metadata()?.len())?;
    line_before(f, end)
}

/// The line that ends (with its newline) at byte `end` of a file, without the newline; `None`
/// when `end` is 0.
fn line_before(f: &std::fs::File, end: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::FileExt;
    if end == 0 {
        return Ok(None);
    }
    let start = complete_length(f, end - 1)?;
    let mut line = vec![0u8; (end - 1 - start) as usize];
    f.read_exact_at(&mut line, start)?;
    Ok(Some(line))
}

/// Entries in the chain: those archived away before the oldest file present (as its
/// `audit.archived` entry records; 0 when not recorded) and every line of the files present;
/// the SM3 of each line present; and the number archived away. A rotated file that vanishes
/// while read (the archiver moved it) has the files listed again.
fn count_entries(data_dir: &Path) -> std::io::Result<(u64, Vec<[u8; 32]>, u64)> {
    let mut tries = 0;
    'list: loop {
        let (all, start) = listed_start(data_dir, None)?;
        let before = match start {
            Start::Archived(a) => a.entries.unwrap_or(0),
            Start::Beginning | Start::Unexplained { .. } => 0,
        };
        let mut digests = Vec::new();
        for f in &all {
            match std::fs::read(f) {
                Ok(bytes) => digests.extend(
                    bytes
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(exchange_protocol::digest::sm3),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if tries < 20 && files(data_dir) != all {
                        tries += 1;
                        continue 'list;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        return Ok((before + digests.len() as u64, digests, before));
    }
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

/// Renames `audit.jsonl` to `audit.jsonl.<entries>` (the chain's length so far, so names
/// grow and never repeat, also when older files were archived away), never over an existing
/// file.
fn rotate(data_dir: &Path, entries: u64) -> std::io::Result<()> {
    let highest = files(data_dir)
        .iter()
        .filter_map(|f| {
            f.file_name()?
                .to_str()?
                .strip_prefix("audit.jsonl.")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    let mut n = entries.max(highest + 1);
    let to = loop {
        let to = data_dir.join(format!("audit.jsonl.{n}"));
        if !to.exists() {
            break to;
        }
        n += 1;
    };
    std::fs::rename(path(data_dir), to)?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Where the oldest file present begins the chain.
enum Start {
    /// At the chain's first entry (`prev` 64 zeros), or there is nothing to read.
    Beginning,
    /// After entries archived away, as an `audit.archived` entry in a file present records.
    Archived(ArchivedBefore),
    /// After entries that are missing and that no `audit.archived` entry records.
    Unexplained {
        /// The oldest file present.
        file: PathBuf,
    },
}

/// The entries before the oldest file read, archived away, as the `audit.archived` entry of
/// the last of them records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedBefore {
    /// How many entries precede the oldest file read; `None` when that entry could not say
    /// (older files were already missing, unrecorded, when it was archived).
    pub entries: Option<u64>,
    /// Where the last of them went: the archive's path of its file, or the command it was
    /// handed to.
    pub to: String,
    /// When it was archived (the entry's `at`).
    pub at: String,
    /// SM3 (hex) of the last line archived, which the oldest file read continues from.
    pub last_sm3: String,
    /// The file holding the `audit.archived` entry.
    pub recorded_in: PathBuf,
    /// Its line (1-based).
    pub line: usize,
}

/// Finds where the chain of `files` (oldest first) begins: the first entry of the oldest file
/// holding one, and, when that continues from an earlier entry, the `audit.archived` entry
/// that names it.
fn chain_start(files: &[PathBuf]) -> std::io::Result<Start> {
    for f in files {
        let Ok(opened) = std::fs::File::open(f) else {
            continue;
        };
        let mut reader = std::io::BufReader::new(opened);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line)? > 0 {
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if text.is_empty() {
                line.clear();
                continue;
            }
            // Not an entry: the walk of `verify` says so at its line.
            let Ok(entry) = serde_json::from_slice::<Entry>(text) else {
                return Ok(Start::Beginning);
            };
            if entry.prev == ZEROS {
                return Ok(Start::Beginning);
            }
            return Ok(match find_archived(files, &entry.prev)? {
                Some(a) => Start::Archived(a),
                None => Start::Unexplained { file: f.clone() },
            });
        }
    }
    Ok(Start::Beginning)
}

/// The files of the chain ([`chain_files`]) and where they begin, listed again when a
/// rotation renamed `audit.jsonl` while its `audit.archived` entries were searched.
fn listed_start(data_dir: &Path, archive: Option<&Path>) -> std::io::Result<(Vec<PathBuf>, Start)> {
    loop {
        let all = chain_files(data_dir, archive);
        let start = chain_start(&all)?;
        if !matches!(start, Start::Unexplained { .. }) || chain_files(data_dir, archive) == all {
            return Ok((all, start));
        }
    }
}

/// The `audit.archived` entry whose archived file ended with the line of SM3 `last_sm3` (hex),
/// searching the files from the newest (where it usually is) back.
fn find_archived(files: &[PathBuf], last_sm3: &str) -> std::io::Result<Option<ArchivedBefore>> {
    const ACTION: &[u8] = br#""action":"audit.archived""#;
    for f in files.iter().rev() {
        let bytes = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut found = None;
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if !line.windows(ACTION.len()).any(|w| w == ACTION) {
                continue;
            }
            let Ok(entry) = serde_json::from_slice::<Entry>(line) else {
                continue;
            };
            if entry.action == "audit.archived" && entry.detail["last_sm3"] == last_sm3 {
                let d = &entry.detail;
                found = Some(ArchivedBefore {
                    entries: d["last_entry"].as_u64(),
                    to: d["to"]
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| d["command"].as_str().map(|c| format!("the command `{c}`")))
                        .unwrap_or_default(),
                    at: entry.at,
                    last_sm3: last_sm3.to_owned(),
                    recorded_in: f.clone(),
                    line: i + 1,
                });
            }
        }
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Why a rotated file was not archived; it stays in the data directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot archive the audit file {file}: {reason}")]
pub struct ArchiveError {
    /// The file.
    pub file: PathBuf,
    /// Why.
    pub reason: String,
}

/// Serializes archival passes within the process.
static RETAIN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One archival pass over the data directory, as its retention says ([`set_retention`];
/// none set: the default, no archive): archives the rotated files beyond those kept, oldest
/// first, stopping at the first that fails (it stays, and no newer one goes before it);
/// returns how many were archived. Without an archive, warns when more than
/// [`DEFAULT_KEEP`] rotated files have accumulated.
pub fn retain(data_dir: &Path) -> Result<usize, ArchiveError> {
    let _one = RETAIN.lock().unwrap_or_else(|e| e.into_inner());
    let retention = retention_of(data_dir).unwrap_or_default();
    let (mut all, mut start) = listed_start(data_dir, None).map_err(|e| ArchiveError {
        file: path(data_dir),
        reason: format!("cannot read the chain: {e}"),
    })?;
    let rotated = &all[..all.len() - 1];
    let Some(archive) = &retention.archive else {
        if rotated.len() > DEFAULT_KEEP {
            tracing::warn!(
                files = rotated.len(),
                "Rotated audit files accumulate in the data directory; they are never deleted. Set [audit] archive_dir or archive_command to move older ones out (审计文件只增不删：请配置 [audit] archive_dir 或 archive_command 归档旧文件)."
            );
        }
        return Ok(0);
    };
    let failed = |file: &Path, reason: String| ArchiveError {
        file: file.to_owned(),
        reason,
    };
    let mut done = 0;
    // Again while the entries recording the archival rotated the log once more.
    loop {
        let rotated = &all[..all.len() - 1];
        let excess = rotated.len().saturating_sub(archive.keep);
        if excess == 0 {
            return Ok(done);
        }
        // Entries before the oldest file present; `None`: unknown.
        let mut before = match start {
            Start::Beginning => Some(0),
            Start::Archived(a) => a.entries,
            Start::Unexplained { .. } => None,
        };
        for file in &rotated[..excess] {
            before = archive_one(data_dir, file, archive, before)
                .map_err(|reason| failed(file, reason))?;
            done += 1;
        }
        (all, start) = listed_start(data_dir, None)
            .map_err(|e| failed(&path(data_dir), format!("cannot read the chain: {e}")))?;
    }
}

/// Archives the oldest rotated file present, `before` entries of the chain preceding it (if
/// known): stores it where `archive` says, records `audit.archived`, then removes it from the
/// data directory. Returns the number of its last entry, if known.
fn archive_one(
    data_dir: &Path,
    file: &Path,
    archive: &Archive,
    before: Option<u64>,
) -> Result<Option<u64>, String> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("not a file name")?;
    let facts = FileFacts::read(file).map_err(|e| format!("cannot read it: {e}"))?;
    let last = before.map(|b| b + facts.lines);
    let mut detail = serde_json::json!({
        "file": name,
        "first_entry": before.map(|b| b + 1),
        "last_entry": last,
        "entries": facts.lines,
        "sm3": hex::encode(facts.sm3),
        "last_sm3": facts.last_sm3.map(hex::encode),
    });
    if before.is_none() {
        detail["what"] = "the files before this one were already missing from the data directory, with no audit.archived entry for them: the numbers of its entries are unknown".into();
    }
    match &archive.to {
        ArchiveTo::Dir(dir) => {
            let to = store_in(dir, file, name, &facts.sm3)
                .map_err(|e| format!("cannot store it in {}: {e}", dir.display()))?;
            detail["to"] = to.display().to_string().into();
        }
        ArchiveTo::Command { argv, timeout } => {
            // The command gets a copy, which it may move, compress or delete: the file itself
            // stays until its archival is on record.
            let staged = stage(data_dir, file, name)
                .map_err(|e| format!("cannot copy it for the archive command: {e}"))?;
            let ran = run_archive_command(argv, &staged, *timeout);
            let _ = std::fs::remove_file(&staged);
            ran?;
            detail["command"] = argv.join(" ").into();
        }
    }
    // Recorded, then removed under the append lock (no append counts the files meanwhile).
    let mut removed = Ok(());
    let job = (actor(), "audit.archived".to_owned(), String::new(), detail);
    append_many(data_dir, vec![job], |_| {
        removed = std::fs::remove_file(file)
            .and_then(|()| std::fs::File::open(data_dir).and_then(|d| d.sync_all()));
    })
    .map_err(|e| format!("cannot record its archival: {e}"))?;
    removed.map_err(|e| {
        format!(
            "stored and recorded as archived, but cannot remove it from the data directory: {e}"
        )
    })?;
    Ok(last)
}

/// What the `audit.archived` entry says of a file.
struct FileFacts {
    /// Entries (non-empty lines).
    lines: u64,
    /// SM3 of the whole file.
    sm3: [u8; 32],
    /// SM3 of its last entry, which the next file continues from.
    last_sm3: Option<[u8; 32]>,
}

impl FileFacts {
    fn read(file: &Path) -> std::io::Result<FileFacts> {
        use sm3::Digest;
        let mut reader = std::io::BufReader::new(std::fs::File::open(file)?);
        let mut whole = sm3::Sm3::new();
        let (mut lines, mut last_sm3) = (0, None);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line)? > 0 {
            whole.update(&line);
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if !text.is_empty() {
                lines += 1;
                last_sm3 = Some(exchange_protocol::digest::sm3(text));
            }
            line.clear();
        }
        Ok(FileFacts {
            lines,
            sm3: whole.finalize().into(),
            last_sm3,
        })
    }
}

/// Stores `file` in `dir` as `name`, never over another file: a hard link when both are on
/// one filesystem, else a copy written under a temporary name, synced, then linked into place.
/// A file of that name already there with the same SM3 (stored before a crash) is taken as
/// stored; one with other contents is an error.
fn store_in(dir: &Path, file: &Path, name: &str, sm3: &[u8; 32]) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let to = dir.join(name);
    let same = |to: &Path| -> std::io::Result<()> {
        if FileFacts::read(to)?.sm3 == *sm3 {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists with other contents; it is never overwritten (move it aside)",
                    to.display()
                ),
            ))
        }
    };
    if to.exists() {
        return same(&to).map(|()| to);
    }
    let sync_dir = || std::fs::File::open(dir).and_then(|d| d.sync_all());
    match std::fs::hard_link(file, &to) {
        Ok(()) => return sync_dir().map(|()| to),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return same(&to).map(|()| to),
        // Another filesystem (or one without hard links): copied instead.
        Err(_) => {}
    }
    let partial = dir.join(format!(".{name}.partial"));
    {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)?;
        std::io::copy(&mut std::fs::File::open(file)?, &mut out)?;
        out.sync_all()?;
    }
    let linked = std::fs::hard_link(&partial, &to);
    std::fs::remove_file(&partial)?;
    match linked {
        Ok(()) => sync_dir().map(|()| to),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => same(&to).map(|()| to),
        Err(e) => Err(e),
    }
}

/// The directory, inside the data directory, holding the copy an archive command is given.
fn staging_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit-archiving")
}

/// Copies `file` to `<data_dir>/audit-archiving/<name>` (the directory created 0700, the copy
/// 0600 and synced, replacing a copy a crash left) for the archive command; returns its path.
fn stage(data_dir: &Path, file: &Path, name: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = staging_dir(data_dir);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => std::fs::File::open(data_dir)?.sync_all()?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let to = dir.join(name);
    // A copy left by an earlier run (or a file the command left) is replaced, never appended to.
    match std::fs::remove_file(&to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut out = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&to)?;
    std::io::copy(&mut std::fs::File::open(file)?, &mut out)?;
    out.sync_all()?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(to)
}

/// Runs the archive command with the file's path as its last argument: `Ok` once it exits 0,
/// else why not (its exit status and the end of what it wrote to standard error). A command
/// still running after `timeout` is killed.
fn run_archive_command(
    argv: &[String],
    file: &Path,
    timeout: std::time::Duration,
) -> Result<(), String> {
    use std::io::Read;
    use std::process::Stdio;
    let program = argv.first().ok_or("no archive command")?;
    let mut child = std::process::Command::new(program)
        .args(&argv[1..])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run the archive command {program}: {e}"))?;
    // Standard error is read meanwhile, so that a command writing much never blocks on it.
    let (sent, stderr) = std::sync::mpsc::channel();
    if let Some(mut pipe) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            let _ = sent.send(text);
        });
    }
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "the archive command {program} did not finish within {}s and was killed",
                    timeout.as_secs()
                ));
            }
            // No wait with a timeout in std: the pass is a thread of its own, so polling
            // costs nothing else.
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(50)),
            Err(e) => {
                break Err(format!(
                    "cannot wait for the archive command {program}: {e}"
                ));
            }
        }
    }?;
    if status.success() {
        return Ok(());
    }
    // A process it left behind may hold the pipe open: its text is then not awaited long.
    let text = stderr
        .recv_timeout(std::time::Duration::from_secs(1))
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    let mut start = text.len().saturating_sub(500);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = &text[start..];
    Err(format!(
        "the archive command {program} failed ({status}){}",
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    ))
}

/// One entry waiting for the writer thread, and where its result goes.
struct Job {
    /// What the entry says.
    fields: Fields,
    /// The entry once on disk, or why not.
    reply: tokio::sync::oneshot::Sender<Result<Entry, AuditError>>,
}

/// The audit log of a long-running service (the verification service), which appends many
/// entries from many requests at once. One thread writes them: it takes every entry waiting,
/// appends them with one write and one fsync (group commit) through the same path as
/// [`append`] (the same chain, head and rotation), then tells each caller; a caller goes on
/// only once its entry is on disk.
#[derive(Debug, Clone)]
pub struct Writer {
    /// To the writer thread (which ends when this is dropped).
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Writer {
    /// A writer for the audit log of `data_dir`.
    pub fn new(data_dir: &Path) -> Writer {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let data_dir = data_dir.to_owned();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        jobs.push(more);
                    }
                    let (fields, replies): (Vec<Fields>, Vec<_>) =
                        jobs.into_iter().map(|j| (j.fields, j.reply)).unzip();
                    // Each caller goes on as soon as its entry is on disk; the head follows.
                    let mut waiting = Some(replies);
                    let written = append_many(&data_dir, fields, |entries| {
                        for (entry, reply) in entries.iter().zip(waiting.take().unwrap_or_default()) {
                            let _ = reply.send(Ok(entry.clone()));
                        }
                    });
                    match (written, waiting) {
                        (Ok(_), _) => {}
                        (Err(e), Some(replies)) => {
                            for reply in replies {
                                let _ = reply.send(Err(AuditError {
                                    path: e.path.clone(),
                                    source: std::io::Error::new(
                                        e.source.kind(),
                                        e.source.to_string(),
                                    ),
                                }));
                            }
                        }
                        (Err(e), None) => {
                            tracing::warn!(error = %e, "The audit entries are on disk but the audit head could not be written.");
                        }
                    }
                }
            })
            .expect("the audit writer thread starts");
        Writer { jobs: tx }
    }

    /// Appends one entry by `actor` (e.g. a requester's identity); returns once it is on disk.
    pub async fn append(
        &self,
        actor: &str,
        action: &str,
        resource: &str,
        detail: serde_json::Value,
    ) -> Result<Entry, AuditError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || AuditError {
            path: PathBuf::from("audit.jsonl"),
            source: std::io::Error::other("the audit writer thread has stopped"),
        };
        self.jobs
            .send(Job {
                fields: (
                    actor.to_owned(),
                    action.to_owned(),
                    resource.to_owned(),
                    detail,
                ),
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// The head, from `audit.head`, or counted from the files when it is missing (a log written
/// before the head existed).
fn read_head(data_dir: &Path) -> std::io::Result<Head> {
    match std::fs::read(head_path(data_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (entries, digests, _) = count_entries(data_dir)?;
            Ok(Head {
                entries,
                last_sm3: digests.last().map(hex::encode).unwrap_or_default(),
            })
        }
        Err(e) => Err(e),
    }
}

/// The length `audit.head` is written at: its JSON padded with spaces.
const HEAD_BYTES: usize = 160;

/// Writes the head. It is rewritten in place at a fixed length (one small write within one
/// sector, then fdatasync), so the file's size and blocks never change and the write needs no
/// journal commit of the filesystem: a rename per append stalled every writer of the disk for
/// up to 150 ms under load. A head of another length (first write, older versions) is
/// replaced whole ([`crate::data_dir::replace`]).
fn write_head(data_dir: &Path, head: &Head) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut bytes = serde_json::to_vec(head).expect("head serializes");
    if bytes.len() > HEAD_BYTES {
        return crate::data_dir::replace(data_dir, "audit.head", &bytes);
    }
    bytes.resize(HEAD_BYTES, b' ');
    let path = head_path(data_dir);
    match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(f) if f.metadata()?.len() == HEAD_BYTES as u64 => {
            f.write_all_at(&bytes, 0)?;
            f.sync_data()
        }
        Ok(_) => crate::data_dir::replace(data_dir, "audit.head", &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::data_dir::replace(data_dir, "audit.head", &bytes)
        }
        Err(e) => Err(e),
    }
}

/// Milliseconds since 1970 of an entry's `at`.
pub fn millis_of(at: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The entries of one file of the log, with the SM3 of each line; a line that is not an
/// entry (one cut short by a crash, possibly inside a character) is skipped.
fn entries_of(file: &Path) -> std::io::Result<Vec<(Entry, [u8; 32])>> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let entry = serde_json::from_slice::<Entry>(line).ok()?;
            Some((entry, exchange_protocol::digest::sm3(line)))
        })
        .collect())
}

/// The SM3 (hex) of the last entry of the chain, as `audit.head` records it.
pub fn last_sm3(data_dir: &Path) -> Option<String> {
    read_head(data_dir)
        .ok()
        .filter(|h| h.entries > 0)
        .map(|h| h.last_sm3)
}

/// Calls `f` with every entry written after the entry whose line has SM3 `sm3` (hex), in the
/// order written, reading the files from the newest back to the one holding it; `false` when
/// no file holds it (then `f` was not called).
pub fn for_each_after(
    data_dir: &Path,
    sm3: &str,
    mut f: impl FnMut(Entry),
) -> std::io::Result<bool> {
    let Ok(target) = hex::decode(sm3) else {
        return Ok(false);
    };
    let all = files(data_dir);
    let mut later: Vec<Vec<(Entry, [u8; 32])>> = Vec::new();
    for file in all.iter().rev() {
        let entries = entries_of(file)?;
        if let Some(at) = entries.iter().position(|(_, d)| d[..] == target[..]) {
            for (entry, _) in entries.into_iter().skip(at + 1) {
                f(entry);
            }
            for entries in later.into_iter().rev() {
                for (entry, _) in entries {
                    f(entry);
                }
            }
            return Ok(true);
        }
        later.push(entries);
    }
    Ok(false)
}

/// When the first entry of a file was written (milliseconds since 1970), if it holds one.
fn first_at(file: &Path) -> std::io::Result<Option<i64>> {
    let Ok(opened) = std::fs::File::open(file) else {
        return Ok(None);
    };
    let mut reader = std::io::BufReader::new(opened);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        if let Ok(entry) = serde_json::from_slice::<Entry>(line.trim_ascii_end()) {
            return Ok(millis_of(&entry.at));
        }
        line.clear();
    }
    Ok(None)
}

/// Calls `f` with every entry written at or after `since_ms` (milliseconds since 1970), in
/// the order written, reading only the files that can hold one: the newest files back to the
/// first whose first entry is older.
pub fn for_each_since(
    data_dir: &Path,
    since_ms: i64,
    mut f: impl FnMut(Entry),
) -> std::io::Result<()> {
    let all = files(data_dir);
    let mut start = 0;
    for (i, file) in all.iter().enumerate().rev() {
        if first_at(file)?.is_some_and(|at| at < since_ms) {
            start = i;
            break;
        }
    }
    for file in &all[start..] {
        for (entry, _) in entries_of(file)? {
            if millis_of(&entry.at).is_some_and(|at| at >= since_ms) {
                f(entry);
            }
        }
    }
    Ok(())
}

/// The archive directory of `data_dir`: `[audit] archive_dir` when this process set the
/// retention ([`set_retention`]), else the directory the newest `audit.archived` entry of the
/// files present records a file moved to (an `archive_command` leaves none).
fn archive_dir_of(data_dir: &Path) -> Option<PathBuf> {
    if let Some(r) = retention_of(data_dir) {
        return match &r.archive {
            Some(Archive {
                to: ArchiveTo::Dir(dir),
                ..
            }) => Some(dir.clone()),
            _ => None,
        };
    }
    const ACTION: &[u8] = br#""action":"audit.archived""#;
    for f in files(data_dir).iter().rev() {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        let found = bytes
            .split(|b| *b == b'\n')
            .rev()
            .filter(|l| l.windows(ACTION.len()).any(|w| w == ACTION))
            .filter_map(|l| serde_json::from_slice::<Entry>(l).ok())
            .find_map(|e| Some(PathBuf::from(e.detail["to"].as_str()?).parent()?.to_owned()));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// [`for_each_since`] over the files of the archive directory ([`archive_dir_of`]) too, so
/// that an entry whose file was archived is still found. A file that vanishes while read (the
/// archiver moved it) has the files listed again and read anew: `f` may then see an entry
/// twice.
pub fn for_each_since_archived(
    data_dir: &Path,
    since_ms: i64,
    mut f: impl FnMut(Entry),
) -> std::io::Result<()> {
    let archive = archive_dir_of(data_dir);
    let mut tries = 0;
    'list: loop {
        let all = chain_files(data_dir, archive.as_deref());
        let mut start = 0;
        for (i, file) in all.iter().enumerate().rev() {
            if first_at(file)?.is_some_and(|at| at < since_ms) {
                start = i;
                break;
            }
        }
        for file in &all[start..] {
            let bytes = match std::fs::read(file) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if tries < 20 && chain_files(data_dir, archive.as_deref()) != all {
                        tries += 1;
                        continue 'list;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            for line in bytes.split(|b| *b == b'\n') {
                if let Ok(entry) = serde_json::from_slice::<Entry>(line)
                    && millis_of(&entry.at).is_some_and(|at| at >= since_ms)
                {
                    f(entry);
                }
            }
        }
        return Ok(());
    }
}

/// The repairs recorded in the log (`audit.recovered` entries), oldest first: what crashes
/// left, and a head that named entries the log no longer held.
pub fn repairs(data_dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for_each_since(data_dir, i64::MIN, |e| {
        if e.action == "audit.recovered" {
            out.push(e);
        }
    })?;
    Ok(out)
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The file.
    pub file: PathBuf,
    /// Line number (1-based) in that file; 0 for the head.
    pub line: usize,
    /// What is wrong there.
    pub what: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.what)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.what)
        }
    }
}

/// What [`verify_with`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries in the chain, those archived away before the first file read included.
    pub entries: u64,
    /// Entries read and checked.
    pub checked: u64,
    /// Rotated files read from the archive directory given.
    pub from_archive: usize,
    /// The entries before the first file read, archived away and not checked here; `None`:
    /// the chain was read from its first entry.
    pub archived: Option<ArchivedBefore>,
}

/// Checks the chain of the data directory (every file, then the head): `Ok(entries)` when
/// intact, else the first place where it breaks. Entries archived away are not read (see
/// [`verify_with`]).
pub fn verify(data_dir: &Path) -> Result<u64, Break> {
    verify_with(data_dir, None).map(|v| v.entries)
}

/// Checks the chain: the rotated files of the data directory and of `archive` (a directory
/// holding archived files, e.g. `[audit] archive_dir`), oldest first, then `audit.jsonl` and
/// the head; `Ok` when intact, else the first place where it breaks. When the oldest file read
/// continues from entries that are not there, it is accepted only if an `audit.archived` entry
/// in the files read names the last of them, and the chain is checked from there. When an
/// archive is read, every file an `audit.archived` entry names must be read too (from it or
/// the data directory) with the SM3 recorded. A file that vanishes while read (the archiver
/// moved it) has the files listed again.
pub fn verify_with(data_dir: &Path, archive: Option<&Path>) -> Result<Verified, Break> {
    let mut tries = 0;
    loop {
        match verify_pass(data_dir, archive)? {
            Some(v) => return Ok(v),
            None if tries < 20 => tries += 1,
            None => {
                return Err(Break {
                    file: path(data_dir),
                    line: 0,
                    what: "the files kept vanishing while read (an archival or rotation running): run it again".into(),
                });
            }
        }
    }
}

/// A file an `audit.archived` entry names.
struct Named {
    /// Its name (`audit.jsonl.<n>`).
    name: String,
    /// Its SM3 (hex) as recorded.
    sm3: String,
    /// Where it went.
    to: String,
    /// The file and line (1-based) of the entry.
    recorded_in: PathBuf,
    line: usize,
}

/// One pass of [`verify_with`]; `Ok(None)`: a file vanished while read, list them again.
fn verify_pass(data_dir: &Path, archive: Option<&Path>) -> Result<Option<Verified>, Break> {
    let (all, start) = listed_start(data_dir, archive).map_err(|e| Break {
        file: path(data_dir),
        line: 0,
        what: format!("cannot read: {e}"),
    })?;
    let from_archive = archive.map_or(0, |a| all.iter().filter(|f| f.starts_with(a)).count());
    // The entries before the first file read: 0, as recorded, or (`None`) to be taken from the
    // head.
    let (mut prev, before, archived) = match start {
        Start::Beginning => (ZEROS.to_owned(), Some(0), None),
        Start::Archived(a) => (a.last_sm3.clone(), a.entries, Some(a)),
        Start::Unexplained { file } => {
            return Err(Break {
                file,
                line: 1,
                what: "the first entry does not start the chain: entries before it were removed (no `audit.archived` entry records them as archived; files moved away by hand are read with `audit verify --archive DIR`)".into(),
            });
        }
    };
    let mut checked = 0u64;
    // The SM3 of the entry the head says is the last, once the walk reaches it.
    let head_count = read_head(data_dir).ok().map(|h| h.entries);
    let mut at_head_count = None;
    let mut last_file = path(data_dir);
    // The first break found; the walk goes on collecting `audit.archived` entries, so that a
    // missing archived file is named rather than the break it leaves.
    let mut broke: Option<Break> = None;
    // The rotated files read (name: path, SM3) and the files `audit.archived` entries name.
    let mut present = std::collections::HashMap::new();
    let mut named: Vec<Named> = Vec::new();
    for f in &all {
        let bytes = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if chain_files(data_dir, archive) != all {
                    return Ok(None);
                }
                continue;
            }
            Err(e) => {
                return Err(Break {
                    file: f.clone(),
                    line: 0,
                    what: format!("cannot read: {e}"),
                });
            }
        };
        if let Some(name) = f.file_name().and_then(|n| n.to_str())
            && name.starts_with("audit.jsonl.")
        {
            present.insert(
                name.to_owned(),
                (
                    f.clone(),
                    hex::encode(exchange_protocol::digest::sm3(&bytes)),
                ),
            );
        }
        if broke.is_none() && !bytes.is_empty() && !bytes.ends_with(b"\n") {
            let line = bytes.split(|b| *b == b'\n').count();
            broke = Some(Break {
                file: f.clone(),
                line,
                what: "the last line is cut short: a crash while it was being written leaves this (the service cuts it off, as never acknowledged, and records `audit.recovered` when it next writes), or the file was truncated".into(),
            });
        }
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let at = |what: String| Break {
                file: f.clone(),
                line: i + 1,
                what,
            };
            let entry = serde_json::from_slice::<Entry>(line);
            if let Ok(e) = &entry
                && archive.is_some()
                && e.action == "audit.archived"
            {
                let d = &e.detail;
                if let (Some(name), Some(sm3)) = (d["file"].as_str(), d["sm3"].as_str()) {
                    named.push(Named {
                        name: name.to_owned(),
                        sm3: sm3.to_owned(),
                        to: d["to"]
                            .as_str()
                            .map(str::to_owned)
                            .or_else(|| d["command"].as_str().map(|c| format!("the command `{c}`")))
                            .unwrap_or_default(),
                        recorded_in: f.clone(),
                        line: i + 1,
                    });
                }
            }
            if broke.is_some() {
                continue;
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    broke = Some(at(format!("not an audit entry ({e}): edited or damaged")));
                    continue;
                }
            };
            if entry.prev != prev {
                broke = Some(at(if checked == 0 {
                    "the first entry does not start the chain: entries before it were removed"
                        .into()
                } else {
                    let n = before.map_or(String::new(), |b| format!(" {}", b + checked));
                    format!(
                        "`prev` does not match entry{n} before it: this entry or the one before was edited, or entries were removed or reordered here"
                    )
                }));
                continue;
            }
            prev = hex::encode(exchange_protocol::digest::sm3(line));
            checked += 1;
            if before.is_some_and(|b| Some(b + checked) == head_count) {
                at_head_count = Some(prev.clone());
            }
        }
        last_file = f.clone();
    }
    if let Some(archive) = archive {
        let missing: Vec<&Named> = named
            .iter()
            .filter(|n| !present.contains_key(&n.name))
            .collect();
        if let Some(first) = missing.first() {
            let names: Vec<&str> = missing.iter().map(|n| n.name.as_str()).collect();
            return Err(Break {
                file: archive.join(&first.name),
                line: 0,
                what: format!(
                    "missing: {} archived file(s) recorded by `audit.archived` entries are in neither the archive {} nor the data directory: {} (the first archived to {}, recorded at {}:{}); restore them there",
                    missing.len(),
                    archive.display(),
                    names.join(", "),
                    first.to,
                    first.recorded_in.display(),
                    first.line
                ),
            });
        }
    }
    if let Some(b) = broke {
        return Err(b);
    }
    for n in &named {
        if let Some((file, sm3)) = present.get(&n.name)
            && *sm3 != n.sm3
        {
            return Err(Break {
                file: file.clone(),
                line: 0,
                what: format!(
                    "its SM3 is {sm3}, not {} as recorded when it was archived ({}:{}): the file was changed since",
                    n.sm3,
                    n.recorded_in.display(),
                    n.line
                ),
            });
        }
    }
    // Archived entries not counted by their record: what the head counts beyond those read.
    let before = before.unwrap_or_else(|| head_count.unwrap_or(0).saturating_sub(checked));
    let entries = before + checked;
    match std::fs::read(head_path(data_dir)) {
        Ok(bytes) => {
            let head: Head = serde_json::from_slice(&bytes).map_err(|e| Break {
                file: head_path(data_dir),
                line: 0,
                what: format!("not a head ({e})"),
            })?;
            if head.entries < entries && at_head_count.as_ref() == Some(&head.last_sm3) {
                return Err(Break {
                    file: head_path(data_dir),
                    line: 0,
                    what: format!(
                        "audit.head records {} entries and the log holds {entries}, the first {} as the head says: the last {} were written after the head, by a crash between the two (the service repairs the head and records `audit.recovered` when it next writes) or because the head was rolled back",
                        head.entries,
                        head.entries,
                        entries - head.entries
                    ),
                });
            }
            if head.entries != entries || (entries > 0 && head.last_sm3 != prev) {
                // A rotation or append meanwhile moves the head past what was read.
                if chain_files(data_dir, archive) != all {
                    return Ok(None);
                }
                return Err(Break {
                    file: last_file,
                    line: 0,
                    what: format!(
                        "the log holds {entries} entries but audit.head records {} ending in {}: entries at the end were removed (the log was truncated) or the head was replaced",
                        head.entries, head.last_sm3
                    ),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && entries == 0 => {}
        Err(e) => {
            return Err(Break {
                file: head_path(data_dir),
                line: 0,
                what: format!("cannot read the head: {e}"),
            });
        }
    }
    Ok(Some(Verified {
        entries,
        checked,
        from_archive,
        archived,
    }))
}

/// Writes the entries at or after `since` (RFC 3339), every file of the chain, as NDJSON
/// (the lines exactly as stored, so their digests still chain); returns how many.
pub fn export(
    data_dir: &Path,
    since: Option<chrono::DateTime<chrono::Utc>>,
    out: &mut dyn Write,
) -> std::io::Result<u64> {
    let mut n = 0;
    for f in files(data_dir) {
        let file = match std::fs::File::open(&f) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            let keep = match since {
                None => true,
                Some(since) => serde_json::from_str::<Entry>(&line)
                    .ok()
                    .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e.at).ok())
                    .is_none_or(|at| at >= since),
            };
            if keep {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The login running this process, for the audit trail.
fn actor() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writer_keeps_the_chain_when_another_process_appends_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::new(dir.path());
        let one = serde_json::json!({"items": 1});
        w.append("requester-a", "verify", "R", one).await.unwrap();
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        let (b, c) = tokio::join!(
            w.append("a", "verify", "R", serde_json::json!({"items": 2})),
            w.append("a", "verify", "R", serde_json::json!({"items": 3}))
        );
        b.unwrap();
        c.unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        for pair in lines.windows(2) {
            let next: Entry = serde_json::from_str(pair[1]).unwrap();
            assert_eq!(
                next.prev,
                hex::encode(exchange_protocol::digest::sm3(pair[0].as_bytes()))
            );
        }
    }

    #[test]
    fn entries_since_an_instant_are_read_across_rotated_files_past_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |at: &str, n: u64| {
            let e = Entry {
                at: at.into(),
                actor: "a".into(),
                action: "verify".into(),
                resource: "R".into(),
                detail: serde_json::json!({ "n": n, "purpose": "社保资格认证" }),
                prev: "0".repeat(64),
            };
            serde_json::to_string(&e).unwrap()
        };
        // Three files: the oldest wholly before the instant, the next across it, the current
        // one after it, ending in a line cut inside a character by a crash.
        std::fs::write(
            dir.path().join("audit.jsonl.1"),
            format!("{}\n", entry("2026-01-01T00:00:00.000Z", 1)),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("audit.jsonl.2"),
            format!(
                "{}\n{}\n",
                entry("2026-01-02T00:00:00.000Z", 2),
                entry("2026-01-03T00:00:00.000Z", 3)
            ),
        )
        .unwrap();
        let torn = entry("2026-01-04T00:00:01.000Z", 5);
        let cut = torn.find("社").unwrap() + 1;
        let mut current = format!("{}\n", entry("2026-01-04T00:00:00.000Z", 4)).into_bytes();
        current.extend_from_slice(&torn.as_bytes()[..cut]);
        std::fs::write(path(dir.path()), current).unwrap();
        let since = millis_of("2026-01-02T12:00:00.000Z").unwrap();
        let mut seen = Vec::new();
        for_each_since(dir.path(), since, |e| {
            seen.push(e.detail["n"].as_u64().unwrap())
        })
        .unwrap();
        assert_eq!(seen, [3, 4]);
        let mut all = Vec::new();
        for_each_since(dir.path(), i64::MIN, |e| {
            all.push(e.detail["n"].as_u64().unwrap())
        })
        .unwrap();
        assert_eq!(all, [1, 2, 3, 4]);
    }

    #[test]
    fn the_head_is_rewritten_in_place_at_a_fixed_length() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        // A head as older versions wrote it (plain JSON) is replaced once, then kept.
        append(dir.path(), "a", "R", serde_json::json!({})).unwrap();
        let head = head_path(dir.path());
        let h = read_head(dir.path()).unwrap();
        std::fs::write(&head, serde_json::to_vec(&h).unwrap()).unwrap();
        append(dir.path(), "b", "R", serde_json::json!({})).unwrap();
        let before = std::fs::metadata(&head).unwrap();
        assert_eq!(before.len(), HEAD_BYTES as u64);
        for i in 0..3 {
            append(dir.path(), "c", "R", serde_json::json!({ "i": i })).unwrap();
        }
        let after = std::fs::metadata(&head).unwrap();
        assert_eq!(
            (after.ino(), after.len()),
            (before.ino(), HEAD_BYTES as u64)
        );
        assert_eq!(read_head(dir.path()).unwrap().entries, 5);
        assert_eq!(verify(dir.path()), Ok(5));
    }

    #[test]
    fn entries_are_chained_by_the_digest_of_the_previous_line() {
        let dir = tempfile::tempdir().unwrap();
        let a = append(
            dir.path(),
            "queue.discard",
            "R",
            serde_json::json!({"seq": 3}),
        )
        .unwrap();
        let b = append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        assert_eq!(a.prev, "0".repeat(64));
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        let first = text.lines().next().unwrap();
        assert_eq!(
            b.prev,
            hex::encode(exchange_protocol::digest::sm3(first.as_bytes()))
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A log of `n` entries in a fresh directory.
    fn log(n: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for seq in 1..=n {
            append(
                dir.path(),
                "batch.acked",
                "R",
                serde_json::json!({"seq": seq, "records": 10, "digest": "ab"}),
            )
            .unwrap();
        }
        dir
    }

    fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(path(dir))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn rewrite(dir: &Path, lines: &[String]) {
        std::fs::write(path(dir), lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn an_intact_log_verifies() {
        let dir = log(5);
        assert_eq!(verify(dir.path()), Ok(5));
        assert_eq!(verify(tempfile::tempdir().unwrap().path()), Ok(0));
    }

    #[test]
    fn a_flipped_byte_is_found_at_its_line() {
        let dir = log(5);
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        let third = lines(dir.path())[..2]
            .iter()
            .map(|l| l.len() + 1)
            .sum::<usize>();
        // A digit of the third entry's seq: still valid JSON, another value.
        let at = third + lines(dir.path())[2].find("\"seq\":3").unwrap() + 6;
        bytes[at] = b'7';
        std::fs::write(path(dir.path()), bytes).unwrap();
        let b = verify(dir.path()).unwrap_err();
        assert_eq!(b.line, 4, "{b}");
        assert!(b.what.contains("edited"), "{b}");
    }

    #[test]
    fn a_removed_entry_is_found() {
        let dir = log(5);
        let mut l = lines(dir.path());
        l.remove(1);
        rewrite(dir.path(), &l);
        assert_eq!(verify(dir.path()).unwrap_err().line, 2);
        let dir = log(3);
        let mut l = lines(dir.path());
        l.remove(0);
        rewrite(dir.path(), &l);
        let b = verify(dir.path()).unwrap_err();
        assert!(b.line == 1 && b.what.contains("removed"), "{b}");
    }

    #[test]
    fn two_swapped_entries_are_found() {
        let dir = log(5);
        let mut l = lines(dir.path());
        l.swap(2, 3);
        rewrite(dir.path(), &l);
        assert_eq!(verify(dir.path()).unwrap_err().line, 3);
    }

    #[test]
    fn a_truncated_log_is_found() {
        // At an entry boundary: only the head shows it.
        let dir = log(5);
        let l = lines(dir.path());
        rewrite(dir.path(), &l[..3]);
        let b = verify(dir.path()).unwrap_err();
        assert!(b.what.contains("truncated"), "{b}");
        // Within a line.
        let dir = log(5);
        let bytes = std::fs::read(path(dir.path())).unwrap();
        std::fs::write(path(dir.path()), &bytes[..bytes.len() - 20]).unwrap();
        let b = verify(dir.path()).unwrap_err();
        assert!(b.line == 5 && b.what.contains("truncated"), "{b}");
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_cut_off_and_recorded_at_the_next_write() {
        let dir = log(3);
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        let torn = br#"{"at":"2026-01-01T00:00:00.000Z","actor":"a","action":"verify","res"#;
        bytes.extend_from_slice(torn);
        std::fs::write(path(dir.path()), &bytes).unwrap();
        let found = verify(dir.path()).unwrap_err();
        assert!(
            found.what.contains("a crash while it was being written"),
            "{found}"
        );
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        assert_eq!(verify(dir.path()), Ok(5));
        let l = lines(dir.path());
        let recovered: Entry = serde_json::from_str(&l[3]).unwrap();
        assert_eq!(recovered.action, "audit.recovered");
        assert_eq!(recovered.detail["removed_bytes"], torn.len());
    }

    #[test]
    fn a_cut_that_power_loss_kept_from_its_entry_is_recorded_at_the_next_write() {
        let dir = log(3);
        let clean = std::fs::read(path(dir.path())).unwrap();
        let torn = br#"{"at":"2026-01-01T00:00:00.000Z","actor":"a","action":"resync","res"#;
        let mut bytes = clean.clone();
        bytes.extend_from_slice(torn);
        std::fs::write(path(dir.path()), &bytes).unwrap();
        // The cut as an append makes it, then power lost before its entry was written.
        let tail = Tail::read(dir.path()).unwrap();
        assert_eq!(tail.cut, torn.len() as u64);
        assert_eq!(std::fs::read(path(dir.path())).unwrap(), clean);
        assert!(
            cut_path(dir.path()).exists(),
            "the cut is noted before it is made"
        );
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        assert_eq!(verify(dir.path()), Ok(5));
        let recovered: Entry = serde_json::from_str(&lines(dir.path())[3]).unwrap();
        assert_eq!(recovered.action, "audit.recovered");
        assert_eq!(recovered.detail["removed_bytes"], torn.len());
        assert!(
            !cut_path(dir.path()).exists(),
            "the note goes once on record"
        );
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        assert_eq!(
            lines(dir.path())
                .iter()
                .filter(|l| l.contains("audit.recovered"))
                .count(),
            1,
            "recorded once"
        );
    }

    #[test]
    fn a_head_behind_the_log_or_missing_is_repaired_at_the_next_write() {
        // Rolled back one entry, as a crash between the log's fsync and the head leaves it.
        let dir = log(2);
        let old_head = std::fs::read(head_path(dir.path())).unwrap();
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        std::fs::write(head_path(dir.path()), &old_head).unwrap();
        let found = verify(dir.path()).unwrap_err();
        assert!(found.what.contains("written after the head"), "{found}");
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        assert_eq!(verify(dir.path()), Ok(5));
        // Deleted.
        std::fs::remove_file(head_path(dir.path())).unwrap();
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        assert_eq!(verify(dir.path()), Ok(7));
        let actions: Vec<String> = lines(dir.path())
            .iter()
            .map(|l| serde_json::from_str::<Entry>(l).unwrap().action)
            .collect();
        assert_eq!(
            actions.iter().filter(|a| *a == "audit.recovered").count(),
            2,
            "{actions:?}"
        );
    }

    #[test]
    fn entries_removed_from_the_end_stay_on_record_after_the_next_write() {
        let dir = log(5);
        let l = lines(dir.path());
        rewrite(dir.path(), &l[..3]);
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        assert_eq!(verify(dir.path()), Ok(5));
        let found = repairs(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert!(
            found[0].detail["what"]
                .as_str()
                .unwrap()
                .contains("entries were removed"),
            "{:?}",
            found[0]
        );
        assert_eq!(found[0].detail["head_entries"], 5);
    }

    #[test]
    fn rotation_never_renames_over_a_file_also_after_archiving() {
        let dir = log(3);
        // Rotated files as older versions named them, the oldest archived away.
        std::fs::rename(path(dir.path()), dir.path().join("audit.jsonl.2")).unwrap();
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        let kept = std::fs::read(dir.path().join("audit.jsonl.2")).unwrap();
        rotate(dir.path(), 2).unwrap();
        // A name already taken is never reused: the file is kept as it was.
        assert_eq!(
            std::fs::read(dir.path().join("audit.jsonl.2")).unwrap(),
            kept
        );
        assert!(dir.path().join("audit.jsonl.3").exists());
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        assert_eq!(verify(dir.path()), Ok(5));
    }

    #[test]
    fn rotation_keeps_one_chain_across_files() {
        let dir = log(3);
        // Rotate by hand as append does at ROTATE_BYTES.
        std::fs::rename(path(dir.path()), dir.path().join("audit.jsonl.1")).unwrap();
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        assert_eq!(verify(dir.path()), Ok(4));
        let mut out = Vec::new();
        assert_eq!(export(dir.path(), None, &mut out).unwrap(), 4);
        // Removing the older file breaks the chain at the start of the newer one.
        std::fs::remove_file(dir.path().join("audit.jsonl.1")).unwrap();
        let b = verify(dir.path()).unwrap_err();
        assert!(b.line == 1 && b.file == path(dir.path()), "{b}");
    }

    /// A data directory rotating every 2 KiB (about 8 entries) with `archive`, and `n`
    /// entries appended.
    fn rotating(archive: Option<Archive>, n: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        set_retention(
            dir.path(),
            Retention {
                max_file_bytes: 2048,
                archive,
            },
        );
        for seq in 1..=n {
            append(
                dir.path(),
                "batch.acked",
                "R",
                serde_json::json!({"seq": seq, "records": 10, "digest": "ab".repeat(32)}),
            )
            .unwrap();
        }
        dir
    }

    /// The entries of the rotated files of a directory and of `audit.jsonl` (if there).
    fn entries_in(dir: &Path) -> Vec<Entry> {
        let mut files: Vec<PathBuf> = rotated_in(dir).into_values().collect();
        files.push(path(dir));
        files
            .iter()
            .flat_map(|f| entries_of(f).unwrap())
            .map(|(e, _)| e)
            .collect()
    }

    fn archived_entries(dir: &Path) -> Vec<Entry> {
        entries_in(dir)
            .into_iter()
            .filter(|e| e.action == "audit.archived")
            .collect()
    }

    #[test]
    fn rotation_after_archiving_old_files_loses_nothing() {
        let archive = tempfile::tempdir().unwrap();
        let data = rotating(
            Some(Archive {
                keep: 2,
                to: ArchiveTo::Dir(archive.path().to_owned()),
            }),
            200,
        );
        // Passes run after each rotation in a thread of their own; this one waits for them.
        retain(data.path()).unwrap();
        assert_eq!(rotated_in(data.path()).len(), 2, "keep = 2 rotated files");
        assert!(rotated_in(archive.path()).len() > 10);
        // Every entry is in one place or the other, once, in chain order.
        let mut all = entries_in(archive.path());
        let here = entries_in(data.path());
        all.extend(here.iter().cloned());
        let seqs: Vec<u64> = all
            .iter()
            .filter(|e| e.action == "batch.acked")
            .map(|e| e.detail["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        let head = read_head(data.path()).unwrap();
        assert_eq!(head.entries, all.len() as u64);
        // The chain verifies with the archive, and without it from the oldest file present.
        let whole = verify_with(data.path(), Some(archive.path())).unwrap();
        assert_eq!((whole.entries, whole.checked), (head.entries, head.entries));
        assert_eq!(whole.archived, None);
        let local = verify_with(data.path(), None).unwrap();
        assert_eq!(local.entries, head.entries);
        assert_eq!(local.checked, here.len() as u64);
        let before = local.archived.unwrap();
        assert_eq!(before.entries, Some(head.entries - here.len() as u64));
        assert!(before.to.starts_with(&archive.path().display().to_string()));
        // Each record names its file's entries, its SM3 and where it went.
        let records = archived_entries(archive.path())
            .into_iter()
            .chain(archived_entries(data.path()))
            .collect::<Vec<_>>();
        assert_eq!(records.len(), rotated_in(archive.path()).len());
        let mut next_first = 1;
        for r in &records {
            let d = &r.detail;
            let name = d["file"].as_str().unwrap();
            let stored = archive.path().join(name);
            assert_eq!(d["to"], stored.display().to_string());
            assert_eq!(d["sm3"], hex::encode(FileFacts::read(&stored).unwrap().sm3));
            assert_eq!(d["first_entry"], next_first);
            let last = d["last_entry"].as_u64().unwrap();
            assert_eq!(
                name,
                format!("audit.jsonl.{last}"),
                "named by its last entry"
            );
            assert_eq!(last - next_first + 1, d["entries"].as_u64().unwrap());
            next_first = last + 1;
        }
    }

    #[test]
    fn with_an_archive_read_every_archived_file_must_be_there() {
        let archive = tempfile::tempdir().unwrap();
        let data = rotating(
            Some(Archive {
                keep: 1,
                to: ArchiveTo::Dir(archive.path().to_owned()),
            }),
            120,
        );
        retain(data.path()).unwrap();
        let stored: Vec<PathBuf> = rotated_in(archive.path()).into_values().collect();
        assert!(stored.len() >= 3);
        let name = |f: &Path| f.file_name().unwrap().to_str().unwrap().to_owned();
        // An empty archive: every archived file is missing, and named.
        let empty = tempfile::tempdir().unwrap();
        // (The records of the older ones are in those files, each file named by a later one.)
        let b = verify_with(data.path(), Some(empty.path())).unwrap_err();
        assert!(b.what.starts_with("missing: "), "{b}");
        assert!(b.what.contains(&name(stored.last().unwrap())), "{b}");
        // The oldest archived file deleted: the chain from the next one still links to the
        // record of it, but the file is missing.
        let oldest = std::fs::read(&stored[0]).unwrap();
        std::fs::remove_file(&stored[0]).unwrap();
        let b = verify_with(data.path(), Some(archive.path())).unwrap_err();
        assert!(b.what.starts_with("missing: 1 archived file"), "{b}");
        assert!(b.what.contains(&name(&stored[0])), "{b}");
        // Without the archive, the chain is checked from the oldest file present, saying so.
        let v = verify_with(data.path(), None).unwrap();
        assert!(v.archived.is_some() && v.checked < v.entries);
        // Restored, the whole chain verifies.
        std::fs::write(&stored[0], &oldest).unwrap();
        let v = verify_with(data.path(), Some(archive.path())).unwrap();
        assert_eq!((v.archived, v.checked), (None, v.entries));
        // A file changed in the archive (an empty line added keeps the chain): its SM3 differs.
        let mut bytes = std::fs::read(&stored[1]).unwrap();
        bytes.extend_from_slice(b"\n");
        std::fs::write(&stored[1], &bytes).unwrap();
        let b = verify_with(data.path(), Some(archive.path())).unwrap_err();
        assert_eq!(b.file, stored[1], "{b}");
        assert!(b.what.contains("changed since"), "{b}");
    }

    #[test]
    fn an_archive_command_that_moves_its_file_loses_nothing() {
        let scripts = tempfile::tempdir().unwrap();
        let moved = tempfile::tempdir().unwrap();
        let data = rotating(None, 60);
        let rotated = rotated_in(data.path()).len();
        assert!(rotated >= 2);
        let argv = shell(
            scripts.path(),
            &format!(
                "test \"$(stat -c %a \"$(dirname \"$1\")\")\" = 700 || exit 9\nmv \"$1\" '{}'/\n",
                moved.path().display()
            ),
        );
        set_retention(
            data.path(),
            Retention {
                max_file_bytes: 2048,
                archive: Some(Archive {
                    keep: 0,
                    to: ArchiveTo::Command {
                        argv,
                        timeout: std::time::Duration::from_secs(60),
                    },
                }),
            },
        );
        retain(data.path()).unwrap();
        assert!(rotated_in(data.path()).is_empty());
        assert!(rotated_in(moved.path()).len() >= rotated);
        assert!(
            rotated_in(&staging_dir(data.path())).is_empty(),
            "no copy left"
        );
        let records = archived_entries(moved.path())
            .into_iter()
            .chain(archived_entries(data.path()))
            .collect::<Vec<_>>();
        assert_eq!(records.len(), rotated_in(moved.path()).len());
        let v = verify_with(data.path(), Some(moved.path())).unwrap();
        assert_eq!((v.archived, v.checked), (None, v.entries));
        let seqs: Vec<u64> = entries_in(moved.path())
            .into_iter()
            .chain(entries_in(data.path()))
            .filter(|e| e.action == "batch.acked")
            .map(|e| e.detail["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    }

    #[test]
    fn entries_in_archived_files_are_found_for_recovery() {
        let archive = tempfile::tempdir().unwrap();
        let data = rotating(
            Some(Archive {
                keep: 0,
                to: ArchiveTo::Dir(archive.path().to_owned()),
            }),
            60,
        );
        retain(data.path()).unwrap();
        let mut seqs = std::collections::BTreeSet::new();
        for_each_since_archived(data.path(), i64::MIN, |e| {
            if e.action == "batch.acked" {
                seqs.insert(e.detail["seq"].as_u64().unwrap());
            }
        })
        .unwrap();
        assert_eq!(seqs, (1..=60).collect());
        // Known from the log's own records when this process set no retention.
        RETENTION.lock().unwrap().retain(|(d, _)| d != data.path());
        assert_eq!(archive_dir_of(data.path()), Some(archive.path().to_owned()));
    }

    #[test]
    fn a_head_counted_afresh_after_archiving_counts_the_archived_entries() {
        let archive = tempfile::tempdir().unwrap();
        let data = rotating(
            Some(Archive {
                keep: 0,
                to: ArchiveTo::Dir(archive.path().to_owned()),
            }),
            40,
        );
        retain(data.path()).unwrap();
        assert!(rotated_in(data.path()).is_empty(), "keep = 0: none stays");
        let entries = verify(data.path()).unwrap();
        std::fs::remove_file(head_path(data.path())).unwrap();
        append(data.path(), "resync", "R", serde_json::json!({})).unwrap();
        assert_eq!(verify(data.path()), Ok(entries + 2));
        let found = repairs(data.path()).unwrap();
        assert_eq!(found.last().unwrap().detail["entries"], entries);
    }

    #[test]
    fn without_an_archive_every_rotated_file_stays() {
        let data = rotating(None, 100);
        let rotated = rotated_in(data.path()).len();
        assert!(rotated > 5);
        assert_eq!(retain(data.path()), Ok(0));
        assert_eq!(rotated_in(data.path()).len(), rotated);
        assert!(archived_entries(data.path()).is_empty());
        assert_eq!(verify(data.path()), Ok(100));
    }

    /// `/bin/sh` running `script`, written to a file of its own in `dir` before it is named
    /// (a pass started earlier never runs it half written). Not executed itself: writing it
    /// while another test forks could leave it busy.
    fn shell(dir: &Path, script: &str) -> Vec<String> {
        let n = std::fs::read_dir(dir).unwrap().count();
        let file = dir.join(format!("archive-{n}.sh"));
        std::fs::write(&file, script).unwrap();
        vec!["/bin/sh".into(), file.display().to_string()]
    }

    #[test]
    fn a_failing_archive_command_leaves_the_file_in_place_until_it_succeeds() {
        let scripts = tempfile::tempdir().unwrap();
        let shipped = tempfile::tempdir().unwrap();
        let data = rotating(None, 30);
        let rotated: Vec<PathBuf> = rotated_in(data.path()).into_values().collect();
        assert!(rotated.len() >= 2);
        let argv = shell(
            scripts.path(),
            "echo 'the backup host is unreachable' >&2\nexit 3\n",
        );
        let command = |argv: Vec<String>, timeout| {
            Some(Archive {
                keep: 0,
                to: ArchiveTo::Command { argv, timeout },
            })
        };
        let retention = |archive| Retention {
            max_file_bytes: 2048,
            archive,
        };
        set_retention(
            data.path(),
            retention(command(argv.clone(), std::time::Duration::from_secs(60))),
        );
        let e = retain(data.path()).unwrap_err();
        assert_eq!(e.file, rotated[0], "the oldest first");
        assert!(e.reason.contains("the backup host is unreachable"), "{e}");
        assert!(e.reason.contains("exit status: 3"), "{e}");
        assert_eq!(
            rotated_in(data.path()).into_values().collect::<Vec<_>>(),
            rotated
        );
        assert!(archived_entries(data.path()).is_empty());
        // A command that hangs is killed, and the file kept.
        let hangs = shell(scripts.path(), "exec sleep 60\n");
        set_retention(
            data.path(),
            retention(command(hangs, std::time::Duration::from_millis(200))),
        );
        let e = retain(data.path()).unwrap_err();
        assert!(e.reason.contains("did not finish"), "{e}");
        assert_eq!(rotated_in(data.path()).len(), rotated.len());
        // Once the command succeeds, every file goes, each recorded.
        let copies = shell(
            scripts.path(),
            &format!("cp \"$1\" '{}'/\n", shipped.path().display()),
        );
        set_retention(
            data.path(),
            retention(command(copies.clone(), std::time::Duration::from_secs(60))),
        );
        retain(data.path()).unwrap();
        assert!(rotated_in(data.path()).is_empty());
        assert!(rotated_in(shipped.path()).len() >= rotated.len());
        let records: Vec<Entry> = archived_entries(shipped.path())
            .into_iter()
            .chain(archived_entries(data.path()))
            .collect();
        assert_eq!(records[0].detail["command"], copies.join(" "));
        assert_eq!(records[0].detail["first_entry"], 1);
        let v = verify_with(data.path(), Some(shipped.path())).unwrap();
        assert_eq!((v.archived, v.checked), (None, v.entries));
        let v = verify_with(data.path(), None).unwrap();
        assert!(v.archived.unwrap().to.contains("the command"));
    }

    #[test]
    fn a_file_stored_before_a_crash_is_taken_as_stored_and_another_is_never_overwritten() {
        let archive = tempfile::tempdir().unwrap();
        let data = rotating(None, 30);
        let rotated: Vec<PathBuf> = rotated_in(data.path()).into_values().collect();
        let name = |f: &PathBuf| f.file_name().unwrap().to_owned();
        // The oldest was stored, then the process died before recording it.
        std::fs::copy(&rotated[0], archive.path().join(name(&rotated[0]))).unwrap();
        // The next has a namesake of other contents in the archive.
        std::fs::write(archive.path().join(name(&rotated[1])), b"other\n").unwrap();
        set_retention(
            data.path(),
            Retention {
                max_file_bytes: 2048,
                archive: Some(Archive {
                    keep: 0,
                    to: ArchiveTo::Dir(archive.path().to_owned()),
                }),
            },
        );
        let e = retain(data.path()).unwrap_err();
        assert_eq!(e.file, rotated[1]);
        assert!(e.reason.contains("never overwritten"), "{e}");
        assert_eq!(
            std::fs::read(archive.path().join(name(&rotated[1]))).unwrap(),
            b"other\n"
        );
        assert!(!rotated[0].exists() && rotated[1].exists());
        assert_eq!(archived_entries(data.path()).len(), 1);
        assert!(verify(data.path()).is_ok());
    }

    #[test]
    fn export_since_keeps_later_entries_as_stored() {
        let dir = log(2);
        let cut = chrono::Utc::now() + chrono::Duration::milliseconds(5);
        // Entries are stamped to the millisecond: the next one must be stamped after `cut`.
        while chrono::Utc::now() <= cut + chrono::Duration::milliseconds(1) {
            std::thread::yield_now();
        }
        append(dir.path(), "resync", "R", serde_json::json!({})).unwrap();
        let mut out = Vec::new();
        assert_eq!(export(dir.path(), Some(cut), &mut out).unwrap(), 1);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.trim_end(), lines(dir.path())[2]);
    }
}
