//! PostgreSQL connector against a real server.
//!
//! The server comes from `EXCHANGE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, a superuser with trust authentication). These
//! tests never skip: if the server is unreachable they fail and say how to start one. Each
//! test works in its own schema, dropped at the end (also when the test fails).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use exchange_connectors::postgres::PostgresConnector;
use exchange_connectors::{
    Bound, Connector, ConnectorError, HorizonInfo, OrderPlan, OrderRequest, Page, PageRequest,
    Relation, Selection, SourceKind, SourceSpec, UnknownOrder, Value,
};
use tokio_postgres::{Client, NoTls};

fn pg_url() -> String {
    std::env::var("EXCHANGE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// `url` naming another database.
fn url_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").expect("a URL");
    let host = rest.split_once('/').map_or(rest, |(h, _)| h);
    format!("{scheme}://{host}/{db}{query}")
}

/// The URL with another user (trust authentication assumed).
fn url_as(user: &str) -> String {
    let url = pg_url();
    let (scheme, rest) = url
        .split_once("://")
        .expect("EXCHANGE_TEST_PG_URL is a URL");
    let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
    format!("{scheme}://{user}@{rest}")
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {url} is unreachable ({e}). These tests need a real server: start \
             the local one (`pg_ctlcluster 15 main start` or `service postgresql start`) with \
             trust authentication for 127.0.0.1 and a database `test` (`createdb -U postgres \
             test`), or run `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust -e \
             POSTGRES_DB=test postgres:15`, or point EXCHANGE_TEST_PG_URL at another server"
            )
        });
    tokio::spawn(connection);
    client
}

async fn admin() -> Client {
    connect(&pg_url()).await
}

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "exch_{prefix}_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A schema of one test, dropped (with everything in it) when the test ends.
struct Scratch {
    schema: String,
    roles: Vec<String>,
    /// Prepared transactions to roll back (they outlive their session and hold locks).
    prepared: Vec<String>,
    /// Databases to drop.
    databases: Vec<String>,
}

impl Scratch {
    async fn new(client: &Client, prefix: &str) -> Scratch {
        let schema = unique(prefix);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        Scratch {
            schema,
            roles: Vec::new(),
            prepared: Vec::new(),
            databases: Vec::new(),
        }
    }

    /// `schema.name`
    fn q(&self, name: &str) -> String {
        format!("{}.{name}", self.schema)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // A failed test may leave a session of its own with an open transaction holding locks
        // in the schema (its connection task cannot run while this blocks the runtime's
        // thread): end those sessions — only this test's, found by the unique schema — and
        // never wait for a lock forever.
        let mut sql = format!(
            "SET lock_timeout = '10s';
             SELECT pg_terminate_backend(l.pid) FROM pg_locks l
               JOIN pg_class c ON c.oid = l.relation
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = '{schema}' AND l.pid <> pg_backend_pid();
             DROP SCHEMA IF EXISTS {schema} CASCADE;",
            schema = self.schema
        );
        for role in &self.roles {
            sql.push_str(&format!(
                "DROP OWNED BY {role}; DROP ROLE IF EXISTS {role};"
            ));
        }
        let url = pg_url();
        let prepared = std::mem::take(&mut self.prepared);
        let databases = std::mem::take(&mut self.databases);
        // Drop runs inside the test's runtime: clean up from a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, connection)) = tokio_postgres::connect(&url, NoTls).await {
                    tokio::spawn(connection);
                    for db in databases {
                        if let Ok((c, conn)) =
                            tokio_postgres::connect(&url_db(&url, &db), NoTls).await
                        {
                            tokio::spawn(conn);
                            // A prepared transaction is ended from its own database.
                            for gid in &prepared {
                                let _ = c
                                    .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
                                    .await;
                            }
                            let _ = c
                                .batch_execute(
                                    "DO $$ DECLARE s text; BEGIN FOR s IN SELECT subname FROM \
                                     pg_subscription WHERE subdbid = (SELECT oid FROM pg_database \
                                     WHERE datname = current_database()) LOOP EXECUTE \
                                     format('ALTER SUBSCRIPTION %I SET (slot_name = NONE)', s); \
                                     END LOOP; END $$;",
                                )
                                .await;
                            let subs: Vec<String> = c
                                .query("SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())", &[])
                                .await
                                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                                .unwrap_or_default();
                            for sub in subs {
                                let _ = c.batch_execute(&format!("DROP SUBSCRIPTION {sub}")).await;
                            }
                        }
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                            .await;
                    }
                    let _ = client.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}

fn spec(url: &str) -> SourceSpec {
    SourceSpec {
        name: "hr-db".into(),
        kind: SourceKind::Postgres,
        url: url.into(),
        password: None,
        ca: None,
        pool_size: 1,
        replica_lag: std::time::Duration::from_secs(300),
    }
}

fn connector(url: &str) -> PostgresConnector {
    PostgresConnector::new(&spec(url)).unwrap()
}

fn table(name: String, columns: &[&str], cursor: &[&str]) -> Selection {
    Selection {
        relation: Relation::Table(name),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        cursor: cursor.iter().map(|c| c.to_string()).collect(),
    }
}

async fn read(
    c: &PostgresConnector,
    selection: &Selection,
    after: Option<&[Value]>,
    limit: usize,
    bound: Bound,
) -> Page {
    c.read_page(&PageRequest {
        selection,
        after,
        limit,
        bound,
    })
    .await
    .unwrap()
}

fn cell(page: &Page, row: usize, col: usize) -> Value {
    page.rows[row].values[col].clone().unwrap()
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an Int, got {other:?}"),
    }
}

