//! The harness of the black-box integration tests (the test files are in `tests/tests/`).
//!
//! Everything a test needs to drive the real binaries against real databases over real TLS
//! (the modules that need neither the agent nor the hub crate come from `exchange-testkit`,
//! shared with the benchmarks and the demo, and are re-exported here under their names):
//! - [`bins`]: finds (and, once per test process, builds) `exchange-agent`, `exchange-hub` and
//!   `exchange-demo`;
//! - [`pki`]: a throwaway platform CA, the hub's certificate and a node certificate per test;
//! - [`hub`]: the reference hub running in the test process on `127.0.0.1:0`, stoppable and
//!   restartable on the same address, with its store readable by the test;
//! - [`db`]: a fresh PostgreSQL or MariaDB database per test (dropped at the end);
//!   an unreachable server fails the test with instructions, it never skips;
//! - [`hub_log`]: triggers that log what the hub's SQLite store committed, for kill loops;
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
pub mod hub;
pub mod hub_log;
pub mod scene;
pub mod sqlite_source;
pub mod verification;

pub use exchange_testkit::{DEADLINE, TestDir, bins, db, pki, rows, unique, wait};
