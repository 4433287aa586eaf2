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
    verify_addr: SocketAddr,
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
    // Verification: the agent's own server certificate, and the certificate the hub presents
    // when it asks (the requester named in the grant).
    ca.issue_server(&["127.0.0.1", "localhost"])?
        .write(&tls_dir, "verify")?;
    ca.issue_client(REQUESTER)?.write(&tls_dir, "requester")?;
    write_keys(&dir.join("keys"))?;
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
            r#"# Agent of the demo: one SQLite business database, one conditionally shared resource.
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

[policy]
pseudonym_key_file = "keys/pseudonym.key"   # shared by departments that join on pseudonyms
seal_key_file = "keys/seal.key"             # this node's own: seals the stored position of the pseudonymized key

[[sources]]
name = "rsj"
kind = "sqlite"
url = "sqlite://business.db"

[[resources]]
code = "{RESOURCE}"
name = "社保参保人员"
share = "conditional"                  # 有条件共享: every field desensitized unless approved
deliver = true                         # pushed to the hub, desensitized
plain_allowed = ["district"]
plain_reason = "{APPROVAL}"
source = "rsj"
table = "insured_person"
key = "id_card"
mode = "incremental"
cursor = ["updated_at", "id"]
safety_lag = "0s"
every = "10s"

# 数据不落地核验: the hub may ask whether claimed values match; only match / mismatch leaves.
# The hub receives mobile masked (138****5678) and insured_since as a month: what is hidden
# is a small space, so both are enumerable (one wrong answer per subject a day).
enumerable = ["mobile", "insured_since"]
grants = [
  {{ requester = "{REQUESTER}", fields = ["name", "mobile", "insured_since"], purposes = ["{PURPOSE}"] }},
]

[resources.fields]
id_card = {{ rule = "pseudonym", identifier = "citizen_id" }}
name = "mask:name"
mobile = "mask:mobile"
district = "plain"
insured_since = "generalize:year_month"
internal_note = "drop"

[resources.compare]
mobile = "normalized"
insured_since = "date"

[verify]
listen = "{verify_addr}"
cert = "tls/verify.pem"
key = "tls/verify.key"
client_ca = "tls/ca.pem"
"#
        ),
    )?;
    Ok((agent_toml, hub_toml))
}

/// The approval reference of the demo's plain field.
const APPROVAL: &str = "演示：区县级统计口径已批准";
/// The requester the demo's grant names: the hub, by its client certificate's CN.
const REQUESTER: &str = "city-hub";
/// The purpose (用途) the grant allows.
const PURPOSE: &str = "社保待遇资格认证";