/// Stores a cursor as the agent does (tagged JSON) and loads it back.
fn stored(cursor: &[Value]) -> Vec<Value> {
    let text = serde_json::to_string(cursor).unwrap();
    serde_json::from_str(&text).unwrap()
}

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn every_type_maps_to_its_documented_value() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "types").await;
    admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS citext")
        .await
        .or_else(|e| {
            // Another test run may be creating it at the same moment.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .unwrap();
    let citext_schema: String = admin
        .query_one(
            "SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = \
             e.extnamespace WHERE e.extname = 'citext'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let money: String = admin
        .query_one("SELECT '12.34'::money::text", &[])
        .await
        .unwrap()
        .get(0);
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            r#"
            CREATE TYPE {mood} AS ENUM ('sad', 'happy');
            CREATE TABLE {t} (
                id int4 PRIMARY KEY, b bool, i2 int2, i4 int4, i8min int8, i8max int8, o oid,
                f4 float4, f8 float8, n numeric, tx text, vc varchar(10), bp char(5), nm name,
                ci {citext_schema}.citext, d date, ts timestamp, tz timestamptz, by bytea,
                jb jsonb, js json, u uuid, ip inet, iv interval, m {mood}, arr int4[],
                mo money, tm time
            );
            INSERT INTO {t} VALUES (
                1, true, -32768, 2147483647, -9223372036854775808, 9223372036854775807,
                4294967295, 0.1, 0.1, 12345678901234567890123456789.000100, '中文', 'abc', 'ab',
                'nm', 'MiXeD', '2024-02-29', '2024-02-29 23:59:58.00012',
                '2024-03-01 07:59:58.000120+08:00', '\x00ff0001',
                '{{"big": 123456789012345678901234567890.123456789, "a": [1, "中"]}}',
                '{{"z": 1, "a": 2.50}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
                '192.168.0.1/24', '1 day 02:03:04', 'happy', '{{1,2,3}}', '12.34', '13:14:15.5'
            );
            INSERT INTO {t} (id) VALUES (2);
            "#,
            mood = s.q("mood"),
        ))
        .await
        .unwrap();

    let ts = NaiveDate::from_ymd_opt(2024, 2, 29)
        .unwrap()
        .and_hms_micro_opt(23, 59, 58, 120)
        .unwrap();
    let json = |text: &str| Value::Json(serde_json::from_str(text).unwrap());
    let money_json = format!("\"{money}\"");
    let expected: Vec<(&str, Value, &str)> = vec![
        ("id", Value::Int(1), "1"),
        ("b", Value::Bool(true), "true"),
        ("i2", Value::Int(-32768), "-32768"),
        ("i4", Value::Int(2147483647), "2147483647"),
        ("i8min", Value::Int(i64::MIN), "-9223372036854775808"),
        ("i8max", Value::Int(i64::MAX), "9223372036854775807"),
        ("o", Value::UInt(4294967295), "4294967295"),
        ("f4", Value::Float(0.1), "0.1"),
        ("f8", Value::Float(0.1), "0.1"),
        (
            "n",
            Value::Decimal("12345678901234567890123456789.000100".into()),
            "\"12345678901234567890123456789.000100\"",
        ),
        ("tx", Value::Text("中文".into()), "\"中文\""),
        ("vc", Value::Text("abc".into()), "\"abc\""),
        ("bp", Value::Text("ab   ".into()), "\"ab   \""),
        ("nm", Value::Text("nm".into()), "\"nm\""),
        ("ci", Value::Text("MiXeD".into()), "\"MiXeD\""),
        ("d", Value::Date(ts.date()), "\"2024-02-29\""),
        ("ts", Value::Timestamp(ts), "\"2024-02-29T23:59:58.000120\""),
        (
            "tz",
            Value::TimestampTz(ts.and_utc()),
            "\"2024-02-29T23:59:58.000120Z\"",
        ),
        ("by", Value::Bytes(vec![0, 255, 0, 1]), "\"AP8AAQ==\""),
        (
            "jb",
            json(r#"{"a":[1,"中"],"big":123456789012345678901234567890.123456789}"#),
            r#"{"a":[1,"中"],"big":123456789012345678901234567890.123456789}"#,
        ),
        ("js", json(r#"{"z":1,"a":2.50}"#), r#"{"z":1,"a":2.50}"#),
        (
            "u",
            Value::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"",
        ),
        (
            "ip",
            Value::Text("192.168.0.1/24".into()),
            "\"192.168.0.1/24\"",
        ),
        (
            "iv",
            Value::Text("1 day 02:03:04".into()),
            "\"1 day 02:03:04\"",
        ),
        ("m", Value::Text("happy".into()), "\"happy\""),
        ("arr", Value::Text("{1,2,3}".into()), "\"{1,2,3}\""),
        ("mo", Value::Text(money.clone()), &money_json),
        ("tm", Value::Text("13:14:15.5".into()), "\"13:14:15.5\""),
    ];
    let columns: Vec<&str> = expected.iter().map(|(c, _, _)| *c).collect();
    let selection = table(t.clone(), &columns, &["id"]);
    let c = connector(&pg_url());
    let page = read(&c, &selection, None, 10, Bound::None).await;
    assert_eq!(page.rows.len(), 2);
    assert_eq!(
        &*page.columns,
        &columns.iter().map(|c| c.to_string()).collect::<Vec<_>>()[..]
    );
    for (i, (column, value, json_text)) in expected.iter().enumerate() {
        let got = cell(&page, 0, i);
        assert_eq!(&got, value, "column {column}");
        assert_eq!(
            serde_json::to_string(&got.to_json()).unwrap(),
            *json_text,
            "JSON of column {column}"
        );
    }
    assert_eq!(cell(&page, 1, 0), Value::Int(2));
    for (i, (column, _, _)) in expected.iter().enumerate().skip(1) {
        assert_eq!(cell(&page, 1, i), Value::Null, "NULL in column {column}");
    }

    let described = c.describe(&selection).await.unwrap();
    let types: Vec<(&str, &str)> = described
        .iter()
        .map(|d| (d.name.as_str(), d.source_type.as_str()))
        .collect();
    for pair in [
        ("i8min", "int8"),
        ("n", "numeric"),
        ("bp", "bpchar"),
        ("ci", "citext"),
        ("tz", "timestamptz"),
        ("jb", "jsonb"),
        ("m", "mood"),
        ("arr", "_int4"),
    ] {
        assert!(types.contains(&pair), "{pair:?} in {types:?}");
    }
}

#[tokio::test]
async fn unrepresentable_values_fail_only_their_own_cell() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "infinity").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int4 PRIMARY KEY, ts timestamp, tz timestamptz, d date,
                f4 float4, f8 float8, n numeric, note text);
             INSERT INTO {t} VALUES
               (1, 'infinity', now(), current_date, 1, 1, 1, 'a'),
               (2, now(), '-infinity', current_date, 1, 1, 1, 'b'),
               (3, now(), now(), 'infinity', 1, 1, 1, 'c'),
               (4, now(), now(), current_date, '-Infinity', 1, 1, 'd'),
               (5, now(), now(), current_date, 1, 'NaN', 1, 'e'),
               (6, now(), now(), current_date, 1, 'Infinity', 1, 'f'),
               (7, now(), now(), current_date, 1, 1, 'NaN', 'g'),
               (8, now(), now(), current_date, 1, 1, 'Infinity', 'h');"
        ))
        .await
        .unwrap();
    let columns = ["id", "ts", "tz", "d", "f4", "f8", "n", "note"];
    let selection = table(t, &columns, &["id"]);
    let c = connector(&pg_url());
    let page = read(&c, &selection, None, 100, Bound::None).await;
    let bad = ["ts", "tz", "d", "f4", "f8", "f8", "n", "n"];
    assert_eq!(page.rows.len(), bad.len());
    for (row, bad_column) in page.rows.iter().zip(bad) {
        for (column, value) in columns.iter().zip(&row.values) {
            if *column == bad_column {
                let err = value.as_ref().expect_err(column);
                assert_eq!(err.column, *column);
                assert!(err.to_string().contains(column), "{err}");
            } else {
                assert!(value.is_ok(), "{column}: {value:?}");
            }
        }
    }
}

#[tokio::test]
async fn pages_with_one_shared_timestamp_yield_every_row_once() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "pages").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, updated_at timestamptz NOT NULL, note text);
             INSERT INTO {t} SELECT i, '2024-01-01 00:00:00+00', 'n' || i
               FROM generate_series(1000, 1, -1) i;
             INSERT INTO {t} SELECT 1000 + i, '2023-12-31 00:00:00+00', 'early'
               FROM generate_series(1, 5) i;"
        ))
        .await
        .unwrap();
    let selection = table(t, &["id", "note", "updated_at"], &["updated_at", "id"]);
    let c = connector(&pg_url());
    let mut after: Option<Vec<Value>> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = read(
            &c,
            &selection,
            after.as_deref(),
            100,
            Bound::Horizon {
                safety_lag: Duration::ZERO,
            },
        )
        .await;
        assert!(matches!(
            page.horizon.info,
            HorizonInfo::Clock | HorizonInfo::OpenTransaction { .. }
        ));
        if page.rows.is_empty() {
            break;
        }
        pages += 1;
        assert!(page.rows.len() <= 100);
        for row in &page.rows {
            seen.push(int(row.values[0].as_ref().unwrap()));
        }
        let last = page.rows.last().unwrap();
        after = Some(stored(&[
            last.values[2].clone().unwrap(),
            last.values[0].clone().unwrap(),
        ]));
    }
    assert_eq!(pages, 11);
    let expected: Vec<i64> = (1001..=1005).chain(1..=1000).collect();
    assert_eq!(seen, expected, "every row exactly once, in cursor order");
}

