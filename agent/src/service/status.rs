//! What `exchange-agent status` shows: per resource the cursor, last pull and push, queued
//! records and bytes, quarantined rows, the last error, and (from the running service) how the
//! last page was bounded and how long the last incremental statement took on the source.
//!
//! A running daemon holds the queue open, so it also writes the same report to
//! `<data_dir>/status.json` every few seconds (atomically, by rename); `status` reads the
//! queue directly when it can and that file when the daemon holds the queue.
//!
//! # Whether the service runs
//! The queue is locked (`flock`) by the process that has it open, and the lock goes with the
//! process, however it ends. So: the queue opens → nothing holds it → the service is not
//! running. It is locked and the status file was written within [`FRESH`] → the service runs
//! (it writes the file every 2 s). It is locked and the file is older → another
//! `exchange-agent` process holds the queue (a command such as `sync`), or the service is
//! stuck: not running as far as anyone can tell.
//!
//! With `[verify]`, `status` adds the verification service ([`verification`]): listener,
//! certificates, grants and budgets, lockouts in force.

use std::path::{Path, PathBuf};
use std::time::Duration;

use exchange_protocol::lang::Text;
use exchange_protocol::tr;
use serde::{Deserialize, Serialize};

pub mod verification;

use crate::config::{Config, Mode, Share};
use crate::pipeline::board::{Board, Runtime};
use crate::pipeline::queue::{Queue, QueueError};

/// The whole status report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Node id.
    pub node: String,
    /// Queue stream id.
    pub stream: String,
    /// Queue file.
    pub queue: PathBuf,
    /// When the report was made (RFC 3339).
    pub at: String,
    /// Whether it came from a running daemon's status file.
    pub from_daemon: bool,
    /// The last reload, if it was refused: the configuration running is not the file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_failed: Option<crate::service::reload::Failure>,
    /// Per resource.
    pub resources: Vec<ResourceStatus>,
    /// Whether the service runs, as `status` found it (set by [`read`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<Daemon>,
    /// The verification service, with `[verify]` (set by [`read`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<verification::Verification>,
}

/// Whether the service runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Daemon {
    /// Whether it runs.
    pub running: bool,
    /// How that was found, for people.
    pub detail: String,
}

/// A status file written within this long is a running service's (it writes every 2 s).
pub const FRESH: Duration = Duration::from_secs(15);

/// Status of one resource.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Resource code.
    pub code: String,
    /// Catalogue name (for a resource no longer configured, a note saying so, in both
    /// languages).
    pub name: Text,
    /// Share class.
    pub share: String,
    /// Read mode.
    pub mode: String,
    /// Where reading stands, for people: the date and timestamp values of the incremental
    /// cursor (other cursor values, such as the key tiebreaker, are never shown: they may be
    /// identifiers), or the snapshot generation; in both languages (the service writes it,
    /// an operator's `status` reads it).
    pub cursor: Option<Text>,
    /// Why the resource is stopped until an operator acts, and what to run; in both
    /// languages.
    #[serde(default)]
    pub stopped: Option<Text>,
    /// Last successful pull.
    pub last_pull: Option<String>,
    /// Last acknowledgement by the hub.
    pub last_push: Option<String>,
    /// Batches queued.
    pub queued_batches: u64,
    /// Records queued.
    pub queued_records: u64,
    /// Bytes queued (stored, compressed).
    pub queued_bytes: u64,
    /// Rows quarantined since the queue was created.
    pub quarantined: u64,
    /// Rows whose key is not a valid identifier of its kind (quarantined, or delivered
    /// flagged): the data-quality figure. Snapshot: the rows of the last complete scan;
    /// incremental: the rows read since `invalid_keys_since` (a row again each time it
    /// changes).
    #[serde(default)]
    pub invalid_keys: u64,
    /// Snapshot: when the scan counted ended; incremental: since when rows are counted.
    #[serde(default)]
    pub invalid_keys_since: Option<String>,
    /// Records pulled since the queue was created.
    pub pulled_records: u64,
    /// Records acknowledged since the queue was created.
    pub pushed_records: u64,
    /// The most recent quarantined rows (key and reason, never values).
    #[serde(default)]
    pub recent_quarantine: Vec<crate::pipeline::queue::QuarantineEntry>,
    /// How long the statement of the last incremental pull took on the source (daemon only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_query: Option<crate::pipeline::board::QueryTime>,
    /// Runtime facts (daemon only).
    #[serde(flatten)]
    pub runtime: Runtime,
}

