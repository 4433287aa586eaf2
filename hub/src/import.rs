//! `exchange-hub import`: the hub side of offline exchange (离线交换, docs/PROTOCOL.md §12).
//! An agent in offline mode writes each queued batch as a batch file
//! ([`exchange_protocol::offline`]); the files are carried through a one-way gateway (网闸)
//! or on removable media into a directory `DIR`, and this module applies them and writes the
//! hub's answers, which are carried back to the agent's `[hub] inbox`.
//!
//! Rules, in the order a run applies them:
//! 1. Only the batch files at the top level of `DIR` are read ([`offline::list`]). A file that
//!    is not a batch file is **rejected**: moved to `DIR/rejected/NAME` with the reason in
//!    `DIR/rejected/NAME.reason` (an earlier rejected file of the same name is never
//!    overwritten: the later one gets a suffix `.1`, `.2`, …), and no answer is written.
//! 2. **Authenticity before the store.** A file is rejected the same way (no answer: nobody
//!    proved to have sent it) unless its certificate chain verifies against the hub's client
//!    CA and CRLs (`[listen] ca` and `crl`, as in a handshake), the leaf's common name equals
//!    `exchange-node`, `exchange-signature` is present and verifies against the leaf
//!    (docs/PROTOCOL.md §4.7), and the body decompresses within `[limits] max_batch_bytes`
//!    to bytes whose SM3 is `exchange-content-sm3` and whose records number
//!    `exchange-record-count`. So a changed byte of the body or of a signed header is
//!    rejected with a reason naming the check that failed.
//! 3. Authentic files are grouped by (node, resource, stream) and sent in seq order (files
//!    arrive in any order) through the hub's own batch endpoint ([`crate::server`]), as
//!    requests carrying the certificate's node as their [`Peer`]: an offline batch meets
//!    exactly the online checks and store code (docs/PROTOCOL.md §6). Its answer decides:
//!    - `200 applied`: the file moves to `DIR/done/` ([`Outcome::Applied`]);
//!    - `200 duplicate` (a replayed file, or the agent writing a batch again after its answer
//!      was lost): nothing is applied again; the file moves to `DIR/rejected/` with a reason
//!      ([`Outcome::Duplicate`]);
//!    - `409` (a gap: an earlier file has not arrived yet): the file stays in `DIR`
//!      ([`Outcome::Waiting`]) and a later run applies it once the missing one arrived; in
//!      one run, once a stream's files were applied, its waiting files are tried again;
//!    - `500`/`503` (the store is failing): the file stays and the run stops with
//!      [`ImportError::Store`], after what was done before it;
//!    - any other status (`400`, `403`, `413`, …): the file moves to `DIR/rejected/` with the
//!      answer's `error` as its reason ([`Outcome::Refused`]).
//! 4. For every outcome but a rejection, the answer is written to the answers directory as
//!    an answer file named [`offline::file_name`]`(Kind::Answer, id)`: the batch's identity
//!    and digest, the endpoint's status and JSON body exactly, signed with the hub's key over
//!    [`Answered::message`], with the hub's certificate chain. The agent reads it as it reads
//!    the online answer: a waiting file's `409` with `last_seq` tells "still in transit" from
//!    "the hub was restored from a backup", a duplicate's Ack lets an agent whose answer was
//!    lost release its queue.
//!
//! Crash safety: an answer is written atomically ([`offline::write_atomic`]) **before** its
//! batch file is moved; moves are renames followed by a sync of both directories. A crash
//! between the two leaves the file in `DIR`: the next run imports it again, which yields a
//! duplicate and the same answer. So a run may be repeated at any time (from cron or a
//! systemd timer) and is idempotent; two runs must not work on the same `DIR` at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header as http_header};
use exchange_protocol::batch::{self, Ack, AckStatus, BATCHES_PATH, BatchId, ErrorBody, header};
use exchange_protocol::digest::sm3_hex;
use exchange_protocol::offline::{self, Answered, Kind, OfflineFile};
use exchange_protocol::server::Peer;
use exchange_protocol::signature::{self, BatchSigner, Signature, SignatureError, Signed};
use exchange_protocol::tls::{self, TlsError};
use exchange_protocol::tr;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use tower::ServiceExt;

