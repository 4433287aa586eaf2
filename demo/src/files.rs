//! The demo's files: a throwaway CA and certificates, the keys of the desensitization rules,
//! the SQLite business database, and the hub's and the agent's configurations, all in the
//! demo directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::{APPROVAL, NODE, PURPOSE, REQUESTER, RESOURCE, write_business_db};

/// Writes the demo's certificates, database and configuration files into `dir`; returns
/// the paths of the agent and hub configurations. The hub listens on `hub_addr`.
pub fn prepare(
    dir: &Path,
    rows: usize,
    hub_addr: SocketAddr,
    verify_addr: SocketAddr,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    clear_previous_run(dir);
    write_certificates(dir)?;
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
        agent_node(hub_addr) + &agent_resource(verify_addr),
    )?;
    Ok((agent_toml, hub_toml))
}

/// A rerun in the same directory starts afresh: an old queue or hub store would not match
/// the new database and certificates.
fn clear_previous_run(dir: &Path) {
    for old in ["agent-data", "hub.db", "hub.db-wal", "hub.db-shm"] {
        let p = dir.join(old);
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// In `<dir>/tls`: the CA, the hub's server certificate, the node's client certificate (the
/// test kit's), and for verification the agent's own server certificate and the certificate
/// the hub presents when it asks (the requester named in the grant).
fn write_certificates(dir: &Path) -> anyhow::Result<()> {
    let pki = exchange_testkit::pki::Pki::generate(dir, "exchange-agent demo CA", NODE)?;
    pki.ca
        .issue_server(&["127.0.0.1", "localhost"])?
        .write(&pki.dir, "verify")?;
    pki.ca
        .issue_client(REQUESTER)?
        .write(&pki.dir, "requester")?;
    Ok(())
}

/// The agent's configuration up to its resource: node, hub, queue, batches, policy keys and
/// the SQLite source.
fn agent_node(hub_addr: SocketAddr) -> String {
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

"#
    )
}

/// The agent's conditionally shared resource and its verification listener.
fn agent_resource(verify_addr: SocketAddr) -> String {
    format!(
        r#"[[resources]]
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
    )
}

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