#[tokio::test]
async fn cursor_values_of_every_kind_bind_back_to_their_column() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "cursorkinds").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int4, u uuid, by bytea, n numeric, ts timestamp, d date,
                tx text, o oid, f8 float8, jb jsonb, iv interval);
             INSERT INTO {t} VALUES
               (1, '00000000-0000-0000-0000-000000000001', '\\x00', 1.10, '2024-01-01 00:00:00.000001',
                '2024-01-01', 'a', 1, 0.1, '{{\"a\": 1}}', '1 second'),
               (2, '00000000-0000-0000-0000-000000000002', '\\x0000', 1.2, '2024-01-01 00:00:00.000002',
                '2024-01-02', 'b', 2, 0.2, '{{\"a\": 2}}', '1 minute'),
               (3, 'ffffffff-0000-0000-0000-000000000000', '\\xff', 10, '2024-01-02 00:00:00',
                '2024-01-03', '中', 3, 1e300, '{{\"b\": 1}}', '1 hour');"
        ))
        .await
        .unwrap();
    let c = connector(&pg_url());
    for column in ["u", "by", "n", "ts", "d", "tx", "o", "f8", "jb", "iv"] {
        let selection = table(t.clone(), &["id", column], &[column]);
        let mut after: Option<Vec<Value>> = None;
        let mut ids = Vec::new();
        loop {
            let page = read(&c, &selection, after.as_deref(), 1, Bound::None).await;
            let Some(row) = page.rows.first() else { break };
            ids.push(int(row.values[0].as_ref().unwrap()));
            after = Some(stored(&[row.values[1].clone().unwrap()]));
            assert!(
                ids.len() <= 3,
                "cursor on {column} does not advance: {ids:?}"
            );
        }
        assert_eq!(ids, [1, 2, 3], "cursor on {column}");
    }
}

/// Polls `read` until `done` holds for its page; the page must satisfy `check` every time.
async fn poll_page(
    c: &PostgresConnector,
    selection: &Selection,
    after: Option<&[Value]>,
    bound: Bound,
    check: impl Fn(&Page),
    done: impl Fn(&Page) -> bool,
) -> Page {
    let start = Instant::now();
    loop {
        let page = read(c, selection, after, 1000, bound).await;
        check(&page);
        if done(&page) {
            return page;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "condition not reached: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(page: &Page) -> Vec<i64> {
    page.rows
        .iter()
        .map(|r| int(r.values[0].as_ref().unwrap()))
        .collect()
}

#[tokio::test]
async fn late_commit_is_not_skipped() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "late").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now(),
                note text);
             INSERT INTO {t} (id, note) VALUES (1, 'before');"
        ))
        .await
        .unwrap();

    // A writer opens a transaction, writes a row stamped with its start, and does not commit.
    let writer = connect(&pg_url()).await;
    writer.batch_execute("BEGIN").await.unwrap();
    writer
        .batch_execute(&format!("INSERT INTO {t} (id, note) VALUES (2, 'late')"))
        .await
        .unwrap();
    let late_start: DateTime<Utc> = writer.query_one("SELECT now()", &[]).await.unwrap().get(0);
    // Meanwhile later rows commit.
    admin
        .batch_execute(&format!(
            "INSERT INTO {t} (id, note) VALUES (3, 'after');
             INSERT INTO {t} (id, note) VALUES (4, 'after');"
        ))
        .await
        .unwrap();

    let selection = table(
        t.clone(),
        &["id", "updated_at", "note"],
        &["updated_at", "id"],
    );
    let c = connector(&pg_url());
    let bound = Bound::Horizon {
        safety_lag: Duration::ZERO,
    };
    let first = poll_page(
        &c,
        &selection,
        None,
        bound,
        |page| {
            match &page.horizon.info {
                HorizonInfo::OpenTransaction { since, .. } => {
                    let since: DateTime<Utc> = since.parse().unwrap();
                    assert!(
                        since <= late_start,
                        "horizon {since} after the open transaction"
                    );
                }
                other => panic!("expected the open transaction to bound the page: {other:?}"),
            }
            let got = ids(page);
            assert!(
                !got.contains(&3) && !got.contains(&4),
                "rows committed after the open transaction began were read past the horizon: \
                 {got:?}"
            );
        },
        |page| ids(page) == [1],
    )
    .await;
    let last = first.rows.last().unwrap();
    let cursor = stored(&[
        last.values[1].clone().unwrap(),
        last.values[0].clone().unwrap(),
    ]);

    writer.batch_execute("COMMIT").await.unwrap();
    let page = poll_page(
        &c,
        &selection,
        Some(&cursor),
        bound,
        |_| {},
        |page| ids(page).len() == 3,
    )
    .await;
    assert_eq!(
        ids(&page),
        [2, 3, 4],
        "the late row comes first, nothing is skipped"
    );
    assert_eq!(cell(&page, 0, 2), Value::Text("late".into()));
}

#[tokio::test]
async fn date_cursor_waits_until_the_day_is_over() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "dates").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int4 PRIMARY KEY, d date NOT NULL);
             INSERT INTO {t} VALUES (1, current_date - 1), (2, current_date);"
        ))
        .await
        .unwrap();
    let selection = table(t, &["id", "d"], &["d", "id"]);
    let c = connector(&pg_url());
    let page = poll_page(
        &c,
        &selection,
        None,
        Bound::Horizon {
            safety_lag: Duration::ZERO,
        },
        |page| {
            assert!(
                !ids(page).contains(&2),
                "today's rows are read before the day ended"
            )
        },
        |page| ids(page) == [1],
    )
    .await;
    assert_ne!(page.horizon.info, HorizonInfo::Unbounded);
    // Unbounded reads see both.
    let page = read(&c, &selection, None, 10, Bound::None).await;
    assert_eq!(ids(&page), [1, 2]);
    assert_eq!(page.horizon.info, HorizonInfo::Unbounded);
}

#[tokio::test]
async fn timestamp_cursor_keeps_the_safety_lag() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "lag").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int4 PRIMARY KEY, at timestamp NOT NULL);
             INSERT INTO {t} VALUES (1, localtimestamp - interval '10 minutes'),
                                    (2, localtimestamp - interval '1 minute'),
                                    (3, localtimestamp + interval '1 hour');"
        ))
        .await
        .unwrap();
    let selection = table(t, &["id", "at"], &["at", "id"]);
    let c = connector(&pg_url());
    poll_page(
        &c,
        &selection,
        None,
        Bound::Horizon {
            safety_lag: Duration::from_secs(300),
        },
        |page| {
            let got = ids(page);
            assert!(!got.contains(&2) && !got.contains(&3), "{got:?}");
        },
        |page| ids(page) == [1],
    )
    .await;
}

#[tokio::test]
async fn query_resource_cannot_write() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "readonly").await;
    let t = s.q("t");
    let sneak = s.q("sneak");
    let seq = s.q("seq");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int4 PRIMARY KEY, note text);
             INSERT INTO {t} VALUES (1, 'a'), (2, 'b');
             CREATE SEQUENCE {seq};
             CREATE FUNCTION {sneak}() RETURNS int4 LANGUAGE sql
               AS $$ INSERT INTO {t} VALUES (99, 'written') RETURNING id $$;"
        ))
        .await
        .unwrap();
    let c = connector(&pg_url());
    let query = |q: String| Selection {
        relation: Relation::Query(q),
        columns: vec!["id".into()],
        cursor: vec!["id".into()],
    };

    let reading = query(format!("SELECT id, note FROM {t} WHERE id > 0;"));
    let page = read(&c, &reading, None, 10, Bound::None).await;
    assert_eq!(ids(&page), [1, 2]);

    for (what, q) in [
        (
            "data-modifying CTE",
            format!("WITH w AS (INSERT INTO {t} VALUES (98, 'x') RETURNING id) SELECT id FROM w"),
        ),
        ("function that inserts", format!("SELECT {sneak}() AS id")),
        ("nextval", format!("SELECT nextval('{seq}')::int4 AS id")),
    ] {
        let err = c
            .read_page(&PageRequest {
                selection: &query(q),
                after: None,
                limit: 10,
                bound: Bound::None,
            })
            .await
            .expect_err(what);
        assert!(
            matches!(&err, ConnectorError::Statement { source_name, .. } if source_name == "hr-db"),
            "{what}: {err}"
        );
    }
    let function_err = c
        .read_page(&PageRequest {
            selection: &query(format!("SELECT {sneak}() AS id")),
            after: None,
            limit: 10,
            bound: Bound::None,
        })
        .await
        .unwrap_err();
    assert!(
        function_err.to_string().contains("read-only"),
        "{function_err}"
    );

    let count: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2, "nothing was written");
    // The connector still works after the refusals.
    let page = read(&c, &reading, None, 10, Bound::None).await;
    assert_eq!(ids(&page), [1, 2]);
}

