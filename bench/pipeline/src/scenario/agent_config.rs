//! The agent's configuration in each scenario: one source, one resource over the benchmark's
//! table, and the field rules of its policy.

use std::path::{Path, PathBuf};

use super::{Bench, NODE, RESOURCE};
use crate::data;

/// What the agent's resource does to its fields.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Policy {
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

impl Bench {
    /// Writes `<work>/<name>/agent.toml` for the table `table` of `kind`'s source database.
    pub(super) fn agent_config(
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
                let path = write_pseudonym_key(&dir)?;
                format!("[policy]\npseudonym_key_file = {path:?}\npseudonym_key_version = 1\n\n")
            }
        };
        let url = self.source_url(kind);
        let fields = field_rules(policy);
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

    /// The URL of `kind`'s source database.
    fn source_url(&self, kind: &str) -> String {
        let src_db = format!("{}_src", self.prefix);
        match kind {
            "postgres" => self.pg_url(&src_db),
            _ => format!("mysql://root@{}:{}/{src_db}", self.my_host, self.my_port),
        }
    }
}

/// A pseudonym key of the run in `dir` (outside data_dir), readable by its owner only; its path.
fn write_pseudonym_key(dir: &Path) -> anyhow::Result<PathBuf> {
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
    Ok(path)
}

/// The `[resources.fields]` lines: every column with its rule under `policy`.
fn field_rules(policy: Policy) -> String {
    data::COLUMNS
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
        .collect()
}
