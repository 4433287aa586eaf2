//! The pipeline: records from the source to the hub.
//!
//! - [`pull`]: a source page through the policy into a batch, enqueued with the cursor in one
//!   commit ([`fingerprint`]: what fixes a stream's shape; [`catalogue`]: the resource's entry
//!   at the hub);
//! - [`queue`]: the durable redb queue (on-disk format and invariants in its doc comment);
//! - [`push`]: batches to the hub over mutual TLS, removed only after acknowledgement;
//! - [`board`]: what the loops know at run time that the queue does not hold;
//! - [`sync`]: running the pipeline until it has caught up (`exchange-agent sync`, and a sync
//!   asked of the daemon);
//! - this module: the pipeline assembled from a configuration (connectors, compiled policies,
//!   the queue and the hub client), shared by `run` and `sync`, with its pull and push loops.

pub mod board;
pub mod catalogue;
pub mod fingerprint;
pub mod pull;
pub mod push;
pub mod queue;
pub mod sync;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use exchange_connectors::Connector;
use exchange_protocol::lang::Text;
use tokio::sync::{Notify, watch};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::pipeline::board::Board;
use crate::pipeline::pull::Puller;
use crate::pipeline::push::{Flow, HubClient, OfflineLink, PushError, push_batches, push_offline};
use crate::pipeline::queue::{Queue, Stage};
use crate::policy::Plan;

/// Everything a running agent needs.
pub struct Pipeline {
    /// The validated configuration.
    pub config: Config,
    /// The queue.
    pub queue: Queue,
    /// The hub client.
    pub client: HubClient,
    /// Offline exchange (`[hub] mode = "offline"`): batches leave as files instead.
    pub offline: Option<Arc<OfflineLink>>,
    /// One puller per delivered resource (unconditional, or conditional with `deliver = true`).
    pub pullers: Vec<Arc<Puller>>,
    /// Signalled when the pusher freed queue space.
    pub space: Arc<Notify>,
    /// Signalled when batches were enqueued.
    pub enqueued: Arc<Notify>,
    /// Runtime status (errors, horizons) for `status`.
    pub board: Board,
    /// Every source's connector, by source name.
    pub connectors: BTreeMap<String, Arc<dyn Connector>>,
}

