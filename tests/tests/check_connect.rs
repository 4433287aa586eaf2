//! `check --connect` tells the administrator what will go wrong before it does: a nullable
//! cursor column, and why a source cannot be reached (the cause, not just "error connecting").

use exchange_tests::agent::Resource;
use exchange_tests::db::PgDb;
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