#[tokio::test]
async fn unreachable_server_is_reported_with_address_and_without_password() {
    let c = PostgresConnector::new(&SourceSpec {
        password: Some("other-secret".into()),
        ..spec("postgres://postgres:s3cret-pw@127.0.0.1:1/test")
    })
    .unwrap();
    let selection = table("t".into(), &["id"], &["id"]);
    let errors = [
        c.probe().await.unwrap_err(),
        c.read_page(&PageRequest {
            selection: &selection,
            after: None,
            limit: 1,
            bound: Bound::None,
        })
        .await
        .unwrap_err(),
        c.describe(&selection).await.unwrap_err(),
    ];
    for err in errors {
        match &err {
            ConnectorError::Unreachable {
                source_name,
                address,
                ..
            } => {
                assert_eq!(source_name, "hr-db");
                assert_eq!(address, "127.0.0.1:1/test");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        assert!(err.is_transient());
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("hr-db") && text.contains("127.0.0.1:1"),
            "{text}"
        );
        assert!(
            !text.contains("s3cret") && !text.contains("other-secret"),
            "password leaked: {text}"
        );
    }
}

#[tokio::test]
async fn tls_is_verified_and_never_falls_back_to_plaintext() {
    let admin = admin().await;
    let dir = tempfile::tempdir().unwrap();
    let base = pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };

    // A CA that did not issue the server's certificate (or a server without TLS): every mode
    // that asks for TLS fails; none falls back to plaintext.
    let wrong = exchange_protocol::pki::Authority::generate("not the server's CA").unwrap();
    let wrong_ca = dir.path().join("wrong-ca.pem");
    wrong.write_cert(&wrong_ca).unwrap();
    for mode in ["prefer", "require", "verify-ca", "verify-full"] {
        let c = PostgresConnector::new(&SourceSpec {
            ca: Some(wrong_ca.clone()),
            ..spec(&format!("{base}{sep}sslmode={mode}"))
        })
        .unwrap();
        let err = c.probe().await.expect_err(mode);
        assert!(
            matches!(&err, ConnectorError::Unreachable { reason, .. } if reason.contains("TLS")),
            "sslmode={mode}: {err}"
        );
    }
    // A CA without sslmode also means TLS.
    let c = PostgresConnector::new(&SourceSpec {
        ca: Some(wrong_ca.clone()),
        ..spec(&base)
    })
    .unwrap();
    assert!(c.probe().await.is_err());
    // Plaintext, when asked for, works.
    connector(&format!("{base}{sep}sslmode=disable"))
        .probe()
        .await
        .unwrap();

    // When the server has TLS (Debian's default: a self-signed certificate for `localhost`),
    // trusting its certificate gives a TLS session, and only for the name it was issued for.
    let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    if ssl != "on" {
        eprintln!("the server has ssl = off: only the refusals above were checked");
        return;
    }
    let cert: String = admin
        .query_one("SELECT pg_read_file(current_setting('ssl_cert_file'))", &[])
        .await
        .unwrap()
        .get(0);
    let server_ca = dir.path().join("server.pem");
    std::fs::write(&server_ca, cert).unwrap();
    let by_name = base.replace("127.0.0.1", "localhost");
    let c = PostgresConnector::new(&SourceSpec {
        ca: Some(server_ca.clone()),
        ..spec(&format!("{by_name}{sep}sslmode=verify-full"))
    })
    .unwrap();
    let selection = Selection {
        relation: Relation::Query(
            "SELECT pid, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()".into(),
        ),
        columns: vec!["pid".into(), "ssl".into()],
        cursor: vec!["pid".into()],
    };
    let page = read(&c, &selection, None, 1, Bound::None).await;
    assert_eq!(cell(&page, 0, 1), Value::Bool(true), "the session uses TLS");
    let by_address = base.replace("localhost", "127.0.0.1");
    let c = PostgresConnector::new(&SourceSpec {
        ca: Some(server_ca),
        ..spec(&format!("{by_address}{sep}sslmode=require"))
    })
    .unwrap();
    let err = c.probe().await.unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Unreachable { reason, .. } if reason.contains("not valid for")),
        "the host name is verified even with sslmode=require: {err}"
    );
}

#[tokio::test]
async fn describe_names_missing_columns_and_tables() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "describe").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, \"Name\" varchar(20), at timestamptz)"
        ))
        .await
        .unwrap();
    let c = connector(&pg_url());
    let info = c
        .describe(&table(t.clone(), &["id", "Name", "at"], &["id"]))
        .await
        .unwrap();
    let got: Vec<(String, String)> = info.into_iter().map(|i| (i.name, i.source_type)).collect();
    assert_eq!(
        got,
        [
            ("id".to_owned(), "int8".to_owned()),
            ("Name".to_owned(), "varchar".to_owned()),
            ("at".to_owned(), "timestamptz".to_owned())
        ]
    );
    let err = c
        .describe(&table(t.clone(), &["id", "no_such_column"], &["id"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Config { reason, .. } if reason.contains("no_such_column")),
        "{err}"
    );
    let err = c
        .describe(&table(s.q("no_such_table"), &["id"], &["id"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Statement { reason, .. } if reason.contains("no_such_table")),
        "{err}"
    );
    // A cursor column outside the selection is a configuration error.
    let err = c
        .read_page(&PageRequest {
            selection: &table(t, &["id"], &["at"]),
            after: None,
            limit: 1,
            bound: Bound::None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Config { .. }), "{err}");
}

#[tokio::test]
async fn reader_without_pg_read_all_stats_is_bounded_by_the_lag_only() {
    let admin = admin().await;
    let mut s = Scratch::new(&admin, "noprivs").await;
    let role = unique("reader");
    s.roles.push(role.clone());
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             CREATE TABLE {t} (id int4 PRIMARY KEY, at timestamptz NOT NULL);
             INSERT INTO {t} VALUES (1, now() - interval '1 hour');
             GRANT USAGE ON SCHEMA {schema} TO {role};
             GRANT SELECT ON {t} TO {role};",
            schema = s.schema
        ))
        .await
        .unwrap();
    let c = connector(&url_as(&role));
    let probe = c.probe().await.unwrap();
    assert!(probe.server.starts_with("PostgreSQL "), "{}", probe.server);
    assert!(!probe.sees_open_transactions);
    let hint = probe.missing_privilege.unwrap();
    assert!(
        hint.contains("GRANT pg_read_all_stats TO") && hint.contains(&role),
        "{hint}"
    );
    let page = read(
        &c,
        &table(t, &["id", "at"], &["at", "id"]),
        None,
        10,
        Bound::Horizon {
            safety_lag: Duration::from_secs(60),
        },
    )
    .await;
    assert_eq!(page.horizon.info, HorizonInfo::LagOnly);
    assert_eq!(ids(&page), [1]);

    let probe = connector(&pg_url()).probe().await.unwrap();
    assert!(probe.sees_open_transactions, "the test user is a superuser");
    assert_eq!(probe.missing_privilege, None);
}

#[tokio::test]
async fn broken_session_is_reestablished() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "reconnect").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int4 PRIMARY KEY); INSERT INTO {t} VALUES (1), (2);"
        ))
        .await
        .unwrap();
    let app = unique("app");
    let base = pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let c = connector(&format!("{base}{sep}application_name={app}"));
    let selection = table(t, &["id"], &["id"]);
    let bound = Bound::Horizon {
        safety_lag: Duration::ZERO,
    };
    let page = read(&c, &selection, None, 10, bound).await;
    assert_eq!(ids(&page), [1, 2]);
    assert_eq!(
        page.horizon.info,
        HorizonInfo::Unbounded,
        "an integer cursor has no horizon"
    );

    let pids: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pids.len(), 1, "the connector's session");
    let terminated: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pids[0]])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    let start = Instant::now();
    loop {
        let alive: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pids[0]],
            )
            .await
            .unwrap()
            .get(0);
        if alive == 0 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the backend did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next read notices the broken session, reconnects and succeeds.
    let page = read(&c, &selection, None, 10, bound).await;
    assert_eq!(ids(&page), [1, 2]);
    let new_pid: i32 = admin
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(new_pid, pids[0]);
}

