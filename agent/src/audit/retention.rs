//! Retention: how the audit log of a data directory is rotated and where older rotated files
//! go (`[audit]`), as the process holding its queue set it ([`super::set_retention`]).

use std::path::{Path, PathBuf};

use super::ROTATE_BYTES;

/// How the audit log of a data directory is rotated and where older files go (`[audit]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Size at which `audit.jsonl` is rotated.
    pub max_file_bytes: u64,
    /// Where rotated files beyond those kept go; `None`: every rotated file stays.
    pub archive: Option<Archive>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_file_bytes: ROTATE_BYTES,
            archive: None,
        }
    }
}

/// Archival of older rotated files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// Rotated files that stay in the data directory (the newest); 0: none, every rotated
    /// file is archived at once.
    pub keep: usize,
    /// Where the older ones go.
    pub to: ArchiveTo,
}

/// Where archived files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveTo {
    /// Into this directory, under the same name, never over another file.
    Dir(PathBuf),
    /// To this program (absolute path, then its arguments), run with the file's path as its
    /// last argument; the file is removed from the data directory once it exits 0.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
        /// How long it may run before it is killed (and the file kept).
        timeout: std::time::Duration,
    },
}

/// The retention of each data directory whose queue this process holds ([`super::set_retention`]).
pub(super) static RETENTION: std::sync::Mutex<Vec<(PathBuf, std::sync::Arc<Retention>)>> =
    std::sync::Mutex::new(Vec::new());

/// The retention set for `data_dir`, if any.
pub(super) fn retention_of(data_dir: &Path) -> Option<std::sync::Arc<Retention>> {
    RETENTION
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(d, _)| d == data_dir)
        .map(|(_, r)| r.clone())
}
