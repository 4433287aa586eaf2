//! The scenarios of one benchmark run, their order, and the databases they share.
//!
//! One run: generate the rows once, load them into PostgreSQL (`<prefix>_src.residents`) and
//! MariaDB (`<prefix>_src.residents`), run every selected scenario against the same rows (each
//! agent scenario with a fresh queue and a fresh hub database), print the table, write the
//! JSON, and drop every database it created — also when a scenario failed.

mod agent;
mod agent_config;
mod backlog;
mod baseline;
mod database;
mod hub;
mod incremental;
mod machine;
mod sling;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::data;
use crate::report::{Report, Row};
use agent::agent_scenario;
use agent_config::Policy;
use hub::Sink;

/// The node id of the benchmark's agent.
const NODE: &str = "bench-node-01";
/// The resource code of the benchmark's table.
const RESOURCE: &str = "330100-RSJ-0001";
/// How long one copy of the table may take before the run gives up.
const LIMIT: Duration = Duration::from_secs(3600);

/// Options of `exchange-bench pipeline`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Options {
    /// Rows in the generated table.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Scenarios to run (comma separated), default all: pg-copy-devnull, pg-copy-pipe,
    /// sling-pg, agent-pg, agent-pg-ack, agent-pg-policy, agent-pg-policy-ack,
    /// mariadb-select, sling-mariadb, agent-mariadb, incremental, backlog.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// `batch.max_records` of the agent.
    #[arg(long, default_value_t = 5000)]
    pub batch_records: usize,
    /// Incremental scenario: changes per second.
    #[arg(long, default_value_t = 100)]
    pub change_rate: u32,
    /// Incremental scenario: seconds of changes.
    #[arg(long, default_value_t = 60)]
    pub change_seconds: u64,
    /// Incremental scenario: rows of the table the changes touch.
    #[arg(long, default_value_t = 10_000)]
    pub change_rows: u64,
    /// Incremental scenario: the resource's `safety_lag` (the visibility lag).
    #[arg(long, default_value = "1s")]
    pub safety_lag: String,
    /// Backlog scenario: records queued while the hub is down (at most `--rows`; default all).
    #[arg(long)]
    pub backlog_rows: Option<u64>,
    /// PostgreSQL server (a superuser; the benchmark creates and drops databases).
    #[arg(
        long,
        env = "EXCHANGE_BENCH_PG",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub pg: String,
    /// MariaDB server as `host:port` (user root, no password, as in the test suite).
    #[arg(long, env = "EXCHANGE_BENCH_MARIADB", default_value = "127.0.0.1:3306")]
    pub mariadb: String,
    /// The sling binary; default: `sling-linux-amd64` from PyPI, installed into a virtualenv
    /// under the work directory when missing.
    #[arg(long, env = "EXCHANGE_BENCH_SLING")]
    pub sling: Option<PathBuf>,
    /// Where queues, certificates, configurations and logs go (emptied first); default
    /// `<target>/bench-work`.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Where the JSON report goes; default `<target>/bench-pipeline.json`.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the databases at the end (to look at them).
    #[arg(long)]
    pub keep: bool,
}

/// Everything the scenarios share.
struct Bench {
    options: Options,
    /// The work directory.
    work: PathBuf,
    /// `exchange-agent`, `exchange-hub`.
    agent_bin: PathBuf,
    hub_bin: PathBuf,
    /// Database names start with this.
    prefix: String,
    /// Certificates: CA, hub (server) and node (client).
    tls: Tls,
    /// Databases created, to drop at the end: PostgreSQL and MariaDB.
    pg_dbs: Vec<String>,
    my_dbs: Vec<String>,
    /// MariaDB host and port.
    my_host: String,
    my_port: String,
}

struct Tls {
    ca: PathBuf,
    hub_cert: PathBuf,
    hub_key: PathBuf,
    node_cert: PathBuf,
    node_key: PathBuf,
}

