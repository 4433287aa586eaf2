//! The writers of the log: [`append`] (one entry, now) and [`Writer`] (a thread of its own,
//! group commit of the entries of many requests), each asking for an archival pass after an
//! append that rotated the log.

use std::path::{Path, PathBuf};

use super::archiver::archive_after;
use super::chain::{Fields, actor, append_many};
use super::{AuditError, Entry};

/// Appends one entry, chained to the last one, and syncs it to disk.
pub fn append(
    data_dir: &Path,
    action: &str,
    resource: &str,
    detail: serde_json::Value,
) -> Result<Entry, AuditError> {
    let job = (actor(), action.to_owned(), resource.to_owned(), detail);
    append_many(data_dir, vec![job], |_| {})
        .map(|appended| archive_after(data_dir, appended))
        .map(|mut entries| entries.remove(0))
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
                        (Ok(appended), _) => {
                            archive_after(&data_dir, appended);
                        }
                        (Err(e), Some(replies)) => {
                            for reply in replies {
                                let _ = reply.send(Err(AuditError {
                                    path: e.path.clone(),
                                    cause: std::io::Error::new(
                                        e.cause.kind(),
                                        e.cause.to_string(),
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
            cause: std::io::Error::other("the audit writer thread has stopped"),
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
