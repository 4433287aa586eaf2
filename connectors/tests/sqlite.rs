//! SQLite connector against real database files (one temporary directory per test).

use std::path::Path;
use std::time::Duration;

use exchange_connectors::sqlite::SqliteConnector;
use exchange_connectors::{
    Bound, Connector, ConnectorError, HorizonInfo, OrderPlan, OrderRequest, Page, PageRequest,
    Relation, ScanRequest, Selection, SourceKind, SourceSpec, Value,
};
use rusqlite::Connection;

fn spec(url: String) -> SourceSpec {
    SourceSpec {
        name: "archive".into(),
        kind: SourceKind::Sqlite,
        url,
        password: None,
        ca: None,
        pool_size: 1,
        replica_lag: std::time::Duration::from_secs(300),
    }
}

/// Creates a database file with `sql` and returns a connector reading it.
fn database(dir: &Path, sql: &str) -> SqliteConnector {
    let path = dir.join("source.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    SqliteConnector::new(&spec(format!("sqlite://{}", path.display()))).unwrap()
}

fn table(name: &str, columns: &[&str], cursor: &[&str]) -> Selection {
    Selection {
        relation: Relation::Table(name.into()),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        cursor: cursor.iter().map(|c| c.to_string()).collect(),
    }
}

async fn read(
    c: &SqliteConnector,
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

fn ids(page: &Page) -> Vec<i64> {
    page.rows
        .iter()
        .map(|r| match r.values[0] {
            Ok(Value::Int(i)) => i,
            ref other => panic!("expected an Int id, got {other:?}"),
        })
        .collect()
}

/// Stores a cursor as the agent does (tagged JSON) and loads it back.
fn stored(cursor: &[Value]) -> Vec<Value> {
    serde_json::from_str(&serde_json::to_string(cursor).unwrap()).unwrap()
}

#[tokio::test]
async fn values_map_by_storage_class_not_declared_type() {
    let dir = tempfile::tempdir().unwrap();
    let c = database(
        dir.path(),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a, n INTEGER, r REAL, tx TEXT, b BLOB, d DATETIME);
         INSERT INTO t VALUES (1, 42, -9223372036854775808, 0.1, '中文', x'00ff00', '2024-02-29 10:11:12');
         INSERT INTO t VALUES (2, 'abc', 9223372036854775807, 1e300, '', x'', 1709201472);
         INSERT INTO t VALUES (3, x'01', 'not a number', 9e999, 7, NULL, NULL);
         INSERT INTO t VALUES (4, NULL, NULL, NULL, NULL, NULL, NULL);",
    );
    let columns = ["id", "a", "n", "r", "tx", "b", "d"];
    let page = read(&c, &table("t", &columns, &["id"]), None, 10, Bound::None).await;
    assert_eq!(ids(&page), [1, 2, 3, 4]);
    let ok = |row: usize, col: usize| page.rows[row].values[col].clone().unwrap();
    let expected_rows = [
        vec![
            Value::Int(42),
            Value::Int(i64::MIN),
            Value::Float(0.1),
            Value::Text("中文".into()),
            Value::Bytes(vec![0, 255, 0]),
            Value::Text("2024-02-29 10:11:12".into()),
        ],
        vec![
            Value::Text("abc".into()),
            Value::Int(i64::MAX),
            Value::Float(1e300),
            Value::Text(String::new()),
            Value::Bytes(vec![]),
            Value::Int(1709201472),
        ],
    ];
    for (row, expected) in expected_rows.iter().enumerate() {
        for (col, value) in expected.iter().enumerate() {
            assert_eq!(
                &ok(row, col + 1),
                value,
                "row {row} column {}",
                columns[col + 1]
            );
        }
    }
    assert_eq!(serde_json::to_string(&ok(0, 1).to_json()).unwrap(), "42");
    assert_eq!(
        serde_json::to_string(&ok(0, 5).to_json()).unwrap(),
        "\"AP8A\""
    );
    // Row 3: the declared INTEGER column holds text, the REAL column infinity.
    assert_eq!(ok(2, 1), Value::Bytes(vec![1]));
    assert_eq!(ok(2, 2), Value::Text("not a number".into()));
    let err = page.rows[2].values[3].clone().unwrap_err();
    assert_eq!(err.column, "r");
    assert!(err.reason.contains("non-finite"), "{err}");
    assert_eq!(
        ok(2, 4),
        Value::Text("7".into()),
        "TEXT affinity stored 7 as text"
    );
    for col in 1..columns.len() {
        assert_eq!(ok(3, col), Value::Null);
    }
}

#[tokio::test]
async fn pages_with_one_shared_timestamp_yield_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = database(
        dir.path(),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, updated_at TEXT NOT NULL, note TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1000 UNION ALL SELECT i - 1 FROM s WHERE i > 1)
           INSERT INTO t SELECT i, '2024-01-01 00:00:00', 'n' || i FROM s;
         INSERT INTO t VALUES (1001, '2023-12-31 23:59:59', 'early');",
    );
    let selection = table("t", &["id", "updated_at", "note"], &["updated_at", "id"]);
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
        assert_eq!(page.horizon.info, HorizonInfo::LagOnly);
        if page.rows.is_empty() {
            break;
        }
        pages += 1;
        seen.extend(ids(&page));
        let last = page.rows.last().unwrap();
        after = Some(stored(&[
            last.values[1].clone().unwrap(),
            last.values[0].clone().unwrap(),
        ]));
    }
    assert_eq!(pages, 11);
    let expected: Vec<i64> = std::iter::once(1001).chain(1..=1000).collect();
    assert_eq!(seen, expected, "every row exactly once, in cursor order");
}

