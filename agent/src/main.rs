//! The `exchange-agent` command.

mod help;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use exchange_agent::config::origin::ConfigPath;
use exchange_agent::config::{Config, Share, parse_duration};
use exchange_agent::logging::{self, LogFormat};
use exchange_agent::operator::{self, Operation, check};
use exchange_agent::pipeline::sync;
use exchange_agent::pipeline::{Pipeline, PipelineError};
use exchange_agent::queue::QueueError;
use exchange_agent::service::{control, daemon, status};
use exchange_protocol::tr;

/// Front-end exchange agent (前置机): pulls the configured fields of shared resources from
/// business databases and delivers them to the city's exchange hub over mutual TLS.
#[derive(Parser)]
#[command(name = "exchange-agent", version, about)]
struct Cli {
    /// Configuration file [default: $EXCHANGE_AGENT_CONFIG, else /etc/exchange-agent/agent.toml].
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Shape of the log lines on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "EXCHANGE_AGENT_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: pull on schedule, push continuously.
    Run,
    /// Deliver every row committed before the command started; exits 0 once the hub
    /// acknowledged all of it. While the service runs, the service does the sync.
    Sync {
        /// Only this resource code.
        #[arg(long)]
        resource: Option<String>,
        /// How long to wait for transactions open on a source (which hold rows back) to end
        /// (e.g. "5m").
        #[arg(long, default_value = "5m")]
        wait: String,
        /// Give up after this long in all, pushing included (e.g. "10m").
        #[arg(long, default_value = "10m")]
        timeout: String,
    },
    /// Validate the configuration (exit 2 if invalid); with --connect also reach sources and
    /// the hub (exit 3 if unreachable).
    Check {
        /// Contact every source and the hub.
        #[arg(long)]
        connect: bool,
    },
    /// Show per resource the cursor, last pull and push, queued and quarantined records.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List, export or discard queued batches.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Show, reset or set a resource's cursor.
    #[command(subcommand)]
    Cursor(CursorCommand),
    /// Read a resource again from the start on a new stream: for a hub that lost batches, a
    /// restored data directory or a changed configuration.
    Resync {
        /// Resource code.
        resource: String,
        /// Do it (without: say what it would do).
        #[arg(long)]
        yes: bool,
    },
    /// After a configuration change stopped a resource: go on from its cursor with the new
    /// configuration.
    AcceptConfig {
        /// Resource code.
        resource: String,
        /// Do it (without: say what it would do).
        #[arg(long)]
        yes: bool,
    },
    /// List or clear quarantined rows (key and reason, never values).
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Check or export the audit log (SM3-chained, `<data_dir>/audit.jsonl`).
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the chain: exit 0 if intact, 1 naming the file and line where it breaks
    /// (an entry edited, removed, reordered, or the log truncated). Files archived away
    /// (`[audit] archive_dir`, or `--archive DIR`) are read too, and every file an
    /// `audit.archived` entry names must be there; without an archive the chain is checked
    /// from the oldest file present, which an `audit.archived` entry must account for, and
    /// the output says the entries before it were not checked.
    Verify {
        /// Read archived files from this directory [default: `[audit] archive_dir`, if set].
        #[arg(long, value_name = "DIR")]
        archive: Option<PathBuf>,
    },
    /// Write the entries, as stored, as NDJSON to standard output (for archiving).
    Export {
        /// Only entries at or after this instant (RFC 3339, e.g. 2026-01-01T00:00:00+08:00).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Per resource: stream, queued batches (oldest first), stop reason, last push error.
    List {
        /// Only this resource.
        resource: Option<String>,
        /// Batches listed per resource.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Write a batch's records (NDJSON, as sent) to a file or standard output.
    Export {
        /// Resource code.
        resource: String,
        /// Batch sequence number.
        seq: u64,
        /// Output file (created 0600; never overwritten). Default: standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Give up a batch the hub refuses for good: an empty batch takes its place.
    Discard {
        /// Resource code.
        resource: String,
        /// Batch sequence number.
        seq: u64,
        /// Do it (without: say what it would do).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum CursorCommand {
    /// Where the next pull starts.
    Show {
        /// Resource code.
        resource: String,
    },
    /// Read the resource again from the start on the same stream.
    Reset {
        /// Resource code.
        resource: String,
        /// Do it (without: say what it would do).
        #[arg(long)]
        yes: bool,
    },
    /// Read the rows after the given position: one value per cursor column, the key last.
    Set {
        /// Resource code.
        resource: String,
        /// The position's values.
        #[arg(required = true)]
        values: Vec<String>,
        /// Do it (without: say what it would do).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// The most recent quarantined rows per resource.
    List {
        /// Only this resource.
        resource: Option<String>,
        /// Entries listed per resource.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// The entries of a resource's row by its raw key, computed into the key as it leaves on
    /// this machine (the raw key is never printed, logged or stored).
    Find {
        /// Resource code.
        resource: String,
        /// The row's key as it is at the source (e.g. the citizen ID).
        #[arg(long)]
        key: String,
    },
    /// Remove a resource's quarantine entries (after fixing the rows).
    Clear {
        /// Resource code.
        resource: String,
        /// Do it (without: say what it would do).
        #[arg(long)]
        yes: bool,
    },
}

/// Runs an operator command: on the queue it opens, or, while the service holds the queue,
/// through the service. Prints its text, or the error (exit 1); a change not confirmed with
/// `--yes` only says what it would do (exit 2). `out`: where `queue export` writes.
async fn operate(at: At<'_>, operation: Operation, yes: bool, out: Option<&Path>) -> ExitCode {
    let config = match loaded(at, "warn") {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(what) = operation.change()
        && !yes
    {
        eprintln!(
            "{}",
            tr!(
                "This would {what}. Run it again with --yes to do it.",
                "此命令将{what}。确认执行请加 --yes 再运行一次。"
            )
        );
        return ExitCode::from(2);
    }
    let outcome = match operator::open_queue(&config) {
        Ok(queue) => operation
            .perform(&config, &queue)
            .map_err(anyhow::Error::new),
        Err(operator::OperatorError::ServiceRunning(_)) => {
            eprintln!(
                "{}",
                tr!(
                    "The service holds the queue; it carries out `{}`.",
                    "队列由正在运行的服务持有；由服务执行 `{}`。",
                    operation.name()
                )
            );
            control::request_operation(&config.node.data_dir, operation, yes)
                .await
                .map_err(anyhow::Error::new)
        }
        Err(e) => Err(anyhow::Error::new(e)),
    };
    let text = outcome.and_then(|o| match &o.export {
        Some(export) => operator::write_export(export, out).map_err(anyhow::Error::new),
        None => Ok(o.text),
    });
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn load(file: &ConfigPath) -> Result<Config, ExitCode> {
    Config::load_from(file).map_err(|e| {
        eprintln!("{}", tr!("error: {e}", "错误：{e}"));
        ExitCode::from(2)
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: the service polls it only once its loop runs, and a
/// SIGTERM before that (`systemctl stop` right after a start) would otherwise kill the
/// process instead of stopping it.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("{}", tr!("error: {e:#}", "错误：{e:#}"));
    ExitCode::from(1)
}

/// At most two glibc malloc arenas. glibc gives each thread that allocates under contention
/// an arena of its own (up to 8 per core), and each keeps the memory freed into it: with the
/// runtime's workers and the blocking pool that is several copies of a batch's peak. Two
/// arenas cut the agent's peak RSS during a 1,000,000-row sync by about 10 MiB (bench/run.sh,
/// `agent-pg`) at no measurable cost in throughput. Called before any other thread exists.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(agent_main()),
        Err(e) => fail(anyhow::Error::new(e).context(exchange_protocol::tr!(
            "cannot start the async runtime",
            "无法启动异步运行时"
        ))),
    }
}

async fn agent_main() -> ExitCode {
    let cli: Cli = exchange_protocol::help::parse(help::ZH);
    let file = ConfigPath::from_env(cli.config.as_deref());
    let at = (&file, cli.log_format);
    match cli.command {
        Command::Run => run(at).await,
        Command::Sync {
            resource,
            wait,
            timeout,
        } => sync_command(at, resource, &wait, &timeout).await,
        Command::Check { connect } => {
            let config = match loaded(at, "error") {
                Ok(c) => c,
                Err(code) => return code,
            };
            let (verdict, text) = check::check(&config, connect).await;
            print!("{text}");
            ExitCode::from(verdict.exit_code() as u8)
        }
        Command::Status { json } => status_command(at, json),
        Command::Queue(cmd) => queue_command(at, cmd).await,
        Command::Cursor(cmd) => cursor_command(at, cmd).await,
        Command::Resync { resource, yes } => {
            operate(at, Operation::Resync { resource }, yes, None).await
        }
        Command::AcceptConfig { resource, yes } => {
            operate(at, Operation::AcceptConfig { resource }, yes, None).await
        }
        Command::Quarantine(cmd) => quarantine_command(at, cmd).await,
        Command::Audit(cmd) => audit_command(at, cmd),
    }
}

/// Where a command reads its configuration, and how it logs.
type At<'a> = (&'a ConfigPath, LogFormat);

/// Starts logging at `level` (unless `RUST_LOG` says otherwise) and loads the configuration;
/// an invalid one is printed and exits 2.
fn loaded((file, log): At<'_>, level: &str) -> Result<Config, ExitCode> {
    logging::init(log, level);
    load(file)
}

/// `run`: the daemon, until SIGTERM or SIGINT.
async fn run(at: At<'_>) -> ExitCode {
    let shutdown = shutdown_signal();
    let config = match loaded(at, "info") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let file = config.file.clone();
    let admin = match config.admin {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                return fail(anyhow::anyhow!(exchange_protocol::tr!(
                    "cannot listen on {addr} (admin.listen in {}): {}",
                    "无法监听 {addr}（{} 中的 admin.listen）：{}",
                    file.display(),
                    exchange_protocol::translate::io(&e)
                )));
            }
        },
        None => None,
    };
    exchange_agent::metrics::mark_start();
    let pipeline = match Pipeline::build(config).context(exchange_protocol::tr!(
        "cannot start the agent",
        "无法启动前置机"
    )) {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(e),
    };
    let options = daemon::Options {
        config_file: Some(file),
        notifier: Some(exchange_agent::sd_notify::Notifier::from_env()),
        admin,
    };
    match daemon::serve(pipeline, options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(anyhow::Error::new(e).context(exchange_protocol::tr!(
            "cannot start the agent",
            "无法启动前置机"
        ))),
    }
}

/// `sync`: delivers what was committed before it started, itself or through the running
/// service; exit 0 once the hub acknowledged it all.
async fn sync_command(at: At<'_>, resource: Option<String>, wait: &str, timeout: &str) -> ExitCode {
    let config = match loaded(at, "warn") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut options = sync::SyncOptions::default();
    for (flag, text, slot) in [
        ("--wait", wait, &mut options.wait),
        ("--timeout", timeout, &mut options.deadline),
    ] {
        match parse_duration(text) {
            Ok(d) => *slot = d,
            Err(e) => {
                eprintln!("{}", tr!("error: {flag}: {e}", "错误：{flag}：{e}"));
                return ExitCode::from(2);
            }
        }
    }
    if let Some(why) = resource
        .as_deref()
        .and_then(|code| undeliverable(&config, code))
    {
        eprintln!("{}", tr!("error: {why}", "错误：{why}"));
        return ExitCode::from(2);
    }
    let data_dir = config.node.data_dir.clone();
    let say = |line: exchange_protocol::lang::Text| eprintln!("{line}");
    let report = match Pipeline::build(config) {
        Ok(p) => {
            let (only, own) = (resource.as_deref(), sync::Pushers::Own);
            sync::sync(Arc::new(p), only, options, own, Arc::new(say)).await
        }
        Err(PipelineError::Queue(QueueError::Locked { .. })) => {
            eprintln!(
                "{}",
                tr!(
                    "The service holds the queue; asking it to sync.",
                    "队列由正在运行的服务持有；请服务执行同步。"
                )
            );
            match control::request_sync(&data_dir, resource, options, say).await {
                Ok(r) => r,
                Err(e) => return fail(e.into()),
            }
        }
        Err(e) => {
            return fail(anyhow::Error::new(e).context(exchange_protocol::tr!(
                "cannot start the sync",
                "无法开始同步"
            )));
        }
    };
    print!("{report}");
    if report.is_complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Why `sync --resource code` cannot deliver that resource, if it cannot.
fn undeliverable(config: &Config, code: &str) -> Option<String> {
    match config.resource(code).map(|r| r.share) {
        None => {
            let file = config.file.display();
            Some(tr!(
                "no resource `{code}` in {file}",
                "{file} 中没有资源 `{code}`"
            ))
        }
        Some(Share::None) => Some(tr!(
            "resource `{code}` is share = \"none\" (不予共享): it is never delivered, only its catalogue entry is reported",
            "资源 `{code}` 的共享类型为 share = \"none\"（不予共享）：从不交付，只上报其目录条目"
        )),
        Some(Share::Conditional { deliver: false }) => Some(tr!(
            "resource `{code}` is conditional without `deliver = true`: it is answered by comparison only and never delivered; set `deliver = true` to deliver it desensitized",
            "资源 `{code}` 为有条件共享且未设置 `deliver = true`：只以比对方式应答，从不交付；如需脱敏后交付，请设置 `deliver = true`"
        )),
        Some(_) => None,
    }
}

/// `status`: the report, as text or JSON.
fn status_command(at: At<'_>, json: bool) -> ExitCode {
    let config = match loaded(at, "warn") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match status::read(&config) {
        Ok(r) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&r).expect("report serializes")
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            print!("{r}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `queue list|export|discard`.
async fn queue_command(at: At<'_>, cmd: QueueCommand) -> ExitCode {
    match cmd {
        QueueCommand::List { resource, limit } => {
            operate(at, Operation::QueueList { resource, limit }, false, None).await
        }
        QueueCommand::Export { resource, seq, out } => {
            let to = operator::export_target(out.as_deref());
            let export = Operation::QueueExport { resource, seq, to };
            operate(at, export, false, out.as_deref()).await
        }
        QueueCommand::Discard { resource, seq, yes } => {
            operate(at, Operation::QueueDiscard { resource, seq }, yes, None).await
        }
    }
}

/// `cursor show|reset|set`.
async fn cursor_command(at: At<'_>, cmd: CursorCommand) -> ExitCode {
    let (operation, yes) = match cmd {
        CursorCommand::Show { resource } => (Operation::CursorShow { resource }, false),
        CursorCommand::Reset { resource, yes } => (Operation::CursorReset { resource }, yes),
        CursorCommand::Set {
            resource,
            values,
            yes,
        } => (Operation::CursorSet { resource, values }, yes),
    };
    operate(at, operation, yes, None).await
}

/// `quarantine list|find|clear`.
async fn quarantine_command(at: At<'_>, cmd: QuarantineCommand) -> ExitCode {
    let (operation, yes) = match cmd {
        QuarantineCommand::List { resource, limit } => {
            (Operation::QuarantineList { resource, limit }, false)
        }
        QuarantineCommand::Find { resource, key } => {
            // The raw key is turned into the key as it leaves here: only that crosses the
            // control socket to a running service.
            let config = match loaded(at, "warn") {
                Ok(c) => c,
                Err(code) => return code,
            };
            match operator::key_as_it_leaves(&config, &resource, &key) {
                Ok(Ok(key)) => (Operation::QuarantineFind { resource, key }, false),
                Ok(Err(no_form)) => {
                    print!("{no_form}");
                    return ExitCode::SUCCESS;
                }
                Err(e) => return fail(e.into()),
            }
        }
        QuarantineCommand::Clear { resource, yes } => {
            (Operation::QuarantineClear { resource }, yes)
        }
    };
    operate(at, operation, yes, None).await
}

/// `audit verify|export`.
fn audit_command(at: At<'_>, cmd: AuditCommand) -> ExitCode {
    let config = match loaded(at, "warn") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        AuditCommand::Verify { archive } => audit_verify(&config, archive.as_deref()),
        AuditCommand::Export { since } => audit_export(&config, since.as_deref()),
    }
}

/// `audit verify`: exit 0 with what was checked, 1 naming where the chain breaks.
fn audit_verify(config: &Config, archive: Option<&std::path::Path>) -> ExitCode {
    use exchange_agent::audit;
    let data_dir = &config.node.data_dir;
    let archive = archive.or(match &config.audit.archive {
        Some(audit::Archive {
            to: audit::ArchiveTo::Dir(dir),
            ..
        }) => Some(dir.as_path()),
        _ => None,
    });
    let v = match audit::verify_with(data_dir, archive) {
        Ok(v) => v,
        Err(b) => {
            eprintln!(
                "{}",
                tr!("The audit log is NOT intact: {b}", "审计日志不完整：{b}")
            );
            return ExitCode::from(1);
        }
    };
    let log = audit::path(data_dir);
    match &v.archived {
        None => {
            let (n, log) = (v.entries, log.display());
            println!(
                "{}",
                tr!(
                    "The audit log is intact: {n} entries ({log}).",
                    "审计日志完整：共 {n} 条（{log}）。"
                )
            )
        }
        Some(a) => {
            let first = v.entries - v.checked + 1;
            let (checked, entries, log) = (v.checked, v.entries, log.display());
            let (to, at, recorded, line) = (&a.to, &a.at, a.recorded_in.display(), a.line);
            let missing = match a.entries {
                None => tr!(
                    "; the files before the archived ones were already missing, unrecorded, when they were archived",
                    "；归档时，已归档文件之前的文件已经缺失且未被记录"
                ),
                Some(_) => String::new(),
            };
            println!(
                "{}",
                tr!(
                    "The audit log is intact from entry {first} on: {checked} of {entries} entries checked ({log}). Entries before {first} were NOT checked: they were archived to {to} ({at}; recorded at {recorded}:{line}){missing}. To check them, restore the archived files into a directory and run `exchange-agent audit verify --archive DIR`.",
                    "审计日志自第 {first} 条起完整：已检查 {entries} 条中的 {checked} 条（{log}）。第 {first} 条之前的条目未检查：它们已归档到 {to}（{at}；记录于 {recorded}:{line}）{missing}。如需检查，请把归档文件恢复到一个目录，然后运行 `exchange-agent audit verify --archive DIR`。"
                )
            );
        }
    }
    if v.from_archive > 0 {
        let n = v.from_archive;
        println!(
            "{}",
            tr!(
                "  {n} older files read from the archive.",
                "  从归档中读取了 {n} 个较早的文件。"
            )
        );
    }
    for r in audit::repairs(data_dir).unwrap_or_default() {
        let (at, what) = (
            &r.at,
            audit::repair_text(r.detail["what"].as_str().unwrap_or("-")),
        );
        println!(
            "{}",
            tr!("  repaired at {at}: {what}", "  于 {at} 修复：{what}")
        );
    }
    ExitCode::SUCCESS
}

/// `audit export`: the entries as stored, as NDJSON on standard output.
fn audit_export(config: &Config, since: Option<&str>) -> ExitCode {
    let since = match since.map(chrono::DateTime::parse_from_rfc3339) {
        None => None,
        Some(Ok(t)) => Some(t.with_timezone(&chrono::Utc)),
        Some(Err(e)) => {
            eprintln!(
                "{}",
                tr!(
                    "error: --since: {e}; expected RFC 3339, e.g. 2026-01-01T00:00:00+08:00",
                    "错误：--since：{e}；应为 RFC 3339 时间，例如 2026-01-01T00:00:00+08:00"
                )
            );
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match exchange_agent::audit::export(&config.node.data_dir, since, &mut out)
        .and_then(|_| std::io::Write::flush(&mut out))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(anyhow::Error::new(e).context(exchange_protocol::tr!(
            "cannot export the audit log",
            "无法导出审计日志"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_help_text_has_its_chinese() {
        exchange_protocol::help::assert_translated::<super::Cli>(super::help::ZH);
    }
}
