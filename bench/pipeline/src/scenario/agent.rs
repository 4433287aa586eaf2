//! The agent end to end: `exchange-agent sync` of the whole table into the hub or the sink,
//! with or without the desensitization policy.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::agent_config::Policy;
use super::hub::Sink;
use super::{Bench, LIMIT};
use crate::process::{self, Child};
use crate::report::Row;

/// What an agent scenario measures, for the table.
pub(super) fn agent_scenario(kind: &str, sink: Sink, policy: Policy) -> &'static str {
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

impl Bench {
    pub(super) fn agent(
        &self,
        name: &str,
        config: &Path,
        command: &[&str],
    ) -> anyhow::Result<Child> {
        let mut cmd = Command::new(&self.agent_bin);
        cmd.arg("--config").arg(config).args(command);
        cmd.env("RUST_LOG", "warn").stdout(Stdio::null());
        let log = config.with_file_name(format!("{}.log", command[0]));
        process::spawn(name, cmd, Some(&log))
    }

    pub(super) async fn agent_sync(
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
    pub(super) async fn check_desensitized(&self, hub_db: &str) -> anyhow::Result<()> {
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
}
