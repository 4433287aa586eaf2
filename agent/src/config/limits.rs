//! `[queue]` and `[batch]`: how many bytes the local queue holds before pulling pauses, and
//! how many records and bytes a batch holds; a full batch always fits in the queue.

use super::{BatchLimits, ConfigError, QueueLimits, Validator, parse_size, raw};
use exchange_protocol::tr;

impl Validator<'_> {
    pub(super) fn limits(
        &self,
        queue: Option<raw::RawQueue>,
        batch: Option<raw::RawBatch>,
    ) -> Result<(QueueLimits, BatchLimits), ConfigError> {
        let queue = QueueLimits {
            max_bytes: match queue.and_then(|q| q.max_bytes) {
                Some(s) => parse_size(&s).map_err(|e| self.err("queue.max_bytes", e))?,
                None => 1 << 30,
            },
        };
        let rb = batch.unwrap_or_default();
        let batch = BatchLimits {
            max_records: rb.max_records.unwrap_or(5000),
            max_bytes: match rb.max_bytes {
                Some(s) => parse_size(&s).map_err(|e| self.err("batch.max_bytes", e))? as usize,
                None => 4 << 20,
            },
            compression_level: rb
                .compression_level
                .unwrap_or(exchange_protocol::batch::DEFAULT_LEVEL),
        };
        if !exchange_protocol::batch::LEVELS.contains(&batch.compression_level)
            || batch.compression_level == 0
        {
            return Err(self.err(
                "batch.compression_level",
                tr!(
                    "{} is not a zstd level; expected -7 to -1 (faster, larger) or 1 to 9 (slower, smaller), default 1",
                    "{} 不是有效的 zstd 压缩级别；应为 -7 到 -1（更快、体积更大）或 1 到 9（更慢、体积更小），默认 1",
                    batch.compression_level
                ),
            ));
        }
        if !(1..=100_000).contains(&batch.max_records) {
            return Err(self.err(
                "batch.max_records",
                tr!(
                    "{} is out of range; expected 1 to 100000",
                    "{} 超出范围；应为 1 到 100000",
                    batch.max_records
                ),
            ));
        }
        if !(1024..=exchange_protocol::batch::DEFAULT_MAX_BATCH_BYTES).contains(&batch.max_bytes) {
            return Err(self.err(
                "batch.max_bytes",
                tr!(
                    "expected between 1KiB and 64MiB (the hub's default limit)",
                    "应在 1KiB 到 64MiB 之间（64MiB 是交换中心的默认上限）"
                ),
            ));
        }
        if queue.max_bytes < 2 * batch.max_bytes as u64 {
            return Err(self.err(
                "queue.max_bytes",
                tr!(
                    "must be at least twice batch.max_bytes, so a full batch always fits",
                    "至少应为 batch.max_bytes 的两倍，队列才总能容纳一个满批次"
                ),
            ));
        }
        Ok((queue, batch))
    }
}
