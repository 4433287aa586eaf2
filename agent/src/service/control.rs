//! The daemon's control socket: how commands reach a running daemon, which holds the queue.
//!
//! # Protocol
//! A Unix stream socket at `<data_dir>/control.sock`, mode 0600 (the service user, and root).
//! The client writes one JSON line, a [`Request`]; the daemon answers with JSON lines, each a
//! [`Reply`]: any number of `{"say": "…"}` (progress for the person waiting), then exactly one
//! `{"report": …}` or `{"error": "…"}`, and closes the connection. Nothing in a reply holds a
//! field value: the same messages as the command would print itself.
//!
//! Every command that needs the queue uses it when the queue is locked by the daemon:
//! - `exchange-agent sync`: carried out by the service (pulls serialized with its own,
//!   batches pushed by its push loops);
//! - the operator commands ([`Operation`]): a read-only one is answered at once from the
//!   service's queue; a change (which the client sends only with `--yes`, and the service
//!   refuses without it) is handed to the daemon's main loop ([`Change`]), which stops pulling
//!   and pushing, applies it, audits it, and starts them again. The verification listener is
//!   not part of that and keeps answering. Text is written in the language the request names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use exchange_protocol::lang::{Lang, Text};
use tokio::sync::oneshot;

use crate::operator::{Operation, Outcome};
use crate::pipeline::Pipeline;
use crate::pipeline::sync::{Pushers, SyncOptions, SyncReport};

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// What a client asks the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Run one sync cycle (`exchange-agent sync`).
    Sync {
        /// Only this resource.
        resource: Option<String>,
        /// Its bounds.
        options: SyncOptions,
    },
    /// Carry out an operator command.
    Operate {
        /// The command.
        operation: Operation,
        /// The operator confirmed a change (`--yes`).
        yes: bool,
        /// The language to answer in.
        lang: Lang,
    },
}

/// A change handed to the daemon's main loop, which applies it between pulls.
pub struct Change {
    /// The command.
    pub operation: Operation,
    /// The language to answer in.
    pub lang: Lang,
    /// Where its outcome goes.
    pub reply: oneshot::Sender<Result<Outcome, String>>,
}

/// One line of the daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Progress for the person waiting, in both languages.
    Say(Text),
    /// The sync's outcome (last line).
    Report(SyncReport),
    /// An operator command's outcome (last line).
    Done(Outcome),
    /// The request could not be carried out (last line).
    Error(String),
}

/// Errors of the client side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The daemon does not answer on its socket.
    #[error("{}", exchange_protocol::tr!(
        "the queue is held by a running exchange-agent (the service), which does not answer on {} ({reason}); see `systemctl status exchange-agent` and its log, or stop the service (systemctl stop exchange-agent) and run the command again",
        "队列由正在运行的 exchange-agent（服务）持有，但它在 {} 上没有应答（{reason}）；请查看 `systemctl status exchange-agent` 及其日志，或停止服务（systemctl stop exchange-agent）后再运行此命令",
        path.display()
    ))]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The daemon answered something unexpected.
    #[error("{}", exchange_protocol::tr!(
        "the running exchange-agent answered on {path} with something unexpected: {reason}",
        "正在运行的 exchange-agent 在 {path} 上的应答无法识别：{reason}",
        path = path.display()
    ))]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What.
        reason: String,
    },
    /// The daemon refused the request.
    #[error("{}", exchange_protocol::tr!("the running exchange-agent refused: {}", "正在运行的 exchange-agent 拒绝执行：{}", .0))]
    Refused(String),
}

/// Where the daemon of a data directory listens.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Binds the control socket (replacing a stale one: the caller holds the queue lock, so no
/// other daemon of this data directory runs), readable and writable by the owner only.
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests until `stop` turns true; changes go to the daemon through `changes`.
pub async fn serve(
    listener: UnixListener,
    pipeline: Arc<Pipeline>,
    changes: mpsc::Sender<Change>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let pipeline = pipeline.clone();
                let stop = stop.clone();
                let changes = changes.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, pipeline, changes, stop).await {
                        tracing::warn!(error = %e, "Control request failed.");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot accept on the control socket.");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

async fn answer(
    stream: UnixStream,
    pipeline: Arc<Pipeline>,
    changes: mpsc::Sender<Change>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    // A client that never finishes its line does not hold a task for the daemon's lifetime.
    tokio::select! {
        r = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)) => {
            r.map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request line within 10 s"))??;
        }
        _ = stop.changed() => return Ok(()),
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        // Its language is unknown: the service's own.
        Err(e) => Reply::Error(exchange_protocol::tr!(
            "not a request this version understands: {e}",
            "不是此版本能理解的请求：{e}"
        )),
        Ok(Request::Sync { resource, options }) => {
            answer_sync(&mut write, pipeline, resource, options, stop).await?
        }
        Ok(Request::Operate {
            operation,
            yes,
            lang,
        }) => answer_operation(pipeline, changes, operation, yes, lang).await,
    };
    write_reply(&mut write, &reply).await?;
    write.shutdown().await
}