#[tokio::test]
async fn text_timestamps_are_bounded_by_clock_minus_lag() {
    let dir = tempfile::tempdir().unwrap();
    let c = database(
        dir.path(),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, at TEXT NOT NULL, day TEXT NOT NULL);
         INSERT INTO t VALUES (1, datetime('now', '-10 minutes'), date('now', '-1 day')),
                              (2, datetime('now', '-1 minute'), date('now')),
                              (3, datetime('now', '+1 hour'), date('now', '+1 day'));
         CREATE TABLE e (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);
         INSERT INTO e VALUES (1, unixepoch('now', '+1 hour'));",
    );
    let bound = Bound::Horizon {
        safety_lag: Duration::from_secs(300),
    };
    let page = read(
        &c,
        &table("t", &["id", "at"], &["at", "id"]),
        None,
        10,
        bound,
    )
    .await;
    assert_eq!(page.horizon.info, HorizonInfo::LagOnly);
    assert_eq!(ids(&page), [1]);
    // Reading on from the stored cursor keeps the bound.
    let after = stored(&[page.rows[0].values[1].clone().unwrap(), Value::Int(1)]);
    let page = read(
        &c,
        &table("t", &["id", "at"], &["at", "id"]),
        Some(&after),
        10,
        bound,
    )
    .await;
    assert_eq!(page.horizon.info, HorizonInfo::LagOnly);
    assert!(page.rows.is_empty());
    // A day is read once it is over.
    let page = read(
        &c,
        &table("t", &["id", "day"], &["day", "id"]),
        None,
        10,
        Bound::Horizon {
            safety_lag: Duration::ZERO,
        },
    )
    .await;
    assert_eq!(ids(&page), [1]);
    // Integer epochs are not bounded.
    let page = read(&c, &table("e", &["id", "at"], &["at"]), None, 10, bound).await;
    assert_eq!(page.horizon.info, HorizonInfo::Unbounded);
    assert_eq!(ids(&page), [1]);
}