/// Writes the demo's keys into `dir` (0600): a pseudonym key and this node's seal key, each
/// 32 random bytes as hex, like `openssl rand -hex 32`.
fn write_keys(dir: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in ["pseudonym.key", "seal.key"] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let secret: [u8; 32] = rand::random();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{}", hex::encode(secret)))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

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

/// Asks the agent's verification service as the hub would (数据不落地核验), over mutual TLS
/// with the requester's certificate: a claim that matches, one that does not, and a brute
/// force that the budget stops; prints the answers.
async fn ask_as_the_hub(dir: &Path, url: &str) -> anyhow::Result<()> {
    use exchange_hub::verify::{Verifier, VerifyCallError};
    use exchange_protocol::verify::{Claim, Item, VerifyRequest};
    let conn = rusqlite::Connection::open(dir.join("business.db"))?;
    let (id_card, name, mobile, since): (String, String, String, String) = conn.query_row(
        "SELECT id_card, name, mobile, insured_since FROM insured_person ORDER BY id LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let tls = exchange_protocol::tls::MutualTls {
        ca: dir.join("tls/ca.pem"),
        cert: dir.join("tls/requester.pem"),
        key: dir.join("tls/requester.key"),
        min_version: exchange_protocol::tls::MinTlsVersion::Tls13,
        crls: Vec::new(),
    };
    let hub = Verifier::new(&tls, url)?;
    let mut n = 0;
    let mut request = |claims: Vec<Item>| {
        n += 1;
        VerifyRequest {
            request_id: format!("demo-{n}"),
            purpose: PURPOSE.into(),
            case_ref: format!("DEMO-2026-{n:04}"),
            resource: RESOURCE.into(),
            items: claims,
        }
    };
    let item = |claims: &[(&str, &str)]| Item {
        subject: id_card.clone(),
        claims: claims
            .iter()
            .map(|(f, v)| (f.to_string(), Claim::Value(v.to_string())))
            .collect(),
    };
    let show = |answer: &exchange_protocol::verify::VerifyAnswer| {
        answer.items[0]
            .fields
            .iter()
            .map(|(f, r)| {
                format!(
                    "{f}: {}",
                    match r.as_str() {
                        "match" => "match (一致)",
                        "mismatch" => "mismatch (不一致)",
                        other => other,
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "   The hub asks about the first resident (公民身份号码 {}…, purpose {PURPOSE}); only the answers come back:",
        &id_card[..6]
    );
    let (answer, _) = hub
        .verify(&request(vec![item(&[
            ("name", &name),
            ("insured_since", &since),
        ])]))
        .await?;
    println!(
        "   a. the true name and insured_since        → {}",
        show(&answer)
    );
    let (answer, _) = hub
        .verify(&request(vec![item(&[("name", "王小二")])]))
        .await?;
    println!(
        "   b. a wrong name                           → {}",
        show(&answer)
    );
    // The hub holds the mask (138****5678) from the delivered data: 10,000 candidates left.
    let (head, tail) = (&mobile[..3], &mobile[7..]);
    let guesses: Vec<String> = (0..10_000)
        .map(|i| format!("{head}{i:04}{tail}"))
        .filter(|g| *g != mobile)
        .collect();
    let in_one: Vec<Item> = guesses[..12]
        .iter()
        .map(|g| item(&[("mobile", g)]))
        .collect();
    let refused = |e: anyhow::Error| match e.downcast_ref::<VerifyCallError>() {
        Some(VerifyCallError::Refused {
            status,
            retry_after,
            ..
        }) => format!(
            "refused {status}{}",
            retry_after
                .as_deref()
                .map(|s| format!(", retry after {s} s"))
                .unwrap_or_default()
        ),
        _ => format!("failed: {e:#}"),
    };
    let outcome = match hub.verify(&request(in_one)).await {
        Ok(_) => "ANSWERED (this is a bug)".to_owned(),
        Err(e) => refused(e.into()),
    };
    println!(
        "   c. a brute force of the hidden middle of mobile {head}****{tail}, which the hub received masked:"
    );
    println!(
        "      12 guesses in one request               → {outcome} (one question per subject and field per request)"
    );
    let mut answered = 0;
    for (i, guess) in guesses.iter().enumerate() {
        match hub.verify(&request(vec![item(&[("mobile", guess)])])).await {
            Ok((answer, _)) => {
                answered += 1;
                println!(
                    "      guess {:<4} {guess}                  → {}",
                    i + 1,
                    show(&answer)
                );
            }
            Err(e) => {
                println!(
                    "      guess {:<4} {guess}                  → {} (mobile is enumerable: one wrong answer per subject a day)",
                    i + 1,
                    refused(e.into())
                );
                break;
            }
        }
    }
    println!(
        "      {answered} guess answered of 10,000 candidates: at this rate the search takes years (docs/PROTOCOL.md §11.7)."
    );
    println!(
        "   Every question is in agent-data/audit.jsonl, subjects as pseudonyms; no claimed or stored value is."
    );
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
    let verify_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a loopback port for the verification service")?;
    let verify_addr = verify_listener.local_addr()?;
    println!(
        "exchange-demo — everything runs on this machine, in {}",
        dir.display()
    );
    println!();
    let (agent_toml, hub_toml) = prepare(&dir, options.rows, hub_addr, verify_addr)?;
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
    println!(
        "   and the keys of the desensitization rules         keys/pseudonym.key, keys/seal.key (0600, outside the agent's data directory)"
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
    let policy = config.clone();
    let verification = Arc::new(exchange_agent::verify::Service::new(Arc::new(
        config.clone(),
    ))?);
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
        "5. The hub now holds                               {} records of {RESOURCE}, desensitized (share = conditional, 有条件共享)",
        exported.len()
    );
    println!();
    println!("   Three of them, as `exchange-hub export` prints them:");
    for r in exported.iter().take(3) {
        println!("   {}", serde_json::to_string(r)?);
    }
    println!();
    explain(&dir, &policy, &exported)?;
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
    println!();
    let (verify_stop_tx, verify_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let verify_task = tokio::spawn(exchange_agent::verify::serve(
        verify_listener,
        verification,
        async {
            let _ = verify_stop_rx.await;
        },
    ));
    println!(
        "6. Verification, as the hub asks it                https://{verify_addr} (mutual TLS; 数据不落地核验: only match / mismatch leaves)"
    );
    let asked = ask_as_the_hub(&dir, &format!("https://{verify_addr}")).await;
    let _ = verify_stop_tx.send(());
    verify_task
        .await
        .context("the verification service failed")??;
    asked?;
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
    let _ = hub_stop_tx.send(());
    hub.await
        .context("the hub task failed")?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
