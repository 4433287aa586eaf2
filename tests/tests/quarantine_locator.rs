//! Traceable quarantine, from PostgreSQL through the real agent binary: a row quarantined for
//! an invalid pseudonymized key is listed with its locator (values of columns the policy keeps
//! in clear: `id=6`), never with its raw key; `quarantine find CODE --key RAW` computes the
//! key as it leaves on this machine and finds the entry; the raw key is nowhere in the agent's
//! data directory or output. A locator on a masked field is refused, naming the key.

use exchange_agent::identifier::citizen_id_check;
use exchange_agent::policy::PseudonymKey;
use exchange_tests::agent::{Agent, Mode, Output, Resource, pulled, q};
use exchange_tests::db::PgDb;
use exchange_tests::scene::Scene;
use exchange_tests::verification::key_file;

const CODE: &str = "330100-RSJ-0301";
/// A citizen ID with a wrong check character (the right one is `X`).
const INVALID: &str = "110105194912310021";
const NAME: &str = "哨兵姓名";

/// A valid citizen ID born on 1980-01-<day>.
fn citizen_id(day: u32) -> String {
    let first17 = format!("110105198001{day:02}123");
    format!("{first17}{}", citizen_id_check(&first17).unwrap())
}

/// `people (id, id_no, name, updated_at)`: five valid keys and, as `id` 6, [`INVALID`].
async fn people(db: &PgDb) {
    db.client
        .batch_execute(
            "CREATE TABLE people (
                id bigint PRIMARY KEY,
                id_no text NOT NULL,
                name text NOT NULL,
                updated_at timestamptz NOT NULL
            )",
        )
        .await
        .unwrap();
    for id in 1..=6i64 {
        let id_no = if id == 6 {
            INVALID.to_owned()
        } else {
            citizen_id(id as u32)
        };
        let name = if id == 6 {
            NAME.to_owned()
        } else {
            format!("居民{id}")
        };
        db.client
            .execute(
                "INSERT INTO people VALUES ($1::bigint, $2, $3, timestamptz '2024-01-01 00:00:00+00' + $1::bigint * interval '1 minute')",
                &[&id, &id_no, &name],
            )
            .await
            .unwrap();
    }
}

/// An agent on `people`: the key `id_no` pseudonymized as a citizen ID, `id` plain, `name`
/// masked; `extra` lines for the resource (`locator = …`).
fn agent(scene: &Scene, db: &PgDb, resource: Resource, extra: &[&str]) -> Agent {
    let dir = scene.dir.path();
    let pseudonym = key_file(dir, "pseudonym.key", 0x11);
    let seal = key_file(dir, "seal.key", 0x22);
    scene.write_agent(
        &scene
            .agent_config()
            .policy(&[
                &format!(
                    "pseudonym_key_file = {}",
                    q(&pseudonym.display().to_string())
                ),
                &format!("seal_key_file = {}", q(&seal.display().to_string())),
            ])
            .source("hr", "postgres", &db.url)
            .resource(resource.share("unconditional", extra).fields(&[
                (
                    "id_no",
                    "{ rule = \"pseudonym\", identifier = \"citizen_id\" }",
                ),
                ("id", "plain"),
                ("name", "mask:name"),
            ])),
    )
}

/// The token the invalid key leaves (and is quarantined) under.
fn invalid_token() -> String {
    PseudonymKey::from_hex(1, &hex::encode([0x11u8; 32]))
        .unwrap()
        .token("citizen_id", INVALID)
}

/// Fails the test if `out` shows the raw key or the masked name.
#[track_caller]
fn assert_no_raw_values(out: &Output) {
    for secret in [INVALID, NAME] {
        assert!(!out.text().contains(secret), "`{secret}` is shown; {out}");
    }
}

/// Fails the test if a file under `dir` holds the raw invalid key.
fn assert_raw_key_not_stored(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_raw_key_not_stored(&path);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(INVALID.len())
                    .any(|w| w == INVALID.as_bytes()),
                "the raw key is stored in {}",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_row_is_listed_with_its_locator_and_found_by_its_raw_key() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    people(&db).await;
    let agent = agent(
        &scene,
        &db,
        Resource::snapshot(CODE, "hr", "people", "id_no"),
        &["locator = [\"id\"]"],
    );

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 5, "{out}");
    out.assert_mentions(&["quarantined 1 rows"]);

    let token = invalid_token();
    let list = agent.cmd(&["quarantine", "list", CODE]).await;
    list.assert_code(0)
        .assert_mentions(&[&format!("key {token}  row id=6: key column `id_no`")]);
    assert_no_raw_values(&list);
    let status = agent.resource_status(CODE).await;
    assert_eq!(
        status["recent_quarantine"][0]["locator"], "id=6",
        "{status}"
    );

    let found = agent
        .cmd(&["quarantine", "find", CODE, "--key", INVALID])
        .await;
    found.assert_code(0).assert_mentions(&[
        &format!("{CODE}: 1 quarantine entries with this key"),
        &format!("key {token}  row id=6"),
    ]);
    assert!(
        !found.stdout.contains(INVALID),
        "the raw key is not printed; {found}"
    );
    // A key that was delivered, and one no row has: no entry.
    for key in [citizen_id(1), "110105198001309999".to_owned()] {
        let none = agent
            .cmd(&["quarantine", "find", CODE, "--key", &key])
            .await;
        none.assert_code(0)
            .assert_mentions(&[&format!("No quarantine entry of `{CODE}` has this key")]);
        assert!(!none.stdout.contains(&key), "{none}");
    }
    let unknown = agent
        .cmd(&["quarantine", "find", "330100-RSJ-9999", "--key", INVALID])
        .await;
    unknown.assert_code(1);
    assert!(!unknown.text().contains(INVALID), "{unknown}");

    assert_raw_key_not_stored(&scene.dir.path().join("agent-data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_resource_locates_rows_by_its_cursor_by_default() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    people(&db).await;
    let resource = Resource {
        mode: Mode::Incremental(vec!["updated_at".into(), "id".into()]),
        ..Resource::incremental(CODE, "hr", "people", "id_no")
    };
    let agent = agent(&scene, &db, resource, &[]);

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 5, "{out}");
    let list = agent.cmd(&["quarantine", "list"]).await;
    list.assert_code(0).assert_mentions(&[&format!(
        "key {}  row updated_at=2024-01-01T00:06:00Z, id=6: ",
        invalid_token()
    )]);
    assert_no_raw_values(&list);
    let found = agent
        .cmd(&["quarantine", "find", CODE, "--key", INVALID])
        .await;
    found
        .assert_code(0)
        .assert_mentions(&["row updated_at=2024-01-01T00:06:00Z, id=6"]);
    assert_no_raw_values(&found);
    assert_raw_key_not_stored(&scene.dir.path().join("agent-data"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locator_on_a_masked_field_is_refused_naming_the_key() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    let agent = agent(
        &scene,
        &db,
        Resource::snapshot(CODE, "hr", "people", "id_no"),
        &["locator = [\"id\", \"name\"]"],
    );
    let out = agent.check(false).await;
    out.assert_code(2).assert_mentions(&[
        "key `resources[0].locator`",
        "locator column `name` is desensitized (mask:name)",
    ]);
}