#[tokio::test]
async fn missing_database_file_is_unreachable_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let c = SqliteConnector::new(&spec(format!("sqlite://{}", path.display()))).unwrap();
    let err = c.probe().await.unwrap_err();
    match &err {
        ConnectorError::Unreachable {
            source_name,
            address,
            reason,
        } => {
            assert_eq!(source_name, "archive");
            assert_eq!(address, &path.display().to_string());
            assert!(reason.contains("absent.db"), "{reason}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    let err = c
        .read_page(&PageRequest {
            selection: &table("t", &["id"], &["id"]),
            after: None,
            limit: 1,
            bound: Bound::None,
        })
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!path.exists(), "the connector created the database file");

    // A file that is not a database is refused the same way.
    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        b"this is not a database, just some bytes long enough",
    )
    .unwrap();
    let c = SqliteConnector::new(&spec(junk.display().to_string())).unwrap();
    assert!(matches!(
        c.probe().await.unwrap_err(),
        ConnectorError::Unreachable { .. }
    ));
}

#[tokio::test]
async fn query_resource_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let c = database(
        dir.path(),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT);
         INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    );
    let path = dir.path().join("source.db");
    let before = std::fs::read(&path).unwrap();
    let query = |q: &str| Selection {
        relation: Relation::Query(q.into()),
        columns: vec!["id".into()],
        cursor: vec!["id".into()],
    };
    let page = read(
        &c,
        &query("SELECT id, note FROM t WHERE id > 0;"),
        None,
        10,
        Bound::None,
    )
    .await;
    assert_eq!(ids(&page), [1, 2]);
    for q in [
        "INSERT INTO t VALUES (99, 'x') RETURNING id",
        "DELETE FROM t RETURNING id",
        "SELECT 1 AS id; DELETE FROM t",
        "UPDATE t SET note = 'x' RETURNING id",
    ] {
        let err = c
            .read_page(&PageRequest {
                selection: &query(q),
                after: None,
                limit: 10,
                bound: Bound::None,
            })
            .await
            .expect_err(q);
        assert!(
            matches!(&err, ConnectorError::Statement { source_name, .. } if source_name == "archive"),
            "{q}: {err}"
        );
    }
    drop(c);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was modified"
    );
    let conn = Connection::open(&path).unwrap();
    let count: i64 = conn
        .query_row("SELECT count(*) FROM t WHERE note IN ('a', 'b')", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(count, 2);
}

