//! Offline exchange through a one-way gateway (网闸, docs/PROTOCOL.md §12), end to end with the
//! real agent binary and the hub's import: batch files leave through the outbox, arrive at the
//! hub shuffled, one missing, one replayed, one tampered; the hub's answer files come back,
//! one forged; nothing is lost, nothing applied twice, nothing released without the hub's
//! signed answer. A hub restored from a backup stops the resource as online does; a resource
//! switches between online and offline on the same stream.

use std::path::{Path, PathBuf};
use std::time::Duration;

use exchange_hub::config::StoreConfig;
use exchange_hub::import::{Outcome, import};
use exchange_protocol::offline::{self, Kind, OfflineFile};
use exchange_tests::agent::{Agent, terminate};
use exchange_tests::hub::Hub;
use exchange_tests::rows::assert_same;
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::wait_until;

const CODE: &str = "330100-MZJ-0007";

/// The directories of one exchange: the agent's outbox and inbox, and the hub's import and
/// answer directories (the gateway carries files between them).
struct Gateway {
    outbox: PathBuf,
    inbox: PathBuf,
    import: PathBuf,
    answers: PathBuf,
}

impl Gateway {
    fn new(dir: &Path) -> Gateway {
        let g = Gateway {
            outbox: dir.join("outbox"),
            inbox: dir.join("inbox"),
            import: dir.join("hub-import"),
            answers: dir.join("hub-answers"),
        };
        for d in [&g.outbox, &g.inbox, &g.import, &g.answers] {
            std::fs::create_dir_all(d).unwrap();
        }
        g
    }

    /// The outbox's batch files by seq (read, not moved).
    fn outbox(&self) -> Vec<(u64, PathBuf)> {
        let mut files: Vec<(u64, PathBuf)> = offline::list(&self.outbox, Kind::Batch)
            .unwrap()
            .into_iter()
            .map(|p| (batch_of(&p).batch_id().unwrap().seq, p))
            .collect();
        files.sort();
        files
    }

    /// Moves the outbox's file of `seq` to the hub's import directory.
    fn carry(&self, seq: u64) {
        let (_, path) = self
            .outbox()
            .into_iter()
            .find(|(s, _)| *s == seq)
            .unwrap_or_else(|| panic!("batch {seq} is not in the outbox"));
        let name = path.file_name().unwrap();
        std::fs::rename(&path, self.import.join(name)).unwrap();
    }

    /// Moves every batch file of the outbox to the hub's import directory.
    fn carry_outbox(&self) {
        for (seq, _) in self.outbox() {
            self.carry(seq);
        }
    }

    /// Moves every answer file to the agent's inbox.
    fn carry_answers(&self) -> usize {
        let answers = offline::list(&self.answers, Kind::Answer).unwrap();
        for a in &answers {
            std::fs::rename(a, self.inbox.join(a.file_name().unwrap())).unwrap();
        }
        answers.len()
    }
}

fn batch_of(path: &Path) -> OfflineFile {
    OfflineFile::parse(Kind::Batch, &std::fs::read(path).unwrap()).unwrap()
}

fn offline_agent(scene: &Scene, source: &SqliteSource, g: &Gateway) -> Agent {
    scene.write_agent(
        &scene
            .agent_config()
            .max_records(10)
            .offline(&g.outbox, &g.inbox)
            .source("local", "sqlite", &source.url())
            .resource(source.resource(CODE, "local")),
    )
}

fn online_agent(scene: &Scene, source: &SqliteSource) -> Agent {
    scene.write_agent(
        &scene
            .agent_config()
            .max_records(10)
            .source("local", "sqlite", &source.url())
            .resource(source.resource(CODE, "local")),
    )
}

async fn queued(agent: &Agent) -> u64 {
    let status = agent.resource_status(CODE).await;
    status["queued_batches"]
        .as_u64()
        .unwrap_or_else(|| panic!("{status}"))
}

