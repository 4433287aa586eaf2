//! The data directory: created 0700 and refused when group or others may enter it
//! ([`prepare`]); its files that are replaced whole (the audit head, the verification ledger's
//! snapshot, the status report): written to a temporary file beside them (mode 0600), synced, renamed
//! over the old one, and the directory synced, so that after a crash at any point the file
//! is either the old one or the new one, never a mix or empty.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use exchange_protocol::tr;
use exchange_protocol::translate::io;

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

/// Creates the data directory 0700 if missing; refuses one that group or others may enter
/// (it holds queued records and the cursor).
pub fn prepare(data_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !data_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| {
                let (dir, e) = (data_dir.display(), io(&e));
                tr!("cannot create {dir}: {e}", "无法创建 {dir}：{e}")
            })?;
        // `recursive` applies the mode only where the umask allows; make it exact.
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |e| {
                let (dir, e) = (data_dir.display(), io(&e));
                tr!(
                    "cannot set the mode of {dir}: {e}",
                    "无法设置 {dir} 的权限：{e}"
                )
            },
        )?;
    }
    let dir = data_dir.display();
    let meta = std::fs::metadata(data_dir).map_err(|e| {
        let e = io(&e);
        tr!("cannot read {dir}: {e}", "无法读取 {dir}：{e}")
    })?;
    if !meta.is_dir() {
        return Err(tr!("{dir} is not a directory", "{dir} 不是目录"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(tr!(
            "data_dir {dir} has mode {mode:04o}: group and others may read the queued records; run `chmod 700 {dir}`",
            "data_dir {dir} 的权限为 {mode:04o}：同组和其他用户可以读取排队的记录；请运行 `chmod 700 {dir}`"
        ));
    }
    Ok(())
}
