//! `exchange-agent run`: every delivered resource pulled on its schedule and pushed as soon
//! as batches are queued, until the shutdown future resolves.
//!
//! An unreachable source is retried with backoff without holding up the other resources; an
//! unreachable hub leaves records queued (pulling pauses when the queue is full). With
//! `[verify]`, the verification service listens under the same shutdown: it stops accepting
//! when the daemon stops, and requests in flight are answered (and audited) first.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::pipeline::Pipeline;
use crate::pull::Puller;
use crate::status;

/// Runs until `shutdown` resolves, then stops the tasks; the queue stays consistent whatever
/// the moment. Fails only when the verification service (`[verify]`) cannot start.
pub async fn run(
    pipeline: Arc<Pipeline>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), crate::verify::VerifyError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(v) = &pipeline.config.verify {
        let listener = tokio::net::TcpListener::bind(v.listen)
            .await
            .map_err(crate::verify::VerifyError::Listener)?;
        let service = Arc::new(crate::verify::Service::new(Arc::new(
            pipeline.config.clone(),
        ))?);
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.changed().await;
            };
            if let Err(e) = crate::verify::serve(listener, service, stopped).await {
                tracing::error!(error = %e, "The verification service stopped.");
            }
        }));
    }
    for p in &pipeline.pullers {
        let code = p.resource.code.clone();
        let pl = pipeline.clone();
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            pl.push_loop(&code, stop, None).await
        }));
        let pl = pipeline.clone();
        let p = p.clone();
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(
            async move { schedule_loop(pl, p, stop).await },
        ));
    }
    let data_dir = pipeline.config.node.data_dir.clone();
    match crate::control::bind(&data_dir) {
        Ok(listener) => {
            let pl = pipeline.clone();
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(crate::control::serve(listener, pl, stop)));
        }
        Err(e) => tracing::warn!(
            path = %crate::control::socket_path(&data_dir).display(),
            error = %e,
            "Cannot open the control socket; `exchange-agent sync` cannot reach this daemon."
        ),
    }
    // Catalogue entries (docs/PROTOCOL.md §10), retried with backoff until every one is in.
    let pl = pipeline.clone();
    let mut stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(600));
        loop {
            let (reported, failed) = pl.report_catalogue().await;
            if failed.is_empty() {
                tracing::info!(entries = reported, "Catalogue reported to the hub.");
                return;
            }
            for e in &failed {
                tracing::warn!(error = %e, "Catalogue entry not reported; retrying.");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.changed() => return,
            }
        }
    }));
    let pl = pipeline.clone();
    let mut stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            if let Ok(r) = status::report(&pl.config, &pl.queue, &pl.board)
                && let Err(e) = status::write_file(&pl.config.node.data_dir, &r)
            {
                tracing::warn!(error = %e, "Cannot write the status file.");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.changed() => return,
            }
        }
    }));
    tracing::info!(node = %pipeline.config.node.id, resources = pipeline.pullers.len(), hub = %pipeline.client.url(), "Agent started.");
    if let Ok(states) = pipeline.queue.states() {
        for (code, st) in states {
            let pushed = pipeline.pullers.iter().any(|p| p.resource.code == code);
            if !pushed && st.queued_batches > 0 {
                tracing::warn!(resource = %code, queued_records = st.queued_records, "Resource is not configured (or not shared) any more; its queued batches are kept but not pushed.");
            }
        }
    }
    shutdown.await;
    tracing::info!("Shutting down.");
    let _ = stop_tx.send(true);
    // Every task watches `stop`; one overall deadline keeps the stop within systemd's
    // TimeoutStopSec. The queue is consistent whatever is cut short.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for t in tasks {
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Err(e)) if e.is_panic() => tracing::error!(error = %e, "A task panicked."),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("Tasks did not stop within 20 s; exiting anyway (nothing is lost).");
                break;
            }
        }
    }
    let _ = std::fs::remove_file(crate::control::socket_path(&data_dir));
    Ok(())
}

async fn schedule_loop(
    pipeline: Arc<Pipeline>,
    puller: Arc<Puller>,
    mut stop: watch::Receiver<bool>,
) {
    let code = puller.resource.code.clone();
    let mut backoff = Backoff::standard();
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = puller.pull() => Some(r),
            _ = stop.changed() => None,
        };
        let wait = match result {
            None => return,
            Some(Ok(report)) => {
                backoff.reset();
                pipeline.pull_ok(&code, &report);
                let quarantined = report.quarantined + report.null_cursor;
                if report.records > 0 || quarantined > 0 {
                    tracing::info!(resource = %code, records = report.records, quarantined, "Pulled.");
                }
                let delay = puller.resource.schedule.delay_from(chrono::Local::now());
                match puller.resource.schedule {
                    crate::schedule::Schedule::Every(_) => delay.saturating_sub(started.elapsed()),
                    crate::schedule::Schedule::Cron(_) => delay,
                }
            }
            Some(Err(e)) => {
                pipeline.pull_failed(&code, &e.to_string());
                let delay = if e.is_transient() {
                    backoff.next_delay()
                } else {
                    puller.resource.schedule.delay_from(chrono::Local::now())
                };
                tracing::warn!(resource = %code, error = %e, retry_in = ?delay, "Pull failed; other resources go on.");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}