use crate::config::HubConfig;
use crate::store::Store;

/// The subdirectory of `DIR` that applied batch files move to.
pub const DONE_DIR: &str = "done";
/// The subdirectory of `DIR` that rejected, refused and duplicate batch files move to, each
/// with a `NAME.reason` file.
pub const REJECTED_DIR: &str = "rejected";
/// The default answers directory, under `DIR`.
pub const ANSWERS_DIR: &str = "answers";

/// Why an import could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The import directory cannot be listed.
    #[error("{}", tr!(
        "cannot read the import directory {dir}: {reason}",
        "无法读取导入目录 {dir}：{reason}",
        dir = dir.display()
    ))]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// A file or directory cannot be read, written or moved.
    #[error("{}", tr!(
        "cannot {what} {path}: {reason}",
        "无法{what} {path}：{reason}",
        path = path.display()
    ))]
    Io {
        /// What was being done (read, write, move, create).
        what: String,
        /// The file or directory.
        path: PathBuf,
        /// The system's reason.
        reason: String,
    },
    /// The hub's TLS material (`[listen]` ca, crl, cert, key) is unusable.
    #[error("{}", tr!(
        "cannot use the hub's TLS material ([listen] ca, crl, cert, key): {0}",
        "无法使用交换中心的 TLS 材料（[listen] ca、crl、cert、key）：{0}", .0
    ))]
    Tls(TlsError),
    /// The hub's key cannot sign answers.
    #[error("{}", tr!(
        "the hub's key ([listen] key) cannot sign answers: {0}",
        "交换中心的私钥（[listen] key）无法签名应答：{0}", .0
    ))]
    Signer(SignatureError),
    /// The store failed (the endpoint answered `500` or `503`): the run stopped; the file
    /// stays in `DIR`, and `done` says what the run did before.
    #[error("{}", tr!(
        "the store failed ({status}) on {name}; the import stopped and the file stays for the next run: {reason}",
        "存储出错（{status}），文件 {name}；导入已停止，该文件留待下次导入：{reason}"
    ))]
    Store {
        /// The endpoint's status.
        status: u16,
        /// The file that met the failure.
        name: String,
        /// The endpoint's `error`.
        reason: String,
        /// The files handled before the failure.
        done: ImportReport,
    },
}

impl ImportError {
    /// What the run did before it stopped (the files handled before a store failure).
    pub fn done(&self) -> Option<&ImportReport> {
        match self {
            ImportError::Store { done, .. } => Some(done),
            _ => None,
        }
    }
}

/// What an import did, one entry per batch file, in the order handled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Each file handled.
    pub files: Vec<ImportedFile>,
}

/// One batch file and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedFile {
    /// Where the file was found (in `DIR`).
    pub path: PathBuf,
    /// The batch it names (`None` when its headers do not name one).
    pub id: Option<BatchId>,
    /// What happened.
    pub outcome: Outcome,
}

/// What became of a batch file (module doc, rule 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now; moved to `done/`.
    Applied {
        /// Records applied.
        records: u64,
    },
    /// Applied before; nothing applied again; moved to `rejected/`.
    Duplicate {
        /// The stream's high-water mark at the hub.
        last_seq: u64,
    },
    /// An earlier batch of its stream is missing; left in `DIR` for a later run.
    Waiting {
        /// The stream's high-water mark at the hub.
        last_seq: u64,
    },
    /// Authentic, but refused by the endpoint; moved to `rejected/`.
    Refused {
        /// The endpoint's status.
        status: u16,
        /// The endpoint's `error`.
        reason: String,
    },
    /// Not a batch file, or not authentic; moved to `rejected/`, no answer written.
    Rejected {
        /// What failed.
        reason: String,
    },
}

