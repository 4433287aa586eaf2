//! Writing to PostgreSQL: a batch in one transaction (the checks of [`admission`], one
//! statement per [`Run`] of changes, the baseline sweep, the new high-water mark), and a
//! catalogue entry.

use std::sync::Arc;

use exchange_protocol::batch::BatchId;
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::{PgStore, Run, runs};
use crate::store::inflight::Hold;
use crate::store::{Batch, CatalogueRecord, Change, Outcome, StoreError, admission};

/// Upsert runs per batch whose new keys may be copied in under a savepoint without a probe of
/// every key (each attempt is a subtransaction; PostgreSQL caches 64 per backend); later runs
/// are upserted.
const COPY_ATTEMPTS: usize = 32;

/// The answer to a batch that is not written: refused (not the owner, not shared), or a
/// duplicate or a gap.
type Stop = Result<Outcome, StoreError>;

/// The new keys of one upsert run, with their fields and flags.
struct NewRows<'a> {
    /// The keys, none of them in the store yet.
    keys: &'a [&'a str],
    /// Each key's fields, JSON object text.
    fields: &'a [&'a str],
    /// Each key's flags, JSON array text (`None`: no flags).
    flags: &'a [Option<&'a str>],
}

impl PgStore {
    /// Applies a batch in one transaction: applied, duplicate or gap.
    ///
    /// A batch of upserts only, without the baseline mark, is written before the stream's
    /// row is locked, and `hold` (what keeps the stream's next batch waiting) is released once
    /// it is: so the next batch writes its records while this one moves the mark and commits,
    /// and is judged against the mark only after this transaction ends (its `FOR UPDATE`
    /// waits for it). Its writes cannot miss the previous batch's: an insert or an upsert
    /// waits for an uncommitted row of the same key and then sees it. A batch that turns out
    /// to be a duplicate or a gap rolls its writes back with everything else.
    ///
    /// A batch with a delete, or with the baseline mark, locks the stream's row first (so the
    /// previous batch has committed) and holds its successors until it commits: a `DELETE`
    /// does not see, nor wait for, a row inserted by a transaction still open, and a sweep
    /// waiting for the next batch's rows while that batch waits for the mark would deadlock.
    pub(in crate::store) async fn apply(
        self: &Arc<Self>,
        batch: Batch,
        hold: Hold,
    ) -> Result<Outcome, StoreError> {
        let id = &batch.id;
        let seq = admission::stored_seq(id.seq, &self.target)?;
        let mut pooled = self.get().await?;
        let e = |e: tokio_postgres::Error| self.error(e);
        let tx = pooled.client().transaction().await.map_err(e)?;
        if let Some(stop) = self.admit(&tx, id).await? {
            tx.rollback().await.map_err(e)?;
            return stop;
        }
        let ahead = !batch.baseline
            && batch
                .changes
                .iter()
                .all(|c| matches!(c, Change::Upsert { .. }));
        let mut hold = Some(hold);
        if ahead {
            self.write_runs(&tx, &batch).await?;
        }
        let stop = self.against_mark(&tx, id, seq).await?;
        if ahead {
            hold.take();
        }
        if let Some(stop) = stop {
            // Also undoes the records written and the stream row inserted for a new stream.
            tx.rollback().await.map_err(e)?;
            return stop;
        }
        if !ahead {
            self.write_runs(&tx, &batch).await?;
        }
        let swept = if batch.baseline {
            tx.execute(
                "DELETE FROM records WHERE resource = $1 AND stream IS DISTINCT FROM $2",
                &[&id.resource, &id.stream],
            )
            .await
            .map_err(e)?
        } else {
            0
        };
        tx.execute(
            "UPDATE streams SET last_seq = $4, last_digest = $5 WHERE node = $1 AND resource = $2 AND stream = $3",
            &[&id.node, &id.resource, &id.stream, &seq, &batch.digest],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)?;
        drop(hold);
        Ok(Outcome::Applied {
            records: batch.changes.len() as u64,
            swept,
        })
    }

