//! `exchange-agent run`: every delivered resource pulled on its schedule and pushed as soon
//! as batches are queued, until the shutdown future resolves.
//!
//! An unreachable source is retried with backoff without holding up the other resources; an
//! unreachable hub leaves records queued (pulling pauses when the queue is full). With
//! `[verify]`, the verification service listens under the same shutdown: it stops accepting
//! when the daemon stops, and requests in flight are answered (and audited) first.
//!
//! # Reload
//! The service owns what outlives a configuration: the queue (redb opens it once per process),
//! the status board, the admin listener, the verification listener (its open connections
//! survive a reload; grants, comparison rules and the TLS material of new handshakes are
//! taken from the new configuration) and
//! the connection to systemd. A *generation* is what a
//! configuration builds around them: pullers, pushers, the control socket, the hub client with
//! its certificates. SIGHUP, or a change to the configuration file or a TLS file it names
//! (watched with `notify`, by directory, since editors replace files), loads and validates the
//! file again; a valid one replaces the generation (the old one is stopped first: a pull or
//! push cut short is safe at any moment, see the queue's invariants); an invalid one leaves the
//! old generation running, the verification service's grants and TLS material included, and
//! says why (log, audit entry `config.reload_failed`, metrics
//! `exchange_config_reload_failures_total` and `exchange_config_reload_failed`, `status`).
//! Every load is audited with the SM3 of the file.
//!
//! # Shutdown
//! SIGTERM stops pulling and pushing: a batch in flight is either acknowledged (and removed)
//! or stays queued and is resent after the restart, answered `duplicate` if the hub had
//! committed it. Nothing is lost; the stop takes at most [`STOP_DEADLINE`].

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use exchange_protocol::lang::Text;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::pipeline::pull::Puller;
use crate::service::control::Change;
use crate::service::sd_notify::Notifier;
use crate::service::status;

/// How long the tasks of a generation get to stop (within systemd's `TimeoutStopSec=30s`).
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// How long a transaction open on a source may hold a resource back before a warning.
const HELD_WARNING: Duration = Duration::from_secs(3600);

/// How often the status line is refreshed without a watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// What `run` gets from outside besides the pipeline.
#[derive(Default)]
pub struct Options {
    /// The configuration file, read again on SIGHUP and when it or a TLS file it names
    /// changes; `None`: no reloads (the demo).
    pub config_file: Option<PathBuf>,
    /// systemd's notification socket (`Type=notify`), if any.
    pub notifier: Option<Notifier>,
    /// The admin listener (`[admin] listen`), bound by the caller.
    pub admin: Option<tokio::net::TcpListener>,
}

/// Runs until `shutdown` resolves, then stops the tasks; the queue stays consistent whatever
/// the moment. No reloads, no systemd notifications, no admin listener (see [`serve`]).
/// Fails only when the verification service (`[verify]`) cannot start.
pub async fn run(
    pipeline: Arc<Pipeline>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), crate::verify::VerifyError> {
    serve(pipeline, Options::default(), shutdown).await
}

/// The service: starts a generation of `pipeline`, tells systemd it is ready, then reloads
/// on SIGHUP and file changes, pings the watchdog from this loop, until `shutdown` resolves.
/// Fails only when the verification service (`[verify]`) cannot start.
pub async fn serve(
    pipeline: Arc<Pipeline>,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), crate::verify::VerifyError> {
    let notifier = options.notifier.unwrap_or_else(Notifier::inactive);
    // The verification service outlives generations: bound before READY, reloaded in place.
    let verify = Verification::start(&pipeline).await?;
    let (reload_rx, watcher) = reload_triggers(options.config_file.as_deref(), &pipeline.config);
    let (current_tx, current_rx) = watch::channel(pipeline.clone());
    let admin = options
        .admin
        .map(|listener| Admin::start(listener, current_rx));
    crate::service::reload::audit_load(&pipeline.config, "service.start", None);
    let (changes_tx, changes_rx) = mpsc::channel(8);
    let generation = Generation::start(pipeline.clone(), changes_tx.clone());
    tracing::info!(node = %pipeline.config.node.id, resources = pipeline.pullers.len(), hub = %pipeline.client.url(), "Agent started.");
    warn_unconfigured_queues(&pipeline);
    notifier.ready(&status::summary(&generation.pipeline));
    let mut daemon = Daemon {
        file_digest: options
            .config_file
            .as_deref()
            .and_then(|f| crate::service::reload::fingerprint(f, &pipeline.config)),
        seen: pipeline.config.clone(),
        config_file: options.config_file,
        generation,
        current_tx,
        verify,
        watcher,
        notifier,
        stale: BTreeSet::new(),
        held: BTreeSet::new(),
        changes: changes_tx,
    };
    daemon.run(reload_rx, changes_rx, shutdown).await;
    daemon.stop(admin).await;
    Ok(())
}

