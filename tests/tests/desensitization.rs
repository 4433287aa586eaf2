//! Desensitization end to end, from PostgreSQL (incremental) and MariaDB (snapshot) through
//! the real agent binary to the reference hub: every rule delivers the documented value, and a
//! leak test: source rows whose dropped, masked and pseudonymized columns (and pseudonymized
//! keys) hold unique sentinel strings; afterwards no byte under the test directory — the
//! agent's `data_dir`, every command's output and log, the hub's store — contains a sentinel,
//! as UTF-8, base64 or hex. The search is shown to work: the sentinels of the approved plain
//! field are found in the hub's store, and the pseudonym of the quarantined key in the agent's
//! queue and in `status`.

use std::path::Path;

use base64::Engine;
use exchange_agent::identifier::{citizen_id_check, is_luhn_valid, is_valid_uscc};
use exchange_agent::policy::{FpeKey, PseudonymKey};
use exchange_tests::agent::{Agent, Output, Resource};
use exchange_tests::db::{MyDb, PgDb};
use exchange_tests::scene::Scene;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

const CODE: &str = "330100-RSJ-0101";
const NONE_CODE: &str = "330100-RSJ-0102";
const COMPARE_CODE: &str = "330100-RSJ-0103";
const PSEUDONYM_KEY: &str = "e038135eab9f543f605f5c741fd6ec76f59d0b13034862a9cffa7b20e0795fea";
const FPE_KEY: &str = "8899aabbccddeeff0011223344556677";
const SEAL_KEY: &str = "5f0c1b0a9e0d3c5b7a6f4e2d1c0b9a8f7e6d5c4b3a29181706f5e4d3c2b1a090";

/// The fields of the desensitized resource: every rule.
const FIELDS: &[(&str, &str)] = &[
    (
        "id_no",
        "{ rule = \"pseudonym\", identifier = \"citizen_id\" }",
    ),
    ("name", "mask:name"),
    ("mobile", "mask:mobile"),
    ("address", "mask:address"),
    ("email", "mask:email"),
    ("id_copy", "mask:citizen_id"),
    ("card", "fpe:digits"),
    ("bank", "mask:bank_card"),
    ("birth", "generalize:year_month"),
    ("age", "generalize:age_band(10)"),
    ("nick", "pseudonym"),
    ("uscc", "mask:uscc"),
    ("unit", "mask:property_unit"),
    ("memo", "mask:keep(2,2)"),
    ("plain_note", "plain"),
    ("secret", "drop"),
];

/// One source row, as text (NULL: `None`).
struct Row {
    id_no: String,
    name: Option<String>,
    mobile: Option<String>,
    address: String,
    email: String,
    id_copy: String,
    card: String,
    bank: String,
    birth: String,
    age: i64,
    nick: String,
    uscc: String,
    unit: String,
    memo: String,
    plain_note: String,
    secret: String,
}

/// The rows of a test and the strings that must never leave or land.
struct Data {
    rows: Vec<Row>,
    /// Must not appear anywhere.
    sentinels: Vec<String>,
    /// Must appear in the hub's store (approved plain field): proves the search works.
    controls: Vec<String>,
    /// The key of the quarantined row (invalid check character).
    invalid_id: String,
}

fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rand::random_range(0..16u32), 16).unwrap())
        .collect::<String>()
        .to_uppercase()
}

fn random_citizen_id() -> String {
    let date = chrono::NaiveDate::from_ymd_opt(1950, 1, 1).unwrap()
        + chrono::Duration::days(rand::random_range(0..20_000));
    let first17 = format!(
        "330106{}{:03}",
        date.format("%Y%m%d"),
        rand::random_range(0..1000)
    );
    format!("{first17}{}", citizen_id_check(&first17).unwrap())
}

fn random_digits(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rand::random_range(0..10u32), 10).unwrap())
        .collect()
}

fn random_mobile() -> String {
    format!("1{}{}", rand::random_range(3..10u32), random_digits(9))
}