impl ResourceStatus {
    /// The queue's counters of a resource; descriptive fields empty.
    fn counters(code: &str, st: &crate::pipeline::queue::ResourceState) -> ResourceStatus {
        ResourceStatus {
            code: code.to_owned(),
            name: Text::One(String::new()),
            share: "-".into(),
            mode: "-".into(),
            cursor: None,
            stopped: st.halt.as_ref().map(|h| {
                Text::render(|| tr!("since {}: {}", "自 {} 起：{}", h.at, h.reason.get()))
            }),
            last_pull: st.last_pull.clone(),
            last_push: st.last_push.clone(),
            queued_batches: st.queued_batches,
            queued_records: st.queued_records,
            queued_bytes: st.queued_bytes,
            quarantined: st.quarantined,
            invalid_keys: st.invalid_keys,
            invalid_keys_since: st.invalid_keys_since.clone(),
            pulled_records: st.pulled_records,
            pushed_records: st.pushed_records,
            recent_quarantine: Vec::new(),
            source_query: None,
            runtime: Runtime {
                pull_error: st.pull_error.as_ref().map(noted),
                push_error: st.push_error.as_ref().map(noted),
                horizon: None,
                held: None,
                source_query: None,
            },
        }
    }
}

/// An error kept in the queue, with when it happened, in both languages.
fn noted(n: &crate::pipeline::queue::Note) -> Text {
    Text::render(|| tr!("{} (at {})", "{}（{}）", n.message.get(), n.at))
}

impl ResourceStatus {
    /// Adds what the running process knows; errors kept in the queue stay when it knows none.
    fn with_runtime(mut self, rt: Runtime) -> ResourceStatus {
        self.runtime.horizon = rt.horizon;
        self.source_query = rt.source_query;
        if rt.pull_error.is_some() {
            self.runtime.pull_error = rt.pull_error;
        }
        if rt.push_error.is_some() {
            self.runtime.push_error = rt.push_error;
        }
        self
    }
}

/// Where a file drop resource stands: the file it reads, or the last one it read.
fn file_text(p: &crate::pipeline::queue::FileProgress) -> String {
    let (name, rows, records, quarantined) = (&p.name, p.rows, p.records, p.quarantined);
    match &p.done_as {
        Some(done) => exchange_protocol::tr!(
            "last file {name}: {rows} rows, {records} records, {quarantined} quarantined; in done/ as {done}",
            "最近的文件 {name}：{rows} 行，{records} 条记录，隔离 {quarantined} 行；已移到 done/{done}"
        ),
        None => exchange_protocol::tr!(
            "reading {name}: {rows} rows so far",
            "正在读取 {name}：已读 {rows} 行"
        ),
    }
}

/// The cursor for people: date and timestamp values only (the key tiebreaker and other
/// values may be identifiers and are never shown; `exchange-agent cursor show` prints them).
fn cursor_text(resource: &crate::config::Resource, cursor: &[exchange_connectors::Value]) -> Text {
    let names = crate::policy::Plan::new(resource, &crate::policy::Keys::default())
        .selection
        .cursor;
    let mut shown = Vec::new();
    let mut hidden = 0;
    for (name, v) in names.iter().zip(cursor) {
        match shows_time(v).then(|| v.to_text()).flatten() {
            Some(text) => shown.push(format!("{name} = {text}")),
            None => hidden += 1,
        }
    }
    let shown = shown.join(", ");
    Text::render(|| match (shown.is_empty(), hidden) {
        (true, _) => tr!(
            "after a stored position (its values are not shown: `exchange-agent cursor show`)",
            "位于已存储的位置之后（其值不显示：`exchange-agent cursor show`）"
        ),
        (false, 0) => shown.clone(),
        (false, n) => tr!(
            "{shown} (+{n} more not shown)",
            "{shown}（另有 {n} 个未显示）"
        ),
    })
}