/// The verification service and its task, when `[verify]` is set.
struct Verification {
    service: Arc<crate::verify::Service>,
    task: JoinHandle<Result<(), crate::verify::VerifyError>>,
    stop: watch::Sender<bool>,
}

impl Verification {
    /// Binds `[verify] listen` and serves it until [`Verification::stop`].
    async fn start(
        pipeline: &Pipeline,
    ) -> Result<Option<Verification>, crate::verify::VerifyError> {
        let Some(v) = &pipeline.config.verify else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(v.listen)
            .await
            .map_err(|source| crate::verify::VerifyError::Listener {
                addr: v.listen.to_string(),
                source,
            })?;
        let service = Arc::new(crate::verify::Service::new(Arc::new(
            pipeline.config.clone(),
        ))?);
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(crate::verify::serve(
            listener,
            service.clone(),
            async move {
                let _ = stop_rx.changed().await;
            },
        ));
        Ok(Some(Verification {
            service,
            task,
            stop,
        }))
    }

    /// Stops accepting; requests in flight are answered (and audited) first.
    async fn stop(self) {
        let _ = self.stop.send(true);
        match tokio::time::timeout(STOP_DEADLINE, self.task).await {
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "The verification service stopped."),
            Ok(_) => {}
            Err(_) => tracing::warn!("The verification service did not stop in time."),
        }
    }
}

/// The admin listener (`[admin] listen`) and its task.
struct Admin {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Admin {
    /// Serves `/metrics` and `/health` for the pipeline `current` holds.
    fn start(listener: tokio::net::TcpListener, current: watch::Receiver<Arc<Pipeline>>) -> Admin {
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(crate::service::admin::serve(
            listener,
            current,
            async move {
                let _ = stop_rx.changed().await;
            },
        ));
        Admin { task, stop }
    }
}

/// What asks for a reload: SIGHUP and changes to the configuration file or a TLS file it
/// names (none without a file).
fn reload_triggers(
    file: Option<&std::path::Path>,
    config: &Config,
) -> (
    mpsc::Receiver<&'static str>,
    Option<crate::service::reload::Watch>,
) {
    let (reload_tx, reload_rx) = mpsc::channel::<&'static str>(16);
    let Some(file) = file else {
        return (reload_rx, None);
    };
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            let tx = reload_tx.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    if tx.send("SIGHUP").await.is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "Cannot handle SIGHUP; reload by restarting."),
    }
    let watcher = crate::service::reload::watch(file, config, reload_tx);
    (reload_rx, watcher)
}

/// Warns about queued batches of resources no longer configured (or no longer shared).
fn warn_unconfigured_queues(pipeline: &Pipeline) {
    if let Ok(states) = pipeline.queue.states() {
        for (code, st) in states {
            let pushed = pipeline.pullers.iter().any(|p| p.resource.code == code);
            if !pushed && st.queued_batches > 0 {
                tracing::warn!(resource = %code, queued_records = st.queued_records, "Resource is not configured (or not shared) any more; its queued batches are kept but not pushed.");
            }
        }
    }
}

