//! The audit log: what operators did to the queue and every verification request (answered,
//! denied or throttled), appended to `<data_dir>/audit.jsonl`.
//!
//! # Format
//! One JSON object per line, [`Entry`], in the order written. Each entry's `prev` is the SM3
//! (hex) of the previous line's bytes (without its newline); the first entry's `prev` is 64
//! zeros. An edited, removed or reordered entry therefore breaks the chain at that point.
//!
//! # Invariants
//! - Append only: the file is opened for appending, never rewritten; each entry is flushed
//!   to disk (fsync) before the command reports success.
//! - The file is created 0600.
//! - An entry never holds a field value: resource codes, sequence numbers, record counts,
//!   content digests, and the operator's words; a verification's subjects only as keyed
//!   pseudonyms, never a claimed or stored value.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who: the login that ran the command (`SUDO_USER`, else `USER`, else the uid).
    pub actor: String,
    /// What, e.g. `queue.discard`, `cursor.reset`, `resync`.
    pub action: String,
    /// The resource concerned.
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

/// Appends one entry, chained to the last one, and syncs it to disk.
pub fn append(
    data_dir: &Path,
    action: &str,
    resource: &str,
    detail: serde_json::Value,
) -> Result<Entry, AuditError> {
    let path = path(data_dir);
    let prev = last_digest(&path)?;
    write(&path, prev, actor(), action, resource, detail).map(|(entry, _, _)| entry)
}

/// The SM3 (hex) of the file's last line, 64 zeros for an empty or missing file.
fn last_digest(path: &Path) -> Result<String, AuditError> {
    let err = |source| AuditError {
        path: path.to_owned(),
        source,
    };
    let prev = match std::fs::File::open(path) {
        Ok(f) => {
            let mut last = None;
            for line in std::io::BufReader::new(f).lines() {
                let line = line.map_err(err)?;
                if !line.is_empty() {
                    last = Some(line);
                }
            }
            last.map(|l| hex::encode(crate::queue::sm3_bytes(l.as_bytes())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(err(e)),
    };
    Ok(prev.unwrap_or_else(|| "0".repeat(64)))
}

/// Writes one entry after `prev` and syncs it; returns it with the file's new length and
/// the digest of the line written.
fn write(
    path: &Path,
    prev: String,
    actor: String,
    action: &str,
    resource: &str,
    detail: serde_json::Value,
) -> Result<(Entry, u64, String), AuditError> {
    let job = (actor, action.to_owned(), resource.to_owned(), detail);
    let (mut entries, len, digest) = write_many(path, prev, vec![job])?;
    Ok((entries.remove(0), len, digest))
}

/// What one entry says: actor, action, resource, detail.
type Fields = (String, String, String, serde_json::Value);

/// Writes entries chained after `prev` with one write and one fsync; returns them with the
/// file's new length and the digest of the last line written.
fn write_many(
    path: &Path,
    mut prev: String,
    jobs: Vec<Fields>,
) -> Result<(Vec<Entry>, u64, String), AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| AuditError {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    let mut bytes = Vec::new();
    // A line cut short by a crash stays on its own line.
    if ends_without_newline(&mut file).map_err(err)? {
        bytes.push(b'\n');
    }
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut entries = Vec::with_capacity(jobs.len());
    for (actor, action, resource, detail) in jobs {
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
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
        entries.push(entry);
    }
    file.write_all(&bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    Ok((entries, len, prev))
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
/// writes them with one write and one fsync (group commit), then tells each caller; a caller
/// goes on only once its entry is on disk. It keeps the digest of the last line it wrote and
/// the file's length then, so an entry costs no read of the file; when the length differs (an
/// operator command in another process appended meanwhile), the chain is read from the file
/// again.
#[derive(Debug)]
pub struct Writer {
    /// To the writer thread (which ends when this is dropped).
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Writer {
    /// A writer for the audit log of `data_dir`.
    pub fn new(data_dir: &Path) -> Writer {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let path = path(data_dir);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let mut last: Option<(u64, String)> = None;
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        jobs.push(more);
                    }
                    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    let prev = match last.take() {
                        Some((known, digest)) if known == len => Ok(digest),
                        _ => last_digest(&path),
                    };
                    let (fields, replies): (Vec<Fields>, Vec<_>) =
                        jobs.into_iter().map(|j| (j.fields, j.reply)).unzip();
                    match prev.and_then(|prev| write_many(&path, prev, fields)) {
                        Ok((entries, len, digest)) => {
                            last = Some((len, digest));
                            for (entry, reply) in entries.into_iter().zip(replies) {
                                let _ = reply.send(Ok(entry));
                            }
                        }
                        Err(e) => {
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

/// Whether a non-empty file's last byte is not a newline.
fn ends_without_newline(file: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
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
}