/// Rows of a page as `id` values (first column).
fn row_ids(rows: &[exchange_connectors::Row]) -> Vec<i64> {
    let mut ids: Vec<i64> = rows
        .iter()
        .map(|r| int(r.values[0].as_ref().unwrap()))
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn function_named_like_a_missing_column_is_refused() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "deny").await;
    let t = s.q("t");
    let v = s.q("v");
    // `src.<fname>` on a relation without that column is the call `<fname>(src)`, which here
    // returns the whole row as text. The function takes the schema's row type, so dropping
    // the schema drops it; it lives in `public` so that the search path finds it.
    let fname = unique("name");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int4 PRIMARY KEY, secret text NOT NULL);
             INSERT INTO {t} VALUES (1, 'hidden');
             CREATE VIEW {v} AS SELECT id FROM {t};
             CREATE FUNCTION public.{fname}({t}) RETURNS text LANGUAGE sql AS 'SELECT $1::text';
             CREATE FUNCTION public.{fname}({v}) RETURNS text LANGUAGE sql AS 'SELECT $1::text';"
        ))
        .await
        .unwrap();
    let c = connector(&pg_url());
    let relations = [
        Relation::Table(t.clone()),
        Relation::Table(v.clone()),
        Relation::Query(format!("SELECT id FROM {t}")),
    ];
    for relation in relations {
        let selection = Selection {
            relation: relation.clone(),
            columns: vec!["id".into(), fname.clone()],
            cursor: vec!["id".into()],
        };
        let err = c.describe(&selection).await.unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Config { reason, .. } if reason.contains(&fname)),
            "{relation:?}: {err}"
        );
        assert!(!err.to_string().contains("hidden"), "{err}");
        let err = c
            .read_page(&PageRequest {
                selection: &selection,
                after: None,
                limit: 10,
                bound: Bound::None,
            })
            .await
            .unwrap_err();
        assert!(matches!(&err, ConnectorError::Config { .. }), "{err}");
        let err = c
            .lookup(&selection, "id", &[Value::Int(1)])
            .await
            .unwrap_err();
        assert!(matches!(&err, ConnectorError::Config { .. }), "{err}");
    }

    // A column dropped after the plan was learned is refused on the next read too.
    admin
        .batch_execute(&format!(
            "ALTER TABLE {t} ADD COLUMN {fname} text; UPDATE {t} SET {fname} = 'x';"
        ))
        .await
        .unwrap();
    let selection = table(t.clone(), &["id", &fname], &["id"]);
    let page = read(&c, &selection, None, 10, Bound::None).await;
    assert_eq!(cell(&page, 0, 1), Value::Text("x".into()));
    admin
        .batch_execute(&format!("ALTER TABLE {t} DROP COLUMN {fname}"))
        .await
        .unwrap();
    let err = c
        .read_page(&PageRequest {
            selection: &selection,
            after: None,
            limit: 10,
            bound: Bound::None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Config { reason, .. } if reason.contains(&fname)),
        "{err}"
    );
}

#[tokio::test]
async fn describe_reports_which_columns_may_hold_null() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "nullable").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, at timestamptz NOT NULL, note text)"
        ))
        .await
        .unwrap();
    let c = connector(&pg_url());
    let info = c
        .describe(&table(t.clone(), &["id", "at", "note"], &["at", "id"]))
        .await
        .unwrap();
    let got: Vec<Option<bool>> = info.iter().map(|i| i.nullable).collect();
    assert_eq!(got, [Some(false), Some(false), Some(true)]);
    let query = Selection {
        relation: Relation::Query(format!("SELECT id, at FROM {t}")),
        columns: vec!["id".into(), "at".into()],
        cursor: vec!["id".into()],
    };
    let info = c.describe(&query).await.unwrap();
    assert!(info.iter().all(|i| i.nullable.is_none()), "{info:?}");
}

#[tokio::test]
async fn null_cursor_rows_are_counted_on_every_cycle() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "nullcur").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int4 PRIMARY KEY, at timestamptz, note text NOT NULL);
             INSERT INTO {t} SELECT i, now() - interval '1 hour', 'n'
               FROM generate_series(1, 5) i;
             INSERT INTO {t} SELECT i, NULL, 'n' FROM generate_series(6, 9) i;"
        ))
        .await
        .unwrap();
    let c = connector(&pg_url());
    let selection = table(t.clone(), &["id", "at", "note"], &["at", "id"]);
    // No page returns the NULL rows, not even a first read (PostgreSQL sorts NULL last) …
    let all = read(&c, &selection, None, 10, Bound::None).await;
    assert_eq!(ids(&all), [1, 2, 3, 4, 5]);
    let first = read(&c, &selection, None, 3, Bound::None).await;
    let last = first.rows.last().unwrap();
    let cursor = [
        last.values[1].clone().unwrap(),
        last.values[0].clone().unwrap(),
    ];
    let rest = read(&c, &selection, Some(&cursor), 10, Bound::None).await;
    assert_eq!(ids(&first).len() + ids(&rest).len(), 5);
    // … but they are counted, and a sample is returned, every time they are asked for.
    for _ in 0..2 {
        let nulls = c.null_cursor_rows(&selection, 2).await.unwrap();
        assert_eq!(nulls.total, 4);
        assert_eq!(nulls.rows.len(), 2);
        assert!(row_ids(&nulls.rows).iter().all(|id| *id >= 6));
        assert_eq!(nulls.rows[0].values[1].clone().unwrap(), Value::Null);
    }
    admin
        .batch_execute(&format!("UPDATE {t} SET at = now() WHERE id = 6"))
        .await
        .unwrap();
    let nulls = c.null_cursor_rows(&selection, 10).await.unwrap();
    assert_eq!(nulls.total, 3);
    assert_eq!(row_ids(&nulls.rows), [7, 8, 9]);
    // NOT NULL cursor columns need no look …
    let strict = table(t.clone(), &["id", "note"], &["note", "id"]);
    let nulls = c.null_cursor_rows(&strict, 10).await.unwrap();
    assert_eq!((nulls.total, nulls.rows.len()), (0, 0));
    assert_eq!(read(&c, &strict, None, 20, Bound::None).await.rows.len(), 9);
    // … until the constraint is dropped while the connector runs (its plan is cached).
    admin
        .batch_execute(&format!(
            "ALTER TABLE {t} ALTER note DROP NOT NULL; UPDATE {t} SET note = NULL WHERE id = 1"
        ))
        .await
        .unwrap();
    let nulls = c.null_cursor_rows(&strict, 10).await.unwrap();
    assert_eq!((nulls.total, row_ids(&nulls.rows)), (1, vec![1]));
    assert_eq!(read(&c, &strict, None, 20, Bound::None).await.rows.len(), 8);
}

