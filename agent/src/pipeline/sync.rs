//! `exchange-agent sync`: deliver every row committed on the sources before the command
//! started, and exit once the hub acknowledged it.
//!
//! # The contract
//! For each resource, `sync` reads the source's clock first (`t0`, [`Connector::clock`]).
//! It then pulls until a pull ends caught up with a horizon that has passed `t0`
//! ([`PullReport::reached`]): every row committed before `t0` has then been read, whatever
//! transactions were open. While a transaction open on the source (or the safety lag, or a
//! replica's lag) holds the horizon back, `sync` pulls again every second and says what it is
//! waiting for; if `wait` runs out first, the resource fails with that reason. A resource
//! whose cursor has no horizon (not a date or timestamp) is caught up after one pull; a
//! snapshot resource after one full scan that started after `t0`. Then every batch queued is
//! pushed and `sync` returns when the hub acknowledged all of them, or when `deadline` passes.
//!
//! The counts reported are what was committed to the queue, also when the deadline cut the
//! pull short.
//!
//! Run against a daemon (which holds the queue), the same cycle runs inside the daemon
//! ([`crate::service::control`]): pulls are serialized with the daemon's own, and the daemon's push
//! loops deliver the batches.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use exchange_connectors::{Connector, HorizonInfo};
use exchange_protocol::lang::Text;
use exchange_protocol::tr;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::Mode;
use crate::pipeline::Pipeline;
use crate::pipeline::pull::{Progress, PullReport, Puller};

/// How long `sync` may take.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SyncOptions {
    /// How long a resource may wait for its horizon to pass the sync's start.
    pub wait: Duration,
    /// How long the whole sync may take, pushing included.
    pub deadline: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            wait: Duration::from_secs(300),
            deadline: Duration::from_secs(600),
        }
    }
}

/// Something to tell the person waiting (one line, no values), in both languages: when the
/// service syncs, the person waiting is an operator who may read the other one.
pub type Say = Arc<dyn Fn(Text) + Send + Sync>;

/// The outcome of one resource.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResourceOutcome {
    /// Resource code.
    pub code: String,
    /// Records committed to the queue by this sync (upserts and deletes).
    pub pulled: u64,
    /// Rows quarantined by this sync.
    pub quarantined: u64,
    /// Why pulling did not complete: a failure, or what the horizon was still waiting for
    /// (the texts of an outcome are kept in both languages: the service's outcome is read
    /// by the operator's `sync`).
    pub pull_error: Option<Text>,
    /// How the last page was bounded, for people.
    pub horizon: Option<Text>,
    /// Batches of this sync still queued at the end (empty ones included: a baseline mark).
    pub queued_batches: u64,
    /// Records in them.
    pub queued_records: u64,
    /// The last push error, when records are still queued.
    pub push_error: Option<Text>,
    /// Offline exchange: batches written to the outbox that still await the hub's answer
    /// (not counted in `queued_batches`).
    #[serde(default)]
    pub in_outbox: u64,
}

impl ResourceOutcome {
    fn is_complete(&self) -> bool {
        self.pull_error.is_none() && self.queued_batches == 0
    }

