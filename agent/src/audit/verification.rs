//! `audit verify`: the chain checked line by line across the files (and an archive), then
//! against the head.

use std::path::{Path, PathBuf};

use exchange_protocol::tr;
use exchange_protocol::translate::io;

use super::files::{ArchivedBefore, Start, archived_to, chain_files, listed_start};
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
                    what: tr!(
                        "the files kept vanishing while read (an archival or rotation running): run it again",
                        "读取时文件不断消失（归档或轮转正在进行）：请再运行一次"
                    ),
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

/// Why a file of the log cannot be read.
fn cannot_read(e: &std::io::Error) -> String {
    let e = io(e);
    tr!("cannot read: {e}", "无法读取：{e}")
}

/// One pass of [`verify_with`]; `Ok(None)`: a file vanished while read, list them again.
fn verify_pass(data_dir: &Path, archive: Option<&Path>) -> Result<Option<Verified>, Break> {
    let (all, start) = listed_start(data_dir, archive).map_err(|e| Break {
        file: path(data_dir),
        line: 0,
        what: cannot_read(&e),
    })?;
    let from_archive = archive.map_or(0, |a| all.iter().filter(|f| f.starts_with(a)).count());
    let (mut walk, archived) = Walk::from_start(data_dir, archive.is_some(), start)?;
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
                    what: cannot_read(&e),
                });
            }
        };
        walk.file(f, &bytes);
    }
    if let Some(archive) = archive {
        walk.all_archived_present(archive)?;
    }
    if let Some(b) = walk.broke.take() {
        return Err(b);
    }
    walk.archived_unchanged()?;
    // Archived entries not counted by their record: what the head counts beyond those read.
    let before = walk
        .before
        .unwrap_or_else(|| walk.head_count.unwrap_or(0).saturating_sub(walk.checked));
    let entries = before + walk.checked;
    if let Some(head) = walk.head_disagreeing(data_dir, entries)? {
        // A rotation or append meanwhile moves the head past what was read.
        if chain_files(data_dir, archive) != all {
            return Ok(None);
        }
        return Err(Break {
            file: walk.last_file,
            line: 0,
            what: tr!(
                "the log holds {entries} entries but audit.head records {} ending in {}: entries at the end were removed (the log was truncated) or the head was replaced",
                "日志有 {entries} 条，但 audit.head 记录为 {} 条、末条为 {}：末尾的条目被删除（日志被截断），或头记录被替换",
                head.entries,
                head.last_sm3
            ),
        });
    }
    Ok(Some(Verified {
        entries,
        checked: walk.checked,
        from_archive,
        archived,
    }))
}

/// The walk of one pass along the lines of the chain's files, oldest first.
struct Walk {
    /// SM3 (hex) of the last line checked, which the next must name as `prev`.
    prev: String,
    /// Entries before the first file read: 0, as an `audit.archived` entry records, or
    /// (`None`) to be taken from the head.
    before: Option<u64>,
    /// Entries read and checked.
    checked: u64,
    /// The entries the head records, if it can be read.
    head_count: Option<u64>,
    /// The SM3 of the entry the head says is the last, once the walk reaches it.
    at_head_count: Option<String>,
    /// The last file read.
    last_file: PathBuf,
    /// The first break found; the walk goes on collecting `audit.archived` entries, so that a
    /// missing archived file is named rather than the break it leaves.
    broke: Option<Break>,
    /// The rotated files read: name → (path, SM3 hex).
    present: std::collections::HashMap<String, (PathBuf, String)>,
    /// The files `audit.archived` entries name (collected when an archive is read).
    named: Vec<Named>,
    /// Whether an archive is read, so that the files archived are looked for.
    with_archive: bool,
}

