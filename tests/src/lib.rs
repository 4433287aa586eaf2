//! The harness of the black-box integration tests (the test files are in `tests/tests/`).
//!
//! Everything a test needs to drive the real binaries against real databases over real TLS:
//! - [`bins`]: finds (and, once per test process, builds) `exchange-agent` and `exchange-hub`;
//! - [`pki`]: a throwaway platform CA, the hub's certificate and a node certificate per test;
//! - [`hub`]: the reference hub running in the test process on `127.0.0.1:0`, stoppable and
//!   restartable on the same address, with its store readable by the test;
//! - [`db`]: a fresh PostgreSQL or MariaDB database per test (dropped at the end);
//!   an unreachable server fails the test with instructions, it never skips;
//! - [`admin`]: `GET` on the agent's admin listener and a strict Prometheus text parser;
//! - [`agent`]: writes an `agent.toml` and runs `exchange-agent sync|check|status|run`;
//! - [`scene`]: a directory, certificates and a running hub: where most tests start;
//! - [`sqlite_source`]: a small SQLite business database, for tests about something else;
//! - [`rows`]: the hub's export and the source's rows as comparable maps, with a readable diff;
//! - [`wait`]: polling a condition with a deadline (tests never sleep to wait for something).
//!
//! Tests are independent and parallel-safe: every test gets its own temporary directory,
//! databases and ports.
//!
//! Running them: `cargo test -p exchange-tests` with PostgreSQL and MariaDB running. The
//! environment can change:
//! - `EXCHANGE_TEST_PG_URL`, `EXCHANGE_TEST_MYSQL_URL`: the servers (accounts that may create
//!   databases); defaults `postgres://postgres@127.0.0.1:5432/test` and
//!   `mysql://root@127.0.0.1:3306/test`;
//! - `EXCHANGE_TEST_BIN_DIR`: use the binaries in this directory instead of building them;
//! - `EXCHANGE_TEST_KEEP`: keep each test's directory (configurations, logs, queue, hub store);
//! - `EXCHANGE_TEST_SEED`: replay the random choices of the SIGKILL test.

pub mod admin;
pub mod agent;
pub mod bins;
pub mod db;
pub mod hub;
pub mod pki;
pub mod rows;
pub mod scene;
pub mod sqlite_source;
pub mod verification;
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
