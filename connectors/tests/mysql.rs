//! The MySQL/MariaDB connector against a real server.
//!
//! The server comes from `EXCHANGE_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`); the account must be able to create tables, functions
//! and users. A server that cannot be reached fails every test: nothing is skipped.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use exchange_connectors::mysql::MysqlConnector;
use exchange_connectors::{
    Bound, Connector, ConnectorError, HorizonInfo, OrderPlan, OrderRequest, PageRequest, Relation,
    Row, Selection, SourceKind, SourceSpec, Value,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

/// Tests that read open transactions share this lock; the test that keeps
/// `information_schema.innodb_trx` stale for the whole server takes it exclusively.
static INNODB_TRX: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn url() -> String {
    std::env::var("EXCHANGE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// `url` with extra query parameters.
fn url_with(params: &str) -> String {
    let base = url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{params}")
}

/// A direct connection for setting up data, outside the connector.
async fn admin() -> Conn {
    exchange_protocol::tls::install_provider();
    let url = url();
    let opts = Opts::from_url(&url).expect("EXCHANGE_TEST_MYSQL_URL is a valid mysql:// URL");
    let opts = OptsBuilder::from_opts(opts)
        .prefer_socket(false)
        .setup(vec!["SET NAMES utf8mb4"]);
    match Conn::new(opts).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "cannot reach the test MySQL/MariaDB server at {url}: {e}\n\
             Start it (e.g. `service mariadb start`, database `test`, user root without \
             password) or point EXCHANGE_TEST_MYSQL_URL at one."
        ),
    }
}

async fn run(conn: &mut Conn, sql: &str) {
    if let Err(e) = conn.query_drop(sql).await {
        panic!("setup statement failed: {e}\n{sql}");
    }
}

/// A name no other test (or test run) uses.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn spec_for(url: &str) -> SourceSpec {
    SourceSpec {
        name: "crm".to_owned(),
        kind: SourceKind::Mysql,
        url: url.to_owned(),
        password: None,
        ca: None,
        pool_size: 4,
        replica_lag: std::time::Duration::from_secs(300),
    }
}

fn connector() -> MysqlConnector {
    exchange_protocol::tls::install_provider();
    MysqlConnector::new(&spec_for(&url())).expect("the test URL is accepted")
}

fn selection(relation: Relation, columns: &[&str], cursor: &[&str]) -> Selection {
    Selection {
        relation,
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        cursor: cursor.iter().map(|c| (*c).to_owned()).collect(),
    }
}

fn ok(row: &Row, i: usize) -> &Value {
    match &row.values[i] {
        Ok(v) => v,
        Err(e) => panic!("cell {i} did not convert: {e}"),
    }
}

/// The cursor values of a row.
fn cursor_of(selection: &Selection, row: &Row) -> Vec<Value> {
    selection
        .cursor
        .iter()
        .map(|c| {
            let i = selection
                .columns
                .iter()
                .position(|s| s == c)
                .expect("cursor column is selected");
            ok(row, i).clone()
        })
        .collect()
}

/// Reads pages until an empty one, starting after `cursor`, which is advanced. Returns the
/// rows and each non-empty page's horizon.
async fn read_to_end(
    connector: &MysqlConnector,
    selection: &Selection,
    cursor: &mut Option<Vec<Value>>,
    limit: usize,
    bound: Bound,
) -> (Vec<Row>, Vec<HorizonInfo>) {
    let mut rows = Vec::new();
    let mut horizons = Vec::new();
    loop {
        let page = connector
            .read_page(&PageRequest {
                selection,
                after: cursor.as_deref(),
                limit,
                bound,
            })
            .await
            .expect("page is read");
        assert!(
            page.rows.len() <= limit,
            "a page holds at most `limit` rows"
        );
        let Some(last) = page.rows.last() else {
            return (rows, horizons);
        };
        *cursor = Some(cursor_of(selection, last));
        horizons.push(page.horizon.info);
        rows.extend(page.rows);
    }
}

fn json(v: &Value) -> String {
    serde_json::to_string(&v.to_json()).expect("JSON serializes")
}

