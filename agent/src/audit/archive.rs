//! Storing a rotated file where the archive says: in a directory (hard link or synced copy,
//! never over another file) or handed, as a copy, to an archive command.

use std::io::BufRead;
use std::path::{Path, PathBuf};

/// What the `audit.archived` entry says of a file.
pub(super) struct FileFacts {
    /// Entries (non-empty lines).
    pub(super) lines: u64,
    /// SM3 of the whole file.
    pub(super) sm3: [u8; 32],
    /// SM3 of its last entry, which the next file continues from.
    pub(super) last_sm3: Option<[u8; 32]>,
}

impl FileFacts {
    pub(super) fn read(file: &Path) -> std::io::Result<FileFacts> {
        use sm3::Digest;
        let mut reader = std::io::BufReader::new(std::fs::File::open(file)?);
        let mut whole = sm3::Sm3::new();
        let (mut lines, mut last_sm3) = (0, None);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line)? > 0 {
            whole.update(&line);
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if !text.is_empty() {
                lines += 1;
                last_sm3 = Some(exchange_protocol::digest::sm3(text));
            }
            line.clear();
        }
        Ok(FileFacts {
            lines,
            sm3: whole.finalize().into(),
            last_sm3,
        })
    }
}

/// Stores `file` in `dir` as `name`, never over another file: a hard link when both are on
/// one filesystem, else a copy written under a temporary name, synced, then linked into place.
/// A file of that name already there with the same SM3 (stored before a crash) is taken as
/// stored; one with other contents is an error.
pub(super) fn store_in(
    dir: &Path,
    file: &Path,
    name: &str,
    sm3: &[u8; 32],
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let to = dir.join(name);
    let same = |to: &Path| -> std::io::Result<()> {
        if FileFacts::read(to)?.sm3 == *sm3 {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                exchange_protocol::tr!(
                    "{} already exists with other contents; it is never overwritten (move it aside)",
                    "{} 已存在且内容不同；不会覆盖它（请将其移走）",
                    to.display()
                ),
            ))
        }
    };
    if to.exists() {
        return same(&to).map(|()| to);
    }
    let sync_dir = || std::fs::File::open(dir).and_then(|d| d.sync_all());
    match std::fs::hard_link(file, &to) {
        Ok(()) => return sync_dir().map(|()| to),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return same(&to).map(|()| to),
        // Another filesystem (or one without hard links): copied instead.
        Err(_) => {}
    }
    let partial = dir.join(format!(".{name}.partial"));
    {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)?;
        std::io::copy(&mut std::fs::File::open(file)?, &mut out)?;
        out.sync_all()?;
    }
    let linked = std::fs::hard_link(&partial, &to);
    std::fs::remove_file(&partial)?;
    match linked {
        Ok(()) => sync_dir().map(|()| to),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => same(&to).map(|()| to),
        Err(e) => Err(e),
    }
}

/// The directory, inside the data directory, holding the copy an archive command is given.
pub(super) fn staging_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit-archiving")
}

/// Copies `file` to `<data_dir>/audit-archiving/<name>` (the directory created 0700, the copy
/// 0600 and synced, replacing a copy a crash left) for the archive command; returns its path.
pub(super) fn stage(data_dir: &Path, file: &Path, name: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = staging_dir(data_dir);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => std::fs::File::open(data_dir)?.sync_all()?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let to = dir.join(name);
    // A copy left by an earlier run (or a file the command left) is replaced, never appended to.
    match std::fs::remove_file(&to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut out = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&to)?;
    std::io::copy(&mut std::fs::File::open(file)?, &mut out)?;
    out.sync_all()?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(to)
}

/// Runs the archive command with the file's path as its last argument: `Ok` once it exits 0,
/// else why not (its exit status and the end of what it wrote to standard error). A command
/// still running after `timeout` is killed.
pub(super) fn run_archive_command(
    argv: &[String],
    file: &Path,
    timeout: std::time::Duration,
) -> Result<(), String> {
    use exchange_protocol::tr;
    use std::io::Read;
    use std::process::Stdio;
    let program = argv
        .first()
        .ok_or_else(|| tr!("no archive command", "没有归档命令"))?;
    let mut child = std::process::Command::new(program)
        .args(&argv[1..])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            let e = exchange_protocol::translate::io(&e);
            tr!(
                "cannot run the archive command {program}: {e}",
                "无法运行归档命令 {program}：{e}"
            )
        })?;
    // Standard error is read meanwhile, so that a command writing much never blocks on it.
    let (sent, stderr) = std::sync::mpsc::channel();
    if let Some(mut pipe) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            let _ = sent.send(text);
        });
    }
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(tr!(
                    "the archive command {program} did not finish within {}s and was killed",
                    "归档命令 {program} 未在 {} 秒内结束，已被终止",
                    timeout.as_secs()
                ));
            }
            // No wait with a timeout in std: the pass is a thread of its own, so polling
            // costs nothing else.
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(50)),
            Err(e) => {
                break Err(tr!(
                    "cannot wait for the archive command {program}: {e}",
                    "无法等待归档命令 {program}：{e}"
                ));
            }
        }
    }?;
    if status.success() {
        return Ok(());
    }
    // A process it left behind may hold the pipe open: its text is then not awaited long.
    let text = stderr
        .recv_timeout(std::time::Duration::from_secs(1))
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    let mut start = text.len().saturating_sub(500);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    Err(command_failed(program, status, &text[start..]))
}

/// Why an archive command that exited with `status` failed, with the end of what it wrote to
/// standard error.
fn command_failed(program: &str, status: std::process::ExitStatus, tail: &str) -> String {
    use exchange_protocol::tr;
    let tail = if tail.is_empty() {
        String::new()
    } else {
        tr!(": {tail}", "：{tail}")
    };
    tr!(
        "the archive command {program} failed ({status}){tail}",
        "归档命令 {program} 失败（{status}）{tail}"
    )
}