    /// The report's line for this resource, in the reader's language.
    fn line(&self) -> String {
        let (code, pulled) = (&self.code, self.pulled);
        let mut out = tr!(
            "{code}: pulled {pulled} records",
            "{code}：已抽取 {pulled} 条记录"
        );
        if self.quarantined > 0 {
            let n = self.quarantined;
            out.push_str(&tr!(
                ", quarantined {n} rows (see `exchange-agent quarantine list {code}`)",
                "，隔离 {n} 行（见 `exchange-agent quarantine list {code}`）"
            ));
        }
        if let Some(e) = &self.pull_error {
            out.push_str(&tr!("; pull incomplete: {e}", "；抽取未完成：{e}"));
        }
        if self.in_outbox > 0 {
            let n = self.in_outbox;
            out.push_str(&tr!(
                "; {n} batches written to the outbox, awaiting the hub's answer",
                "；{n} 个批次已写入发件目录，等待交换中心的应答"
            ));
        }
        if self.queued_batches > 0 {
            let (records, batches) = (self.queued_records, self.queued_batches);
            out.push_str(&tr!(
                "; {records} records still queued ({batches} batches)",
                "；仍有 {records} 条记录在队列中（{batches} 个批次）"
            ));
            if let Some(e) = &self.push_error {
                out.push_str(&tr!(" ({e})", "（{e}）"));
            }
        } else if self.in_outbox > 0 {
            // Offline: the hub's answers are still to come; nothing to claim yet.
        } else if self.pull_error.is_none() {
            out.push_str(&tr!(
                "; the hub acknowledged everything",
                "；交换中心已全部确认"
            ));
        } else if pulled > 0 {
            out.push_str(&tr!(
                "; the hub acknowledged the {pulled} records pulled",
                "；交换中心已确认抽取的 {pulled} 条记录"
            ));
        }
        out
    }
}

/// What `sync` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncReport {
    /// Per resource.
    pub resources: Vec<ResourceOutcome>,
    /// Whether the deadline passed before everything was acknowledged.
    pub timed_out: bool,
    /// Catalogue entries reported to the hub (docs/PROTOCOL.md §10), and why others were not.
    #[serde(default)]
    pub catalogue: (usize, Vec<Text>),
}

impl SyncReport {
    /// Whether every resource was read up to the sync's start and acknowledged by the hub.
    pub fn is_complete(&self) -> bool {
        !self.timed_out && self.resources.iter().all(ResourceOutcome::is_complete)
    }
}

impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.resources {
            writeln!(f, "{}", r.line())?;
        }
        if self.catalogue.0 > 0 {
            let n = self.catalogue.0;
            writeln!(
                f,
                "{}",
                tr!(
                    "catalogue: {n} entries reported to the hub",
                    "目录：已向交换中心上报 {n} 个条目"
                )
            )?;
        }
        // Not a failure of the sync (its promise is about records), but the hub's refusal of
        // `share = "none"` batches depends on the entry (docs/PROTOCOL.md §10).
        for e in &self.catalogue.1 {
            writeln!(
                f,
                "{}",
                tr!(
                    "warning: catalogue entry not reported: {e}",
                    "警告：目录条目未上报：{e}"
                )
            )?;
        }
        if self.timed_out {
            writeln!(
                f,
                "{}",
                tr!(
                    "The deadline passed; what is queued stays queued and goes with the next sync or the service.",
                    "已到截止时间；队列中的数据保留在队列中，随下一次 sync 或服务推送。"
                )
            )?;
        }
        Ok(())
    }
}

/// Who pushes the batches a sync queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushers {
    /// `sync` runs its own push loops (it holds the queue).
    Own,
    /// A daemon's push loops are running already; `sync` waits for them.
    Daemon,
}

