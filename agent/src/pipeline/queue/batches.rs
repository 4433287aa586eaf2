//! The `batches` table: each batch a 48-byte header and its NDJSON compressed with zstd
//! (format in the module doc of [`crate::pipeline::queue`]); batches are enqueued in the
//! transaction that moves the cursor, read for sending and listings, and removed only by an
//! acknowledgement. A batch the hub refused changes only by losing records nothing of it was
//! applied for: an operator's `queue discard` (all of them), or one record the hub named
//! ([`Queue::replace_refused`]).

use exchange_protocol::batch;
use exchange_protocol::lang::Text;
use redb::ReadableTable;
use serde::Serialize;

use super::{
    Acked, BATCHES, HEADER_LEN, MAX_IN_FLIGHT, PendingAudit, Queue, QueueError, ResourceState, Txn,
    now, storage,
};

/// A queued batch's header, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct BatchInfo {
    /// Its sequence number.
    pub seq: u64,
    /// Records in it.
    pub records: u32,
    /// Uncompressed NDJSON length.
    pub raw_len: u32,
    /// Bytes stored (header and compressed body).
    pub stored_bytes: u64,
    /// When it was enqueued (RFC 3339).
    pub created: String,
    /// SM3 of the NDJSON, hex.
    pub digest: String,
}

/// A batch as stored.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    /// Its sequence number.
    pub seq: u64,
    /// Number of records.
    pub records: u32,
    /// Uncompressed NDJSON length.
    pub raw_len: u32,
    /// SM3 of the NDJSON, hex.
    pub digest: String,
    /// zstd-compressed NDJSON, as sent.
    pub body: Vec<u8>,
}

/// Reading batches.
impl Queue {
    /// The oldest queued batch of a resource.
    pub fn head(&self, resource: &str) -> Result<Option<StoredBatch>, QueueError> {
        // Seqs count from 1: the first batch above 0 is the oldest.
        Ok(self.oldest(resource, 0, 1)?.pop())
    }

    /// Up to `limit` queued batches of a resource with a seq above `after`, oldest first.
    pub fn oldest(
        &self,
        resource: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredBatch>, QueueError> {
        self.read(BATCHES, "reading a batch", |table| {
            let mut out = Vec::new();
            for entry in table
                .range(seqs_from(resource, after.saturating_add(1)))
                .map_err(storage("reading a batch"))?
                .take(limit)
            {
                let (k, v) = entry.map_err(storage("reading a batch"))?;
                out.push(decode_batch(k.value().1, v.value())?);
            }
            Ok(out)
        })
    }

    /// One queued batch.
    pub fn batch(&self, resource: &str, seq: u64) -> Result<Option<StoredBatch>, QueueError> {
        self.stored(resource, seq, |v| decode_batch(seq, v))
    }

    /// The content digest (SM3 of the NDJSON, hex) of a queued batch, from its header.
    pub fn digest_of(&self, resource: &str, seq: u64) -> Result<Option<String>, QueueError> {
        self.stored(resource, seq, |v| {
            decode_header(v).map(|h| hex::encode(h.3))
        })
    }

    /// `f` of the stored value of batch `seq`, if it is queued.
    fn stored<T>(
        &self,
        resource: &str,
        seq: u64,
        f: impl FnOnce(&[u8]) -> Result<T, QueueError>,
    ) -> Result<Option<T>, QueueError> {
        self.read(BATCHES, "reading a batch", |table| {
            let v = table
                .get((resource, seq))
                .map_err(storage("reading a batch"))?;
            v.map(|v| f(v.value())).transpose()
        })
    }

    /// Every queued batch of a resource, oldest first (headers only).
    pub fn batches(&self, resource: &str) -> Result<Vec<BatchInfo>, QueueError> {
        self.read(BATCHES, "listing batches", |table| {
            let mut out = Vec::new();
            for entry in table
                .range(seqs_from(resource, 0))
                .map_err(storage("listing batches"))?
            {
                let (k, v) = entry.map_err(storage("listing batches"))?;
                let (records, raw_len, created, digest) = decode_header(v.value())?;
                out.push(BatchInfo {
                    seq: k.value().1,
                    records,
                    raw_len,
                    stored_bytes: v.value().len() as u64,
                    created: chrono::DateTime::from_timestamp_millis(created)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default(),
                    digest: hex::encode(digest),
                });
            }
            Ok(out)
        })
    }
}

/// Removing and replacing batches.
impl Queue {
    /// Removes an acknowledged batch. Called only after the hub's 200 acknowledgement. In the
    /// same transaction, raises `sent_through` over the window after it (up to
    /// [`MAX_IN_FLIGHT`] batches, only batches already committed), and stores
    /// `audit`, the detail of the batch's `batch.acked` audit entry, until [`Queue::audited`]
    /// (module doc).
    pub fn ack(
        &self,
        resource: &str,
        seq: u64,
        audit: &serde_json::Value,
    ) -> Result<Acked, QueueError> {
        let mut txn = self.begin()?;
        let mut state = txn.state(resource)?;
        let stream = state.stream_or(&self.stream).to_owned();
        txn.keep_audit(resource, &stream, seq, audit)?;
        if let Some((bytes, records)) = txn.remove_batch(resource, seq)? {
            let records = u64::from(records);
            state.queued_batches = state.queued_batches.saturating_sub(1);
            state.queued_records = state.queued_records.saturating_sub(records);
            state.queued_bytes = state.queued_bytes.saturating_sub(bytes);
            state.pushed_records += records;
            state.last_push = Some(now());
            // The pusher may now send the window after this batch: the bound covers it
            // before any of it leaves (only batches already committed).
            let window = seq.saturating_add(MAX_IN_FLIGHT as u64);
            state.sent_through = state
                .sent_through
                .max(window.min(state.next_seq.saturating_sub(1)));
            txn.set_state(resource, &state)?;
        }
        txn.commit()?;
        Ok(Acked {
            sent_through: state.sent_through,
            pending: PendingAudit {
                resource: resource.to_owned(),
                stream,
                seq,
            },
        })
    }

