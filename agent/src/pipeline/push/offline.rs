//! Offline exchange (`[hub] mode = "offline"`, docs/PROTOCOL.md §12): each queued batch
//! leaves as a signed file in the outbox, which a one-way gateway (网闸) or removable media
//! carries to the hub; the hub's signed answer files come back into the inbox (`inbox`) and
//! are read exactly as the online answers are (`answer`).
//!
//! Invariants (those of online pushing, with files for requests):
//! - a batch is written only after the queue's committed bound `sent_through` covers it, so a
//!   `duplicate` answer is judged as online;
//! - a batch leaves the queue only on a verified answer of the hub for its seq and digest,
//!   in seq order (`inbox`); nothing is dropped whatever arrives;
//! - files are written whole or not at all (`offline::write_atomic`); writing one again is
//!   harmless (the hub imports it as a duplicate);
//! - what was written is kept across restarts (`writings`); the oldest queued batch and those
//!   after it are written again when its latest writing is `resend_after` old (a file lost on
//!   the way), when an answer to a later batch says the hub lacks it, or when an answer to an
//!   older writing of it says the hub lacks earlier ones (such an answer may be stale: only
//!   one to a writing after the last release can stop the resource); a batch whose record the
//!   hub refused is rewritten without it at once.
//!
//! The queue and its stream are those of online pushing: switching `mode` keeps both, and a
//! batch already sent one way is acknowledged as a duplicate the other way.

use std::path::Path;

use exchange_protocol::batch::BatchId;
use exchange_protocol::offline::{self, Kind, OfflineFile};
use exchange_protocol::signature::BatchSigner;
use exchange_protocol::tls;
use rustls::pki_types::{CertificateDer, ServerName};

use super::error::PushError;
use super::flight::InFlight;
use super::inbox::Inbox;
use super::window::{baseline_seq, raise_sent_through, read_after};
use super::writings::Writings;
use crate::config::{Config, Offline};
use crate::pipeline::queue::{MAX_IN_FLIGHT, Queue, StoredBatch};

/// The agent's side of offline exchange: its directories, its signing identity and the
/// hub's, and what it wrote.
pub struct OfflineLink {
    /// The node id.
    node: String,
    /// The directories and the resend delay.
    dirs: Offline,
    /// Signs batch files with the node's key.
    signer: BatchSigner,
    /// The node's certificate chain, carried in every batch file.
    chain: Vec<CertificateDer<'static>>,
    /// The inbox, with what the hub's answers are checked against.
    inbox: Inbox,
    /// The queue's own stream.
    stream: String,
    /// What was written, per resource.
    writings: Writings,
}

impl OfflineLink {
    /// The link of `config` (which must be offline), for the queue's stream `stream`.
    pub fn new(config: &Config, dirs: &Offline, stream: &str) -> Result<OfflineLink, PushError> {
        let key = tls::load_key(&config.hub.tls.key)?;
        let signer = BatchSigner::new(&key).map_err(|e| PushError::Offline {
            dir: dirs.outbox.clone(),
            reason: e.to_string(),
        })?;
        let chain = tls::load_certs("client certificate", &config.hub.tls.cert)?;
        let verifier = tls::server_certificate_verifier(&config.hub.tls)?;
        let host = hub_host(&config.hub.url);
        let hub_name = ServerName::try_from(host).map_err(|e| PushError::Offline {
            dir: dirs.inbox.clone(),
            reason: e.to_string(),
        })?;
        remove_leftovers(&dirs.outbox);
        Ok(OfflineLink {
            node: config.node.id.clone(),
            dirs: dirs.clone(),
            signer,
            chain,
            inbox: Inbox::new(
                dirs.inbox.clone(),
                (
                    config.node.id.clone(),
                    config
                        .resources
                        .iter()
                        .filter(|r| r.share.delivers())
                        .map(|r| r.code.clone())
                        .collect(),
                ),
                config.hub.url.clone(),
                verifier,
                hub_name,
            ),
            stream: stream.to_owned(),
            writings: Writings::open(&config.node.data_dir, dirs.resend_after),
        })
    }

    /// Whether every batch of `resource` still queued was written (a sync has nothing more
    /// to do for it).
    pub fn all_written(&self, queue: &Queue, resource: &str) -> bool {
        let through = self.written_through(resource);
        match queue.state(resource) {
            Ok(st) => st.next_seq.saturating_sub(1) <= through || st.queued_batches == 0,
            Err(_) => false,
        }
    }

    /// Batches of `resource` up to this seq were written to the outbox.
    pub fn written_through(&self, resource: &str) -> u64 {
        self.writings.through(resource)
    }

    /// The batch file of `b` as `id`.
    fn batch_file(
        &self,
        id: &BatchId,
        b: &StoredBatch,
        baseline: bool,
    ) -> Result<OfflineFile, PushError> {
        let mut headers: Vec<(String, String)> =
            super::client::batch_headers(id, b, baseline, Some(&self.signer))
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v))
                .collect();
        offline::push_certificates(&mut headers, &self.chain);
        let mut file = OfflineFile {
            kind: Kind::Batch,
            headers,
            body: b.body.clone(),
        };
        let signature = self
            .signer
            .sign_message(&file.file_message())
            .map_err(|e| PushError::Offline {
                dir: self.dirs.outbox.clone(),
                reason: e.to_string(),
            })?;
        file.headers
            .push((offline::FILE_SIGNATURE.to_owned(), signature));
        Ok(file)
    }
}

