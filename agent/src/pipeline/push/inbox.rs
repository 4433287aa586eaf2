//! The hub's answer files in the inbox (docs/PROTOCOL.md §12): each is checked — the hub's
//! certificate chains to `[hub] ca` under the hub's name, its signature covers the answer,
//! the body is the one signed — and then read exactly as the online answer to the batch it
//! names (`answer`).
//!
//! Invariants:
//! - only the answer for the oldest queued batch, with that batch's digest, can release it;
//!   answers are taken in seq order, so batches leave in seq order;
//! - an answer file that fails a check is moved to `inbox/rejected/` with a `.reason` file
//!   and changes nothing but the audit log (`offline.answer_refused`); one naming another
//!   node is moved there too;
//! - an answer is deleted only after what it decided is committed (a crash in between reads
//!   it again, and finds it stale: its batch is no longer queued);
//! - a gap at the hub below the oldest queued batch (a hub restored from a backup) or a
//!   rewound queue halts the resource, as online.

use std::path::{Path, PathBuf};

use exchange_protocol::batch::BatchId;
use exchange_protocol::digest::sm3_hex;
use exchange_protocol::offline::{
    self, ANSWER_SM3, ANSWER_STATUS, Answered, BATCH_FILE_SM3, Kind, OfflineFile,
};
use exchange_protocol::signature::{self, Signature};
use exchange_protocol::tr;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::UnixTime;

use super::answer::{Reply, Sent};
use super::error::PushError;
use super::flight::InFlight;
use super::{receipt, refused, window};

/// Largest answer file read (an answer is a short JSON object).
const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// An answer file that passed its checks.
struct Answer {
    /// Where it is.
    path: PathBuf,
    /// The batch it answers.
    id: BatchId,
    /// The digest of the batch it answers.
    batch_sm3: String,
    /// SM3 of the batch file it answers (one writing of the batch).
    file_sm3: String,
    /// The HTTP status the hub answered.
    status: u16,
    /// The JSON body.
    body: Vec<u8>,
}

/// What reading the inbox did for one resource.
#[derive(Debug, Default)]
pub(super) struct Received {
    /// Batches that left the queue.
    pub(super) released: usize,
    /// A batch rewritten without a record the hub refused: it and those after it are to be
    /// written again.
    pub(super) rewritten: Option<u64>,
}

/// Reads the inbox's answers for the resource of `flight` and applies them in seq order.
pub(super) async fn receive(
    inbox: &Inbox,
    flight: &InFlight<'_>,
    latest: &(dyn Fn(u64, &str) -> bool + Sync),
    acked: &(dyn Fn() + Sync),
) -> Result<Received, PushError> {
    let answers = {
        let resource = flight.resource.to_owned();
        let mut reader = inbox.clone();
        reader.data_dir = flight.queue.path().parent().map(Path::to_owned);
        tokio::task::spawn_blocking(move || reader.read(&resource))
            .await
            .expect("inbox task panicked")?
    };
    let mut received = Received::default();
    for answer in answers {
        let head = flight.queue.head(flight.resource)?;
        let Some(b) = head.filter(|b| {
            answer.id.stream == flight.stream
                && answer.id.seq == b.seq
                && answer.batch_sm3.eq_ignore_ascii_case(&b.digest)
        }) else {
            // Not for the oldest queued batch: stale (its batch left, or changed, or another
            // stream's) unless it is for a later batch, which waits for its turn — but a
            // "batches are missing" for a later one says which to write again now.
            match waits(flight, &answer)? {
                Some(head) if answer.status == 409 => {
                    let from = missing_from(&answer).max(head);
                    received.rewritten = Some(received.rewritten.map_or(from, |r| r.min(from)));
                    remove(&answer.path);
                }
                Some(_) => {}
                None => remove(&answer.path),
            }
            continue;
        };
        if answer.status == 409 && !latest(b.seq, &answer.file_sm3) {
            // "Earlier batches are missing" from before the latest writing: they may have
            // arrived since. Only an answer to a writing after the last release can say the
            // hub lost what it acknowledged; the batch is written again at once to ask.
            received.rewritten = Some(received.rewritten.map_or(b.seq, |r| r.min(b.seq)));
            remove(&answer.path);
            continue;
        }
        let sent = Sent {
            url: &inbox.url,
            flight,
            batch: &b,
            head: b.seq,
        };
        let reply = Reply {
            status: answer.status,
            retry_after: None,
            body: answer.body.clone(),
        };
        match sent.read(reply).await {
            Ok(ack) => {
                let bound = receipt::record(flight, &b, &ack).await?;
                flight.raised_to(bound);
                received.released += 1;
                acked();
                remove(&answer.path);
            }
            Err(e @ PushError::RecordRefused { .. }) => {
                refused::quarantine(flight.queue, e).await?;
                received.rewritten = Some(received.rewritten.map_or(b.seq, |r| r.min(b.seq)));
                remove(&answer.path);
            }
            Err(e) => {
                window::halt_on(flight, &e).await?;
                remove(&answer.path);
                return Err(e);
            }
        }
    }
    Ok(received)
}

