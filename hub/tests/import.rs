//! `exchange-hub import` (离线导入): batch files written as an agent in offline mode writes
//! them, applied through the hub's endpoint into a real SQLite store, answers signed by the
//! hub; and the binary's output and exit status.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use exchange_hub::config::HubConfig;
use exchange_hub::import::{self, ImportReport, Outcome, OutcomeKind};
use exchange_hub::store::Store;
use exchange_protocol::batch::{self, Ack, AckStatus, BatchId, ErrorBody, Record, header};
use exchange_protocol::offline::{self, Answered, Kind, OfflineFile};
use exchange_protocol::pki::{Authority, Validity};
use exchange_protocol::signature::{self, BatchSigner, Signature, Signed};
use exchange_protocol::tls::{self, MutualTls};

const NODE: &str = "rsj-node-01";
const RESOURCE: &str = "330100-RSJ-0001";

/// A hub configuration on the PKI's SQLite store, and its store opened.
async fn hub(pki: &Pki) -> (HubConfig, Store) {
    let config = HubConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        pki.hub_tls.clone(),
        pki.sqlite(),
    );
    let store = Store::open(&config.store).await.unwrap();
    (config, store)
}

/// The batch file an offline agent writes: the online headers, signed with `signer`'s key,
/// its certificate chain, the zstd body.
fn batch_file(
    signer: &MutualTls,
    node: &str,
    stream: &str,
    seq: u64,
    records: &[Record],
) -> OfflineFile {
    let mut ndjson = Vec::new();
    for r in records {
        batch::push_line(&mut ndjson, r);
    }
    let sm3 = batch::digest_hex(&ndjson);
    let key = tls::load_key(&signer.key).unwrap();
    let signature = BatchSigner::new(&key)
        .unwrap()
        .sign(&Signed {
            node,
            resource: RESOURCE,
            stream,
            seq,
            sm3: &sm3,
        })
        .unwrap();
    let mut headers: Vec<(String, String)> = [
        (header::PROTOCOL, batch::PROTOCOL_VERSION.to_owned()),
        (header::NODE, node.to_owned()),
        (header::RESOURCE, RESOURCE.to_owned()),
        (header::STREAM, stream.to_owned()),
        (header::SEQ, seq.to_string()),
        (header::RECORDS, records.len().to_string()),
        (header::DIGEST, sm3),
        (
            header::IDEMPOTENCY_KEY,
            format!("{node}/{RESOURCE}/{stream}/{seq}"),
        ),
        ("content-type", batch::CONTENT_TYPE.to_owned()),
        ("content-encoding", batch::CONTENT_ENCODING.to_owned()),
        (signature::HEADER, signature),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    let chain = tls::load_certs("client certificate", &signer.cert).unwrap();
    offline::push_certificates(&mut headers, &chain);
    let mut file = OfflineFile {
        kind: Kind::Batch,
        headers,
        body: batch::compress(&ndjson),
    };
    let whole = BatchSigner::new(&key)
        .unwrap()
        .sign_message(&file.file_message())
        .unwrap();
    file.headers
        .push((offline::FILE_SIGNATURE.to_owned(), whole));
    file
}

/// Writes `file` into `dir` under its usual name; returns the path.
fn put(dir: &Path, file: &OfflineFile) -> PathBuf {
    let path = dir.join(offline::file_name(Kind::Batch, &file.batch_id().unwrap()));
    std::fs::write(&path, file.to_bytes()).unwrap();
    path
}

/// The batch id of seq `seq` of `stream`.
fn id(stream: &str, seq: u64) -> BatchId {
    BatchId {
        node: NODE.to_owned(),
        resource: RESOURCE.to_owned(),
        stream: stream.to_owned(),
        seq,
    }
}

/// The record written by seq `seq`: key `k<seq>`, and key `last` holding the seq.
fn records(seq: u64) -> Vec<Record> {
    vec![
        upsert(&format!("k{seq}"), "{}"),
        upsert("last", &format!(r#"{{"seq":{seq}}}"#)),
    ]
}

/// The answer file of `id`, checked: parsed, its identity that of the batch, its body's SM3
/// and the hub's signature over [`Answered::message`] verified with the hub's certificate.
/// Returns the status and the body.
fn answer(pki: &Pki, answers: &Path, id: &BatchId) -> (u16, Vec<u8>) {
    let found = answers_of(answers, id);
    assert_eq!(found.len(), 1, "one answer for {id:?}");
    let file = found.into_iter().next().unwrap();
    assert_eq!(&file.batch_id().unwrap(), id);
    assert_eq!(file.header("content-type"), Some("application/json"));
    let status: u16 = file
        .header(offline::ANSWER_STATUS)
        .unwrap()
        .parse()
        .unwrap();
    let answer_sm3 = file.header(offline::ANSWER_SM3).unwrap();
    assert_eq!(answer_sm3, exchange_protocol::digest::sm3_hex(&file.body));
    let chain = file.certificates().unwrap();
    let hub_cert = tls::load_certs("hub certificate", &pki.hub_tls.cert).unwrap();
    assert_eq!(chain, hub_cert, "the answer carries the hub's chain");
    let message = Answered {
        id,
        batch_sm3: file.header(header::DIGEST).unwrap(),
        file_sm3: file.header(offline::BATCH_FILE_SM3).unwrap(),
        status,
        answer_sm3,
    }
    .message();
    Signature::parse(file.header(signature::HEADER).unwrap())
        .unwrap()
        .verify_message(&message, &chain[0])
        .expect("the hub's signature verifies");
    (status, file.body)
}

/// The answer files in `answers` that answer `id`.
fn answers_of(answers: &Path, id: &BatchId) -> Vec<OfflineFile> {
    offline::list(answers, Kind::Answer)
        .unwrap_or_default()
        .into_iter()
        .map(|p| OfflineFile::parse(Kind::Answer, &std::fs::read(p).unwrap()).unwrap())
        .filter(|f| f.batch_id().as_ref() == Ok(id))
        .collect()
}

/// The answer of `id`, a 200 with an Ack.
fn ack_answer(pki: &Pki, answers: &Path, id: &BatchId) -> Ack {
    let (status, body) = answer(pki, answers, id);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// The answer of `id`, an error with `status`.
fn error_answer(pki: &Pki, answers: &Path, id: &BatchId, status: u16) -> ErrorBody {
    let (got, body) = answer(pki, answers, id);
    assert_eq!(got, status, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// The exported records of the resource, as (key, fields).
async fn stored(store: &Store) -> Vec<(String, String)> {
    exchange_hub::export::export(store, RESOURCE)
        .await
        .unwrap()
        .into_iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap().to_owned(),
                serde_json::to_string(&v["fields"]).unwrap(),
            )
        })
        .collect()
}

/// The batch files left at the top level of `dir`.
fn left(dir: &Path) -> Vec<PathBuf> {
    offline::list(dir, Kind::Batch).unwrap()
}

/// The outcomes of a report by file name.
fn outcomes(report: &ImportReport) -> Vec<(String, Outcome)> {
    report
        .files
        .iter()
        .map(|f| {
            (
                f.path.file_name().unwrap().to_string_lossy().into_owned(),
                f.outcome.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn shuffled_files_are_applied_in_seq_order_and_moved_to_done() {
    let pki = Pki::new();
    let (config, store) = hub(&pki).await;
    let node = pki.client(NODE);
    let stream = new_stream();
    let dir = tempfile::tempdir().unwrap();
    // Names that sort against the seq order: what the name says is only informative.
    for (name, seq) in [("a", 5), ("b", 3), ("c", 1), ("d", 4), ("e", 2)] {
        let file = batch_file(&node, NODE, &stream, seq, &records(seq));
        std::fs::write(
            dir.path().join(format!("{name}.exchange-batch")),
            file.to_bytes(),
        )
        .unwrap();
    }
    let answers = dir.path().join("answers");
    let report = import::import(&config, &store, dir.path(), &answers)
        .await
        .unwrap();
    assert_eq!(report.count(OutcomeKind::Applied), 5, "{report:?}");
    let seqs: Vec<u64> = report
        .files
        .iter()
        .map(|f| f.id.as_ref().unwrap().seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "applied in seq order");
    assert!(left(dir.path()).is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("done")).unwrap().count(),
        5
    );
    let rows = stored(&store).await;
    assert_eq!(rows.len(), 6);
    assert!(rows.contains(&("last".to_owned(), r#"{"seq":5}"#.to_owned())));
    for seq in 1..=5 {
        let ack = ack_answer(&pki, &answers, &id(&stream, seq));
        assert_eq!(
            (ack.status, ack.seq, ack.last_seq, ack.records),
            (AckStatus::Applied, seq, seq, 2)
        );
    }
}

#[tokio::test]
async fn files_after_a_missing_one_wait_in_place_until_it_arrives() {
    let pki = Pki::new();
    let (config, store) = hub(&pki).await;
    let node = pki.client(NODE);
    let stream = new_stream();
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers");
    for seq in [1, 3, 4] {
        put(
            dir.path(),
            &batch_file(&node, NODE, &stream, seq, &records(seq)),
        );
    }
    let report = import::import(&config, &store, dir.path(), &answers)
        .await
        .unwrap();
    assert_eq!(
        (
            report.count(OutcomeKind::Applied),
            report.count(OutcomeKind::Waiting)
        ),
        (1, 2),
        "{report:?}"
    );
    for f in &report.files[1..] {
        assert_eq!(f.outcome, Outcome::Waiting { last_seq: 1 });
    }
    assert_eq!(left(dir.path()).len(), 2, "the waiting files stay");
    for seq in [3, 4] {
        let error = error_answer(&pki, &answers, &id(&stream, seq), 409);
        assert_eq!(error.last_seq, Some(1), "{}", error.error);
    }
    assert_eq!(stored(&store).await.len(), 2);

    // The missing file arrives: the next run applies all three, in order.
    put(
        dir.path(),
        &batch_file(&node, NODE, &stream, 2, &records(2)),
    );
    let report = import::import(&config, &store, dir.path(), &answers)
        .await
        .unwrap();
    assert_eq!(report.count(OutcomeKind::Applied), 3, "{report:?}");
    assert!(left(dir.path()).is_empty());
    for seq in 2..=4 {
        assert_eq!(ack_answer(&pki, &answers, &id(&stream, seq)).last_seq, seq);
    }
    assert!(
        stored(&store)
            .await
            .contains(&("last".to_owned(), r#"{"seq":4}"#.to_owned()))
    );
}

#[tokio::test]
async fn a_replayed_file_is_a_duplicate_set_aside_and_not_applied_again() {
    let pki = Pki::new();
    let (config, store) = hub(&pki).await;
    let node = pki.client(NODE);
    let stream = new_stream();
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers");
    let first = batch_file(&node, NODE, &stream, 1, &[upsert("a", "{}")]);
    put(dir.path(), &first);
    put(
        dir.path(),
        &batch_file(&node, NODE, &stream, 2, &[delete("a")]),
    );
    let report = import::import(&config, &store, dir.path(), &answers)
        .await
        .unwrap();
    assert_eq!(report.count(OutcomeKind::Applied), 2);
    assert!(stored(&store).await.is_empty());

    // Replayed twice (e.g. carried again by mistake): `a` is not written again.
    for round in 0..2 {
        let path = put(dir.path(), &first);
        let report = import::import(&config, &store, dir.path(), &answers)
            .await
            .unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            outcomes(&report),
            [(name.clone(), Outcome::Duplicate { last_seq: 2 })]
        );
        assert!(stored(&store).await.is_empty(), "nothing applied again");
        // An earlier rejected file of the same name is kept: the later one gets a suffix.
        let aside = if round == 0 {
            name
        } else {
            format!("{name}.1")
        };
        let rejected = dir.path().join("rejected");
        assert_eq!(
            std::fs::read(rejected.join(&aside)).unwrap(),
            first.to_bytes()
        );
        let reason = std::fs::read_to_string(rejected.join(format!("{aside}.reason"))).unwrap();
        assert!(
            reason.contains("already applied") && reason.contains("nothing was applied again"),
            "{reason}"
        );
        let ack = ack_answer(&pki, &answers, &id(&stream, 1));
        assert_eq!(
            (ack.status, ack.seq, ack.last_seq),
            (AckStatus::Duplicate, 1, 2)
        );
    }
    assert!(left(dir.path()).is_empty());
}

#[tokio::test]
async fn a_tampered_file_is_rejected_with_no_answer_and_nothing_applied() {
    let pki = Pki::new();
    let (config, store) = hub(&pki).await;
    let node = pki.client(NODE);
    let stream = new_stream();
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers");
    let good = batch_file(&node, NODE, &stream, 1, &records(1));
    let mut body = good.clone();
    let middle = body.body.len() / 2;
    body.body[middle] ^= 0x01;
    std::fs::write(dir.path().join("body.exchange-batch"), body.to_bytes()).unwrap();
    let mut seq = good.clone();
    seq.headers
        .iter_mut()
        .find(|(n, _)| n == header::SEQ)
        .unwrap()
        .1 = "2".into();
    std::fs::write(dir.path().join("seq.exchange-batch"), seq.to_bytes()).unwrap();
    let mut count = good.clone();
    count
        .headers
        .iter_mut()
        .find(|(n, _)| n == header::RECORDS)
        .unwrap()
        .1 = "3".into();
    std::fs::write(dir.path().join("count.exchange-batch"), count.to_bytes()).unwrap();
    // A baseline mark added on the way (it would sweep every other stream's records).
    let mut baseline = good.clone();
    baseline.headers.insert(
        0,
        (
            header::BASELINE.to_owned(),
            batch::BASELINE_COMPLETE.to_owned(),
        ),
    );
    std::fs::write(
        dir.path().join("baseline.exchange-batch"),
        baseline.to_bytes(),
    )
    .unwrap();
    let mut cut = good.to_bytes();
    cut.pop();
    std::fs::write(dir.path().join("cut.exchange-batch"), cut).unwrap();
    let mut unsigned = good.clone();
    unsigned.headers.retain(|(n, _)| n != signature::HEADER);
    std::fs::write(
        dir.path().join("unsigned.exchange-batch"),
        unsigned.to_bytes(),
    )
    .unwrap();

    let report = import::import(&config, &store, dir.path(), &answers)
        .await
        .unwrap();
    assert_eq!(report.count(OutcomeKind::Rejected), 6, "{report:?}");
    let reason = |name: &str| match &report
        .files
        .iter()
        .find(|f| f.path.ends_with(name))
        .unwrap()
        .outcome
    {
        Outcome::Rejected { reason } => reason.clone(),
        other => panic!("{other:?}"),
    };
    let changed = reason("body.exchange-batch");
    assert!(
        changed.contains("zstd") || changed.contains("SM3"),
        "{changed}"
    );
    assert!(reason("seq.exchange-batch").contains("signature does not verify"));
    assert!(reason("count.exchange-batch").contains("exchange-record-count"));
    assert!(reason("cut.exchange-batch").contains("content-length"));
    assert!(reason("unsigned.exchange-batch").contains("exchange-signature"));
    assert!(
        reason("baseline.exchange-batch").contains("file's signature does not verify"),
        "{}",
        reason("baseline.exchange-batch")
    );
    for name in ["body", "seq", "count", "cut", "unsigned", "baseline"] {
        let aside = dir
            .path()
            .join("rejected")
            .join(format!("{name}.exchange-batch.reason"));
        assert_eq!(
            std::fs::read_to_string(aside).unwrap().trim_end(),
            reason(&format!("{name}.exchange-batch"))
        );
    }
    assert!(left(dir.path()).is_empty());
    assert_eq!(std::fs::read_dir(&answers).unwrap().count(), 0, "no answer");
    assert!(stored(&store).await.is_empty(), "nothing applied");
}

#[tokio::test]
async fn a_file_from_another_ca_or_claiming_another_node_is_rejected() {
    let pki = Pki::new();
    let (config, store) = hub(&pki).await;
    let other_ca = Authority::generate("Another CA").unwrap();
    let stranger = pki.client_with(&other_ca, NODE, Validity::Current, "stranger");
    let impostor = pki.client("sjj-node-02");
    let stream = new_stream();
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers");
    let foreign = batch_file(&stranger, NODE, &stream, 1, &records(1));
    std::fs::write(
        dir.path().join("foreign.exchange-batch"),
        foreign.to_bytes(),
    )
    .unwrap();
    // Signed by a genuine certificate, but of another node than the file names.
    let claimed = batch_file(&impostor, NODE, &stream, 1, &records(1));
    std::fs::write(
        dir.path().join("claimed.exchange-batch"),
        claimed.to_bytes(),
    )
    .unwrap();

    let report = import::import(&config, &store, dir.path(), &answers)
        .await
        .unwrap();
    let reasons: Vec<String> = report
        .files
        .iter()
        .map(|f| match &f.outcome {
            Outcome::Rejected { reason } => reason.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    // Listed by name: claimed, then foreign.
    assert!(
        reasons[0].contains("identifies node `sjj-node-02` but the file claims node `rsj-node-01`"),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].contains("client CA"), "{}", reasons[1]);
    assert_eq!(std::fs::read_dir(&answers).unwrap().count(), 0);
    assert!(stored(&store).await.is_empty());
}

#[tokio::test]
async fn a_file_the_endpoint_refuses_is_set_aside_with_its_answer() {
    let pki = Pki::new();
    let (config, store) = hub(&pki).await;
    let owner = pki.client(NODE);
    let other = pki.client("sjj-node-02");
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers");
    put(
        dir.path(),
        &batch_file(&owner, NODE, &new_stream(), 1, &records(1)),
    );
    import::import(&config, &store, dir.path(), &answers)
        .await
        .unwrap();
    // Another node's batch of the same resource: authentic, but the resource is owned.
    let stream = new_stream();
    let theirs = batch_file(&other, "sjj-node-02", &stream, 1, &records(1));
    put(dir.path(), &theirs);
    let report = import::import(&config, &store, dir.path(), &answers)
        .await
        .unwrap();
    let Outcome::Refused { status, reason } = &report.files[0].outcome else {
        panic!("{report:?}");
    };
    assert_eq!(*status, 403, "{reason}");
    let their_id = theirs.batch_id().unwrap();
    assert_eq!(error_answer(&pki, &answers, &their_id, 403).error, *reason);
    let name = offline::file_name(Kind::Batch, &their_id);
    let aside = std::fs::read_to_string(dir.path().join("rejected").join(format!("{name}.reason")))
        .unwrap();
    assert!(aside.contains(reason.as_str()), "{aside}");
    assert!(left(dir.path()).is_empty());
}

#[tokio::test]
async fn a_failing_store_stops_the_import_and_leaves_the_file() {
    let pki = Pki::new();
    let (config, store) = hub(&pki).await;
    let node = pki.client(NODE);
    let stream = new_stream();
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers");
    put(
        dir.path(),
        &batch_file(&node, NODE, &stream, 1, &records(1)),
    );
    import::import(&config, &store, dir.path(), &answers)
        .await
        .unwrap();
    // The store refuses every write from now on.
    let db = rusqlite::Connection::open(pki.dir.path().join("hub.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER broken BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'broken'); END;",
    )
    .unwrap();
    let path = put(
        dir.path(),
        &batch_file(&node, NODE, &stream, 2, &records(2)),
    );
    let error = import::import(&config, &store, dir.path(), &answers)
        .await
        .unwrap_err();
    assert!(
        matches!(error, import::ImportError::Store { status: 500, .. }),
        "{error}"
    );
    assert_eq!(error.done(), Some(&ImportReport::default()));
    assert_eq!(left(dir.path()), [path]);
    assert!(answers_of(&answers, &id(&stream, 2)).is_empty());
}

#[tokio::test]
async fn the_command_prints_each_outcome_and_exits_0() {
    let pki = Pki::new();
    let node = pki.client(NODE);
    let stream = new_stream();
    let dir = pki.dir.path().join("inbound");
    std::fs::create_dir(&dir).unwrap();
    put(&dir, &batch_file(&node, NODE, &stream, 1, &records(1)));
    put(&dir, &batch_file(&node, NODE, &stream, 3, &records(3)));
    std::fs::write(dir.join("junk.exchange-batch"), b"not a batch").unwrap();
    let ca = pki.dir.path().join("ca.pem");
    let config = pki.dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[store]\nurl = \"sqlite://hub.db\"\n",
            ca.display(),
            pki.hub_tls.cert.display(),
            pki.hub_tls.key.display()
        ),
    )
    .unwrap();
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_exchange-hub"))
            .args([
                "import",
                "--config",
                config.to_str().unwrap(),
                dir.to_str().unwrap(),
            ])
            .env("EXCHANGE_LANG", "en")
            .env_remove("RUST_LOG")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].starts_with("junk.exchange-batch  -  rejected: not an offline exchange file"),
        "{stdout}"
    );
    assert!(
        lines[1].contains(&format!(
            "{NODE}/{RESOURCE}/{stream}/1  applied (2 records)"
        )),
        "{stdout}"
    );
    assert!(
        lines[2].contains("/3  waiting") && lines[2].contains("seq 1"),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with(
            "3 batch files: 1 applied, 0 duplicate, 1 waiting, 0 refused, 1 rejected; answers in "
        ),
        "{stdout}"
    );
    assert_eq!(std::fs::read_dir(dir.join("answers")).unwrap().count(), 2);

    // An import directory that cannot be read: exit 1, naming it.
    let missing = pki.dir.path().join("missing");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_exchange-hub"))
        .args([
            "import",
            "--config",
            config.to_str().unwrap(),
            missing.to_str().unwrap(),
        ])
        .env("EXCHANGE_LANG", "en")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read the import directory"),
        "{stderr}"
    );
}
