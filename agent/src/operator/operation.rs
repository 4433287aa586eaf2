//! An operator command as data, so that it runs the same wherever the queue is held: in the
//! operator's own process on a queue it opened, or in the running service, which receives it
//! on its control socket (`crate::service::control`) and carries it out on its own queue.
//!
//! Read-only commands (`queue list`, `queue export`, `cursor show`, `quarantine list`,
//! `quarantine find`) never
//! need `--yes` and run beside the service's pulls and pushes. Commands that change something
//! (`queue discard`, `cursor reset`, `cursor set`, `resync`, `accept-config`, `quarantine
//! clear`) need `--yes`, are audited, and the service applies them between pulls: it stops
//! pulling and pushing (a pull or push cut short is safe at any moment, see the queue's
//! invariants), applies the change, and starts them again; verification keeps answering.

use serde::{Deserialize, Serialize};

use super::batches::Export;
use super::command::OperatorError;
use crate::config::Config;
use crate::pipeline::queue::Queue;
use exchange_protocol::tr;

/// One operator command and its arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum Operation {
    /// `queue list [RESOURCE] --limit N`.
    QueueList {
        /// Only this resource.
        resource: Option<String>,
        /// Batches listed per resource.
        limit: usize,
    },
    /// `queue export RESOURCE SEQ [--out FILE]` (the file is written by the operator's
    /// process; `to` names it for the audit entry).
    QueueExport {
        /// The resource.
        resource: String,
        /// The batch.
        seq: u64,
        /// Where the records go.
        to: String,
    },
    /// `queue discard RESOURCE SEQ --yes`.
    QueueDiscard {
        /// The resource.
        resource: String,
        /// The batch.
        seq: u64,
    },
    /// `cursor show RESOURCE`.
    CursorShow {
        /// The resource.
        resource: String,
    },
    /// `cursor reset RESOURCE --yes`.
    CursorReset {
        /// The resource.
        resource: String,
    },
    /// `cursor set RESOURCE VALUE… --yes`.
    CursorSet {
        /// The resource.
        resource: String,
        /// One value per cursor column, the key last.
        values: Vec<String>,
    },
    /// `resync RESOURCE --yes`.
    Resync {
        /// The resource.
        resource: String,
    },
    /// `accept-config RESOURCE --yes`.
    AcceptConfig {
        /// The resource.
        resource: String,
    },
    /// `quarantine list [RESOURCE] --limit N`.
    QuarantineList {
        /// Only this resource.
        resource: Option<String>,
        /// Entries listed per resource.
        limit: usize,
    },
    /// `quarantine find RESOURCE --key RAW`, with the key as it leaves (computed by the
    /// operator's process: the raw key is never sent).
    QuarantineFind {
        /// The resource.
        resource: String,
        /// The key as it leaves.
        key: String,
    },
    /// `quarantine clear RESOURCE --yes`.
    QuarantineClear {
        /// The resource.
        resource: String,
    },
}

/// What a command produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// The text to print.
    pub text: String,
    /// The records `queue export` took out, for the operator's process to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<Export>,
}

impl From<String> for Outcome {
    fn from(text: String) -> Outcome {
        Outcome { text, export: None }
    }
}