#[tokio::test]
async fn lookup_binds_keys_with_the_key_columns_type() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "lookup").await;
    let t = s.q("t");
    let u = s.q("u");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, code varchar(18) NOT NULL, secret text);
             INSERT INTO {t} VALUES (1, '11010519491231002X', 's1'), (2, '440524188001010014', 's2'),
                                    (3, '321083197812162119', 's3');
             CREATE TABLE {u} (k numeric PRIMARY KEY, v text);
             INSERT INTO {u} VALUES (1.50, 'a'), (2, 'b');"
        ))
        .await
        .unwrap();
    let c = connector(&pg_url());
    let selection = table(t.clone(), &["id", "code"], &["id"]);
    let rows = c
        .lookup(
            &selection,
            "id",
            &[Value::Int(3), Value::Int(1), Value::Int(42)],
        )
        .await
        .unwrap();
    assert_eq!(row_ids(&rows), [1, 3]);
    assert_eq!(rows[0].values.len(), 2, "selected columns only");
    let rows = c
        .lookup(
            &selection,
            "code",
            &[
                Value::Text("440524188001010014".into()),
                Value::Text("' OR true --".into()),
                Value::Null,
            ],
        )
        .await
        .unwrap();
    assert_eq!(row_ids(&rows), [2]);
    // Numeric keys compare as numbers: 1.5 finds 1.50.
    let rows = c
        .lookup(
            &table(u, &["k", "v"], &["k"]),
            "k",
            &[Value::Decimal("1.5".into())],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].values[1].clone().unwrap(), Value::Text("a".into()));
    // A query resource, and a key outside the selection.
    let query = Selection {
        relation: Relation::Query(format!("SELECT id, code FROM {t}")),
        columns: vec!["id".into(), "code".into()],
        cursor: vec!["id".into()],
    };
    let rows = c.lookup(&query, "id", &[Value::Int(2)]).await.unwrap();
    assert_eq!(row_ids(&rows), [2]);
    let err = c
        .lookup(&selection, "secret", &[Value::Text("s1".into())])
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Config { .. }), "{err}");
    assert!(c.lookup(&selection, "id", &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn prepared_transaction_holds_the_horizon_back() {
    let admin = admin().await;
    let max: String = admin
        .query_one("SHOW max_prepared_transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        max, "0",
        "this test needs prepared transactions: the server at EXCHANGE_TEST_PG_URL has \
         max_prepared_transactions = 0. Run `ALTER SYSTEM SET max_prepared_transactions = 10` \
         and restart PostgreSQL, or point EXCHANGE_TEST_PG_URL at a server started with \
         `-c max_prepared_transactions=10`"
    );
    // In a database of its own: a prepared transaction bounds every page of its database,
    // and the other tests expect their own transactions to.
    let mut s = Scratch::new(&admin, "twophase").await;
    let db = unique("twophase");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    s.databases.push(db.clone());
    let url = url_db(&pg_url(), &db);
    let admin = connect(&url).await;
    let t = "t".to_owned();
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
             INSERT INTO {t} (id) VALUES (1);"
        ))
        .await
        .unwrap();
    let gid = s.schema.clone();
    s.prepared.push(gid.clone());
    let writer = connect(&url).await;
    writer
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {t} (id) VALUES (2); PREPARE TRANSACTION '{gid}';"
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("INSERT INTO {t} (id) VALUES (3)"))
        .await
        .unwrap();
    let selection = table(t, &["id", "at"], &["at", "id"]);
    let c = connector(&url);
    let bound = Bound::Horizon {
        safety_lag: Duration::ZERO,
    };
    // Other tests' transactions may bound the page earlier for a moment.
    poll_page(
        &c,
        &selection,
        None,
        bound,
        |page| {
            let got = ids(page);
            assert!(
                !got.contains(&3),
                "row 3 committed after the prepared transaction was read past it: {got:?}"
            );
        },
        |page| {
            matches!(page.horizon.info, HorizonInfo::PreparedTransaction { .. }) && ids(page) == [1]
        },
    )
    .await;
    admin
        .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .await
        .unwrap();
    let page = poll_page(&c, &selection, None, bound, |_| {}, |p| ids(p).len() == 3).await;
    assert_eq!(ids(&page), [1, 2, 3]);
}

#[tokio::test]
async fn open_transaction_names_its_session_without_data() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "holder").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());"
        ))
        .await
        .unwrap();
    let app = unique("holder");
    let base = pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let writer = connect(&format!("{base}{sep}application_name={app}")).await;
    writer.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let pid: i32 = writer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let c = connector(&pg_url());
    let selection = table(t, &["id", "at"], &["at", "id"]);
    let bound = Bound::Horizon {
        safety_lag: Duration::ZERO,
    };
    // Other tests' transactions may be older: wait until ours is the oldest one named.
    let page = poll_page(
        &c,
        &selection,
        None,
        bound,
        |_| {},
        |p| {
            matches!(&p.horizon.info, HorizonInfo::OpenTransaction { session: Some(s), .. }
            if s.contains(&format!("pid {pid},")))
        },
    )
    .await;
    let HorizonInfo::OpenTransaction { session, .. } = page.horizon.info else {
        unreachable!()
    };
    let session = session.unwrap();
    assert!(
        session.contains("user `postgres`")
            && session.contains(&format!("application `{app}`"))
            && session.contains(", client "),
        "{session}"
    );
    writer.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn logical_subscriber_is_a_replica_bounded_by_the_replica_lag() {
    let admin = admin().await;
    let mut s = Scratch::new(&admin, "replica").await;
    let db = unique("sub");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    s.databases.push(db.clone());
    let url = url_db(&pg_url(), &db);
    let sub = connect(&url).await;
    sub.batch_execute(&format!(
        "CREATE TABLE t (id int8 PRIMARY KEY, at timestamptz NOT NULL);
         INSERT INTO t VALUES (1, now() - interval '2 hours'), (2, now() - interval '10 minutes');
         CREATE SUBSCRIPTION {db} CONNECTION 'host=127.0.0.1 dbname={db}' PUBLICATION p
           WITH (connect = false, enabled = false, slot_name = NONE, create_slot = false);"
    ))
    .await
    .unwrap();
    let c = PostgresConnector::new(&SourceSpec {
        replica_lag: Duration::from_secs(3600),
        ..spec(&url)
    })
    .unwrap();
    let probe = c.probe().await.unwrap();
    let replica = probe
        .replica
        .expect("a subscriber is reported as a replica");
    assert!(replica.contains("subscriber"), "{replica}");
    let page = read(
        &c,
        &table("t".into(), &["id", "at"], &["at", "id"]),
        None,
        10,
        Bound::Horizon {
            safety_lag: Duration::ZERO,
        },
    )
    .await;
    assert_eq!(
        page.horizon.info,
        HorizonInfo::Replica {
            lag: Duration::from_secs(3600)
        }
    );
    assert_eq!(
        ids(&page),
        [1],
        "the row of 10 minutes ago is within the replica lag"
    );
    let clock = c.clock().await.unwrap();
    let reached = page.horizon.reached.unwrap();
    assert!(
        reached <= clock - chrono::TimeDelta::seconds(3600)
            && reached > clock - chrono::TimeDelta::seconds(3700),
        "{reached} vs {clock}"
    );
    sub.batch_execute(&format!("ALTER SUBSCRIPTION {db} SET (slot_name = NONE)"))
        .await
        .ok();
    assert_eq!(connector(&pg_url()).probe().await.unwrap().replica, None);
}

