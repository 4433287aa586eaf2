//! The scenarios of one benchmark run, their order, and the databases they share.
//!
//! One run: generate the rows once, load them into PostgreSQL (`<prefix>_src`) and MariaDB
//! (`<prefix>_src`) as the tables the selected scenarios read ([`table`]), run every selected
//! scenario against the same rows (each agent scenario with a fresh queue and a fresh hub
//! database), print the table and the targets, write the JSON, and drop every database
//! it created — also when a scenario failed.

mod agent;
mod agent_config;
mod backlog;
mod baseline;
mod database;
mod hub;
mod incremental;
mod machine;
mod sling;
mod table;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::data;
use crate::report::{Report, Row};
use agent::AgentRun;
use agent_config::Policy;
use hub::Sink;
use table::SourceTable;

/// The node id of the benchmark's agent.
const NODE: &str = "bench-node-01";
/// The resource code of the benchmark's table.
const RESOURCE: &str = "330100-RSJ-0001";
/// How long one copy of the table may take before the run gives up (at least; see [`limit`]).
const LIMIT: Duration = Duration::from_secs(3600);

/// Every scenario, in the order they run.
const SCENARIOS: &[&str] = &[
    "pg-copy-devnull",
    "pg-copy-pipe",
    "sling-pg",
    "agent-pg",
    "agent-pg-ack",
    "agent-pg-policy",
    "agent-pg-policy-ack",
    "pg-copy-pipe-noindex",
    "sling-pg-noindex",
    "agent-pg-noindex",
    "agent-pg-noindex-ack",
    "agent-pg-scale",
    "agent-pg-noindex-scale",
    "mariadb-select",
    "sling-mariadb",
    "agent-mariadb",
    "mariadb-select-noindex",
    "sling-mariadb-noindex",
    "agent-mariadb-noindex",
    "incremental",
    "backlog",
];

/// From this many rows on, `--scale-rows` defaults to [`DEFAULT_SCALE_ROWS`].
const SCALE_FROM: u64 = 10_000_000;
/// The default of `--scale-rows` for a run of [`SCALE_FROM`] rows or more.
const DEFAULT_SCALE_ROWS: u64 = 1_000_000;

/// How long moving `rows` rows may take before the run gives up: [`LIMIT`], or 20 minutes
/// per million rows when that is longer.
fn limit(rows: u64) -> Duration {
    LIMIT.max(Duration::from_secs(rows.div_ceil(1_000_000) * 1200))
}

/// Options of `exchange-bench pipeline`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Options {
    /// Rows in the generated table.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Scenarios to run (comma separated), default all: pg-copy-devnull, pg-copy-pipe,
    /// sling-pg, agent-pg, agent-pg-ack, agent-pg-policy, agent-pg-policy-ack,
    /// pg-copy-pipe-noindex, sling-pg-noindex, agent-pg-noindex, agent-pg-noindex-ack,
    /// agent-pg-scale, agent-pg-noindex-scale, mariadb-select, sling-mariadb, agent-mariadb,
    /// mariadb-select-noindex, sling-mariadb-noindex, agent-mariadb-noindex, incremental,
    /// backlog.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Rows of the scaling check: agent-pg-scale and agent-pg-noindex-scale load the first
    /// this many rows, and agent-pg (-noindex) must load all `--rows` within 1.5 × the
    /// proportional time. Default: 1000000 when `--rows` is 10000000 or more, else no check.
    #[arg(long)]
    pub scale_rows: Option<u64>,
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

impl Options {
    /// The rows of the scaling check, when it runs.
    fn scale_rows(&self) -> Option<u64> {
        self.scale_rows
            .or((self.rows >= SCALE_FROM).then_some(DEFAULT_SCALE_ROWS))
            .filter(|&n| n < self.rows)
    }