/// The kinds of [`Outcome`], for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutcomeKind {
    /// [`Outcome::Applied`].
    Applied,
    /// [`Outcome::Duplicate`].
    Duplicate,
    /// [`Outcome::Waiting`].
    Waiting,
    /// [`Outcome::Refused`].
    Refused,
    /// [`Outcome::Rejected`].
    Rejected,
}

impl Outcome {
    /// Its kind.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Applied { .. } => OutcomeKind::Applied,
            Outcome::Duplicate { .. } => OutcomeKind::Duplicate,
            Outcome::Waiting { .. } => OutcomeKind::Waiting,
            Outcome::Refused { .. } => OutcomeKind::Refused,
            Outcome::Rejected { .. } => OutcomeKind::Rejected,
        }
    }
}

impl ImportReport {
    /// How many files had an outcome of `kind`.
    pub fn count(&self, kind: OutcomeKind) -> usize {
        self.files
            .iter()
            .filter(|f| f.outcome.kind() == kind)
            .count()
    }

    /// The summary line, in the operator's language.
    pub fn summary(&self, answers: &Path) -> String {
        let count = |k| self.count(k);
        let (total, applied, duplicate, waiting, refused, rejected) = (
            self.files.len(),
            count(OutcomeKind::Applied),
            count(OutcomeKind::Duplicate),
            count(OutcomeKind::Waiting),
            count(OutcomeKind::Refused),
            count(OutcomeKind::Rejected),
        );
        let answers = answers.display();
        tr!(
            "{total} batch files: {applied} applied, {duplicate} duplicate, {waiting} waiting, {refused} refused, {rejected} rejected; answers in {answers} (carry them to the agent's [hub] inbox)",
            "{total} 个批次文件：已应用 {applied} 个，重复 {duplicate} 个，等待 {waiting} 个，被拒 {refused} 个，驳回 {rejected} 个；应答在 {answers}（请带回前置机的 [hub] inbox）"
        )
    }
}

impl ImportedFile {
    /// One line for the operator: the file's name, the batch, the outcome and its reason.
    pub fn line(&self) -> String {
        let name = self
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let id = self
            .id
            .as_ref()
            .map_or_else(|| "-".to_owned(), BatchId::idempotency_key);
        let outcome = match &self.outcome {
            Outcome::Applied { records } => tr!(
                "applied ({records} records); moved to done/",
                "已应用 applied（{records} 条记录）；已移入 done/"
            ),
            Outcome::Duplicate { last_seq } => tr!(
                "duplicate: already applied (the hub's mark is seq {last_seq}), nothing applied again; moved to rejected/",
                "重复 duplicate：此前已应用（交换中心的水位为序号 {last_seq}），未再次应用；已移入 rejected/"
            ),
            Outcome::Waiting { last_seq } => tr!(
                "waiting: an earlier batch of its stream has not arrived (the hub's mark is seq {last_seq}); left in place for a later import",
                "等待 waiting：同一数据流中更早的批次尚未到达（交换中心的水位为序号 {last_seq}）；留在原处待以后导入"
            ),
            Outcome::Refused { status, reason } => tr!(
                "refused ({status}): {reason}; moved to rejected/",
                "被拒 refused（{status}）：{reason}；已移入 rejected/"
            ),
            Outcome::Rejected { reason } => tr!(
                "rejected: {reason}; moved to rejected/, no answer",
                "驳回 rejected：{reason}；已移入 rejected/，不写应答"
            ),
        };
        format!("{name}  {id}  {outcome}")
    }
}

