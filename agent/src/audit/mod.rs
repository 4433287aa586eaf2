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
//!
//! # Code map
//! From the bottom: `files` (the chain's files, rotation, where the oldest begins), `head`,
//! `recovery` (the torn line and the head repaired), `retention` (the settings), `chain`
//! (one write and one fsync per group of entries), `archive` (storing a file) and `archiver`
//! (the passes), `writer` ([`append`], [`Writer`]); beside them, `entries` (reading, export)
//! and `verification` ([`verify_with`]).

mod archive;
mod archiver;
mod chain;
mod entries;
mod files;
mod head;
mod recovery;
mod retention;
mod verification;
mod writer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use archiver::{ArchiveError, retain, set_retention};
pub use entries::{
    export, for_each_after, for_each_since, for_each_since_archived, last_sm3, millis_of,
};
pub use files::{ArchivedBefore, files};
pub use recovery::{repair_text, repairs};
pub use retention::{Archive, ArchiveTo, Retention};
pub use verification::{Break, Verified, verify, verify_with};
pub use writer::{Writer, append};

/// Size at which `audit.jsonl` is rotated unless `[audit] max_file_bytes` says otherwise.
pub const ROTATE_BYTES: u64 = 64 << 20;

/// Rotated files that stay in the data directory when an archive is configured without
/// `[audit] keep`; without an archive, the number past which each rotation warns that they
/// accumulate.
pub const DEFAULT_KEEP: usize = 16;

/// The `prev` of the chain's first entry.
const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
#[error("{}", exchange_protocol::tr!(
    "cannot write the audit log {path}: {cause}",
    "无法写入审计日志 {path}：{cause}",
    path = path.display()
))]
pub struct AuditError {
    /// The file.
    pub path: PathBuf,
    /// Why (in the message, so not also a source: a chain names it once).
    pub cause: std::io::Error,
}

/// The audit log file of a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.jsonl")
}

#[cfg(test)]
mod tests {
    use super::archive::{FileFacts, staging_dir};
    use super::entries::{archive_dir_of, entries_of};
    use super::files::{rotate, rotated_in};
    use super::head::{HEAD_BYTES, head_path, read_head};
    use super::recovery::{Tail, cut_path};
    use super::retention::RETENTION;
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
