//! Pulls of a file drop resource: each complete file in its directory, oldest first, read in
//! chunks of `batch.max_records` rows through the policy into the queue, then moved to `done/`
//! (or, if it cannot be read at all, to `rejected/` with `NAME.reason`).
//!
//! Invariants (exactly once, whatever crashes when):
//! - a chunk's records, its quarantine entries and the file's progress ([`FileProgress`]:
//!   name, SM3 digest, rows committed) commit in one queue transaction, so a crash resumes
//!   the same file after its last committed row, and a file changed meanwhile (another digest)
//!   is read from its start as a new file;
//! - the last chunk's transaction also records the name the file gets in `done/`; the move
//!   follows, then `moved` is recorded. A crash between the two is finished by the next pull
//!   (the file, found with the same digest, is moved without being read again);
//! - in `snapshot` mode each file is one scan of the resource: rows compared with the digests
//!   of what the hub has, then a sweep deletes the keys the file did not hold, before the next
//!   file is read; in `upsert` mode every row leaves as an upsert and nothing is deleted;
//! - a row that cannot be read (its reason from the reader) or converted is quarantined with
//!   `NAME:LINE` as its locator; nothing of the row's values is kept;
//! - every file read or rejected leaves an audit entry (`file.done`, `file.rejected`) with its
//!   name, digest and counts.

use exchange_connectors::ConnectorError;
use exchange_connectors::files::drop::{DropDir, digest};
use exchange_connectors::files::read::{FileReader, FileRow};
use exchange_connectors::files::{FieldType, FileError, FileFormat};
use exchange_protocol::lang::Text;
use exchange_protocol::tr;

use crate::config::{EachFile, FileResource};
use crate::pipeline::queue::{Baseline, FileProgress};

use super::snapshot::ScanPage;
use super::{PullError, PullReport, Puller};

/// A chunk of a file, read: its rows and whether the file ended with it.
struct Chunk {
    rows: Vec<FileRow>,
    last: bool,
}

impl Puller {
    /// Reads every complete file of the resource's drop directory.
    pub(super) async fn files_pull(
        &self,
        file: &FileResource,
        report: &mut PullReport,
        publish: &(dyn Fn(&PullReport) + Sync),
    ) -> Result<(), PullError> {
        let drop = DropDir::open(&file.dir(), file.drop.ready)
            .map_err(|e| self.unreadable(&file.dir(), e))?;
        self.upsert_baseline(file).await?;
        self.finish_move(&drop).await?;
        self.finish_sweep(report).await?;
        if let Some(after) = file.drop.delete_after {
            let deleted = drop
                .delete_done(after)
                .map_err(|e| self.unreadable(drop.path(), e))?;
            if deleted > 0 {
                tracing::info!(resource = %self.resource.code, files = deleted, "Deleted processed files past delete_after.");
            }
        }
        let mut complete = drop
            .complete()
            .map_err(|e| self.unreadable(drop.path(), e))?;
        // A file a crash (or a failed pull) left half read goes first, whatever came since:
        // its progress is the one slot the queue keeps.
        if let Some(p) = self.queue.state(&self.resource.code)?.file
            && p.done_as.is_none()
            && let Some(i) = complete.iter().position(|d| d.name == p.name)
        {
            let unfinished = complete.remove(i);
            complete.insert(0, unfinished);
        }
        for dropped in complete {
            let Some(format) = dropped.format else {
                let reason = tr!(
                    "not a file this drop reads: expected .csv, .jsonl (.ndjson) or .xlsx",
                    "不是可读取的文件类型：应为 .csv、.jsonl（.ndjson）或 .xlsx"
                );
                self.reject(&drop, &dropped.name, None, &reason)?;
                continue;
            };
            self.read_file(file, &drop, &dropped.name, format, report, publish)
                .await?;
            self.finish_move(&drop).await?;
            self.finish_sweep(report).await?;
            publish(report);
        }
        Ok(())
    }