    /// Stores a catalogue entry (ownership checked) in one transaction.
    pub(in crate::store) async fn record_catalogue(
        self: &Arc<Self>,
        c: CatalogueRecord,
    ) -> Result<(), StoreError> {
        let mut pooled = self.get().await?;
        let e = |e: tokio_postgres::Error| self.error(e);
        let tx = pooled.client().transaction().await.map_err(e)?;
        if let Err(refused) = self.claim(&tx, &c.resource, &c.node).await? {
            tx.rollback().await.map_err(e)?;
            return Err(refused);
        }
        tx.execute(
            "INSERT INTO catalogue (resource, node, entry, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (resource) DO UPDATE SET node = EXCLUDED.node, entry = EXCLUDED.entry,
                 updated_at = EXCLUDED.updated_at",
            &[&c.resource, &c.node, &c.entry, &c.updated_at],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)
    }

    /// Records `node` as the provider of `resource` if it has none; the inner error refuses
    /// another node's (the outer one is a database failure).
    async fn claim(
        &self,
        tx: &Transaction<'_>,
        resource: &str,
        node: &str,
    ) -> Result<Result<(), StoreError>, StoreError> {
        let e = |e: tokio_postgres::Error| self.error(e);
        tx.execute(
            "INSERT INTO resources (resource, node) VALUES ($1, $2) ON CONFLICT (resource) DO NOTHING",
            &[&resource, &node],
        )
        .await
        .map_err(e)?;
        let owner: String = tx
            .query_one(
                "SELECT node FROM resources WHERE resource = $1",
                &[&resource],
            )
            .await
            .map_err(e)?
            .get(0);
        Ok(admission::check_owner(resource, owner, node))
    }