/// Runs one cycle for every delivered resource, or only `only`.
pub async fn sync(
    pipeline: Arc<Pipeline>,
    only: Option<&str>,
    options: SyncOptions,
    pushers: Pushers,
    say: Say,
) -> SyncReport {
    // Bounds past a week are taken as a week (and cannot overflow an instant).
    const MAX: Duration = Duration::from_secs(7 * 86_400);
    // Catalogue entries alongside the pulls (a `none` resource reaches the hub only this way),
    // within the same deadline.
    let catalogue_task = {
        let pl = pipeline.clone();
        tokio::spawn(async move { pl.report_catalogue().await })
    };
    let options = SyncOptions {
        wait: options.wait.min(MAX),
        deadline: options.deadline.min(MAX),
    };
    let started = Instant::now();
    let pullers: Vec<Arc<Puller>> = pipeline
        .pullers
        .iter()
        .filter(|p| only.is_none_or(|c| p.resource.code == c))
        .cloned()
        .collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Tasks are aborted when the sync is dropped (a control-socket client went away) or ends.
    let mut tasks = tokio::task::JoinSet::new();
    let states: Vec<Arc<Tracked>> = pullers
        .iter()
        .map(|p| {
            spawn_resource(
                &mut tasks,
                &pipeline,
                p,
                pushers,
                options.wait,
                &stop_rx,
                &say,
            )
        })
        .collect();
    let all = async { while tasks.join_next().await.is_some() {} };
    let timed_out = tokio::time::timeout(options.deadline.saturating_sub(started.elapsed()), all)
        .await
        .is_err();
    let _ = stop_tx.send(true);
    // Whatever still runs stops now (a pull commits or not as a whole).
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let catalogue = catalogue_within(
        catalogue_task,
        options.deadline.saturating_sub(started.elapsed()),
    )
    .await;
    for e in &catalogue.1 {
        tracing::warn!(error = %e, "Catalogue entry not reported; the hub cannot refuse batches of the resource should it be share = \"none\".");
    }
    let resources = pullers
        .iter()
        .zip(&states)
        .map(|(p, t)| outcome(&pipeline, &p.resource.code, t, pushers, timed_out))
        .collect();
    SyncReport {
        resources,
        timed_out,
        catalogue,
    }
}

/// Starts one resource's tasks: its pulls until the sync's start, and its push loop (or the
/// wait for the daemon's); returns what its sync does, as it goes.
fn spawn_resource(
    tasks: &mut tokio::task::JoinSet<()>,
    pipeline: &Arc<Pipeline>,
    puller: &Arc<Puller>,
    pushers: Pushers,
    wait: Duration,
    stop: &watch::Receiver<bool>,
    say: &Say,
) -> Arc<Tracked> {
    let state = Arc::new(Tracked::default());
    let (done_tx, done_rx) = watch::channel(false);
    let pl = pipeline.clone();
    let code = puller.resource.code.clone();
    let stop = stop.clone();
    if pushers == Pushers::Own {
        tasks.spawn(async move { pl.push_loop(&code, stop, Some(done_rx)).await });
    } else {
        let state = state.clone();
        tasks.spawn(async move { drained_by_daemon(&pl, &code, &state, done_rx, stop).await });
    }
    let (pl, p, say, tracked) = (pipeline.clone(), puller.clone(), say.clone(), state.clone());
    tasks.spawn(async move {
        pull_until_started(&pl, &p, &tracked, wait, &say).await;
        let _ = done_tx.send(true);
    });
    state
}

/// The catalogue task's result, if it ends within `remaining`.
async fn catalogue_within(
    mut task: tokio::task::JoinHandle<(usize, Vec<Text>)>,
    remaining: Duration,
) -> (usize, Vec<Text>) {
    match tokio::time::timeout(remaining, &mut task).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => (
            0,
            vec![Text::render(|| {
                exchange_protocol::tr!("the catalogue task failed: {e}", "目录上报任务失败：{e}")
            })],
        ),
        Err(_) => {
            task.abort();
            (
                0,
                vec![Text::render(|| {
                    exchange_protocol::tr!(
                        "the deadline passed before the hub answered; the service reports the entries again when it starts",
                        "交换中心应答之前已到期限；服务启动时会再次上报这些条目"
                    )
                })],
            )
        }
    }
}