fn int_of(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

#[tokio::test]
async fn every_type_round_trips_exactly() {
    let mut db = admin().await;
    let t = unique("types");
    let mariadb = db
        .query_first::<String, _>("SELECT VERSION()")
        .await
        .expect("version")
        .is_some_and(|v| v.contains("MariaDB"));
    let has_gb18030 = db
        .query_first::<String, _>("SHOW CHARACTER SET LIKE 'gb18030'")
        .await
        .expect("character sets")
        .is_some();
    let gb18030_column = if has_gb18030 {
        ", t_gb18030 VARCHAR(50) CHARACTER SET gb18030"
    } else {
        ""
    };
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (
               id INT PRIMARY KEY,
               i_min BIGINT, i_max BIGINT, u_max BIGINT UNSIGNED,
               ti TINYINT, tu TINYINT UNSIGNED, su SMALLINT UNSIGNED, mi MEDIUMINT,
               ii INT, iu INT UNSIGNED,
               dec38 DECIMAL(38,10), f FLOAT, dbl DOUBLE,
               t_utf8 VARCHAR(50) CHARACTER SET utf8mb4,
               t_gbk VARCHAR(50) CHARACTER SET gbk,
               t_gb2312 VARCHAR(50) CHARACTER SET gb2312,
               txt TEXT, ch CHAR(5),
               vb VARBINARY(16), bl BLOB,
               d DATE, dt DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, tm TIME(6),
               yr YEAR, bt BIT(12), js JSON,
               en ENUM('small','large'), st SET('a','b','c'),
               n INT NULL {gb18030_column}
             ) DEFAULT CHARSET = utf8mb4"
        ),
    )
    .await;
    run(&mut db, "SET time_zone = '+08:00'").await;
    let json_doc = r#"{"a": 1.10, "big": 12345678901234567890123, "b": [true, null]}"#;
    run(
        &mut db,
        &format!(
            "INSERT INTO {t} (id, i_min, i_max, u_max, ti, tu, su, mi, ii, iu, dec38, f, dbl,
               t_utf8, t_gbk, t_gb2312, txt, ch, vb, bl, d, dt, ts, tm, yr, bt, js, en, st, n)
             VALUES (1, -9223372036854775808, 9223372036854775807, 18446744073709551615,
               -128, 255, 65535, -8388608, 2147483647, 4294967295,
               '1234567890123456789012345678.12', 0.1, 3.141592653589793,
               '张三 😀 北京', '张三 北京市海淀区', '北京市海淀区', 'two\\nlines', 'ab',
               0x00FF0001, 0x000102,
               '2024-02-29', '2024-02-29 23:59:58.000120', '2024-03-01 08:30:00.123456',
               '-12:34:56.789', 2024, b'101010101010', '{json_doc}', 'large', 'a,c', NULL),
               (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL)"
        ),
    )
    .await;
    if has_gb18030 {
        run(
            &mut db,
            &format!("UPDATE {t} SET t_gb18030 = '张三 北京市海淀区' WHERE id = 1"),
        )
        .await;
    }

    let day = NaiveDate::from_ymd_opt(2024, 2, 29).expect("date");
    let mut expected: Vec<(&str, Value, &str)> = vec![
        ("id", Value::Int(1), "1"),
        ("i_min", Value::Int(i64::MIN), "-9223372036854775808"),
        ("i_max", Value::Int(i64::MAX), "9223372036854775807"),
        ("u_max", Value::UInt(u64::MAX), "18446744073709551615"),
        ("ti", Value::Int(-128), "-128"),
        ("tu", Value::UInt(255), "255"),
        ("su", Value::UInt(65535), "65535"),
        ("mi", Value::Int(-8388608), "-8388608"),
        ("ii", Value::Int(2147483647), "2147483647"),
        ("iu", Value::UInt(4294967295), "4294967295"),
        (
            "dec38",
            Value::Decimal("1234567890123456789012345678.1200000000".into()),
            "\"1234567890123456789012345678.1200000000\"",
        ),
        ("f", Value::Float(0.1), "0.1"),
        (
            "dbl",
            Value::Float(std::f64::consts::PI),
            "3.141592653589793",
        ),
        (
            "t_utf8",
            Value::Text("张三 😀 北京".into()),
            "\"张三 😀 北京\"",
        ),
        (
            "t_gbk",
            Value::Text("张三 北京市海淀区".into()),
            "\"张三 北京市海淀区\"",
        ),
        (
            "t_gb2312",
            Value::Text("北京市海淀区".into()),
            "\"北京市海淀区\"",
        ),
        ("txt", Value::Text("two\nlines".into()), "\"two\\nlines\""),
        ("ch", Value::Text("ab".into()), "\"ab\""),
        ("vb", Value::Bytes(vec![0, 0xFF, 0, 1]), "\"AP8AAQ==\""),
        ("bl", Value::Bytes(vec![0, 1, 2]), "\"AAEC\""),
        ("d", Value::Date(day), "\"2024-02-29\""),
        (
            "dt",
            Value::Timestamp(day.and_hms_micro_opt(23, 59, 58, 120).expect("time")),
            "\"2024-02-29T23:59:58.000120\"",
        ),
        (
            "ts",
            Value::TimestampTz(
                "2024-03-01T00:30:00.123456Z"
                    .parse::<DateTime<Utc>>()
                    .expect("instant"),
            ),
            "\"2024-03-01T00:30:00.123456Z\"",
        ),
        (
            "tm",
            Value::Text("-12:34:56.789000".into()),
            "\"-12:34:56.789000\"",
        ),
        ("yr", Value::Int(2024), "2024"),
        ("bt", Value::UInt(0b1010_1010_1010), "2730"),
        ("en", Value::Text("large".into()), "\"large\""),
        ("st", Value::Text("a,c".into()), "\"a,c\""),
        ("n", Value::Null, "null"),
    ];
    if mariadb {
        // MariaDB's JSON is LONGTEXT: the document comes back as the text that was stored.
        expected.push((
            "js",
            Value::Text(json_doc.into()),
            r#""{\"a\": 1.10, \"big\": 12345678901234567890123, \"b\": [true, null]}""#,
        ));
    } else {
        let doc = serde_json::from_str(json_doc).expect("JSON");
        expected.push((
            "js",
            Value::Json(doc),
            r#"{"a":1.10,"big":12345678901234567890123,"b":[true,null]}"#,
        ));
    }
    if has_gb18030 {
        expected.push((
            "t_gb18030",
            Value::Text("张三 北京市海淀区".into()),
            "\"张三 北京市海淀区\"",
        ));
    }

    let columns: Vec<&str> = expected.iter().map(|(c, _, _)| *c).collect();
    let sel = selection(Relation::Table(format!("test.{t}")), &columns, &["id"]);
    let page = connector()
        .read_page(&PageRequest {
            selection: &sel,
            after: None,
            limit: 10,
            bound: Bound::None,
        })
        .await
        .expect("page is read");
    assert_eq!(page.horizon.info, HorizonInfo::Unbounded);
    assert_eq!(&page.columns[..], &sel.columns[..]);
    assert_eq!(page.rows.len(), 2);
    for (i, (column, value, json_text)) in expected.iter().enumerate() {
        let got = ok(&page.rows[0], i);
        assert_eq!(got, value, "column {column}");
        assert_eq!(json(got), *json_text, "JSON of column {column}");
    }
    for (i, (column, _, _)) in expected.iter().enumerate().skip(1) {
        assert_eq!(
            ok(&page.rows[1], i),
            &Value::Null,
            "NULL in column {column}"
        );
    }

    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn zero_dates_fail_only_their_own_cells() {
    let mut db = admin().await;
    let t = unique("zero_dates");
    run(&mut db, "SET SESSION sql_mode = ''").await;
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (id INT PRIMARY KEY, d DATE, dt DATETIME, ts TIMESTAMP NULL,
               name VARCHAR(10))"
        ),
    )
    .await;
    run(
        &mut db,
        &format!(
            "INSERT INTO {t} VALUES
               (1, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', 'first'),
               (2, '2024-00-10', '2024-05-00 10:00:00', NULL, 'second')"
        ),
    )
    .await;
    let sel = selection(
        Relation::Table(t.clone()),
        &["id", "d", "dt", "ts", "name"],
        &["id"],
    );
    let page = connector()
        .read_page(&PageRequest {
            selection: &sel,
            after: None,
            limit: 10,
            bound: Bound::None,
        })
        .await
        .expect("page is read");
    assert_eq!(page.rows.len(), 2);

    let first = &page.rows[0];
    assert_eq!(ok(first, 0), &Value::Int(1));
    assert_eq!(ok(first, 4), &Value::Text("first".into()));
    for (i, column, source_type) in [
        (1, "d", "DATE"),
        (2, "dt", "DATETIME"),
        (3, "ts", "TIMESTAMP"),
    ] {
        let err = first.values[i]
            .clone()
            .expect_err("a zero date is not a date");
        assert_eq!(err.column, column);
        assert_eq!(err.source_type, source_type);
        assert_eq!(err.reason, "zero date cannot be converted");
        assert!(!err.to_string().contains("0000"), "no value in {err}");
    }

    let second = &page.rows[1];
    assert_eq!(ok(second, 4), &Value::Text("second".into()));
    assert_eq!(ok(second, 3), &Value::Null);
    for i in [1, 2] {
        let err = second.values[i]
            .clone()
            .expect_err("a zero month or day is not a date");
        assert_eq!(err.reason, "zero date cannot be converted");
    }

    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn pages_yield_each_row_once_when_a_thousand_rows_share_updated_at() {
    let _guard = INNODB_TRX.read().await;
    let mut db = admin().await;
    let t = unique("pages");
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (id INT PRIMARY KEY, updated_at DATETIME(6) NOT NULL,
               note VARCHAR(20), KEY (updated_at, id))"
        ),
    )
    .await;
    // 1,000 rows at one instant, 50 before or after it, ids interleaved.
    let mut values = Vec::new();
    for id in 1..=1050 {
        let at = match id {
            1..=1000 => "2024-01-01 00:00:00.000001",
            _ if id % 2 == 0 => "2023-12-31 23:59:59.999999",
            _ => "2024-01-01 00:00:00.000002",
        };
        values.push(format!("({id}, '{at}', 'row {id}')"));
    }
    run(
        &mut db,
        &format!("INSERT INTO {t} VALUES {}", values.join(", ")),
    )
    .await;
    let mut expected: Vec<i64> = (1001..=1050).filter(|id| id % 2 == 0).collect();
    expected.extend(1..=1000);
    expected.extend((1001..=1050).filter(|id| id % 2 == 1));

    let sel = selection(
        Relation::Table(t.clone()),
        &["id", "updated_at", "note"],
        &["updated_at", "id"],
    );
    let connector = connector();
    for bound in [
        Bound::None,
        Bound::Horizon {
            safety_lag: Duration::from_secs(1),
        },
    ] {
        let mut cursor = None;
        let (rows, horizons) = read_to_end(&connector, &sel, &mut cursor, 100, bound).await;
        let ids: Vec<i64> = rows.iter().map(|r| int_of(ok(r, 0))).collect();
        assert_eq!(ids, expected, "every row once, in cursor order ({bound:?})");
        assert_eq!(horizons.len(), 11, "ten full pages and one of 50");
        if bound == Bound::None {
            assert!(horizons.iter().all(|h| *h == HorizonInfo::Unbounded));
        } else {
            assert!(horizons.iter().all(|h| *h != HorizonInfo::Unbounded));
        }
    }

    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn late_commit_is_not_skipped() {
    let _guard = INNODB_TRX.read().await;
    for column_type in ["DATETIME(6)", "TIMESTAMP(6)"] {
        late_commit_scenario(column_type, false).await;
    }
}

