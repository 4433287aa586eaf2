//! `audit verify`: the chain checked line by line across the files (and an archive), then
//! against the head.

use std::path::{Path, PathBuf};

use super::files::{ArchivedBefore, Start, chain_files, listed_start};
use super::head::{Head, head_path, read_head};
use super::{Entry, ZEROS, path};

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