/// What the sync did for one resource, read when it ends.
fn outcome(
    pipeline: &Pipeline,
    code: &str,
    t: &Tracked,
    pushers: Pushers,
    timed_out: bool,
) -> ResourceOutcome {
    let st = pipeline.queue.state(code).unwrap_or_default();
    let rt = pipeline.board.get(code);
    let totals = t.totals();
    let pull_error = t
        .error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .or_else(|| {
            (timed_out && !t.is_caught_up()).then(|| {
                Text::render(|| {
                    exchange_protocol::tr!(
                        "the deadline passed while pulling",
                        "抽取时已到截止时间"
                    )
                })
            })
        });
    // The batches this sync is answerable for: all of them when it pushes itself; up to the
    // last one its pulls queued when the daemon pushes (the daemon's own pulls may queue more
    // meanwhile).
    let (queued_batches, queued_records) = match pushers {
        Pushers::Own => (st.queued_batches, st.queued_records),
        Pushers::Daemon => queued_by(pipeline, code, t),
    };
    let (in_outbox, written_records) = in_outbox(pipeline, code);
    let in_outbox = in_outbox.min(queued_batches);
    let (queued_batches, queued_records) = (
        queued_batches - in_outbox,
        queued_records.saturating_sub(written_records),
    );
    ResourceOutcome {
        pulled: totals.records,
        quarantined: totals.quarantined + totals.null_cursor,
        pull_error,
        horizon: totals
            .horizon
            .as_ref()
            .map(|h| Text::render(|| crate::text::horizon_text(h))),
        queued_batches,
        queued_records,
        push_error: (queued_batches > 0)
            .then(|| rt.push_error.or(st.push_error.map(|n| n.message)))
            .flatten(),
        in_outbox,
        code: code.to_owned(),
    }
}

/// Offline: the queued batches of `code` this process wrote to the outbox, and their records.
fn in_outbox(pipeline: &Pipeline, code: &str) -> (u64, u64) {
    let Some(link) = &pipeline.offline else {
        return (0, 0);
    };
    let through = link.written_through(code);
    let written: Vec<_> = pipeline
        .queue
        .batches(code)
        .unwrap_or_default()
        .into_iter()
        .filter(|b| b.seq <= through)
        .collect();
    (
        written.len() as u64,
        written.iter().map(|b| u64::from(b.records)).sum(),
    )
}

/// The batches (and their records) still queued up to the last one the sync's pulls queued.
fn queued_by(pipeline: &Pipeline, code: &str, t: &Tracked) -> (u64, u64) {
    let last = *t.last_seq.lock().unwrap_or_else(|e| e.into_inner());
    let ours: Vec<_> = pipeline
        .queue
        .batches(code)
        .unwrap_or_default()
        .into_iter()
        .filter(|b| last.is_none_or(|l| b.seq <= l))
        .collect();
    (
        ours.len() as u64,
        ours.iter().map(|b| u64::from(b.records)).sum(),
    )
}

/// What one resource's sync has done so far.
#[derive(Default)]
struct Tracked {
    /// Counts of the pulls that finished.
    done: std::sync::Mutex<PullReport>,
    /// Counts of the pull under way.
    current: Progress,
    /// Why the pull did not complete.
    error: std::sync::Mutex<Option<Text>>,
    /// The seq of the last batch the sync's pulls queued, once they ended.
    last_seq: std::sync::Mutex<Option<u64>>,
}

impl Tracked {
    fn totals(&self) -> PullReport {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let current = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        PullReport {
            records: done.records + current.records,
            quarantined: done.quarantined + current.quarantined,
            // Counted afresh by every pull: the latest count, not a sum.
            null_cursor: if current.pages > 0 || current.null_cursor > 0 {
                current.null_cursor
            } else {
                done.null_cursor
            },
            pages: done.pages + current.pages,
            horizon: current.horizon.or(done.horizon),
            reached: current.reached.or(done.reached),
            caught_up: current.caught_up,
            query: current.query.or(done.query),
        }
    }

    fn finish_pull(&self) {
        let current = std::mem::take(&mut *self.current.lock().unwrap_or_else(|e| e.into_inner()));
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.records += current.records;
        done.quarantined += current.quarantined;
        done.null_cursor = current.null_cursor;
        done.pages += current.pages;
        done.horizon = current.horizon.or(done.horizon.take());
        done.reached = current.reached;
        done.caught_up = current.caught_up;
        done.query = current.query.or(done.query);
    }