/// The running service between start and stop.
struct Daemon {
    /// The configuration file; `None`: no reloads.
    config_file: Option<PathBuf>,
    /// The running generation.
    generation: Generation,
    /// The pipeline the admin listener reports on.
    current_tx: watch::Sender<Arc<Pipeline>>,
    verify: Option<Verification>,
    watcher: Option<crate::service::reload::Watch>,
    notifier: Notifier,
    /// The configuration as last read from the file (the running one until a reload): which
    /// files are watched and fingerprinted.
    seen: Config,
    /// The fingerprint of the file and its TLS files as last loaded.
    file_digest: Option<String>,
    /// Resources last found stale (warned once until they are not).
    stale: BTreeSet<String>,
    /// Resources last found held back for long by an open transaction (warned once).
    held: BTreeSet<String>,
    /// Where the control socket hands the changes operators ask for.
    changes: mpsc::Sender<Change>,
}

impl Daemon {
    /// Reloads when asked, applies operators' changes, and ticks the status line and
    /// warnings, until `shutdown`.
    async fn run(
        &mut self,
        mut reload_rx: mpsc::Receiver<&'static str>,
        mut changes_rx: mpsc::Receiver<Change>,
        shutdown: impl Future<Output = ()>,
    ) {
        let every = self.notifier.watchdog_interval().unwrap_or(STATUS_EVERY);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(trigger) = reload_rx.recv() => {
                    // Editors write in several steps: let them finish, take the triggers as one.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let mut sighup = trigger == "SIGHUP";
                    while let Ok(t) = reload_rx.try_recv() {
                        sighup |= t == "SIGHUP";
                    }
                    self.reload(sighup).await;
                }
                Some(change) = changes_rx.recv() => self.apply(change).await,
                _ = tick.tick() => self.tick(),
            }
        }
    }

    /// A reload asked by SIGHUP (always tried) or a file change (tried when the file or a TLS
    /// file it names really changed).
    async fn reload(&mut self, sighup: bool) {
        let Some(file) = self.config_file.clone() else {
            return;
        };
        let now = crate::service::reload::fingerprint(&file, &self.seen);
        if !sighup && now.is_some() && now == self.file_digest {
            return;
        }
        self.file_digest = now;
        self.notifier.reloading();
        let trigger = if sighup { "SIGHUP" } else { "file change" };
        let service = self.verify.as_ref().map(|v| v.service.as_ref());
        if let Some(crate::service::reload::Next {
            pipeline: next,
            verify: prepared,
        }) = crate::service::reload::reload(&file, &self.generation.pipeline, service, trigger)
        {
            // Everything built: the verification service's grants and TLS first (a revoked
            // requester is refused from here on), then the new generation.
            if let (Some(service), Some(prepared)) = (service, prepared) {
                service.apply(prepared);
            }
            self.generation.stop().await;
            self.generation = Generation::start(next.clone(), self.changes.clone());
            let _ = self.current_tx.send(next.clone());
            crate::service::reload::reloaded(&next, trigger);
        }
        // The files the file names now (if it parses, even when the reload was refused:
        // fixing a CRL or certificate it newly names is a change to watch).
        if let Some(parsed) = crate::service::reload::parse(&file) {
            self.seen = parsed;
        }
        if let Some(w) = self.watcher.as_mut() {
            crate::service::reload::rewatch(w, &file, &self.seen);
        }
        self.notifier
            .ready(&status::summary(&self.generation.pipeline));
    }

    /// An operator's change, between pulls: the configuration file as it is now is loaded
    /// first (a change applies to what the administrator sees), pulling and pushing stop,
    /// the change is made and audited, and they start again. Verification is not stopped.
    async fn apply(&mut self, change: Change) {
        self.reload(false).await;
        let Change {
            operation,
            lang,
            reply,
        } = change;
        let pipeline = self.generation.pipeline.clone();
        tracing::info!(
            command = operation.name(),
            resource = operation.resource().unwrap_or("(all)"),
            "Applying an operator's change: pulling and pushing pause."
        );
        self.generation.stop().await;
        let pl = pipeline.clone();
        let name = operation.name();
        let result = tokio::task::spawn_blocking(move || {
            exchange_protocol::lang::scoped(lang, || {
                operation
                    .perform(&pl.config, &pl.queue)
                    .map_err(|e| format!("{e:#}"))
            })
        })
        .await
        .unwrap_or_else(|e| {
            Err(exchange_protocol::lang::scoped(lang, || {
                exchange_protocol::tr!("the command failed: {e}", "命令执行失败：{e}")
            }))
        });
        match &result {
            Ok(_) => tracing::info!(
                command = name,
                "Operator's change applied; pulling and pushing resume."
            ),
            Err(e) => {
                tracing::warn!(command = name, error = %e, "Operator's change refused; pulling and pushing resume.")
            }
        }
        self.generation = Generation::start(pipeline, self.changes.clone());
        let _ = reply.send(result);
    }

    /// The status line and watchdog ping, and the warnings about stale and held-back
    /// resources.
    fn tick(&mut self) {
        // The main loop reads the queue for the status line: a stuck queue stops the pings,
        // and systemd restarts the service after WatchdogSec=.
        self.notifier
            .alive(&status::summary(&self.generation.pipeline));
        self.warn_stale();
        self.warn_held();
    }

    /// Warns once per resource that becomes stale (its last acknowledged push is older than
    /// `max_staleness`).
    fn warn_stale(&mut self) {
        let pl = &self.generation.pipeline;
        let now_stale = crate::service::exposition::stale(&pl.config, &pl.queue);
        for (code, last) in &now_stale {
            if !self.stale.contains(code) {
                tracing::warn!(resource = %code, last_push = last.as_deref().unwrap_or("never"), "Resource is stale: its last acknowledged push is older than max_staleness (default 2 working days, the update deadline).");
            }
        }
        self.stale = now_stale.into_iter().map(|(c, _)| c).collect();
    }

    /// Warns once per resource that a transaction open on its source has held back for
    /// [`HELD_WARNING`].
    fn warn_held(&mut self) {
        let pl = &self.generation.pipeline;
        let now = chrono::Utc::now();
        for p in &pl.pullers {
            let code = &p.resource.code;
            let long = crate::service::exposition::held_for(&pl.board, code, now)
                .filter(|d| d.to_std().is_ok_and(|d| d >= HELD_WARNING));
            match (long, self.held.contains(code)) {
                (Some(d), false) => {
                    let (since, session) = pl.board.get(code).held.unwrap_or_default();
                    tracing::warn!(resource = %code, since = %since, session = session.as_deref().unwrap_or("unknown"), held_minutes = d.num_minutes(), "A transaction open on the source holds the resource back: rows committed after it start are not delivered until it ends.");
                    self.held.insert(code.clone());
                }
                (None, true) => {
                    self.held.remove(code);
                }
                _ => {}
            }
        }
    }

    /// Stops the generation, then the admin listener, then the verification service.
    async fn stop(mut self, admin: Option<Admin>) {
        tracing::info!("Shutting down.");
        self.notifier.stopping();
        drop(self.watcher);
        self.generation.stop().await;
        if let Some(admin) = admin {
            let _ = admin.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), admin.task).await;
        }
        if let Some(verify) = self.verify {
            verify.stop().await;
        }
    }
}

