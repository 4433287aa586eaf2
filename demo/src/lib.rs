//! `exchange-demo`: the first thing a newcomer runs. No servers, no network.
//!
//! Its own crate and binary so that the production `exchange-agent` contains neither the
//! reference hub's server nor the throwaway CA generator (`exchange-protocol`'s `pki` feature).
//!
//! It generates a throwaway CA and certificates, a SQLite business database of synthetic
//! residents, configuration files for a hub and an agent, starts the reference hub on
//! loopback in this process, runs one sync, and prints what was pulled, what was pushed and
//! where it went. Every file stays in the demo directory so the administrator can look.

mod residents;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use exchange_hub::config::HubConfig;
use exchange_hub::store::Store;
use exchange_protocol::pki::Authority;
use tokio::net::TcpListener;

use exchange_agent::config::Config;
use exchange_agent::pipeline::Pipeline;

pub use residents::write_business_db;

/// Resource code used by the demo.
pub const RESOURCE: &str = "330100-RSJ-0001";
/// Node id used by the demo.
pub const NODE: &str = "demo-node-01";

/// Options of the demo.
pub struct Options {
    /// Keep the hub and the agent running until interrupted.
    pub keep: bool,
    /// Directory for the demo's files.
    pub dir: Option<PathBuf>,
    /// Number of synthetic residents.
    pub rows: usize,
}

/// Writes the demo's certificates, database and configuration files into `dir`; returns
/// the paths of the agent and hub configurations. The hub listens on `hub_addr`.
pub fn prepare(
    dir: &Path,
    rows: usize,
    hub_addr: SocketAddr,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    // A rerun in the same directory starts afresh: an old queue or hub store would not match
    // the new database and certificates.
    for old in ["agent-data", "hub.db", "hub.db-wal", "hub.db-shm"] {
        let p = dir.join(old);
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir)
        .with_context(|| format!("cannot create {}", tls_dir.display()))?;
    let ca = Authority::generate("exchange-agent demo CA")?;
    ca.write_cert(&tls_dir.join("ca.pem"))?;
    ca.issue_server(&["127.0.0.1", "localhost"])?
        .write(&tls_dir, "hub")?;
    ca.issue_client(NODE)?.write(&tls_dir, "node")?;
    write_business_db(&dir.join("business.db"), rows)?;
    let hub_toml = dir.join("hub.toml");
    std::fs::write(
        &hub_toml,
        format!(
            "# Reference hub of the demo.\n[listen]\naddr = \"{hub_addr}\"\nca = \"tls/ca.pem\"\ncert = \"tls/hub.pem\"\nkey = \"tls/hub.key\"\n\n[store]\nurl = \"sqlite://hub.db\"\n"
        ),
    )?;
    let agent_toml = dir.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            r#"# Agent of the demo: one SQLite business database, one resource.
[node]
id = "{NODE}"
department = "11330100MB0123456W"
data_dir = "agent-data"

[hub]
url = "https://{hub_addr}"
ca = "tls/ca.pem"
cert = "tls/node.pem"
key = "tls/node.key"

[queue]
max_bytes = "256MiB"

[batch]
max_records = 1000
max_bytes = "4MiB"

[[sources]]
name = "rsj"
kind = "sqlite"
url = "sqlite://business.db"

[[resources]]
code = "{RESOURCE}"
name = "社保参保人员"
share = "unconditional"
source = "rsj"
table = "insured_person"
key = "id_card"
mode = "incremental"
cursor = ["updated_at", "id"]
safety_lag = "0s"
every = "10s"

[resources.fields]
id_card = "plain"
name = "plain"
mobile = "plain"
district = "plain"
insured_since = "plain"
internal_note = "drop"
"#
        ),
    )?;
    Ok((agent_toml, hub_toml))
}

/// How to invoke the agent and the hub from a shell: by path next to this executable when
/// they were built (they are not on PATH in a fresh checkout), else through cargo.
fn commands() -> (String, String) {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_owned()));
    let command = |bin: &str| {
        dir.as_ref()
            .map(|d| d.join(bin))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("cargo run -q -p {bin} --"))
    };
    (command("exchange-agent"), command("exchange-hub"))
}

