//! The files of the chain: `audit.jsonl` and its rotated predecessors (in the data directory
//! and an archive directory), rotation, and where the oldest file present begins the chain.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::{Entry, ZEROS, path};

/// The files of the chain in the data directory, oldest first: `audit.jsonl.1`, `.2`, …, then
/// `audit.jsonl`.
pub fn files(data_dir: &Path) -> Vec<PathBuf> {
    chain_files(data_dir, None)
}

/// The rotated files (`audit.jsonl.<n>`) in a directory, by n.
pub(super) fn rotated_in(dir: &Path) -> std::collections::BTreeMap<u64, PathBuf> {
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
pub(super) fn chain_files(data_dir: &Path, archive: Option<&Path>) -> Vec<PathBuf> {
    let mut rotated = archive.map(rotated_in).unwrap_or_default();
    rotated.extend(rotated_in(data_dir));
    let mut all: Vec<PathBuf> = rotated.into_values().collect();
    all.push(path(data_dir));
    all
}

/// Entries in the chain: those archived away before the oldest file present (as its
/// `audit.archived` entry records; 0 when not recorded) and every line of the files present;
/// the SM3 of each line present; and the number archived away. A rotated file that vanishes
/// while read (the archiver moved it) has the files listed again.
pub(super) fn count_entries(data_dir: &Path) -> std::io::Result<(u64, Vec<[u8; 32]>, u64)> {
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

/// Renames `audit.jsonl` to `audit.jsonl.<entries>` (the chain's length so far, so names
/// grow and never repeat, also when older files were archived away), never over an existing
/// file.
pub(super) fn rotate(data_dir: &Path, entries: u64) -> std::io::Result<()> {
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
pub(super) enum Start {
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
pub(super) fn chain_start(files: &[PathBuf]) -> std::io::Result<Start> {
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
pub(super) fn listed_start(
    data_dir: &Path,
    archive: Option<&Path>,
) -> std::io::Result<(Vec<PathBuf>, Start)> {
    loop {
        let all = chain_files(data_dir, archive);
        let start = chain_start(&all)?;
        if !matches!(start, Start::Unexplained { .. }) || chain_files(data_dir, archive) == all {
            return Ok((all, start));
        }
    }
}

/// Whether a stored line is an `audit.archived` entry, by a byte search before any parse.
pub(super) fn is_archived_line(line: &[u8]) -> bool {
    const ACTION: &[u8] = br#""action":"audit.archived""#;
    line.windows(ACTION.len()).any(|w| w == ACTION)
}

/// The `audit.archived` entry whose archived file ended with the line of SM3 `last_sm3` (hex),
/// searching the files from the newest (where it usually is) back.
pub(super) fn find_archived(
    files: &[PathBuf],
    last_sm3: &str,
) -> std::io::Result<Option<ArchivedBefore>> {
    for f in files.iter().rev() {
        let bytes = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut found = None;
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if !is_archived_line(line) {
                continue;
            }
            let Ok(entry) = serde_json::from_slice::<Entry>(line) else {
                continue;
            };
            if entry.action == "audit.archived" && entry.detail["last_sm3"] == last_sm3 {
                let d = &entry.detail;
                found = Some(ArchivedBefore {
                    entries: d["last_entry"].as_u64(),
                    to: archived_to(d),
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

/// Where an `audit.archived` entry (its `detail`) says the file went: the archive's path of
/// it, or the command it was handed to.
pub(super) fn archived_to(detail: &serde_json::Value) -> String {
    detail["to"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            detail["command"]
                .as_str()
                .map(|c| exchange_protocol::tr!("the command `{c}`", "命令 `{c}`"))
        })
        .unwrap_or_default()
}
