//! `exchange-agent sync`: one pull-and-push cycle, finished when everything pulled is
//! acknowledged by the hub.

use std::sync::Arc;
use std::time::Duration;

use exchange_connectors::HorizonInfo;
use tokio::sync::watch;

use crate::pipeline::Pipeline;
use crate::pull::PullReport;

/// The outcome of one resource.
#[derive(Debug, Clone)]
pub struct ResourceOutcome {
    /// Resource code.
    pub code: String,
    /// What the pull did, or why it failed.
    pub pull: Result<PullReport, String>,
    /// Records still queued at the end.
    pub queued_records: u64,
    /// Last push error, if the queue is not empty.
    pub push_error: Option<String>,
}

/// What `sync` did.
#[derive(Debug, Clone)]
pub struct SyncReport {
    /// Per resource.
    pub resources: Vec<ResourceOutcome>,
    /// Whether the deadline passed before everything was acknowledged.
    pub timed_out: bool,
}

impl SyncReport {
    /// Whether everything pulled was acknowledged and no pull failed.
    pub fn is_complete(&self) -> bool {
        !self.timed_out
            && self
                .resources
                .iter()
                .all(|r| r.pull.is_ok() && r.queued_records == 0)
    }
}

impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.resources {
            match &r.pull {
                Ok(p) => {
                    write!(f, "{}: pulled {} records", r.code, p.records)?;
                    if p.quarantined > 0 {
                        write!(
                            f,
                            ", quarantined {} rows (see `exchange-agent status`)",
                            p.quarantined
                        )?;
                    }
                    match &p.horizon {
                        Some(HorizonInfo::OpenTransaction { since, .. }) => {
                            write!(f, "; held back by a transaction open since {since}")?
                        }
                        Some(HorizonInfo::LagOnly) => {
                            write!(f, "; open transactions not visible, safety lag only")?
                        }
                        _ => {}
                    }
                }
                Err(e) => write!(f, "{}: pull failed: {e}", r.code)?,
            }
            if r.queued_records > 0 {
                write!(f, "; {} records still queued", r.queued_records)?;
                if let Some(e) = &r.push_error {
                    write!(f, " ({e})")?;
                }
            } else {
                write!(f, "; all acknowledged by the hub")?;
            }
            writeln!(f)?;
        }
        if self.timed_out {
            writeln!(
                f,
                "The deadline passed; what is queued stays queued and goes with the next sync or the service."
            )?;
        }
        Ok(())
    }
}

/// Runs one cycle for every delivered resource, or only `only`.
pub async fn sync(pipeline: Arc<Pipeline>, only: Option<&str>, deadline: Duration) -> SyncReport {
    let pullers: Vec<_> = pipeline
        .pullers
        .iter()
        .filter(|p| only.is_none_or(|c| p.resource.code == c))
        .cloned()
        .collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut pushers = Vec::new();
    let mut pulls = Vec::new();
    for p in &pullers {
        let (done_tx, done_rx) = watch::channel(false);
        let pl = pipeline.clone();
        let code = p.resource.code.clone();
        let stop = stop_rx.clone();
        pushers.push(tokio::spawn(async move {
            pl.push_loop(&code, stop, Some(done_rx)).await
        }));
        let p = p.clone();
        let board = pipeline.board.clone();
        pulls.push(tokio::spawn(async move {
            let r = p.pull().await;
            match &r {
                Ok(rep) => board.pull_ok(
                    &p.resource.code,
                    rep.horizon.as_ref().map(crate::status::horizon_text),
                ),
                Err(e) => board.set_pull_error(&p.resource.code, &e.to_string()),
            }
            let _ = done_tx.send(true);
            r.map_err(|e| e.to_string())
        }));
    }
    let all = async {
        let mut outcomes = Vec::new();
        for h in pulls {
            outcomes.push(h.await.expect("pull task panicked"));
        }
        for h in pushers {
            h.await.expect("push task panicked");
        }
        outcomes
    };
    let (pull_results, timed_out) = match tokio::time::timeout(deadline, all).await {
        Ok(o) => (Some(o), false),
        Err(_) => {
            let _ = stop_tx.send(true);
            (None, true)
        }
    };
    let resources = pullers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let code = p.resource.code.clone();
            let st = pipeline.queue.state(&code).unwrap_or_default();
            let rt = pipeline.board.get(&code);
            ResourceOutcome {
                pull: match &pull_results {
                    Some(r) => r[i].clone(),
                    None => rt
                        .pull_error
                        .clone()
                        .map(Err)
                        .unwrap_or_else(|| Ok(PullReport::default())),
                },
                code,
                queued_records: st.queued_records,
                push_error: rt.push_error,
            }
        })
        .collect();
    SyncReport {
        resources,
        timed_out,
    }
}
