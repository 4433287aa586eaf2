//! The file drop source (`kind = "files"`), end to end through a real hub: files as
//! departments write them (CSV in UTF-8 with a byte-order mark and in GBK, Chinese headers,
//! JSON Lines, XLSX), read once each and moved to `done/`; a file that cannot be read moved to
//! `rejected/` with its reason; a row that cannot be converted quarantined with `FILE:LINE`;
//! a field not named in the resource never leaves nor reaches the agent's disk; a file still
//! being written (no marker yet) not read; a snapshot file deleting the keys it lacks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use exchange_tests::agent::{Agent, pulled};
use exchange_tests::rows::{self, Rows};
use exchange_tests::scene::Scene;
use exchange_tests::wait::wait_until;
use serde_json::{Value, json};

const CODE: &str = "330100-MZJ-0001";

/// A secret that sits in a column no resource names: it must never leave the file.
const UNNAMED: &str = "低保备注-不得外传";

/// Writes the agent's configuration: a file drop at `<dir>/drop` (`ready` as given) and one
/// resource reading `<dir>/drop/roster` in `mode`; returns the agent and the roster directory.
fn agent(scene: &Scene, ready: &str, mode: &str) -> (Agent, PathBuf) {
    agent_every(scene, ready, mode, "1s")
}

/// [`agent`] pulling `every` this long.
fn agent_every(scene: &Scene, ready: &str, mode: &str, every: &str) -> (Agent, PathBuf) {
    let drop = scene.dir.path().join("drop");
    let roster = drop.join("roster");
    std::fs::create_dir_all(&roster).unwrap();
    let mut toml = scene.agent_config().max_records(3).to_toml();
    toml.push_str(&format!(
        r#"
[[sources]]
name = "drop"
kind = "files"
path = "{}"
{ready}

[[resources]]
code = "{CODE}"
name = "低保名册"
share = "unconditional"
source = "drop"
directory = "roster"
key = "编号"
mode = "{mode}"
every = "{every}"

[resources.fields]
"编号" = "plain"
"姓名" = "plain"
"出生日期" = {{ rule = "plain", type = "date" }}
"补助金额" = {{ rule = "plain", type = "decimal" }}
"#,
        drop.display()
    ));
    let config = scene.dir.path().join("agent.toml");
    std::fs::write(&config, toml).unwrap();
    (Agent::at(&config), roster)
}

/// The record the hub should hold for a row.
fn record(name: &str, birth: &str, amount: &str) -> rows::Fields {
    rows::fields([
        ("编号", Value::Null),
        ("姓名", json!(name)),
        ("出生日期", json!(birth)),
        ("补助金额", json!(amount)),
    ])
}

fn expect(rows: &[(&str, &str, &str, &str)]) -> Rows {
    rows.iter()
        .map(|(id, name, birth, amount)| {
            let mut r = record(name, birth, amount);
            r.insert("编号".into(), json!(id));
            (id.to_string(), r)
        })
        .collect()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    n.sort();
    n
}