impl Operation {
    /// The command as typed (`queue discard`), for messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::QueueList { .. } => "queue list",
            Operation::QueueExport { .. } => "queue export",
            Operation::QueueDiscard { .. } => "queue discard",
            Operation::CursorShow { .. } => "cursor show",
            Operation::CursorReset { .. } => "cursor reset",
            Operation::CursorSet { .. } => "cursor set",
            Operation::Resync { .. } => "resync",
            Operation::AcceptConfig { .. } => "accept-config",
            Operation::QuarantineList { .. } => "quarantine list",
            Operation::QuarantineFind { .. } => "quarantine find",
            Operation::QuarantineClear { .. } => "quarantine clear",
        }
    }

    /// The resource it names, if one.
    pub fn resource(&self) -> Option<&str> {
        match self {
            Operation::QueueList { resource, .. } | Operation::QuarantineList { resource, .. } => {
                resource.as_deref()
            }
            Operation::QueueExport { resource, .. }
            | Operation::QueueDiscard { resource, .. }
            | Operation::CursorShow { resource }
            | Operation::CursorReset { resource }
            | Operation::CursorSet { resource, .. }
            | Operation::Resync { resource }
            | Operation::AcceptConfig { resource }
            | Operation::QuarantineFind { resource, .. }
            | Operation::QuarantineClear { resource } => Some(resource),
        }
    }

    /// What the command would change, when it changes something (it then needs `--yes`);
    /// `None` for a read-only command.
    pub fn change(&self) -> Option<String> {
        Some(match self {
            Operation::QueueList { .. }
            | Operation::QueueExport { .. }
            | Operation::CursorShow { .. }
            | Operation::QuarantineList { .. }
            | Operation::QuarantineFind { .. } => return None,
            Operation::QueueDiscard { resource, seq } => tr!(
                "drop the records of batch {seq} of `{resource}` (they are not delivered)",
                "丢弃 `{resource}` 的批次 {seq} 中的记录（这些记录不会交付）"
            ),
            Operation::CursorReset { resource } => tr!(
                "make the next pull of `{resource}` read every row again",
                "使 `{resource}` 的下一次抽取重新读取全部行"
            ),
            Operation::CursorSet { resource, .. } => tr!(
                "make the next pull of `{resource}` read the rows after the given position (rows before it are not read again)",
                "使 `{resource}` 的下一次抽取从给定位置之后读取（之前的行不再读取）"
            ),
            Operation::Resync { resource } => tr!(
                "discard the queued batches of `{resource}` and read it all again on a new stream; the hub then removes the records the new stream does not send",
                "丢弃 `{resource}` 已排队的批次，并在新的数据流上重新读取全部数据；交换平台随后删除新数据流未发送的记录"
            ),
            Operation::AcceptConfig { resource } => tr!(
                "go on from the cursor of `{resource}` with the new configuration (rows delivered before keep the old one until they change)",
                "按新配置从 `{resource}` 的游标处继续（此前已交付的行在其变更前保持旧配置的结果）"
            ),
            Operation::QuarantineClear { resource } => tr!(
                "remove the quarantine entries of `{resource}`",
                "清除 `{resource}` 的隔离记录"
            ),
        })
    }

    /// Runs the command on `queue` under `config`.
    pub fn perform(&self, config: &Config, queue: &Queue) -> Result<Outcome, OperatorError> {
        use super::{batches, cursor, quarantine, stream};
        Ok(match self {
            Operation::QueueList { resource, limit } => {
                batches::queue_list(config, queue, resource.as_deref(), *limit)?.into()
            }
            Operation::QueueExport { resource, seq, to } => Outcome {
                text: String::new(),
                export: Some(batches::queue_export(config, queue, resource, *seq, to)?),
            },
            Operation::QueueDiscard { resource, seq } => {
                batches::queue_discard(config, queue, resource, *seq)?.into()
            }
            Operation::CursorShow { resource } => {
                cursor::cursor_show(config, queue, resource)?.into()
            }
            Operation::CursorReset { resource } => {
                cursor::cursor_reset(config, queue, resource)?.into()
            }
            Operation::CursorSet { resource, values } => {
                cursor::cursor_set(config, queue, resource, values)?.into()
            }
            Operation::Resync { resource } => stream::resync(config, queue, resource)?.into(),
            Operation::AcceptConfig { resource } => {
                stream::accept_config(config, queue, resource)?.into()
            }
            Operation::QuarantineList { resource, limit } => {
                quarantine::quarantine_list(config, queue, resource.as_deref(), *limit)?.into()
            }
            Operation::QuarantineFind { resource, key } => {
                quarantine::quarantine_find(config, queue, resource, key)?.into()
            }
            Operation::QuarantineClear { resource } => {
                quarantine::quarantine_clear(config, queue, resource)?.into()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_commands_need_no_confirmation_and_changes_always_do() {
        let r = || "people".to_owned();
        let read_only = [
            Operation::QueueList {
                resource: None,
                limit: 5,
            },
            Operation::QueueExport {
                resource: r(),
                seq: 1,
                to: "x".into(),
            },
            Operation::CursorShow { resource: r() },
            Operation::QuarantineList {
                resource: None,
                limit: 5,
            },
            Operation::QuarantineFind {
                resource: r(),
                key: "v1:00".into(),
            },
        ];
        let changes = [
            Operation::QueueDiscard {
                resource: r(),
                seq: 1,
            },
            Operation::CursorReset { resource: r() },
            Operation::CursorSet {
                resource: r(),
                values: vec!["1".into()],
            },
            Operation::Resync { resource: r() },
            Operation::AcceptConfig { resource: r() },
            Operation::QuarantineClear { resource: r() },
        ];
        assert!(read_only.iter().all(|o| o.change().is_none()));
        assert!(changes.iter().all(|o| o.change().is_some()));
    }

    #[test]
    fn an_operation_crosses_the_control_socket_unchanged() {
        let op = Operation::CursorSet {
            resource: "people".into(),
            values: vec!["2026-01-01T00:00:00".into(), "42".into()],
        };
        let line = serde_json::to_string(&op).unwrap();
        assert!(line.contains("\"command\":\"cursor_set\""), "{line}");
        let back: Operation = serde_json::from_str(&line).unwrap();
        assert_eq!(back.name(), "cursor set");
        assert_eq!(back.resource(), Some("people"));
    }
}
