//! Recovery from a crash: the torn last line cut off (noted in `audit.cut` before the cut),
//! the end of the chain found, and the repairs recorded (`audit.recovered`).

use std::path::{Path, PathBuf};

use super::entries::for_each_since;
use super::files::count_entries;
use super::head::{Head, head_path};
use super::{Entry, files, path};

/// Where the chain ends on disk.
pub(super) struct Tail {
    /// The SM3 of the last complete line of the newest file holding one; `None` for an empty
    /// log.
    pub(super) last: Option<[u8; 32]>,
    /// Bytes cut from the end of `audit.jsonl` after its last newline (a torn line), now or
    /// by an earlier append that a crash stopped before it recorded the cut (`audit.cut`).
    pub(super) cut: u64,
}

/// `audit.cut`: the note of a torn line about to be cut off (its length, decimal), written
/// and synced before the cut and removed once the `audit.recovered` entry recording it is on
/// disk, so that power lost between the cut and that entry still leaves the cut on record.
pub(super) fn cut_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.cut")
}

impl Tail {
    /// Finds the end of the chain: cuts a torn line off the end of `audit.jsonl` (synced), then
    /// reads the last complete line of the newest file holding one (after a rotation that a
    /// crash interrupted, `audit.jsonl` may not exist or be empty yet).
    pub(super) fn read(data_dir: &Path) -> std::io::Result<Tail> {
        let current = path(data_dir);
        // A cut an earlier append made and could not record.
        let mut cut: u64 = std::fs::read_to_string(cut_path(data_dir))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&current)
        {
            let len = f.metadata()?.len();
            let keep = complete_length(&f, len)?;
            if keep < len {
                cut += len - keep;
                crate::data_dir::replace(data_dir, "audit.cut", cut.to_string().as_bytes())?;
                f.set_len(keep)?;
                f.sync_all()?;
            }
            // The usual case: the current file's own last line, without listing the directory.
            if keep > 0 {
                return Ok(Tail {
                    last: line_before(&f, keep)?.map(|l| exchange_protocol::digest::sm3(&l)),
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
                    last: Some(exchange_protocol::digest::sm3(&line)),
                    cut,
                });
            }
        }
        Ok(Tail { last: None, cut })
    }
}

/// What an append repairs before its entries, found by [`Tail::read`]: a torn line cut off,
/// and a head that does not name the log's last entry, counted afresh. Returns the head to
/// continue from and the detail of each `audit.recovered` entry to write first (never the
/// removed bytes).
pub(super) fn repairs_due(
    data_dir: &Path,
    tail: &Tail,
) -> std::io::Result<(Head, Vec<serde_json::Value>)> {
    let mut recovered = Vec::new();
    if tail.cut > 0 {
        recovered.push(serde_json::json!({
            "what": CUT,
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
    let head = match head {
        Some(h) => h,
        None => {
            let (head, note) = recount(data_dir, written.as_ref(), prev_hex)?;
            recovered.push(note);
            head
        }
    };
    Ok((head, recovered))
}

/// The head counted afresh from the files, the log ending in the line of SM3 `prev_hex`, and
/// the detail of the `audit.recovered` entry saying why: `written` (the head found, if any)
/// was missing, behind the log (what a crash leaves), or named an entry the log does not hold.
fn recount(
    data_dir: &Path,
    written: Option<&Head>,
    prev_hex: Option<String>,
) -> std::io::Result<(Head, serde_json::Value)> {
    let (counted, digests, before) = count_entries(data_dir)?;
    // A crash leaves the head behind the log, naming an entry the log holds; a head ahead of
    // the log, or naming an entry it does not hold, means entries are gone.
    let behind = written.is_some_and(|h| {
        h.entries < counted
            && h.entries > before
            && digests
                .get((h.entries - before) as usize - 1)
                .is_some_and(|d| Some(hex::encode(d)) == Some(h.last_sm3.clone()))
    });
    let note = match written {
        None => serde_json::json!({
            "what": HEAD_MISSING,
            "entries": counted,
        }),
        Some(_) if behind => serde_json::json!({
            "what": HEAD_BEHIND,
            "entries": counted,
        }),
        Some(h) => serde_json::json!({
            "what": HEAD_FOREIGN,
            "entries": counted,
            "head_entries": h.entries,
            "head_last_sm3": h.last_sm3,
        }),
    };
    let head = Head {
        entries: counted,
        last_sm3: prev_hex.unwrap_or_default(),
    };
    Ok((head, note))
}

/// The length of a file up to and including its last newline (0 if it has none).
pub(super) fn complete_length(f: &std::fs::File, len: u64) -> std::io::Result<u64> {
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
pub(super) fn last_line(f: &std::fs::File) -> std::io::Result<Option<Vec<u8>>> {
    let end = complete_length(f, f.metadata()?.len())?;
    line_before(f, end)
}

/// The line that ends (with its newline) at byte `end` of a file, without the newline; `None`
/// when `end` is 0.
pub(super) fn line_before(f: &std::fs::File, end: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::FileExt;
    if end == 0 {
        return Ok(None);
    }
    let start = complete_length(f, end - 1)?;
    let mut line = vec![0u8; (end - 1 - start) as usize];
    f.read_exact_at(&mut line, start)?;
    Ok(Some(line))
}

// What a repair did, as its `audit.recovered` entry records it (in English: the audit log is
// a record, not a message).
const CUT: &str =
    "a line cut short by a crash was removed from the end of the log (it was never acknowledged)";
const HEAD_MISSING: &str = "audit.head was missing or unreadable; the entries were counted afresh";
const HEAD_BEHIND: &str = "audit.head was behind the log (a crash between writing entries and the head); the entries were counted afresh";
const HEAD_FOREIGN: &str = "audit.head named an entry the log does not hold: entries were removed from the log, or the head was replaced; the entries were counted afresh, and the head found is kept here";

/// What a repair did (the `what` of its `audit.recovered` entry), in the current language;
/// a text this version did not write, as it is.
pub fn repair_text(what: &str) -> String {
    let zh = match what {
        CUT => "日志末尾一行因崩溃而不完整，已删除（它从未被确认）",
        HEAD_MISSING => "audit.head 缺失或无法读取；条目已重新计数",
        HEAD_BEHIND => "audit.head 落后于日志（写入条目与头记录之间发生崩溃）；条目已重新计数",
        HEAD_FOREIGN => {
            "audit.head 指向日志中没有的条目：日志中的条目被删除，或头记录被替换；条目已重新计数，找到的头记录保存在此"
        }
        other => other,
    };
    exchange_protocol::lang::pick(what, zh).to_owned()
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
