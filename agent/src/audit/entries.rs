//! Reading the log: entries after a given one, since a time (in the archive too), and the
//! export of the lines as stored.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use super::files::{chain_files, is_archived_line};
use super::head::read_head;
use super::retention::{Archive, ArchiveTo, retention_of};
use super::{Entry, files};

/// Milliseconds since 1970 of an entry's `at`.
pub fn millis_of(at: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The entries of one file of the log, with the SM3 of each line; a line that is not an
/// entry (one cut short by a crash, possibly inside a character) is skipped.
pub(super) fn entries_of(file: &Path) -> std::io::Result<Vec<(Entry, [u8; 32])>> {
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
pub(super) fn first_at(file: &Path) -> std::io::Result<Option<i64>> {
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

/// Of the files of the chain (oldest first), the first that can hold an entry written at or
/// after `since_ms`: the newest whose first entry is older (0 when none is).
fn first_file_since(all: &[PathBuf], since_ms: i64) -> std::io::Result<usize> {
    for (i, file) in all.iter().enumerate().rev() {
        if first_at(file)?.is_some_and(|at| at < since_ms) {
            return Ok(i);
        }
    }
    Ok(0)
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
    let start = first_file_since(&all, since_ms)?;
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
/// retention ([`set_retention`](super::set_retention)), else the directory the newest `audit.archived` entry of the
/// files present records a file moved to (an `archive_command` leaves none).
pub(super) fn archive_dir_of(data_dir: &Path) -> Option<PathBuf> {
    if let Some(r) = retention_of(data_dir) {
        return match &r.archive {
            Some(Archive {
                to: ArchiveTo::Dir(dir),
                ..
            }) => Some(dir.clone()),
            _ => None,
        };
    }
    for f in files(data_dir).iter().rev() {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        let found = bytes
            .split(|b| *b == b'\n')
            .rev()
            .filter(|l| is_archived_line(l))
            .filter_map(|l| serde_json::from_slice::<Entry>(l).ok())
            .find_map(|e| Some(PathBuf::from(e.detail["to"].as_str()?).parent()?.to_owned()));
        if found.is_some() {
            return found;
        }
    }
    None
}

/// [`for_each_since`] over the files of the archive directory (`archive_dir_of`) too, so
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
        let start = first_file_since(&all, since_ms)?;
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
