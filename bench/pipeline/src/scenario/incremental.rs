//! The incremental scenario: `exchange-agent run` with `every = "1s"` while changes arrive at
//! a fixed rate; the latency from a change's commit at the source to its commit at the hub.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Row as PgRow};

use super::agent_config::Policy;
use super::hub::Sink;
use super::{Bench, LIMIT, Options};
use crate::report::Row;

/// When each change (by its number) committed at the source.
type Committed = BTreeMap<u64, DateTime<Utc>>;

impl Bench {
    /// Changes at a fixed rate on a small copy of the table while the agent runs with
    /// `every = "1s"`; each change sets `salary` to 10⁹ + its number, so the hub's copy tells
    /// which change it holds and `updated_at` (the hub's commit clock) when it got there.
    pub(super) async fn incremental(&mut self, src: &str) -> anyhow::Result<Row> {
        let o = self.options.clone();
        let client = self.pg(src).await?;
        let keys = create_change_table(&client, o.change_rows).await?;
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
        let total = u64::from(o.change_rate) * o.change_seconds;
        let committed = make_changes(&client, &keys, &o, total).await?;
        // The last change of each key is the one the hub keeps.
        let expected: u64 = total.min(keys.len() as u64);
        let rows = self.changes_at_hub(&hub_db, expected).await?;
        let agent_usage = daemon.stop().await?;
        let hub_usage = hub.child.stop().await?;
        let latencies = latencies(&rows, &committed)?;
        if (latencies.len() as u64) < expected {
            bail!(
                "only {} of {expected} changes reached the hub within 60 s after the last",
                latencies.len()
            );
        }
        let row = Row::new(
            "incremental",
            "exchange-agent run, every = 1s, changes at a fixed rate",
            total,
            Duration::from_secs(o.change_seconds),
        )
        .cost("agent", agent_usage)
        .cost("hub", hub_usage);
        let mut row = latency_notes(row, &o, latencies, idle_rss);
        row.rows_per_s = o.change_rate as f64;
        Ok(row)
    }

    /// The hub's records that hold a change, once there are `expected` of them or 60 s passed.
    async fn changes_at_hub(&self, hub_db: &str, expected: u64) -> anyhow::Result<Vec<PgRow>> {
        let hub_client = self.pg(hub_db).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = hub_client
                .query(
                    "SELECT fields, updated_at FROM records WHERE (fields::jsonb->>'salary')::numeric >= 1000000000",
                    &[],
                )
                .await?;
            if rows.len() as u64 >= expected || Instant::now() > deadline {
                return Ok(rows);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `residents_inc`: the first `rows` rows of the table, keyed and indexed on the cursor; its
/// keys in order.
async fn create_change_table(client: &Client, rows: u64) -> anyhow::Result<Vec<String>> {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS residents_inc;
                 CREATE TABLE residents_inc AS SELECT * FROM residents ORDER BY id_card LIMIT {};
                 ALTER TABLE residents_inc ADD PRIMARY KEY (id_card);
                 CREATE INDEX ON residents_inc (updated_at, id_card);",
            rows
        ))
        .await?;
    Ok(client
        .query("SELECT id_card FROM residents_inc ORDER BY id_card", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// `total` changes at `--change-rate` per second, round the keys; when each committed.
async fn make_changes(
    client: &Client,
    keys: &[String],
    o: &Options,
    total: u64,
) -> anyhow::Result<Committed> {
    let update = client
        .prepare(
            "UPDATE residents_inc SET salary = $1::int8, updated_at = clock_timestamp() WHERE id_card = $2",
        )
        .await?;
    let mut committed = Committed::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / o.change_rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..total {
        tick.tick().await;
        let key = &keys[(n % keys.len() as u64) as usize];
        client
            .execute(&update, &[&(1_000_000_000i64 + n as i64), key])
            .await?;
        committed.insert(n, Utc::now());
    }
    Ok(committed)
}

/// Seconds from each change's commit at the source to its commit at the hub, ascending.
fn latencies(rows: &[PgRow], committed: &Committed) -> anyhow::Result<Vec<f64>> {
    let mut latencies: Vec<f64> = Vec::new();
    for row in rows {
        let fields: String = row.get(0);
        let at: String = row.get(1);
        let fields: serde_json::Value = serde_json::from_str(&fields)?;
        let salary = match &fields["salary"] {
            serde_json::Value::String(s) => s.parse::<f64>().ok(),
            v => v.as_f64(),
        }
        .context("salary in the hub's record")?;
        let n = (salary - 1e9).round() as u64;
        let at = DateTime::parse_from_rfc3339(&at)?.with_timezone(&Utc);
        if let Some(c) = committed.get(&n) {
            latencies.push((at - *c).num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok(latencies)
}

/// The percentiles against their target, and the agent's idle RSS, as notes of `row`.
fn latency_notes(row: Row, o: &Options, latencies: Vec<f64>, idle_rss: u64) -> Row {
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let lag = parse_seconds(&o.safety_lag);
    let target = lag + 1.0 + 0.5;
    let (p50, p99) = (pct(0.5), pct(0.99));
    row.note(format!(
            "{} changes/s for {} s; change → hub commit p50 {p50:.2} s, p99 {p99:.2} s, max {:.2} s (target p99 ≤ safety_lag {lag} s + every 1 s + 0.5 s = {target:.1} s: {})",
            o.change_rate,
            o.change_seconds,
            latencies.last().copied().unwrap_or(0.0),
            if p99 <= target { "met" } else { "missed" }
        ))
        .note(format!(
            "agent idle RSS {:.1} MiB (target ≤ 20 MiB)",
            idle_rss as f64 / 1048576.0
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