#[tokio::test]
async fn row_committed_before_the_clock_is_read_once_reached_passes_it() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "reached").await;
    let t = s.q("t");
    let d = s.q("d");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE {d} (id int8 PRIMARY KEY, day date NOT NULL DEFAULT current_date);
             INSERT INTO {t} (id) VALUES (1);"
        ))
        .await
        .unwrap();
    let c = connector(&pg_url());
    let clock = c.clock().await.unwrap();
    let selection = table(t, &["id", "at"], &["at", "id"]);
    let bound = Bound::Horizon {
        safety_lag: Duration::from_millis(200),
    };
    let mut seen = Vec::new();
    let mut after: Option<Vec<Value>> = None;
    let start = Instant::now();
    loop {
        let page = read(&c, &selection, after.as_deref(), 1000, bound).await;
        seen.extend(ids(&page));
        if let Some(last) = page.rows.last() {
            after = Some(vec![
                last.values[1].clone().unwrap(),
                last.values[0].clone().unwrap(),
            ]);
        }
        let reached = page.horizon.reached.expect("a timestamp cursor is bounded");
        if reached > clock {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "reached never passed {clock}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, [1], "the row committed before the clock was read");

    // A date cursor: `reached` is the midnight that starts the bound's day.
    let page = read(
        &c,
        &table(d, &["id", "day"], &["day", "id"]),
        None,
        10,
        bound,
    )
    .await;
    let midnight: DateTime<Utc> = admin
        .query_one(
            "SELECT ((statement_timestamp() - interval '200 milliseconds')::date)::timestamptz",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(page.horizon.reached, Some(midnight));
}

#[tokio::test]
async fn two_concurrent_reads_use_two_sessions() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "pool").await;
    let t = s.q("t");
    let u = s.q("u");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int4 PRIMARY KEY); INSERT INTO {t} VALUES (1);
             CREATE TABLE {u} (id int4 PRIMARY KEY); INSERT INTO {u} VALUES (2);"
        ))
        .await
        .unwrap();
    let app = unique("pool");
    let base = pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let c = PostgresConnector::new(&SourceSpec {
        pool_size: 2,
        ..spec(&format!("{base}{sep}application_name={app}"))
    })
    .unwrap();
    let on_t = table(t.clone(), &["id"], &["id"]);
    let on_u = table(u, &["id"], &["id"]);
    // Learn the plans first, so the blocked read waits in the page query itself.
    read(&c, &on_t, None, 10, Bound::None).await;
    // A lock blocks every read of `t`; a read of `u` must not wait behind it.
    let locker = connect(&pg_url()).await;
    locker
        .batch_execute(&format!("BEGIN; LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    let blocked = read(&c, &on_t, None, 10, Bound::None);
    let free = async {
        let page = tokio::time::timeout(DEADLINE, read(&c, &on_u, None, 10, Bound::None))
            .await
            .expect("a second read waited for the first one's session");
        let sessions: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        locker.batch_execute("COMMIT").await.unwrap();
        (page, sessions)
    };
    let (blocked, (free, sessions)) = tokio::join!(blocked, free);
    assert_eq!(ids(&blocked), [1]);
    assert_eq!(ids(&free), [2]);
    assert_eq!(sessions, 2);
}

#[tokio::test]
async fn the_connectors_own_long_read_never_holds_its_other_reads_back() {
    // A long read of one resource (a snapshot page of a big table) is a transaction of the
    // agent's own: it writes nothing, so it can hide no late commit, and another resource of
    // the same database must not wait for it (nor be reported as held back by it).
    let admin = admin().await;
    let s = Scratch::new(&admin, "own").await;
    let (t, u) = (s.q("t"), s.q("u"));
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int4 PRIMARY KEY); INSERT INTO {t} VALUES (1);
             CREATE TABLE {u} (id int8 PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
             INSERT INTO {u} (id) VALUES (1);"
        ))
        .await
        .unwrap();
    let app = unique("own");
    let base = pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let c = PostgresConnector::new(&SourceSpec {
        pool_size: 2,
        ..spec(&format!("{base}{sep}application_name={app}"))
    })
    .unwrap();
    let slow = Selection {
        relation: Relation::Query(format!(
            "SELECT id FROM {t} WHERE pg_catalog.pg_sleep(3) IS NOT NULL"
        )),
        columns: vec!["id".into()],
        cursor: vec!["id".into()],
    };
    let on_u = table(u, &["id", "at"], &["at", "id"]);
    let horizon = Bound::Horizon {
        safety_lag: Duration::ZERO,
    };
    read(&c, &on_u, None, 10, horizon).await;
    let long_read = read(&c, &slow, None, 10, Bound::None);
    let other_read = async {
        let start = Instant::now();
        let pid: i32 = loop {
            let row = admin
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                     AND query LIKE '%pg_sleep(3)%' AND xact_start IS NOT NULL \
                     AND state = 'active'",
                    &[&app],
                )
                .await
                .unwrap();
            if let Some(row) = row {
                break row.get(0);
            }
            assert!(start.elapsed() < DEADLINE, "the long read never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let page = read(&c, &on_u, None, 10, horizon).await;
        if let HorizonInfo::OpenTransaction { session, since } = &page.horizon.info {
            assert!(
                !session
                    .as_deref()
                    .unwrap_or_default()
                    .contains(&format!("pid {pid},")),
                "the connector's own read (pid {pid}) held its other read back since {since}"
            );
        }
        let still: bool = admin
            .query_one(
                "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            still,
            "the long read ended before the other read was checked"
        );
    };
    let (page, ()) = tokio::join!(long_read, other_read);
    assert_eq!(page.rows.len(), 1);
}

/// The first column's values (ids), in the order of the rows.
fn ordered_ids(rows: &[exchange_connectors::Row]) -> Vec<i64> {
    rows.iter()
        .map(|r| int(r.values[0].as_ref().unwrap()))
        .collect()
}

/// Runs a whole [`Connector::scan`]: the chunks as they arrived, and how it ended.
async fn scan_all(
    c: &dyn Connector,
    selection: &Selection,
    after: Option<&[Value]>,
    chunk: usize,
    bound: Bound,
) -> (
    Vec<Vec<exchange_connectors::Row>>,
    exchange_connectors::ScanEnd,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let request = exchange_connectors::ScanRequest {
        selection,
        after,
        bound,
        chunk,
    };
    let scan = async move {
        let end = c.scan(&request, &tx).await.unwrap();
        drop(tx);
        end
    };
    let read = async {
        let mut chunks = Vec::new();
        while let Some(rows) = rx.recv().await {
            chunks.push(rows);
        }
        chunks
    };
    let (end, chunks) = tokio::join!(scan, read);
    (chunks, end)
}

/// How many sequential scans of `table` PostgreSQL counted, once every session that read it
/// (the connectors', named `schema` by their URL's `application_name` and closed before) has
/// reported.
async fn seq_scans(admin: &Client, schema: &str, table: &str, at_least: i64) -> i64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT seq_scan FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
                &[&schema, &table],
            )
            .await
            .unwrap()
            .get(0);
        // Statistics of a session arrive when it ends; the admin session reads a snapshot per
        // transaction.
        let readers: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&schema],
            )
            .await
            .unwrap()
            .get(0);
        if n >= at_least && readers == 0 {
            return n;
        }
        // This session's own reads (the test's set-up) are reported with the next statement.
        admin
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .unwrap();
        assert!(
            Instant::now() < deadline,
            "seq_scan of {schema}.{table} is {n} (expected at least {at_least}), {readers} agent \
             sessions still open"
        );
        admin
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A table without an index on its cursor, as business tables are: paging sorts the whole
/// table for every page (a sequential scan each), a scan reads it with one statement, sends
/// every row once, in cursor order, in chunks of the size asked for, and goes on from a cursor
/// as a page does.
#[tokio::test]
async fn a_scan_reads_a_table_without_a_cursor_index_with_one_statement_in_cursor_order() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "scan").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, updated_at timestamptz NOT NULL, note text);
             INSERT INTO {t} SELECT g, timestamptz '2026-01-01' + (g % 97) * interval '1 minute',
               'n' || g FROM generate_series(1, 2500) g;
             ANALYZE {t};"
        ))
        .await
        .unwrap();
    let expected: Vec<i64> = admin
        .query(&format!("SELECT id FROM {t} ORDER BY updated_at, id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let selection = table(
        t.clone(),
        &["id", "updated_at", "note"],
        &["updated_at", "id"],
    );
    let bound = Bound::Horizon {
        safety_lag: Duration::ZERO,
    };
    let url = format!(
        "{}{}application_name={}",
        pg_url(),
        if pg_url().contains('?') { '&' } else { '?' },
        s.schema
    );

    // Paging: one sequential scan (and sort) of the whole table per page.
    admin
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    let before = seq_scans(&admin, &s.schema, "t", 1).await;
    let c = connector(&url);
    let mut after: Option<Vec<Value>> = None;
    let mut paged = Vec::new();
    loop {
        let page = read(&c, &selection, after.as_deref(), 100, bound).await;
        paged.extend(ids(&page));
        let Some(last) = page.rows.last() else { break };
        after = Some(stored(&[
            last.values[1].clone().unwrap(),
            last.values[0].clone().unwrap(),
        ]));
    }
    drop(c);
    assert_eq!(paged, expected);
    let by_pages = seq_scans(&admin, &s.schema, "t", before + 26).await - before;
    assert_eq!(
        by_pages, 26,
        "25 full pages and an empty one, a table scan each"
    );

    // A scan: one statement.
    let c = connector(&url);
    let (chunks, end) = scan_all(&c, &selection, None, 100, bound).await;
    drop(c);
    let by_scan =
        seq_scans(&admin, &s.schema, "t", before + by_pages + 1).await - before - by_pages;
    assert_eq!(
        by_scan, 1,
        "a scan reads the table once ({by_pages} for the pages)"
    );
    assert_eq!(end.rows, 2500);
    assert!(!end.stopped);
    assert!(
        end.time.first_row <= end.time.total && !end.time.total.is_zero(),
        "{:?}",
        end.time
    );
    // Other tests of this binary open transactions in the same cluster while this one runs;
    // whichever bounds the horizon, every row here committed before it.
    assert!(
        matches!(
            end.horizon.info,
            HorizonInfo::Clock | HorizonInfo::OpenTransaction { .. }
        ),
        "{:?}",
        end.horizon
    );
    assert!(chunks.iter().all(|c| c.len() == 100), "chunks of 100 rows");
    let scanned: Vec<i64> = chunks.iter().flat_map(|c| ordered_ids(c)).collect();
    assert_eq!(scanned, expected, "every row once, in cursor order");

    // From a cursor: the rows after it.
    let middle = &chunks[9].last().unwrap().values;
    let cursor = stored(&[middle[1].clone().unwrap(), middle[0].clone().unwrap()]);
    let c = connector(&url);
    let (rest, _) = scan_all(&c, &selection, Some(&cursor), 700, bound).await;
    assert_eq!(
        rest.iter().map(Vec::len).collect::<Vec<_>>(),
        [700, 700, 100]
    );
    let rest: Vec<i64> = rest.iter().flat_map(|c| ordered_ids(c)).collect();
    assert_eq!(rest, expected[1000..]);
}