#[tokio::test]
async fn describe_reports_declared_types_and_names_missing_columns() {
    let dir = tempfile::tempdir().unwrap();
    let c = database(
        dir.path(),
        "CREATE TABLE person (id INTEGER PRIMARY KEY, name VARCHAR(20), born DATE, misc);",
    );
    let info = c
        .describe(&table(
            "main.person",
            &["id", "name", "born", "misc"],
            &["id"],
        ))
        .await
        .unwrap();
    let got: Vec<(&str, &str)> = info
        .iter()
        .map(|i| (i.name.as_str(), i.source_type.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("id", "INTEGER"),
            ("name", "VARCHAR(20)"),
            ("born", "DATE"),
            ("misc", "")
        ]
    );
    let err = c
        .describe(&table("person", &["id", "no_such_column"], &["id"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Config { reason, .. } if reason.contains("no_such_column")),
        "{err}"
    );
    let err = c
        .describe(&table("no_such_table", &["id"], &["id"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Statement { reason, .. } if reason.contains("no_such_table")),
        "{err}"
    );
    let probe = c.probe().await.unwrap();
    assert!(probe.server.starts_with("SQLite 3."), "{}", probe.server);
    assert!(!probe.sees_open_transactions);
}

/// `id` values (first column) of rows, sorted.
fn row_ids(rows: &[exchange_connectors::Row]) -> Vec<i64> {
    let mut ids: Vec<i64> = rows
        .iter()
        .map(|r| match r.values[0] {
            Ok(Value::Int(i)) => i,
            ref other => panic!("expected an Int id, got {other:?}"),
        })
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn hidden_and_missing_columns_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = database(
        dir.path(),
        "CREATE TABLE person (pid INTEGER NOT NULL, name TEXT NOT NULL, secret TEXT);
         INSERT INTO person VALUES (7, 'a', 's');
         CREATE VIEW v AS SELECT pid, name FROM person;",
    );
    // `rowid` is readable in SQLite but is no configured column of the table.
    for relation in [
        Relation::Table("person".into()),
        Relation::Table("v".into()),
        Relation::Query("SELECT pid, name FROM person".into()),
    ] {
        for column in ["rowid", "secretx"] {
            let selection = Selection {
                relation: relation.clone(),
                columns: vec!["pid".into(), column.into()],
                cursor: vec!["pid".into()],
            };
            let err = c.describe(&selection).await.unwrap_err();
            assert!(
                matches!(&err, ConnectorError::Config { reason, .. } if reason.contains(column)),
                "{relation:?} {column}: {err}"
            );
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
        }
    }
    // NOT NULL table columns are reported; views and queries cannot tell.
    let info = c
        .describe(&table("person", &["pid", "name", "secret"], &["pid"]))
        .await
        .unwrap();
    let got: Vec<Option<bool>> = info.iter().map(|i| i.nullable).collect();
    assert_eq!(got, [Some(false), Some(false), Some(true)]);
    let info = c
        .describe(&table("v", &["pid", "name"], &["pid"]))
        .await
        .unwrap();
    assert!(info.iter().all(|i| i.nullable.is_none()), "{info:?}");
}

#[tokio::test]
async fn null_cursor_rows_are_counted_on_every_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let c = database(
        dir.path(),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, at TEXT, note TEXT NOT NULL);
         INSERT INTO t VALUES (1, '2024-01-01 00:00:00', 'n'), (2, '2024-01-02 00:00:00', 'n'),
                              (3, NULL, 'n'), (4, NULL, 'n'), (5, NULL, 'n');",
    );
    let selection = table("t", &["id", "at", "note"], &["at", "id"]);
    // No page returns NULL cursors (SQLite sorts them first), and a first read is still
    // bounded by the horizon of the text timestamps.
    let page = read(&c, &selection, None, 10, Bound::None).await;
    assert_eq!(ids(&page), [1, 2]);
    let bounded = Bound::Horizon {
        safety_lag: Duration::from_secs(1),
    };
    let page = read(&c, &selection, None, 10, bounded).await;
    assert_eq!(ids(&page), [1, 2]);
    assert_eq!(page.horizon.info, HorizonInfo::LagOnly);
    let after = stored(&[Value::Text("2000-01-01 00:00:00".into()), Value::Int(0)]);
    let page = read(&c, &selection, Some(&after), 10, Bound::None).await;
    assert_eq!(ids(&page), [1, 2]);
    for _ in 0..2 {
        let nulls = c.null_cursor_rows(&selection, 2).await.unwrap();
        assert_eq!(nulls.total, 3);
        assert_eq!(nulls.rows.len(), 2);
        assert!(row_ids(&nulls.rows).iter().all(|id| *id >= 3));
    }
    let strict = table("t", &["id", "note"], &["note", "id"]);
    let nulls = c.null_cursor_rows(&strict, 10).await.unwrap();
    assert_eq!((nulls.total, nulls.rows.len()), (0, 0));
}

#[tokio::test]
async fn lookup_binds_keys_by_storage_class() {
    let dir = tempfile::tempdir().unwrap();
    let c = database(
        dir.path(),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, code TEXT NOT NULL, secret TEXT);
         INSERT INTO t VALUES (1, '11010519491231002X', 's'), (2, '440524188001010014', 's'),
                              (3, '321083197812162119', 's');",
    );
    let selection = table("t", &["id", "code"], &["id"]);
    let rows = c
        .lookup(
            &selection,
            "id",
            &[Value::Int(3), Value::Int(1), Value::Int(9)],
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
                Value::Text("' OR 1=1 --".into()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(row_ids(&rows), [2]);
    let keys: Vec<Value> = (0..1200).map(Value::Int).collect();
    let rows = c.lookup(&selection, "id", &keys).await.unwrap();
    assert_eq!(
        row_ids(&rows),
        [1, 2, 3],
        "keys beyond one statement's parameters"
    );
    let err = c
        .lookup(&selection, "secret", &[Value::Text("s".into())])
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Config { .. }), "{err}");
}