    /// The checks before a batch of `id` is written (owner, share): `None` to write it, else
    /// its [`Stop`]. Nothing here waits for the stream's previous batch.
    async fn admit(&self, tx: &Transaction<'_>, id: &BatchId) -> Result<Option<Stop>, StoreError> {
        let e = |e: tokio_postgres::Error| self.error(e);
        if let Err(refused) = self.claim(tx, &id.resource, &id.node).await? {
            return Ok(Some(Err(refused)));
        }
        let not_shared: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM catalogue WHERE resource = $1 AND (entry::jsonb ->> 'share') = 'none')",
                &[&id.resource],
            )
            .await
            .map_err(e)?
            .get(0);
        if let Err(refused) = admission::check_shared(&id.resource, &id.node, not_shared) {
            return Ok(Some(Err(refused)));
        }
        Ok(None)
    }

    /// Batch `seq` of `id` against its stream's high-water mark, the stream's row locked
    /// until COMMIT (waiting for a transaction of the stream's previous batch to end first):
    /// `None` to commit it, else its [`Stop`].
    async fn against_mark(
        &self,
        tx: &Transaction<'_>,
        id: &BatchId,
        seq: i64,
    ) -> Result<Option<Stop>, StoreError> {
        let e = |e: tokio_postgres::Error| self.error(e);
        tx.execute(
            "INSERT INTO streams (node, resource, stream, last_seq) VALUES ($1, $2, $3, 0)
             ON CONFLICT (node, resource, stream) DO NOTHING",
            &[&id.node, &id.resource, &id.stream],
        )
        .await
        .map_err(e)?;
        // Locks the stream row until COMMIT: a concurrent copy of this batch waits here and
        // then sees the new high-water mark.
        let row = tx
            .query_one(
                "SELECT last_seq, last_digest FROM streams WHERE node = $1 AND resource = $2 AND stream = $3 FOR UPDATE",
                &[&id.node, &id.resource, &id.stream],
            )
            .await
            .map_err(e)?;
        Ok(admission::against_mark(seq, row.get(0), row.get(1)).map(Ok))
    }

    /// Writes the batch's changes in body order, one statement per [`Run`].
    async fn write_runs(&self, tx: &Transaction<'_>, batch: &Batch) -> Result<(), StoreError> {
        let id = &batch.id;
        let e = |e: tokio_postgres::Error| self.error(e);
        let upsert = tx
            .prepare(
                "INSERT INTO records (resource, key, node, fields, updated_at, stream, flags)
                 SELECT $1, u.key, $2, u.fields, $3, $4, u.flags
                 FROM unnest($5::text[], $6::text[], $7::text[]) AS u(key, fields, flags)
                 ON CONFLICT (resource, key) DO UPDATE
                 SET node = EXCLUDED.node, fields = EXCLUDED.fields, updated_at = EXCLUDED.updated_at,
                     stream = EXCLUDED.stream, flags = EXCLUDED.flags",
            )
            .await
            .map_err(e)?;
        // New keys are copied in (`COPY … FROM STDIN`, binary), which costs PostgreSQL less
        // than half of `INSERT … ON CONFLICT` per row (a first sync, a baseline into an empty
        // store). Whether a run's keys are new is not probed key by key (that probe was a
        // third of the store's time per batch of new keys): when the run's first key is new,
        // the COPY is tried under a savepoint, and a key that exists after all (a mixed run, or
        // one inserted meanwhile by another transaction) fails it with a unique violation,
        // which rolls back to the savepoint and upserts the run instead. Past
        // [`COPY_ATTEMPTS`] runs in one batch the upsert is used, so a batch of many short
        // runs never holds more subtransactions than PostgreSQL caches per backend.
        let first_exists = tx
            .prepare("SELECT EXISTS (SELECT 1 FROM records WHERE resource = $1 AND key = $2)")
            .await
            .map_err(e)?;
        let delete = tx
            .prepare("DELETE FROM records WHERE resource = $1 AND key = ANY($2::text[])")
            .await
            .map_err(e)?;
        let mut attempts = 0;
        for run in runs(&batch.changes) {
            match run {
                Run::Upsert {
                    keys,
                    fields,
                    flags,
                } => {
                    let rows = NewRows {
                        keys: &keys,
                        fields: &fields,
                        flags: &flags,
                    };
                    let copied = if attempts < COPY_ATTEMPTS {
                        attempts += 1;
                        let exists: bool = tx
                            .query_one(&first_exists, &[&id.resource, &keys[0]])
                            .await
                            .map_err(e)?
                            .get(0);
                        !exists && self.try_copy_new(tx, batch, &rows).await?
                    } else {
                        false
                    };
                    if !copied {
                        tx.execute(
                            &upsert,
                            &[
                                &id.resource,
                                &id.node,
                                &batch.now,
                                &id.stream,
                                &keys,
                                &fields,
                                &flags,
                            ],
                        )
                        .await
                        .map_err(e)?;
                    }
                }
                Run::Delete { keys } => {
                    tx.execute(&delete, &[&id.resource, &keys])
                        .await
                        .map_err(e)?;
                }
            }
        }
        Ok(())
    }

    /// Copies a run's keys in under a savepoint: `false`, with nothing written, when one of
    /// them exists (a unique violation rolls back to the savepoint).
    async fn try_copy_new(
        &self,
        tx: &Transaction<'_>,
        batch: &Batch,
        rows: &NewRows<'_>,
    ) -> Result<bool, StoreError> {
        let e = |e: tokio_postgres::Error| self.error(e);
        tx.batch_execute("SAVEPOINT new_keys").await.map_err(e)?;
        match self.copy_new(tx, batch, rows).await {
            Ok(()) => {
                tx.batch_execute("RELEASE SAVEPOINT new_keys")
                    .await
                    .map_err(e)?;
                Ok(true)
            }
            Err(copy) if copy.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT new_keys; RELEASE SAVEPOINT new_keys")
                    .await
                    .map_err(e)?;
                Ok(false)
            }
            Err(other) => Err(e(other)),
        }
    }

    /// Inserts keys that do not exist yet by `COPY … FROM STDIN` in binary.
    async fn copy_new(
        &self,
        tx: &Transaction<'_>,
        batch: &Batch,
        rows: &NewRows<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        let id = &batch.id;
        let sink = tx
            .copy_in(
                "COPY records (resource, key, node, fields, updated_at, stream, flags) \
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT; 7]);
        let mut writer = std::pin::pin!(writer);
        for ((key, fields), flags) in rows.keys.iter().zip(rows.fields).zip(rows.flags) {
            writer
                .as_mut()
                .write(&[
                    &id.resource,
                    key,
                    &id.node,
                    fields,
                    &batch.now,
                    &id.stream,
                    flags,
                ])
                .await?;
        }
        writer.as_mut().finish().await?;
        Ok(())
    }
}