/// Runs the benchmark.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .context("the benchmark's directory")?
        .to_owned();
    check_binaries(&bin_dir)?;
    let target = bin_dir.parent().unwrap_or(&bin_dir).to_owned();
    let work = options
        .work_dir
        .clone()
        .unwrap_or_else(|| target.join("bench-work"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    exchange_protocol::tls::install_provider();
    let tls = make_tls(&work)?;
    let (my_host, my_port) = options
        .mariadb
        .split_once(':')
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .unwrap_or((options.mariadb.clone(), "3306".into()));
    let mut bench = Bench {
        prefix: format!("bench_{}", std::process::id()),
        agent_bin: bin_dir.join("exchange-agent"),
        hub_bin: bin_dir.join("exchange-hub"),
        work,
        tls,
        pg_dbs: Vec::new(),
        my_dbs: Vec::new(),
        my_host,
        my_port,
        options: options.clone(),
    };
    let result = bench.run_all().await;
    if !options.keep {
        bench.drop_databases().await;
    }
    let report = result?;
    println!("{}", report.table());
    let json = options
        .json
        .clone()
        .unwrap_or_else(|| target.join("bench-pipeline.json"));
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)?;
    eprintln!("JSON written to {}", json.display());
    Ok(())
}

/// The agent and hub binaries must sit beside the benchmark's (bench/run.sh builds all three
/// in one `cargo build`: building them from here would run cargo inside `cargo run`, whose
/// environment makes build scripts run again every time).
fn check_binaries(bin_dir: &Path) -> anyhow::Result<()> {
    for bin in ["exchange-agent", "exchange-hub"] {
        if !bin_dir.join(bin).exists() {
            bail!(
                "{} is missing: run bench/run.sh, or `cargo build --release -p exchange-agent -p exchange-hub -p exchange-bench` first",
                bin_dir.join(bin).display()
            );
        }
    }
    Ok(())
}

fn make_tls(work: &Path) -> anyhow::Result<Tls> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(work)?;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o700))?;
    let pki = exchange_testkit::pki::Pki::generate(work, "Benchmark platform CA", NODE)?;
    Ok(Tls {
        ca: pki.ca_cert,
        hub_cert: pki.hub_cert,
        hub_key: pki.hub_key,
        node_cert: pki.node_cert,
        node_key: pki.node_key,
    })
}

fn selected(options: &Options, scenario: &str) -> bool {
    options.only.is_empty() || options.only.iter().any(|s| s == scenario)
}

/// `rows`-per-second ratios against a scenario of the same source.
fn ratio(rows: &[Row], row: &Row, against: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.scenario == against && r.error.is_none() && r.rows_per_s > 0.0)
        .map(|r| row.rows_per_s / r.rows_per_s)
}

/// The scenarios of one run, in order, and their rows.
struct Measurements<'a> {
    options: &'a Options,
    rows: Vec<Row>,
}

impl Measurements<'_> {
    /// Runs `body` when the scenario `name` is selected and keeps its row (a failed row when
    /// it failed), saying so as it goes.
    async fn measure(
        &mut self,
        name: &str,
        what: &str,
        body: impl Future<Output = anyhow::Result<Row>>,
    ) {
        if !selected(self.options, name) {
            return;
        }
        eprintln!("Running {name}…");
        let row = match body.await {
            Ok(row) => row,
            Err(e) => Row::failed(name, what, &e),
        };
        if let Some(e) = &row.error {
            eprintln!("{name} failed: {e}");
        } else {
            eprintln!("{name}: {:.0} rows/s", row.rows_per_s);
        }
        self.rows.push(row);
    }
}

/// Each end-to-end row against the limit and the peer of its source.
fn compare(rows: &mut [Row]) {
    for i in 0..rows.len() {
        let (limit, peer) = match rows[i].scenario.as_str() {
            "sling-pg"
            | "agent-pg"
            | "agent-pg-ack"
            | "agent-pg-policy"
            | "agent-pg-policy-ack" => ("pg-copy-pipe", "sling-pg"),
            "sling-mariadb" | "agent-mariadb" => ("mariadb-select", "sling-mariadb"),
            _ => continue,
        };
        rows[i].ratio_to_limit = ratio(rows, &rows[i], limit);
        if !rows[i].scenario.starts_with("sling") {
            rows[i].ratio_to_peer = ratio(rows, &rows[i], peer);
        }
    }
}

