//! The scenarios of one benchmark run, their order, and the databases they share.
//!
//! One run: generate the rows once, load them into PostgreSQL (`<prefix>_src.residents`) and
//! MariaDB (`<prefix>_src.residents`), run every selected scenario against the same rows (each
//! agent scenario with a fresh queue and a fresh hub database), print the table, write the
//! JSON, and drop every database it created — also when a scenario failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use exchange_protocol::pki::Authority;
use tokio_postgres::{Client, NoTls};

use crate::data;
use crate::process::{self, Child};
use crate::report::{Report, Row};

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

/// Where the hub of an agent scenario stores.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// `exchange-hub` with a fresh PostgreSQL database.
    Hub,
    /// `exchange-bench sink`: acknowledges without storing.
    AckOnly,
}

/// What the agent's resource does to its fields.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// Every column `plain`.
    Plain,
    /// The desensitization engine at work: `name` and `address` masked, `mobile`
    /// pseudonymized (HMAC-SM3 under a key generated for the run), `birth` generalized to its
    /// year and month; the key and the rest plain.
    Desensitized,
}

/// The field rules of [`Policy::Desensitized`] (the other columns stay `plain`).
const DESENSITIZED: &[(&str, &str)] = &[
    ("name", r#""mask:name""#),
    ("mobile", r#"{ rule = "pseudonym", identifier = "mobile" }"#),
    ("address", r#""mask:address""#),
    ("birth", r#""generalize:year_month""#),
];

/// What an agent scenario measures, for the table.
fn agent_scenario(kind: &str, sink: Sink, policy: Policy) -> &'static str {
    match (kind, sink, policy) {
        ("postgres", Sink::Hub, Policy::Plain) => {
            "exchange-agent sync: PostgreSQL → hub (PostgreSQL store)"
        }
        ("postgres", Sink::AckOnly, Policy::Plain) => {
            "exchange-agent sync: PostgreSQL → acknowledging sink"
        }
        ("postgres", Sink::Hub, Policy::Desensitized) => {
            "exchange-agent sync: PostgreSQL → policy (2 masks, 1 pseudonym, 1 generalization) → hub"
        }
        ("postgres", Sink::AckOnly, Policy::Desensitized) => {
            "exchange-agent sync: PostgreSQL → policy → acknowledging sink"
        }
        _ => "exchange-agent sync: MariaDB → hub (PostgreSQL store)",
    }
}

/// A running hub or sink.
struct RunningHub {
    child: Child,
    url: String,
    /// The hub's database (none for the sink).
    db: Option<String>,
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
    let dir = work.join("tls");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o700))?;
    let ca = Authority::generate("Benchmark platform CA")?;
    let ca_path = dir.join("ca.pem");
    ca.write_cert(&ca_path)?;
    let (hub_cert, hub_key) = ca
        .issue_server(&["127.0.0.1", "localhost"])?
        .write(&dir, "hub")?;
    let (node_cert, node_key) = ca.issue_client(NODE)?.write(&dir, "node")?;
    Ok(Tls {
        ca: ca_path,
        hub_cert,
        hub_key,
        node_cert,
        node_key,
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
        eprintln!("Generating {} rows…", o.rows);
        let tsv = self.work.join("residents.tsv");
        let path = tsv.clone();
        let rows = o.rows;
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
        let dst = self.create_pg("dst").await?;
        let machine = self.machine().await;

        let mut rows: Vec<Row> = Vec::new();
        let columns = data::COLUMNS.join(", ");
        macro_rules! scenario {
            ($name:expr, $what:expr, $body:expr) => {
                if selected(&o, $name) {
                    eprintln!("Running {}…", $name);
                    let row = match $body.await {
                        Ok(row) => row,
                        Err(e) => Row::failed($name, $what, &e),
                    };
                    if let Some(e) = &row.error {
                        eprintln!("{} failed: {e}", $name);
                    } else {
                        eprintln!("{}: {:.0} rows/s", $name, row.rows_per_s);
                    }
                    rows.push(row);
                }
            };
        }
        scenario!(
            "pg-copy-devnull",
            "COPY (SELECT …) TO STDOUT > /dev/null",
            self.pg_copy_devnull(&src, &columns)
        );
        scenario!(
            "pg-copy-pipe",
            "COPY … TO STDOUT | COPY … FROM STDIN, keyed table in another database",
            self.pg_copy_pipe(&src, &dst, &columns)
        );
        if let Some(sling) = &sling {
            scenario!(
                "sling-pg",
                "sling PostgreSQL → PostgreSQL, full refresh",
                self.sling(sling, "pg", &dst)
            );
        }
        for (name, sink, policy) in [
            ("agent-pg", Sink::Hub, Policy::Plain),
            ("agent-pg-ack", Sink::AckOnly, Policy::Plain),
            ("agent-pg-policy", Sink::Hub, Policy::Desensitized),
            ("agent-pg-policy-ack", Sink::AckOnly, Policy::Desensitized),
        ] {
            scenario!(
                name,
                agent_scenario("postgres", sink, policy),
                self.agent_sync(name, "postgres", sink, policy)
            );
        }
        if wants_mariadb {
            scenario!(
                "mariadb-select",
                "mariadb --quick -e 'SELECT …' > /dev/null",
                self.mariadb_select(&columns)
            );
            if let Some(sling) = &sling {
                scenario!(
                    "sling-mariadb",
                    "sling MariaDB → PostgreSQL, full refresh",
                    self.sling(sling, "mariadb", &dst)
                );
            }
            scenario!(
                "agent-mariadb",
                agent_scenario("mysql", Sink::Hub, Policy::Plain),
                self.agent_sync("agent-mariadb", "mysql", Sink::Hub, Policy::Plain)
            );
        }
        scenario!(
            "incremental",
            "exchange-agent run, every = 1s, changes at a fixed rate",
            self.incremental(&src)
        );
        scenario!(
            "backlog",
            "records queued while the hub is down, then the hub comes up",
            self.backlog()
        );

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
            rows[i].ratio_to_limit = ratio(&rows, &rows[i], limit);
            if !rows[i].scenario.starts_with("sling") {
                rows[i].ratio_to_peer = ratio(&rows, &rows[i], peer);
            }
        }
        Ok(Report {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            machine,
            options: serde_json::to_value(&self.options)?,
            rows,
        })
    }

    // ----- databases -----

    fn pg_url(&self, db: &str) -> String {
        format!("{}/{db}", self.options.pg.trim_end_matches('/'))
    }

    async fn pg(&self, db: &str) -> anyhow::Result<Client> {
        let url = self.pg_url(db);
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Creates the PostgreSQL database `<prefix>_<name>` (dropping a leftover first).
    async fn create_pg(&mut self, name: &str) -> anyhow::Result<String> {
        let db = format!("{}_{name}", self.prefix);
        let admin = self.pg("postgres").await?;
        for sql in [
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("CREATE DATABASE {db}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .with_context(|| format!("cannot create database {db}"))?;
        }
        if !self.pg_dbs.contains(&db) {
            self.pg_dbs.push(db.clone());
        }
        Ok(db)
    }

    async fn load_pg(&self, db: &str, tsv: &Path) -> anyhow::Result<()> {
        use futures_util::SinkExt;
        let client = self.pg(db).await?;
        client
            .batch_execute(&format!(
                "SET TIME ZONE 'UTC'; {}",
                data::pg_ddl("residents")
            ))
            .await?;
        let sink = client
            .copy_in("COPY residents FROM STDIN")
            .await
            .context("COPY into the source table")?;
        let mut sink = std::pin::pin!(sink);
        let mut file = tokio::io::BufReader::new(tokio::fs::File::open(tsv).await?);
        loop {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 1 << 20];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            sink.send(hyper::body::Bytes::from(buf)).await?;
        }
        sink.as_mut().finish().await?;
        for sql in [
            "CREATE INDEX residents_cursor ON residents (updated_at, id_card)",
            "VACUUM ANALYZE residents",
            "CHECKPOINT",
        ] {
            client.batch_execute(sql).await?;
        }
        Ok(())
    }

    fn mariadb(&self) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.args([
            "-h",
            &self.my_host,
            "-P",
            &self.my_port,
            "-u",
            "root",
            "--default-character-set=utf8mb4",
        ]);
        cmd
    }

    fn mariadb_exec(&self, db: Option<&str>, sql: &str) -> anyhow::Result<()> {
        let mut cmd = self.mariadb();
        cmd.arg("--local-infile=1");
        if let Some(db) = db {
            cmd.arg(db);
        }
        let out = cmd.arg("-e").arg(sql).output().context("run mariadb")?;
        if !out.status.success() {
            bail!(
                "mariadb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn create_mariadb(&mut self, name: &str) -> anyhow::Result<String> {
        let db = format!("{}_{name}", self.prefix);
        self.mariadb_exec(
            None,
            &format!("DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db} CHARACTER SET utf8mb4"),
        )?;
        self.my_dbs.push(db.clone());
        Ok(db)
    }

    fn load_mariadb(&self, tsv: &Path) -> anyhow::Result<()> {
        let db = format!("{}_src", self.prefix);
        self.mariadb_exec(
            Some(&db),
            &format!(
                "{}; LOAD DATA LOCAL INFILE '{}' INTO TABLE residents CHARACTER SET utf8mb4; ANALYZE TABLE residents",
                data::mysql_ddl("residents"),
                tsv.display()
            ),
        )
    }

    async fn drop_databases(&mut self) {
        if let Ok(admin) = self.pg("postgres").await {
            for db in self.pg_dbs.drain(..) {
                if let Err(e) = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .await
                {
                    eprintln!("cannot drop database {db}: {e}");
                }
            }
        }
        for db in std::mem::take(&mut self.my_dbs) {
            if let Err(e) = self.mariadb_exec(None, &format!("DROP DATABASE IF EXISTS {db}")) {
                eprintln!("cannot drop database {db}: {e:#}");
            }
        }
    }

    async fn count(&self, db: &str, sql: &str) -> anyhow::Result<i64> {
        Ok(self.pg(db).await?.query_one(sql, &[]).await?.get(0))
    }

    async fn machine(&self) -> Vec<String> {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .next()
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
            })
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let pg = match self.pg("postgres").await {
            Ok(c) => c
                .query_one("SHOW server_version", &[])
                .await
                .map(|r| format!("PostgreSQL {}", r.get::<_, String>(0)))
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        let my = self
            .mariadb()
            .args(["-N", "-e", "SELECT VERSION()"])
            .output()
            .map(|o| format!("MariaDB {}", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_default();
        vec![
            format!("{cpu}, {cores} cores, {mem}"),
            format!("Linux {kernel}"),
            pg,
            my,
        ]
    }

    // ----- baselines -----

    async fn pg_copy_devnull(&self, src: &str, columns: &str) -> anyhow::Result<Row> {
        let script = format!(
            "psql -X -q -d '{}' -c \"COPY (SELECT {columns} FROM residents) TO STDOUT\" > /dev/null",
            self.pg_url(src)
        );
        let usage = process::shell("psql", &script, LIMIT).await?;
        Ok(Row::new(
            "pg-copy-devnull",
            "COPY (SELECT …) TO STDOUT > /dev/null",
            self.options.rows,
            usage.wall,
        )
        .cost("psql", usage))
    }

    async fn pg_copy_pipe(&self, src: &str, dst: &str, columns: &str) -> anyhow::Result<Row> {
        self.pg(dst)
            .await?
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS residents_copy; {}",
                data::pg_ddl("residents_copy")
            ))
            .await?;
        let script = format!(
            "set -e; psql -X -q -v ON_ERROR_STOP=1 -d '{}' -c \"COPY (SELECT {columns} FROM residents) TO STDOUT\" \
             | psql -X -q -v ON_ERROR_STOP=1 -d '{}' -c \"COPY residents_copy FROM STDIN\"",
            self.pg_url(src),
            self.pg_url(dst)
        );
        let usage = process::shell("psql+psql", &script, LIMIT).await?;
        let n = self
            .count(dst, "SELECT count(*) FROM residents_copy")
            .await?;
        if n as u64 != self.options.rows {
            bail!("the keyed table holds {n} rows, not {}", self.options.rows);
        }
        self.pg(dst)
            .await?
            .batch_execute("DROP TABLE residents_copy")
            .await?;
        Ok(Row::new(
            "pg-copy-pipe",
            "COPY … TO STDOUT | COPY … FROM STDIN (keyed table)",
            self.options.rows,
            usage.wall,
        )
        .cost("psql+psql", usage))
    }

    async fn mariadb_select(&self, columns: &str) -> anyhow::Result<Row> {
        let db = format!("{}_src", self.prefix);
        let script = format!(
            "mariadb -h {} -P {} -u root --quick {db} -e 'SELECT {columns} FROM residents' > /dev/null",
            self.my_host, self.my_port
        );
        let usage = process::shell("mariadb", &script, LIMIT).await?;
        Ok(Row::new(
            "mariadb-select",
            "mariadb --quick -e 'SELECT …' > /dev/null",
            self.options.rows,
            usage.wall,
        )
        .cost("mariadb", usage))
    }

    /// `sling-linux-amd64` (PyPI): the binary given, or installed into a virtualenv.
    fn sling_binary(&self) -> anyhow::Result<PathBuf> {
        if let Some(b) = &self.options.sling {
            return Ok(b.clone());
        }
        let venv = self.work.parent().unwrap_or(&self.work).join("bench-venv");
        let find = || -> Option<PathBuf> {
            let lib = venv.join("lib");
            for py in std::fs::read_dir(&lib).ok()? {
                let bin = py
                    .ok()?
                    .path()
                    .join("site-packages/sling_linux_amd64/bin/sling-linux-amd64");
                if bin.exists() {
                    return Some(bin);
                }
            }
            None
        };
        if let Some(bin) = find() {
            return Ok(bin);
        }
        eprintln!("Installing sling-linux-amd64 into {}…", venv.display());
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("python3 -m venv")?
            .success()
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "sling-linux-amd64"])
                .status()
                .context("pip install sling-linux-amd64")?
                .success();
        if !ok {
            bail!("cannot install sling-linux-amd64 from PyPI (or pass --sling PATH)");
        }
        find().context("sling-linux-amd64 installed, but its binary is not where expected")
    }

    async fn sling(&self, sling: &Path, source: &str, dst: &str) -> anyhow::Result<Row> {
        let src_db = format!("{}_src", self.prefix);
        let (name, src_url, stream) = match source {
            "pg" => (
                "sling-pg",
                format!("{}?sslmode=disable", self.pg_url(&src_db)),
                "public.residents".to_owned(),
            ),
            _ => (
                "sling-mariadb",
                format!("mysql://root@{}:{}/{src_db}", self.my_host, self.my_port),
                format!("{src_db}.residents"),
            ),
        };
        let table = format!("residents_{}", name.replace('-', "_"));
        let home = self.work.join("sling-home");
        std::fs::create_dir_all(&home)?;
        let mut cmd = Command::new(sling);
        cmd.args(["run", "--src-conn", "BENCH_SRC", "--src-stream", &stream])
            .args(["--tgt-conn", "BENCH_DST", "--tgt-object"])
            .arg(format!("public.{table}"))
            .args(["--mode", "full-refresh"])
            .env("BENCH_SRC", &src_url)
            .env("BENCH_DST", format!("{}?sslmode=disable", self.pg_url(dst)))
            .env("SLING_HOME_DIR", &home)
            .env("SLING_DISABLE_TELEMETRY", "true")
            .env("SLING_LOADED_AT_COLUMN", "false")
            .stdout(Stdio::null());
        let log = self.work.join(format!("{name}.log"));
        let child = process::spawn("sling", cmd, Some(&log))?;
        let usage = child
            .wait_at_most(LIMIT)
            .await
            .with_context(|| format!("see {}", log.display()))?;
        let n = self
            .count(dst, &format!("SELECT count(*) FROM {table}"))
            .await?;
        if n as u64 != self.options.rows {
            bail!("sling copied {n} rows, not {}", self.options.rows);
        }
        self.pg(dst)
            .await?
            .batch_execute(&format!("DROP TABLE {table}"))
            .await?;
        let what = if source == "pg" {
            "sling PostgreSQL → PostgreSQL, full refresh"
        } else {
            "sling MariaDB → PostgreSQL, full refresh"
        };
        Ok(Row::new(name, what, self.options.rows, usage.wall).cost("sling", usage))
    }

    // ----- the agent -----

    async fn start_hub(&mut self, name: &str, sink: Sink) -> anyhow::Result<RunningHub> {
        match sink {
            Sink::AckOnly => {
                let mut cmd = Command::new(std::env::current_exe()?);
                cmd.arg("sink")
                    .arg("--ca")
                    .arg(&self.tls.ca)
                    .arg("--cert")
                    .arg(&self.tls.hub_cert)
                    .arg("--key")
                    .arg(&self.tls.hub_key)
                    .stdout(Stdio::piped());
                let log = self.work.join(format!("{name}-sink.log"));
                let mut child = process::spawn("sink", cmd, Some(&log))?;
                let stdout = child.stdout.take().context("the sink's standard output")?;
                let port = tokio::task::spawn_blocking(move || {
                    let mut line = String::new();
                    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                        .map(|_| line.trim().to_owned())
                })
                .await
                .expect("reader task")?;
                Ok(RunningHub {
                    child,
                    url: format!("https://127.0.0.1:{port}"),
                    db: None,
                })
            }
            Sink::Hub => {
                let db = self.create_pg(&name.replace('-', "_")).await?;
                let port = free_port()?;
                let config = self.work.join(format!("{name}-hub.toml"));
                std::fs::write(
                    &config,
                    format!(
                        "[listen]\naddr = \"127.0.0.1:{port}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n[store]\nurl = {:?}\n",
                        self.tls.ca,
                        self.tls.hub_cert,
                        self.tls.hub_key,
                        self.pg_url(&db)
                    ),
                )?;
                let hub = self.spawn_hub(name, &config)?;
                wait_for_port(port).await?;
                Ok(RunningHub {
                    child: hub,
                    url: format!("https://127.0.0.1:{port}"),
                    db: Some(db),
                })
            }
        }
    }

    fn spawn_hub(&self, name: &str, config: &Path) -> anyhow::Result<Child> {
        let mut cmd = Command::new(&self.hub_bin);
        cmd.arg("serve").arg("--config").arg(config);
        cmd.env("RUST_LOG", "warn").stdout(Stdio::null());
        process::spawn(
            "exchange-hub",
            cmd,
            Some(&self.work.join(format!("{name}-hub.log"))),
        )
    }

    /// Writes `<work>/<name>/agent.toml` for the table `table` of `kind`'s source database.
    fn agent_config(
        &self,
        name: &str,
        kind: &str,
        table: &str,
        hub_url: &str,
        every: &str,
        policy: Policy,
    ) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let policy_section = match policy {
            Policy::Plain => String::new(),
            Policy::Desensitized => {
                // A key of the run, outside data_dir, readable by its owner only.
                use rand::Rng;
                use std::os::unix::fs::OpenOptionsExt;
                let secret: [u8; 32] = rand::rng().random();
                let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
                let path = dir.join("pseudonym.key");
                std::io::Write::write_all(
                    &mut std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)?,
                    format!("{hex}\n").as_bytes(),
                )?;
                format!("[policy]\npseudonym_key_file = {path:?}\npseudonym_key_version = 1\n\n")
            }
        };
        let src_db = format!("{}_src", self.prefix);
        let url = match kind {
            "postgres" => self.pg_url(&src_db),
            _ => format!("mysql://root@{}:{}/{src_db}", self.my_host, self.my_port),
        };
        let fields: String = data::COLUMNS
            .iter()
            .map(|c| {
                let rule = match policy {
                    Policy::Desensitized => DESENSITIZED
                        .iter()
                        .find(|(name, _)| name == c)
                        .map_or(r#""plain""#, |(_, rule)| rule),
                    Policy::Plain => r#""plain""#,
                };
                format!("{c} = {rule}\n")
            })
            .collect();
        let text = format!(
            r#"[node]
id = "{NODE}"
department = "11330100MB0123456W"
data_dir = {data:?}

[hub]
url = "{hub_url}"
ca = {ca:?}
cert = {cert:?}
key = {key:?}
timeout = "60s"

[queue]
max_bytes = "4GiB"

{policy_section}
[batch]
max_records = {batch}
max_bytes = "8MiB"

[[sources]]
name = "registry"
kind = "{kind}"
url = "{url}"

[[resources]]
code = "{RESOURCE}"
name = "常住人口"
share = "unconditional"
source = "registry"
table = "{table}"
key = "id_card"
mode = "incremental"
cursor = ["updated_at", "id_card"]
safety_lag = "{lag}"
every = "{every}"

[resources.fields]
{fields}"#,
            data = dir.join("data"),
            ca = self.tls.ca,
            cert = self.tls.node_cert,
            key = self.tls.node_key,
            batch = self.options.batch_records,
            lag = self.options.safety_lag,
        );
        let path = dir.join("agent.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn agent(&self, name: &str, config: &Path, command: &[&str]) -> anyhow::Result<Child> {
        let mut cmd = Command::new(&self.agent_bin);
        cmd.arg("--config").arg(config).args(command);
        cmd.env("RUST_LOG", "warn").stdout(Stdio::null());
        let log = config.with_file_name(format!("{}.log", command[0]));
        process::spawn(name, cmd, Some(&log))
    }

    async fn agent_sync(
        &mut self,
        name: &str,
        kind: &str,
        sink: Sink,
        policy: Policy,
    ) -> anyhow::Result<Row> {
        let hub = self.start_hub(name, sink).await?;
        let config = self.agent_config(name, kind, "residents", &hub.url, "1h", policy)?;
        let agent = self.agent("exchange-agent", &config, &["sync", "--timeout", "3600s"])?;
        let agent_usage = agent
            .wait_at_most(LIMIT)
            .await
            .with_context(|| format!("see {}", config.with_file_name("sync.log").display()));
        let hub_usage = hub.child.stop().await?;
        let agent_usage = agent_usage?;
        if let Some(db) = &hub.db {
            let n = self.count(db, "SELECT count(*) FROM records").await?;
            if n as u64 != self.options.rows {
                bail!("the hub holds {n} records, not {}", self.options.rows);
            }
            if policy == Policy::Desensitized {
                self.check_desensitized(db).await?;
            }
        }
        let what = agent_scenario(kind, sink, policy);
        let hub_name = if sink == Sink::Hub { "hub" } else { "sink" };
        Ok(Row::new(name, what, self.options.rows, agent_usage.wall)
            .cost("agent", agent_usage)
            .cost(hub_name, hub_usage))
    }

    /// Fails unless the hub's records of a desensitized run hold what the rules deliver: a
    /// masked name and address, a pseudonym for the mobile number, a year and month of birth.
    async fn check_desensitized(&self, hub_db: &str) -> anyhow::Result<()> {
        let rows = self
            .pg(hub_db)
            .await?
            .query("SELECT fields FROM records ORDER BY key LIMIT 100", &[])
            .await?;
        for row in rows {
            let text: String = row.get(0);
            let fields: serde_json::Value = serde_json::from_str(&text)?;
            let field = |name: &str| fields[name].as_str().unwrap_or_default().to_owned();
            let ok = field("name").contains('*')
                && field("address").contains('*')
                && field("mobile").starts_with("v1:")
                && field("birth").len() == "yyyy-mm".len();
            if !ok {
                bail!("a record at the hub is not desensitized as configured");
            }
        }
        Ok(())
    }

    /// Changes at a fixed rate on a small copy of the table while the agent runs with
    /// `every = "1s"`; each change sets `salary` to 10⁹ + its number, so the hub's copy tells
    /// which change it holds and `updated_at` (the hub's commit clock) when it got there.
    async fn incremental(&mut self, src: &str) -> anyhow::Result<Row> {
        let o = self.options.clone();
        let client = self.pg(src).await?;
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS residents_inc;
                 CREATE TABLE residents_inc AS SELECT * FROM residents ORDER BY id_card LIMIT {};
                 ALTER TABLE residents_inc ADD PRIMARY KEY (id_card);
                 CREATE INDEX ON residents_inc (updated_at, id_card);",
                o.change_rows
            ))
            .await?;
        let keys: Vec<String> = client
            .query("SELECT id_card FROM residents_inc ORDER BY id_card", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let hub = self.start_hub("incremental", Sink::Hub).await?;
        let hub_db = hub.db.clone().expect("a hub database");
        let config = self.agent_config(
            "incremental",
            "postgres",
            "residents_inc",
            &hub.url,
            "1s",
            Policy::Plain,
        )?;
        // The baseline first, so the changes are measured on a caught-up stream.
        self.agent("exchange-agent", &config, &["sync"])?
            .wait_at_most(LIMIT)
            .await?;
        let daemon = self.agent("exchange-agent", &config, &["run"])?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle_rss = daemon.rss();
        let update = client
            .prepare(
                "UPDATE residents_inc SET salary = $1::int8, updated_at = clock_timestamp() WHERE id_card = $2",
            )
            .await?;
        let total = u64::from(o.change_rate) * o.change_seconds;
        let mut committed: BTreeMap<u64, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1) / o.change_rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for n in 0..total {
            tick.tick().await;
            let key = &keys[(n % keys.len() as u64) as usize];
            client
                .execute(&update, &[&(1_000_000_000i64 + n as i64), key])
                .await?;
            committed.insert(n, chrono::Utc::now());
        }
        // The last change of each key is the one the hub keeps.
        let expected: u64 = total.min(keys.len() as u64);
        let hub_client = self.pg(&hub_db).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let rows = loop {
            let rows = hub_client
                .query(
                    "SELECT fields, updated_at FROM records WHERE (fields::jsonb->>'salary')::numeric >= 1000000000",
                    &[],
                )
                .await?;
            if rows.len() as u64 >= expected || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let agent_usage = daemon.stop().await?;
        let hub_usage = hub.child.stop().await?;
        let mut latencies: Vec<f64> = Vec::new();
        for row in &rows {
            let fields: String = row.get(0);
            let at: String = row.get(1);
            let fields: serde_json::Value = serde_json::from_str(&fields)?;
            let salary = match &fields["salary"] {
                serde_json::Value::String(s) => s.parse::<f64>().ok(),
                v => v.as_f64(),
            }
            .context("salary in the hub's record")?;
            let n = (salary - 1e9).round() as u64;
            let at = chrono::DateTime::parse_from_rfc3339(&at)?.with_timezone(&chrono::Utc);
            if let Some(c) = committed.get(&n) {
                latencies.push((at - *c).num_microseconds().unwrap_or(0) as f64 / 1e6);
            }
        }
        if (latencies.len() as u64) < expected {
            bail!(
                "only {} of {expected} changes reached the hub within 60 s after the last",
                latencies.len()
            );
        }
        latencies.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        let lag = parse_seconds(&o.safety_lag);
        let target = lag + 1.0 + 0.5;
        let (p50, p99) = (pct(0.5), pct(0.99));
        let mut row = Row::new(
            "incremental",
            "exchange-agent run, every = 1s, changes at a fixed rate",
            total,
            Duration::from_secs(o.change_seconds),
        )
        .cost("agent", agent_usage)
        .cost("hub", hub_usage)
        .note(format!(
            "{} changes/s for {} s; change → hub commit p50 {p50:.2} s, p99 {p99:.2} s, max {:.2} s (target p99 ≤ safety_lag {lag} s + every 1 s + 0.5 s = {target:.1} s: {})",
            o.change_rate,
            o.change_seconds,
            latencies.last().copied().unwrap_or(0.0),
            if p99 <= target { "met" } else { "missed" }
        ))
        .note(format!(
            "agent idle RSS {:.1} MiB (target ≤ 20 MiB)",
            idle_rss as f64 / 1048576.0
        ));
        row.rows_per_s = o.change_rate as f64;
        Ok(row)
    }

    /// The whole table queued with the hub down (the daemon pulls, pushes fail); then the
    /// daemon is stopped, the hub started, a daemon started again, and the time until the
    /// hub applied the last batch is the drain.
    async fn backlog(&mut self) -> anyhow::Result<Row> {
        let rows = self
            .options
            .backlog_rows
            .unwrap_or(self.options.rows)
            .min(self.options.rows);
        let table = if rows == self.options.rows {
            "residents".to_owned()
        } else {
            let src = format!("{}_src", self.prefix);
            self.pg(&src)
                .await?
                .batch_execute(&format!(
                    "DROP VIEW IF EXISTS residents_backlog;
                     CREATE VIEW residents_backlog AS SELECT * FROM residents WHERE id_card IN
                       (SELECT id_card FROM residents ORDER BY updated_at, id_card LIMIT {rows})"
                ))
                .await?;
            "residents_backlog".to_owned()
        };
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let config = self.agent_config("backlog", "postgres", &table, &url, "1h", Policy::Plain)?;
        let status = config.with_file_name("data").join("status.json");
        let filling = self.agent("exchange-agent", &config, &["run"])?;
        let fill_started = Instant::now();
        let batches = loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some((records, batches, pulled)) = queued(&status)
                && records >= rows
                && pulled
            {
                break batches;
            }
            if fill_started.elapsed() > LIMIT {
                bail!("the queue did not fill within {LIMIT:?}");
            }
        };
        let fill_usage = filling.stop().await?;
        // The hub comes up.
        let db = self.create_pg("backlog").await?;
        let hub_config = self.work.join("backlog-hub.toml");
        std::fs::write(
            &hub_config,
            format!(
                "[listen]\naddr = \"127.0.0.1:{port}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n[store]\nurl = {:?}\n",
                self.tls.ca,
                self.tls.hub_cert,
                self.tls.hub_key,
                self.pg_url(&db)
            ),
        )?;
        let hub = self.spawn_hub("backlog", &hub_config)?;
        wait_for_port(port).await?;
        let hub_client = self.pg(&db).await?;
        let draining = self.agent("exchange-agent", &config, &["run"])?;
        let started = Instant::now();
        loop {
            let last: Option<i64> = hub_client
                .query_opt("SELECT last_seq FROM streams", &[])
                .await?
                .map(|r| r.get(0));
            if last.unwrap_or(0) as u64 >= batches {
                break;
            }
            if started.elapsed() > LIMIT {
                bail!("the backlog did not drain within {LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drain = started.elapsed();
        let drain_usage = draining.stop().await?;
        let hub_usage = hub.stop().await?;
        let n = self.count(&db, "SELECT count(*) FROM records").await?;
        if n as u64 != rows {
            bail!("the hub holds {n} records after the drain, not {rows}");
        }
        Ok(Row::new(
            "backlog",
            "records queued while the hub is down, then the hub comes up",
            rows,
            drain,
        )
        .cost("agent (fill)", fill_usage)
        .cost("agent (drain)", drain_usage)
        .cost("hub", hub_usage)
        .note(format!(
            "{rows} records in {batches} batches queued in {:.1} s with the hub down; drained in {:.1} s (target ≥ 200000 records/s)",
            fill_usage.wall.as_secs_f64(),
            drain.as_secs_f64()
        )))
    }
}

/// Queued records, batches, and whether a pull completed, from a daemon's `status.json`.
fn queued(status: &Path) -> Option<(u64, u64, bool)> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(status).ok()?).ok()?;
    let r = v["resources"].as_array()?.first()?;
    Some((
        r["queued_records"].as_u64()?,
        r["queued_batches"].as_u64()?,
        !r["last_pull"].is_null(),
    ))
}

fn parse_seconds(text: &str) -> f64 {
    let t = text.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.parse::<f64>().unwrap_or(0.0) / 1000.0;
    }
    if let Some(s) = t.strip_suffix('s') {
        return s.parse().unwrap_or(0.0);
    }
    if let Some(m) = t.strip_suffix('m') {
        return m.parse::<f64>().unwrap_or(0.0) * 60.0;
    }
    0.0
}

/// A loopback port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
