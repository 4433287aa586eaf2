//! `exchange-agent demo` (being written).

use std::future::Future;
use std::path::PathBuf;

/// Demo options.
pub struct Options {
    /// Keep running.
    pub keep: bool,
    /// Directory.
    pub dir: Option<PathBuf>,
    /// Rows.
    pub rows: usize,
}

/// Runs the demo.
pub async fn run(_o: Options, _shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