    /// An `upsert` stream has no baseline to complete (each file adds to what the hub has):
    /// its baseline is marked complete without a mark, so the hub never sweeps it.
    async fn upsert_baseline(&self, file: &FileResource) -> Result<(), PullError> {
        if file.each_file != EachFile::Upsert {
            return Ok(());
        }
        let code = self.resource.code.clone();
        self.blocking(move |txn| {
            let mut st = txn.state(&code)?;
            if st.baseline.is_reading() {
                st.baseline = Baseline::Complete { seq: 0 };
                txn.set_state(&code, &st)?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Moves the file whose rows were all committed but that a crash left in the directory,
    /// and records that it was moved.
    async fn finish_move(&self, drop: &DropDir) -> Result<(), PullError> {
        let st = self.queue.state(&self.resource.code)?;
        let Some(progress) = st.file.filter(|p| !p.moved) else {
            return Ok(());
        };
        let Some(done_as) = progress.done_as.clone() else {
            return Ok(());
        };
        let path = drop.file(&progress.name);
        let same = match digest(&path) {
            Ok(d) => d == progress.digest,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            // Not known to be another file: try again later rather than read it twice.
            Err(e) => return Err(self.unreadable(&path, e)),
        };
        if same {
            drop.move_done(&progress.name, &done_as)
                .map_err(|e| self.unreadable(&path, e))?;
        }
        let moved = same || drop.is_done(&done_as);
        if !moved {
            tracing::warn!(resource = %self.resource.code, file = %progress.name, "A file whose rows were all queued is gone from the drop directory; nothing to move.");
        }
        let code = self.resource.code.clone();
        self.blocking(move |txn| {
            let mut st = txn.state(&code)?;
            if let Some(p) = st.file.as_mut() {
                p.moved = true;
            }
            txn.set_state(&code, &st)
        })
        .await?;
        // After the move: a crash before it is recorded moves nothing again, and at worst
        // audits the file twice.
        self.audit_file(
            "file.done",
            &progress,
            serde_json::json!({
                "rows": progress.rows,
                "records": progress.records,
                "quarantined": progress.quarantined,
                "unkeyed": progress.unkeyed,
                "done_as": done_as,
                "moved": moved,
            }),
        );
        tracing::info!(resource = %self.resource.code, file = %progress.name, rows = progress.rows, records = progress.records, quarantined = progress.quarantined, "Read a dropped file.");
        Ok(())
    }

    /// Ends a snapshot file's sweep (the deletes of the keys it did not hold).
    async fn finish_sweep(&self, report: &mut PullReport) -> Result<(), PullError> {
        loop {
            let state = self.queue.state(&self.resource.code)?;
            if !state.snapshot.sweeping {
                return Ok(());
            }
            self.wait_for_space().await?;
            self.snapshot_step(state, report).await?;
            self.enqueued.notify_waiters();
        }
    }

    /// Reads one file, from where a crash left it, chunk by chunk into the queue.
    async fn read_file(
        &self,
        file: &FileResource,
        drop: &DropDir,
        name: &str,
        format: FileFormat,
        report: &mut PullReport,
        publish: &(dyn Fn(&PullReport) + Sync),
    ) -> Result<(), PullError> {
        let path = drop.file(name);
        let before = stamp(&path);
        let Some((mut reader, mut progress)) = self.open_file(file, drop, name, format).await?
        else {
            return Ok(());
        };
        loop {
            let first = progress.rows == 0;
            let chunk;
            (reader, chunk) = self.next_chunk(reader).await;
            let chunk = chunk.map_err(|e| {
                self.unreadable(&drop.file(name), std::io::Error::other(e.to_string()))
            })?;
            if first && chunk.last && chunk.rows.is_empty() && file.each_file == EachFile::Snapshot
            {
                let reason = tr!(
                    "the file has no rows: as a snapshot it would delete every record of the resource at the hub. If the resource is really empty now, drop a file holding one row per record that should stay, or change the resource's mode",
                    "该文件没有数据行：作为快照会在交换中心删除该资源的全部记录。如果资源现在确实为空，请投放包含应保留记录的文件，或更改资源的模式"
                );
                return self.reject(drop, name, Some(&progress.digest), &reason);
            }
            progress.rows += chunk.rows.len() as u64;
            if chunk.last {
                // Written to while it was read (a sender that stalled longer than `settle`):
                // not finished; the next pull reads it anew, as a new file.
                if stamp(&path) != before {
                    let e = std::io::Error::other(tr!(
                        "the file changed while it was read; it is read again at the next pull (make `settle` longer, or have senders write a marker or rename when done)",
                        "文件在读取期间被改动；下次抽取时重新读取（请加长 `settle`，或让发送方写完后再写标记或改名）"
                    ));
                    return Err(self.unreadable(&path, e));
                }
                progress.done_as = Some(drop.done_name(name));
            }
            self.wait_for_space().await?;
            let (r, q) = self
                .commit_file_chunk(file, chunk.rows, &progress, (first, chunk.last))
                .await?;
            let st = self.queue.state(&self.resource.code)?;
            if let Some(stored) = st.file {
                progress = stored;
            }
            report.pages += 1;
            report.records += r;
            report.quarantined += q;
            self.enqueued.notify_waiters();
            publish(report);
            if chunk.last {
                return Ok(());
            }
        }
    }

    /// Up to `batch.max_records` rows of the file, read off the runtime; `Err` when the file
    /// cannot be read further (nothing of this chunk is committed).
    async fn next_chunk(&self, mut reader: FileReader) -> (FileReader, Result<Chunk, FileError>) {
        let limit = self.batch.max_records.max(1);
        tokio::task::spawn_blocking(move || {
            let mut rows = Vec::with_capacity(limit);
            while rows.len() < limit {
                match reader.next_row() {
                    Some(Ok(row)) => rows.push(row),
                    Some(Err(e)) => return (reader, Err(e)),
                    None => return (reader, Ok(Chunk { rows, last: true })),
                }
            }
            (reader, Ok(Chunk { rows, last: false }))
        })
        .await
        .expect("file task panicked")
    }

    /// Commits a chunk's records and quarantine entries with the file's progress (`first`,
    /// `last`: the chunk's place in the file). In snapshot mode a file that replaces one left
    /// half read starts a new generation (the rows that one stamped are not duplicates), and
    /// the last chunk starts the sweep, unless a row without a readable key was quarantined:
    /// then no key is deleted for this file (one of them may be that row's), and the next file
    /// is a new generation. Returns records and rows quarantined.
    async fn commit_file_chunk(
        &self,
        file: &FileResource,
        rows: Vec<FileRow>,
        progress: &FileProgress,
        (first, last): (bool, bool),
    ) -> Result<(u64, u64), PullError> {
        let plan = self.plan.clone();
        let code = self.resource.code.clone();
        let limits = self.batch;
        let mut progress = progress.clone();
        let snapshot = file.each_file == EachFile::Snapshot;
        Ok(self
            .blocking(move |txn| {
                let mut st = txn.state(&code)?;
                let abandoned = st.file.as_ref().is_some_and(|p| {
                    p.done_as.is_none() && (p.name != progress.name || p.digest != progress.digest)
                });
                if snapshot && first && abandoned {
                    st.snapshot.generation = st.snapshot.generation.max(1) + 1;
                }
                let generation = st.snapshot.generation.max(1);
                let mut page = ScanPage::new(&plan, &code, generation, st, limits);
                page.compare = snapshot;
                for FileRow { line, row } in rows {
                    let at = format!("{}:{line}", progress.name);
                    match row {
                        Ok(row) => {
                            if plan.key_of(&row).is_err_and(|q| q.key.is_none()) {
                                progress.unkeyed += 1;
                            }
                            page.at = Some(at);
                            page.row(txn, &row)?;
                        }
                        Err(reason) => {
                            progress.unkeyed += 1;
                            let reason = Text::from(reason);
                            txn.quarantine_row(&code, &mut page.st, None, reason, Some(at))?;
                            page.quarantined += 1;
                        }
                    }
                }
                let (mut st, records, quarantined) = page.finish(txn)?;
                progress.records += records;
                progress.quarantined += quarantined;
                if snapshot {
                    let sweep = last && progress.unkeyed == 0;
                    st.snapshot.generation = if last && !sweep {
                        generation + 1
                    } else {
                        generation
                    };
                    st.snapshot.sweeping = sweep;
                } else if last {
                    st.invalid_keys += std::mem::take(&mut st.snapshot.invalid_keys);
                    st.invalid_keys_since
                        .get_or_insert_with(crate::pipeline::queue::now);
                }
                st.file = Some(progress);
                txn.set_state(&code, &st)?;
                Ok((records, quarantined))
            })
            .await?)
    }
}

/// A file's size and change times, to tell whether it changed while it was read.
fn stamp(path: &std::path::Path) -> Option<(u64, i64, i64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// Opening a file: its digest, where a crash left it, its header.
impl Puller {
    /// Opens a dropped file after the rows already committed (same name and digest); `None`
    /// when it was taken away or rejected.
    async fn open_file(
        &self,
        file: &FileResource,
        drop: &DropDir,
        name: &str,
        format: FileFormat,
    ) -> Result<Option<(FileReader, FileProgress)>, PullError> {
        let path = drop.file(name);
        let sum = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || digest(&path))
                .await
                .expect("digest task panicked")
        };
        let sum = match sum {
            Ok(d) => d,
            // Taken away since it was listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // Not the agent's to read (or a link): set aside with what to do, so the files
            // after it go on.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput
                ) || e.raw_os_error() == Some(libc::ELOOP) =>
            {
                let reason = tr!(
                    "the agent cannot read it ({}): it must be a regular file (not a link) its group can read; senders should write with umask 007",
                    "本程序无法读取该文件（{}）：它必须是普通文件（不能是链接），且属组可读；发送方写文件时应使用 umask 007",
                    exchange_protocol::translate::io(&e)
                );
                return self.reject(drop, name, None, &reason).map(|()| None);
            }
            Err(e) => return Err(self.unreadable(&path, e)),
        };
        let st = self.queue.state(&self.resource.code)?;
        let progress = match st.file {
            Some(p) if p.name == name && p.digest == sum && p.done_as.is_none() => p,
            _ => FileProgress {
                name: name.to_owned(),
                digest: sum.clone(),
                ..FileProgress::default()
            },
        };
        let resume = progress.rows;
        let columns: Vec<(String, FieldType)> = self
            .plan
            .selection
            .columns
            .iter()
            .map(|c| (c.clone(), file.type_of(c)))
            .collect();
        let encoding = file.drop.encoding;
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut r = FileReader::open(&path, format, encoding, &columns)?;
                r.skip(resume)?;
                Ok::<_, FileError>(r)
            })
            .await
            .expect("file task panicked")
        };
        let reader = match opened {
            Ok(r) => r,
            Err(e @ FileError::Malformed(_)) => {
                return self
                    .reject(drop, name, Some(&sum), &e.to_string())
                    .map(|()| None);
            }
            // Read again at the next pull, from the last committed row.
            Err(e @ FileError::Io { .. }) => {
                return Err(self.unreadable(&path, std::io::Error::other(e.to_string())));
            }
        };
        Ok(Some((reader, progress)))
    }

    /// Moves a file that cannot be read to `rejected/` with its reason, audited.
    fn reject(
        &self,
        drop: &DropDir,
        name: &str,
        sum: Option<&str>,
        reason: &str,
    ) -> Result<(), PullError> {
        let as_name = drop
            .reject(name, reason)
            .map_err(|e| self.unreadable(&drop.file(name), e))?;
        tracing::warn!(resource = %self.resource.code, file = %name, %reason, "Rejected a dropped file.");
        let progress = FileProgress {
            name: name.to_owned(),
            digest: sum.unwrap_or_default().to_owned(),
            ..FileProgress::default()
        };
        self.audit_file(
            "file.rejected",
            &progress,
            serde_json::json!({ "reason": reason, "rejected_as": as_name }),
        );
        Ok(())
    }

    fn audit_file(&self, kind: &str, progress: &FileProgress, mut detail: serde_json::Value) {
        detail["file"] = progress.name.clone().into();
        if !progress.digest.is_empty() {
            detail["sm3"] = progress.digest.clone().into();
        }
        let Some(data_dir) = self.queue.path().parent() else {
            return;
        };
        if let Err(e) = crate::audit::append(data_dir, kind, &self.resource.code, detail) {
            tracing::error!(resource = %self.resource.code, error = %e, "Could not append to the audit log.");
        }
    }

    /// The drop directory (or a file in it) cannot be read: retried with backoff, as an
    /// unreachable database is.
    fn unreadable(&self, path: &std::path::Path, e: std::io::Error) -> PullError {
        PullError::Source(ConnectorError::Unreachable {
            source_name: self.resource.source.clone(),
            address: path.display().to_string(),
            reason: exchange_protocol::translate::io(&e),
        })
    }
}
