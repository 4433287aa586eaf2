//! `exchange-bench-verify`: the verification benchmark (bench/README.md).
//!
//! Loads a PostgreSQL table of `--rows` subjects (default 1,000,000) and measures in one run,
//! on loopback:
//!
//! | scenario | what is timed |
//! |---|---|
//! | `select-1` | the bare parameterized SELECT the agent issues (`WHERE key = ANY($1)`, one key), at `--rate` per second for `--seconds`, on one of 8 sessions |
//! | `verify-1` | `POST /v1/verify` with one subject and two claims over mutual TLS (HTTP/2), at the same rate: TLS, parsing, authorization, quotas, lookup, comparison and the fsynced audit record |
//! | `select-1000` | the same SELECT with 1,000 keys, `--batches` times in a row |
//! | `verify-1000` | a 1,000-item request, `--batches` times in a row |
//! | `psi-…` | `POST /v1/verify/psi` (private set intersection) with 100 subjects and two claims each over a table of `--psi-rows` rows (default 20,000), 3 times: the agent's scan and group arithmetic; the time per tag is its CPU cost (one hash-to-group and scalar multiplication per key, stored value and point) |
//!
//! Latencies are from sending to the complete answer; the rate is open-loop (a request is
//! started every 1/rate s whether or not earlier ones finished), so a slow server shows as
//! latency, not as a lower rate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use exchange_protocol::pki::Authority;
use exchange_protocol::verify::{Claim, Item, VerifyRequest};

/// Options.
#[derive(Parser)]
#[command(version, about)]
struct Options {
    /// PostgreSQL server (an account that may create databases).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg: String,
    /// Rows in the table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Single-subject requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of single-subject load per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// 1,000-item requests per scenario.
    #[arg(long, default_value_t = 30)]
    batches: usize,
    /// Rows of the table private set intersection scans.
    #[arg(long, default_value_t = 20_000)]
    psi_rows: u64,
}

fn key(i: u64) -> String {
    format!("B{i:017}")
}

/// p50, p99 and max in milliseconds.
fn summary(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    (at(0.5), at(0.99), v.last().unwrap().as_secs_f64() * 1e3)
}

