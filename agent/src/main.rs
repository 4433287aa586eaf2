//! The `exchange-agent` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use exchange_agent::config::{Config, parse_duration};
use exchange_agent::pipeline::Pipeline;
use exchange_agent::{check, daemon, demo, status, sync};

/// Front-end exchange agent (前置机): pulls shared resources from business databases and
/// delivers them to the city's exchange hub over mutual TLS.
#[derive(Parser)]
#[command(name = "exchange-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: pull on schedule, push continuously.
    Run {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// One pull-and-push cycle; exits 0 once everything pulled is acknowledged.
    Sync {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this resource code.
        #[arg(long)]
        resource: Option<String>,
        /// Give up after this long (e.g. "10m").
        #[arg(long, default_value = "10m")]
        timeout: String,
    },
    /// Validate the configuration (exit 2 if invalid); with --connect also reach sources and
    /// the hub (exit 3 if unreachable).
    Check {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Contact every source and the hub.
        #[arg(long)]
        connect: bool,
    },
    /// Show per resource the cursor, last pull and push, queued and quarantined records.
    Status {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a throwaway hub and agent on loopback with a synthetic SQLite database, sync,
    /// and show what happened. Needs no servers and no network.
    Demo {
        /// Keep the hub and the agent running (Ctrl-C to stop).
        #[arg(long)]
        keep: bool,
        /// Directory for the demo's files (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of synthetic residents.
        #[arg(long, default_value_t = 3000)]
        rows: usize,
    },
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(1)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logging("info");
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let pipeline = match Pipeline::build(config).context("cannot start the agent") {
                Ok(p) => Arc::new(p),
                Err(e) => return fail(e),
            };
            daemon::run(pipeline, shutdown_signal()).await;
            ExitCode::SUCCESS
        }
        Command::Sync {
            config,
            resource,
            timeout,
        } => {
            init_logging("warn");
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let deadline = match parse_duration(&timeout) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: --timeout: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(code) = &resource
                && config.resource(code).is_none()
            {
                eprintln!("error: no resource `{code}` in {}", config.file.display());
                return ExitCode::from(2);
            }
            let pipeline = match Pipeline::build(config).context("cannot start the sync") {
                Ok(p) => Arc::new(p),
                Err(e) => return fail(e),
            };
            let report = sync::sync(pipeline, resource.as_deref(), deadline).await;
            print!("{report}");
            if report.is_complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Check { config, connect } => {
            init_logging("error");
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let (verdict, text) = check::check(&config, connect).await;
            print!("{text}");
            ExitCode::from(verdict.exit_code() as u8)
        }
        Command::Status { config, json } => {
            init_logging("warn");
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match status::read(&config) {
                Ok(r) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&r).expect("report serializes")
                    );
                    ExitCode::SUCCESS
                }
                Ok(r) => {
                    print!("{r}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Demo { keep, dir, rows } => {
            init_logging("warn");
            match demo::run(demo::Options { keep, dir, rows }, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}