/// For an answer that is not for the oldest queued batch: the oldest queued seq when it is
/// for a later batch of the same stream (it waits for its turn); `None` when it is stale (its
/// batch left the queue, changed, or belongs to another stream).
fn waits(flight: &InFlight<'_>, answer: &Answer) -> Result<Option<u64>, PushError> {
    Ok(flight
        .queue
        .head(flight.resource)?
        .map(|b| b.seq)
        .filter(|head| answer.id.stream == flight.stream && answer.id.seq > *head))
}

/// The first seq a `409` answer says the hub lacks: one after its `last_seq` (the answer's own
/// seq when the body names none).
fn missing_from(answer: &Answer) -> u64 {
    serde_json::from_slice::<exchange_protocol::batch::ErrorBody>(&answer.body)
        .ok()
        .and_then(|e| e.last_seq)
        .map_or(answer.id.seq, |m| m + 1)
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "Cannot remove an answer file that was read.");
    }
}

/// The inbox and what an answer in it is checked against (movable to the blocking pool).
#[derive(Clone)]
pub(super) struct Inbox {
    /// The directory.
    pub(super) dir: PathBuf,
    /// Where the audit log is (a refused answer is audited); set for each read.
    data_dir: Option<PathBuf>,
    /// This node: answers for another are refused.
    node: String,
    /// The resources this agent delivers: answers for another are refused.
    resources: std::sync::Arc<Vec<String>>,
    /// The hub's URL, for messages.
    url: String,
    /// Checks the hub's certificate.
    verifier: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
    /// The hub's name, as its certificate must hold it.
    hub_name: rustls::pki_types::ServerName<'static>,
}

impl Inbox {
    /// The inbox `dir` of `node` delivering `resources`, whose answers come from the hub at
    /// `url` (`hub_name`) with a certificate `verifier` accepts.
    pub(super) fn new(
        dir: PathBuf,
        (node, resources): (String, Vec<String>),
        url: String,
        verifier: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
        hub_name: rustls::pki_types::ServerName<'static>,
    ) -> Inbox {
        Inbox {
            dir,
            data_dir: None,
            node,
            resources: std::sync::Arc::new(resources),
            url,
            verifier,
            hub_name,
        }
    }

    /// The checked answers for `resource` in the inbox, in seq order; answers that fail a
    /// check are moved aside with their reason.
    fn read(&self, resource: &str) -> Result<Vec<Answer>, PushError> {
        let inbox = self.dir.as_path();
        let io = |e: std::io::Error| PushError::Offline {
            dir: inbox.to_owned(),
            reason: exchange_protocol::cause::chain(&e),
        };
        let mut answers = Vec::new();
        for path in offline::list(inbox, Kind::Answer).map_err(io)? {
            match self.check(&path, resource) {
                Ok(Some(a)) => answers.push(a),
                Ok(None) => {}
                // Not a whole answer yet, and young: maybe still being written in place.
                Err(_) if self.incomplete(&path) => {}
                Err(reason) => {
                    set_aside(inbox, &path, &reason);
                    self.audit_refused(resource, &path, &reason);
                }
            }
        }
        answers.sort_by_key(|a| a.id.seq);
        Ok(answers)
    }

