//! Why a push failed: one error per way the hub's answer (or its absence) can go wrong, with
//! the `kind` label its metric carries and how long a retry waits.

use std::time::Duration;

use exchange_protocol::tls;

use crate::pipeline::queue::QueueError;

/// Why a push failed. Messages name the hub and say what to check.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The TLS configuration could not be built.
    #[error("{}", exchange_protocol::tr!(
        "hub TLS configuration: {0}",
        "交换中心 TLS 配置：{0}", .0
    ))]
    Tls(tls::TlsError),
    /// An offline exchange directory could not be read or written, or the node cannot sign
    /// batch files.
    #[error("{}", exchange_protocol::tr!(
        "offline exchange directory {}: {reason}",
        "离线交换目录 {}：{reason}", dir.display()
    ))]
    Offline {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed.
    #[error("{}", exchange_protocol::tr!(
        "TLS handshake with the hub {url} failed: {reason}",
        "与交换中心 {url} 的 TLS 握手失败：{reason}"
    ))]
    Handshake {
        /// Hub URL.
        url: String,
        /// Explained rustls error.
        reason: String,
    },
    /// The hub could not be reached.
    #[error("{}", exchange_protocol::tr!(
        "hub {url} is unreachable: {reason}",
        "无法连接交换中心 {url}：{reason}"
    ))]
    Unreachable {
        /// Hub URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The hub asked to slow down (429) or is unavailable (503).
    #[error("{}", match retry_after {
        Some(d) => exchange_protocol::tr!(
            "hub {url} answered {status}; retrying after {} s as the hub asked",
            "交换中心 {url} 应答 {status}；按交换中心的要求在 {} 秒后重试", d.as_secs()
        ),
        None => exchange_protocol::tr!(
            "hub {url} answered {status}; retrying with backoff",
            "交换中心 {url} 应答 {status}；将以退避间隔重试"
        ),
    })]
    Throttled {
        /// Hub URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The hub's Retry-After, if any.
        retry_after: Option<Duration>,
    },
    /// The hub refused the batch.
    #[error("{}", exchange_protocol::tr!(
        "hub {url} refused batch {seq} of `{resource}` with {status}: {error}",
        "交换中心 {url} 以 {status} 拒绝了 `{resource}` 的批次 {seq}：{error}"
    ))]
    Refused {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// Batch seq.
        seq: u64,
        /// HTTP status.
        status: u16,
        /// The hub's explanation.
        error: String,
    },
    /// The hub refused one record of the batch (`400` naming its line, docs/PROTOCOL.md §7):
    /// nothing of the batch was applied. Not reported as such: the pusher quarantines the
    /// record and sends the rest of the batch at once (`refused`).
    #[error("{}", exchange_protocol::tr!(
        "hub {url} refused line {} of batch {seq} of `{resource}`: {error}",
        "交换中心 {url} 拒收了 `{resource}` 批次 {seq} 的第 {} 行：{error}", record + 1
    ))]
    RecordRefused {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// Batch seq.
        seq: u64,
        /// The digest of the batch the hub refused (it is changed only if still queued as sent).
        digest: String,
        /// The refused line's 0-based index (the error body's `record`).
        record: u64,
        /// The hub's explanation.
        error: String,
    },
    /// A record the hub refused could not be quarantined: the audit log cannot be written, so
    /// the batch is left as it is (every change is audited) and sent again later.
    #[error("{}", exchange_protocol::tr!(
        "the record the hub refused in batch {seq} of `{resource}` is not quarantined yet: {reason}",
        "交换中心拒收的 `{resource}` 批次 {seq} 中的记录尚未隔离：{reason}"
    ))]
    Unaudited {
        /// Resource.
        resource: String,
        /// Batch seq.
        seq: u64,
        /// The audit log's error.
        reason: String,
    },
    /// The hub acknowledged something else than what was sent.
    #[error("{}", exchange_protocol::tr!(
        "hub {url} acknowledged seq {got} for batch {expected} of `{resource}`; the batch stays queued",
        "交换中心 {url} 对 `{resource}` 的批次 {expected} 确认了序号 {got}；该批次继续留在队列中"
    ))]
    WrongAck {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// Sent seq.
        expected: u64,
        /// Acknowledged seq.
        got: u64,
    },
    /// The hub has applied batches of this stream that this queue never sent (a mark above
    /// its `sent_through` bound, or another digest): the queue went back in time.
    /// Acknowledging would lose records, so the resource stops.
    #[error("{}", exchange_protocol::tr!(
        "hub {url} has already applied batch {last_seq} of this queue for `{resource}` (with other content than the queued batch {seq}, or a batch this queue never sent): the data directory was restored from an older copy, and records pulled since that copy would be lost. The resource is stopped; run `exchange-agent resync {resource} --yes` to read it again from the start on a new stream",
        "交换中心 {url} 已应用本队列 `{resource}` 的批次 {last_seq}（其内容与队列中的批次 {seq} 不同，或是本队列从未发送过的批次）：数据目录是从较旧的副本恢复的，该副本之后抽取的记录将会丢失。该资源已停止；请运行 `exchange-agent resync {resource} --yes`，在新的数据流上从头重新读取"
    ))]
    Rewound {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// The queue's batch.
        seq: u64,
        /// The hub's high-water mark.
        last_seq: u64,
    },
    /// The hub lacks batches of this stream: its store was restored from an older copy or
    /// wiped. Sending on would leave a hole, so the resource stops.
    #[error("{}", exchange_protocol::tr!(
        "hub {url} has applied batches of `{resource}` up to seq {last_seq} of this stream, but the queue's next batch is {seq}: the batches in between are missing at the hub (its store was restored from an older copy or wiped). The resource is stopped; run `exchange-agent resync {resource} --yes` to read it again from the start on a new stream, after which the hub also removes records that no longer exist",
        "交换中心 {url} 已应用 `{resource}` 在此数据流上直到序号 {last_seq} 的批次，但队列的下一个批次是 {seq}：中间的批次在交换中心缺失（其存储从较旧的副本恢复或被清空）。该资源已停止；请运行 `exchange-agent resync {resource} --yes`，在新的数据流上从头重新读取，之后交换中心也会删除已不存在的记录"
    ))]
    Gap {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// The queue's batch.
        seq: u64,
        /// The hub's high-water mark.
        last_seq: u64,
    },
    /// The hub refused a batch that overtook an earlier one still unanswered (`409` for a
    /// batch above the oldest queued one when it left, with a mark that covers every batch no
    /// longer queued): nothing is lost; the batches are resent from the oldest, one at a
    /// time. Provisional: only the probe's answer tells a gap.
    #[error("{}", exchange_protocol::tr!(
        "hub {url} has not applied the batches before {seq} of `{resource}` yet (its mark is {last_seq}); resending them in order",
        "交换中心 {url} 尚未应用 `{resource}` 批次 {seq} 之前的批次（其标记为 {last_seq}）；正在按顺序重发"
    ))]
    Overtaken {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// The refused batch.
        seq: u64,
        /// The hub's high-water mark.
        last_seq: u64,
    },
    /// The hub's acknowledgement contradicts itself or the batch: not taken as an
    /// acknowledgement, so the batch stays queued.
    #[error("{}", exchange_protocol::tr!(
        "hub {url} sent an acknowledgement for batch {seq} of `{resource}` that cannot be right ({why}); the batch stays queued",
        "交换中心 {url} 对 `{resource}` 批次 {seq} 的确认不可能正确（{why}）；该批次继续留在队列中"
    ))]
    BadAck {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// The batch.
        seq: u64,
        /// What is wrong with it.
        why: String,
    },
    /// The hub refused a catalogue entry (`PUT /v1/catalogue`, docs/PROTOCOL.md §10). A `404`
    /// means a hub without the endpoint: it never learns the resource's share class, so it
    /// cannot refuse batches of a resource catalogued `share = "none"`.
    #[error("{}", if *status == 404 {
        exchange_protocol::tr!(
            "hub {url} answered 404 to the catalogue entry of `{resource}`: it does not serve `PUT /v1/catalogue`, so it does not know the resource's share class and cannot refuse its batches should it be share = \"none\" (ask the hub's operator for a hub that serves catalogue entries): {error}",
            "交换中心 {url} 对 `{resource}` 的目录条目应答 404：它不提供 `PUT /v1/catalogue`，因此不知道该资源的共享类型，若该资源为 share = \"none\" 也无法拒收其批次（请交换中心运维人员换用支持目录条目的交换中心）：{error}"
        )
    } else {
        exchange_protocol::tr!(
            "hub {url} refused the catalogue entry of `{resource}` with {status}: {error}",
            "交换中心 {url} 以 {status} 拒绝了 `{resource}` 的目录条目：{error}"
        )
    })]
    CatalogueRefused {
        /// Hub URL.
        url: String,
        /// Resource.
        resource: String,
        /// HTTP status.
        status: u16,
        /// The hub's explanation.
        error: String,
    },
    /// The resource is stopped until an operator acts.
    #[error("{}", exchange_protocol::tr!(
        "`{resource}` is stopped: {reason}",
        "`{resource}` 已停止：{reason}"
    ))]
    Halted {
        /// Resource.
        resource: String,
        /// Why, and what to run.
        reason: exchange_protocol::lang::Text,
    },
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl PushError {
    /// The kind of failure, as the `kind` label of `exchange_push_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            PushError::Tls(_) => "tls_config",
            PushError::Handshake { .. } => "handshake",
            PushError::Unreachable { .. } => "unreachable",
            PushError::Throttled { .. } => "throttled",
            PushError::Refused { .. } => "refused",
            PushError::RecordRefused { .. } => "record_refused",
            PushError::Unaudited { .. } => "audit",
            PushError::WrongAck { .. } | PushError::BadAck { .. } => "bad_ack",
            PushError::Rewound { .. } => "rewound",
            PushError::Gap { .. } => "gap",
            PushError::Overtaken { .. } => "overtaken",
            PushError::Halted { .. } => "halted",
            PushError::CatalogueRefused { .. } => "catalogue",
            PushError::Queue(_) => "queue",
            PushError::Offline { .. } => "offline_dir",
        }
    }
    /// Whether the hub answered and refused: retrying helps only after someone fixes
    /// something, so the retry waits longer.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            PushError::Refused {
                status: 400..=499,
                ..
            } | PushError::WrongAck { .. }
                | PushError::BadAck { .. }
                | PushError::Rewound { .. }
                | PushError::Gap { .. }
                | PushError::Halted { .. }
        )
    }

    /// A delay the hub asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PushError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

// The TLS error is in the message, so it is not also the source (a chain names it once).
impl From<tls::TlsError> for PushError {
    fn from(e: tls::TlsError) -> Self {
        PushError::Tls(e)
    }
}
