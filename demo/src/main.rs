//! The `exchange-demo` command: a throwaway hub and agent on loopback, one sync, and what
//! happened. Not part of a deployment: the production `exchange-agent` does not contain it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Starts a throwaway hub and agent on loopback with a synthetic SQLite database, syncs, and
/// shows what happened. Needs no servers and no network.
#[derive(Parser)]
#[command(name = "exchange-demo", version, about)]
struct Cli {
    /// Keep the hub and the agent running (Ctrl-C to stop).
    #[arg(long)]
    keep: bool,
    /// Directory for the demo's files (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Number of synthetic residents.
    #[arg(long, default_value_t = 3000)]
    rows: usize,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let options = exchange_demo::Options {
        keep: cli.keep,
        dir: cli.dir,
        rows: cli.rows,
    };
    match exchange_demo::run(options, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
