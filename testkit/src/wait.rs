//! Waiting for a condition: poll it until it holds or a deadline passes. Tests never sleep a
//! fixed time to wait for something.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(100);

/// Polls `condition` until it returns `true`; fails the test naming `what` after `deadline`.
#[track_caller]
pub fn wait_until<F, Fut>(
    what: &str,
    deadline: Duration,
    mut condition: F,
) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let caller = std::panic::Location::caller();
    async move {
        let started = Instant::now();
        loop {
            if condition().await {
                return;
            }
            if started.elapsed() > deadline {
                panic!("timed out after {deadline:?} waiting until {what} (at {caller})");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Polls `probe` until it returns `Some`; fails the test naming `what` after `deadline`.
#[track_caller]
pub fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = std::panic::Location::caller();
    async move {
        let started = Instant::now();
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            if started.elapsed() > deadline {
                panic!("timed out after {deadline:?} waiting for {what} (at {caller})");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
