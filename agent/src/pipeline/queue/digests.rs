//! The `digests` table: the SM3 of each record a snapshot delivered and the scan generation
//! that last saw its row (format in the module doc of [`crate::pipeline::queue`]).

use redb::ReadableTable;

use super::{DIGESTS, QueueError, Txn, storage};

impl Txn {
    /// The stored digest and generation of a delivered record (snapshot mode).
    pub fn digest(&self, resource: &str, key: &str) -> Result<Option<([u8; 32], u64)>, QueueError> {
        let table = self
            .tx
            .open_table(DIGESTS)
            .map_err(storage("reading digests"))?;
        let v = table
            .get((resource, key))
            .map_err(storage("reading digests"))?;
        Ok(v.and_then(|v| {
            let b = v.value();
            (b.len() == 40).then(|| {
                (
                    b[..32].try_into().expect("32"),
                    u64::from_le_bytes(b[32..].try_into().expect("8")),
                )
            })
        }))
    }

    /// Stores the digest and generation of a record.
    pub fn set_digest(
        &mut self,
        resource: &str,
        key: &str,
        digest: &[u8; 32],
        generation: u64,
    ) -> Result<(), QueueError> {
        let mut table = self
            .tx
            .open_table(DIGESTS)
            .map_err(storage("writing digests"))?;
        let mut v = [0u8; 40];
        v[..32].copy_from_slice(digest);
        v[32..].copy_from_slice(&generation.to_le_bytes());
        table
            .insert((resource, key), v.as_slice())
            .map_err(storage("writing digests"))?;
        Ok(())
    }

    /// Up to `limit` keys of a resource whose digest is from an older generation (rows not
    /// seen by the current scan); removes their digests.
    pub fn take_unseen(
        &mut self,
        resource: &str,
        generation: u64,
        limit: usize,
    ) -> Result<Vec<String>, QueueError> {
        let mut table = self
            .tx
            .open_table(DIGESTS)
            .map_err(storage("sweeping digests"))?;
        let mut keys = Vec::new();
        for entry in table
            .range((resource, "")..)
            .map_err(storage("sweeping digests"))?
        {
            let (k, v) = entry.map_err(storage("sweeping digests"))?;
            let (res, key) = k.value();
            if res != resource {
                break;
            }
            let b = v.value();
            let g = if b.len() == 40 {
                u64::from_le_bytes(b[32..].try_into().expect("8"))
            } else {
                0
            };
            if g != generation {
                keys.push(key.to_owned());
                if keys.len() >= limit {
                    break;
                }
            }
        }
        for key in &keys {
            table
                .remove((resource, key.as_str()))
                .map_err(storage("sweeping digests"))?;
        }
        Ok(keys)
    }

    /// Removes every digest of a resource (a resync).
    pub(super) fn discard_digests(&mut self, resource: &str) -> Result<(), QueueError> {
        let mut digests = self
            .tx
            .open_table(DIGESTS)
            .map_err(storage("discarding digests"))?;
        let keys: Vec<String> = digests
            .range((resource, "")..)
            .map_err(storage("discarding digests"))?
            .map_while(|e| match e {
                Ok((k, _)) if k.value().0 == resource => Some(Ok(k.value().1.to_owned())),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()
            .map_err(storage("discarding digests"))?;
        for key in keys {
            digests
                .remove((resource, key.as_str()))
                .map_err(storage("discarding digests"))?;
        }
        Ok(())
    }
}