/// The tasks one configuration runs.
struct Generation {
    /// The pipeline they share.
    pipeline: Arc<Pipeline>,
    /// Turns true to stop them.
    stop: watch::Sender<bool>,
    /// The tasks.
    tasks: Vec<JoinHandle<()>>,
}

impl Generation {
    /// Starts pullers, pushers, the control socket (handing changes to `changes`), the
    /// catalogue report and the status file.
    fn start(pipeline: Arc<Pipeline>, changes: mpsc::Sender<Change>) -> Generation {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
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
        match crate::service::control::bind(&data_dir) {
            Ok(listener) => {
                let pl = pipeline.clone();
                let stop = stop_rx.clone();
                tasks.push(tokio::spawn(crate::service::control::serve(
                    listener, pl, changes, stop,
                )));
            }
            Err(e) => tracing::warn!(
                path = %crate::service::control::socket_path(&data_dir).display(),
                error = %e,
                "Cannot open the control socket; `exchange-agent sync` cannot reach this daemon."
            ),
        }
        tasks.push(tokio::spawn(catalogue_loop(
            pipeline.clone(),
            stop_rx.clone(),
        )));
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
        Generation {
            pipeline,
            stop: stop_tx,
            tasks,
        }
    }

    /// Stops every task (one overall deadline, within systemd's `TimeoutStopSec`); the
    /// queue is consistent whatever is cut short.
    async fn stop(&mut self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + STOP_DEADLINE;
        for t in std::mem::take(&mut self.tasks) {
            match tokio::time::timeout_at(deadline, t).await {
                Ok(Err(e)) if e.is_panic() => tracing::error!(error = %e, "A task panicked."),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        "Tasks did not stop within {} s; going on anyway (nothing is lost).",
                        STOP_DEADLINE.as_secs()
                    );
                    break;
                }
            }
        }
        // A pull cut short may have left its queue transaction running on a blocking thread;
        // redb runs one write transaction at a time, so an empty one returns after it, and
        // the next generation reads the cursor that transaction wrote.
        let queue = self.pipeline.queue.clone();
        let settled = tokio::task::spawn_blocking(move || queue.begin()?.commit());
        if let Ok(Ok(Err(e))) = tokio::time::timeout(STOP_DEADLINE, settled).await {
            tracing::warn!(error = %e, "Cannot settle the queue after stopping the tasks.");
        }
        remove_socket(&self.pipeline.config);
    }
}