/// Removes from `outbox` the batch files of `resource` on `stream` (a resync's old stream: its
/// batches must not reach the hub after the new stream's baseline, docs/PROTOCOL.md §5.1);
/// returns how many. Files that cannot be read as batch files are left alone.
pub fn withdraw(outbox: &Path, resource: &str, stream: &str) -> std::io::Result<usize> {
    let mut removed = 0;
    for path in offline::list(outbox, Kind::Batch)? {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let id = OfflineFile::parse(Kind::Batch, &bytes).and_then(|f| f.batch_id());
        if id.is_ok_and(|id| id.resource == resource && id.stream == stream) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// One offline exchange of `resource`: the hub's answers in the inbox are read (each batch
/// answered leaves the queue, `acked` called after each), then the batches due are written
/// to the outbox. Returns how many batches were answered or written (0: nothing to do).
pub async fn push_offline(
    link: &OfflineLink,
    queue: &Queue,
    resource: &str,
    acked: &(dyn Fn() + Sync),
) -> Result<usize, PushError> {
    let (_, state) = read_after(queue, resource, 0).await?;
    if let Some(halt) = state.halt {
        return Err(PushError::Halted {
            resource: resource.to_owned(),
            reason: halt.reason,
        });
    }
    let stream = state.stream_or(&link.stream).to_owned();
    let flight = InFlight::new(queue, resource, stream, state.sent_through);
    let latest = |seq: u64, file_sm3: &str| link.writings.is_latest(resource, seq, file_sm3);
    // A release is noted before the next answer is judged: an answer to a writing made before
    // it may be stale.
    let released = || {
        link.writings.released(resource);
        acked();
    };
    let received = super::inbox::receive(&link.inbox, &flight, &latest, &released).await?;
    if let Some(seq) = received.rewritten {
        link.writings.rewrite_from(resource, seq);
    }
    let written = write_due(link, &flight).await;
    // Kept once per call, whatever was written before a failure.
    link.writings.flush();
    let written = written?;
    if written > 0 {
        // The outbox takes files again: an earlier failure to write is over.
        acked();
        tracing::info!(
            resource,
            written,
            outbox = %link.dirs.outbox.display(),
            "Batch files written to the outbox."
        );
    }
    Ok(received.released + written)
}

/// Writes the queued batches this process has not written (all of them when they are due
/// again), raising the committed bound first.
async fn write_due(link: &OfflineLink, flight: &InFlight<'_>) -> Result<usize, PushError> {
    let resource = flight.resource;
    let head = flight.queue.head(resource)?.map(|b| b.seq);
    let mut after = link.writings.due(resource, &flight.stream, head);
    let mut written = 0;
    loop {
        let (page, state) = read_after(flight.queue, resource, after).await?;
        let Some(last) = page.last().map(|b| b.seq) else {
            return Ok(written);
        };
        if last > flight.sent_through() {
            let raised = raise_sent_through(flight, last).await?;
            flight.raised_to(raised);
        }
        let baseline = baseline_seq(&state);
        for b in page.iter().filter(|b| b.seq <= flight.sent_through()) {
            let id = BatchId {
                node: link.node.clone(),
                resource: resource.to_owned(),
                stream: flight.stream.clone(),
                seq: b.seq,
            };
            let bytes = link.batch_file(&id, b, baseline == Some(b.seq))?.to_bytes();
            let file_sm3 = exchange_protocol::digest::sm3_hex(&bytes);
            let dir = link.dirs.outbox.clone();
            let name = offline::file_name(Kind::Batch, &id);
            tokio::task::spawn_blocking(move || write_file(&dir, &name, &bytes))
                .await
                .expect("outbox task panicked")?;
            link.writings.wrote(resource, b.seq, file_sm3);
            written += 1;
            tracing::debug!(resource, seq = b.seq, "Batch written to the outbox.");
        }
        if page.len() < MAX_IN_FLIGHT {
            return Ok(written);
        }
        after = last;
    }
}

/// The host of the hub's URL (`https://HOST:PORT/…`, an IPv6 address in brackets): the name
/// its certificate must hold.
fn hub_host(url: &str) -> String {
    let authority = url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default();
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default().to_owned(),
        None => authority.split(':').next().unwrap_or_default().to_owned(),
    }
}

/// Removes temporary files a crash left in the outbox (`.NAME.tmp`, `offline::write_atomic`)
/// once they are an hour old (a younger one may be a running writer's: `check` builds a link
/// too).
fn remove_leftovers(outbox: &Path) {
    let Ok(entries) = std::fs::read_dir(outbox) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if name.starts_with('.') && name.ends_with(".tmp") && old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), PushError> {
    offline::write_atomic(dir, name, bytes)
        .map(|_| ())
        .map_err(|e| PushError::Offline {
            dir: dir.to_owned(),
            reason: exchange_protocol::cause::chain(&e),
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_hubs_name_is_the_host_of_its_url() {
        for (url, host) in [
            ("https://hub.example.gov.cn:8443", "hub.example.gov.cn"),
            ("https://10.0.0.5", "10.0.0.5"),
            ("https://[::1]:8443/x", "::1"),
        ] {
            assert_eq!(super::hub_host(url), host);
        }
    }
}
