//! `audit.head`: how many entries the chain holds and the SM3 of its last line, rewritten in
//! place at a fixed length after each append.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::count_entries;

/// The head file of a data directory.
pub(super) fn head_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.head")
}

/// `audit.head`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Head {
    /// Entries in the chain, all files together.
    pub(super) entries: u64,
    /// SM3 (hex) of the last line.
    pub(super) last_sm3: String,
}

/// The head, from `audit.head`, or counted from the files when it is missing (a log written
/// before the head existed).
pub(super) fn read_head(data_dir: &Path) -> std::io::Result<Head> {
    match std::fs::read(head_path(data_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (entries, digests, _) = count_entries(data_dir)?;
            Ok(Head {
                entries,
                last_sm3: digests.last().map(hex::encode).unwrap_or_default(),
            })
        }
        Err(e) => Err(e),
    }
}

/// The length `audit.head` is written at: its JSON padded with spaces.
pub(super) const HEAD_BYTES: usize = 160;

/// Writes the head. It is rewritten in place at a fixed length (one small write within one
/// sector, then fdatasync), so the file's size and blocks never change and the write needs no
/// journal commit of the filesystem: a rename per append stalled every writer of the disk for
/// up to 150 ms under load. A head of another length (first write, older versions) is
/// replaced whole ([`crate::data_dir::replace`]).
pub(super) fn write_head(data_dir: &Path, head: &Head) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut bytes = serde_json::to_vec(head).expect("head serializes");
    if bytes.len() > HEAD_BYTES {
        return crate::data_dir::replace(data_dir, "audit.head", &bytes);
    }
    bytes.resize(HEAD_BYTES, b' ');
    let path = head_path(data_dir);
    match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(f) if f.metadata()?.len() == HEAD_BYTES as u64 => {
            f.write_all_at(&bytes, 0)?;
            f.sync_data()
        }
        Ok(_) => crate::data_dir::replace(data_dir, "audit.head", &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::data_dir::replace(data_dir, "audit.head", &bytes)
        }
        Err(e) => Err(e),
    }
}
