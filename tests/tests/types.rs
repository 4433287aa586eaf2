//! Every type round-trips exactly, end to end: source column → agent → hub → export. The
//! expected JSON values are written out by hand from the documented type mapping
//! (docs/CONFIG.md), not computed by the code under test.

use std::time::Duration;

use exchange_tests::agent::Resource;
use exchange_tests::db::{MyDb, PgDb};
use exchange_tests::rows::{self, Rows, assert_same};
use exchange_tests::scene::Scene;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

const CODE: &str = "330100-TYPES-0001";

fn row<const N: usize>(id: i64, pairs: [(&str, Value); N]) -> (String, rows::Fields) {
    let mut fields = rows::fields([("id", json!(id))]);
    fields.extend(rows::fields(pairs));
    (id.to_string(), fields)
}

/// A row whose every column but the key is NULL.
fn null_row(id: i64, columns: &[&str]) -> (String, rows::Fields) {
    let mut r = row(id, []);
    for c in columns {
        r.1.insert(c.to_string(), Value::Null);
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_types_round_trip_exactly() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client
        .batch_execute(
            r#"CREATE TABLE typed (
                id int PRIMARY KEY,
                i2 int2, i4 int4, i8 int8,
                num numeric, num_scaled numeric(30,10),
                f8 float8, b bool, t text, d date,
                ts timestamp, tstz timestamptz,
                by bytea, jb jsonb, js json,
                updated_at timestamptz NOT NULL DEFAULT now() - interval '1 hour'
            );
            SET TIME ZONE 'Asia/Shanghai';
            INSERT INTO typed (id, i2, i4, i8, num, num_scaled, f8, b, t, d, ts, tstz, by, jb, js) VALUES
            (1, 32767, 2147483647, 9223372036854775807,
             12345678901234567890.123456789012345678900, 1.5,
             0.1, true, '中文 "引号" \ 反斜杠 😀 tab	end', '2024-02-29',
             '2024-01-02 03:04:05.123456', '2024-01-02 08:00:00.5+08',
             '\x00ff10', '{"a": 12345678901234567890.5, "b": [1, "x"], "c": null}', '{"z": 1, "a": 2.50}'),
            (2, -32768, -2147483648, -9223372036854775808,
             -0.000000000000000000001, -99999999999999999999.9999999999,
             -1.5e300, false, '', '0001-01-01',
             '1999-12-31 23:59:59', '1970-01-01 08:00:00',
             '\x', '[]', '"text"'),
            (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);"#,
        )
        .await
        .unwrap();
    let columns = [
        "id",
        "i2",
        "i4",
        "i8",
        "num",
        "num_scaled",
        "f8",
        "b",
        "t",
        "d",
        "ts",
        "tstz",
        "by",
        "jb",
        "js",
    ];
    let fields: Vec<(&str, &str)> = columns.iter().map(|c| (*c, "plain")).collect();
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("pg", "postgres", &db.url)
            .resource(Resource::incremental(CODE, "pg", "typed", "id").fields(&fields)),
    );
    agent.sync_ok().await;

    let expected: Rows = [
        row(
            1,
            [
                ("i2", json!(32767)),
                ("i4", json!(2147483647)),
                ("i8", json!(9223372036854775807i64)),
                ("num", json!("12345678901234567890.123456789012345678900")),
                ("num_scaled", json!("1.5000000000")),
                ("f8", json!(0.1)),
                ("b", json!(true)),
                ("t", json!("中文 \"引号\" \\ 反斜杠 😀 tab\tend")),
                ("d", json!("2024-02-29")),
                ("ts", json!("2024-01-02T03:04:05.123456")),
                ("tstz", json!("2024-01-02T00:00:00.500000Z")),
                ("by", json!("AP8Q")),
                (
                    "jb",
                    rows::json(r#"{"a": 12345678901234567890.5, "b": [1, "x"], "c": null}"#),
                ),
                ("js", rows::json(r#"{"z": 1, "a": 2.50}"#)),
            ],
        ),
        row(
            2,
            [
                ("i2", json!(-32768)),
                ("i4", json!(-2147483648)),
                ("i8", json!(-9223372036854775808i64)),
                ("num", json!("-0.000000000000000000001")),
                ("num_scaled", json!("-99999999999999999999.9999999999")),
                ("f8", json!(-1.5e300)),
                ("b", json!(false)),
                ("t", json!("")),
                ("d", json!("0001-01-01")),
                ("ts", json!("1999-12-31T23:59:59")),
                // Written in the session's zone (+08): the instant is midnight UTC.
                ("tstz", json!("1970-01-01T00:00:00Z")),
                ("by", json!("")),
                ("jb", json!([])),
                ("js", json!("text")),
            ],
        ),
        null_row(3, &columns[1..]),
    ]
    .into_iter()
    .collect();
    let hub = scene.hub.rows(CODE).await;
    assert_same(&hub, &expected);
    // Every digit, not just the same value: compare the exported text too.
    let text = serde_json::to_string(&Value::Object(hub["1"].clone())).unwrap();
    for digits in ["12345678901234567890.5", "9223372036854775807", "2.50"] {
        assert!(
            text.contains(digits),
            "`{digits}` is not in the exported text {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_types_round_trip_exactly_and_a_zero_date_is_quarantined() {
    let scene = Scene::start().await;
    let db = MyDb::create().await;
    let mut conn = db.conn().await;
    // gb18030 exists on MySQL 5.7+ and not on MariaDB: test it where the server has it.
    let gb18030: Option<String> = conn
        .query_first("SHOW CHARACTER SET LIKE 'gb18030'")
        .await
        .unwrap();
    let has_gb18030 = gb18030.is_some();
    conn.query_drop(format!(
        "CREATE TABLE typed (
            id INT PRIMARY KEY,
            u BIGINT UNSIGNED, i BIGINT, ti TINYINT, dec1 DECIMAL(30,10), f DOUBLE,
            emoji VARCHAR(64) CHARACTER SET utf8mb4,
            g VARCHAR(64) CHARACTER SET gbk,
            g2 VARCHAR(64) CHARACTER SET gb2312,
            {}
            dt DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, vb VARBINARY(16), d DATE,
            updated_at DATETIME(6) NOT NULL
        ) DEFAULT CHARSET = utf8mb4",
        if has_gb18030 {
            "g3 VARCHAR(64) CHARACTER SET gb18030,"
        } else {
            ""
        }
    ))
    .await
    .unwrap();
    // TIMESTAMP values are written in +08:00 and must arrive in UTC; the zero date needs a
    // permissive sql_mode (MariaDB's default allows it, MySQL 8's does not).
    conn.query_drop("SET time_zone = '+08:00', sql_mode = ''")
        .await
        .unwrap();
    let g3 = |v: &str| {
        if has_gb18030 {
            format!("{v}, ")
        } else {
            String::new()
        }
    };
    let g3_col = if has_gb18030 { "g3, " } else { "" };
    conn.query_drop(format!(
        "INSERT INTO typed (id, u, i, ti, dec1, f, emoji, g, g2, {g3_col} dt, ts, vb, d, updated_at) VALUES
         (1, 18446744073709551615, -9223372036854775808, -128, 12345678901234567890.1234567890, 0.1,
          '😀🇨🇳 中文 ünï', '中文字符：汉字', '简体中文', {} '2024-01-02 03:04:05.123456', '2024-01-02 08:00:00.654321',
          X'00FF10', '2024-02-29', '2024-01-01 00:00:01'),
         (2, 0, 9223372036854775807, 127, -0.0000000001, -1.5e300,
          '', '', '', {} '1999-12-31 23:59:59', '1970-01-01 08:00:01',
          X'', '1000-01-01', '2024-01-01 00:00:02'),
         (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, {} NULL, NULL, NULL, NULL, '2024-01-01 00:00:03'),
         (4, 1, 1, 1, 1, 1, 'zero date', '零', '零', {} '2024-01-01 00:00:00', '2024-01-01 08:00:00',
          X'01', '0000-00-00', '2024-01-01 00:00:04'),
         (5, 5, 5, 5, 5, 5, 'after the zero date', '后', '后', {} '2024-01-01 00:00:00', '2024-01-01 08:00:00',
          X'05', '2024-01-05', '2024-01-01 00:00:05')",
        g3("'中文 GB18030 𠀀'"),
        g3("''"),
        g3("NULL"),
        g3("'零'"),
        g3("'后'"),
    ))
    .await
    .unwrap();
    conn.disconnect().await.unwrap();

    let mut columns = vec!["id", "u", "i", "ti", "dec1", "f", "emoji", "g", "g2"];
    if has_gb18030 {
        columns.push("g3");
    }
    columns.extend(["dt", "ts", "vb", "d"]);
    let fields: Vec<(&str, &str)> = columns.iter().map(|c| (*c, "plain")).collect();
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("scjg", "mysql", &db.url)
            .resource(Resource::incremental(CODE, "scjg", "typed", "id").fields(&fields)),
    );

    let mut one = row(
        1,
        [
            ("u", json!(18446744073709551615u64)),
            ("i", json!(-9223372036854775808i64)),
            ("ti", json!(-128)),
            ("dec1", json!("12345678901234567890.1234567890")),
            ("f", json!(0.1)),
            ("emoji", json!("😀🇨🇳 中文 ünï")),
            ("g", json!("中文字符：汉字")),
            ("g2", json!("简体中文")),
            ("dt", json!("2024-01-02T03:04:05.123456")),
            ("ts", json!("2024-01-02T00:00:00.654321Z")),
            ("vb", json!("AP8Q")),
            ("d", json!("2024-02-29")),
        ],
    );
    let mut two = row(
        2,
        [
            ("u", json!(0)),
            ("i", json!(9223372036854775807i64)),
            ("ti", json!(127)),
            ("dec1", json!("-0.0000000001")),
            ("f", json!(-1.5e300)),
            ("emoji", json!("")),
            ("g", json!("")),
            ("g2", json!("")),
            ("dt", json!("1999-12-31T23:59:59")),
            ("ts", json!("1970-01-01T00:00:01Z")),
            ("vb", json!("")),
            ("d", json!("1000-01-01")),
        ],
    );
    let three = null_row(3, &columns[1..]);
    let mut five = row(
        5,
        [
            ("u", json!(5)),
            ("i", json!(5)),
            ("ti", json!(5)),
            ("dec1", json!("5.0000000000")),
            ("f", json!(5.0)),
            ("emoji", json!("after the zero date")),
            ("g", json!("后")),
            ("g2", json!("后")),
            ("dt", json!("2024-01-01T00:00:00")),
            ("ts", json!("2024-01-01T00:00:00Z")),
            ("vb", json!("BQ==")),
            ("d", json!("2024-01-05")),
        ],
    );
    if has_gb18030 {
        one.1.insert("g3".into(), json!("中文 GB18030 𠀀"));
        two.1.insert("g3".into(), json!(""));
        five.1.insert("g3".into(), json!("后"));
    }
    let expected: Rows = [one, two, three, five].into_iter().collect();
    scene
        .sync_until_equal(&agent, CODE, &expected, Duration::from_secs(90))
        .await;

    let status = agent.resource_status(CODE).await;
    assert_eq!(
        status["quarantined"], 1,
        "the zero-date row is quarantined: {status}"
    );
    assert_eq!(status["queued_records"], 0, "{status}");
}
