//! `check --connect` tells the administrator what will go wrong before it does: a nullable
//! cursor column, a cursor order no index supplies (with the statement that creates one), and
//! why a source cannot be reached (the cause, not just "error connecting").

use exchange_tests::agent::{Agent, Output, Resource};
use exchange_tests::db::{MyDb, PgDb};
use exchange_tests::scene::Scene;

const CODE: &str = "330100-RSJ-0070";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_warns_about_a_nullable_cursor_column() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, note text NOT NULL, updated_at timestamptz)",
        )
        .await
        .unwrap();
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("hr", "postgres", &db.url)
            .resource(Resource::incremental(CODE, "hr", "events", "id").fields(&[
                ("id", "plain"),
                ("note", "plain"),
                ("updated_at", "plain"),
            ])),
    );
    let out = agent.check(true).await;
    out.assert_code(0);
    out.assert_mentions(&["cursor column `updated_at` may hold NULL", "NOT NULL"]);
    assert!(
        !out.text().contains("column `id` may hold NULL"),
        "the key is NOT NULL: {out}"
    );

    db.client
        .batch_execute("ALTER TABLE events ALTER COLUMN updated_at SET NOT NULL")
        .await
        .unwrap();
    let out = agent.check(true).await;
    out.assert_code(0);
    assert!(!out.text().contains("may hold NULL"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgres_source_keeps_its_cause() {
    let scene = Scene::start().await;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source(
                "hr",
                "postgres",
                &format!("postgres://nobody@127.0.0.1:{port}/hr"),
            )
            .resource(
                Resource::incremental(CODE, "hr", "events", "id")
                    .fields(&[("id", "plain"), ("updated_at", "plain")]),
            ),
    );
    let out = agent.check(true).await;
    out.assert_code(3);
    out.assert_mentions(&[&format!("127.0.0.1:{port}"), "onnection refused"]);
}

/// An incremental resource of `table` on source `hr` (`kind`, `url`).
fn people_agent(scene: &Scene, kind: &str, url: &str) -> Agent {
    scene.write_agent(&scene.agent_config().source("hr", kind, url).resource(
        Resource::incremental(CODE, "hr", "people", "id").fields(&[
            ("id", "plain"),
            ("note", "plain"),
            ("updated_at", "plain"),
        ]),
    ))
}

/// The statement `check --connect` asks a DBA to run: its line of its own.
fn create_index_line(out: &Output) -> String {
    out.stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("CREATE INDEX"))
        .unwrap_or_else(|| panic!("no CREATE INDEX line; {out}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_gives_the_index_a_cursor_needs_and_the_statement_as_printed_is_enough() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client
        .batch_execute(
            "CREATE TABLE people (id bigint PRIMARY KEY, note text NOT NULL,
               updated_at timestamptz NOT NULL);
             INSERT INTO people SELECT g, 'n' || g, now() - g * interval '1 minute'
               FROM generate_series(1, 500) g;
             ANALYZE people;",
        )
        .await
        .unwrap();
    let agent = people_agent(&scene, "postgres", &db.url);
    let out = agent.check(true).await;
    out.assert_code(0);
    out.assert_mentions(&[
        "warning: resource 330100-RSJ-0070: no index supplies the cursor order (updated_at, id)",
        "every pull reads and sorts the whole table",
    ]);
    let create_index = create_index_line(&out);
    assert_eq!(
        create_index,
        "CREATE INDEX CONCURRENTLY exchange_people_cursor ON public.people (updated_at, id);"
    );

    db.client.batch_execute(&create_index).await.unwrap();
    let out = agent.check(true).await;
    out.assert_code(0);
    assert!(!out.text().contains("no index supplies"), "{out}");
    out.assert_mentions(&[
        "the cursor order (updated_at, id) comes from index exchange_people_cursor",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_gives_mariadb_the_index_statement_too() {
    use mysql_async::prelude::Queryable;
    let scene = Scene::start().await;
    let db = MyDb::create().await;
    let mut conn = db.conn().await;
    conn.query_drop(
        "CREATE TABLE people (id BIGINT PRIMARY KEY, note VARCHAR(20) NOT NULL,
           updated_at DATETIME(6) NOT NULL);
         INSERT INTO people SELECT seq, CONCAT('n', seq), NOW(6) - INTERVAL seq MINUTE
           FROM seq_1_to_500;",
    )
    .await
    .unwrap();
    let agent = people_agent(&scene, "mysql", &db.url);
    let out = agent.check(true).await;
    out.assert_code(0);
    out.assert_mentions(&["no index supplies the cursor order (updated_at, id)"]);
    let create_index = create_index_line(&out);
    assert_eq!(
        create_index,
        format!(
            "CREATE INDEX `exchange_people_cursor` ON `{}`.`people` (`updated_at`, `id`);",
            db.name
        )
    );

    conn.query_drop(&create_index).await.unwrap();
    let out = agent.check(true).await;
    out.assert_code(0);
    assert!(!out.text().contains("no index supplies"), "{out}");
    out.assert_mentions(&["comes from index exchange_people_cursor"]);
}