/// Whether a cursor value is a date or a time (SQLite stores them as text), which may be
/// shown; anything else may be an identifier.
fn shows_time(v: &exchange_connectors::Value) -> bool {
    match v {
        exchange_connectors::Value::Text(t) => {
            t.get(..10)
                .is_some_and(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok())
                && t[10..]
                    .chars()
                    .all(|c| c.is_ascii_digit() || " :.T+-Z".contains(c))
        }
        other => other.is_temporal(),
    }
}

/// The share class of a conditional resource that is not delivered, as `status` reports it.
const COMPARISON_ONLY: &str = "conditional (comparison only)";

/// How many quarantined rows `status` lists per resource.
const RECENT_QUARANTINE: usize = 5;

/// The one-line summary systemd shows (`STATUS=`): resources, queued records, last push, and
/// the resources stopped until an operator acts.
pub fn summary(pipeline: &crate::pipeline::Pipeline) -> String {
    let Ok(states) = pipeline.queue.states() else {
        return tr!("Cannot read the queue.", "无法读取队列。");
    };
    let queued: u64 = states.values().map(|s| s.queued_records).sum();
    let never = tr!("never", "从未");
    let last = states
        .values()
        .filter_map(|s| s.last_push.as_deref())
        .max()
        .unwrap_or(&never);
    let halted = states.values().filter(|s| s.halt.is_some()).count();
    let resources = pipeline.pullers.len();
    let mut line = tr!(
        "{resources} resources, {queued} records queued, last push {last}",
        "{resources} 个资源，{queued} 条记录排队，最近推送 {last}"
    );
    if halted > 0 {
        line.push_str(&tr!(
            ", {halted} stopped (see `exchange-agent status`)",
            "，{halted} 个已停止（见 `exchange-agent status`）"
        ));
    }
    if crate::service::reload::last_failure().is_some() {
        line.push_str(&tr!(
            ", last reload refused: the previous configuration runs (see `exchange-agent status`)",
            "，最近一次重新加载被拒绝：原配置继续运行（见 `exchange-agent status`）"
        ));
    }
    line
}

