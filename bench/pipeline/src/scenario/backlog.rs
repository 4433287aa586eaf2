//! The backlog scenario: the table queued by `exchange-agent run` while the hub is down, then
//! drained once the hub comes up.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_postgres::Client;

use super::agent_config::Policy;
use super::hub::free_port;
use super::{Bench, LIMIT};
use crate::process::Usage;
use crate::report::Row;

impl Bench {
    /// The whole table queued with the hub down (the daemon pulls, pushes fail); then the
    /// daemon is stopped, the hub started, a daemon started again, and the time until the
    /// hub applied the last batch is the drain.
    pub(super) async fn backlog(&mut self) -> anyhow::Result<Row> {
        let rows = self
            .options
            .backlog_rows
            .unwrap_or(self.options.rows)
            .min(self.options.rows);
        let table = self.backlog_table(rows).await?;
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let config = self.agent_config("backlog", "postgres", &table, &url, "1h", Policy::Plain)?;
        let (batches, fill_usage) = self.fill_queue(&config, rows).await?;
        // The hub comes up.
        let db = self.create_pg("backlog").await?;
        let hub = self.serve_hub("backlog", port, db.clone()).await?;
        let hub_client = self.pg(&db).await?;
        let draining = self.agent("exchange-agent", &config, &["run"])?;
        let started = Instant::now();
        wait_until_applied(&hub_client, batches, started).await?;
        let drain = started.elapsed();
        let drain_usage = draining.stop().await?;
        let hub_usage = hub.child.stop().await?;
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

    /// The table to queue: `residents`, or a view of its first `rows` rows in cursor order.
    async fn backlog_table(&self, rows: u64) -> anyhow::Result<String> {
        if rows == self.options.rows {
            return Ok("residents".to_owned());
        }
        let src = format!("{}_src", self.prefix);
        self.pg(&src)
            .await?
            .batch_execute(&format!(
                "DROP VIEW IF EXISTS residents_backlog;
                     CREATE VIEW residents_backlog AS SELECT * FROM residents WHERE id_card IN
                       (SELECT id_card FROM residents ORDER BY updated_at, id_card LIMIT {rows})"
            ))
            .await?;
        Ok("residents_backlog".to_owned())
    }

    /// Runs the daemon with the hub down until its status shows `rows` records queued after a
    /// completed pull; the batches queued and the daemon's usage.
    async fn fill_queue(&self, config: &Path, rows: u64) -> anyhow::Result<(u64, Usage)> {
        let status = config.with_file_name("data").join("status.json");
        let filling = self.agent("exchange-agent", config, &["run"])?;
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
        Ok((batches, filling.stop().await?))
    }
}

/// Waits until the hub's stream has applied batch `batches`.
async fn wait_until_applied(
    hub_client: &Client,
    batches: u64,
    started: Instant,
) -> anyhow::Result<()> {
    loop {
        let last: Option<i64> = hub_client
            .query_opt("SELECT last_seq FROM streams", &[])
            .await?
            .map(|r| r.get(0));
        if last.unwrap_or(0) as u64 >= batches {
            return Ok(());
        }
        if started.elapsed() > LIMIT {
            bail!("the backlog did not drain within {LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