/// InnoDB refreshes `innodb_trx` only after 0.1 s without readers: while another session
/// polls it, the open transaction stays invisible, and the connector must refuse the page
/// rather than read past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_is_not_skipped_while_innodb_trx_is_polled() {
    let _guard = INNODB_TRX.write().await;
    late_commit_scenario("DATETIME(6)", true).await;
}

/// Polls `information_schema.innodb_trx` from another session until `stop` is set.
fn spawn_innodb_trx_poller(
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = admin().await;
        while !stop.load(Ordering::Relaxed) {
            run(
                &mut conn,
                "SELECT COUNT(*) FROM information_schema.innodb_trx",
            )
            .await;
        }
    })
}

async fn late_commit_scenario(column_type: &str, polled: bool) {
    let mut db = admin().await;
    let t = unique("late");
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY,
               updated_at {column_type} NOT NULL, note VARCHAR(20))"
        ),
    )
    .await;
    run(
        &mut db,
        &format!(
            "INSERT INTO {t} (updated_at, note) VALUES
               (NOW(6) - INTERVAL 3 HOUR, 'early 1'),
               (NOW(6) - INTERVAL 2 HOUR, 'early 2'),
               (NOW(6) - INTERVAL 1 HOUR, 'early 3')"
        ),
    )
    .await;

    // A second session opens a transaction and writes a row, without committing.
    let mut late = admin().await;
    run(&mut late, "START TRANSACTION").await;
    run(
        &mut late,
        &format!("INSERT INTO {t} (updated_at, note) VALUES (NOW(6), 'late')"),
    )
    .await;
    // Rows written and committed after it have later timestamps and larger ids.
    run(
        &mut db,
        &format!("INSERT INTO {t} (updated_at, note) VALUES (NOW(6), 'after 1')"),
    )
    .await;
    run(
        &mut db,
        &format!("INSERT INTO {t} (updated_at, note) VALUES (NOW(6), 'after 2')"),
    )
    .await;

    let sel = selection(
        Relation::Table(t.clone()),
        &["id", "updated_at", "note"],
        &["updated_at", "id"],
    );
    let bound = Bound::Horizon {
        safety_lag: Duration::from_secs(1),
    };
    let early = [
        Value::Text("early 1".into()),
        Value::Text("early 2".into()),
        Value::Text("early 3".into()),
    ];
    let connector = connector();

    if polled {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = spawn_innodb_trx_poller(stop.clone());
        let result = connector
            .read_page(&PageRequest {
                selection: &sel,
                after: None,
                limit: 100,
                bound,
            })
            .await;
        stop.store(true, Ordering::Relaxed);
        poller.await.expect("poller ends");
        match result {
            Err(ConnectorError::Statement { reason, .. }) => {
                assert!(reason.contains("innodb_trx"), "{reason}");
            }
            Ok(page) => {
                // The view happened to be refreshed: then it saw the open transaction.
                let notes: Vec<&Value> = page.rows.iter().map(|r| ok(r, 2)).collect();
                assert_eq!(notes, early.iter().collect::<Vec<_>>());
            }
            Err(other) => panic!("expected a refusal, got {other:?}"),
        }
    }

    let mut cursor = None;
    let (rows, horizons) = read_to_end(&connector, &sel, &mut cursor, 2, bound).await;
    let notes: Vec<&Value> = rows.iter().map(|r| ok(r, 2)).collect();
    assert_eq!(
        notes,
        early.iter().collect::<Vec<_>>(),
        "{column_type}: pages stop before the open transaction"
    );
    let now = Utc::now();
    for horizon in &horizons {
        match horizon {
            HorizonInfo::OpenTransaction { since, .. } => {
                let since: DateTime<Utc> = since.parse().expect("RFC 3339");
                assert!(since <= now, "the open transaction started in the past");
            }
            other => panic!("{column_type}: expected an open-transaction bound, got {other:?}"),
        }
    }

    // While the transaction is open, reading again does not pass it.
    let again = connector
        .read_page(&PageRequest {
            selection: &sel,
            after: cursor.as_deref(),
            limit: 100,
            bound,
        })
        .await
        .expect("page is read");
    assert!(
        again.rows.is_empty(),
        "{column_type}: nothing passes the open transaction"
    );
    assert!(
        matches!(again.horizon.info, HorizonInfo::OpenTransaction { .. }),
        "{:?}",
        again.horizon.info
    );

    run(&mut late, "COMMIT").await;

    // From the stored cursor, the late row comes, then the rows after it, each once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rest = Vec::new();
    while rest.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "{column_type}: the late rows did not come within 30 s (got {})",
            rest.len()
        );
        let (rows, _) = read_to_end(&connector, &sel, &mut cursor, 2, bound).await;
        rest.extend(rows);
        if rest.len() < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let notes: Vec<&Value> = rest.iter().map(|r| ok(r, 2)).collect();
    assert_eq!(
        notes,
        [
            &Value::Text("late".into()),
            &Value::Text("after 1".into()),
            &Value::Text("after 2".into())
        ],
        "{column_type}: the late commit is read after all"
    );
    let ids: BTreeSet<i64> = rows.iter().chain(&rest).map(|r| int_of(ok(r, 0))).collect();
    assert_eq!(ids.len(), 6, "{column_type}: every row exactly once");

    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn date_cursor_holds_back_today() {
    let _guard = INNODB_TRX.read().await;
    let mut db = admin().await;
    let t = unique("dates");
    run(
        &mut db,
        &format!("CREATE TABLE {t} (id INT PRIMARY KEY, day DATE NOT NULL)"),
    )
    .await;
    run(
        &mut db,
        &format!(
            "INSERT INTO {t} VALUES (1, CURDATE() - INTERVAL 2 DAY),
               (2, CURDATE() - INTERVAL 1 DAY), (3, CURDATE())"
        ),
    )
    .await;
    let sel = selection(Relation::Table(t.clone()), &["id", "day"], &["day", "id"]);
    let connector = connector();
    let mut cursor = None;
    let bound = Bound::Horizon {
        safety_lag: Duration::from_secs(1),
    };
    let (rows, horizons) = read_to_end(&connector, &sel, &mut cursor, 10, bound).await;
    let ids: Vec<i64> = rows.iter().map(|r| int_of(ok(r, 0))).collect();
    // Right after midnight the horizon may still be yesterday, which holds back row 2 too.
    assert!(
        ids == [1, 2] || ids == [1],
        "rows dated today are held back, got {ids:?}"
    );
    assert!(horizons.iter().all(|h| *h != HorizonInfo::Unbounded));

    let mut cursor = None;
    let (rows, _) = read_to_end(&connector, &sel, &mut cursor, 10, Bound::None).await;
    assert_eq!(rows.len(), 3, "without a bound every date is read");

    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn cursor_values_of_every_kind_bind_back() {
    let mut db = admin().await;
    let t = unique("cursors");
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (id INT PRIMARY KEY, u BIGINT UNSIGNED, s VARCHAR(20),
               dec_ DECIMAL(20,5), ts TIMESTAMP(6) NULL, d DATE, b VARBINARY(8), f DOUBLE)"
        ),
    )
    .await;
    run(
        &mut db,
        &format!(
            "INSERT INTO {t} VALUES
               (1, 18446744073709551613, '北京', 1.00001, '2024-01-01 00:00:00.000001',
                '2024-01-01', 0x00, 0.5),
               (2, 18446744073709551614, '上海', 1.00002, '2024-01-01 00:00:00.000002',
                '2024-01-02', 0x0000, 1.5),
               (3, 18446744073709551615, '张三', 1.00003, '2024-01-01 00:00:00.000003',
                '2024-01-03', 0x01, 2.5)"
        ),
    )
    .await;
    let connector = connector();
    for key in ["u", "s", "dec_", "ts", "d", "b", "f"] {
        let sel = selection(Relation::Table(t.clone()), &["id", key], &[key]);
        let mut cursor = None;
        let (rows, _) = read_to_end(&connector, &sel, &mut cursor, 1, Bound::None).await;
        let ids: BTreeSet<i64> = rows.iter().map(|r| int_of(ok(r, 0))).collect();
        assert_eq!(rows.len(), 3, "cursor on `{key}` reads each row once");
        assert_eq!(ids.len(), 3, "cursor on `{key}` reads each row once");
    }
    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn query_resource_cannot_write() {
    let mut db = admin().await;
    let t = unique("ro");
    let log = unique("ro_log");
    let f = unique("ro_write");
    run(
        &mut db,
        &format!("CREATE TABLE {t} (id INT PRIMARY KEY, v INT)"),
    )
    .await;
    run(&mut db, &format!("CREATE TABLE {log} (id INT)")).await;
    run(&mut db, &format!("INSERT INTO {t} VALUES (1, 10), (2, 20)")).await;
    run(
        &mut db,
        &format!(
            "CREATE FUNCTION {f}() RETURNS INT NOT DETERMINISTIC MODIFIES SQL DATA
             BEGIN INSERT INTO {log} VALUES (1); RETURN 1; END"
        ),
    )
    .await;
    let connector = connector();

    let reading = selection(
        Relation::Query(format!(
            "SELECT id, v * 2 AS doubled FROM {t} -- a comment\n;"
        )),
        &["id", "doubled"],
        &["id"],
    );
    let page = connector
        .read_page(&PageRequest {
            selection: &reading,
            after: None,
            limit: 10,
            bound: Bound::None,
        })
        .await
        .expect("a reading query works");
    let doubled: Vec<&Value> = page.rows.iter().map(|r| ok(r, 1)).collect();
    assert_eq!(doubled, [&Value::Int(20), &Value::Int(40)]);

    let writing = selection(
        Relation::Query(format!("SELECT id, {f}() AS w FROM {t}")),
        &["id", "w"],
        &["id"],
    );
    let err = connector
        .read_page(&PageRequest {
            selection: &writing,
            after: None,
            limit: 10,
            bound: Bound::None,
        })
        .await
        .expect_err("a query that writes is refused");
    match &err {
        ConnectorError::Statement {
            source_name,
            reason,
        } => {
            assert_eq!(source_name, "crm");
            assert!(reason.contains("READ ONLY"), "{reason}");
        }
        other => panic!("expected a statement error, got {other:?}"),
    }
    let written: Option<i64> = db
        .query_first(format!("SELECT COUNT(*) FROM {log}"))
        .await
        .expect("count");
    assert_eq!(written, Some(0), "nothing was written");

    run(&mut db, &format!("DROP FUNCTION {f}")).await;
    run(&mut db, &format!("DROP TABLE {t}, {log}")).await;
}

