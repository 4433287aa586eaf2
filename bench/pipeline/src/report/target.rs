//! The targets of issue 19 ("Big tables at full speed"), held against the run's own figures:
//! every bound is a fixed figure or a multiple of a baseline measured in the same run.
//!
//! | target | bound |
//! |---|---|
//! | `agent-pg`, `agent-pg-noindex` rows/s | ≥ 0.6 × the keyed COPY pipe over the same table, ≥ 2 × sling over the same table |
//! | `agent-pg-ack` rows/s | ≥ 300,000 |
//! | the agent's CPU seconds per million rows, every scenario where it moved the table | ≤ 3 |
//! | `agent-mariadb`, `agent-mariadb-noindex` rows/s | ≥ 1 × sling from MariaDB over the same table |
//! | `agent-pg` (`-noindex`) seconds, with `--scale-rows` | ≤ 1.5 × (rows / scale rows) × `agent-pg-scale` (`agent-pg-noindex-scale`) seconds |
//! | the agent's peak RSS, every agent scenario | ≤ 64 MiB |
//!
//! A target is listed when its scenario ran; when the figure it is held against is missing
//! (not selected, or failed) it says so rather than guessing.

use std::fmt;

use serde::Serialize;

use super::Row;

/// The agent's CPU seconds per million rows, at most.
const CPU_PER_MILLION: f64 = 3.0;
/// `agent-pg-ack`, rows per second, at least.
const ACK_RATE: f64 = 300_000.0;
/// The agent's peak RSS, MiB, at most.
const PEAK_RSS_MIB: f64 = 64.0;
/// A large load may take this much longer per row than the scaling check's.
const SCALE_SLACK: f64 = 1.5;

/// Whether the figure must reach the bound or stay within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// value ≥ bound.
    AtLeast,
    /// value ≤ bound.
    AtMost,
}

/// One target against this run.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// What must hold, in words (`agent-pg ≥ 0.6 × pg-copy-pipe`).
    pub target: String,
    /// The unit of `value` and `bound` (`rows/s`, `s`, `CPU s / M rows`, `MiB`).
    pub unit: &'static str,
    /// Whether `value` must reach `bound` or stay within it.
    pub direction: Direction,
    /// The run's figure.
    pub value: Option<f64>,
    /// The bound, from the run's own baselines or fixed.
    pub bound: Option<f64>,
    /// `value / bound`: at least 1 meets an `at_least` target, at most 1 an `at_most` one.
    pub of_target: Option<f64>,
    /// Whether it holds; none when a figure is missing.
    pub met: Option<bool>,
    /// Why it could not be judged, when it could not.
    pub missing: Option<String>,
}

impl Verdict {
    fn judge(
        target: String,
        unit: &'static str,
        direction: Direction,
        figures: Result<(f64, f64), String>,
    ) -> Verdict {
        let (value, bound, missing) = match figures {
            Ok((value, bound)) => (Some(value), Some(bound), None),
            Err(why) => (None, None, Some(why)),
        };
        let of_target = value.zip(bound).map(|(v, b)| v / b);
        let met = of_target.map(|x| match direction {
            Direction::AtLeast => x >= 1.0,
            Direction::AtMost => x <= 1.0,
        });
        Verdict {
            target,
            unit,
            direction,
            value,
            bound,
            of_target,
            met,
            missing,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.target)?;
        match (self.value, self.bound, self.of_target, self.met) {
            (Some(v), Some(b), Some(x), Some(met)) => {
                let sign = match self.direction {
                    Direction::AtLeast => "≥",
                    Direction::AtMost => "≤",
                };
                let verdict = if met { "met" } else { "not met" };
                write!(
                    f,
                    "{} {} (target {sign} {}): {verdict} ({x:.2} of target)",
                    figure(v),
                    self.unit,
                    figure(b)
                )
            }
            _ => write!(
                f,
                "not judged ({})",
                self.missing.as_deref().unwrap_or("no figure")
            ),
        }
    }
}

/// A figure with as many decimals as its size needs.
fn figure(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// The scenario's row, when it ran (failed or not).
fn find<'a>(rows: &'a [Row], scenario: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.scenario == scenario)
}

/// The scenario's row when it ran and succeeded, else why not.
fn measured<'a>(rows: &'a [Row], scenario: &str) -> Result<&'a Row, String> {
    match find(rows, scenario) {
        Some(r) if r.error.is_none() => Ok(r),
        Some(_) => Err(format!("{scenario} failed")),
        None => Err(format!("{scenario} did not run")),
    }
}

