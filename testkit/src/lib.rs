//! The test kit: what the integration tests (`exchange-tests`), the benchmarks and the demo
//! share to stand up a throwaway world. It links neither `exchange-agent` nor `exchange-hub`
//! (the tests drive those as binaries or through their own harness modules), so the
//! benchmarks and the demo use it without building the code under test twice.
//!
//! - [`residents`]: synthetic residents of a city registry, deterministic for a seed;
//! - [`pki`]: a throwaway platform CA, the hub's certificate and a node certificate;
//! - [`db`]: a fresh PostgreSQL or MariaDB database per test (dropped at the end);
//!   an unreachable server fails the test with instructions, it never skips;
//! - [`rows`]: records as comparable maps (key → fields), with a readable diff;
//! - [`bins`]: finds (and, once per test process, builds) `exchange-agent`, `exchange-hub`
//!   and `exchange-demo`;
//! - [`wait`]: polling a condition with a deadline (tests never sleep to wait for something);
//! - [`TestDir`] and [`unique`]: a directory and names of one test's own.

pub mod bins;
pub mod db;
pub mod pki;
pub mod residents;
pub mod rows;
pub mod wait;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long a single awaited condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A name unique to this test process and call: lower-case letters, digits and `_`, usable as
/// a database name.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temporary directory for one test, removed at the end unless the environment variable
/// `EXCHANGE_TEST_KEEP` is set (to look at logs and configurations after a failure).
pub struct TestDir {
    /// Removes the directory on drop; `None` when it is kept.
    _guard: Option<tempfile::TempDir>,
    /// The directory.
    path: PathBuf,
}

impl TestDir {
    /// Creates a new directory under the system's temporary directory.
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("exchange-test-")
            .tempdir()
            .expect("cannot create a temporary directory");
        // Canonical, so paths in messages and configurations are the ones the binaries see.
        let path = dir.path().canonicalize().expect("temporary directory");
        if std::env::var_os("EXCHANGE_TEST_KEEP").is_some() {
            eprintln!("test files are kept in {}", path.display());
            let _ = dir.keep();
            return TestDir { _guard: None, path };
        }
        TestDir {
            _guard: Some(dir),
            path,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}
