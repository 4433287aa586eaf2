//! The disk a directory takes while a process writes into it (the agent's queue), sampled at a
//! fixed interval on a thread of its own: one walk of the directory per sample, only the
//! largest total kept.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running sampler of one directory's size.
pub struct PeakSize {
    /// Dropped (or sent on) to stop the sampler.
    stop: mpsc::Sender<()>,
    /// The sampler; returns the largest size it saw, bytes.
    thread: JoinHandle<u64>,
}

impl PeakSize {
    /// Samples the disk allocated to the files under `dir` now and then every `every` (a
    /// directory that does not exist yet counts as empty).
    pub fn start(dir: PathBuf, every: Duration) -> PeakSize {
        let (stop, stopped) = mpsc::channel::<()>();
        let mut peak = allocated(&dir, 0);
        let thread = std::thread::spawn(move || {
            loop {
                match stopped.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => peak = peak.max(allocated(&dir, 0)),
                    _ => return peak.max(allocated(&dir, 0)),
                }
            }
        });
        PeakSize { stop, thread }
    }

    /// Stops sampling (after one last sample); the largest size seen, bytes.
    pub fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or(0)
    }
}

/// How deep [`allocated`] descends (the agent's data directory is shallow).
const MAX_DEPTH: usize = 4;

/// The disk blocks allocated to the files under `dir`, bytes (what `du` counts: a sparse or
/// preallocated file counts what it holds on disk).
fn allocated(dir: &Path, depth: usize) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() && depth < MAX_DEPTH => allocated(&e.path(), depth + 1),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_the_largest_size_seen_not_the_last() {
        let dir = std::env::temp_dir().join(format!("exchange-bench-disk-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let big = dir.join("sub/queue");
        std::fs::write(&big, vec![1u8; 1 << 20]).unwrap();
        // The first sample is taken before `start` returns.
        let sampler = PeakSize::start(dir.clone(), Duration::from_secs(3600));
        std::fs::remove_file(&big).unwrap();
        let peak = sampler.stop();
        assert!(peak >= 1 << 20, "peak {peak}");
        assert_eq!(allocated(&dir, 0), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
