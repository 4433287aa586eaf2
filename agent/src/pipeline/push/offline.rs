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
//! - every batch still queued is written again when the process starts and when no answer
//!   arrived for `resend_after` after the last write (a file lost on the way); a batch whose
//!   record the hub refused is rewritten without it at once.
//!
//! The queue and its stream are those of online pushing: switching `mode` keeps both, and a
//! batch already sent one way is acknowledged as a duplicate the other way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use exchange_protocol::batch::BatchId;
use exchange_protocol::offline::{self, Kind, OfflineFile};
use exchange_protocol::signature::BatchSigner;
use exchange_protocol::tls;
use rustls::pki_types::{CertificateDer, ServerName};

use super::error::PushError;
use super::flight::InFlight;
use super::inbox::Inbox;
use super::window::{baseline_seq, raise_sent_through, read_after};
use crate::config::{Config, Offline};
use crate::pipeline::queue::{MAX_IN_FLIGHT, Queue, StoredBatch};

/// What this process wrote of one resource.
#[derive(Debug, Clone)]
struct Written {
    /// The stream written.
    stream: String,
    /// Every queued batch up to this seq was written by this process.
    through: u64,
    /// When a batch was last written or an answer released one.
    at: Instant,
}

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
    written: Mutex<HashMap<String, Written>>,
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
        let host = config
            .hub
            .url
            .trim_start_matches("https://")
            .split(['/', ':'])
            .next()
            .unwrap_or_default()
            .to_owned();
        let hub_name = ServerName::try_from(host).map_err(|e| PushError::Offline {
            dir: dirs.inbox.clone(),
            reason: e.to_string(),
        })?;
        Ok(OfflineLink {
            node: config.node.id.clone(),
            dirs: dirs.clone(),
            signer,
            chain,
            inbox: Inbox::new(
                dirs.inbox.clone(),
                config.node.id.clone(),
                config.hub.url.clone(),
                verifier,
                hub_name,
            ),
            stream: stream.to_owned(),
            written: Mutex::default(),
        })
    }

    /// Whether every batch of `resource` still queued was written by this process (a sync
    /// has nothing more to do for it).
    pub fn all_written(&self, queue: &Queue, resource: &str) -> bool {
        let through = self.written_through(resource);
        match queue.state(resource) {
            Ok(st) => st.next_seq.saturating_sub(1) <= through || st.queued_batches == 0,
            Err(_) => false,
        }
    }

    /// Batches of `resource` up to this seq were written by this process.
    pub fn written_through(&self, resource: &str) -> u64 {
        self.written().get(resource).map_or(0, |w| w.through)
    }

    /// An answer released a batch of `resource`: the resend clock starts again.
    fn answered(&self, resource: &str) {
        if let Some(w) = self.written().get_mut(resource) {
            w.at = Instant::now();
        }
    }

    /// Batch `seq` of `resource` changed (a record the hub refused was cut out): it and the
    /// batches after it are written again.
    fn rewrite_from(&self, resource: &str, seq: u64) {
        if let Some(w) = self.written().get_mut(resource) {
            w.through = w.through.min(seq.saturating_sub(1));
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<String, Written>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where this process stands with `resource` on `stream`: written through which seq, and
    /// whether everything queued is due again (nothing written yet, or no answer for
    /// `resend_after`).
    fn due(&self, resource: &str, stream: &str) -> u64 {
        let mut written = self.written();
        let w = written
            .entry(resource.to_owned())
            .or_insert_with(|| Written {
                stream: stream.to_owned(),
                through: 0,
                at: Instant::now(),
            });
        if w.stream != stream || w.at.elapsed() >= self.dirs.resend_after {
            w.stream = stream.to_owned();
            w.through = 0;
            w.at = Instant::now();
        }
        w.through
    }

    fn wrote(&self, resource: &str, seq: u64) {
        if let Some(w) = self.written().get_mut(resource) {
            w.through = w.through.max(seq);
            w.at = Instant::now();
        }
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
    let received = super::inbox::receive(&link.inbox, &flight, acked).await?;
    if received.released > 0 {
        link.answered(resource);
    }
    if let Some(seq) = received.rewritten {
        link.rewrite_from(resource, seq);
    }
    let written = write_due(link, &flight).await?;
    if written > 0 {
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
    let mut after = link.due(resource, &flight.stream);
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
            let file = link.batch_file(&id, b, baseline == Some(b.seq))?;
            let dir = link.dirs.outbox.clone();
            let name = offline::file_name(Kind::Batch, &id);
            tokio::task::spawn_blocking(move || write_file(&dir, &name, &file))
                .await
                .expect("outbox task panicked")?;
            link.wrote(resource, b.seq);
            written += 1;
            tracing::debug!(resource, seq = b.seq, "Batch written to the outbox.");
        }
        if page.len() < MAX_IN_FLIGHT {
            return Ok(written);
        }
        after = last;
    }
}

fn write_file(dir: &Path, name: &str, file: &OfflineFile) -> Result<(), PushError> {
    offline::write_atomic(dir, name, &file.to_bytes())
        .map(|_| ())
        .map_err(|e| PushError::Offline {
            dir: dir.to_owned(),
            reason: exchange_protocol::cause::chain(&e),
        })
}
