//! `exchange-demo`: the first thing a newcomer runs. No servers, no network.
//!
//! Its own crate and binary so that the production `exchange-agent` contains neither the
//! reference hub's server nor the throwaway CA generator (`exchange-protocol`'s `pki` feature).
//!
//! It generates a throwaway CA and certificates, a SQLite business database of synthetic
//! residents, the keys of the desensitization rules, configuration files for a hub and an
//! agent, starts the reference hub on loopback in this process, runs one sync, and prints what
//! was pulled, what was pushed, where it went and what the policy did to each field of a
//! conditionally shared resource (有条件共享): a pseudonymized key, masks, a generalization, an
//! approved plain field and a dropped one. Every file stays in the demo directory so the
//! administrator can look.

mod files;
mod residents;
mod verification;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use exchange_hub::config::HubConfig;
use exchange_hub::store::Store;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use exchange_agent::config::Config;
use exchange_agent::pipeline::Pipeline;

pub use files::prepare;
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

/// The approval reference of the demo's plain field.
const APPROVAL: &str = "演示：区县级统计口径已批准";
/// The requester the demo's grant names: the hub, by its client certificate's CN.
const REQUESTER: &str = "city-hub";
/// The purpose (用途) the grant allows.
const PURPOSE: &str = "社保待遇资格认证";

/// One resident of `business.db` (its first row) next to the record the hub holds for it,
/// field by field, with the rule that made the difference.
fn explain(dir: &Path, config: &Config, exported: &[serde_json::Value]) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(dir.join("business.db"))?;
    let raw: Vec<String> = conn.query_row(
        "SELECT id_card, name, mobile, district, insured_since, internal_note FROM insured_person ORDER BY id LIMIT 1",
        [],
        |r| (0..6).map(|i| r.get::<_, String>(i)).collect(),
    )?;
    let token = config
        .keys
        .pseudonym
        .as_ref()
        .context("the demo's pseudonym key")?
        .token("citizen_id", &raw[0]);
    let record = exported
        .iter()
        .find(|r| r["key"] == token.as_str())
        .context("the hub holds no record under the first resident's pseudonym")?;
    let at_hub = |field: &str| match record["fields"].get(field) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "(absent)".into(),
    };
    println!("   One resident, in business.db → at the hub, and why:");
    let rows = [
        (
            "id_card",
            "pseudonym: HMAC-SM3 under keys/pseudonym.key; the record's key too. Departments holding the key get the same token for the same 公民身份号码 (joins), nobody gets the number back",
        ),
        ("name", "mask:name: the first character kept"),
        ("mobile", "mask:mobile: 3 + 4 digits kept"),
        (
            "district",
            "plain: approved in plain_allowed, plain_reason names the approval",
        ),
        ("insured_since", "generalize:year_month: the day removed"),
        (
            "internal_note",
            "drop: the agent never read it from business.db; it never reached the hub",
        ),
    ];
    for ((field, why), before) in rows.iter().zip(&raw) {
        println!("     {field:<14} {before} → {}", at_hub(field));
        println!("     {:<14} ({why})", "");
    }
    Ok(())
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