/// Imports every batch file at the top level of `dir` into `store` and writes the answers
/// into `answers` (created if missing), by the rules of the module doc.
pub async fn import(
    config: &HubConfig,
    store: &Store,
    dir: &Path,
    answers: &Path,
) -> Result<ImportReport, ImportError> {
    let paths = offline::list(dir, Kind::Batch).map_err(|e| ImportError::ReadDir {
        dir: dir.to_owned(),
        reason: exchange_protocol::translate::io(&e),
    })?;
    std::fs::create_dir_all(answers).map_err(io_error(tr!("create", "创建"), answers))?;
    let mut run = Run::new(config, store, dir, answers)?;
    let mut streams: BTreeMap<(String, String, String), Vec<Authentic>> = BTreeMap::new();
    for path in paths {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // Taken away since it was listed: nothing to import.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(tr!("read", "读取"), &path)(e)),
        };
        match run.authenticate(path, &bytes) {
            Ok(file) => {
                let id = &file.id;
                let key = (
                    id.node.clone(),
                    id.resource.clone(),
                    id.stream.to_ascii_lowercase(),
                );
                streams.entry(key).or_default().push(file);
            }
            Err(rejected) => run.reject(*rejected)?,
        }
    }
    for (_, mut files) in streams {
        files.sort_by_key(|f| f.id.seq);
        run.apply_stream(files).await?;
    }
    Ok(run.report)
}

/// The closure that makes an [`ImportError::Io`] of an I/O error on `path`.
fn io_error(what: String, path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |e| ImportError::Io {
        what,
        path: path.to_owned(),
        reason: exchange_protocol::translate::io(&e),
    }
}

/// A batch file that passed the checks of rule 2.
struct Authentic {
    /// Where it was found.
    path: PathBuf,
    /// The batch it is.
    id: BatchId,
    /// Its headers and body.
    file: OfflineFile,
    /// The node's certificate (verified).
    leaf: CertificateDer<'static>,
    /// The request headers: the file's but the certificates, and `content-length`.
    headers: HeaderMap,
    /// SM3 of the file's bytes as read (the answer names it, docs/PROTOCOL.md §12.4).
    file_sm3: String,
}

/// A batch file that did not pass rule 1 or 2.
struct Unauthentic {
    /// Where it was found.
    path: PathBuf,
    /// The batch its headers name, if any.
    id: Option<BatchId>,
    /// What failed.
    reason: String,
}

/// The endpoint's answer to one batch file.
struct Answer {
    /// The HTTP status.
    status: u16,
    /// The JSON body, as the endpoint wrote it.
    body: Vec<u8>,
}

/// One import run: what it checks and signs with, and what it did so far.
struct Run<'a> {
    /// The import directory.
    dir: &'a Path,
    /// Where answers go.
    answers: &'a Path,
    /// `[limits] max_batch_bytes`: the bound of a decompressed body.
    max_batch_bytes: usize,
    /// Verifies a node's chain against `[listen] ca` and `crl`.
    verifier: Arc<dyn ClientCertVerifier>,
    /// Signs answers with the hub's key.
    signer: BatchSigner,
    /// The hub's certificate chain, carried in each answer.
    chain: Vec<CertificateDer<'static>>,
    /// The hub's batch endpoint.
    endpoints: axum::Router,
    /// The files handled so far.
    report: ImportReport,
}

impl<'a> Run<'a> {
    fn new(
        config: &HubConfig,
        store: &Store,
        dir: &'a Path,
        answers: &'a Path,
    ) -> Result<Self, ImportError> {
        let verifier = tls::client_certificate_verifier(&config.tls).map_err(ImportError::Tls)?;
        let key = tls::load_key(&config.tls.key).map_err(ImportError::Tls)?;
        let signer = BatchSigner::new(&key).map_err(ImportError::Signer)?;
        let chain =
            tls::load_certs("server certificate", &config.tls.cert).map_err(ImportError::Tls)?;
        Ok(Run {
            dir,
            answers,
            max_batch_bytes: config.limits.max_batch_bytes,
            verifier,
            signer,
            chain,
            endpoints: crate::server::endpoints(store.clone(), config.limits),
            report: ImportReport::default(),
        })
    }