impl Bench {
    async fn run_all(&mut self) -> anyhow::Result<Report> {
        let o = self.options.clone();
        let wants_mariadb = ["mariadb-select", "sling-mariadb", "agent-mariadb"]
            .iter()
            .any(|s| selected(&o, s));
        let wants_sling = ["sling-pg", "sling-mariadb"]
            .iter()
            .any(|s| selected(&o, s));
        let sling = if wants_sling {
            Some(self.sling_binary()?)
        } else {
            None
        };
        let src = self.load_sources(wants_mariadb).await?;
        let dst = self.create_pg("dst").await?;
        let machine = self.machine().await;

        let mut measured = Measurements {
            options: &o,
            rows: Vec::new(),
        };
        let columns = data::COLUMNS.join(", ");
        self.measure_postgres(&mut measured, &src, &dst, &columns, sling.as_deref())
            .await;
        if wants_mariadb {
            self.measure_mariadb(&mut measured, &dst, &columns, sling.as_deref())
                .await;
        }
        measured
            .measure(
                "incremental",
                "exchange-agent run, every = 1s, changes at a fixed rate",
                self.incremental(&src),
            )
            .await;
        measured
            .measure(
                "backlog",
                "records queued while the hub is down, then the hub comes up",
                self.backlog(),
            )
            .await;

        let mut rows = measured.rows;
        compare(&mut rows);
        Ok(Report {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            machine,
            options: serde_json::to_value(&self.options)?,
            rows,
        })
    }

    /// Generates the rows once and loads them into PostgreSQL, and into MariaDB when a
    /// MariaDB scenario runs; the PostgreSQL source database.
    async fn load_sources(&mut self, wants_mariadb: bool) -> anyhow::Result<String> {
        let rows = self.options.rows;
        eprintln!("Generating {rows} rows…");
        let tsv = self.work.join("residents.tsv");
        let path = tsv.clone();
        tokio::task::spawn_blocking(move || data::write_tsv(&path, rows, 20_240_101))
            .await
            .expect("generator task")?;
        let src = self.create_pg("src").await?;
        self.load_pg(&src, &tsv).await?;
        if wants_mariadb {
            self.create_mariadb("src")?;
            self.load_mariadb(&tsv)?;
        }
        std::fs::remove_file(&tsv)?;
        Ok(src)
    }

    /// The PostgreSQL scenarios: the limit, the peer and the agent, plain and under the policy,
    /// into the hub and into the sink.
    async fn measure_postgres(
        &mut self,
        measured: &mut Measurements<'_>,
        src: &str,
        dst: &str,
        columns: &str,
        sling: Option<&Path>,
    ) {
        measured
            .measure(
                "pg-copy-devnull",
                "COPY (SELECT …) TO STDOUT > /dev/null",
                self.pg_copy_devnull(src, columns),
            )
            .await;
        measured
            .measure(
                "pg-copy-pipe",
                "COPY … TO STDOUT | COPY … FROM STDIN, keyed table in another database",
                self.pg_copy_pipe(src, dst, columns),
            )
            .await;
        if let Some(sling) = sling {
            measured
                .measure(
                    "sling-pg",
                    "sling PostgreSQL → PostgreSQL, full refresh",
                    self.sling(sling, "pg", dst),
                )
                .await;
        }
        for (name, sink, policy) in [
            ("agent-pg", Sink::Hub, Policy::Plain),
            ("agent-pg-ack", Sink::AckOnly, Policy::Plain),
            ("agent-pg-policy", Sink::Hub, Policy::Desensitized),
            ("agent-pg-policy-ack", Sink::AckOnly, Policy::Desensitized),
        ] {
            measured
                .measure(
                    name,
                    agent_scenario("postgres", sink, policy),
                    self.agent_sync(name, "postgres", sink, policy),
                )
                .await;
        }
    }

    /// The MariaDB scenarios: the limit, the peer and the agent into the hub.
    async fn measure_mariadb(
        &mut self,
        measured: &mut Measurements<'_>,
        dst: &str,
        columns: &str,
        sling: Option<&Path>,
    ) {
        measured
            .measure(
                "mariadb-select",
                "mariadb --quick -e 'SELECT …' > /dev/null",
                self.mariadb_select(columns),
            )
            .await;
        if let Some(sling) = sling {
            measured
                .measure(
                    "sling-mariadb",
                    "sling MariaDB → PostgreSQL, full refresh",
                    self.sling(sling, "mariadb", dst),
                )
                .await;
        }
        measured
            .measure(
                "agent-mariadb",
                agent_scenario("mysql", Sink::Hub, Policy::Plain),
                self.agent_sync("agent-mariadb", "mysql", Sink::Hub, Policy::Plain),
            )
            .await;
    }
}
