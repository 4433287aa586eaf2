//! The archiver: one pass at a time per data directory, in a thread of its own, after a
//! rotation and at start, moves the rotated files beyond those kept to the archive, oldest
//! first, recording each (`audit.archived`) before it leaves the data directory (the format and
//! its invariants are stated in the [`super`] module).

use std::path::{Path, PathBuf};

use exchange_protocol::tr;
use exchange_protocol::translate::io;

use super::archive::{FileFacts, run_archive_command, stage, store_in};
use super::chain::{Appended, actor, append_many};
use super::files::{Start, listed_start};
use super::retention::{Archive, ArchiveTo, RETENTION, Retention, retention_of};
use super::{DEFAULT_KEEP, Entry, path};

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

/// Why a rotated file was not archived; it stays in the data directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", exchange_protocol::tr!(
    "cannot archive the audit file {file}: {reason}",
    "无法归档审计文件 {file}：{reason}",
    file = file.display()
))]
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
        reason: cannot_read_chain(&e),
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
            .map_err(|e| failed(&path(data_dir), cannot_read_chain(&e)))?;
    }
}

/// Why the files of the chain cannot be listed.
fn cannot_read_chain(e: &std::io::Error) -> String {
    let e = io(e);
    tr!("cannot read the chain: {e}", "无法读取审计链：{e}")
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
        .ok_or_else(|| tr!("not a file name", "不是文件名"))?;
    let facts = FileFacts::read(file).map_err(|e| {
        let e = io(&e);
        tr!("cannot read it: {e}", "无法读取该文件：{e}")
    })?;
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
            let to = store_in(dir, file, name, &facts.sm3).map_err(|e| {
                let (dir, e) = (dir.display(), io(&e));
                tr!("cannot store it in {dir}: {e}", "无法将其存入 {dir}：{e}")
            })?;
            detail["to"] = to.display().to_string().into();
        }
        ArchiveTo::Command { argv, timeout } => {
            // The command gets a copy, which it may move, compress or delete: the file itself
            // stays until its archival is on record.
            let staged = stage(data_dir, file, name).map_err(|e| {
                let e = io(&e);
                tr!(
                    "cannot copy it for the archive command: {e}",
                    "无法为归档命令复制该文件：{e}"
                )
            })?;
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
    .map(|appended| archive_after(data_dir, appended))
    .map_err(|e| tr!("cannot record its archival: {e}", "无法记录其归档：{e}"))?;
    removed.map_err(|e| {
        let e = io(&e);
        tr!(
            "stored and recorded as archived, but cannot remove it from the data directory: {e}",
            "已存储并记录为已归档，但无法从数据目录中删除：{e}"
        )
    })?;
    Ok(last)
}

/// The entries of an append, once an archival pass is asked for when it rotated the log.
pub(super) fn archive_after(data_dir: &Path, appended: Appended) -> Vec<Entry> {
    if appended.rotated {
        schedule_retention(data_dir);
    }
    appended.entries
}
