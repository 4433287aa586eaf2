//! A resource's drop directory: which dropped files are complete, their digests, and moving
//! them to `done/` or `rejected/` (module doc of [`super`] for the layout).
//!
//! Every move is a `rename` within the directory, followed by an `fsync` of both directories,
//! so a file is in exactly one place after a crash. A rejected file's `NAME.reason` is written
//! and synced before the file is moved beside it.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{FileFormat, Ready};

/// Where processed files go.
pub const DONE: &str = "done";
/// Where files that cannot be read go.
pub const REJECTED: &str = "rejected";
/// The marker of a complete file in [`Ready::Marker`] mode: `NAME.done`.
pub const MARKER: &str = ".done";

/// A resource's drop directory.
#[derive(Debug, Clone)]
pub struct DropDir {
    dir: PathBuf,
    ready: Ready,
}

/// A complete file waiting in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Its name in the directory.
    pub name: String,
    /// Its format, `None` for an extension the drop does not read (it is rejected).
    pub format: Option<FileFormat>,
}

impl DropDir {
    /// The directory `dir`, with `done/` and `rejected/` created when missing.
    pub fn open(dir: &Path, ready: Ready) -> std::io::Result<DropDir> {
        for sub in [DONE, REJECTED] {
            fs::create_dir_all(dir.join(sub))?;
        }
        Ok(DropDir {
            dir: dir.to_owned(),
            ready,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The complete files, oldest first (last change, then name): in [`Ready::Stable`]
    /// mode, files nothing has written to (content or metadata: the later of modification
    /// and status-change time) for the interval; in [`Ready::Marker`] mode, files with a
    /// marker. Hidden files, markers and subdirectories are not data.
    pub fn complete(&self) -> std::io::Result<Vec<Dropped>> {
        let now = SystemTime::now();
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if is_not_data(&name) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            let changed = last_change(&meta);
            let ready = match self.ready {
                Ready::Stable(settle) => {
                    now.duration_since(changed).unwrap_or(Duration::ZERO) >= settle
                }
                Ready::Marker => self.dir.join(format!("{name}{MARKER}")).is_file(),
            };
            if ready {
                found.push((changed, name));
            }
        }
        found.sort();
        Ok(found
            .into_iter()
            .map(|(_, name)| Dropped {
                format: FileFormat::of(&name),
                name,
            })
            .collect())
    }

    /// A file's path in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A name for `name` in `done/` that no file there has yet (`NAME`, else `NAME.1`, …).
    pub fn done_name(&self, name: &str) -> String {
        unused(&self.dir.join(DONE), name)
    }

    /// Whether `done/` holds `name`.
    pub fn is_done(&self, name: &str) -> bool {
        self.dir.join(DONE).join(name).is_file()
    }

    /// Moves `name` to `done/as_name` (its marker removed), stamped with the time of the move
    /// (what `delete_after` counts from); durable when it returns.
    pub fn move_done(&self, name: &str, as_name: &str) -> std::io::Result<()> {
        let to = self.dir.join(DONE).join(as_name);
        fs::rename(self.dir.join(name), &to)?;
        let _ = fs::File::options()
            .write(true)
            .open(&to)
            .and_then(|f| f.set_modified(SystemTime::now()));
        self.remove_marker(name)?;
        sync_dir(&self.dir.join(DONE))?;
        sync_dir(&self.dir)
    }

    /// Moves `name` to `rejected/` (as `NAME`, or `NAME.1`, … when a rejected file has that
    /// name already), after writing the reason beside it (`<its name there>.reason`); durable
    /// when it returns. Returns its name in `rejected/`.
    pub fn reject(&self, name: &str, reason: &str) -> std::io::Result<String> {
        let rejected = self.dir.join(REJECTED);
        let as_name = unused(&rejected, name);
        let mut f = fs::File::create(rejected.join(format!("{as_name}.reason")))?;
        f.write_all(reason.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(self.dir.join(name), rejected.join(&as_name))?;
        self.remove_marker(name)?;
        sync_dir(&rejected)?;
        sync_dir(&self.dir)?;
        Ok(as_name)
    }

    fn remove_marker(&self, name: &str) -> std::io::Result<()> {
        match fs::remove_file(self.dir.join(format!("{name}{MARKER}"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes the files in `done/` moved there more than `after` ago (the move changes a
    /// file's status-change time, whoever owns it); returns how many.
    pub fn delete_done(&self, after: Duration) -> std::io::Result<usize> {
        let now = SystemTime::now();
        let mut deleted = 0;
        for entry in fs::read_dir(self.dir.join(DONE))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let moved = last_change(&meta);
            if meta.is_file() && now.duration_since(moved).unwrap_or(Duration::ZERO) >= after {
                fs::remove_file(entry.path())?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            sync_dir(&self.dir.join(DONE))?;
        }
        Ok(deleted)
    }
}

/// `name` in `dir`, or `name.1`, `name.2`, … : the first no file there has.
fn unused(dir: &Path, name: &str) -> String {
    (0..)
        .map(|n| {
            if n == 0 {
                name.to_owned()
            } else {
                format!("{name}.{n}")
            }
        })
        .find(|n| !dir.join(n).exists() && !dir.join(format!("{n}.reason")).exists())
        .expect("an unused name")
}

/// Names that are not data: hidden files (a sender writing `.NAME` and renaming it), markers,
/// and what office software and file managers leave beside files (`~$book.xlsx` lock files,
/// `Thumbs.db`, `desktop.ini`).
pub fn is_not_data(name: &str) -> bool {
    name.starts_with('.')
        || name.starts_with("~$")
        || name.ends_with(MARKER)
        || name.eq_ignore_ascii_case("thumbs.db")
        || name.eq_ignore_ascii_case("desktop.ini")
}

/// The later of a file's modification and status-change times: a copy that keeps the
/// original's modification time still changes the status-change time while it writes.
fn last_change(meta: &fs::Metadata) -> SystemTime {
    use std::os::unix::fs::MetadataExt;
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let ctime = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(meta.ctime()).unwrap_or(0),
            u32::try_from(meta.ctime_nsec()).unwrap_or(0),
        );
    modified.max(ctime)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The SM3 digest of a file's content, 64 hex digits: what identifies the file in the queue's
/// progress (a crash resumes the same file only) and in the audit log.
pub fn digest(path: &Path) -> std::io::Result<String> {
    use sm3::Digest;
    let mut hasher = sm3::Sm3::new();
    let mut file = super::read::open_regular(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_data_files_are_listed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let drop = DropDir::open(dir.path(), Ready::Marker).unwrap();
        for name in [
            "b.csv",
            "a.csv",
            ".hidden.csv",
            "c.csv",
            "~$a.xlsx",
            "Thumbs.db",
        ] {
            fs::write(dir.path().join(name), "id\n1\n").unwrap();
        }
        fs::write(dir.path().join("a.csv.done"), "").unwrap();
        fs::write(dir.path().join("b.csv.done"), "").unwrap();
        let names: Vec<String> = drop
            .complete()
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"a.csv".to_owned()) && names.contains(&"b.csv".to_owned()));

        let stable = DropDir::open(dir.path(), Ready::Stable(Duration::from_secs(3600))).unwrap();
        assert!(
            stable.complete().unwrap().is_empty(),
            "just written: not settled"
        );
        let settled = DropDir::open(dir.path(), Ready::Stable(Duration::ZERO)).unwrap();
        assert_eq!(settled.complete().unwrap().len(), 3);
    }

    #[test]
    fn a_moved_file_leaves_its_marker_and_a_second_of_the_same_name_gets_another() {
        let dir = tempfile::tempdir().unwrap();
        let drop = DropDir::open(dir.path(), Ready::Marker).unwrap();
        fs::write(dir.path().join("a.csv"), "id\n1\n").unwrap();
        fs::write(dir.path().join("a.csv.done"), "").unwrap();
        let to = drop.done_name("a.csv");
        drop.move_done("a.csv", &to).unwrap();
        assert!(drop.is_done("a.csv") && !dir.path().join("a.csv.done").exists());
        assert_eq!(drop.done_name("a.csv"), "a.csv.1");
        fs::write(dir.path().join("x.txt"), "?").unwrap();
        assert_eq!(drop.reject("x.txt", "not a format").unwrap(), "x.txt");
        fs::write(dir.path().join("x.txt"), "??").unwrap();
        assert_eq!(drop.reject("x.txt", "again").unwrap(), "x.txt.1");
        assert!(dir.path().join("rejected/x.txt").is_file());
        assert_eq!(
            fs::read_to_string(dir.path().join("rejected/x.txt.reason")).unwrap(),
            "not a format\n"
        );
        assert_eq!(drop.delete_done(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(drop.delete_done(Duration::ZERO).unwrap(), 1);
    }
}