/// Builds the report from an open queue.
pub fn report(config: &Config, queue: &Queue, board: &Board) -> Result<Report, QueueError> {
    let states = queue.states()?;
    let mut resources: Vec<ResourceStatus> = config
        .resources
        .iter()
        .map(|r| {
            let st = states.get(&r.code).cloned().unwrap_or_default();
            let recent_quarantine = queue
                .quarantined(&r.code, RECENT_QUARANTINE)
                .unwrap_or_default();
            let cursor = match &r.mode {
                _ if r.files.is_some() => st.file.as_ref().map(|p| Text::render(|| file_text(p))),
                Mode::Incremental { .. } => st.cursor.as_ref().map(|c| cursor_text(r, c)),
                Mode::Snapshot => (st.snapshot.generation > 0).then(|| {
                    let generation = st.snapshot.generation;
                    Text::render(|| {
                        tr!("snapshot generation {generation}", "快照第 {generation} 代")
                    })
                }),
            };
            ResourceStatus {
                name: r.name.clone().into(),
                share: match r.share {
                    Share::Conditional { deliver: false } => COMPARISON_ONLY,
                    s => s.as_str(),
                }
                .into(),
                mode: match (&r.files, &r.mode) {
                    (Some(f), _) if f.each_file == crate::config::EachFile::Upsert => "upsert",
                    (_, Mode::Incremental { .. }) => "incremental",
                    (_, Mode::Snapshot) => "snapshot",
                }
                .into(),
                cursor,
                recent_quarantine,
                ..ResourceStatus::counters(&r.code, &st).with_runtime(board.get(&r.code))
            }
        })
        .collect();
    // Batches of resources no longer configured (or no longer shared) stay queued and are
    // not pushed; they must not be invisible.
    for (code, st) in &states {
        if config.resource(code).is_none() && (st.queued_batches > 0 || st.quarantined > 0) {
            resources.push(ResourceStatus {
                name: Text::render(|| tr!("(not in the configuration)", "（不在配置中）")),
                runtime: Runtime {
                    pull_error: Some(Text::render(|| tr!(
                        "this resource is no longer configured; its queued batches are kept but not pushed",
                        "此资源已不在配置中；其排队的批次保留但不推送"
                    ))),
                    ..Runtime::default()
                },
                ..ResourceStatus::counters(code, st)
            });
        }
    }
    Ok(Report {
        node: config.node.id.clone(),
        stream: queue.stream().to_owned(),
        queue: queue.path().to_owned(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        from_daemon: false,
        reload_failed: crate::service::reload::last_failure(),
        resources,
        daemon: None,
        verification: None,
    })
}

/// The daemon's status file.
pub fn status_file(data_dir: &Path) -> PathBuf {
    data_dir.join("status.json")
}

/// Writes the report atomically.
pub fn write_file(data_dir: &Path, report: &Report) -> std::io::Result<()> {
    let mut r = report.clone();
    r.from_daemon = true;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = data_dir.join("status.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(&r).expect("report serializes"))?;
    std::fs::rename(tmp, status_file(data_dir))
}

/// Reads the status: from the queue, or from the daemon's status file when it holds the
/// queue; says whether the service runs, adds the verification service (`[verify]`), and
/// completes the commands the report suggests (`--yes`, and `-c FILE` when the configuration
/// is not the default file). `exchange-agent status` prints this (`--json`: serialized).
pub fn read(config: &Config) -> anyhow::Result<Report> {
    let mut report = match Queue::open_existing(&config.node.data_dir) {
        Ok(Some(queue)) => {
            let mut r = report(config, &queue, &Board::default())?;
            r.daemon = Some(Daemon {
                running: false,
                detail: tr!(
                    "not running: nothing is pulled, pushed or verified until it starts (systemctl start exchange-agent); shown is what the queue holds",
                    "未运行：启动前不拉取、不推送、不核验（systemctl start exchange-agent）；以下为队列中的记录"
                ),
            });
            r
        }
        Ok(None) => {
            let dir = config.node.data_dir.display();
            anyhow::bail!(tr!(
                "no queue in {dir} yet: the agent has not run with this configuration (the service is not running)",
                "{dir} 中还没有队列：代理尚未以此配置运行过（服务未运行）"
            ))
        }
        Err(QueueError::Locked { .. }) => from_status_file(&config.node.data_dir)?,
        Err(e) => return Err(e.into()),
    };
    let running = report.daemon.as_ref().is_some_and(|d| d.running);
    report.verification = verification::status(config, running);
    complete_commands(&mut report, config);
    Ok(report)
}

/// The report the service wrote, while something holds the queue: the service when the file
/// is fresh ([`FRESH`]), something else (or a stuck service) when it is not.
fn from_status_file(data_dir: &Path) -> anyhow::Result<Report> {
    let path = status_file(data_dir);
    let file = path.display();
    let text = std::fs::read(&path).map_err(|e| {
        anyhow::anyhow!(tr!(
            "the queue is held by another exchange-agent process and the service's status file {file} cannot be read ({e}): the service is not running, or has not written it yet",
            "队列被另一个 exchange-agent 进程占用，且无法读取服务的状态文件 {file}（{e}）：服务未运行，或尚未写入该文件"
        ))
    })?;
    let mut report: Report = serde_json::from_slice(&text)?;
    let age = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or(Duration::MAX);
    let secs = age.as_secs();
    report.daemon = Some(if age <= FRESH {
        Daemon {
            running: true,
            detail: tr!(
                "running (its status file was written {secs} s ago)",
                "运行中（状态文件 {secs} 秒前写入）"
            ),
        }
    } else {
        Daemon {
            running: false,
            detail: tr!(
                "not running: the queue is held by another exchange-agent process (a command such as `exchange-agent sync`), and the service's status file was last written {secs} s ago (the service writes it every 2 s; if it runs, it is stuck); shown is that file",
                "未运行：队列被另一个 exchange-agent 进程占用（例如 `exchange-agent sync`），服务的状态文件最后写入于 {secs} 秒前（服务每 2 秒写入一次；若服务在运行，则已卡住）；以下为该文件的内容"
            ),
        }
    });
    Ok(report)
}

/// Commands the service or the queue suggest that change state, which need `--yes`.
const CHANGING: [&str; 6] = [
    "resync",
    "accept-config",
    "cursor reset",
    "cursor set",
    "queue discard",
    "quarantine clear",
];

/// Completes every command quoted in `text` (`` `exchange-agent …` ``): `-c FILE` when
/// `config` is not the default file, and `--yes` for a command that changes state (a stop
/// reason stored by an older version may lack it).
pub fn complete_command_text(text: &str, config: Option<&Path>) -> String {
    const START: &str = "`exchange-agent ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(START) {
        out.push_str(&rest[..i + START.len()]);
        rest = &rest[i + START.len()..];
        let end = rest.find('`').unwrap_or(rest.len());
        let command = &rest[..end];
        out.push_str(command);
        if CHANGING.iter().any(|c| command.starts_with(c)) && !command.contains("--yes") {
            out.push_str(" --yes");
        }
        // Last, where it reads as an addition (`-c` is accepted after the subcommand too).
        if let Some(file) = config
            && !command.contains("--config")
            && !command.contains("-c ")
        {
            out.push_str(&format!(" -c {}", shell_word(&file.display().to_string())));
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A word as a shell reads it back: quoted when it holds anything but plain characters.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@%,".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// [`complete_command_text`] over every text of the report, each kept in the reader's
/// language only (so `--json` holds strings, as it did before texts were kept in both).
fn complete_commands(report: &mut Report, config: &Config) {
    let file =
        (config.file != Path::new(crate::config::origin::DEFAULT)).then_some(config.file.as_path());
    if let Some(r) = report.reload_failed.as_mut() {
        r.reason = Text::One(complete_command_text(r.reason.get(), file));
    }
    for r in &mut report.resources {
        r.name = Text::One(r.name.get().to_owned());
        for t in [
            r.stopped.as_mut(),
            r.cursor.as_mut(),
            r.runtime.horizon.as_mut(),
            r.runtime.pull_error.as_mut(),
            r.runtime.push_error.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            *t = Text::One(complete_command_text(t.get(), file));
        }
        for q in &mut r.recent_quarantine {
            q.reason = Text::One(q.reason.get().to_owned());
        }
    }
}

/// Seconds for people: to the millisecond under a minute (`0.012s`), else as
/// [`crate::text::duration_text`] writes durations.
fn seconds_text(seconds: f64) -> String {
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if seconds >= 60.0 => crate::text::duration_text(d),
        _ => format!("{seconds:.3}s"),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (node, queue, stream) = (&self.node, self.queue.display(), &self.stream);
        let daemon = if self.from_daemon {
            tr!("  [from the running daemon]", "  [来自运行中的服务]")
        } else {
            String::new()
        };
        writeln!(
            f,
            "{}",
            tr!(
                "node {node}  queue {queue} (stream {stream}){daemon}",
                "节点 {node}  队列 {queue}（数据流 {stream}）{daemon}"
            )
        )?;
        if let Some(d) = &self.daemon {
            writeln!(
                f,
                "{}",
                tr!("service       {}", "服务          {}", d.detail)
            )?;
        }
        if let Some(r) = &self.reload_failed {
            let (at, reason) = (&r.at, &r.reason);
            writeln!(
                f,
                "{}",
                tr!(
                    "CONFIGURATION NOT RELOADED (配置未重新加载) at {at}: {reason}\n  The previous configuration keeps running, its grants and certificates included; fix the file and reload again (systemctl reload exchange-agent).",
                    "配置未重新加载 (CONFIGURATION NOT RELOADED)，时间 {at}：{reason}\n  原配置（含授权和证书）继续运行；请修正配置文件后再次重新加载（systemctl reload exchange-agent）。"
                )
            )?;
        }
        for r in &self.resources {
            writeln!(f)?;
            write!(f, "{r}")?;
        }
        if let Some(v) = &self.verification {
            writeln!(f)?;
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// One resource's block of `status`.
impl std::fmt::Display for ResourceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, name, mode) = (&self.code, &self.name, &self.mode);
        let share = match self.share.as_str() {
            COMPARISON_ONLY => tr!("{COMPARISON_ONLY}", "conditional（仅比对）"),
            s => s.to_owned(),
        };
        writeln!(f, "{code}  {name}  [{share} / {mode}]")?;
        if let Some(stopped) = &self.stopped {
            writeln!(
                f,
                "{}",
                tr!("  STOPPED      {stopped}", "  已停止       {stopped}")
            )?;
        }
        let cursor = match &self.cursor {
            Some(c) => c.get().to_owned(),
            None => tr!("(start)", "（起点）"),
        };
        writeln!(
            f,
            "{}",
            tr!("  cursor       {cursor}", "  游标         {cursor}")
        )?;
        let never = tr!("never", "从未");
        let pull = self.last_pull.as_deref().unwrap_or(&never);
        writeln!(
            f,
            "{}",
            tr!("  last pull    {pull}", "  最近抽取     {pull}")
        )?;
        let push = self.last_push.as_deref().unwrap_or(&never);
        writeln!(
            f,
            "{}",
            tr!("  last push    {push}", "  最近推送     {push}")
        )?;
        let (records, batches, bytes) = (
            self.queued_records,
            self.queued_batches,
            size(self.queued_bytes),
        );
        writeln!(
            f,
            "{}",
            tr!(
                "  queued       {records} records in {batches} batches, {bytes}",
                "  排队         {records} 条记录，{batches} 个批次，{bytes}"
            )
        )?;
        let (pushed, pulled) = (self.pushed_records, self.pulled_records);
        writeln!(
            f,
            "{}",
            tr!(
                "  delivered    {pushed} of {pulled} pulled records",
                "  已交付       {pushed} 条（共抽取 {pulled} 条）"
            )
        )?;
        let quarantined = self.quarantined;
        writeln!(
            f,
            "{}",
            tr!(
                "  quarantined  {quarantined} rows",
                "  已隔离       {quarantined} 行"
            )
        )?;
        self.fmt_details(f)
    }
}

impl ResourceStatus {
    /// The lines shown only when there is something to say: invalid keys, recent quarantine
    /// entries, the horizon, errors.
    fn fmt_details(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.invalid_keys > 0 {
            let (n, since) = (
                self.invalid_keys,
                self.invalid_keys_since.as_deref().unwrap_or("?"),
            );
            let when = if self.mode == "snapshot" {
                tr!(
                    "in the last complete scan (ended {since})",
                    "见于最近一次完整扫描（结束于 {since}）"
                )
            } else {
                tr!(
                    "read since {since} (a row again each time it changes)",
                    "自 {since} 起读取（行每次变更都重新计数）"
                )
            };
            writeln!(
                f,
                "{}",
                tr!(
                    "  invalid keys {n} rows with a key that is not a valid identifier, {when}",
                    "  无效键       {n} 行的键不是有效标识，{when}"
                )
            )?;
        }
        for q in &self.recent_quarantine {
            let unknown = tr!("(unknown)", "（未知）");
            let (at, key, reason) = (&q.at, q.key.as_deref().unwrap_or(&unknown), &q.reason);
            writeln!(
                f,
                "{}",
                tr!(
                    "    {at}  key {key}: {reason}",
                    "    {at}  键 {key}：{reason}"
                )
            )?;
        }
        if let Some(h) = &self.runtime.horizon {
            writeln!(f, "{}", tr!("  horizon      {h}", "  读取上界     {h}"))?;
        }
        if let Some(q) = &self.source_query {
            let (first, total, rows) = (
                seconds_text(q.first_row_seconds),
                seconds_text(q.total_seconds),
                q.rows,
            );
            writeln!(
                f,
                "{}",
                tr!(
                    "  query        first row after {first}, whole statement {total} ({rows} rows; last pull)",
                    "  源查询耗时   首行 {first}，整条语句 {total}（{rows} 行；最近一次抽取）"
                )
            )?;
        }
        // A stopped resource's pulls and pushes fail with its stop reason, shown above once
        // (the error may be kept in the reader's language only: `complete_commands`).
        let echo = |t: &str| t.contains("` is stopped: ") || t.contains("` 已停止：");
        let own = |e: &&Text| !(self.stopped.is_some() && (echo(e.en()) || echo(e.get())));
        if let Some(e) = self.runtime.pull_error.as_ref().filter(own) {
            writeln!(f, "{}", tr!("  pull error   {e}", "  抽取错误     {e}"))?;
        }
        if let Some(e) = self.runtime.push_error.as_ref().filter(own) {
            writeln!(f, "{}", tr!("  push error   {e}", "  推送错误     {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggested_commands_are_completed_with_yes_and_the_configuration_file() {
        let reason = "changed. Run `exchange-agent resync R1` or `exchange-agent accept-config R1 --yes`; see `exchange-agent cursor show R1`.";
        assert_eq!(
            complete_command_text(reason, None),
            "changed. Run `exchange-agent resync R1 --yes` or `exchange-agent accept-config R1 --yes`; see `exchange-agent cursor show R1`."
        );
        assert_eq!(
            complete_command_text(reason, Some(Path::new("/srv/my agent.toml"))),
            "changed. Run `exchange-agent resync R1 --yes -c '/srv/my agent.toml'` or `exchange-agent accept-config R1 --yes -c '/srv/my agent.toml'`; see `exchange-agent cursor show R1 -c '/srv/my agent.toml'`."
        );
        assert_eq!(complete_command_text("no command", None), "no command");
    }

    #[test]
    fn a_stop_reason_is_printed_once_not_again_as_the_pull_and_push_errors() {
        let reason = "the configuration of `R1` changed since its stream started (a field was added); run `exchange-agent resync R1 --yes`";
        let st = crate::pipeline::queue::ResourceState {
            halt: Some(crate::pipeline::queue::Halt {
                kind: crate::pipeline::queue::HaltKind::ConfigChanged,
                reason: reason.into(),
                at: "2025-01-01T00:00:00Z".into(),
            }),
            ..Default::default()
        };
        let mut r = ResourceStatus::counters("R1", &st);
        r.runtime.pull_error =
            Some(format!("`R1` is stopped: {reason} (at 2025-01-01T00:00:01Z)").into());
        r.runtime.push_error = Some(format!("`R1` is stopped: {reason}").into());
        let text = r.to_string();
        assert_eq!(text.matches(reason).count(), 1, "{text}");
        // Also when `status` kept the error in Chinese only, for a reader of Chinese.
        r.runtime.pull_error = Some(format!("`R1` 已停止：{reason}").into());
        let text = r.to_string();
        assert_eq!(text.matches(reason).count(), 1, "{text}");
        // An error of its own is still shown.
        r.runtime.push_error = Some("hub https://hub:8443 unreachable".into());
        assert!(
            r.to_string()
                .contains("push error   hub https://hub:8443 unreachable")
        );
    }

    #[test]
    fn the_last_statements_time_is_shown_to_the_millisecond_under_a_minute() {
        let mut r = ResourceStatus::counters("R1", &Default::default());
        assert!(!r.to_string().contains("first row"), "{r}");
        r.source_query = Some(crate::pipeline::board::QueryTime {
            first_row_seconds: 0.0123,
            total_seconds: 90.4,
            rows: 1500,
        });
        assert!(
            r.to_string().contains(
                "query        first row after 0.012s, whole statement 1m 30s (1500 rows; last pull)"
            ),
            "{r}"
        );
        // It survives the status file (which `status` reads while the service runs).
        let back: ResourceStatus =
            serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back.source_query, r.source_query);
    }
}
