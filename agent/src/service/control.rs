//! The daemon's control socket: how commands reach a running daemon, which holds the queue.
//!
//! # Protocol
//! A Unix stream socket at `<data_dir>/control.sock`, mode 0600 (the service user, and root).
//! The client writes one JSON line, a [`Request`]; the daemon answers with JSON lines, each a
//! [`Reply`]: any number of `{"say": "…"}` (progress for the person waiting), then exactly one
//! `{"report": …}` or `{"error": "…"}`, and closes the connection. Nothing in a reply holds a
//! field value: the same messages as the command would print itself.
//!
//! `exchange-agent sync` uses it when the queue is locked by the daemon, so a sync asked for
//! while the service runs is carried out by the service (pulls serialized with its own,
//! batches pushed by its push loops).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

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
}

/// One line of the daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Progress for the person waiting.
    Say(String),
    /// The sync's outcome (last line).
    Report(SyncReport),
    /// The request could not be carried out (last line).
    Error(String),
}

/// Errors of the client side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The daemon does not answer on its socket.
    #[error(
        "the queue is held by a running exchange-agent (the service), which does not answer on {path} ({reason}); stop the service (systemctl stop exchange-agent) and run the command again"
    )]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The daemon answered something unexpected.
    #[error("the running exchange-agent answered on {path} with something unexpected: {reason}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What.
        reason: String,
    },
    /// The daemon refused the request.
    #[error("the running exchange-agent refused: {0}")]
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

/// Answers requests until `stop` turns true.
pub async fn serve(
    listener: UnixListener,
    pipeline: Arc<Pipeline>,
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
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, pipeline, stop).await {
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
        Err(e) => Reply::Error(format!("not a request this version understands: {e}")),
        Ok(Request::Sync { resource, options }) => {
            if let Some(code) = &resource
                && !pipeline.pullers.iter().any(|p| &p.resource.code == code)
            {
                Reply::Error(format!(
                    "no delivered resource `{code}` in the running configuration"
                ))
            } else {
                tracing::info!(
                    resource = resource.as_deref().unwrap_or("(all)"),
                    "Sync requested on the control socket."
                );
                let (tx, mut rx) = mpsc::unbounded_channel::<String>();
                let say: crate::pipeline::sync::Say = Arc::new(move |s| {
                    let _ = tx.send(s);
                });
                let run = crate::pipeline::sync::sync(
                    pipeline,
                    resource.as_deref(),
                    options,
                    Pushers::Daemon,
                    say,
                );
                tokio::pin!(run);
                loop {
                    tokio::select! {
                        report = &mut run => break Reply::Report(report),
                        Some(s) = rx.recv() => write_reply(&mut write, &Reply::Say(s)).await?,
                        _ = stop.changed() => break Reply::Error("the service is shutting down".into()),
                    }
                }
            }
        }
    };
    write_reply(&mut write, &reply).await?;
    write.shutdown().await
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
    say: impl Fn(String),
) -> Result<SyncReport, ControlError> {
    let path = socket_path(data_dir);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|e| ControlError::Unreachable {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let (read, mut write) = stream.into_split();
    let mut request =
        serde_json::to_vec(&Request::Sync { resource, options }).expect("request serializes");
    request.push(b'\n');
    let protocol = |reason: String| ControlError::Protocol {
        path: path.clone(),
        reason,
    };
    write
        .write_all(&request)
        .await
        .map_err(|e| protocol(e.to_string()))?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| protocol(e.to_string()))?
    {
        match serde_json::from_str::<Reply>(&line).map_err(|e| protocol(e.to_string()))? {
            Reply::Say(s) => say(s),
            Reply::Report(r) => return Ok(r),
            Reply::Error(e) => return Err(ControlError::Refused(e)),
        }
    }
    Err(protocol("the connection closed before the report".into()))
}
