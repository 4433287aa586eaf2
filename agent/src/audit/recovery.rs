//! Recovery from a crash: the torn last line cut off (noted in `audit.cut` before the cut),
//! the end of the chain found, and the repairs recorded (`audit.recovered`).

use std::path::{Path, PathBuf};

use super::entries::for_each_since;
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