/// A scan is bounded like a page: the rows of a transaction still open, and the rows committed
/// after it began, wait for a later read; a reader that goes away stops the scan.
#[tokio::test]
async fn a_scan_waits_for_an_open_transaction_and_stops_when_its_reader_goes_away() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "scanlate").await;
    let t = s.q("t");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO {t} (id, updated_at) SELECT g, now() - interval '1 hour'
               FROM generate_series(1, 1000) g;"
        ))
        .await
        .unwrap();
    let writer = connect(&pg_url()).await;
    writer.batch_execute("BEGIN").await.unwrap();
    writer
        .batch_execute(&format!("INSERT INTO {t} (id) VALUES (1001)"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("INSERT INTO {t} (id) VALUES (1002)"))
        .await
        .unwrap();
    let selection = table(t.clone(), &["id", "updated_at"], &["updated_at", "id"]);
    let bound = Bound::Horizon {
        safety_lag: Duration::ZERO,
    };
    let c = connector(&pg_url());
    let (chunks, end) = scan_all(&c, &selection, None, 300, bound).await;
    assert!(
        matches!(end.horizon.info, HorizonInfo::OpenTransaction { .. }),
        "{:?}",
        end.horizon
    );
    let got: Vec<i64> = chunks.iter().flat_map(|c| ordered_ids(c)).collect();
    assert_eq!(got, (1..=1000).collect::<Vec<_>>());
    writer.batch_execute("COMMIT").await.unwrap();
    let last = &chunks.last().unwrap().last().unwrap().values;
    let cursor = stored(&[last[1].clone().unwrap(), last[0].clone().unwrap()]);
    let (later, _) = scan_all(&c, &selection, Some(&cursor), 300, bound).await;
    assert_eq!(
        later
            .iter()
            .flat_map(|c| ordered_ids(c))
            .collect::<Vec<_>>(),
        [1001, 1002],
        "the late row first, nothing skipped"
    );

    // The reader takes one chunk and goes away.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let request = exchange_connectors::ScanRequest {
        selection: &selection,
        after: None,
        bound,
        chunk: 100,
    };
    let (end, first) = tokio::join!(c.scan(&request, &tx), async move {
        let first = rx.recv().await.unwrap();
        drop(rx);
        first
    });
    let end = end.unwrap();
    assert_eq!(first.len(), 100);
    assert!(end.stopped, "{end:?}");
    assert!(end.rows < 1002, "{end:?}");
}

/// Without an index on the cursor columns a steady-state page statement sorts, and
/// `plan_order` gives the statement that creates one, quoted as PostgreSQL quotes; run as
/// written, it makes the index supply the order — on a table small enough that the cheapest
/// plan would still be a sequential scan and a sort. A view's plan tells through the view; a
/// view that sorts is unknown.
#[tokio::test]
async fn plan_order_finds_the_cursor_index_or_gives_the_statement_that_creates_it() {
    let admin = admin().await;
    let s = Scratch::new(&admin, "order").await;
    let (t, odd) = (s.q("people"), s.q("\"Odd Name\""));
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, updated_at timestamptz NOT NULL, note text);
             INSERT INTO {t} SELECT g, timestamptz '2026-01-01' + (g % 7) * interval '1 minute',
               'n' || g FROM generate_series(1, 100) g;
             ANALYZE {t};
             CREATE VIEW {v} AS SELECT id, updated_at, note FROM {t};
             CREATE TABLE {odd} (\"Id\" int8 NOT NULL, \"Updated At\" timestamptz NOT NULL);",
            v = s.q("people_view")
        ))
        .await
        .unwrap();
    let selection = table(
        t.clone(),
        &["id", "updated_at", "note"],
        &["updated_at", "id"],
    );
    let view = Selection {
        relation: Relation::Table(s.q("people_view")),
        ..selection.clone()
    };
    let c = connector(&pg_url());
    let ask = |selection| OrderRequest {
        selection,
        limit: 500,
        bound: Bound::Horizon {
            safety_lag: Duration::ZERO,
        },
    };
    let OrderPlan::Sorted { create_index } = c.plan_order(&ask(&selection)).await.unwrap() else {
        panic!("a table without a cursor index is sorted")
    };
    assert_eq!(
        create_index,
        format!(
            "CREATE INDEX CONCURRENTLY exchange_people_cursor ON {}.people (updated_at, id);",
            s.schema
        )
    );
    assert_eq!(
        c.plan_order(&ask(&view)).await.unwrap(),
        OrderPlan::Unknown {
            why: UnknownOrder::View
        },
        "a view that sorts: the index belongs to its table"
    );
    let query = Selection {
        relation: Relation::Query(format!("SELECT id, updated_at, note FROM {t}")),
        ..selection.clone()
    };
    assert_eq!(
        c.plan_order(&ask(&query)).await.unwrap(),
        OrderPlan::Unknown {
            why: UnknownOrder::Query
        }
    );
    admin.batch_execute(&create_index).await.unwrap();
    let indexed = OrderPlan::Indexed {
        index: Some("exchange_people_cursor".into()),
    };
    assert_eq!(c.plan_order(&ask(&selection)).await.unwrap(), indexed);
    assert_eq!(c.plan_order(&ask(&view)).await.unwrap(), indexed);
    assert_eq!(c.plan_order(&ask(&query)).await.unwrap(), indexed);

    // Names that need quoting are quoted, and the statement runs as written.
    let odd_selection = table(
        format!("{}.Odd Name", s.schema),
        &["Id", "Updated At"],
        &["Updated At", "Id"],
    );
    let OrderPlan::Sorted { create_index } = c.plan_order(&ask(&odd_selection)).await.unwrap()
    else {
        panic!("a table without a cursor index is sorted")
    };
    assert_eq!(
        create_index,
        format!(
            "CREATE INDEX CONCURRENTLY \"exchange_Odd Name_cursor\" ON {}.\"Odd Name\" \
             (\"Updated At\", \"Id\");",
            s.schema
        )
    );
    admin.batch_execute(&create_index).await.unwrap();
    assert!(matches!(
        c.plan_order(&ask(&odd_selection)).await.unwrap(),
        OrderPlan::Indexed { index: Some(_) }
    ));
}
