//! The audit log: what the service and operators did, appended to `<data_dir>/audit.jsonl`:
//! service start and configuration loads and reloads (with the file's SM3), every batch the
//! hub acknowledged (resource, seq, record count, content digest), every verification request
//! (answered, denied or throttled), every connection the verification listener refused in
//! its TLS handshake (`connection.rejected`), and operator commands that change the queue.
//!
//! # Format
//! One JSON object per line, [`Entry`], in the order written. Each entry's `prev` is the SM3
//! (hex) of the previous line's bytes (without its newline); the first entry's `prev` is 64
//! zeros. An edited, removed or reordered entry therefore breaks the chain at that point.
//!
//! **Rotation.** When `audit.jsonl` reaches [`ROTATE_BYTES`] it is renamed
//! `audit.jsonl.<n>`, n the number of entries in the chain so far (older versions used 1, 2,
//! …; files sort by n, oldest lowest), never over an existing file, and a new `audit.jsonl`
//! begins whose first `prev` is the SM3 of the last line of the file before: the chain runs
//! across the files.
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
//! - The files are created 0600.
//! - An entry never holds a field value: resource codes, sequence numbers, record counts,
//!   content digests, configuration digests, and the operator's words; a verification's
//!   subjects only as keyed pseudonyms, never a claimed or stored value.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Size at which `audit.jsonl` is rotated.
pub const ROTATE_BYTES: u64 = 64 << 20;

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who: the login that ran the command (`SUDO_USER`, else `USER`, else the uid).
    pub actor: String,
    /// What, e.g. `queue.discard`, `cursor.reset`, `resync`, `batch.acked`, `config.reload`.
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

/// The files of the chain, oldest first: `audit.jsonl.1`, `.2`, …, then `audit.jsonl`.
pub fn files(data_dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u64, PathBuf)> = std::fs::read_dir(data_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("audit.jsonl.")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort();
    let mut all: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
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
            let (counted, digests) = count_entries(data_dir).map_err(err)?;
            // A crash leaves the head behind the log, naming an entry the log holds; a head
            // ahead of the log, or naming an entry it does not hold, means entries are gone.
            let behind = written.as_ref().is_some_and(|h| {
                h.entries < counted
                    && h.entries > 0
                    && digests
                        .get(h.entries as usize - 1)
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
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= ROTATE_BYTES) {
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
        prev = hex::encode(crate::queue::sm3_bytes(&line));
        head.entries += 1;
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
        entries.push(entry);
    }
    head.last_sm3 = prev;
    file.write_all(&bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    let entries = entries.split_off(first_job);
    durable(&entries);
    write_head(data_dir, &head).map_err(err)?;
    Ok(entries)
}

/// Where the chain ends on disk.
struct Tail {
    /// The SM3 of the last complete line of the newest file holding one; `None` for an empty
    /// log.
    last: Option<[u8; 32]>,
    /// Bytes cut from the end of `audit.jsonl` after its last newline (a torn line).
    cut: u64,
}

impl Tail {
    /// Finds the end of the chain: cuts a torn line off the end of `audit.jsonl` (synced), then
    /// reads the last complete line of the newest file holding one (after a rotation that a
    /// crash interrupted, `audit.jsonl` may not exist or be empty yet).
    fn read(data_dir: &Path) -> std::io::Result<Tail> {
        let current = path(data_dir);
        let mut cut = 0;
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&current)
        {
            let len = f.metadata()?.len();
            let keep = complete_length(&f, len)?;
            if keep < len {
                f.set_len(keep)?;
                f.sync_all()?;
                cut = len - keep;
            }
            // The usual case: the current file's own last line, without listing the directory.
            if keep > 0 {
                return Ok(Tail {
                    last: line_before(&f, keep)?.map(|l| crate::queue::sm3_bytes(&l)),
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
                    last: Some(crate::queue::sm3_bytes(&line)),
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

/// Entries in every file of the chain (non-empty lines), and the SM3 of each.
fn count_entries(data_dir: &Path) -> std::io::Result<(u64, Vec<[u8; 32]>)> {
    let mut digests = Vec::new();
    for f in files(data_dir) {
        match std::fs::read(&f) {
            Ok(bytes) => digests.extend(
                bytes
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(crate::queue::sm3_bytes),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok((digests.len() as u64, digests))
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
            let mut head = Head::default();
            for f in files(data_dir) {
                let Ok(file) = std::fs::File::open(&f) else {
                    continue;
                };
                for line in std::io::BufReader::new(file).lines() {
                    let line = line?;
                    if !line.is_empty() {
                        head.entries += 1;
                        head.last_sm3 = hex::encode(crate::queue::sm3_bytes(line.as_bytes()));
                    }
                }
            }
            Ok(head)
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
            Some((entry, crate::queue::sm3_bytes(line)))
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

/// Calls `f` with every entry written at or after `since_ms` (milliseconds since 1970), in
/// the order written, reading only the files that can hold one: the newest files back to the
/// first whose first entry is older.
pub fn for_each_since(
    data_dir: &Path,
    since_ms: i64,
    mut f: impl FnMut(Entry),
) -> std::io::Result<()> {
    let all = files(data_dir);
    let first_at = |file: &Path| -> std::io::Result<Option<i64>> {
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
    };
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

/// Checks the whole chain (every file, then the head): `Ok(entries)` when intact, else the
/// first place where it breaks.
pub fn verify(data_dir: &Path) -> Result<u64, Break> {
    let mut prev = "0".repeat(64);
    let mut entries = 0u64;
    // The SM3 of the entry the head says is the last, once the walk reaches it.
    let head_count = read_head(data_dir).ok().map(|h| h.entries);
    let mut at_head_count = None;
    let mut last_file = path(data_dir);
    for f in files(data_dir) {
        let bytes = match std::fs::read(&f) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Break {
                    file: f,
                    line: 0,
                    what: format!("cannot read: {e}"),
                });
            }
        };
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            let line = bytes.split(|b| *b == b'\n').count();
            return Err(Break {
                file: f,
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
            let entry: Entry = serde_json::from_slice(line)
                .map_err(|e| at(format!("not an audit entry ({e}): edited or damaged")))?;
            if entry.prev != prev {
                return Err(at(if entries == 0 {
                    "the first entry does not start the chain: entries before it were removed"
                        .into()
                } else {
                    format!(
                        "`prev` does not match entry {entries} before it: this entry or the one before was edited, or entries were removed or reordered here"
                    )
                }));
            }
            prev = hex::encode(crate::queue::sm3_bytes(line));
            entries += 1;
            if Some(entries) == head_count {
                at_head_count = Some(prev.clone());
            }
        }
        last_file = f;
    }
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
    Ok(entries)
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
                hex::encode(crate::queue::sm3_bytes(pair[0].as_bytes()))
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
            hex::encode(crate::queue::sm3_bytes(first.as_bytes()))
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