/// A valid 统一社会信用代码: 17 random symbols and the check character that fits.
fn random_uscc() -> String {
    const CHARSET: &[u8] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
    // An enterprise (9, category 1) registered in 杭州市西湖区 (330106): GB 32100's structure.
    let rest: String = (0..9)
        .map(|_| char::from(CHARSET[rand::random_range(0..CHARSET.len())]))
        .collect();
    let first17 = format!("91330106{rest}");
    CHARSET
        .iter()
        .map(|&c| format!("{first17}{}", char::from(c)))
        .find(|code| is_valid_uscc(code))
        .expect("one check character fits")
}

/// A 不动产单元号 of valid structure.
fn random_property_unit() -> String {
    let letter = || char::from(b'A' + rand::random_range(0..26u8));
    let kind = ['F', 'L', 'Q', 'W'][rand::random_range(0..4usize)];
    format!(
        "{}{}{}{}{kind}{}",
        random_digits(12),
        letter(),
        letter(),
        random_digits(5),
        random_digits(8)
    )
}

/// A Luhn-valid card number of 19 digits.
fn random_bank_card() -> String {
    let body = format!("62{}", random_digits(16));
    (0..10)
        .map(|d| format!("{body}{d}"))
        .find(|card| is_luhn_valid(card))
        .expect("one check digit fits")
}

/// A birth date from 1950 to 2004 (never a date the test's own timestamps carry).
fn random_birth() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(1950, 1, 1).unwrap()
        + chrono::Duration::days(rand::random_range(0..20_000))
}

fn data() -> Data {
    let run = random_hex(10);
    let s = |tag: &str, i: usize| format!("ZQ{tag}{run}X{i}");
    let mut rows = vec![
        Row {
            id_no: "11010519491231002x".into(),
            name: Some("买买提·艾力".into()),
            mobile: Some("13812345678".into()),
            address: "北京市海淀区中关村大街1号".into(),
            email: "dingding@126.com".into(),
            id_copy: "150102880730303".into(),
            card: "6228480402564890018".into(),
            bank: "6228480402564890018".into(),
            birth: "1949-12-31".into(),
            age: 45,
            nick: "nick-0".into(),
            uscc: "91350100M000100Y43".into(),
            unit: "320505400202GB00001F00010069".into(),
            memo: "ABCDEFGH".into(),
            plain_note: s("PLAIN", 0),
            secret: s("DROP", 0),
        },
        Row {
            id_no: "150102880730303".into(),
            name: Some("𠀾小明".into()),
            mobile: None,
            address: "somewhere".into(),
            email: String::new(),
            id_copy: "1101".into(),
            card: "12345".into(),
            bank: "6228480402564890019".into(),
            birth: "2024-03-01".into(),
            age: 7,
            nick: "nick-1".into(),
            uscc: "91350100M000100Y44".into(),
            unit: "320505400202GB00001X00010069".into(),
            memo: "ABCD".into(),
            plain_note: s("PLAIN", 1),
            secret: s("DROP", 1),
        },
    ];
    let mut sentinels = vec![
        "11010519491231002".to_owned(),
        "150102880730303".to_owned(),
        "150102198807303035".to_owned(),
        "6228480402564890018".to_owned(),
        s("DROP", 0),
        s("DROP", 1),
    ];
    let mut controls = vec![s("PLAIN", 0), s("PLAIN", 1)];
    for i in 2..10 {
        let id = random_citizen_id();
        let card = format!(
            "9{}",
            (0..18)
                .map(|_| char::from_digit(rand::random_range(0..10u32), 10).unwrap())
                .collect::<String>()
        );
        let (mobile, uscc, unit, bank) = (
            random_mobile(),
            random_uscc(),
            random_property_unit(),
            random_bank_card(),
        );
        let birth = random_birth().format("%Y-%m-%d").to_string();
        let row = Row {
            id_no: id.clone(),
            name: Some(format!("泄{}", s("NAME", i))),
            mobile: Some(mobile.clone()),
            address: format!("北京市海淀区{}", s("ADDR", i)),
            email: format!("a{}@example.cn", s("MAIL", i)),
            id_copy: id.clone(),
            card: card.clone(),
            bank: bank.clone(),
            birth: birth.clone(),
            age: rand::random_range(0..=100),
            nick: s("NICK", i),
            uscc: uscc.clone(),
            unit: unit.clone(),
            memo: format!("ab{}yz", s("MEMO", i)),
            plain_note: s("PLAIN", i),
            secret: s("DROP", i),
        };
        // Every value a rule hides, whole (an age of one or two digits cannot be told from
        // any other number: its band is checked at the hub instead).
        sentinels.extend([
            id,
            card,
            mobile,
            uscc,
            unit,
            bank,
            birth,
            s("NAME", i),
            s("ADDR", i),
            s("MAIL", i),
            s("NICK", i),
            s("MEMO", i),
            s("DROP", i),
        ]);
        controls.push(s("PLAIN", i));
        rows.push(row);
    }
    // A key with a wrong check character: quarantined under its pseudonym.
    let valid = random_citizen_id();
    let wrong = if valid.ends_with('0') { '1' } else { '0' };
    let invalid_id = format!("{}{wrong}", &valid[..17]);
    sentinels.push(invalid_id.clone());
    rows.push(Row {
        id_no: invalid_id.clone(),
        name: Some(format!("泄{}", s("NAME", 99))),
        mobile: None,
        address: String::new(),
        email: String::new(),
        id_copy: invalid_id.clone(),
        card: "000000".into(),
        bank: String::new(),
        birth: "1990-01-01".into(),
        age: 1,
        nick: s("NICK", 99),
        uscc: String::new(),
        unit: String::new(),
        memo: String::new(),
        plain_note: "quarantined".into(),
        secret: s("DROP", 99),
    });
    sentinels.extend([s("NAME", 99), s("NICK", 99), s("DROP", 99)]);
    Data {
        rows,
        sentinels,
        controls,
        invalid_id,
    }
}