    /// Rules 1 and 2: the file parsed and proved to come from the node it names.
    fn authenticate(&self, path: PathBuf, bytes: &[u8]) -> Result<Authentic, Box<Unauthentic>> {
        let file = match OfflineFile::parse(Kind::Batch, bytes) {
            Ok(f) => f,
            Err(e) => {
                return Err(Box::new(Unauthentic {
                    path,
                    id: None,
                    reason: e.to_string(),
                }));
            }
        };
        let id = file.batch_id().ok();
        let checked = file.batch_id().map_err(|e| e.to_string()).and_then(|id| {
            let leaf = self.signer_of(&file, &id)?;
            check_signature(&file, &id, &leaf)?;
            check_body(&file, self.max_batch_bytes)?;
            check_file_signature(&file, &leaf)?;
            Ok((id, leaf, request_headers(&file)?))
        });
        match checked {
            Ok((id, leaf, headers)) => Ok(Authentic {
                path,
                id,
                file,
                leaf,
                headers,
                file_sm3: sm3_hex(bytes),
            }),
            Err(reason) => Err(Box::new(Unauthentic { path, id, reason })),
        }
    }

    /// The file's leaf certificate, once its chain verified against the hub's client CA and
    /// CRLs and its common name is the node the file names.
    fn signer_of(
        &self,
        file: &OfflineFile,
        id: &BatchId,
    ) -> Result<CertificateDer<'static>, String> {
        let mut chain = file.certificates().map_err(|e| e.to_string())?;
        let leaf = chain.remove(0);
        self.verifier
            .verify_client_cert(&leaf, &chain, UnixTime::now())
            .map_err(|e| {
                let why = tls::explain(&e);
                tr!(
                    "the certificate chain does not verify against the hub's client CA ([listen] ca, crl): {why}",
                    "证书链无法用交换中心的客户端 CA（[listen] ca、crl）验证：{why}"
                )
            })?;
        let Some(cn) = tls::peer_common_name(&leaf) else {
            return Err(tr!(
                "the certificate has no common name (CN), so it names no node",
                "证书没有通用名（CN），因此不指明任何节点"
            ));
        };
        if cn != id.node {
            let claimed = &id.node;
            return Err(tr!(
                "the certificate identifies node `{cn}` but the file claims node `{claimed}`",
                "证书表明节点为 `{cn}`，但文件声称节点为 `{claimed}`"
            ));
        }
        Ok(leaf)
    }

    /// Moves a file that failed rule 1 or 2 aside (no answer) and reports it.
    fn reject(&mut self, file: Unauthentic) -> Result<(), ImportError> {
        self.set_aside(&file.path, &file.reason)?;
        self.report.files.push(ImportedFile {
            path: file.path,
            id: file.id,
            outcome: Outcome::Rejected {
                reason: file.reason,
            },
        });
        Ok(())
    }

    /// Rule 3 for one stream's files, in seq order: each is sent, answered and moved; the
    /// waiting ones are tried again as long as a pass applied something.
    async fn apply_stream(&mut self, files: Vec<Authentic>) -> Result<(), ImportError> {
        let mut pending = files;
        loop {
            let mut waiting = Vec::new();
            let mut applied = false;
            for file in pending {
                let answer = self.send(&file).await;
                match self.judge(&file, &answer) {
                    Ok(Outcome::Waiting { last_seq }) => {
                        self.write_answer(&file, &answer)?;
                        waiting.push((file, last_seq));
                    }
                    Ok(outcome) => {
                        applied |= outcome.kind() == OutcomeKind::Applied;
                        self.settle(file, &answer, outcome)?;
                    }
                    Err(reason) => return Err(self.stopped(&file, answer.status, reason)),
                }
            }
            if !applied || waiting.is_empty() {
                for (file, last_seq) in waiting {
                    self.report.files.push(ImportedFile {
                        path: file.path,
                        id: Some(file.id),
                        outcome: Outcome::Waiting { last_seq },
                    });
                }
                return Ok(());
            }
            pending = waiting.into_iter().map(|(f, _)| f).collect();
        }
    }

    /// The error that stops the run at a store failure, with what it did before.
    fn stopped(&mut self, file: &Authentic, status: u16, reason: String) -> ImportError {
        ImportError::Store {
            status,
            name: file_name(&file.path),
            reason,
            done: std::mem::take(&mut self.report),
        }
    }

    /// Sends one file through the hub's batch endpoint, as a request from its node.
    async fn send(&self, file: &Authentic) -> Answer {
        let response = match self.endpoints.clone().oneshot(request(file)).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map_or_else(|_| Vec::new(), |b| b.to_vec());
        Answer { status, body }
    }

    /// What the endpoint's answer makes of a file; `Err` when the store failed (`5xx`).
    fn judge(&self, file: &Authentic, answer: &Answer) -> Result<Outcome, String> {
        let error = || {
            serde_json::from_slice::<ErrorBody>(&answer.body).unwrap_or_else(|_| {
                ErrorBody::new(String::from_utf8_lossy(&answer.body).into_owned())
            })
        };
        match answer.status {
            200 => match serde_json::from_slice::<Ack>(&answer.body) {
                Ok(ack) if ack.status == AckStatus::Applied => Ok(Outcome::Applied {
                    records: ack.records,
                }),
                Ok(ack) => Ok(Outcome::Duplicate {
                    last_seq: ack.last_seq,
                }),
                Err(e) => Err(tr!(
                    "the endpoint's 200 answer to {} is no Ack: {e}",
                    "端点对 {} 的 200 应答不是 Ack：{e}",
                    file.id.idempotency_key()
                )),
            },
            409 => Ok(Outcome::Waiting {
                last_seq: error().last_seq.unwrap_or(0),
            }),
            500..=599 => Err(error().error),
            status => Ok(Outcome::Refused {
                status,
                reason: error().error,
            }),
        }
    }

    /// Writes the answer, then moves the file where its outcome puts it, and reports it.
    fn settle(
        &mut self,
        file: Authentic,
        answer: &Answer,
        outcome: Outcome,
    ) -> Result<(), ImportError> {
        self.write_answer(&file, answer)?;
        match &outcome {
            Outcome::Applied { .. } => {
                let done = self.dir.join(DONE_DIR);
                let name = free_name(&done, &file_name(&file.path))?;
                move_into(&file.path, &done, &name)?;
            }
            Outcome::Duplicate { last_seq } => {
                let seq = file.id.seq;
                self.set_aside(
                    &file.path,
                    &tr!(
                        "a duplicate: batch seq {seq} was already applied (the hub's mark for its stream is seq {last_seq}); nothing was applied again",
                        "重复：批次序号 {seq} 此前已应用（交换中心该数据流的水位为序号 {last_seq}）；未再次应用"
                    ),
                )?;
            }
            Outcome::Refused { status, reason } => {
                self.set_aside(
                    &file.path,
                    &tr!(
                        "refused by the hub ({status}): {reason}",
                        "交换中心拒绝（{status}）：{reason}"
                    ),
                )?;
            }
            Outcome::Waiting { .. } | Outcome::Rejected { .. } => {}
        }
        self.report.files.push(ImportedFile {
            path: file.path,
            id: Some(file.id),
            outcome,
        });
        Ok(())
    }

    /// Rule 4: the signed answer file of one batch file.
    fn write_answer(&self, file: &Authentic, answer: &Answer) -> Result<(), ImportError> {
        let batch_sm3 = file.file.header(header::DIGEST).unwrap_or_default();
        let answer_sm3 = sm3_hex(&answer.body);
        let message = Answered {
            id: &file.id,
            batch_sm3,
            file_sm3: &file.file_sm3,
            status: answer.status,
            answer_sm3: &answer_sm3,
        }
        .message();
        let signed = self
            .signer
            .sign_message(&message)
            .map_err(ImportError::Signer)?;
        let id = &file.id;
        let mut headers: Vec<(String, String)> = [
            (header::NODE, id.node.clone()),
            (header::RESOURCE, id.resource.clone()),
            (header::STREAM, id.stream.clone()),
            (header::SEQ, id.seq.to_string()),
            (header::DIGEST, batch_sm3.to_owned()),
            (offline::BATCH_FILE_SM3, file.file_sm3.clone()),
            (offline::ANSWER_STATUS, answer.status.to_string()),
            (offline::ANSWER_SM3, answer_sm3.clone()),
            (signature::HEADER, signed),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
        offline::push_certificates(&mut headers, &self.chain);
        headers.push(("content-type".to_owned(), "application/json".to_owned()));
        let bytes = OfflineFile {
            kind: Kind::Answer,
            headers,
            body: answer.body.clone(),
        }
        .to_bytes();
        let name = offline::answer_name(id, &file.file_sm3);
        offline::write_atomic(self.answers, &name, &bytes)
            .map_err(io_error(tr!("write", "写入"), &self.answers.join(&name)))?;
        Ok(())
    }

    /// Moves a file into `DIR/rejected/` under a name no earlier file there has, with its
    /// reason next to it (`NAME.reason`).
    fn set_aside(&self, path: &Path, reason: &str) -> Result<(), ImportError> {
        let rejected = self.dir.join(REJECTED_DIR);
        let name = free_name(&rejected, &file_name(path))?;
        let reason_name = format!("{name}.reason");
        offline::write_atomic(&rejected, &reason_name, format!("{reason}\n").as_bytes())
            .map_err(io_error(tr!("write", "写入"), &rejected.join(&reason_name)))?;
        move_into(path, &rejected, &name)
    }
}