    /// Replaces a queued batch the hub refuses with an empty batch of the same seq (so the
    /// stream's sequence stays without a gap); returns the records dropped. Only for a batch
    /// the hub never applied: an operator's decision, audited by the caller.
    pub fn discard(&self, resource: &str, seq: u64) -> Result<Option<u32>, QueueError> {
        let mut txn = self.begin()?;
        let mut state = txn.state(resource)?;
        let old = {
            let table = txn
                .tx
                .open_table(BATCHES)
                .map_err(storage("discarding a batch"))?;
            table
                .get((resource, seq))
                .map_err(storage("discarding a batch"))?
                .map(|v| (v.value().len() as u64, decode_header(v.value())))
        };
        let Some((bytes, header)) = old else {
            return Ok(None);
        };
        let records = header?.0;
        let value = encode_batch(b"", 0, batch::DEFAULT_LEVEL);
        {
            let mut table = txn
                .tx
                .open_table(BATCHES)
                .map_err(storage("discarding a batch"))?;
            table
                .insert((resource, seq), value.as_slice())
                .map_err(storage("discarding a batch"))?;
        }
        state.queued_records = state.queued_records.saturating_sub(u64::from(records));
        state.queued_bytes = state.queued_bytes.saturating_sub(bytes) + value.len() as u64;
        txn.set_state(resource, &state)?;
        txn.commit()?;
        Ok(Some(records))
    }
}

/// Replacing a batch the hub refused because of one record.
impl Queue {
    /// Replaces batch `seq` of `resource`, as it was sent (digest `sent`), by `rest`: the
    /// batch without the record the hub refused (docs/PROTOCOL.md §7 `record`), and
    /// quarantines that record under `key` with `reason`, in one transaction. The batch keeps
    /// its seq and creation time; its digest and count are `rest`'s (the hub applied nothing
    /// of it, so the seq is free for them). Returns whether it was done: not when the batch is
    /// no longer queued as it was sent (acknowledged, or discarded by an operator meanwhile).
    pub fn replace_refused(
        &self,
        resource: &str,
        seq: u64,
        sent: &str,
        rest: &Encoded,
        key: Option<String>,
        reason: Text,
    ) -> Result<bool, QueueError> {
        let context = "replacing a refused batch";
        let mut txn = self.begin()?;
        let mut state = txn.state(resource)?;
        let mut value = rest.value.clone();
        {
            let mut table = txn.tx.open_table(BATCHES).map_err(storage(context))?;
            let old = table.get((resource, seq)).map_err(storage(context))?;
            let Some(old) = old.map(|v| v.value().to_vec()) else {
                return Ok(false);
            };
            let (records, _, created, digest) = decode_header(&old)?;
            if !hex::encode(digest).eq_ignore_ascii_case(sent) {
                return Ok(false);
            }
            value[8..16].copy_from_slice(&created.to_le_bytes());
            table
                .insert((resource, seq), value.as_slice())
                .map_err(storage(context))?;
            let removed = u64::from(records.saturating_sub(rest.records));
            state.queued_records = state.queued_records.saturating_sub(removed);
            state.queued_bytes =
                state.queued_bytes.saturating_sub(old.len() as u64) + value.len() as u64;
        }
        txn.quarantine(resource, &mut state, key, reason)?;
        txn.set_state(resource, &state)?;
        txn.commit()?;
        Ok(true)
    }
}

impl Txn {
    /// Appends a batch (post-policy NDJSON, compressed at the default level) for a resource;
    /// assigns the next seq and updates the counters in `state` (which the caller then stores
    /// with [`Txn::set_state`]).
    pub fn enqueue(
        &mut self,
        resource: &str,
        state: &mut ResourceState,
        ndjson: &[u8],
        records: u32,
    ) -> Result<u64, QueueError> {
        self.enqueue_encoded(
            resource,
            state,
            &Encoded::new(ndjson, records, batch::DEFAULT_LEVEL),
        )
    }