fn lit(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("'{}'", s.replace('\'', "''")),
        None => "NULL".into(),
    }
}

fn values(rows: &[Row], stamp: impl Fn(usize) -> String) -> String {
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let t = |s: &str| lit(&Some(s.to_owned()));
            format!(
                "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                t(&r.id_no),
                lit(&r.name),
                lit(&r.mobile),
                t(&r.address),
                t(&r.email),
                t(&r.id_copy),
                t(&r.card),
                t(&r.bank),
                t(&r.birth),
                r.age,
                t(&r.nick),
                t(&r.uscc),
                t(&r.unit),
                t(&r.memo),
                t(&r.plain_note),
                t(&r.secret),
                stamp(i)
            )
        })
        .collect::<Vec<_>>()
        .join(",\n")
}

const COLUMNS: &str = "id_no, name, mobile, address, email, id_copy, card, bank, birth, age, nick, uscc, unit, memo, plain_note, secret, updated_at";

fn write_secret(dir: &Path, name: &str, hex: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

/// The agent for the three resources over `person`: desensitized and delivered
/// (conditional, one approved plain field), not shared, and comparison only.
fn agent(scene: &Scene, kind: &str, url: &str, base: Resource) -> Agent {
    let dir = scene.dir.path();
    let pk = write_secret(dir, "pseudonym.key", PSEUDONYM_KEY);
    let fk = write_secret(dir, "fpe.key", FPE_KEY);
    let sk = write_secret(dir, "seal.key", SEAL_KEY);
    let fields = |r: Resource| r.fields(FIELDS);
    let delivered = fields(Resource {
        code: CODE.into(),
        ..base.clone()
    })
    .share(
        "conditional",
        &[
            "deliver = true",
            "plain_allowed = [\"plain_note\"]",
            "plain_reason = \"市数据局 2024-17 号批复\"",
        ],
    );
    let none = fields(Resource {
        code: NONE_CODE.into(),
        ..base.clone()
    })
    .share("none", &[]);
    let compare = fields(Resource {
        code: COMPARE_CODE.into(),
        ..base
    })
    .share(
        "conditional",
        &[
            "plain_allowed = [\"plain_note\"]",
            "plain_reason = \"批复\"",
        ],
    );
    scene.write_agent(
        &scene
            .agent_config()
            .policy(&[
                &format!("pseudonym_key_file = {}", exchange_tests::agent::q(&pk)),
                &format!("fpe_key_file = {}", exchange_tests::agent::q(&fk)),
                &format!("seal_key_file = {}", exchange_tests::agent::q(&sk)),
            ])
            .source("hr", kind, url)
            .resource(delivered)
            .resource(none)
            .resource(compare),
    )
}

fn pseudonym(domain: &str, value: &str) -> String {
    PseudonymKey::from_hex(1, PSEUDONYM_KEY)
        .unwrap()
        .token(domain, value)
}

/// The hub's records of the delivered resource hold exactly the documented values.
async fn assert_delivered(scene: &Scene, data: &Data) {
    let export = scene.hub.export(CODE).await;
    assert_eq!(
        export.len(),
        data.rows.len() - 1,
        "every row but the quarantined one arrives: {export:#?}"
    );
    let by_key = |key: &str| -> serde_json::Map<String, Value> {
        export
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("no record {key} at the hub: {export:#?}"))["fields"]
            .as_object()
            .unwrap()
            .clone()
    };
    let k0 = pseudonym("citizen_id", "11010519491231002X");
    let r0 = by_key(&k0);
    let card0 = r0["card"].as_str().unwrap().to_owned();
    assert_eq!(
        FpeKey::from_hex(FPE_KEY)
            .unwrap()
            .decrypt("other", &card0)
            .as_deref(),
        Some("6228480402564890018"),
        "the department gets its card number back with its key"
    );
    let expected0 = json!({
        "id_no": k0,
        "name": "买**·**",
        "mobile": "138****5678",
        "address": "北京市海淀区*******",
        "email": "d*******@126.com",
        "id_copy": "150102********3035",
        "card": card0,
        "bank": "622848*********0018",
        "birth": "1949-12",
        "age": "40-49",
        "nick": pseudonym("other", "nick-0"),
        "uscc": "91350100**********",
        "unit": "320505400202GB*****F********",
        "memo": "AB****GH",
        "plain_note": data.rows[0].plain_note,
    });
    assert_eq!(Value::Object(r0), expected0);
    // The 15-digit ID is normalized before it is pseudonymized; fail-closed values.
    let r1 = by_key(&pseudonym("citizen_id", "150102198807303035"));
    let expected1 = json!({
        "name": "𠀾**",
        "mobile": null,
        "address": "*********",
        "email": "",
        "id_copy": "****",
        "card": "*****",
        "bank": "*******************",
        "birth": "2024-03",
        "age": "0-9",
        "uscc": "******************",
        "unit": "****************************",
        "memo": "****",
    });
    for (k, v) in expected1.as_object().unwrap() {
        assert_eq!(&r1[k], v, "field {k}");
    }
    // The random rows: each rule kept exactly what it should of each row's own values.
    for row in &data.rows[2..data.rows.len() - 1] {
        let r = by_key(&pseudonym("citizen_id", &row.id_no));
        let mobile = row.mobile.as_deref().unwrap();
        let band = row.age / 10 * 10;
        let expected = json!({
            "mobile": format!("{}****{}", &mobile[..3], &mobile[7..]),
            "bank": format!("{}*********{}", &row.bank[..6], &row.bank[15..]),
            "birth": &row.birth[..7],
            "age": format!("{band}-{}", band + 9),
            "uscc": format!("{}**********", &row.uscc[..8]),
            "unit": format!("{}*****{}********", &row.unit[..14], &row.unit[19..20]),
            "id_copy": format!("{}********{}", &row.id_no[..6], &row.id_no[14..]),
        });
        for (k, v) in expected.as_object().unwrap() {
            assert_eq!(&r[k], v, "field {k} of row {}", row.plain_note);
        }
    }
    for r in &export {
        assert!(
            r["fields"].get("secret").is_none(),
            "a dropped field reached the hub"
        );
        assert!(r["key"].as_str().unwrap().starts_with("v1:"), "{r}");
    }
    assert!(
        scene.hub.export(NONE_CODE).await.is_empty(),
        "share = none is never delivered"
    );
    // … only its catalogue entry: names and types, no values.
    let catalogue = scene.hub.store.catalogue().await.unwrap();
    let none = catalogue
        .iter()
        .find(|c| c.resource == NONE_CODE)
        .unwrap_or_else(|| panic!("no catalogue entry of {NONE_CODE}: {catalogue:?}"));
    let entry: Value = serde_json::from_str(&none.entry).unwrap();
    assert_eq!(entry["share"], "none");
    assert_eq!(entry["name"], format!("测试资源 {NONE_CODE}"));
    let names: Vec<&str> = entry["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        FIELDS.len() - 1,
        "every field but the dropped one: {entry}"
    );
    assert!(!names.contains(&"secret"));
    assert!(
        entry["fields"][0]["type"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("char"),
        "{entry}"
    );
    assert!(
        scene.hub.export(COMPARE_CODE).await.is_empty(),
        "a conditional resource without deliver = true is not delivered"
    );
}

/// Every encoding of `s` the search looks for: UTF-8, hex (both cases), and base64 at the
/// three byte alignments it can start at inside a longer encoded text.
fn encodings(s: &str) -> Vec<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = vec![
        s.as_bytes().to_vec(),
        hex::encode(s).into_bytes(),
        hex::encode_upper(s).into_bytes(),
    ];
    for pad in 0..3usize {
        let mut bytes = vec![0u8; pad];
        bytes.extend_from_slice(s.as_bytes());
        let e = b64.encode(&bytes);
        // Drop the characters that depend on the bytes around it.
        let start = if pad == 0 { 0 } else { 4 };
        let end = e.len() - 4;
        out.push(e.as_bytes()[start..end].to_vec());
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.extend(files(&path));
        } else if kind.is_file() {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// The leak test proper: nothing under the test directory holds a sentinel in any
/// encoding; the controls show that the search finds what is there.
fn assert_no_leak(scene: &Scene, data: &Data, outputs: &[Output]) {
    let log = scene.dir.path().join("commands.log");
    let text: String = outputs.iter().map(|o| format!("{o}\n")).collect();
    std::fs::write(&log, text).unwrap();
    let all = files(scene.dir.path());
    assert!(
        all.iter()
            .any(|(p, _)| p.ends_with("agent-data/queue.redb"))
    );
    assert!(all.iter().any(|(p, _)| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("hub.db")
    }));
    for sentinel in &data.sentinels {
        for needle in encodings(sentinel) {
            for (path, bytes) in &all {
                assert!(
                    !contains(bytes, &needle),
                    "sentinel {sentinel} ({}) found in {}",
                    String::from_utf8_lossy(&needle),
                    path.display()
                );
            }
        }
    }
    // The search finds what is there: the approved plain values at the hub …
    let hub: Vec<&Vec<u8>> = all
        .iter()
        .filter(|(p, _)| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("hub.db")
        })
        .map(|(_, b)| b)
        .collect();
    for c in &data.controls {
        assert!(
            hub.iter().any(|b| contains(b, c.as_bytes())),
            "control {c} not found in the hub's store: the search would miss a leak"
        );
    }
    // … the quarantined key's pseudonym in the agent's queue and in the command output …
    let token = pseudonym("citizen_id", &data.invalid_id);
    let queue = &all
        .iter()
        .find(|(p, _)| p.ends_with("agent-data/queue.redb"))
        .unwrap()
        .1;
    assert!(
        contains(queue, token.as_bytes()),
        "the quarantined key's pseudonym is not in the queue"
    );
    assert!(contains(&std::fs::read(&log).unwrap(), token.as_bytes()));
    // … and every encoding of a sentinel, planted in a buffer.
    let planted = format!(
        "..{}..",
        base64::engine::general_purpose::STANDARD.encode(format!("x{}y", data.sentinels[4]))
    );
    assert!(
        encodings(&data.sentinels[4])
            .iter()
            .any(|n| contains(planted.as_bytes(), n)),
        "the base64 search misses an embedded sentinel"
    );
}

