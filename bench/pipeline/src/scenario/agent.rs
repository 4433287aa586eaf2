//! The agent end to end: `exchange-agent sync` of a whole source table into the hub or the
//! sink, with or without the desensitization policy, its queue's disk sampled as it runs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::agent_config::Policy;
use super::hub::Sink;
use super::table::SourceTable;
use super::{Bench, Options};
use crate::disk::PeakSize;
use crate::process::{self, Child};
use crate::report::Row;

/// How often the size of the agent's data directory is sampled while it runs.
const QUEUE_SAMPLE: Duration = Duration::from_millis(250);

/// One agent scenario: `exchange-agent sync` of a source table into the hub or the sink.
pub(super) struct AgentRun {
    /// The source's `kind`: `postgres` or `mysql`.
    kind: &'static str,
    /// Where the batches go.
    sink: Sink,
    /// What the resource does to its fields.
    policy: Policy,
    /// The table it reads.
    table: SourceTable,
}

impl AgentRun {
    pub(super) fn new(
        kind: &'static str,
        sink: Sink,
        policy: Policy,
        table: SourceTable,
    ) -> AgentRun {
        AgentRun {
            kind,
            sink,
            policy,
            table,
        }
    }

    /// `agent-<source>[-policy]<table suffix>[-ack]`: `agent-pg-policy-ack`, `agent-pg-noindex`.
    pub(super) fn name(&self) -> String {
        let source = if self.kind == "postgres" {
            "pg"
        } else {
            "mariadb"
        };
        let policy = match self.policy {
            Policy::Plain => "",
            Policy::Desensitized => "-policy",
        };
        let ack = match self.sink {
            Sink::Hub => "",
            Sink::AckOnly => "-ack",
        };
        format!("agent-{source}{policy}{}{ack}", self.table.suffix())
    }

    /// What the scenario measures, for the table.
    pub(super) fn what(&self, options: &Options) -> String {
        let source = if self.kind == "postgres" {
            "PostgreSQL"
        } else {
            "MariaDB"
        };
        let policy = match self.policy {
            Policy::Plain => "",
            Policy::Desensitized => " → policy (2 masks, 1 pseudonym, 1 generalization)",
        };
        let sink = match self.sink {
            Sink::Hub => "hub (PostgreSQL store)",
            Sink::AckOnly => "acknowledging sink",
        };
        format!(
            "exchange-agent sync: {source}{}{policy} → {sink}",
            self.table.describe(options)
        )
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

    /// Runs `exchange-agent sync` of `run`'s table with a fresh queue until the hub (or the
    /// sink) acknowledged the last batch, sampling the size of the agent's data directory
    /// (its queue) meanwhile; then checks what the hub holds.
    pub(super) async fn agent_sync(&mut self, run: &AgentRun) -> anyhow::Result<Row> {
        let name = run.name();
        let rows = run.table.rows(&self.options);
        let hub = self.start_hub(&name, run.sink).await?;
        let config =
            self.agent_config(&name, run.kind, run.table.name, &hub.url, "1h", run.policy)?;
        let limit = super::limit(rows);
        let timeout = format!("{}s", limit.as_secs());
        let data = config.with_file_name("data");
        let agent = self.agent("exchange-agent", &config, &["sync", "--timeout", &timeout])?;
        let queue = PeakSize::start(data, QUEUE_SAMPLE);
        let agent_usage = agent
            .wait_at_most(limit)
            .await
            .with_context(|| format!("see {}", config.with_file_name("sync.log").display()));
        let queue_peak = queue.stop();
        let hub_usage = hub.child.stop().await?;
        let agent_usage = agent_usage?;
        if let Some(db) = &hub.db {
            let n = self.count(db, "SELECT count(*) FROM records").await?;
            if n as u64 != rows {
                bail!("the hub holds {n} records, not {rows}");
            }
            if run.policy == Policy::Desensitized {
                self.check_desensitized(db).await?;
            }
        }
        let hub_name = if run.sink == Sink::Hub { "hub" } else { "sink" };
        let mut row = Row::new(&name, &run.what(&self.options), rows, agent_usage.wall)
            .cost("agent", agent_usage)
            .cost(hub_name, hub_usage);
        row.queue_peak_bytes = Some(queue_peak);
        Ok(row)
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