/// Errors while assembling the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The queue could not be opened.
    #[error(transparent)]
    Queue(#[from] crate::pipeline::queue::QueueError),
    /// A connector could not be prepared.
    #[error(transparent)]
    Connector(#[from] exchange_connectors::ConnectorError),
    /// The hub client could not be built.
    #[error(transparent)]
    Push(#[from] PushError),
}

impl Pipeline {
    /// Opens the queue and prepares connectors (connecting lazily) and the hub client.
    pub fn build(config: Config) -> Result<Pipeline, PipelineError> {
        let queue = Queue::open(&config.node.data_dir)?;
        Self::with_queue(config, queue, Board::default())
    }

    /// Prepares connectors and the hub client around a queue that is already open (and a
    /// status board that outlives this pipeline): a reload builds a new pipeline this way
    /// while the queue, which redb opens only once, stays open with everything queued.
    pub fn with_queue(
        config: Config,
        queue: Queue,
        board: Board,
    ) -> Result<Pipeline, PipelineError> {
        exchange_protocol::tls::install_provider();
        let client = HubClient::new(&config, queue.stream())?;
        let offline = match &config.hub.offline {
            Some(dirs) => Some(Arc::new(OfflineLink::new(&config, dirs, queue.stream())?)),
            None => None,
        };
        let mut connectors: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
        for (name, spec) in &config.sources {
            connectors.insert(name.clone(), exchange_connectors::open(spec)?);
        }
        let space = Arc::new(Notify::new());
        let enqueued = Arc::new(Notify::new());
        let pullers = config
            .resources
            .iter()
            .filter(|r| r.share.delivers())
            .map(|r| {
                Arc::new(Puller {
                    resource: r.clone(),
                    plan: Arc::new(Plan::new(r, &config.keys)),
                    connector: connectors[&r.source].clone(),
                    queue: queue.clone(),
                    batch: config.batch,
                    queue_max_bytes: config.queue.max_bytes,
                    space: space.clone(),
                    enqueued: enqueued.clone(),
                    paused: Default::default(),
                    running: Default::default(),
                })
            })
            .collect();
        // This process holds the queue, so it is the one that archives the audit log.
        crate::audit::set_retention(&config.node.data_dir, config.audit.clone());
        Ok(Pipeline {
            connectors,
            board,
            config,
            queue,
            client,
            offline,
            pullers,
            space,
            enqueued,
        })
    }

    /// Reports the catalogue entry of every configured resource to the hub
    /// (docs/PROTOCOL.md §10); returns how many were accepted and why the others were not
    /// (in both languages: a `sync` the service carries out shows them to an operator).
    pub async fn report_catalogue(&self) -> (usize, Vec<Text>) {
        if self.offline.is_some() {
            // No channel carries catalogue entries offline yet (docs/CONFIG.md).
            tracing::info!("Offline exchange: catalogue entries are not reported to the hub.");
            return (0, Vec::new());
        }
        let mut reported = 0;
        let mut failed = Vec::new();
        for r in &self.config.resources {
            let result =
                match crate::pipeline::catalogue::entry(r, &*self.connectors[&r.source]).await {
                    Ok(entry) => self
                        .client
                        .put_catalogue(&entry)
                        .await
                        .map_err(|e| Text::render(|| e.to_string())),
                    Err(e) => Err(Text::One(e)),
                };
            match result {
                Ok(()) => reported += 1,
                Err(e) => failed.push(Text::render(|| {
                    let (code, e) = (&r.code, e.get());
                    exchange_protocol::tr!("{code}: {e}", "{code}：{e}")
                })),
            }
        }
        (reported, failed)
    }

    /// Records a failed pull (shown by `status`, kept across processes).
    pub fn pull_failed(&self, resource: &str, error: &Text) {
        self.board.set_pull_error(resource, error);
        self.note(resource, Stage::Pull, Some(error));
    }

    /// Records a successful pull and how its last page was bounded.
    pub fn pull_ok(&self, resource: &str, report: &crate::pipeline::pull::PullReport) {
        self.board.pull_ok(
            resource,
            report
                .horizon
                .as_ref()
                .map(|h| Text::render(|| crate::text::horizon_text(h))),
        );
        if let Some(query) = report.query {
            self.board.set_query(resource, query);
        }
        if let Some(h) = &report.horizon {
            use exchange_connectors::HorizonInfo::*;
            self.board.set_held(
                resource,
                match h {
                    OpenTransaction { since, session } => Some((since.clone(), session.clone())),
                    PreparedTransaction { since } => {
                        Some((since.clone(), Some("a prepared transaction".into())))
                    }
                    _ => None,
                },
            );
        }
        self.note(resource, Stage::Pull, None);
    }

    /// Records a failed push (shown by `status`, kept across processes).
    pub fn push_failed(&self, resource: &str, error: &Text) {
        self.board.set_push_error(resource, error);
        self.note(resource, Stage::Push, Some(error));
    }

    /// Records a successful push.
    pub fn push_ok(&self, resource: &str) {
        self.board.clear_push_error(resource);
        self.note(resource, Stage::Push, None);
    }

    fn note(&self, resource: &str, stage: Stage, error: Option<&Text>) {
        if let Err(e) = self.queue.note_error(resource, stage, error) {
            tracing::warn!(resource, error = %e, "Cannot keep the last error in the queue.");
        }
    }

    /// Pushes a resource's queued batches until its queue is empty and `until_empty` says so,
    /// or until `stop` turns true. Failures are retried with backoff; nothing is dropped.
    pub async fn push_loop(
        &self,
        resource: &str,
        mut stop: watch::Receiver<bool>,
        until_empty: Option<watch::Receiver<bool>>,
    ) {
        let mut retry = PushRetry::new(until_empty);
        let mut flow = Flow::default();
        // A push error is shown (and kept) until the first acknowledgement after it, even in
        // the middle of a long drain; set at start for an error kept by an earlier process.
        let failing = AtomicBool::new(true);
        let acked = || {
            if failing.swap(false, Ordering::Relaxed) {
                self.push_ok(resource);
            }
            self.space.notify_waiters();
        };
        loop {
            if *stop.borrow() {
                return;
            }
            let notified = self.enqueued.notified();
            let result = tokio::select! {
                r = self.push_once(resource, &mut flow, &acked) => r,
                // A batch in flight may already be committed by the hub: it is resent after a
                // restart and acknowledged as a duplicate.
                _ = stop.changed() => return,
            };
            let pause = match result {
                Ok(n) => retry.after_push(self, resource, n),
                Err(e) => {
                    let pause = retry.after_failure(resource, &e);
                    if !matches!(e, PushError::Overtaken { .. }) {
                        failing.store(true, Ordering::Relaxed);
                        self.push_failed(resource, &Text::render(|| e.to_string()));
                    }
                    pause
                }
            };
            match pause {
                Pause::Again => {}
                Pause::Stop => return,
                Pause::Idle => tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                },
                Pause::Retry(delay) => tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                },
            }
        }
    }
}