fn write_xlsx(path: &Path) {
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    for (c, h) in ["编号", "姓名", "出生日期", "补助金额", "备注"]
        .iter()
        .enumerate()
    {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    sheet.write_string(1, 0, "D-1").unwrap();
    sheet.write_string(1, 1, "赵六").unwrap();
    let date = rust_xlsxwriter::ExcelDateTime::from_ymd(1990, 3, 4).unwrap();
    let format = rust_xlsxwriter::Format::new().set_num_format("yyyy-mm-dd");
    sheet
        .write_datetime_with_format(1, 2, &date, &format)
        .unwrap();
    sheet.write_number(1, 3, 1200.0).unwrap();
    sheet.write_string(1, 4, UNNAMED).unwrap();
    book.save(path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_in_utf8_and_gbk_jsonl_and_xlsx_arrive_once_and_unreadable_files_are_rejected() {
    let scene = Scene::start().await;
    let (agent, roster) = agent(&scene, "ready = \"marker\"", "upsert");
    let header = "编号,姓名,出生日期,补助金额,备注\n";
    // UTF-8 with a byte-order mark, as Excel's "CSV UTF-8" writes it; row 3 has a bad date.
    std::fs::write(
        roster.join("a.csv"),
        format!(
            "\u{feff}{header}A-1,张三,1980-01-02,850.50,{UNNAMED}\nA-2,李四,1980-13-45,900.00,x\nA-3,王五,1985/6/7,0.00,x\n"
        ),
    )
    .unwrap();
    // GBK, as Chinese office software writes a CSV by default.
    let text = format!("{header}B-1,钱七,1979年12月1日,1000,{UNNAMED}\n");
    let (gbk, _, bad) = encoding_rs::GBK.encode(&text);
    assert!(!bad);
    std::fs::write(roster.join("b.csv"), gbk).unwrap();
    std::fs::write(
        roster.join("c.jsonl"),
        format!(
            "{{\"编号\":\"C-1\",\"姓名\":\"孙八\",\"出生日期\":\"2001-02-03\",\"补助金额\":300.25,\"备注\":\"{UNNAMED}\"}}\r\n\nnot json\n"
        ),
    )
    .unwrap();
    write_xlsx(&roster.join("d.xlsx"));
    // A file that lacks the key column, and one of a format the drop does not read.
    std::fs::write(roster.join("e.csv"), "姓名,出生日期\n周九,1970-01-01\n").unwrap();
    std::fs::write(roster.join("f.txt"), "?").unwrap();
    // A quote left open: a CSV reader would join every line after it into one field.
    std::fs::write(
        roster.join("q.csv"),
        format!("{header}Q-1,\"孙,1990-01-01,1,x\nQ-2,李,1990-01-01,1,x\n"),
    )
    .unwrap();
    for f in [
        "a.csv", "b.csv", "c.jsonl", "d.xlsx", "e.csv", "f.txt", "q.csv",
    ] {
        std::fs::write(roster.join(format!("{f}.done")), "").unwrap();
    }
    // Still being written: no marker yet.
    std::fs::write(
        roster.join("g.csv"),
        format!("{header}G-1,吴十,1990-01-01,1,x\n"),
    )
    .unwrap();

    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 5, "{out}");
    let expected = expect(&[
        ("A-1", "张三", "1980-01-02", "850.50"),
        ("A-3", "王五", "1985-06-07", "0.00"),
        ("B-1", "钱七", "1979-12-01", "1000"),
        ("C-1", "孙八", "2001-02-03", "300.25"),
        ("D-1", "赵六", "1990-03-04", "1200"),
    ]);
    rows::assert_same(&scene.hub.rows(CODE).await, &expected);

    assert_eq!(
        names(&roster.join("done")),
        ["a.csv", "b.csv", "c.jsonl", "d.xlsx"]
    );
    assert_eq!(
        names(&roster.join("rejected")),
        [
            "e.csv",
            "e.csv.reason",
            "f.txt",
            "f.txt.reason",
            "q.csv",
            "q.csv.reason"
        ]
    );
    let reason = std::fs::read_to_string(roster.join("rejected/e.csv.reason")).unwrap();
    assert!(reason.contains("`编号`"), "{reason}");
    // The header's cells are not repeated: in a file without a header row they are data.
    assert!(
        !reason.contains("姓名") && !reason.contains("出生日期"),
        "{reason}"
    );
    let reason = std::fs::read_to_string(roster.join("rejected/q.csv.reason")).unwrap();
    assert!(reason.contains("quoted field is not closed"), "{reason}");
    assert_eq!(names(&roster), ["done", "g.csv", "rejected"]);

    // The bad date (a.csv line 3) and the line that is not JSON (c.jsonl line 3), found by
    // file and line; no value of theirs kept.
    let status = agent.resource_status(CODE).await;
    assert_eq!(status["quarantined"], 2, "{status}");
    let entries = status["recent_quarantine"].to_string();
    for at in ["a.csv:3", "c.jsonl:3"] {
        assert!(entries.contains(at), "{at} not in {entries}");
    }
    assert!(entries.contains("`出生日期`"), "{entries}");
    assert!(
        !entries.contains("1980-13-45") && !entries.contains("李四"),
        "{entries}"
    );

    // The column no resource names never reached the agent's disk.
    for f in files_under(&scene.dir.path().join("agent-data")) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(UNNAMED),
            "{} holds the unnamed column",
            f.display()
        );
    }

    // Complete now: read; the others are not read again.
    std::fs::write(roster.join("g.csv.done"), "").unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 1, "{out}");
    let mut expected = expected;
    expected.extend(expect(&[("G-1", "吴十", "1990-01-01", "1")]));
    rows::assert_same(&scene.hub.rows(CODE).await, &expected);
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_snapshot_file_is_the_whole_resource_and_keys_it_lacks_are_deleted() {
    let scene = Scene::start().await;
    let (agent, roster) = agent(&scene, "ready = \"stable\"\nsettle = \"0s\"", "snapshot");
    let header = "编号,姓名,出生日期,补助金额\n";
    let rows: String = (1..=7)
        .map(|i| format!("K-{i},人{i},1980-01-0{i},{i}.00\n"))
        .collect();
    std::fs::write(roster.join("2024-05.csv"), format!("{header}{rows}")).unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 7, "{out}");

    // The next month: K-2 changed, K-4 to K-7 gone, K-8 new.
    std::fs::write(
        roster.join("2024-06.csv"),
        format!("{header}K-1,人1,1980-01-01,1.00\nK-2,改名,1980-01-02,2.00\nK-3,人3,1980-01-03,3.00\nK-8,人8,1980-01-08,8.00\n"),
    )
    .unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(
        pulled(&out, CODE),
        6,
        "1 change, 1 insert, 4 deletes: {out}"
    );
    let expected = expect(&[
        ("K-1", "人1", "1980-01-01", "1.00"),
        ("K-2", "改名", "1980-01-02", "2.00"),
        ("K-3", "人3", "1980-01-03", "3.00"),
        ("K-8", "人8", "1980-01-08", "8.00"),
    ]);
    rows::assert_same(&scene.hub.rows(CODE).await, &expected);
    assert_eq!(names(&roster.join("done")), ["2024-05.csv", "2024-06.csv"]);

    // A header-only file would delete everything: rejected, the hub unchanged.
    std::fs::write(roster.join("2024-07.csv"), header).unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 0, "{out}");
    assert_eq!(
        names(&roster.join("rejected")),
        ["2024-07.csv", "2024-07.csv.reason"]
    );
    rows::assert_same(&scene.hub.rows(CODE).await, &expected);

    // A row without a readable key (a field too many): its key may be among the missing ones,
    // so this file deletes nothing; the others' changes arrive.
    std::fs::write(
        roster.join("2024-08.csv"),
        format!("{header}K-1,新名,1980-01-01,1.00\nK-2,改名,1980-01-02,2.00,多余\n"),
    )
    .unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 1, "only K-1's change, no delete: {out}");
    let mut kept = expected.clone();
    kept.insert(
        "K-1".into(),
        expect(&[("K-1", "新名", "1980-01-01", "1.00")])["K-1"].clone(),
    );
    rows::assert_same(&scene.hub.rows(CODE).await, &kept);

    // The next complete file deletes what it lacks again.
    std::fs::write(
        roster.join("2024-09.csv"),
        format!("{header}K-3,人3,1980-01-03,3.00\n"),
    )
    .unwrap();
    let out = agent.sync_ok().await;
    assert_eq!(pulled(&out, CODE), 3, "three deletes: {out}");
    rows::assert_same(
        &scene.hub.rows(CODE).await,
        &expect(&[("K-3", "人3", "1980-01-03", "3.00")]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_service_reads_a_dropped_file_without_waiting_for_its_schedule() {
    let scene = Scene::start().await;
    let (agent, roster) = agent_every(&scene, "ready = \"marker\"", "upsert", "1h");
    let log = scene.dir.path().join("agent.log");
    let mut child = agent.spawn_run(&log);
    // The first pull, at start, creates done/; the next one is an hour away.
    wait_until(
        "the service's first pull",
        Duration::from_secs(30),
        || async {
            roster.join("done").is_dir()
                && agent.resource_status(CODE).await["last_pull"].is_string()
        },
    )
    .await;
    std::fs::write(
        roster.join("h.csv"),
        "编号,姓名,出生日期,补助金额\nH-1,郑一,1966-06-06,66\n",
    )
    .unwrap();
    std::fs::write(roster.join("h.csv.done"), "").unwrap();
    wait_until(
        "the hub holds the dropped row",
        Duration::from_secs(20),
        || async { scene.hub.rows(CODE).await.contains_key("H-1") },
    )
    .await;
    assert_eq!(names(&roster.join("done")), ["h.csv"]);
    child.kill().await.unwrap();
}