#[tokio::test]
async fn unreachable_server_names_source_and_address_but_not_the_password() {
    exchange_protocol::tls::install_provider();
    let mut spec = spec_for("mysql://root:url-secret@127.0.0.1:1/test");
    spec.password = Some("file-secret".into());
    let connector = MysqlConnector::new(&spec).expect("creating a connector does not connect");
    let sel = selection(Relation::Table("t".into()), &["id"], &["id"]);
    let errors = [
        connector
            .probe()
            .await
            .expect_err("nothing listens on port 1"),
        connector
            .read_page(&PageRequest {
                selection: &sel,
                after: None,
                limit: 1,
                bound: Bound::None,
            })
            .await
            .expect_err("nothing listens on port 1"),
    ];
    for err in errors {
        match &err {
            ConnectorError::Unreachable {
                source_name,
                address,
                ..
            } => {
                assert_eq!(source_name, "crm");
                assert_eq!(address, "127.0.0.1:1/test");
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
        assert!(err.is_transient());
        let message = format!("{err} {err:?}");
        assert!(!message.contains("secret"), "no password in: {message}");
    }
}

#[tokio::test]
async fn tls_url_fails_instead_of_falling_back_to_plaintext() {
    // The local test server has no TLS: a connector that asks for it must not connect.
    exchange_protocol::tls::install_provider();
    let plain = connector();
    plain
        .probe()
        .await
        .expect("the same server answers without TLS");

    let tls = MysqlConnector::new(&spec_for(&url_with("require_ssl=true"))).expect("accepted");
    match tls.probe().await {
        Err(ConnectorError::Unreachable { reason, .. }) => {
            assert!(
                reason.contains("TLS"),
                "the reason says TLS failed: {reason}"
            );
        }
        other => panic!("TLS was requested; expected unreachable, got {other:?}"),
    }

    // A CA file asks for TLS too.
    let ca = tempfile::NamedTempFile::new().expect("temp file");
    let mut spec = spec_for(&url());
    spec.ca = Some(ca.path().to_owned());
    let with_ca = MysqlConnector::new(&spec).expect("accepted");
    assert!(
        matches!(
            with_ca.probe().await,
            Err(ConnectorError::Unreachable { .. })
        ),
        "a configured CA means TLS, never plaintext"
    );
}

#[test]
fn unverified_tls_and_unknown_tls_parameters_are_refused() {
    for params in [
        "require_ssl=true&verify_ca=false",
        "require_ssl=true&verify_identity=false",
        "ssl-mode=REQUIRED",
        "sslmode=require",
    ] {
        match MysqlConnector::new(&spec_for(&url_with(params))) {
            Err(ConnectorError::Config { source_name, .. }) => assert_eq!(source_name, "crm"),
            Err(other) => panic!("{params}: expected a configuration error, got {other:?}"),
            Ok(_) => panic!("{params}: expected a configuration error"),
        }
    }
    let mut spec = spec_for(&url());
    spec.ca = Some("/nonexistent/ca.pem".into());
    assert!(matches!(
        MysqlConnector::new(&spec),
        Err(ConnectorError::Config { .. })
    ));
}

#[tokio::test]
async fn probe_reports_server_and_open_transaction_visibility() {
    let _guard = INNODB_TRX.read().await;
    let probe = connector().probe().await.expect("probe");
    assert!(
        probe.server.starts_with("MariaDB ") || probe.server.starts_with("MySQL "),
        "{}",
        probe.server
    );
    assert!(probe.sees_open_transactions);
    assert_eq!(probe.missing_privilege, None);
}

#[tokio::test]
async fn without_process_privilege_the_horizon_is_lag_only() {
    let mut db = admin().await;
    let t = unique("noproc");
    let user = unique("np");
    run(
        &mut db,
        &format!("CREATE TABLE {t} (id INT PRIMARY KEY, updated_at DATETIME(6) NOT NULL)"),
    )
    .await;
    run(
        &mut db,
        &format!("INSERT INTO {t} VALUES (1, NOW(6) - INTERVAL 1 HOUR)"),
    )
    .await;
    run(
        &mut db,
        &format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'np-secret'"),
    )
    .await;
    let opts = Opts::from_url(&url()).expect("URL");
    let db_name = opts.db_name().unwrap_or("test").to_owned();
    run(
        &mut db,
        &format!("GRANT SELECT ON `{db_name}`.* TO '{user}'@'%'"),
    )
    .await;

    // The password comes from the spec, not the URL.
    let mut spec = spec_for(&format!(
        "mysql://{user}@{}:{}/{db_name}",
        opts.ip_or_hostname(),
        opts.tcp_port()
    ));
    spec.password = Some("np-secret".into());
    let connector = MysqlConnector::new(&spec).expect("accepted");

    let probe = connector.probe().await.expect("probe");
    assert!(!probe.sees_open_transactions);
    let missing = probe
        .missing_privilege
        .expect("names the missing privilege");
    assert!(
        missing.starts_with(&format!("GRANT PROCESS ON *.* TO '{user}'@'%'")),
        "{missing}"
    );
    // Without the right to list replication connections, a writable server is taken to be a
    // primary, and the grant that would tell is named.
    assert_eq!(probe.replica, None);
    assert!(
        ["SLAVE MONITOR", "REPLICATION CLIENT"]
            .iter()
            .any(|grant| missing.contains(&format!("GRANT {grant} ON *.* TO '{user}'@'%'"))),
        "{missing}"
    );

    let sel = selection(
        Relation::Table(t.clone()),
        &["id", "updated_at"],
        &["updated_at", "id"],
    );
    let page = connector
        .read_page(&PageRequest {
            selection: &sel,
            after: None,
            limit: 10,
            bound: Bound::Horizon {
                safety_lag: Duration::from_secs(1),
            },
        })
        .await
        .expect("page is read");
    assert_eq!(page.horizon.info, HorizonInfo::LagOnly);
    assert_eq!(page.rows.len(), 1);

    run(&mut db, &format!("DROP USER '{user}'@'%'")).await;
    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn describe_names_source_types_and_missing_columns() {
    let mut db = admin().await;
    let t = unique("describe");
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (id INT PRIMARY KEY, updated_at DATETIME(6), ts TIMESTAMP NULL,
               name VARCHAR(20), amount DECIMAL(10,2), big BIGINT UNSIGNED, raw BLOB,
               day DATE)"
        ),
    )
    .await;
    let connector = connector();
    let columns = [
        ("id", "INT"),
        ("updated_at", "DATETIME"),
        ("ts", "TIMESTAMP"),
        ("name", "VARCHAR"),
        ("amount", "DECIMAL"),
        ("big", "BIGINT UNSIGNED"),
        ("raw", "BLOB"),
        ("day", "DATE"),
    ];
    let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    let info = connector
        .describe(&selection(Relation::Table(t.clone()), &names, &["id"]))
        .await
        .expect("describe");
    let got: Vec<(&str, &str)> = info
        .iter()
        .map(|c| (c.name.as_str(), c.source_type.as_str()))
        .collect();
    assert_eq!(got, columns);

    let err = connector
        .describe(&selection(
            Relation::Table(t.clone()),
            &["id", "no_such_column"],
            &["id"],
        ))
        .await
        .expect_err("a missing column is an error");
    assert!(
        matches!(&err, ConnectorError::Config { reason, .. } if reason.contains("no_such_column")),
        "{err}"
    );
    let err = connector
        .describe(&selection(
            Relation::Table("no_such_table_here".into()),
            &["id"],
            &["id"],
        ))
        .await
        .expect_err("a missing table is an error");
    assert!(
        matches!(&err, ConnectorError::Statement { reason, .. } if reason.contains("no_such_table_here")),
        "{err}"
    );

    run(&mut db, &format!("DROP TABLE {t}")).await;
}

/// A connector whose `DATETIME` columns are written in `zone` (the URL's `time_zone`).
fn connector_in_zone(zone: &str) -> MysqlConnector {
    exchange_protocol::tls::install_provider();
    MysqlConnector::new(&spec_for(&url_with(&format!("time_zone={zone}"))))
        .expect("a time_zone parameter is accepted")
}

/// The writers' session zone is behind the server's system zone (UTC here; the issue's case is
/// a global `time_zone='+00:00'` with a system zone of +08:00): a horizon computed in the
/// system zone would be hours ahead of what the writers' `NOW()` stamps, and pass an open
/// transaction's rows.
#[tokio::test]
async fn datetime_horizon_is_computed_in_the_writers_time_zone_not_the_system_zone() {
    let _guard = INNODB_TRX.read().await;
    let mut db = admin().await;
    run(&mut db, "SET time_zone = '-08:00'").await;
    let t = unique("tz");
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY,
               updated_at DATETIME(6) NOT NULL, note VARCHAR(20))"
        ),
    )
    .await;
    run(
        &mut db,
        &format!("INSERT INTO {t} (updated_at, note) VALUES (NOW(6) - INTERVAL 1 HOUR, 'early')"),
    )
    .await;
    let mut late = admin().await;
    run(&mut late, "SET time_zone = '-08:00'").await;
    run(&mut late, "START TRANSACTION").await;
    run(
        &mut late,
        &format!("INSERT INTO {t} (updated_at, note) VALUES (NOW(6), 'late')"),
    )
    .await;
    run(
        &mut db,
        &format!("INSERT INTO {t} (updated_at, note) VALUES (NOW(6), 'after')"),
    )
    .await;

    let sel = selection(
        Relation::Table(t.clone()),
        &["id", "updated_at", "note"],
        &["updated_at", "id"],
    );
    let bound = Bound::Horizon {
        safety_lag: Duration::from_secs(1),
    };
    let connector = connector_in_zone("-08:00");
    let mut cursor = None;
    let (rows, _) = read_to_end(&connector, &sel, &mut cursor, 10, bound).await;
    let notes: Vec<&Value> = rows.iter().map(|r| ok(r, 2)).collect();
    assert_eq!(
        notes,
        [&Value::Text("early".into())],
        "stops before the open transaction"
    );

    run(&mut late, "COMMIT").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rest = Vec::new();
    while rest.len() < 2 {
        assert!(Instant::now() < deadline, "the late rows did not come");
        let (rows, _) = read_to_end(&connector, &sel, &mut cursor, 10, bound).await;
        rest.extend(rows);
        if rest.len() < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let notes: Vec<&Value> = rest.iter().map(|r| ok(r, 2)).collect();
    assert_eq!(
        notes,
        [&Value::Text("late".into()), &Value::Text("after".into())],
        "no row skipped"
    );
    run(&mut db, &format!("DROP TABLE {t}")).await;
}