/// The headers of the request the online endpoint would have received for `file`: the
/// file's but the certificates, and its `content-length`.
fn request_headers(file: &OfflineFile) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in &file.headers {
        if name != offline::CERTIFICATE && name != offline::FILE_SIGNATURE {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string());
            let value = HeaderValue::from_str(value).map_err(|e| e.to_string());
            match (name, value) {
                (Ok(n), Ok(v)) => {
                    headers.append(n, v);
                }
                (Err(e), _) | (_, Err(e)) => {
                    return Err(tr!(
                        "the file's headers do not make an HTTP request: {e}",
                        "文件的头部无法构成 HTTP 请求：{e}"
                    ));
                }
            }
        }
    }
    headers.insert(
        http_header::CONTENT_LENGTH,
        HeaderValue::from(file.body.len()),
    );
    Ok(headers)
}

/// The request the online endpoint would have received for `file`, from its node (the
/// [`Peer`]).
fn request(file: &Authentic) -> Request<Body> {
    let mut request = Request::new(Body::from(file.file.body.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = axum::http::Uri::from_static(BATCHES_PATH);
    *request.headers_mut() = file.headers.clone();
    request.extensions_mut().insert(Peer {
        node: Some(file.id.node.clone()),
        certificate: Some(Arc::new(file.leaf.clone())),
        addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
    });
    request
}

/// The file's `exchange-signature`, present and verified against `leaf` (docs/PROTOCOL.md
/// §4.7; the stream in lower case, as the endpoint verifies it).
fn check_signature(
    file: &OfflineFile,
    id: &BatchId,
    leaf: &CertificateDer<'_>,
) -> Result<(), String> {
    let value = file.header(signature::HEADER).ok_or_else(|| {
        tr!(
            "header `{}` is missing: an offline batch must be signed by its node (docs/PROTOCOL.md §4.7)",
            "缺少头部 `{}`：离线批次必须有节点的签名（docs/PROTOCOL.md §4.7）",
            signature::HEADER
        )
    })?;
    let sm3 = file.required(header::DIGEST).map_err(|e| e.to_string())?;
    let stream = id.stream.to_ascii_lowercase();
    let signed = Signed {
        node: &id.node,
        resource: &id.resource,
        stream: &stream,
        seq: id.seq,
        sm3,
    };
    Signature::parse(value)
        .and_then(|s| s.verify(&signed, leaf))
        .map_err(|e| e.to_string())
}

/// The file's `exchange-file-signature` over the whole file, every header included (a
/// baseline mark added on the way would sweep), verified against `leaf` (docs/PROTOCOL.md
/// §12.2).
fn check_file_signature(file: &OfflineFile, leaf: &CertificateDer<'_>) -> Result<(), String> {
    let whole = file.header(offline::FILE_SIGNATURE).ok_or_else(|| {
        tr!(
            "header `{}` is missing: an offline batch file is signed whole by its node (docs/PROTOCOL.md §12.2)",
            "缺少头部 `{}`：离线批次文件必须整体由节点签名（docs/PROTOCOL.md §12.2）",
            offline::FILE_SIGNATURE
        )
    })?;
    Signature::parse(whole)
        .and_then(|s| s.verify_message(&file.file_message(), leaf))
        .map_err(|e| {
            tr!(
                "the file's signature does not verify: a header or the body was changed after the node signed it ({e})",
                "文件签名无法验证：节点签名后头部或内容被改动（{e}）"
            )
        })
}

/// The body decompresses within `limit` to bytes whose SM3 is `exchange-content-sm3` and
/// whose records (non-blank lines, docs/PROTOCOL.md §4.2) number `exchange-record-count`.
fn check_body(file: &OfflineFile, limit: usize) -> Result<(), String> {
    let ndjson = batch::decompress(&file.body, limit).map_err(|e| e.to_string())?;
    let claimed = file.required(header::DIGEST).map_err(|e| e.to_string())?;
    let actual = sm3_hex(&ndjson);
    if !actual.eq_ignore_ascii_case(claimed) {
        return Err(tr!(
            "the body's SM3 is {actual} but `{}` says {claimed}: the body was changed after the node signed it",
            "内容的 SM3 为 {actual}，但 `{}` 为 {claimed}：内容在节点签名后被改动",
            header::DIGEST
        ));
    }
    let count = file.required(header::RECORDS).map_err(|e| e.to_string())?;
    let records = ndjson
        .split(|b| *b == b'\n')
        .filter(|l| !batch::is_blank(l))
        .count();
    if batch::parse_decimal(count) != Some(records as u64) {
        return Err(tr!(
            "`{}` says {count} but the body holds {records} records: the header was changed",
            "`{}` 为 {count}，但内容有 {records} 条记录：该头部被改动",
            header::RECORDS
        ));
    }
    Ok(())
}

/// The last component of `path`, as text.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// `name`, or `name.1`, `name.2`, … : the first that neither exists in `dir` nor has a
/// `.reason` file there (`dir` created if missing).
fn free_name(dir: &Path, name: &str) -> Result<String, ImportError> {
    std::fs::create_dir_all(dir).map_err(io_error(tr!("create", "创建"), dir))?;
    let taken = |n: &str| {
        dir.join(n).symlink_metadata().is_ok()
            || dir.join(format!("{n}.reason")).symlink_metadata().is_ok()
    };
    let mut candidate = name.to_owned();
    let mut n = 0u64;
    while taken(&candidate) {
        n += 1;
        candidate = format!("{name}.{n}");
    }
    Ok(candidate)
}

/// Renames `from` to `dir/name`, then syncs `dir` and the directory `from` was in.
fn move_into(from: &Path, dir: &Path, name: &str) -> Result<(), ImportError> {
    let target = dir.join(name);
    std::fs::rename(from, &target).map_err(io_error(tr!("move", "移动"), from))?;
    let source = from
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for d in [dir, source] {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(io_error(tr!("sync", "同步"), d))?;
    }
    Ok(())
}
