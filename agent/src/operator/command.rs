//! What every operator command shares: the queue it opens (refused while the service holds
//! it), the resource it names, and why it fails.

use crate::audit;
use crate::config::{Config, Resource};
use crate::pipeline::queue::{Queue, QueueError, ResourceState};

/// What a command prints, or why it failed.
pub type Printed = Result<String, OperatorError>;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The service holds the queue.
    #[error("{}", exchange_protocol::tr!(
        "the queue {_0} is held by the running service",
        "队列 {_0} 由正在运行的服务持有"
    ))]
    ServiceRunning(String),
    /// There is no queue yet.
    #[error("{}", exchange_protocol::tr!(
        "there is no queue in {_0} yet (the agent has not run with this data_dir)",
        "{_0} 中还没有队列（前置机尚未以此 data_dir 运行过）"
    ))]
    NoQueue(String),
    /// The resource is unknown.
    #[error("{}", exchange_protocol::tr!(
        "no resource `{code}` in {file}{queued}",
        "{file} 中没有资源 `{code}`{queued}"
    ))]
    NoResource {
        /// The code asked for.
        code: String,
        /// The configuration file.
        file: String,
        /// A hint when the queue knows it.
        queued: String,
    },
    /// The batch is not queued.
    #[error("{}", exchange_protocol::tr!(
        "`{resource}` has no queued batch {seq} (see `exchange-agent queue list {resource}`)",
        "`{resource}` 没有排队中的批次 {seq}（见 `exchange-agent queue list {resource}`）"
    ))]
    NoBatch {
        /// The resource.
        resource: String,
        /// The seq asked for.
        seq: u64,
    },
    /// The command's arguments do not fit the resource.
    #[error("{0}")]
    Usage(String),
    /// The queue failed.
    #[error(transparent)]
    Queue(QueueError),
    /// The audit log could not be written: the change was made but is not audited.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    /// An output file could not be written.
    #[error("{}", exchange_protocol::tr!("cannot write {path}", "无法写入 {path}"))]
    Output {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl From<QueueError> for OperatorError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Locked { path } => {
                OperatorError::ServiceRunning(path.display().to_string())
            }
            other => OperatorError::Queue(other),
        }
    }
}

/// The queue of a configuration, which must exist and be free.
pub fn open_queue(config: &Config) -> Result<Queue, OperatorError> {
    Queue::open_existing(&config.node.data_dir)?
        .ok_or_else(|| OperatorError::NoQueue(config.node.data_dir.display().to_string()))
}

pub(super) fn resource<'a>(
    config: &'a Config,
    queue: &Queue,
    code: &str,
) -> Result<&'a Resource, OperatorError> {
    config
        .resource(code)
        .ok_or_else(|| OperatorError::NoResource {
            code: code.to_owned(),
            file: config.file.display().to_string(),
            queued: match queue.states().ok().and_then(|s| s.get(code).cloned()) {
                Some(_) => exchange_protocol::tr!(
                    " (the queue still holds state for it)",
                    "（队列中仍保存着它的状态）"
                ),
                None => String::new(),
            },
        })
}

/// The resources a listing covers: every one the queue holds state for, or only `only`
/// (which must be configured).
pub(super) fn listed<'s>(
    config: &Config,
    queue: &Queue,
    states: &'s std::collections::BTreeMap<String, ResourceState>,
    only: Option<&str>,
) -> Result<Vec<&'s String>, OperatorError> {
    let mut codes: Vec<&String> = states.keys().collect();
    if let Some(code) = only {
        resource(config, queue, code)?;
        codes.retain(|c| c.as_str() == code);
    }
    Ok(codes)
}