/// A sync, its progress lines written as they come.
async fn answer_sync(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    pipeline: Arc<Pipeline>,
    resource: Option<String>,
    options: SyncOptions,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<Reply> {
    if let Some(code) = &resource
        && !pipeline.pullers.iter().any(|p| &p.resource.code == code)
    {
        return Ok(Reply::Error(exchange_protocol::tr!(
            "no delivered resource `{code}` in the running configuration",
            "运行中的配置里没有交付的资源 `{code}`"
        )));
    }
    tracing::info!(
        resource = resource.as_deref().unwrap_or("(all)"),
        "Sync requested on the control socket."
    );
    let (tx, mut rx) = mpsc::unbounded_channel::<Text>();
    let say: crate::pipeline::sync::Say = Arc::new(move |s| {
        let _ = tx.send(s);
    });
    let run =
        crate::pipeline::sync::sync(pipeline, resource.as_deref(), options, Pushers::Daemon, say);
    tokio::pin!(run);
    loop {
        tokio::select! {
            report = &mut run => return Ok(Reply::Report(report)),
            Some(s) = rx.recv() => write_reply(write, &Reply::Say(s)).await?,
            _ = stop.changed() => return Ok(Reply::Error(exchange_protocol::tr!(
                "the service is shutting down",
                "服务正在停止"
            ))),
        }
    }
}

/// An operator command: a read-only one on the service's queue at once, a change through the
/// daemon's main loop.
async fn answer_operation(
    pipeline: Arc<Pipeline>,
    changes: mpsc::Sender<Change>,
    operation: Operation,
    yes: bool,
    lang: Lang,
) -> Reply {
    tracing::info!(
        command = operation.name(),
        resource = operation.resource().unwrap_or("(all)"),
        "Operator command on the control socket."
    );
    if operation.change().is_none() {
        let run = tokio::task::spawn_blocking(move || {
            exchange_protocol::lang::scoped(lang, || {
                operation
                    .perform(&pipeline.config, &pipeline.queue)
                    .map_err(|e| format!("{e:#}"))
            })
        });
        return match run.await {
            Ok(Ok(outcome)) => Reply::Done(outcome),
            Ok(Err(e)) => Reply::Error(e),
            Err(e) => Reply::Error(exchange_protocol::lang::scoped(lang, || {
                exchange_protocol::tr!("the command failed: {e}", "命令执行失败：{e}")
            })),
        };
    }
    if !yes {
        return Reply::Error(exchange_protocol::lang::scoped(lang, || {
            exchange_protocol::tr!(
                "`{}` changes the agent's state and needs --yes",
                "`{}` 会改变前置机的状态，需要加 --yes",
                operation.name()
            )
        }));
    }
    let (reply, outcome) = oneshot::channel();
    let change = Change {
        operation,
        lang,
        reply,
    };
    let stopping = || {
        exchange_protocol::lang::scoped(lang, || {
            exchange_protocol::tr!("the service is shutting down", "服务正在停止")
        })
    };
    if changes.send(change).await.is_err() {
        return Reply::Error(stopping());
    }
    match outcome.await {
        Ok(Ok(outcome)) => Reply::Done(outcome),
        Ok(Err(e)) => Reply::Error(e),
        Err(_) => Reply::Error(stopping()),
    }
}

async fn write_reply(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("reply serializes");
    line.push(b'\n');
    write.write_all(&line).await
}

/// Asks the daemon of `data_dir` to sync; `say` receives its progress lines.
pub async fn request_sync(
    data_dir: &Path,
    resource: Option<String>,
    options: SyncOptions,
    say: impl Fn(Text),
) -> Result<SyncReport, ControlError> {
    let path = socket_path(data_dir);
    match exchange(&path, &Request::Sync { resource, options }, say).await? {
        Reply::Report(r) => Ok(r),
        other => Err(unexpected(&path, &other)),
    }
}

/// Asks the daemon of `data_dir` to carry out an operator command (a change only with
/// `yes`), answering in this process's language.
pub async fn request_operation(
    data_dir: &Path,
    operation: Operation,
    yes: bool,
) -> Result<Outcome, ControlError> {
    let path = socket_path(data_dir);
    let request = Request::Operate {
        operation,
        yes,
        lang: exchange_protocol::lang::current(),
    };
    match exchange(&path, &request, |_| {}).await? {
        Reply::Done(o) => Ok(o),
        other => Err(unexpected(&path, &other)),
    }
}

fn unexpected(path: &Path, _: &Reply) -> ControlError {
    ControlError::Protocol {
        path: path.to_owned(),
        reason: exchange_protocol::tr!("an answer to another request", "答复的是另一个请求"),
    }
}

/// Sends `request` and reads the answer: progress lines to `say`, then the last line (an
/// error is returned as [`ControlError::Refused`]).
async fn exchange(
    path: &Path,
    request: &Request,
    say: impl Fn(Text),
) -> Result<Reply, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| ControlError::Unreachable {
            path: path.to_owned(),
            reason: exchange_protocol::translate::io(&e),
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).expect("request serializes");
    line.push(b'\n');
    let protocol = |reason: String| ControlError::Protocol {
        path: path.to_owned(),
        reason,
    };
    write
        .write_all(&line)
        .await
        .map_err(|e| protocol(exchange_protocol::translate::io(&e)))?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| protocol(exchange_protocol::translate::io(&e)))?
    {
        match serde_json::from_str::<Reply>(&line).map_err(|e| protocol(e.to_string()))? {
            Reply::Say(s) => say(s),
            Reply::Error(e) => return Err(ControlError::Refused(e)),
            last => return Ok(last),
        }
    }
    Err(protocol(exchange_protocol::tr!(
        "the connection closed before the answer",
        "连接在答复之前关闭"
    )))
}