fn remove_socket(config: &Config) {
    let _ = std::fs::remove_file(crate::service::control::socket_path(&config.node.data_dir));
}

/// How often the same catalogue failure is logged again at WARN (in between: DEBUG).
const CATALOGUE_WARN_EVERY: Duration = Duration::from_secs(3600);

/// Catalogue entries (docs/PROTOCOL.md §10), retried with backoff until every one is in. A
/// failure is logged at WARN as one line when it first happens, when it changes, and once an
/// hour while it lasts; each retry in between at DEBUG.
async fn catalogue_loop(pl: Arc<Pipeline>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(600));
    let mut last: Option<(Vec<String>, tokio::time::Instant)> = None;
    loop {
        let (reported, failed) = pl.report_catalogue().await;
        let failed: Vec<String> = failed.iter().map(|t| t.get().to_owned()).collect();
        if failed.is_empty() {
            tracing::info!(entries = reported, "Catalogue reported to the hub.");
            return;
        }
        let delay = backoff.next_delay();
        let retry_in = crate::text::duration_text(delay);
        let errors = failed.join("; ");
        let repeated = last
            .as_ref()
            .is_some_and(|(before, at)| *before == failed && at.elapsed() < CATALOGUE_WARN_EVERY);
        if repeated {
            tracing::debug!(failed = failed.len(), errors = %errors, retry_in = %retry_in, "Catalogue entries still not reported; retrying.");
        } else {
            tracing::warn!(failed = failed.len(), errors = %errors, retry_in = %retry_in, "Catalogue entries not reported; retrying (the same failure is logged again at most hourly).");
            last = Some((failed, tokio::time::Instant::now()));
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn schedule_loop(
    pipeline: Arc<Pipeline>,
    puller: Arc<Puller>,
    mut stop: watch::Receiver<bool>,
) {
    let code = puller.resource.code.clone();
    let mut backoff = Backoff::standard();
    let watch = puller
        .resource
        .files
        .as_ref()
        .and_then(|f| super::drop_watch::DropWatch::new(&code, f));
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = puller.pull() => Some(r),
            _ = stop.changed() => None,
        };
        // A failing pull waits out its backoff: a file dropped meanwhile does not cut it short.
        let watching = matches!(result, Some(Ok(_)));
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
                pipeline.pull_failed(&code, &Text::render(|| e.to_string()));
                let delay = if e.is_transient() {
                    backoff.next_delay()
                } else {
                    puller.resource.schedule.delay_from(chrono::Local::now())
                };
                tracing::warn!(resource = %code, error = %e, retry_in = %crate::text::duration_text(delay), "Pull failed; other resources go on.");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = super::drop_watch::DropWatch::changed(watch.as_ref().filter(|_| watching)) => {}
            _ = stop.changed() => return,
        }
    }
}