/// Every target whose scenario ran, in the order of the issue.
pub fn verdicts(rows: &[Row]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for (agent, limit, peer) in [
        ("agent-pg", "pg-copy-pipe", "sling-pg"),
        (
            "agent-pg-noindex",
            "pg-copy-pipe-noindex",
            "sling-pg-noindex",
        ),
    ] {
        out.extend(relative(rows, agent, 0.6, limit));
        out.extend(relative(rows, agent, 2.0, peer));
    }
    if let Some(r) = find(rows, "agent-pg-ack") {
        out.push(Verdict::judge(
            "agent-pg-ack ≥ 300,000 rows/s".into(),
            "rows/s",
            Direction::AtLeast,
            measured(rows, &r.scenario).map(|r| (r.rows_per_s, ACK_RATE)),
        ));
    }
    out.extend(rows.iter().filter_map(cpu));
    for (agent, peer) in [
        ("agent-mariadb", "sling-mariadb"),
        ("agent-mariadb-noindex", "sling-mariadb-noindex"),
    ] {
        out.extend(relative(rows, agent, 1.0, peer));
    }
    for (large, small) in [
        ("agent-pg", "agent-pg-scale"),
        ("agent-pg-noindex", "agent-pg-noindex-scale"),
    ] {
        out.extend(scaling(rows, large, small));
    }
    out.extend(rows.iter().filter_map(rss));
    out
}

/// `agent` rows/s ≥ `times` × `baseline` rows/s, when `agent` ran.
fn relative(rows: &[Row], agent: &str, times: f64, baseline: &str) -> Option<Verdict> {
    find(rows, agent)?;
    let figures = measured(rows, agent)
        .and_then(|a| measured(rows, baseline).map(|b| (a.rows_per_s, times * b.rows_per_s)));
    Some(Verdict::judge(
        format!("{agent} ≥ {times} × {baseline}"),
        "rows/s",
        Direction::AtLeast,
        figures,
    ))
}

/// The agent's CPU per million rows, where the row has the figure.
fn cpu(row: &Row) -> Option<Verdict> {
    let per_million = row.agent_cpu_s_per_million_rows?;
    Some(Verdict::judge(
        format!(
            "{}: agent CPU ≤ {CPU_PER_MILLION} s per million rows",
            row.scenario
        ),
        "CPU s / M rows",
        Direction::AtMost,
        Ok((per_million, CPU_PER_MILLION)),
    ))
}

/// `large` (all rows) within [`SCALE_SLACK`] × the proportional time of `small` (the first
/// `--scale-rows`), when both ran.
fn scaling(rows: &[Row], large: &str, small: &str) -> Option<Verdict> {
    find(rows, large)?;
    find(rows, small)?;
    let figures = measured(rows, large).and_then(|l| {
        measured(rows, small).map(|s| {
            let proportional = l.rows as f64 / s.rows.max(1) as f64 * s.seconds;
            (l.seconds, SCALE_SLACK * proportional)
        })
    });
    let (l_rows, s_rows) = (find(rows, large)?.rows, find(rows, small)?.rows);
    Some(Verdict::judge(
        format!(
            "{large} loads {l_rows} rows within {SCALE_SLACK} × {:.0} × {small} ({s_rows} rows)",
            l_rows as f64 / s_rows.max(1) as f64
        ),
        "s",
        Direction::AtMost,
        figures,
    ))
}

/// The agent's peak RSS in an agent scenario that succeeded.
fn rss(row: &Row) -> Option<Verdict> {
    if !row.scenario.starts_with("agent-") || row.error.is_some() {
        return None;
    }
    let peak = row
        .costs
        .iter()
        .filter(|c| c.process.starts_with("agent"))
        .map(|c| c.usage.peak_rss)
        .max()?;
    Some(Verdict::judge(
        format!(
            "{} ({} rows): agent peak RSS ≤ {PEAK_RSS_MIB} MiB",
            row.scenario, row.rows
        ),
        "MiB",
        Direction::AtMost,
        Ok((peak as f64 / (1024.0 * 1024.0), PEAK_RSS_MIB)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn row(scenario: &str, rows: u64, seconds: u64) -> Row {
        Row::new(scenario, "", rows, Duration::from_secs(seconds))
    }

    #[test]
    fn relative_targets_are_judged_against_the_same_run() {
        let rows = [
            row("pg-copy-pipe", 1000, 1),
            row("sling-pg", 1000, 4),
            row("agent-pg", 1000, 2),
        ];
        let v = verdicts(&rows);
        let limit = v.iter().find(|v| v.target.contains("0.6")).unwrap();
        assert_eq!(limit.met, Some(false));
        assert!((limit.of_target.unwrap() - 500.0 / 600.0).abs() < 1e-9);
        let peer = v.iter().find(|v| v.target.contains("sling-pg")).unwrap();
        assert_eq!(peer.met, Some(true));
        assert!(
            peer.to_string().contains(": met (1.00 of target)"),
            "{peer}"
        );
    }

    #[test]
    fn a_missing_baseline_is_reported_not_guessed() {
        let v = verdicts(&[row("agent-pg-noindex", 1000, 1)]);
        assert!(v.iter().all(|v| v.met.is_none()));
        assert!(
            v[0].to_string()
                .contains("pg-copy-pipe-noindex did not run")
        );
    }

    #[test]
    fn scaling_allows_half_again_the_proportional_time() {
        let rows = [
            row("agent-pg", 10_000, 149),
            row("agent-pg-scale", 1_000, 10),
        ];
        let v = scaling(&rows, "agent-pg", "agent-pg-scale").unwrap();
        assert_eq!(v.bound, Some(150.0));
        assert_eq!(v.met, Some(true));
    }
}