    /// Whether `path` does not parse as an answer file and was modified in the last two
    /// minutes: a gateway that writes in place may not have finished it (one that writes
    /// under a `.` name and renames never shows a partial file).
    fn incomplete(&self, path: &Path) -> bool {
        let young = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < std::time::Duration::from_secs(120));
        young
            && std::fs::read(path)
                .map(|b| OfflineFile::parse(Kind::Answer, &b).is_err())
                .unwrap_or(false)
    }

    /// An answer file refused is an event of the exchange: audited (`offline.answer_refused`).
    fn audit_refused(&self, resource: &str, path: &Path, reason: &str) {
        let Some(data_dir) = &self.data_dir else {
            return;
        };
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        let detail = serde_json::json!({"file": file, "reason": reason});
        if let Err(e) = crate::audit::append(data_dir, "offline.answer_refused", resource, detail) {
            tracing::error!(error = %e, "Cannot write the audit log.");
        }
    }

    /// One answer file for `resource` checked (module doc); `None` when it is another
    /// resource's (its loop checks it) or vanished meanwhile (another loop set it aside).
    fn check(&self, path: &Path, resource: &str) -> Result<Option<Answer>, String> {
        let bytes = match read_bounded(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(exchange_protocol::cause::chain(&e)),
        };
        let file = OfflineFile::parse(Kind::Answer, &bytes).map_err(|e| e.to_string())?;
        let id = file.batch_id().map_err(|e| e.to_string())?;
        if id.node != self.node {
            return Err(tr!(
                "the answer is for node `{}`, not this node `{}`",
                "该应答属于节点 `{}`，而不是本节点 `{}`",
                id.node,
                self.node
            ));
        }
        if !self.resources.contains(&id.resource) {
            let r = &id.resource;
            return Err(tr!(
                "no resource `{r}` is delivered by this agent's configuration",
                "本程序的配置中没有交换资源 `{r}`"
            ));
        }
        if id.resource != resource {
            return Ok(None);
        }
        let status = file
            .required(ANSWER_STATUS)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| tr!("no valid `{ANSWER_STATUS}`", "`{ANSWER_STATUS}` 缺失或无效"))?;
        let batch_sm3 = file
            .required(exchange_protocol::batch::header::DIGEST)
            .map_err(|e| e.to_string())?
            .to_owned();
        let file_sm3 = file
            .required(BATCH_FILE_SM3)
            .map_err(|e| e.to_string())?
            .to_owned();
        self.authentic(&file, &id, (&batch_sm3, &file_sm3), status)?;
        Ok(Some(Answer {
            path: path.to_owned(),
            id,
            batch_sm3,
            file_sm3,
            status,
            body: file.body,
        }))
    }

    /// The body is the one signed, by a certificate of the hub.
    fn authentic(
        &self,
        file: &OfflineFile,
        id: &BatchId,
        (batch_sm3, file_sm3): (&str, &str),
        status: u16,
    ) -> Result<(), String> {
        let answer_sm3 = sm3_hex(&file.body);
        if file.header(ANSWER_SM3) != Some(answer_sm3.as_str()) {
            return Err(tr!(
                "the body's SM3 is not `{ANSWER_SM3}`: the file was changed",
                "应答内容的 SM3 与 `{ANSWER_SM3}` 不符：文件已被改动"
            ));
        }
        let chain = file.certificates().map_err(|e| e.to_string())?;
        let (leaf, intermediates) = chain.split_first().expect("certificates() is not empty");
        self.verifier
            .verify_server_cert(leaf, intermediates, &self.hub_name, &[], UnixTime::now())
            .map_err(|e| {
                tr!(
                    "the signer's certificate is not the hub's: {}",
                    "签名者的证书不是交换中心的证书：{}",
                    exchange_protocol::tls::explain(&e)
                )
            })?;
        let signature = Signature::parse(
            file.required(signature::HEADER)
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let answered = Answered {
            id,
            batch_sm3,
            file_sm3,
            status,
            answer_sm3: &answer_sm3,
        };
        signature
            .verify_message(&answered.message(), leaf)
            .map_err(|e| e.to_string())
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_ANSWER_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_ANSWER_BYTES {
        return Err(std::io::Error::other(tr!(
            "larger than {MAX_ANSWER_BYTES} bytes",
            "大于 {MAX_ANSWER_BYTES} 字节"
        )));
    }
    Ok(bytes)
}

/// Moves a refused answer file to `inbox/rejected/` with its reason, logged.
fn set_aside(inbox: &Path, path: &Path, reason: &str) {
    tracing::warn!(path = %path.display(), reason, "Answer file refused; moved to rejected/.");
    let dir = inbox.join("rejected");
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let moved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(format!("{name}.reason")), format!("{reason}\n")))
        .and_then(|()| std::fs::rename(path, dir.join(&*name)));
    if let Err(e) = moved {
        tracing::warn!(path = %path.display(), error = %e, "Cannot move a refused answer file aside.");
    }
}