    /// Fails on a scenario name that does not exist, or a scaling scenario without its rows.
    fn check(&self) -> anyhow::Result<()> {
        for name in &self.only {
            if !SCENARIOS.contains(&name.as_str()) {
                bail!("no scenario {name:?}; there are {}", SCENARIOS.join(", "));
            }
            if name.ends_with("-scale") && self.scale_rows().is_none() {
                bail!("{name} needs --scale-rows below --rows");
            }
        }
        Ok(())
    }

    /// Whether any selected scenario's name satisfies `wanted`.
    fn wants(&self, wanted: impl Fn(&str) -> bool) -> bool {
        SCENARIOS.iter().any(|s| runs(self, s) && wanted(s))
    }
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
    options.check()?;
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

/// Whether the scenario runs: selected, and a scaling scenario only with its rows.
fn runs(options: &Options, scenario: &str) -> bool {
    selected(options, scenario) && (!scenario.ends_with("-scale") || options.scale_rows().is_some())
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
    /// Runs `body` when the scenario `name` runs and keeps its row (a failed row when it
    /// failed), saying so as it goes.
    async fn measure(
        &mut self,
        name: &str,
        what: &str,
        body: impl Future<Output = anyhow::Result<Row>>,
    ) {
        if !runs(self.options, name) {
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

/// The limit and the peer of an end-to-end scenario: those of its source, over the table with
/// the same indexes (none for the scaling scenarios).
fn baselines(scenario: &str) -> Option<(String, String)> {
    if scenario.ends_with("-scale") {
        // Fewer rows than its baselines moved: a ratio would say nothing.
        return None;
    }
    let suffix = if scenario.contains("-noindex") {
        "-noindex"
    } else {
        ""
    };
    if scenario.starts_with("sling-pg") || scenario.starts_with("agent-pg") {
        Some((format!("pg-copy-pipe{suffix}"), format!("sling-pg{suffix}")))
    } else if scenario.starts_with("sling-mariadb") || scenario.starts_with("agent-mariadb") {
        Some((
            format!("mariadb-select{suffix}"),
            format!("sling-mariadb{suffix}"),
        ))
    } else {
        None
    }
}

/// Each end-to-end row against the limit and the peer of its source, and the agent's CPU
/// seconds per million rows where the agent moved the table (not `incremental`, whose agent
/// mostly waits).
fn compare(rows: &mut [Row]) {
    for i in 0..rows.len() {
        let scenario = rows[i].scenario.clone();
        if (scenario.starts_with("agent-") || scenario == "backlog") && rows[i].rows > 0 {
            let cpu: f64 = rows[i]
                .costs
                .iter()
                .filter(|c| c.process.starts_with("agent"))
                .map(|c| c.usage.cpu.as_secs_f64())
                .sum();
            rows[i].agent_cpu_s_per_million_rows = Some(cpu * 1e6 / rows[i].rows as f64);
        }
        let Some((limit, peer)) = baselines(&scenario) else {
            continue;
        };
        rows[i].ratio_to_limit = ratio(rows, &rows[i], &limit);
        if !scenario.starts_with("sling") {
            rows[i].ratio_to_peer = ratio(rows, &rows[i], &peer);
        }
    }
}

impl Bench {
    async fn run_all(&mut self) -> anyhow::Result<Report> {
        let o = self.options.clone();
        let wants_mariadb = o.wants(|s| s.contains("mariadb"));
        let sling = if o.wants(|s| s.starts_with("sling-")) {
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
            for table in [table::INDEXED, table::NO_INDEX] {
                self.measure_mariadb(&mut measured, &dst, &columns, sling.as_deref(), table)
                    .await;
            }
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
            targets: crate::report::target::verdicts(&rows),
            rows,
        })
    }

    /// Generates the rows once and loads them into PostgreSQL, and into MariaDB when a
    /// MariaDB scenario runs, as the tables the selected scenarios read; the PostgreSQL
    /// source database.
    async fn load_sources(&mut self, wants_mariadb: bool) -> anyhow::Result<String> {
        let rows = self.options.rows;
        let tables: Vec<SourceTable> = table::ALL
            .into_iter()
            .filter(|t| *t == table::INDEXED || self.options.wants(|s| table::read_by(s) == *t))
            .collect();
        eprintln!("Generating {rows} rows…");
        let tsv = self.work.join("residents.tsv");
        let path = tsv.clone();
        tokio::task::spawn_blocking(move || data::write_tsv(&path, rows, 20_240_101))
            .await
            .expect("generator task")?;
        let src = self.create_pg("src").await?;
        eprintln!(
            "Loading {} into PostgreSQL…",
            tables.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
        );
        self.load_pg(&src, &tsv, &tables).await?;
        if wants_mariadb {
            eprintln!("Loading them into MariaDB…");
            self.create_mariadb("src")?;
            self.load_mariadb(&tsv, &tables)?;
        }
        std::fs::remove_file(&tsv)?;
        Ok(src)
    }

    /// The PostgreSQL scenarios: reading alone; then over the indexed table and over the
    /// table without a cursor index, the limit, the peer and the agent (plain and, on the
    /// indexed table, under the policy; into the hub and into the sink); then the scaling
    /// check's agent runs.
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
        for table in [table::INDEXED, table::NO_INDEX] {
            let what = format!(
                "COPY … TO STDOUT | COPY … FROM STDIN, keyed table in another database{}",
                table.describe(&self.options)
            );
            measured
                .measure(
                    &format!("pg-copy-pipe{}", table.suffix()),
                    &what,
                    self.pg_copy_pipe(src, dst, columns, table),
                )
                .await;
            if let Some(sling) = sling {
                measured
                    .measure(
                        &format!("sling-pg{}", table.suffix()),
                        &format!(
                            "sling PostgreSQL → PostgreSQL, full refresh{}",
                            table.describe(&self.options)
                        ),
                        self.sling(sling, "pg", dst, table),
                    )
                    .await;
            }
            let policies: &[Policy] = if table == table::INDEXED {
                &[Policy::Plain, Policy::Desensitized]
            } else {
                &[Policy::Plain]
            };
            for &policy in policies {
                for sink in [Sink::Hub, Sink::AckOnly] {
                    self.measure_agent(measured, AgentRun::new("postgres", sink, policy, table))
                        .await;
                }
            }
        }
        for table in [table::INDEXED_SCALE, table::NO_INDEX_SCALE] {
            self.measure_agent(
                measured,
                AgentRun::new("postgres", Sink::Hub, Policy::Plain, table),
            )
            .await;
        }
    }

    /// One agent scenario.
    async fn measure_agent(&mut self, measured: &mut Measurements<'_>, run: AgentRun) {
        let name = run.name();
        let what = run.what(&self.options);
        measured.measure(&name, &what, self.agent_sync(&run)).await;
    }

    /// The MariaDB scenarios over `table`: the limit, the peer and the agent into the hub.
    async fn measure_mariadb(
        &mut self,
        measured: &mut Measurements<'_>,
        dst: &str,
        columns: &str,
        sling: Option<&Path>,
        table: SourceTable,
    ) {
        let suffix = table.suffix();
        let describe = table.describe(&self.options);
        measured
            .measure(
                &format!("mariadb-select{suffix}"),
                &format!("mariadb --quick -e 'SELECT …' > /dev/null{describe}"),
                self.mariadb_select(columns, table),
            )
            .await;
        if let Some(sling) = sling {
            measured
                .measure(
                    &format!("sling-mariadb{suffix}"),
                    &format!("sling MariaDB → PostgreSQL, full refresh{describe}"),
                    self.sling(sling, "mariadb", dst, table),
                )
                .await;
        }
        self.measure_agent(
            measured,
            AgentRun::new("mysql", Sink::Hub, Policy::Plain, table),
        )
        .await;
    }
}