impl Pipeline {
    /// One call of the push loop: [`push_batches`] online, [`push_offline`] offline.
    async fn push_once(
        &self,
        resource: &str,
        flow: &mut Flow,
        acked: &(dyn Fn() + Sync),
    ) -> Result<usize, PushError> {
        match &self.offline {
            None => push_batches(&self.client, &self.queue, resource, flow, acked).await,
            Some(link) => push_offline(link, &self.queue, resource, acked).await,
        }
    }

    /// Whether a push loop has nothing left to do for `resource`: nothing queued, or offline
    /// every queued batch written to the outbox (its answer comes back later).
    fn drained(&self, resource: &str) -> bool {
        match &self.offline {
            None => self.queue.head(resource).ok().flatten().is_none(),
            Some(link) => link.all_written(&self.queue, resource),
        }
    }
}

/// What a push loop does after one call of [`push_batches`].
enum Pause {
    /// Batches were acknowledged: push again at once.
    Again,
    /// Nothing queued: wait for an enqueue (a second at most).
    Idle,
    /// Wait this long before pushing again (a failure, or an overtaken batch).
    Retry(Duration),
    /// The loop ends (a sync that has nothing more to do, or cannot go on).
    Stop,
}

/// How a push loop waits after each call: its backoffs, and whether it serves a `sync`.
struct PushRetry {
    /// Backoff after a failure.
    backoff: Backoff,
    /// A refusal (4xx) needs someone to fix something: retry, but rarely.
    refusal_backoff: Backoff,
    /// For a `sync`: turns true when its pulls are done, so an empty queue ends the loop.
    until_empty: Option<watch::Receiver<bool>>,
    /// Failed calls since the last acknowledgement: the recovery is logged once.
    failures: u32,
}

impl PushRetry {
    fn new(until_empty: Option<watch::Receiver<bool>>) -> PushRetry {
        PushRetry {
            backoff: Backoff::standard(),
            refusal_backoff: Backoff::new(Duration::from_secs(30), push::MAX_RETRY_AFTER),
            until_empty,
            failures: 0,
        }
    }

    /// After a call that acknowledged `acknowledged` batches.
    fn after_push(&mut self, pipeline: &Pipeline, resource: &str, acknowledged: usize) -> Pause {
        if acknowledged > 0 {
            if self.failures > 0 {
                tracing::info!(
                    resource,
                    failed_attempts = self.failures,
                    "Push recovered: batches leave again (acknowledged by the hub, or written to the offline outbox)."
                );
                self.failures = 0;
            }
            self.backoff.reset();
            self.refusal_backoff.reset();
            return Pause::Again;
        }
        if let Some(done) = &self.until_empty
            && *done.borrow()
            && pipeline.drained(resource)
        {
            return Pause::Stop;
        }
        Pause::Idle
    }

    /// After a failed call (the board is told by the caller, except for an overtaken batch).
    fn after_failure(&mut self, resource: &str, e: &PushError) -> Pause {
        match e {
            PushError::Overtaken { .. } => {
                // Provisional, not a failure: the batches are resent in order, from the
                // oldest alone. Nothing was acknowledged, so wait first rather than spin.
                let delay = self.backoff.next_delay();
                tracing::debug!(resource, error = %e, retry_in = %crate::text::duration_text(delay), "Resending from the oldest queued batch.");
                Pause::Retry(delay)
            }
            // Stopped until an operator acts (which needs the queue: the service is stopped
            // first); nothing to retry. The reason was logged when it stopped.
            PushError::Halted { .. } if self.until_empty.is_some() => Pause::Stop,
            PushError::Halted { .. } => Pause::Retry(Duration::from_secs(30)),
            _ => {
                let delay = match e.retry_after() {
                    Some(d) => d,
                    None if e.is_refusal() => self.refusal_backoff.next_delay(),
                    None => self.backoff.next_delay(),
                };
                self.failures += 1;
                tracing::warn!(resource, error = %e, retry_in = %crate::text::duration_text(delay), "Push failed; the batch stays queued and will be retried.");
                if self.until_empty.is_some() && e.is_refusal() {
                    // `sync`: a refusal needs someone to act; say so now instead of
                    // retrying until the deadline. The batch stays queued.
                    return Pause::Stop;
                }
                Pause::Retry(delay)
            }
        }
    }
}