    /// [`Txn::enqueue`] of a batch encoded before the transaction began (digest and
    /// compression need not hold the queue's single writer lock).
    pub fn enqueue_encoded(
        &mut self,
        resource: &str,
        state: &mut ResourceState,
        batch: &Encoded,
    ) -> Result<u64, QueueError> {
        let seq = state.next_seq.max(1);
        let mut table = self
            .tx
            .open_table(BATCHES)
            .map_err(storage("writing a batch"))?;
        table
            .insert((resource, seq), batch.value.as_slice())
            .map_err(storage("writing a batch"))?;
        state.next_seq = seq + 1;
        state.queued_batches += 1;
        state.queued_records += u64::from(batch.records);
        state.queued_bytes += batch.value.len() as u64;
        state.pulled_records += u64::from(batch.records);
        Ok(seq)
    }

    /// Removes batch `seq`: its stored length and its header's record count, if it was queued.
    fn remove_batch(&mut self, resource: &str, seq: u64) -> Result<Option<(u64, u32)>, QueueError> {
        let mut table = self
            .tx
            .open_table(BATCHES)
            .map_err(storage("removing a batch"))?;
        let removed = table
            .remove((resource, seq))
            .map_err(storage("removing a batch"))?;
        removed
            .map(|v| Ok((v.value().len() as u64, decode_header(v.value())?.0)))
            .transpose()
    }

    /// Removes every queued batch of a resource (a resync).
    pub(super) fn discard_batches(&mut self, resource: &str) -> Result<(), QueueError> {
        self.tx
            .open_table(BATCHES)
            .map_err(storage("discarding batches"))?
            .retain_in(seqs_from(resource, 0), |_, _| false)
            .map_err(storage("discarding batches"))
    }
}

/// The keys of a resource's batches from seq `first` on.
fn seqs_from(resource: &str, first: u64) -> std::ops::RangeInclusive<(&str, u64)> {
    (resource, first)..=(resource, u64::MAX)
}

/// The stored form of a batch: header, then the zstd-compressed NDJSON.
fn encode_batch(ndjson: &[u8], records: u32, level: i32) -> Vec<u8> {
    let digest = exchange_protocol::digest::sm3(ndjson);
    let body = batch::compress_at(ndjson, level);
    let mut value = Vec::with_capacity(HEADER_LEN + body.len());
    value.extend_from_slice(&records.to_le_bytes());
    value.extend_from_slice(&(ndjson.len() as u32).to_le_bytes());
    value.extend_from_slice(&chrono::Utc::now().timestamp_millis().to_le_bytes());
    value.extend_from_slice(&digest);
    value.extend_from_slice(&body);
    value
}

fn decode_header(v: &[u8]) -> Result<(u32, u32, i64, [u8; 32]), QueueError> {
    if v.len() < HEADER_LEN {
        return Err(QueueError::Format("batch shorter than its header".into()));
    }
    let records = u32::from_le_bytes(v[0..4].try_into().expect("4 bytes"));
    let raw_len = u32::from_le_bytes(v[4..8].try_into().expect("4 bytes"));
    let created = i64::from_le_bytes(v[8..16].try_into().expect("8 bytes"));
    let digest: [u8; 32] = v[16..48].try_into().expect("32 bytes");
    Ok((records, raw_len, created, digest))
}

fn decode_batch(seq: u64, v: &[u8]) -> Result<StoredBatch, QueueError> {
    let (records, raw_len, _created, digest) = decode_header(v)?;
    Ok(StoredBatch {
        seq,
        records,
        raw_len,
        digest: hex::encode(digest),
        body: v[HEADER_LEN..].to_vec(),
    })
}

/// A batch in its stored form (header and compressed body), ready for
/// [`Txn::enqueue_encoded`].
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The stored value.
    value: Vec<u8>,
    /// Records in it.
    records: u32,
}