/// Runs `f` at `rate` per second for `seconds`, open loop; the latencies.
async fn paced<F, Fut>(rate: u64, seconds: u64, f: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for n in 0..rate * seconds {
        tick.tick().await;
        let fut = f(n);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            fut.await.map(|()| t.elapsed())
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = Options::parse();
    exchange_protocol::tls::install_provider();
    let dir = std::env::temp_dir().join(format!("exchange-bench-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = format!("bench_verify_{}", std::process::id());
    let (admin, conn) = tokio_postgres::connect(&o.pg, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await?;
    let url = match o.pg.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => anyhow::bail!("--pg must name a database"),
    };
    let result = run(&o, &dir, &url).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// What `write_setup` wrote: the agent's configuration and the requester's TLS material.
struct Setup {
    /// The agent's configuration.
    config: PathBuf,
    /// The requester's TLS material (the hub's client certificate).
    tls: exchange_protocol::tls::MutualTls,
}

/// A bare SELECT session: a connection and the agent's prepared lookup.
type Session = Arc<(tokio_postgres::Client, tokio_postgres::Statement)>;

/// The claims and requests of the run, subjects spread over the table.
#[derive(Clone, Copy)]
struct Requests {
    rows: u64,
}

impl Requests {
    /// The `n`th subject: its key with its true name and a birth date.
    fn item(self, n: u64) -> Item {
        let i = (n.wrapping_mul(2_654_435_761)) % self.rows;
        Item {
            subject: key(i),
            claims: [
                ("name".to_owned(), Claim::Value(format!("name {i}"))),
                ("birth".to_owned(), Claim::Value("1950-01-01".into())),
            ]
            .into_iter()
            .collect(),
        }
    }

    /// Request `n` of `BENCH-1` with `items`.
    fn request(self, n: u64, items: Vec<Item>) -> VerifyRequest {
        VerifyRequest {
            request_id: format!("bench-{n}"),
            purpose: "benchmark".into(),
            case_ref: "bench".into(),
            resource: "BENCH-1".into(),
            items,
        }
    }
}

/// The latencies of each scenario.
struct Latencies {
    select_1: Vec<Duration>,
    verify_1: Vec<Duration>,
    select_1000: Vec<Duration>,
    verify_1000: Vec<Duration>,
    psi: Vec<Duration>,
}

async fn run(o: &Options, dir: &Path, url: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    load_tables(o, &client).await?;
    let setup = write_setup(dir, url)?;
    let loaded =
        exchange_agent::config::Config::load(&setup.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let agent_url = format!("https://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(exchange_agent::verify::run(
        listener,
        Arc::new(loaded),
        async move {
            let _ = stopped.await;
        },
    ));
    let verifier = Arc::new(exchange_hub::verify::Verifier::new(&setup.tls, &agent_url)?);
    let sessions = select_sessions(url).await?;
    let requests = Requests { rows: o.rows };
    // Warm-up: connections, sessions, plans.
    for n in 0..50 {
        verifier
            .verify(&requests.request(n, vec![requests.item(n)]))
            .await?;
    }
    let latencies = measure(o, &sessions, &verifier, requests).await?;
    let _ = stop.send(());
    server.await??;
    print_results(o, latencies);
    Ok(())
}

/// `people` with `--rows` subjects and `people_psi` with its first `--psi-rows`.
async fn load_tables(o: &Options, client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "CREATE TABLE people (id_no text PRIMARY KEY, name text, birth date, salary numeric(12,2));
             INSERT INTO people SELECT 'B' || lpad(i::text, 17, '0'), 'name ' || i,
               date '1950-01-01' + (i % 20000)::int, (i % 100000) / 100.0
               FROM generate_series(0, {}) AS i;
             ANALYZE people;
             CREATE TABLE people_psi AS SELECT * FROM people WHERE id_no < 'B' || lpad({}::text, 17, '0');
             ALTER TABLE people_psi ADD PRIMARY KEY (id_no);",
            o.rows - 1,
            o.psi_rows.min(o.rows)
        ))
        .await?;
    eprintln!(
        "{} rows loaded in {:.1} s",
        o.rows,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Certificates, keys and the agent's configuration in `dir`.
fn write_setup(dir: &Path, url: &str) -> anyhow::Result<Setup> {
    let ca = Authority::generate("Bench CA")?;
    let ca_path = dir.join("ca.pem");
    ca.write_cert(&ca_path)?;
    let (server_cert, server_key) = ca.issue_server(&["127.0.0.1"])?.write(dir, "server")?;
    let (node_cert, node_key) = ca.issue_client("bench-node")?.write(dir, "node")?;
    let (hub_cert, hub_key) = ca.issue_client("city-hub")?.write(dir, "hub")?;
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys)?;
    let pseudonym = keys.join("pseudonym.key");
    std::fs::write(&pseudonym, "ab".repeat(32))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pseudonym, std::fs::Permissions::from_mode(0o600))?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"[node]
id = "bench-node"
department = "11330100MB0123456W"
data_dir = {data}
[hub]
url = "https://127.0.0.1:9"
ca = {ca}
{node}[policy]
pseudonym_key_file = {pk}
[verify]
listen = "127.0.0.1:0"
{server}client_ca = {ca}
pool_size = 8
items_per_minute = 100000000
subjects_per_day = 100000000
psi_points_per_day = 100000000
psi_max_tags = 100000000
[[sources]]
name = "pg"
kind = "postgres"
url = {url:?}
"#,
            data = quoted(&dir.join("data")),
            ca = quoted(&ca_path),
            node = cert_and_key(&node_cert, &node_key),
            pk = quoted(&pseudonym),
            server = cert_and_key(&server_cert, &server_key),
        ) + RESOURCES,
    )?;
    Ok(Setup {
        config,
        tls: exchange_protocol::tls::MutualTls {
            ca: ca_path,
            cert: hub_cert,
            key: hub_key,
            min_version: exchange_protocol::tls::MinTlsVersion::Tls13,
            crls: Vec::new(),
        },
    })
}

/// A path as a TOML string.
fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// The `cert` and `key` lines of a TLS section.
fn cert_and_key(cert: &Path, key: &Path) -> String {
    format!("cert = {}\nkey = {}\n", quoted(cert), quoted(key))
}

/// The agent's two resources: `BENCH-1` over `people` and `BENCH-PSI` over `people_psi`.
const RESOURCES: &str = r#"[[resources]]
code = "BENCH-1"
name = "bench"
share = "conditional"
source = "pg"
table = "people"
key = "id_no"
mode = "snapshot"
reveal_not_found = true
grants = [{ requester = "city-hub", fields = ["name", "birth"] }]
[resources.fields]
id_no = "pseudonym"
name = "mask:name"
birth = "generalize:year"
[resources.compare]
birth = "date"
[[resources]]
code = "BENCH-PSI"
name = "bench psi"
share = "conditional"
source = "pg"
table = "people_psi"
key = "id_no"
mode = "snapshot"
reveal_not_found = true
grants = [{ requester = "city-hub", fields = ["name", "birth"], psi = true }]
[resources.fields]
id_no = "pseudonym"
name = "mask:name"
birth = "generalize:year"
"#;