impl Walk {
    /// A walk from where the oldest file begins the chain, and the entries archived before it
    /// (`None`: the chain is read from its first entry); a start no `audit.archived` entry
    /// explains is the break.
    fn from_start(
        data_dir: &Path,
        with_archive: bool,
        start: Start,
    ) -> Result<(Walk, Option<ArchivedBefore>), Break> {
        let (prev, before, archived) = match start {
            Start::Beginning => (ZEROS.to_owned(), Some(0), None),
            Start::Archived(a) => (a.last_sm3.clone(), a.entries, Some(a)),
            Start::Unexplained { file } => {
                return Err(Break {
                    file,
                    line: 1,
                    what: tr!(
                        "the first entry does not start the chain: entries before it were removed (no `audit.archived` entry records them as archived; files moved away by hand are read with `audit verify --archive DIR`)",
                        "第一条不是链的起点：它之前的条目被删除（没有 `audit.archived` 条目记录其已归档；手工移走的文件可用 `audit verify --archive DIR` 读取）"
                    ),
                });
            }
        };
        let walk = Walk {
            prev,
            before,
            checked: 0,
            head_count: read_head(data_dir).ok().map(|h| h.entries),
            at_head_count: None,
            last_file: path(data_dir),
            broke: None,
            present: std::collections::HashMap::new(),
            named: Vec::new(),
            with_archive,
        };
        Ok((walk, archived))
    }