impl Encoded {
    /// Digests and compresses (zstd `level`) post-policy NDJSON holding `records` records.
    pub fn new(ndjson: &[u8], records: u32, level: i32) -> Encoded {
        Encoded {
            value: encode_batch(ndjson, records, level),
            records,
        }
    }

    /// Records in the batch.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// SM3 of the NDJSON, hex.
    pub fn digest(&self) -> String {
        hex::encode(&self.value[16..HEADER_LEN])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_compressed_at_the_level_asked_and_reads_back_the_same() {
        let ndjson: Vec<u8> = (0..2000)
            .flat_map(|i| {
                format!(
                    "{{\"op\":\"upsert\",\"key\":\"k{i}\",\"fields\":{{\"n\":{}}}}}\n",
                    i * 7
                )
                .into_bytes()
            })
            .collect();
        let fast = Encoded::new(&ndjson, 2000, -7);
        let small = Encoded::new(&ndjson, 2000, 9);
        assert!(
            small.value.len() < fast.value.len(),
            "{} {}",
            small.value.len(),
            fast.value.len()
        );
        assert_eq!(fast.digest(), small.digest());
        for e in [fast, small] {
            let body = batch::decompress(&e.value[HEADER_LEN..], ndjson.len()).unwrap();
            assert_eq!(body, ndjson);
        }
    }

    #[test]
    fn a_refused_record_leaves_its_batch_for_quarantine_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("data")).unwrap();
        let body = b"{\"op\":\"delete\",\"key\":\"a\"}\n{\"op\":\"delete\",\"key\":\"b\"}\n{\"op\":\"delete\",\"key\":\"c\"}\n";
        let mut txn = q.begin().unwrap();
        let mut st = txn.state("R").unwrap();
        txn.enqueue("R", &mut st, body, 3).unwrap();
        txn.enqueue("R", &mut st, b"{}\n", 1).unwrap();
        txn.set_state("R", &st).unwrap();
        txn.commit().unwrap();
        let before = q.batches("R").unwrap();
        let sent = before[0].digest.clone();
        let (rest, line) = batch::remove_line(body, 1).unwrap();
        assert_eq!(line, b"{\"op\":\"delete\",\"key\":\"b\"}");
        let rest = Encoded::new(&rest, 2, batch::DEFAULT_LEVEL);
        let reason = || "refused by the hub: the key is empty".to_owned();

        // Not the batch that was sent: nothing changes.
        assert!(
            !q.replace_refused(
                "R",
                1,
                &"0".repeat(64),
                &rest,
                Some("b".into()),
                reason().into()
            )
            .unwrap()
        );
        assert!(q.quarantined("R", 10).unwrap().is_empty());

        assert!(
            q.replace_refused("R", 1, &sent, &rest, Some("b".into()), reason().into())
                .unwrap()
        );
        let after = q.batches("R").unwrap();
        assert_eq!((after[0].seq, after[0].records), (1, 2));
        assert_eq!(
            after[0].digest,
            batch::digest_hex(
                b"{\"op\":\"delete\",\"key\":\"a\"}\n{\"op\":\"delete\",\"key\":\"c\"}\n"
            )
        );
        assert_eq!(after[0].digest, rest.digest());
        assert_eq!(
            after[0].created, before[0].created,
            "its creation time is kept"
        );
        assert_eq!(
            after[1].digest, before[1].digest,
            "other batches are untouched"
        );
        let state = q.state("R").unwrap();
        assert_eq!(
            (state.queued_batches, state.queued_records, state.next_seq),
            (2, 3, 3)
        );
        assert_eq!(
            state.queued_bytes,
            after.iter().map(|b| b.stored_bytes).sum::<u64>()
        );
        assert_eq!(state.quarantined, 1);
        let entries = q.quarantined("R", 10).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].key.as_deref(), Some("b"));
        assert_eq!(entries[0].reason, reason().into());

        // The refusal of the batch as it was sent, again: already done.
        assert!(
            !q.replace_refused("R", 1, &sent, &rest, Some("b".into()), reason().into())
                .unwrap()
        );
        assert_eq!(q.state("R").unwrap().queued_records, 3);
    }
}