async fn check_status(agent: &Agent, data: &Data, outputs: &mut Vec<Output>) {
    let status = agent.resource_status(CODE).await;
    // Read by two syncs, the row with an invalid key counts once: an incremental resource
    // reads it once, a snapshot's figure is its last complete scan's.
    assert_eq!(status["invalid_keys"], 1, "{status}");
    assert!(status["invalid_keys_since"].is_string(), "{status}");
    let token = pseudonym("citizen_id", &data.invalid_id);
    let quarantine = status["recent_quarantine"].to_string();
    assert!(quarantine.contains(&token), "{status}");
    outputs.push(agent.cmd(&["status"]).await);
    outputs.push(agent.cmd(&["quarantine", "list"]).await);
    outputs.push(agent.cmd(&["cursor", "show", CODE]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_leave_desensitized_and_nothing_leaks() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client
        .batch_execute(
            "CREATE TABLE person (
                id_no varchar(20) PRIMARY KEY, name text, mobile text, address text,
                email text, id_copy text, card varchar(24), bank text, birth date, age integer,
                nick text, uscc text, unit text, memo text, plain_note text, secret text,
                updated_at timestamptz NOT NULL)",
        )
        .await
        .unwrap();
    let data = data();
    db.client
        .batch_execute(&format!(
            "INSERT INTO person ({COLUMNS}) VALUES {}",
            values(&data.rows, |i| format!(
                "timestamptz '2024-01-01 00:00:00+00' + interval '{i} second'"
            ))
        ))
        .await
        .unwrap();
    let agent = agent(
        &scene,
        "postgres",
        &db.url,
        Resource::incremental(CODE, "hr", "person", "id_no"),
    );
    let mut outputs = vec![agent.check(true).await];
    outputs[0].assert_code(0).assert_mentions(&[
        "warning: resource",
        "field `nick` is pseudonymized as identifier kind `other`",
    ]);
    outputs.push(agent.sync_ok().await);
    assert_delivered(&scene, &data).await;
    outputs.push(agent.sync_ok().await);
    // Asked for by name, a resource that is never delivered says so.
    for (code, why) in [
        (
            NONE_CODE,
            "is share = \"none\" (不予共享): it is never delivered",
        ),
        (
            COMPARE_CODE,
            "answered by comparison only and never delivered; set `deliver = true`",
        ),
    ] {
        let out = agent.cmd(&["sync", "--resource", code]).await;
        out.assert_code(2).assert_mentions(&[code, why]);
        outputs.push(out);
    }
    check_status(&agent, &data, &mut outputs).await;
    // The cursor's key tiebreaker is stored sealed and shown as such.
    outputs
        .last()
        .unwrap()
        .assert_mentions(&["id_no = (sealed: the key leaves pseudonymized)"]);
    assert_no_leak(&scene, &data, &outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_rows_leave_desensitized_and_nothing_leaks() {
    let scene = Scene::start().await;
    let db = MyDb::create().await;
    let data = data();
    let mut conn = db.conn().await;
    conn.query_drop(
        "CREATE TABLE person (
            id_no VARCHAR(20) CHARACTER SET utf8mb4 PRIMARY KEY,
            name VARCHAR(64) CHARACTER SET utf8mb4, mobile VARCHAR(32), address VARCHAR(128) CHARACTER SET utf8mb4,
            email VARCHAR(128), id_copy VARCHAR(32), card VARCHAR(24), bank VARCHAR(32), birth DATE,
            age INT, nick VARCHAR(64), uscc VARCHAR(32), unit VARCHAR(32), memo VARCHAR(64),
            plain_note VARCHAR(64), secret VARCHAR(64), updated_at DATETIME(6) NOT NULL)",
    )
    .await
    .unwrap();
    conn.query_drop(format!(
        "INSERT INTO person ({COLUMNS}) VALUES {}",
        values(&data.rows, |i| format!(
            "TIMESTAMP'2024-01-01 00:00:00' + INTERVAL {i} SECOND"
        ))
    ))
    .await
    .unwrap();
    conn.disconnect().await.unwrap();
    let agent = agent(
        &scene,
        "mysql",
        &db.url,
        Resource::snapshot(CODE, "hr", "person", "id_no"),
    );
    let mut outputs = vec![agent.check(true).await];
    outputs[0].assert_code(0).assert_mentions(&[
        "warning: resource",
        "field `nick` is pseudonymized as identifier kind `other`",
    ]);
    outputs.push(agent.sync_ok().await);
    assert_delivered(&scene, &data).await;
    outputs.push(agent.sync_ok().await);
    check_status(&agent, &data, &mut outputs).await;
    assert_no_leak(&scene, &data, &outputs);
}

/// A configured column that changes type, or disappears, pauses its resource with a clear
/// error; another resource keeps flowing; `accept-config` takes an intended change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_missing_column_pauses_only_its_resource() {
    let scene = Scene::start().await;
    let db = PgDb::create().await;
    db.client
        .batch_execute(
            "CREATE TABLE a (id bigint PRIMARY KEY, name text, age integer, updated_at timestamptz NOT NULL);
             CREATE TABLE b (id bigint PRIMARY KEY, name text, updated_at timestamptz NOT NULL);
             INSERT INTO a VALUES (1, '张三', 45, '2024-01-01Z');
             INSERT INTO b VALUES (1, '李四', '2024-01-01Z');",
        )
        .await
        .unwrap();
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("hr", "postgres", &db.url)
            .resource(Resource::incremental("R-A", "hr", "a", "id").fields(&[
                ("id", "plain"),
                ("name", "mask:name"),
                ("age", "generalize:age_band(10)"),
            ]))
            .resource(
                Resource::incremental("R-B", "hr", "b", "id")
                    .fields(&[("id", "plain"), ("name", "mask:name")]),
            ),
    );
    agent.sync_ok().await;
    assert_eq!(scene.hub.export("R-A").await[0]["fields"]["age"], "40-49");

    db.client
        .batch_execute(
            "ALTER TABLE a ALTER COLUMN age TYPE bigint;
             INSERT INTO b VALUES (2, '王五', '2024-01-02Z');",
        )
        .await
        .unwrap();
    let out = agent.sync("30s").await;
    assert_ne!(out.code, Some(0), "{out}");
    out.assert_mentions(&[
        "R-A",
        "paused",
        "`age` from int4 to int8",
        "accept-config R-A",
    ]);
    assert_eq!(
        scene.hub.export("R-B").await.len(),
        2,
        "the other resource keeps flowing"
    );
    agent
        .cmd(&["accept-config", "R-A", "--yes"])
        .await
        .assert_code(0);
    agent.sync_ok().await;

    db.client
        .batch_execute("ALTER TABLE a ALTER COLUMN age TYPE date USING NULL")
        .await
        .unwrap();
    let out = agent.sync("30s").await;
    out.assert_mentions(&["R-A", "field `age`", "generalize:age_band(10)", "date"]);
    db.client
        .batch_execute("ALTER TABLE a DROP COLUMN age")
        .await
        .unwrap();
    let out = agent.sync("30s").await;
    assert_ne!(out.code, Some(0), "{out}");
    out.assert_mentions(&["R-A", "age"]);
}
