//! Retention of the audit log through the binary: the service, configured with `[audit]
//! max_file_bytes`, `keep` and `archive_dir`, rotates its audit log while it delivers and
//! moves older files to the archive; every acknowledged batch keeps exactly one `batch.acked`
//! entry across the data directory and the archive; `audit verify` checks the whole chain with
//! the configured archive, and without one from the oldest file present (saying that what was
//! archived was not checked); an archive lacking archived files (empty, the oldest deleted, one
//! in the middle) fails, naming them.

use std::path::{Path, PathBuf};

use exchange_tests::agent::{Agent, terminate};
use exchange_tests::scene::Scene;
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::wait_until;

const CODE: &str = "330100-RSJ-0001";

/// The rotated audit files of a directory, oldest first.
fn rotated(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("audit.jsonl.")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// Every entry of the archive's files, then of the data directory's, in chain order (a line
/// being written while the service runs is left out).
fn entries(archive: &Path, data: &Path) -> Vec<serde_json::Value> {
    let mut files = rotated(archive);
    files.extend(rotated(data));
    files.push(data.join("audit.jsonl"));
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether the service's `status.json` says no batch is queued (the last one acknowledged).
fn nothing_queued(data: &Path) -> bool {
    std::fs::read_to_string(data.join("status.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|s| s["resources"][0]["queued_batches"] == 0)
}

fn acked_seqs(entries: &[serde_json::Value]) -> Vec<u64> {
    entries
        .iter()
        .filter(|e| e["action"] == "batch.acked")
        .map(|e| e["detail"]["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_audit_files_are_archived_and_the_chain_verifies_with_and_without_them() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 200);
    let config = scene
        .agent_config()
        .source("biz", "sqlite", &source.url())
        .resource(source.resource(CODE, "biz"))
        .max_records(5);
    let archive = scene.dir.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let text = format!(
        "{}\n[audit]\nmax_file_bytes = \"2KiB\"\nkeep = 1\narchive_dir = \"{}\"\n",
        config.to_toml(),
        archive.display()
    );
    let file = scene.dir.path().join("agent.toml");
    std::fs::write(&file, text).unwrap();
    let agent = Agent::at(&file);
    let data = config.data_dir.clone();

    // 40 batches of 5; the baseline's mark rides on the last of them, or on a 41st empty
    // batch when the read's horizon had not yet passed its start (timing decides which).
    let whole = |seqs: &[u64]| {
        (seqs.len() == 40 || seqs.len() == 41) && seqs.iter().copied().eq(1..=seqs.len() as u64)
    };
    let mut service = agent.spawn_run(&scene.dir.path().join("agent.log"));
    wait_until(
        "every batch is acknowledged and audited, and the archival caught up",
        exchange_tests::DEADLINE,
        || {
            let (archive, data) = (archive.clone(), data.clone());
            async move {
                data.join("audit.jsonl").exists()
                    && whole(&acked_seqs(&entries(&archive, &data)))
                    && nothing_queued(&data)
                    && rotated(&data).len() <= 1
            }
        },
    )
    .await;
    terminate(&mut service).await;

    let all = entries(&archive, &data);
    let seqs = acked_seqs(&all);
    assert!(whole(&seqs), "each batch once, in order: {seqs:?}");
    assert!(rotated(&archive).len() >= 3, "{:?}", rotated(&archive));
    let archived: Vec<&serde_json::Value> = all
        .iter()
        .filter(|e| e["action"] == "audit.archived")
        .collect();
    assert!(!archived.is_empty());
    assert_eq!(archived[0]["detail"]["first_entry"], 1);

    // With the configured archive: the whole chain.
    let whole = agent.cmd(&["audit", "verify"]).await;
    whole.assert_code(0).assert_mentions(&[
        &format!("intact: {} entries", all.len()),
        "older files read from the archive",
    ]);
    // Without an archive read (a configuration without `archive_dir`): from the oldest file
    // present, saying that the entries before were not checked, and how to check them.
    let bare = scene.dir.path().join("bare.toml");
    std::fs::write(&bare, config.to_toml()).unwrap();
    let local = Agent::at(&bare).cmd(&["audit", "verify"]).await;
    local.assert_code(0).assert_mentions(&[
        "intact from entry",
        &format!("of {} entries", all.len()),
        "NOT checked",
        &archive.display().to_string(),
        "--archive DIR",
    ]);
    // An archive read that lacks the archived files fails, naming them.
    let empty = scene.dir.path().join("elsewhere");
    std::fs::create_dir(&empty).unwrap();
    let files = rotated(&archive);
    let newest = files.last().unwrap().file_name().unwrap().to_str().unwrap();
    agent
        .cmd(&["audit", "verify", "--archive", &empty.display().to_string()])
        .await
        .assert_code(1)
        .assert_mentions(&["NOT intact", "missing", newest]);

    // The oldest archived file deleted: the chain from the next one is whole, but the file an
    // `audit.archived` entry names is missing.
    let oldest = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    let kept = std::fs::read(&files[0]).unwrap();
    std::fs::remove_file(&files[0]).unwrap();
    agent
        .cmd(&["audit", "verify"])
        .await
        .assert_code(1)
        .assert_mentions(&["NOT intact", "missing: 1 archived file", &oldest]);
    std::fs::write(&files[0], kept).unwrap();
    agent.cmd(&["audit", "verify"]).await.assert_code(0);

    // A file gone from the middle of the archive is named too.
    let middle = files[1].file_name().unwrap().to_str().unwrap().to_owned();
    std::fs::remove_file(&files[1]).unwrap();
    agent
        .cmd(&["audit", "verify"])
        .await
        .assert_code(1)
        .assert_mentions(&["NOT intact", "missing", &middle]);
}