#[tokio::test]
async fn row_committed_before_the_clock_is_read_once_reached_passes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("source.db");
    let c = database(
        dir.path(),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, at TEXT NOT NULL DEFAULT (datetime('now')));",
    );
    let writer = Connection::open(&path).unwrap();
    writer
        .execute_batch("INSERT INTO t (id) VALUES (1)")
        .unwrap();
    let clock = c.clock().await.unwrap();
    let selection = table("t", &["id", "at"], &["at", "id"]);
    let bound = Bound::Horizon {
        safety_lag: Duration::from_millis(100),
    };
    let start = std::time::Instant::now();
    loop {
        let page = read(&c, &selection, None, 10, bound).await;
        let reached = page.horizon.reached.expect("text timestamps are bounded");
        assert!(reached <= chrono::Utc::now());
        if reached > clock {
            assert_eq!(ids(&page), [1]);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "reached never passed the clock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Without an index on the cursor columns the page statement sorts (`USE TEMP B-TREE FOR ORDER
/// BY`), and `plan_order` gives the statement that creates one; once it is run, the index
/// supplies the order. A scan (pages, for SQLite) says how long its statements took.
#[tokio::test]
async fn plan_order_finds_the_cursor_index_or_gives_the_statement_that_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = database(
        dir.path(),
        "CREATE TABLE people (id INTEGER NOT NULL, updated_at TEXT NOT NULL, note TEXT);
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 300)
         INSERT INTO people SELECT n, printf('2024-01-01 00:%02d:00', n % 60), 'n' FROM g;
         CREATE VIEW people_view AS SELECT id, updated_at, note FROM people;",
    );
    let selection = table(
        "people",
        &["id", "updated_at", "note"],
        &["updated_at", "id"],
    );
    let bound = Bound::Horizon {
        safety_lag: Duration::ZERO,
    };
    let ask = |selection| OrderRequest {
        selection,
        limit: 100,
        bound,
    };
    let OrderPlan::Sorted { create_index } = c.plan_order(&ask(&selection)).await.unwrap() else {
        panic!("a table without a cursor index is sorted")
    };
    assert_eq!(
        create_index,
        "CREATE INDEX \"exchange_people_cursor\" ON \"people\" (\"updated_at\", \"id\");"
    );
    let view = Selection {
        relation: Relation::Table("people_view".into()),
        ..selection.clone()
    };
    assert!(
        matches!(
            c.plan_order(&ask(&view)).await.unwrap(),
            OrderPlan::Unknown { .. }
        ),
        "a view that sorts: the index belongs to its table"
    );

    Connection::open(dir.path().join("source.db"))
        .unwrap()
        .execute_batch(&create_index)
        .unwrap();
    assert_eq!(
        c.plan_order(&ask(&selection)).await.unwrap(),
        OrderPlan::Indexed {
            index: Some("exchange_people_cursor".into())
        }
    );
    assert!(matches!(
        c.plan_order(&ask(&view)).await.unwrap(),
        OrderPlan::Indexed { .. }
    ));

    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let request = ScanRequest {
        selection: &selection,
        after: None,
        bound,
        chunk: 100,
    };
    let scan = async move {
        let end = c.scan(&request, &tx).await.unwrap();
        drop(tx);
        end
    };
    let read = async move { while rx.recv().await.is_some() {} };
    let (end, ()) = tokio::join!(scan, read);
    assert_eq!(end.rows, 300);
    assert!(
        end.time.first_row <= end.time.total && !end.time.total.is_zero(),
        "{:?}",
        end.time
    );
}
