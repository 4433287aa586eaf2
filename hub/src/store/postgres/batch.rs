//! Writing to PostgreSQL: a batch in one transaction (the checks of [`admission`], its records
//! as `records.rs` writes them, the baseline sweep, the new high-water mark), and a catalogue
//! entry.

use std::sync::Arc;

use exchange_protocol::batch::BatchId;
use tokio_postgres::Transaction;

use super::PgStore;
use crate::store::inflight::Hold;
use crate::store::{Batch, CatalogueRecord, Change, Outcome, StoreError, admission};

/// The answer to a batch that is not written: refused (not the owner, not shared), or a
/// duplicate or a gap.
type Stop = Result<Outcome, StoreError>;

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
        if let Some(ev) = &batch.evidence {
            tx.execute(
                "INSERT INTO batch_evidence (resource, stream, seq, node, applied_at, sm3, signature, certificate, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                &[&id.resource, &id.stream, &seq, &id.node, &batch.now, &batch.digest, &ev.signature, &ev.certificate, &ev.body],
            )
            .await
            .map_err(e)?;
        }
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
}