/// `reached` is an instant on the source's clock: once a page comes back short with
/// `reached` past a `clock()` reading, every row committed before that reading was returned —
/// also for `DATETIME` columns written in a zone ahead of UTC, and for `DATE` columns.
#[tokio::test]
async fn a_row_committed_before_the_clock_is_read_once_reached_passes_it() {
    let _guard = INNODB_TRX.read().await;
    for (column_type, now) in [
        ("DATETIME(6)", "NOW(6)"),
        ("TIMESTAMP(6)", "NOW(6)"),
        ("DATE", "CURDATE()"),
    ] {
        let mut db = admin().await;
        run(&mut db, "SET time_zone = '+08:00'").await;
        let t = unique("reached");
        run(
            &mut db,
            &format!(
                "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, at {column_type} NOT NULL)"
            ),
        )
        .await;
        run(&mut db, &format!("INSERT INTO {t} (at) VALUES ({now})")).await;
        let connector = connector_in_zone("+08:00");
        let clock = connector.clock().await.expect("clock");
        let sel = selection(Relation::Table(t.clone()), &["id", "at"], &["at", "id"]);
        let bound = Bound::Horizon {
            safety_lag: Duration::from_millis(500),
        };
        let mut rows = Vec::new();
        let mut cursor = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let page = connector
                .read_page(&PageRequest {
                    selection: &sel,
                    after: cursor.as_deref(),
                    limit: 10,
                    bound,
                })
                .await
                .expect("page is read");
            let short = page.rows.len() < 10;
            if let Some(last) = page.rows.last() {
                cursor = Some(cursor_of(&sel, last));
            }
            rows.extend(page.rows);
            let reached = page
                .horizon
                .reached
                .expect("a bounded page reaches an instant");
            if short && reached > clock {
                break;
            }
            if column_type == "DATE" {
                // The horizon reaches today's midnight only tomorrow: check the instant.
                let midnight = (clock + chrono::TimeDelta::hours(8))
                    .date_naive()
                    .and_hms_opt(0, 0, 0)
                    .expect("midnight")
                    .and_utc()
                    - chrono::TimeDelta::hours(8);
                assert!(
                    reached <= midnight,
                    "DATE: reached {reached} is at most the midnight (+08:00) of the bound's day"
                );
                assert!(rows.is_empty(), "DATE: today's row waits for midnight");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{column_type}: reached never passed the clock"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if column_type != "DATE" {
            assert_eq!(
                rows.len(),
                1,
                "{column_type}: the row committed before the clock"
            );
        }
        run(&mut db, &format!("DROP TABLE {t}")).await;
    }
}