/// Eight sessions for the bare SELECT, each with the agent's lookup prepared.
async fn select_sessions(url: &str) -> anyhow::Result<Arc<Vec<Session>>> {
    let mut sessions = Vec::new();
    for _ in 0..8 {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let stmt = c
            .prepare("SELECT src.id_no, src.name, src.birth FROM people AS src WHERE src.id_no = ANY($1::text[]::text[])")
            .await?;
        sessions.push(Arc::new((c, stmt)));
    }
    Ok(Arc::new(sessions))
}

/// Every scenario, in order.
async fn measure(
    o: &Options,
    sessions: &Arc<Vec<Session>>,
    verifier: &Arc<exchange_hub::verify::Verifier>,
    requests: Requests,
) -> anyhow::Result<Latencies> {
    let s = sessions.clone();
    let rows = o.rows;
    let select_1 = paced(o.rate, o.seconds, move |n| {
        let s = s.clone();
        async move {
            let (c, stmt) = &*s[(n % 8) as usize];
            let i = (n.wrapping_mul(2_654_435_761)) % rows;
            c.query(stmt, &[&vec![key(i)]]).await?;
            Ok(())
        }
    })
    .await?;
    let v = verifier.clone();
    let verify_1 = paced(o.rate, o.seconds, move |n| {
        let v = v.clone();
        let r = requests.request(n, vec![requests.item(n)]);
        async move {
            v.verify(&r).await?;
            Ok(())
        }
    })
    .await?;
    let (select_1000, verify_1000) = thousands(o, sessions, verifier, requests).await?;
    let psi = psi(verifier, requests).await?;
    Ok(Latencies {
        select_1,
        verify_1,
        select_1000,
        verify_1000,
        psi,
    })
}

/// `--batches` SELECTs with 1,000 keys and 1,000-item requests, in turn.
async fn thousands(
    o: &Options,
    sessions: &[Session],
    verifier: &exchange_hub::verify::Verifier,
    requests: Requests,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut select_1000 = Vec::new();
    let mut verify_1000 = Vec::new();
    for b in 0..o.batches as u64 {
        let keys: Vec<String> = (0..1000)
            .map(|j| key((b * 1000 + j) * 7919 % o.rows))
            .collect();
        let (c, stmt) = &*sessions[0];
        let t = Instant::now();
        c.query(stmt, &[&keys]).await?;
        select_1000.push(t.elapsed());
        let items: Vec<Item> = (0..1000).map(|j| requests.item(b * 1000 + j)).collect();
        let r = requests.request(1_000_000 + b, items);
        let t = Instant::now();
        verifier.verify(&r).await.context("a 1,000-item request")?;
        verify_1000.push(t.elapsed());
    }
    Ok((select_1000, verify_1000))
}

/// Three PSI requests of 100 subjects over `BENCH-PSI`.
async fn psi(
    verifier: &exchange_hub::verify::Verifier,
    requests: Requests,
) -> anyhow::Result<Vec<Duration>> {
    let mut psi = Vec::new();
    for b in 0..3u64 {
        let items: Vec<Item> = (0..100).map(|j| requests.item(b * 100 + j)).collect();
        let r = VerifyRequest {
            resource: "BENCH-PSI".into(),
            ..requests.request(2_000_000 + b, items)
        };
        let t = Instant::now();
        verifier.verify_psi(&r).await.context("a PSI request")?;
        psi.push(t.elapsed());
    }
    Ok(psi)
}

/// The table of percentiles and the cost of a PSI tag.
fn print_results(o: &Options, l: Latencies) {
    let tags = o.psi_rows.min(o.rows) * 3 + 300;
    println!("| scenario | requests | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|");
    for (name, v) in [
        (format!("select-1 at {}/s", o.rate), l.select_1),
        (format!("verify-1 at {}/s", o.rate), l.verify_1),
        ("select-1000".to_owned(), l.select_1000),
        ("verify-1000".to_owned(), l.verify_1000),
        (
            format!("psi-{} (100 subjects, 2 claims)", o.psi_rows.min(o.rows)),
            l.psi.clone(),
        ),
    ] {
        let n = v.len();
        let (p50, p99, max) = summary(v);
        println!("| {name} | {n} | {p50:.2} | {p99:.2} | {max:.2} |");
    }
    let best = l.psi.iter().min().expect("three PSI requests");
    println!(
        "\nPSI: {tags} tags (a key and two stored values per row, and 300 points) in {:.2} s at best: {:.1} µs per tag",
        best.as_secs_f64(),
        best.as_secs_f64() * 1e6 / tags as f64
    );
}