/// The demo directory, created, as an absolute path.
fn demo_dir(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("exchange-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir.canonicalize()?)
}

/// A loopback listener on a free port, for `what`.
async fn bind_loopback(what: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .with_context(|| format!("cannot bind a loopback port for {what}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// The reference hub, running in this process.
struct RunningHub {
    store: Store,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), exchange_hub::HubError>>,
}

impl RunningHub {
    /// Opens the hub's store and serves on `listener`.
    async fn start(hub_toml: &Path, listener: TcpListener) -> anyhow::Result<RunningHub> {
        let hub_config = HubConfig::load(hub_toml).map_err(|e| anyhow::anyhow!("{e}"))?;
        let store = Store::open(&hub_config.store)
            .await
            .context("cannot open the hub's store")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let hub_store = store.clone();
        let task = tokio::spawn(async move {
            exchange_hub::server::run_with_store(listener, &hub_config, hub_store, async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(RunningHub { store, stop, task })
    }

    /// Stops the hub and waits for it.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task
            .await
            .context("the hub task failed")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

/// Runs the demo; with `keep`, until `shutdown` resolves.
pub async fn run(options: Options, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    exchange_protocol::tls::install_provider();
    let dir = demo_dir(options.dir)?;
    let (listener, hub_addr) = bind_loopback("the hub").await?;
    let (verify_listener, verify_addr) = bind_loopback("the verification service").await?;
    println!(
        "exchange-demo — everything runs on this machine, in {}",
        dir.display()
    );
    println!();
    let (agent_toml, hub_toml) = prepare(&dir, options.rows, hub_addr, verify_addr)?;
    print_prepared(options.rows);
    let hub = RunningHub::start(&hub_toml, listener).await?;
    println!(
        "3. Started the reference hub                       https://{hub_addr} (mutual TLS), storing into hub.db"
    );
    let config = Config::load(&agent_toml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let data_dir = config.node.data_dir.clone();
    let policy = config.clone();
    let verification = Arc::new(exchange_agent::verify::Service::new(Arc::new(
        config.clone(),
    ))?);
    let pipeline = Arc::new(Pipeline::build(config)?);
    sync_once(&pipeline).await?;
    show_the_hub(&dir, &policy, &hub.store).await?;
    verify_as_the_hub(&dir, verify_listener, verification, verify_addr).await?;
    println!();
    print_commands(&hub_toml, &agent_toml, &data_dir);
    keep_or_stop(options.keep, &dir, pipeline, shutdown).await?;
    hub.stop().await
}

/// Steps 1 and 2: what `prepare` wrote.
fn print_prepared(rows: usize) {
    println!(
        "1. Generated a throwaway CA and certificates      tls/ca.pem, tls/hub.pem, tls/node.pem (CN = {NODE})"
    );
    println!(
        "2. Created a business database                     business.db: {rows} synthetic residents in table insured_person"
    );
    println!(
        "   (valid 公民身份号码 check digits, Chinese names, mobile numbers, an internal_note column)"
    );
    println!(
        "   and the keys of the desensitization rules         keys/pseudonym.key, keys/seal.key (0600, outside the agent's data directory)"
    );
}

/// Step 4: one sync of the agent into the hub; fails unless it completed.
async fn sync_once(pipeline: &Arc<Pipeline>) -> anyhow::Result<()> {
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
    Ok(())
}

/// Step 5: what the hub holds, one resident explained, and what never reached it.
async fn show_the_hub(dir: &Path, policy: &Config, store: &Store) -> anyhow::Result<()> {
    let exported = exchange_hub::export::export(store, RESOURCE)
        .await
        .context("cannot read the hub's store")?;
    println!(
        "5. The hub now holds                               {} records of {RESOURCE}, desensitized (share = conditional, 有条件共享)",
        exported.len()
    );
    println!();
    println!("   Three of them, as `exchange-hub export` prints them:");
    for r in exported.iter().take(3) {
        println!("   {}", serde_json::to_string(r)?);
    }
    println!();
    explain(dir, policy, &exported)?;
    print_never_reached(&exported);
    println!();
    Ok(())
}

/// Whether the dropped field or a raw 公民身份号码 reached the hub (neither should).
fn print_never_reached(exported: &[serde_json::Value]) {
    let dropped = exported
        .iter()
        .any(|r| r["fields"].get("internal_note").is_some());
    let raw_ids = exported.iter().any(|r| {
        !r["key"].as_str().is_some_and(|k| k.starts_with("v1:"))
            || r["fields"].as_object().is_some_and(|f| {
                f.values().any(|v| {
                    v.as_str().is_some_and(|s| {
                        s.len() == 18 && s.bytes().take(17).all(|b| b.is_ascii_digit())
                    })
                })
            })
    });
    println!();
    println!(
        "   internal_note is configured as \"drop\": it was never read from business.db and {} the hub.",
        if dropped {
            "ALSO REACHED (this is a bug)"
        } else {
            "never reached"
        }
    );
    println!(
        "   The raw 公民身份号码 {} the hub: it left only as its pseudonym.",
        if raw_ids {
            "ALSO REACHED (this is a bug)"
        } else {
            "never reached"
        }
    );
}

/// Step 6: the agent's verification service on `listener`, asked as the hub would.
async fn verify_as_the_hub(
    dir: &Path,
    listener: TcpListener,
    verification: Arc<exchange_agent::verify::Service>,
    verify_addr: SocketAddr,
) -> anyhow::Result<()> {
    let (verify_stop_tx, verify_stop_rx) = oneshot::channel::<()>();
    let verify_task = tokio::spawn(exchange_agent::verify::serve(
        listener,
        verification,
        async {
            let _ = verify_stop_rx.await;
        },
    ));
    println!(
        "6. Verification, as the hub asks it                https://{verify_addr} (mutual TLS; 数据不落地核验: only match / mismatch leaves)"
    );
    let asked = verification::ask_as_the_hub(dir, &format!("https://{verify_addr}")).await;
    let _ = verify_stop_tx.send(());
    verify_task
        .await
        .context("the verification service failed")??;
    asked
}

/// The commands to look at what the demo left.
fn print_commands(hub_toml: &Path, agent_toml: &Path, data_dir: &Path) {
    let (agent_cmd, hub_cmd) = commands();
    println!("Look for yourself:");
    println!(
        "   {hub_cmd} export --config {} --resource {RESOURCE} | head",
        hub_toml.display()
    );
    println!("   {agent_cmd} status --config {}", agent_toml.display());
    println!("   {agent_cmd} check --config {}", agent_toml.display());
    println!("   (the queue is {}/queue.redb)", data_dir.display());
}

/// With `keep`, the agent's daemon until `shutdown`; else says how to keep them running.
async fn keep_or_stop(
    keep: bool,
    dir: &Path,
    pipeline: Arc<Pipeline>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if keep {
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
        exchange_agent::daemon::run(pipeline, shutdown)
            .await
            .context("cannot start the agent")?;
    } else {
        println!();
        println!(
            "The hub and the agent have stopped; run `exchange-demo --keep` to keep them running."
        );
        drop(pipeline);
    }
    Ok(())
}