    /// Reads one file of the chain: notes a rotated file's SM3, a cut-short last line, then
    /// each of its lines.
    fn file(&mut self, f: &Path, bytes: &[u8]) {
        if let Some(name) = f.file_name().and_then(|n| n.to_str())
            && name.starts_with("audit.jsonl.")
        {
            self.present.insert(
                name.to_owned(),
                (
                    f.to_owned(),
                    hex::encode(exchange_protocol::digest::sm3(bytes)),
                ),
            );
        }
        if self.broke.is_none() && !bytes.is_empty() && !bytes.ends_with(b"\n") {
            let line = bytes.split(|b| *b == b'\n').count();
            self.broke = Some(Break {
                file: f.to_owned(),
                line,
                what: tr!(
                    "the last line is cut short: a crash while it was being written leaves this (the service cuts it off, as never acknowledged, and records `audit.recovered` when it next writes), or the file was truncated",
                    "最后一行不完整：写入时崩溃会留下这种情况（服务下次写入时会把它作为未确认的内容截掉，并记录 `audit.recovered`），或文件被截断"
                ),
            });
        }
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if !line.is_empty() {
                self.line(f, i + 1, line);
            }
        }
        self.last_file = f.to_owned();
    }

    /// Checks one line (`n`, 1-based, of file `f`) against the chain, once nothing broke
    /// before it; collects the file an `audit.archived` entry names.
    fn line(&mut self, f: &Path, n: usize, line: &[u8]) {
        let at = |what: String| Break {
            file: f.to_owned(),
            line: n,
            what,
        };
        let entry = serde_json::from_slice::<Entry>(line);
        if let Ok(e) = &entry
            && self.with_archive
            && e.action == "audit.archived"
        {
            let d = &e.detail;
            if let (Some(name), Some(sm3)) = (d["file"].as_str(), d["sm3"].as_str()) {
                self.named.push(Named {
                    name: name.to_owned(),
                    sm3: sm3.to_owned(),
                    to: archived_to(d),
                    recorded_in: f.to_owned(),
                    line: n,
                });
            }
        }
        if self.broke.is_some() {
            return;
        }
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                self.broke = Some(at(tr!(
                    "not an audit entry ({e}): edited or damaged",
                    "不是审计条目（{e}）：已被编辑或损坏"
                )));
                return;
            }
        };
        if entry.prev != self.prev {
            self.broke = Some(at(if self.checked == 0 {
                tr!(
                    "the first entry does not start the chain: entries before it were removed",
                    "第一条不是链的起点：它之前的条目被删除"
                )
            } else {
                let n = self.before.map_or(String::new(), |b| {
                    tr!(" {}", "（第 {} 条）", b + self.checked)
                });
                tr!(
                    "`prev` does not match entry{n} before it: this entry or the one before was edited, or entries were removed or reordered here",
                    "`prev` 与前一条{n}不符：本条或前一条被编辑过，或此处的条目被删除或调换了顺序"
                )
            }));
            return;
        }
        self.prev = hex::encode(exchange_protocol::digest::sm3(line));
        self.checked += 1;
        if self
            .before
            .is_some_and(|b| Some(b + self.checked) == self.head_count)
        {
            self.at_head_count = Some(self.prev.clone());
        }
    }

    /// Every file an `audit.archived` entry names was read, from `archive` or the data
    /// directory; else the break names the missing.
    fn all_archived_present(&self, archive: &Path) -> Result<(), Break> {
        let missing: Vec<&Named> = self
            .named
            .iter()
            .filter(|n| !self.present.contains_key(&n.name))
            .collect();
        let Some(first) = missing.first() else {
            return Ok(());
        };
        let names: Vec<&str> = missing.iter().map(|n| n.name.as_str()).collect();
        Err(Break {
            file: archive.join(&first.name),
            line: 0,
            what: tr!(
                "missing: {} archived file(s) recorded by `audit.archived` entries are in neither the archive {} nor the data directory: {} (the first archived to {}, recorded at {}:{}); restore them there",
                "缺失：`audit.archived` 条目记录的 {} 个已归档文件既不在归档目录 {} 中，也不在数据目录中：{}（第一个归档到 {}，记录于 {}:{}）；请把它们恢复到那里",
                missing.len(),
                archive.display(),
                names.join(", "),
                first.to,
                first.recorded_in.display(),
                first.line
            ),
        })
    }

    /// Every archived file read has the SM3 its `audit.archived` entry recorded.
    fn archived_unchanged(&self) -> Result<(), Break> {
        for n in &self.named {
            if let Some((file, sm3)) = self.present.get(&n.name)
                && *sm3 != n.sm3
            {
                return Err(Break {
                    file: file.clone(),
                    line: 0,
                    what: tr!(
                        "its SM3 is {sm3}, not {} as recorded when it was archived ({}:{}): the file was changed since",
                        "其 SM3 为 {sm3}，而不是归档时记录的 {}（{}:{}）：此后文件被改动过",
                        n.sm3,
                        n.recorded_in.display(),
                        n.line
                    ),
                });
            }
        }
        Ok(())
    }

    /// Compares the head with the walk's end, `entries` in the chain: `Ok(None)` when it
    /// agrees (or is missing for an empty log), the break when it is unreadable or behind the
    /// log as a crash leaves it, else `Ok(Some(head))`: the log was cut or the head replaced,
    /// unless a rotation or append meanwhile moved it.
    fn head_disagreeing(&self, data_dir: &Path, entries: u64) -> Result<Option<Head>, Break> {
        let bytes = match std::fs::read(head_path(data_dir)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && entries == 0 => return Ok(None),
            Err(e) => {
                return Err(Break {
                    file: head_path(data_dir),
                    line: 0,
                    what: {
                        let e = io(&e);
                        tr!("cannot read the head: {e}", "无法读取头记录：{e}")
                    },
                });
            }
        };
        let head: Head = serde_json::from_slice(&bytes).map_err(|e| Break {
            file: head_path(data_dir),
            line: 0,
            what: tr!("not a head ({e})", "不是头记录（{e}）"),
        })?;
        if head.entries < entries && self.at_head_count.as_ref() == Some(&head.last_sm3) {
            return Err(Break {
                file: head_path(data_dir),
                line: 0,
                what: tr!(
                    "audit.head records {} entries and the log holds {entries}, the first {} as the head says: the last {} were written after the head, by a crash between the two (the service repairs the head and records `audit.recovered` when it next writes) or because the head was rolled back",
                    "audit.head 记录为 {} 条，日志有 {entries} 条，前 {} 条与头记录一致：最后 {} 条写于头记录之后，原因是两者之间发生崩溃（服务下次写入时会修复头记录并记录 `audit.recovered`），或头记录被回滚",
                    head.entries,
                    head.entries,
                    entries - head.entries
                ),
            });
        }
        if head.entries != entries || (entries > 0 && head.last_sm3 != self.prev) {
            return Ok(Some(head));
        }
        Ok(None)
    }
}
