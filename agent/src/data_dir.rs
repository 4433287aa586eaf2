//! Files of the data directory that are replaced whole (the audit head, the verification
//! ledger's snapshot): written to a temporary file beside them (mode 0600), synced, renamed
//! over the old one, and the directory synced, so that after a crash at any point the file
//! is either the old one or the new one, never a mix or empty.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `data_dir/name` with `bytes`, durably and atomically.
pub fn replace(data_dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(name))?;
    std::fs::File::open(data_dir)?.sync_all()
}