/// Runs the hub's import of the gateway's import directory.
async fn hub_import(hub: &Hub, g: &Gateway) -> Vec<(u64, Outcome)> {
    let report = import(&hub.config, &hub.store, &g.import, &g.answers)
        .await
        .unwrap_or_else(|e| panic!("import: {e}"));
    let mut seen: Vec<(u64, Outcome)> = report
        .files
        .into_iter()
        .map(|f| (f.id.map_or(0, |id| id.seq), f.outcome))
        .collect();
    seen.sort_by_key(|(s, _)| *s);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_shuffled_missing_replayed_tampered_or_forged_lose_and_duplicate_nothing() {
    let scene = Scene::start().await;
    let g = Gateway::new(scene.dir.path());
    let source = SqliteSource::create(scene.dir.path(), 50);
    let agent = offline_agent(&scene, &source, &g);

    // The sync is done when every batch is in the outbox; the hub was never contacted.
    let out = agent.sync_ok().await;
    out.assert_mentions(&["outbox"]);
    let written = g.outbox();
    let seqs: Vec<u64> = written.iter().map(|(s, _)| *s).collect();
    assert!(seqs.len() >= 5 && seqs[0] == 1, "{seqs:?}");
    let last = *seqs.last().unwrap();
    assert!(scene.hub.rows(CODE).await.is_empty());
    // No raw value of the dropped field in any file.
    for (_, p) in &written {
        let f = batch_of(p);
        let ndjson = exchange_protocol::batch::decompress(&f.body, 1 << 24).unwrap();
        assert!(!String::from_utf8_lossy(&ndjson).contains("note"), "{p:?}");
    }

    // First crossing: in reverse order, batch 2 missing, batch 4 tampered (one body byte
    // changed).
    let mut first: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|s| ![2, 4].contains(s))
        .collect();
    first.reverse();
    for seq in first {
        g.carry(seq);
    }
    let mut tampered = batch_of(&written[3].1);
    let at = tampered.body.len() / 2;
    tampered.body[at] ^= 0x01;
    std::fs::write(
        g.import.join(written[3].1.file_name().unwrap()),
        tampered.to_bytes(),
    )
    .unwrap();
    std::fs::remove_file(&written[3].1).unwrap();
    let seen = hub_import(&scene.hub, &g).await;
    assert!(
        matches!(
            seen.iter().find(|(s, _)| *s == 1),
            Some((_, Outcome::Applied { .. }))
        ),
        "{seen:?}"
    );
    for seq in (3..=last).filter(|s| *s != 4) {
        assert!(
            matches!(
                seen.iter().find(|(s, _)| *s == seq),
                Some((_, Outcome::Waiting { last_seq: 1 }))
            ),
            "batch {seq} waits for 2: {seen:?}"
        );
    }
    assert!(
        seen.iter()
            .any(|(_, o)| matches!(o, Outcome::Rejected { .. })),
        "the tampered file is refused: {seen:?}"
    );
    assert_eq!(scene.hub.rows(CODE).await.len(), 10, "only batch 1 applied");

    // A forged answer: batch 2 "applied", signed by the node's own key, not the hub's.
    let forged = forged_answer(&scene, &g, 2);
    std::fs::write(g.inbox.join("forged.exchange-answer"), forged).unwrap();
    // Half an answer (a gateway still writing it in place) waits; an answer for a resource
    // this agent does not have is set aside.
    let some_answer = &offline::list(&g.answers, Kind::Answer).unwrap()[0];
    let bytes = std::fs::read(some_answer).unwrap();
    std::fs::write(
        g.inbox.join("half.exchange-answer"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let other = String::from_utf8(bytes)
        .unwrap()
        .replacen(CODE, "330100-XXX-9999", 1);
    std::fs::write(g.inbox.join("other.exchange-answer"), other).unwrap();
    assert!(g.carry_answers() >= 3);
    // The agent imports the answers: batch 1 leaves the queue, the forgery is set aside, 3 and
    // the last wait for 2; every unanswered batch is written again (a new process).
    agent.sync_ok().await;
    assert_eq!(queued(&agent).await, last - 1);
    let reason = std::fs::read_to_string(g.inbox.join("rejected/forged.exchange-answer.reason"))
        .expect("the forged answer is set aside with its reason");
    assert!(reason.contains("not the hub's"), "{reason}");
    assert!(g.inbox.join("half.exchange-answer").exists());
    let reason = std::fs::read_to_string(g.inbox.join("rejected/other.exchange-answer.reason"))
        .expect("an answer for another resource is set aside");
    assert!(reason.contains("330100-XXX-9999"), "{reason}");

    // Second crossing: batch 2, the untampered 4 (rewritten by the agent), and batch 1 again
    // (a replay).
    let again: Vec<u64> = g.outbox().iter().map(|(s, _)| *s).collect();
    assert_eq!(
        again,
        (2..=last).collect::<Vec<_>>(),
        "unanswered batches rewritten"
    );
    g.carry(2);
    std::fs::write(
        g.import.join("replay-1.exchange-batch"),
        std::fs::read(
            g.import
                .join("done")
                .join(written[0].1.file_name().unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    g.carry(4);
    let seen = hub_import(&scene.hub, &g).await;
    assert!(
        seen.iter()
            .any(|(s, o)| *s == 1 && matches!(o, Outcome::Duplicate { .. })),
        "the replay is not applied again: {seen:?}"
    );
    for seq in 2..=last {
        assert!(
            seen.iter()
                .any(|(s, o)| *s == seq && matches!(o, Outcome::Applied { .. })),
            "batch {seq} applied: {seen:?}"
        );
    }
    assert_same(&scene.hub.rows(CODE).await, &source.expected());

    // The answers come back: the queue empties; stale outbox files are the gateway's to drop.
    g.carry_answers();
    agent.sync_ok().await;
    assert_eq!(queued(&agent).await, 0);
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
}

/// An answer file claiming batch `seq` was applied, signed with the node's key and chain
/// (anyone on the department's side holds those; only the hub's key makes a valid answer).
fn forged_answer(scene: &Scene, g: &Gateway, seq: u64) -> Vec<u8> {
    use exchange_protocol::offline::{ANSWER_SM3, ANSWER_STATUS, Answered};
    let (_, path) = g
        .outbox()
        .into_iter()
        .find(|(s, _)| *s == seq)
        .expect("batch in the outbox");
    let file_sm3 = exchange_protocol::digest::sm3_hex(&std::fs::read(&path).unwrap());
    let batch = batch_of(&path);
    let id = batch.batch_id().unwrap();
    let digest = batch.header("exchange-content-sm3").unwrap().to_owned();
    let body = serde_json::to_vec(&serde_json::json!({
        "status": "applied", "seq": seq, "records": 10, "last_seq": seq, "last_digest": digest
    }))
    .unwrap();
    let answer_sm3 = exchange_protocol::digest::sm3_hex(&body);
    let key = exchange_protocol::tls::load_key(&scene.pki.node_key).unwrap();
    let signature = exchange_protocol::signature::BatchSigner::new(&key)
        .unwrap()
        .sign_message(
            &Answered {
                id: &id,
                batch_sm3: &digest,
                file_sm3: &file_sm3,
                status: 200,
                answer_sm3: &answer_sm3,
            }
            .message(),
        )
        .unwrap();
    let mut headers: Vec<(String, String)> = [
        ("exchange-node", id.node.clone()),
        ("exchange-resource", id.resource.clone()),
        ("exchange-stream", id.stream.clone()),
        ("exchange-batch-seq", seq.to_string()),
        ("exchange-content-sm3", digest),
        ("exchange-batch-file-sm3", file_sm3.clone()),
        (ANSWER_STATUS, "200".to_owned()),
        (ANSWER_SM3, answer_sm3),
        ("exchange-signature", signature),
        ("content-type", "application/json".to_owned()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    let chain = exchange_protocol::tls::load_certs("node", &scene.pki.node_cert).unwrap();
    offline::push_certificates(&mut headers, &chain);
    OfflineFile {
        kind: Kind::Answer,
        headers,
        body,
    }
    .to_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restored_from_a_backup_stops_the_resource_as_online() {
    let mut scene = Scene::start().await;
    let g = Gateway::new(scene.dir.path());
    let source = SqliteSource::create(scene.dir.path(), 20);
    let agent = offline_agent(&scene, &source, &g);
    agent.sync_ok().await;
    g.carry_outbox();
    hub_import(&scene.hub, &g).await;
    let backup = scene.dir.path().join("hub-backup.db");
    rusqlite::Connection::open(scene.hub.sqlite.as_ref().expect("a SQLite hub"))
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    g.carry_answers();
    agent.sync_ok().await;
    assert_eq!(queued(&agent).await, 0);

    // More rows cross; then the hub's store goes back to the backup, which lacks them.
    source.insert(21, 15);
    agent.sync_ok().await;
    g.carry_outbox();
    hub_import(&scene.hub, &g).await;
    g.carry_answers();
    agent.sync_ok().await;
    assert_eq!(queued(&agent).await, 0);
    scene.hub.stop().await;
    scene.hub = Hub::start_with(scene.pki.hub_tls(), StoreConfig::sqlite(backup)).await;

    source.insert(36, 5);
    agent.sync_ok().await;
    g.carry_outbox();
    let seen = hub_import(&scene.hub, &g).await;
    assert!(
        seen.iter()
            .all(|(_, o)| matches!(o, Outcome::Waiting { .. })),
        "the restored hub waits for batches it lost: {seen:?}"
    );
    g.carry_answers();
    let out = agent.sync("30s").await;
    assert_ne!(out.code, Some(0), "{out}");
    out.assert_mentions(&[
        "missing at the hub",
        &format!("exchange-agent resync {CODE}"),
    ]);
    let status = agent.resource_status(CODE).await;
    assert!(
        status["stopped"]
            .as_str()
            .is_some_and(|s| s.contains("missing at the hub")),
        "{status}"
    );

    // Resync: the old stream's files still in the outbox are withdrawn, those at the hub's
    // import are the operator's to remove; the new stream's baseline makes the hub equal.
    let old: Vec<PathBuf> = offline::list(&g.outbox, Kind::Batch).unwrap();
    let out = agent.cmd(&["resync", CODE, "--yes"]).await;
    out.assert_code(0);
    out.assert_mentions(&[&format!("{} batch files of the old stream", old.len())]);
    assert!(offline::list(&g.outbox, Kind::Batch).unwrap().is_empty());
    for f in offline::list(&g.import, Kind::Batch).unwrap() {
        std::fs::remove_file(f).unwrap();
    }
    source
        .conn
        .execute("DELETE FROM residents WHERE id <= 3", [])
        .unwrap();
    agent.sync_ok().await;
    g.carry_outbox();
    let seen = hub_import(&scene.hub, &g).await;
    assert!(
        seen.iter()
            .all(|(_, o)| matches!(o, Outcome::Applied { .. })),
        "{seen:?}"
    );
    g.carry_answers();
    agent.sync_ok().await;
    assert_eq!(queued(&agent).await, 0);
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_switches_between_online_and_offline_on_one_stream() {
    let scene = Scene::start().await;
    let g = Gateway::new(scene.dir.path());
    let source = SqliteSource::create(scene.dir.path(), 30);
    online_agent(&scene, &source).sync_ok().await;
    assert_eq!(scene.hub.rows(CODE).await.len(), 30);

    // Offline: the next batches continue the stream; the hub imports them, but their answers
    // never come back before the switch.
    source.insert(31, 20);
    let agent = offline_agent(&scene, &source, &g);
    agent.sync_ok().await;
    let seqs: Vec<u64> = g.outbox().iter().map(|(s, _)| *s).collect();
    assert!(seqs.first().is_some_and(|s| *s > 1), "{seqs:?}");
    g.carry_outbox();
    let seen = hub_import(&scene.hub, &g).await;
    assert!(
        seen.iter()
            .all(|(_, o)| matches!(o, Outcome::Applied { .. })),
        "same stream, next seqs: {seen:?}"
    );
    assert_eq!(queued(&agent).await, seqs.len() as u64);

    // Online again: the batches the hub imported are acknowledged as duplicates, the next
    // ones applied.
    source.insert(51, 10);
    let agent = online_agent(&scene, &source);
    agent.sync_ok().await;
    assert_eq!(queued(&agent).await, 0);
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_service_writes_batches_and_releases_them_as_answers_arrive() {
    let scene = Scene::start().await;
    let g = Gateway::new(scene.dir.path());
    let source = SqliteSource::create(scene.dir.path(), 25);
    // Pulled every second by the service.
    let agent = offline_agent(&scene, &source, &g);
    let mut service = agent.spawn_run(&scene.dir.path().join("agent.log"));
    let outbox_holds = |n: usize| {
        let g = &g;
        move || {
            let ok = g.outbox().len() >= n;
            async move { ok }
        }
    };
    wait_until(
        "the service writes 3 batch files",
        Duration::from_secs(30),
        outbox_holds(3),
    )
    .await;
    g.carry_outbox();
    hub_import(&scene.hub, &g).await;
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
    g.carry_answers();
    wait_until(
        "the answers release every batch",
        Duration::from_secs(30),
        || async { agent.queued_batches(CODE).await == Some(0) },
    )
    .await;
    wait_until(
        "the answers read are deleted",
        Duration::from_secs(10),
        || async { offline::list(&g.inbox, Kind::Answer).unwrap().is_empty() },
    )
    .await;
    terminate(&mut service).await;
}

/// Runs `openssl ARGS` in `dir`; returns its standard output.
fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (the test needs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Base64 (RFC 4648 §4, padded) of a file's DER certificate converted by openssl.
fn der_base64(dir: &Path, pem: &Path) -> String {
    use base64::Engine;
    openssl(
        dir,
        &[
            "x509",
            "-in",
            pem.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            "cert.der",
        ],
    );
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("cert.der")).unwrap())
}

/// `openssl dgst -sha256 -sign KEY` of `message`, as `ecdsa-p256-sha256:BASE64`.
fn openssl_sign(dir: &Path, key: &Path, message: &[u8]) -> String {
    use base64::Engine;
    std::fs::write(dir.join("message"), message).unwrap();
    openssl(
        dir,
        &[
            "dgst",
            "-sha256",
            "-sign",
            key.to_str().unwrap(),
            "-out",
            "sig",
            "message",
        ],
    );
    format!(
        "ecdsa-p256-sha256:{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("sig")).unwrap())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_file_written_from_the_spec_with_openssl_is_imported_and_its_answer_checks_out() {
    use base64::Engine;
    let scene = Scene::start().await;
    let work = scene.dir.path().join("openssl");
    let import_dir = scene.dir.path().join("import");
    for d in [&work, &import_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    // §12.2: the online headers, both signatures, the certificate, the zstd NDJSON body.
    let node = exchange_tests::scene::NODE;
    let stream = "0123456789abcdef0123456789abcdef";
    let ndjson = b"{\"op\":\"upsert\",\"key\":\"K1\",\"fields\":{\"name\":\"\xe5\xbc\xa0*\"}}\n";
    std::fs::write(work.join("batch.ndjson"), ndjson).unwrap();
    let sm3 = String::from_utf8(openssl(&work, &["dgst", "-sm3", "-r", "batch.ndjson"])).unwrap();
    let sm3 = sm3.split_whitespace().next().unwrap().to_owned();
    let batch_signature = openssl_sign(
        &work,
        &scene.pki.node_key,
        format!("exchange-batch-signature-v1\n{node}\n{CODE}\n{stream}\n1\n{sm3}\n").as_bytes(),
    );
    let body = exchange_protocol::batch::compress(ndjson);
    let head = format!(
        "exchange-offline-batch 1\nexchange-protocol: 1\nexchange-node: {node}\nexchange-resource: {CODE}\nexchange-stream: {stream}\nexchange-batch-seq: 1\nexchange-record-count: 1\nexchange-content-sm3: {sm3}\ncontent-type: application/x-ndjson\ncontent-encoding: zstd\nexchange-signature: {batch_signature}\nexchange-certificate: {}\n",
        der_base64(&work, &scene.pki.node_cert)
    );
    let tail = format!("content-length: {}\n\n", body.len());
    let unsigned = [head.as_bytes(), tail.as_bytes(), &body].concat();
    let file_signature = openssl_sign(
        &work,
        &scene.pki.node_key,
        &[
            b"exchange-offline-file-signature-v1\n".as_slice(),
            &unsigned,
        ]
        .concat(),
    );
    let file = [
        head.as_bytes(),
        format!("exchange-file-signature: {file_signature}\n").as_bytes(),
        tail.as_bytes(),
        &body,
    ]
    .concat();
    std::fs::write(import_dir.join("from-the-spec.exchange-batch"), &file).unwrap();

    let report = import(
        &scene.hub.config,
        &scene.hub.store,
        &import_dir,
        &import_dir.join("answers"),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            report.files[..],
            [exchange_hub::import::ImportedFile {
                outcome: Outcome::Applied { records: 1 },
                ..
            }]
        ),
        "{report:?}"
    );
    assert_eq!(scene.hub.rows(CODE).await.len(), 1);
    // The node's signature is kept as online: `exchange-hub prove` works for this record.
    let proof = scene
        .hub
        .store
        .proof(CODE, "K1")
        .await
        .unwrap()
        .expect("evidence kept");
    assert_eq!((proof.node.as_str(), proof.seq), (node, 1));

    // §12.4, checked with openssl alone: the body's SM3, the hub's signature over the message.
    let answer_path = offline::list(&import_dir.join("answers"), Kind::Answer).unwrap();
    let answer = std::fs::read(&answer_path[0]).unwrap();
    let split = answer.windows(2).position(|w| w == b"\n\n").unwrap();
    let head = std::str::from_utf8(&answer[..split]).unwrap();
    let body = &answer[split + 2..];
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {head}"))
            .to_owned()
    };
    std::fs::write(work.join("answer.json"), body).unwrap();
    let body_sm3 =
        String::from_utf8(openssl(&work, &["dgst", "-sm3", "-r", "answer.json"])).unwrap();
    assert_eq!(
        body_sm3.split_whitespace().next().unwrap(),
        header("exchange-answer-sm3")
    );
    // The answer names the batch file it answers by the file's SM3.
    std::fs::write(work.join("batch.file"), &file).unwrap();
    let file_sm3 =
        String::from_utf8(openssl(&work, &["dgst", "-sm3", "-r", "batch.file"])).unwrap();
    let file_sm3 = file_sm3.split_whitespace().next().unwrap().to_owned();
    assert_eq!(header("exchange-batch-file-sm3"), file_sm3);
    let message = format!(
        "exchange-answer-signature-v1\n{node}\n{CODE}\n{stream}\n1\n{sm3}\n{file_sm3}\n{}\n{}\n",
        header("exchange-answer-status"),
        header("exchange-answer-sm3")
    );
    std::fs::write(work.join("message"), message).unwrap();
    let (scheme, signature) = header("exchange-signature")
        .split_once(':')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    assert_eq!(scheme, "ecdsa-p256-sha256");
    std::fs::write(
        work.join("sig"),
        base64::engine::general_purpose::STANDARD
            .decode(signature)
            .unwrap(),
    )
    .unwrap();
    std::fs::write(
        work.join("hub.der"),
        base64::engine::general_purpose::STANDARD
            .decode(header("exchange-certificate"))
            .unwrap(),
    )
    .unwrap();
    openssl(
        &work,
        &[
            "x509", "-inform", "DER", "-in", "hub.der", "-pubkey", "-noout", "-out", "hub.pub",
        ],
    );
    let verified = openssl(
        &work,
        &[
            "dgst",
            "-sha256",
            "-verify",
            "hub.pub",
            "-signature",
            "sig",
            "message",
        ],
    );
    assert!(String::from_utf8_lossy(&verified).contains("Verified OK"));
    let ack: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(ack["status"], "applied");
    assert_eq!(header("exchange-answer-status"), "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_saying_earlier_batches_are_missing_does_not_stop_the_resource() {
    let scene = Scene::start().await;
    let g = Gateway::new(scene.dir.path());
    let source = SqliteSource::create(scene.dir.path(), 20);
    let agent = offline_agent(&scene, &source, &g);
    agent.sync_ok().await;
    let seqs: Vec<u64> = g.outbox().iter().map(|(s, _)| *s).collect();
    assert!(seqs.len() >= 2, "{seqs:?}");
    // Batch 2 crosses first: it waits, and its answer says the hub's mark is 0.
    for seq in &seqs[1..] {
        g.carry(*seq);
    }
    hub_import(&scene.hub, &g).await;
    let held = scene.dir.path().join("held");
    std::fs::create_dir_all(&held).unwrap();
    carry_all(&g.answers, &held);
    // Batch 1 crosses; the hub applies 1 and the waiting ones. The gateway delivers the
    // answer to 1 with the old "mark 0" answers to the later ones, and loses the new ones.
    g.carry(1);
    let seen = hub_import(&scene.hub, &g).await;
    assert!(
        seen.iter()
            .all(|(_, o)| matches!(o, Outcome::Applied { .. })),
        "{seen:?}"
    );
    for a in offline::list(&g.answers, Kind::Answer).unwrap() {
        let f = OfflineFile::parse(Kind::Answer, &std::fs::read(&a).unwrap()).unwrap();
        if f.batch_id().unwrap().seq == 1 {
            std::fs::rename(&a, g.inbox.join(a.file_name().unwrap())).unwrap();
        } else {
            std::fs::remove_file(&a).unwrap();
        }
    }
    carry_all(&held, &g.inbox);
    let out = agent.sync("30s").await;
    assert_eq!(
        out.code,
        Some(0),
        "a late answer must not stop the resource: {out}"
    );
    let status = agent.resource_status(CODE).await;
    assert!(status["stopped"].is_null(), "{status}");
    assert_eq!(queued(&agent).await, seqs.len() as u64 - 1);
    // The later batches were written again at once; the hub has them: duplicates, released.
    g.carry_outbox();
    let seen = hub_import(&scene.hub, &g).await;
    assert!(
        seen.iter()
            .all(|(_, o)| matches!(o, Outcome::Duplicate { .. })),
        "{seen:?}"
    );
    g.carry_answers();
    agent.sync_ok().await;
    assert_eq!(queued(&agent).await, 0);
    assert_same(&scene.hub.rows(CODE).await, &source.expected());
}

/// Moves every answer file from `from` to `to`.
fn carry_all(from: &Path, to: &Path) {
    for a in offline::list(from, Kind::Answer).unwrap() {
        std::fs::rename(&a, to.join(a.file_name().unwrap())).unwrap();
    }
}
