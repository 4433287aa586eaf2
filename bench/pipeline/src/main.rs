//! `exchange-bench`: the pipeline benchmark.
//!
//! `exchange-bench pipeline` generates one table of synthetic residents (the mix of types and
//! Chinese text a resident registry has), loads it into PostgreSQL and MariaDB, and measures in
//! one run, on the same machine and the same rows:
//!
//! | scenario | what moves the rows |
//! |---|---|
//! | `pg-copy-devnull` | `COPY (SELECT …) TO STDOUT` into `/dev/null` (reading alone) |
//! | `pg-copy-pipe` | `COPY … TO STDOUT \| COPY … FROM STDIN` into a keyed table in another database: **the limit** |
//! | `sling-pg` | sling PostgreSQL → PostgreSQL, full refresh: **the peer** |
//! | `agent-pg` | `exchange-agent sync`: PostgreSQL → policy → queue → mutual TLS → `exchange-hub` storing into PostgreSQL |
//! | `agent-pg-ack` | the same into a sink that acknowledges without storing: the agent's own ceiling |
//! | `mariadb-select` | `mariadb --quick -e 'SELECT …' > /dev/null`: the MariaDB limit |
//! | `sling-mariadb` | sling MariaDB → PostgreSQL |
//! | `agent-mariadb` | `exchange-agent sync` from MariaDB into the hub |
//! | `…-noindex` | the limits, the peers and the agent (into the hub and the sink) over the same rows in a table with the primary key alone (no index on the cursor columns) |
//! | `agent-pg-scale`, `agent-pg-noindex-scale` | `agent-pg` (`-noindex`) over the first `--scale-rows` rows: the scaling check of a large `--rows` |
//! | `incremental` | `exchange-agent run` with `every = "1s"` while changes arrive at a fixed rate: change-to-hub latency |
//! | `backlog` | rows queued while the hub is down, then the hub comes up: drain rate |
//!
//! Every process the benchmark starts is its child, so its peak RSS and CPU seconds come from
//! `wait4` (children it waited for included: `sh -c 'psql | psql'` counts both `psql`s). The
//! database servers are not children: their CPU is not in the figures.
//!
//! After the table it prints the targets (`report::target`) against the run's own
//! figures.
//!
//! `exchange-bench sink` is the acknowledging sink, run as a process of its own.

mod data;
mod disk;
mod process;
mod report;
mod scenario;
mod sink;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The pipeline benchmark.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark and print its table (and write it as JSON).
    Pipeline(scenario::Options),
    /// Serve `POST /v1/batches` over mutual TLS, acknowledging every batch without storing it
    /// (prints the port it listens on, then serves until SIGTERM).
    Sink {
        /// The CA that issues client certificates.
        #[arg(long)]
        ca: PathBuf,
        /// The sink's certificate.
        #[arg(long)]
        cert: PathBuf,
        /// The sink's private key.
        #[arg(long)]
        key: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = match cli.command {
        Command::Pipeline(options) => runtime.block_on(scenario::run(options)),
        Command::Sink { ca, cert, key } => runtime.block_on(sink::serve(ca, cert, key)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