/// Runs the demo; with `keep`, until `shutdown` resolves.
pub async fn run(options: Options, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    exchange_protocol::tls::install_provider();
    let dir = match options.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("exchange-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a loopback port for the hub")?;
    let hub_addr = listener.local_addr()?;
    println!(
        "exchange-demo — everything runs on this machine, in {}",
        dir.display()
    );
    println!();
    let (agent_toml, hub_toml) = prepare(&dir, options.rows, hub_addr)?;
    println!(
        "1. Generated a throwaway CA and certificates      tls/ca.pem, tls/hub.pem, tls/node.pem (CN = {NODE})"
    );
    println!(
        "2. Created a business database                     business.db: {} synthetic residents in table insured_person",
        options.rows
    );
    println!(
        "   (valid 公民身份号码 check digits, Chinese names, mobile numbers, an internal_note column)"
    );

    let hub_config = HubConfig::load(&hub_toml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = Store::open(&hub_config.store)
        .await
        .context("cannot open the hub's store")?;
    let (hub_stop_tx, hub_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hub_store = store.clone();
    let hub = tokio::spawn(async move {
        exchange_hub::server::run_with_store(listener, &hub_config, hub_store, async {
            let _ = hub_stop_rx.await;
        })
        .await
    });
    println!(
        "3. Started the reference hub                       https://{hub_addr} (mutual TLS), storing into hub.db"
    );

    let config = Config::load(&agent_toml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let data_dir = config.node.data_dir.clone();
    let pipeline = Arc::new(Pipeline::build(config)?);
    let report = exchange_agent::sync::sync(
        pipeline.clone(),
        None,
        exchange_agent::sync::SyncOptions {
            wait: Duration::from_secs(60),
            deadline: Duration::from_secs(120),
        },
        exchange_agent::sync::Pushers::Own,
        Arc::new(|line| eprintln!("   {line}")),
    )
    .await;
    let pulled: u64 = report.resources.iter().map(|r| r.pulled).sum();
    let state = pipeline.queue.state(RESOURCE)?;
    println!(
        "4. Agent synced                                    pulled {pulled} records, hub acknowledged {}, {} still queued",
        state.pushed_records, state.queued_records
    );
    if !report.is_complete() {
        print!("{report}");
        anyhow::bail!("the demo sync did not complete");
    }
    let exported = exchange_hub::export::export(&store, RESOURCE)
        .await
        .context("cannot read the hub's store")?;
    println!(
        "5. The hub now holds                               {} records of {RESOURCE}",
        exported.len()
    );
    println!();
    println!("   Three of them, as `exchange-hub export` prints them:");
    for r in exported.iter().take(3) {
        println!("   {}", serde_json::to_string(r)?);
    }
    let leaked = exported
        .iter()
        .any(|r| r["fields"].get("internal_note").is_some());
    println!();
    println!(
        "   internal_note is configured as \"drop\": it was never read from business.db and {} the hub.",
        if leaked {
            "ALSO REACHED (this is a bug)"
        } else {
            "never reached"
        }
    );
    println!();
    let (agent_cmd, hub_cmd) = commands();
    println!("Look for yourself:");
    println!(
        "   {hub_cmd} export --config {} --resource {RESOURCE} | head",
        hub_toml.display()
    );
    println!("   {agent_cmd} status --config {}", agent_toml.display());
    println!("   {agent_cmd} check --config {}", agent_toml.display());
    println!("   (the queue is {}/queue.redb)", data_dir.display());

    if options.keep {
        println!();
        println!(
            "The hub and the agent keep running (the agent pulls every 10 s). Add rows to business.db, e.g."
        );
        println!(
            "   sqlite3 {} \"UPDATE insured_person SET mobile='13900000000', updated_at=strftime('%Y-%m-%dT%H:%M:%f','now') WHERE id=1\"",
            dir.join("business.db").display()
        );
        println!("then export again. Ctrl-C stops both.");
        // `exchange-agent status` from another shell reads the daemon's status file.
        exchange_agent::daemon::run(pipeline, shutdown).await;
    } else {
        println!();
        println!(
            "The hub and the agent have stopped; run `exchange-demo --keep` to keep them running."
        );
        drop(pipeline);
    }
    let _ = hub_stop_tx.send(());
    hub.await
        .context("the hub task failed")?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
