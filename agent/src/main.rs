//! The `exchange-agent` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use exchange_agent::config::origin::ConfigPath;
use exchange_agent::config::{Config, parse_duration};
use exchange_agent::logging::{self, LogFormat};
use exchange_agent::pipeline::Pipeline;
use exchange_agent::{check, daemon, status, sync};

/// Front-end exchange agent (前置机): pulls the configured fields of shared resources from
/// business databases and delivers them to the city's exchange hub over mutual TLS.
#[derive(Parser)]
#[command(name = "exchange-agent", version, about)]
struct Cli {
    /// Configuration file [default: $EXCHANGE_AGENT_CONFIG, else /etc/exchange-agent/agent.toml].
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Shape of the log lines on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "EXCHANGE_AGENT_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: pull on schedule, push continuously.
    Run,
    /// One pull-and-push cycle; exits 0 once everything pulled is acknowledged.
    Sync {
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
        /// Contact every source and the hub.
        #[arg(long)]
        connect: bool,
    },
    /// Show per resource the cursor, last pull and push, queued and quarantined records.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn load(file: &ConfigPath) -> Result<Config, ExitCode> {
    Config::load_from(file).map_err(|e| {
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
    let config = ConfigPath::from_env(cli.config.as_deref());
    let init_logging = |default: &str| logging::init(cli.log_format, default);
    match cli.command {
        Command::Run => {
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
        Command::Sync { resource, timeout } => {
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
        Command::Check { connect } => {
            init_logging("error");
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let (verdict, text) = check::check(&config, connect).await;
            print!("{text}");
            ExitCode::from(verdict.exit_code() as u8)
        }
        Command::Status { json } => {
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
    }
}
