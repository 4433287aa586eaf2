//! Writing a batch's records to PostgreSQL, in body order, one statement per [`Run`]: new keys
//! copied in, other upserts by `INSERT … ON CONFLICT`, deletes by key. Runs inside the batch's
//! transaction (`batch.rs`), which decides when.

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Statement, Transaction};

use super::{PgStore, Run, runs};
use crate::store::{Batch, StoreError};

/// Upsert runs per batch whose new keys may be copied in under a savepoint without a probe of
/// every key (each attempt is a subtransaction; PostgreSQL caches 64 per backend); later runs
/// are upserted.
const COPY_ATTEMPTS: usize = 32;

/// The keys of one upsert run, with their fields and flags.
struct UpsertRun<'a> {
    /// The keys, distinct.
    keys: &'a [&'a str],
    /// Each key's fields, JSON object text.
    fields: &'a [&'a str],
    /// Each key's flags, JSON array text (`None`: no flags).
    flags: &'a [Option<&'a str>],
}

/// The statements of [`PgStore::write_runs`], prepared once per batch.
struct Statements {
    upsert: Statement,
    first_exists: Statement,
    delete: Statement,
}

impl PgStore {
    /// Writes the batch's changes in body order, one statement per [`Run`].
    ///
    /// New keys are copied in (`COPY … FROM STDIN`, binary), which costs PostgreSQL less than
    /// half of `INSERT … ON CONFLICT` per row (a first sync, a baseline into an empty store).
    /// Whether a run's keys are new is not probed key by key (that probe was a third of the
    /// store's time per batch of new keys): when the run's first key is new, the COPY is tried
    /// under a savepoint, and a key that exists after all (a mixed run, or one inserted
    /// meanwhile by another transaction) fails it with a unique violation, which rolls back
    /// to the savepoint and upserts the run instead. Past [`COPY_ATTEMPTS`] runs in one batch
    /// the upsert is used, so a batch of many short runs never holds more subtransactions
    /// than PostgreSQL caches per backend.
    pub(super) async fn write_runs(
        &self,
        tx: &Transaction<'_>,
        batch: &Batch,
    ) -> Result<(), StoreError> {
        let e = |e: tokio_postgres::Error| self.error(e);
        let statements = Statements {
            upsert: tx
                .prepare(
                    "INSERT INTO records (resource, key, node, fields, updated_at, stream, flags)
                     SELECT $1, u.key, $2, u.fields, $3, $4, u.flags
                     FROM unnest($5::text[], $6::text[], $7::text[]) AS u(key, fields, flags)
                     ON CONFLICT (resource, key) DO UPDATE
                     SET node = EXCLUDED.node, fields = EXCLUDED.fields, updated_at = EXCLUDED.updated_at,
                         stream = EXCLUDED.stream, flags = EXCLUDED.flags",
                )
                .await
                .map_err(e)?,
            first_exists: tx
                .prepare("SELECT EXISTS (SELECT 1 FROM records WHERE resource = $1 AND key = $2)")
                .await
                .map_err(e)?,
            delete: tx
                .prepare("DELETE FROM records WHERE resource = $1 AND key = ANY($2::text[])")
                .await
                .map_err(e)?,
        };
        let mut attempts = 0;
        for run in runs(&batch.changes) {
            match run {
                Run::Upsert {
                    keys,
                    fields,
                    flags,
                } => {
                    let run = UpsertRun {
                        keys: &keys,
                        fields: &fields,
                        flags: &flags,
                    };
                    let may_copy = attempts < COPY_ATTEMPTS;
                    attempts += 1;
                    self.upsert_run(tx, batch, &statements, &run, may_copy)
                        .await?;
                }
                Run::Delete { keys } => {
                    tx.execute(&statements.delete, &[&batch.id.resource, &keys])
                        .await
                        .map_err(e)?;
                }
            }
        }
        Ok(())
    }

    /// Writes one run of upserts: copied in when `may_copy` and its first key is new (and
    /// none of the others exists after all), else by `INSERT … ON CONFLICT`.
    async fn upsert_run(
        &self,
        tx: &Transaction<'_>,
        batch: &Batch,
        statements: &Statements,
        run: &UpsertRun<'_>,
        may_copy: bool,
    ) -> Result<(), StoreError> {
        let id = &batch.id;
        let e = |e: tokio_postgres::Error| self.error(e);
        if may_copy {
            let exists: bool = tx
                .query_one(&statements.first_exists, &[&id.resource, &run.keys[0]])
                .await
                .map_err(e)?
                .get(0);
            if !exists && self.try_copy_new(tx, batch, run).await? {
                return Ok(());
            }
        }
        tx.execute(
            &statements.upsert,
            &[
                &id.resource,
                &id.node,
                &batch.now,
                &id.stream,
                &run.keys,
                &run.fields,
                &run.flags,
            ],
        )
        .await
        .map_err(e)?;
        Ok(())
    }

    /// Copies a run's keys in under a savepoint: `false`, with nothing written, when one of
    /// them exists (a unique violation rolls back to the savepoint).
    async fn try_copy_new(
        &self,
        tx: &Transaction<'_>,
        batch: &Batch,
        rows: &UpsertRun<'_>,
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
        rows: &UpsertRun<'_>,
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