/// `information_schema.innodb_trx.trx_started` is not in the session's time zone (the
/// connector converts it from the server's SYSTEM zone).
#[tokio::test]
async fn innodb_trx_started_is_in_the_system_time_zone_not_the_session_zone() {
    let _guard = INNODB_TRX.read().await;
    let mut db = admin().await;
    run(&mut db, "SET time_zone = '+05:00'").await;
    let t = unique("trxzone");
    run(&mut db, &format!("CREATE TABLE {t} (id INT PRIMARY KEY)")).await;
    run(&mut db, "START TRANSACTION").await;
    run(&mut db, &format!("INSERT INTO {t} VALUES (1)")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let skew: i64 = loop {
        let skew: Option<i64> = db
            .query_first(
                "SELECT TIMESTAMPDIFF(SECOND, trx_started,
                   CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', 'SYSTEM'))
                 FROM information_schema.innodb_trx
                 WHERE trx_mysql_thread_id = CONNECTION_ID()",
            )
            .await
            .expect("innodb_trx is read");
        if let Some(skew) = skew {
            break skew;
        }
        assert!(Instant::now() < deadline, "own transaction never listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        (0..=10).contains(&skew),
        "trx_started is SYSTEM time (skew {skew} s), not the session's +05:00"
    );
    run(&mut db, "ROLLBACK").await;
    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn decimal_cursor_values_differing_in_the_twentieth_digit_page_correctly() {
    let mut db = admin().await;
    let t = unique("decimals");
    run(
        &mut db,
        &format!("CREATE TABLE {t} (id INT PRIMARY KEY, amount DECIMAL(30,10) NOT NULL)"),
    )
    .await;
    run(
        &mut db,
        &format!(
            "INSERT INTO {t} VALUES (1, 1234567890.1234567891), (2, 1234567890.1234567892),
               (3, 1234567890.1234567893), (4, 1234567890.1234567894)"
        ),
    )
    .await;
    let connector = connector();
    for (columns, cursor) in [
        (&["id", "amount"][..], &["amount"][..]),
        (&["id", "amount"][..], &["amount", "id"][..]),
    ] {
        for relation in [
            Relation::Table(t.clone()),
            Relation::Query(format!("SELECT id, amount FROM {t}")),
        ] {
            let sel = selection(relation, columns, cursor);
            let mut after = None;
            let (rows, _) = read_to_end(&connector, &sel, &mut after, 1, Bound::None).await;
            let ids: Vec<i64> = rows.iter().map(|r| int_of(ok(r, 0))).collect();
            assert_eq!(
                ids,
                [1, 2, 3, 4],
                "cursor {cursor:?}: each row once, in order"
            );
        }
    }
    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn a_selected_name_that_is_not_an_input_column_is_refused() {
    let mut db = admin().await;
    let t = unique("deny");
    let v = unique("deny_view");
    run(
        &mut db,
        &format!("CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(20), secret VARCHAR(20))"),
    )
    .await;
    run(
        &mut db,
        &format!("CREATE VIEW {v} AS SELECT id, name FROM {t}"),
    )
    .await;
    let schema: String = db
        .query_first("SELECT DATABASE()")
        .await
        .expect("database")
        .expect("a database is selected");
    let connector = connector();
    let relations = [
        Relation::Table(t.clone()),
        Relation::Table(format!("{schema}.{t}")),
        Relation::Table(v.clone()),
        Relation::Query(format!("SELECT id, name FROM {t}")),
    ];
    for relation in relations {
        let ok_sel = selection(relation.clone(), &["id", "name"], &["id"]);
        connector
            .describe(&ok_sel)
            .await
            .unwrap_or_else(|e| panic!("{relation:?}: existing columns are accepted: {e}"));
        for missing in ["no_such_column", "secret"] {
            if missing == "secret"
                && matches!(relation, Relation::Table(ref n) if !n.contains("view"))
            {
                continue;
            }
            let sel = selection(relation.clone(), &["id", missing], &["id"]);
            for result in [
                connector.describe(&sel).await.map(|_| ()),
                connector
                    .read_page(&PageRequest {
                        selection: &sel,
                        after: None,
                        limit: 10,
                        bound: Bound::None,
                    })
                    .await
                    .map(|_| ()),
                connector.null_cursor_rows(&sel, 10).await.map(|_| ()),
                connector
                    .lookup(&sel, "id", &[Value::Int(1)])
                    .await
                    .map(|_| ()),
            ] {
                match result {
                    Err(ConnectorError::Config { reason, .. }) => {
                        assert!(reason.contains(missing), "{relation:?}: {reason}");
                    }
                    other => panic!("{relation:?}: `{missing}` must be refused, got {other:?}"),
                }
            }
        }
    }
    run(&mut db, &format!("DROP VIEW {v}")).await;
    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn describe_reports_nullability_of_table_columns_only() {
    let mut db = admin().await;
    let t = unique("nullable");
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (id INT PRIMARY KEY, at DATETIME NULL, name VARCHAR(9) NOT NULL)"
        ),
    )
    .await;
    let connector = connector();
    let info = connector
        .describe(&selection(
            Relation::Table(t.clone()),
            &["id", "at", "name"],
            &["at", "id"],
        ))
        .await
        .expect("describe");
    let nullable: Vec<Option<bool>> = info.iter().map(|c| c.nullable).collect();
    assert_eq!(nullable, [Some(false), Some(true), Some(false)]);
    let info = connector
        .describe(&selection(
            Relation::Query(format!("SELECT id, at FROM {t}")),
            &["id", "at"],
            &["at", "id"],
        ))
        .await
        .expect("describe");
    let nullable: Vec<Option<bool>> = info.iter().map(|c| c.nullable).collect();
    assert_eq!(nullable, [None, None]);
    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn null_cursor_rows_are_counted_and_returned_with_selected_columns_only() {
    let mut db = admin().await;
    let t = unique("nullcur");
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (id INT PRIMARY KEY, at DATETIME NULL, note VARCHAR(9),
               secret VARCHAR(9))"
        ),
    )
    .await;
    run(
        &mut db,
        &format!(
            "INSERT INTO {t} VALUES (1, NULL, 'a', 's'), (2, '2024-01-01', 'b', 's'),
               (3, NULL, 'c', 's'), (4, NULL, 'd', 's')"
        ),
    )
    .await;
    let connector = connector();
    for relation in [
        Relation::Table(t.clone()),
        Relation::Query(format!("SELECT * FROM {t}")),
    ] {
        let sel = selection(relation.clone(), &["id", "at", "note"], &["at", "id"]);
        // No page returns them (MySQL sorts NULL first), not even a first read.
        let (rows, _) = read_to_end(&connector, &sel, &mut None, 1, Bound::None).await;
        let ids: Vec<i64> = rows.iter().map(|r| int_of(ok(r, 0))).collect();
        assert_eq!(ids, [2], "{relation:?}");
        let nulls = connector
            .null_cursor_rows(&sel, 2)
            .await
            .expect("null cursor rows");
        assert_eq!(nulls.total, 3, "{relation:?}");
        assert_eq!(nulls.rows.len(), 2, "{relation:?}: at most `limit` rows");
        for row in &nulls.rows {
            assert_eq!(row.values.len(), 3, "selected columns only");
            assert_eq!(ok(row, 1), &Value::Null);
        }
        // A NOT NULL cursor column (the key) is not looked at.
        let sel = selection(relation, &["id", "note"], &["id"]);
        let nulls = connector.null_cursor_rows(&sel, 2).await.expect("none");
        assert_eq!(nulls.total, 0);
    }
    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn lookup_returns_the_rows_of_the_given_keys_in_chunks_bound_with_the_key_type() {
    let mut db = admin().await;
    let t = unique("lookup");
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (id BIGINT UNSIGNED PRIMARY KEY, amount DECIMAL(30,10),
               note VARCHAR(9), secret VARCHAR(9))"
        ),
    )
    .await;
    run(
        &mut db,
        &format!(
            "INSERT INTO {t} SELECT seq, 1234567890.1234567890 + seq * 0.0000000001, 'n', 's'
             FROM seq_1_to_2500"
        ),
    )
    .await;
    run(
        &mut db,
        &format!(
            "INSERT INTO {t} VALUES (18446744073709551615, 0, 'max', 's'),
               (18446744073709551614, 1, 'max-1', 's')"
        ),
    )
    .await;
    let connector = connector();
    let sel = selection(
        Relation::Table(t.clone()),
        &["id", "amount", "note"],
        &["id"],
    );
    // Every second key of 1..=2500 (more than one chunk), plus keys that do not exist.
    let mut keys: Vec<Value> = (1..=2500u64).step_by(2).map(Value::UInt).collect();
    keys.push(Value::UInt(999_999));
    keys.push(Value::UInt(18446744073709551615));
    let rows = connector.lookup(&sel, "id", &keys).await.expect("lookup");
    assert_eq!(rows.len(), 1251);
    assert!(
        rows.iter().all(|r| r.values.len() == 3),
        "selected columns only"
    );
    // Keys given as text are bound as the column's type (no double rounding).
    let rows = connector
        .lookup(&sel, "id", &[Value::Text("18446744073709551614".into())])
        .await
        .expect("lookup");
    assert_eq!(rows.len(), 1);
    assert_eq!(ok(&rows[0], 2), &Value::Text("max-1".into()));
    // Decimal keys compare exactly, past the 15th digit (MariaDB compares a decimal with a
    // list of two or more strings as DOUBLE).
    let sel = selection(Relation::Table(t.clone()), &["id", "amount"], &["id"]);
    let rows = connector
        .lookup(
            &sel,
            "amount",
            &[
                Value::Decimal("1234567890.1234567893".into()),
                Value::Decimal("1234567890.1234567895".into()),
            ],
        )
        .await
        .expect("lookup");
    let ids: BTreeSet<u64> = rows
        .iter()
        .map(|r| match ok(r, 0) {
            Value::UInt(u) => *u,
            other => panic!("expected an unsigned key, got {other:?}"),
        })
        .collect();
    assert_eq!(ids, BTreeSet::from([3, 5]));
    // A key that does not fit the column's type is refused, without its value.
    let err = connector
        .lookup(&sel, "id", &[Value::Text("abc-secret".into())])
        .await
        .expect_err("not an integer");
    assert!(matches!(&err, ConnectorError::Config { .. }), "{err}");
    assert!(!err.to_string().contains("abc-secret"), "{err}");
    run(&mut db, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn open_transaction_horizon_names_the_session_that_holds_it() {
    let _guard = INNODB_TRX.read().await;
    let mut db = admin().await;
    let t = unique("holder");
    run(
        &mut db,
        &format!("CREATE TABLE {t} (id INT PRIMARY KEY, at DATETIME(6) NOT NULL)"),
    )
    .await;
    let mut late = admin().await;
    run(&mut late, "START TRANSACTION").await;
    run(&mut late, &format!("INSERT INTO {t} VALUES (1, NOW(6))")).await;
    let thread: u64 = late
        .query_first("SELECT CONNECTION_ID()")
        .await
        .expect("id")
        .expect("id");
    let sel = selection(Relation::Table(t.clone()), &["id", "at"], &["at", "id"]);
    let page = connector()
        .read_page(&PageRequest {
            selection: &sel,
            after: None,
            limit: 10,
            bound: Bound::Horizon {
                safety_lag: Duration::from_secs(1),
            },
        })
        .await
        .expect("page");
    match page.horizon.info {
        HorizonInfo::OpenTransaction {
            session: Some(session),
            ..
        } => {
            assert!(
                session.starts_with(&format!("thread {thread}, user `root`")),
                "{session}"
            );
        }
        other => panic!("expected the holder, got {other:?}"),
    }
    run(&mut late, "ROLLBACK").await;
    run(&mut db, &format!("DROP TABLE {t}")).await;
}

/// A server with a replication connection is a replica: its horizon is the clock minus the
/// configured replica lag. The connection is configured, never started, and removed again; the
/// test holds the `innodb_trx` lock exclusively so no other test here sees a replica.
#[tokio::test]
async fn a_replica_is_reported_and_bounded_by_the_replica_lag() {
    let _guard = INNODB_TRX.write().await;
    let mut db = admin().await;
    let t = unique("replica");
    let channel = unique("exchange_test");
    run(
        &mut db,
        &format!("CREATE TABLE {t} (id INT PRIMARY KEY, at DATETIME(6) NOT NULL)"),
    )
    .await;
    run(
        &mut db,
        &format!("INSERT INTO {t} VALUES (1, NOW(6) - INTERVAL 1 HOUR), (2, NOW(6))"),
    )
    .await;
    let connector = connector();
    let before = connector.probe().await.expect("probe");
    assert_eq!(before.replica, None, "the test server is not a replica");

    run(
        &mut db,
        &format!(
            "CHANGE MASTER '{channel}' TO MASTER_HOST = '127.0.0.1', MASTER_PORT = 9,
               MASTER_USER = 'nobody'"
        ),
    )
    .await;
    let probe = connector.probe().await;
    let sel = selection(Relation::Table(t.clone()), &["id", "at"], &["at", "id"]);
    let page = connector
        .read_page(&PageRequest {
            selection: &sel,
            after: None,
            limit: 10,
            bound: Bound::Horizon {
                safety_lag: Duration::from_secs(1),
            },
        })
        .await;
    run(&mut db, &format!("RESET SLAVE '{channel}' ALL")).await;

    let probe = probe.expect("probe");
    let replica = probe.replica.expect("a replica is reported");
    assert!(replica.contains("replica"), "{replica}");
    let page = page.expect("page");
    assert_eq!(
        page.horizon.info,
        HorizonInfo::Replica {
            lag: Duration::from_secs(300)
        }
    );
    let ids: Vec<i64> = page.rows.iter().map(|r| int_of(ok(r, 0))).collect();
    assert_eq!(ids, [1], "rows newer than the replica lag wait");
    run(&mut db, &format!("DROP TABLE {t}")).await;
}

/// Runs a whole [`Connector::scan`]: the chunks as they arrived, and how it ended.
async fn scan_all(
    c: &MysqlConnector,
    selection: &Selection,
    after: Option<&[Value]>,
    chunk: usize,
    bound: Bound,
) -> (Vec<Vec<Row>>, exchange_connectors::ScanEnd) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let request = exchange_connectors::ScanRequest {
        selection,
        after,
        bound,
        chunk,
    };
    let scan = async move {
        let end = c.scan(&request, &tx).await.expect("the scan ends well");
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

/// On a table without an index on its cursor, a scan sends every row once, in cursor order,
/// in chunks of the size asked for, the same rows pages read; from a cursor, the rest; a reader
/// that goes away stops the scan. (Its bound is the pages' horizon, read by the same code:
/// `late_commit_is_not_skipped` and the agent's `late_commit.rs` cover it.)
#[tokio::test]
async fn a_scan_streams_the_rows_pages_would_read_in_cursor_order() {
    let _guard = INNODB_TRX.read().await;
    let mut db = admin().await;
    let t = unique("scan");
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (id INT PRIMARY KEY, updated_at DATETIME(6) NOT NULL,
               note VARCHAR(20))"
        ),
    )
    .await;
    let values: Vec<String> = (1..=2500)
        .map(|id| {
            format!(
                "({id}, TIMESTAMPADD(MINUTE, {}, '2026-01-01 00:00:00'), 'n{id}')",
                id % 97
            )
        })
        .collect();
    run(
        &mut db,
        &format!("INSERT INTO {t} VALUES {}", values.join(", ")),
    )
    .await;
    let sel = selection(
        Relation::Table(t.clone()),
        &["id", "updated_at", "note"],
        &["updated_at", "id"],
    );
    let bound = Bound::Horizon {
        safety_lag: Duration::ZERO,
    };
    let connector = connector();
    let (paged, _) = read_to_end(&connector, &sel, &mut None, 100, bound).await;
    let expected: Vec<i64> = paged.iter().map(|r| int_of(ok(r, 0))).collect();
    assert_eq!(expected.len(), 2500);

    let (chunks, end) = scan_all(&connector, &sel, None, 100, bound).await;
    assert_eq!(end.rows, 2500);
    assert!(!end.stopped);
    assert!(
        end.time.first_row <= end.time.total && !end.time.total.is_zero(),
        "{:?}",
        end.time
    );
    assert!(chunks.iter().all(|c| c.len() == 100), "chunks of 100 rows");
    let scanned: Vec<i64> = chunks.iter().flatten().map(|r| int_of(ok(r, 0))).collect();
    assert_eq!(scanned, expected, "every row once, in cursor order");
    let cursor = cursor_of(&sel, chunks[9].last().unwrap());
    let (rest, _) = scan_all(&connector, &sel, Some(&cursor), 700, bound).await;
    assert_eq!(
        rest.iter().map(Vec::len).collect::<Vec<_>>(),
        [700, 700, 100]
    );
    let rest: Vec<i64> = rest.iter().flatten().map(|r| int_of(ok(r, 0))).collect();
    assert_eq!(rest, expected[1000..]);

    // The reader takes one chunk and goes away.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let request = exchange_connectors::ScanRequest {
        selection: &sel,
        after: None,
        bound: Bound::None,
        chunk: 100,
    };
    let (end, first) = tokio::join!(connector.scan(&request, &tx), async move {
        let first = rx.recv().await.unwrap();
        drop(rx);
        first
    });
    let end = end.unwrap();
    assert_eq!(first.len(), 100);
    assert!(end.stopped, "{end:?}");
    assert!(end.rows < 2500, "{end:?}");

    run(&mut db, &format!("DROP TABLE {t}")).await;
}

/// Without an index on the cursor columns a steady-state page statement sorts (MariaDB's
/// `filesort`), and `plan_order` gives the statement that creates one; run as written, it makes
/// the index supply the order. A view that sorts is unknown; through the view the index tells.
#[tokio::test]
async fn plan_order_finds_the_cursor_index_or_gives_the_statement_that_creates_it() {
    let _guard = INNODB_TRX.read().await;
    let mut db = admin().await;
    let t = unique("order");
    let v = format!("{t}_v");
    let values: Vec<String> = (1..=300)
        .map(|id| {
            format!(
                "({id}, TIMESTAMPADD(MINUTE, {}, '2026-01-01 00:00:00'), 'n{id}')",
                id % 7
            )
        })
        .collect();
    run(
        &mut db,
        &format!(
            "CREATE TABLE {t} (id INT PRIMARY KEY, updated_at DATETIME(6) NOT NULL, \
             note VARCHAR(20)); INSERT INTO {t} VALUES {}; ANALYZE TABLE {t}; \
             CREATE VIEW {v} AS SELECT id, updated_at, note FROM {t}",
            values.join(", ")
        ),
    )
    .await;
    let database: String = db.query_first("SELECT DATABASE()").await.unwrap().unwrap();
    let sel = selection(
        Relation::Table(t.clone()),
        &["id", "updated_at", "note"],
        &["updated_at", "id"],
    );
    let view = selection(
        Relation::Table(v.clone()),
        &["id", "updated_at", "note"],
        &["updated_at", "id"],
    );
    let ask = |selection| OrderRequest {
        selection,
        limit: 500,
        bound: Bound::Horizon {
            safety_lag: Duration::ZERO,
        },
    };
    let connector = connector();
    let OrderPlan::Sorted { create_index } = connector.plan_order(&ask(&sel)).await.unwrap() else {
        panic!("a table without a cursor index is sorted")
    };
    assert_eq!(
        create_index,
        format!("CREATE INDEX `exchange_{t}_cursor` ON `{database}`.`{t}` (`updated_at`, `id`);")
    );
    assert!(
        matches!(
            connector.plan_order(&ask(&view)).await.unwrap(),
            OrderPlan::Unknown { .. }
        ),
        "a view that sorts: the index belongs to its table"
    );
    run(&mut db, &create_index).await;
    let indexed = OrderPlan::Indexed {
        index: Some(format!("exchange_{t}_cursor")),
    };
    assert_eq!(connector.plan_order(&ask(&sel)).await.unwrap(), indexed);
    assert_eq!(connector.plan_order(&ask(&view)).await.unwrap(), indexed);
    run(&mut db, &format!("DROP VIEW {v}; DROP TABLE {t}")).await;
}