    fn is_caught_up(&self) -> bool {
        self.last_seq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn fail(&self, why: Text) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
}

/// Pulls one resource until everything committed on its source before now has been read.
async fn pull_until_started(
    pipeline: &Pipeline,
    puller: &Puller,
    tracked: &Tracked,
    wait: Duration,
    say: &Say,
) {
    let code = &puller.resource.code;
    let until = Instant::now() + wait;
    let mut backoff = Backoff::standard();
    // The source's clock at the start: the instant the horizon has to pass.
    let Some(t0) = source_clock(pipeline, puller, tracked, until, &mut backoff, say).await else {
        return;
    };
    let mut scans = scans_to_pass(pipeline, puller);
    let mut said = Text::One(String::new());
    loop {
        let result = puller.pull_with(&tracked.current).await;
        let report = tracked
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tracked.finish_pull();
        match result {
            Ok(()) => {
                pipeline.pull_ok(code, &report);
                backoff.reset();
                scans = scans.saturating_sub(1);
                match still_waiting(puller, &report, scans, t0) {
                    None => break,
                    Some(text) if Instant::now() >= until => {
                        let wait = crate::text::duration_text(wait);
                        return tracked.fail(Text::render(|| {
                            let text = text.get();
                            exchange_protocol::tr!(
                                "waited {wait} for the source; still {text}",
                                "已等待数据源 {wait}；仍在{text}"
                            )
                        }));
                    }
                    Some(text) => {
                        if !text.en().is_empty() && text != said {
                            say(Text::render(|| {
                                let text = text.get();
                                exchange_protocol::tr!("{code}: {text}", "{code}：{text}")
                            }));
                            said = text;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            Err(e) => {
                pipeline.pull_failed(code, &Text::render(|| e.to_string()));
                if e.is_transient() && Instant::now() + backoff.peek() < until {
                    say(Text::render(|| {
                        exchange_protocol::tr!(
                            "{code}: pull failed ({e}); retrying",
                            "{code}：抽取失败（{e}），稍后重试"
                        )
                    }));
                    tokio::time::sleep(backoff.next_delay()).await;
                } else {
                    return tracked.fail(Text::render(|| e.to_string()));
                }
            }
        }
    }
    let st = pipeline.queue.state(code).unwrap_or_default();
    *tracked.last_seq.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(st.next_seq.saturating_sub(1));
}

/// The source's clock, retried while it is unreachable and time is left; `None` (the
/// resource failed) otherwise.
async fn source_clock(
    pipeline: &Pipeline,
    puller: &Puller,
    tracked: &Tracked,
    until: Instant,
    backoff: &mut Backoff,
    say: &Say,
) -> Option<DateTime<Utc>> {
    let code = &puller.resource.code;
    loop {
        match puller.connector.clock().await {
            Ok(t) => return Some(t),
            Err(e) if e.is_transient() && Instant::now() + backoff.peek() < until => {
                say(Text::render(|| {
                    exchange_protocol::tr!(
                        "{code}: source unreachable ({e}); retrying",
                        "{code}：无法连接数据源（{e}），稍后重试"
                    )
                }));
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                pipeline.pull_failed(code, &Text::render(|| e.to_string()));
                tracked.fail(Text::render(|| e.to_string()));
                return None;
            }
        }
    }
}

/// How many full scans of a snapshot resource have to end before it is caught up: a scan
/// already under way may have passed rows committed before `t0`; it is finished, and one
/// more full scan that starts after `t0` follows. None for an incremental resource.
fn scans_to_pass(pipeline: &Pipeline, puller: &Puller) -> u32 {
    match &puller.resource.mode {
        // One pull reads every complete file, each with its sweep.
        Mode::Snapshot if puller.resource.files.is_some() => 1,
        Mode::Snapshot => {
            let st = pipeline
                .queue
                .state(&puller.resource.code)
                .unwrap_or_default();
            if st.snapshot.position.is_some() || st.snapshot.sweeping {
                2
            } else {
                1
            }
        }
        Mode::Incremental { .. } => 0,
    }
}

/// After a pull that ended well: `None` when the resource is caught up with `t0`, else what
/// it is still waiting for (empty when there is nothing to tell).
fn still_waiting(
    puller: &Puller,
    report: &PullReport,
    scans: u32,
    t0: DateTime<Utc>,
) -> Option<Text> {
    let nothing = || Text::One(String::new());
    match (&puller.resource.mode, report.reached) {
        (Mode::Snapshot, _) => (scans > 0).then(nothing),
        (Mode::Incremental { .. }, Some(reached)) if reached < t0 => Some(Text::render(|| {
            waiting_for(
                puller.connector.as_ref(),
                report,
                reached,
                t0,
                &puller.resource.mode,
            )
        })),
        // The horizon passed `t0` but not yet the start of the baseline read (a read that
        // began after `t0`): the hub sweeps the old stream's records only once it completes.
        (Mode::Incremental { .. }, Some(_))
            if puller
                .queue
                .state(&puller.resource.code)
                .is_ok_and(|st| st.baseline.is_reading()) =>
        {
            Some(nothing())
        }
        // Unbounded (no date/timestamp cursor), or the horizon has passed `t0`.
        (Mode::Incremental { .. }, _) => None,
    }
}

/// What a horizon that has not reached the sync's start is waiting for, for people.
fn waiting_for(
    connector: &dyn Connector,
    report: &PullReport,
    reached: DateTime<Utc>,
    t0: DateTime<Utc>,
    mode: &Mode,
) -> String {
    let source = connector.name();
    let behind = crate::text::duration_text((t0 - reached).to_std().unwrap_or_default());
    let lag = match mode {
        Mode::Incremental { safety_lag, .. } => crate::text::duration_text(*safety_lag),
        Mode::Snapshot => "0s".into(),
    };
    match &report.horizon {
        Some(HorizonInfo::OpenTransaction { since, session }) => exchange_protocol::tr!(
            "held back by a transaction open on `{source}` since {}{}",
            "被 `{source}` 上自 {} 起未结束的事务暂缓{}",
            local_time(since),
            session
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ),
        Some(HorizonInfo::PreparedTransaction { since }) => exchange_protocol::tr!(
            "held back by a prepared transaction on `{source}` since {} (COMMIT PREPARED or ROLLBACK PREPARED it)",
            "被 `{source}` 上自 {} 起的预备事务暂缓（请对其执行 COMMIT PREPARED 或 ROLLBACK PREPARED）",
            local_time(since)
        ),
        Some(HorizonInfo::Replica { lag: replica_lag }) => exchange_protocol::tr!(
            "`{source}` is a replica: waiting for its replica_lag ({}) and the safety lag ({lag}); {behind} to go",
            "`{source}` 是副本：等待其复制延迟（{}）和安全延迟（{lag}）；还需 {behind}",
            crate::text::duration_text(*replica_lag)
        ),
        _ => exchange_protocol::tr!(
            "waiting for the safety lag ({lag}); {behind} to go",
            "等待安全延迟（{lag}）；还需 {behind}"
        ),
    }
}

/// An RFC 3339 instant as local wall-clock time, for messages.
fn local_time(rfc3339: &str) -> String {
    DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_owned())
}

/// With a daemon's push loops running: returns once the batches the sync queued were
/// acknowledged (the resource's oldest queued batch is later than the sync's last), or when
/// `stop` turns.
async fn drained_by_daemon(
    pipeline: &Pipeline,
    code: &str,
    tracked: &Tracked,
    mut pulled: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        if *pulled.borrow() {
            let last = *tracked.last_seq.lock().unwrap_or_else(|e| e.into_inner());
            let head = pipeline.queue.head(code).ok().flatten().map(|b| b.seq);
            match (last, head) {
                (None, _) => return, // the pull failed; nothing more to wait for
                (Some(_), None) => return,
                (Some(last), Some(head)) if head > last => return,
                _ => {}
            }
            if pipeline
                .queue
                .state(code)
                .map(|s| s.halt.is_some())
                .unwrap_or(false)
            {
                return;
            }
        }
        let notified = pipeline.space.notified();
        let pulling = !*pulled.borrow();
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            r = pulled.changed(), if pulling => if r.is_err() { return },
            r = stop.changed() => if r.is_err() { return },
        }
    }
}
