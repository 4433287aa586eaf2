//! Messages of a running agent in the operator's language: an unreachable hub in `sync`'s
//! report, and a stop reason the agent stored while running in English, read back by `status`
//! in Chinese (and the other way round). The reason is kept in both languages when it is
//! written (`protocol::lang::Text`), so whoever asks later reads it in their own.
//!
//! And the guard of all of it: every line the read-only commands of both binaries print,
//! against a scene with a quarantined row, a stopped resource and the service running, reads
//! in Chinese under zh (no English phrase outside backticks) and in English under en (no
//! Chinese).
//!
//! The language is read once per process, so only the binaries can show it.

use std::path::{Path, PathBuf};

use exchange_tests::agent::{Agent, AgentConfig, Output, Resource, q, run_with, terminate};
use exchange_tests::pki::Pki;
use exchange_tests::scene::{NODE, Scene};
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::wait_until;
use exchange_tests::{DEADLINE, TestDir, bins};

const CODE: &str = "330100-RSJ-0001";

/// `exchange-agent ARGS --config FILE` with `EXCHANGE_LANG=lang`.
async fn agent(config: &Path, lang: &str, args: &[&str]) -> Output {
    let config = config.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--config", &config]);
    run_with(&bins::agent(), &all, &[("EXCHANGE_LANG", lang)]).await
}

/// A port on which nothing listens (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A SQLite source of 3 rows and an agent configuration (written to `agent.toml`) pushing to a
/// hub address where nothing listens; the configuration without its resource, to change it.
fn scene(dir: &TestDir) -> (PathBuf, String, SqliteSource, AgentConfig) {
    let pki = Pki::new(dir.path(), NODE);
    let source = SqliteSource::create(dir.path(), 3);
    let url = format!("https://127.0.0.1:{}", closed_port());
    let config = dir.path().join("agent.toml");
    let base =
        AgentConfig::new(dir.path(), &pki, NODE, &url).source("biz", "sqlite", &source.url());
    base.clone()
        .resource(source.resource(CODE, "biz"))
        .write(&config);
    (config, url, source, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_reports_an_unreachable_hub_in_chinese_under_zh_and_in_english_under_en() {
    let dir = TestDir::new();
    let (config, url, _source, _) = scene(&dir);

    let zh = agent(&config, "zh", &["sync", "--timeout", "3s"]).await;
    assert_ne!(zh.code, Some(0), "{zh}");
    zh.assert_mentions(&[
        &format!("无法连接交换中心 {url}"),
        &format!("{CODE}：已抽取 3 条记录"),
        "仍有 3 条记录在队列中",
        "已到截止时间",
    ]);
    assert!(!zh.text().contains("is unreachable"), "{zh}");
    assert!(!zh.text().contains("records still queued"), "{zh}");

    let en = agent(&config, "en", &["sync", "--timeout", "3s"]).await;
    en.assert_mentions(&[
        &format!("hub {url} is unreachable"),
        "3 records still queued",
        "The deadline passed",
    ]);
    assert!(!en.text().contains("无法连接"), "{en}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_reason_stored_in_english_reads_in_chinese_for_an_operator_who_reads_chinese() {
    let dir = TestDir::new();
    let (config, _, source, base) = scene(&dir);
    // The first pull starts the stream (the hub is not needed for that).
    agent(&config, "en", &["sync", "--timeout", "3s"]).await;

    // A field that was dropped is now sent: the stream's shape changed, and the next pull
    // (by a process that speaks English) stops the resource with a reason.
    let mut changed = source.resource(CODE, "biz");
    changed.fields.retain(|(f, _)| f != "note");
    changed.fields.push(("note".into(), "plain".into()));
    base.resource(changed).write(&config);
    let en = agent(&config, "en", &["sync", "--timeout", "3s"]).await;
    en.assert_mentions(&["changed since its stream started"]);

    let zh = agent(&config, "zh", &["status"]).await;
    zh.assert_mentions(&[
        &format!("`{CODE}` 的配置自其数据流开始以来已更改"),
        &format!("exchange-agent resync {CODE} --yes"),
    ]);
    assert!(
        !zh.text().contains("changed since its stream started"),
        "{zh}"
    );
    let en = agent(&config, "en", &["status"]).await;
    en.assert_mentions(&[&format!(
        "the configuration of `{CODE}` changed since its stream started"
    )]);
    assert!(!en.text().contains("数据流开始以来"), "{en}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_is_in_chinese_under_zh_for_both_binaries_and_in_english_under_en() {
    let zh = |bin| run_with(bin, &["--help"], &[("EXCHANGE_LANG", "zh")]);
    let en = |bin| run_with(bin, &["--help"], &[("EXCHANGE_LANG", "en")]);
    let agent = bins::agent();
    zh(&agent).await.assert_code(0).assert_mentions(&[
        "用法：exchange-agent",
        "命令",
        "运行守护进程：按计划抽取，持续推送",
        "查看、重置或设置资源的游标",
    ]);
    en(&agent).await.assert_code(0).assert_mentions(&[
        "Usage: exchange-agent",
        "Run the daemon: pull on schedule, push continuously",
    ]);
    let export = run_with(
        &agent,
        &["queue", "export", "--help"],
        &[("EXCHANGE_LANG", "zh")],
    )
    .await;
    export
        .assert_code(0)
        .assert_mentions(&["参数", "批次序号", "选项"]);
    assert!(!export.text().contains("Resource code"), "{export}");
    let hub = bins::hub();
    zh(&hub)
        .await
        .assert_code(0)
        .assert_mentions(&["用法：exchange-hub", "监听前置机"]);
    en(&hub)
        .await
        .assert_code(0)
        .assert_mentions(&["Listen for agents until SIGTERM or SIGINT"]);
}

/// The hub's own configuration errors read in Chinese, the operating system's reason too.
#[tokio::test]
async fn the_hub_says_in_chinese_why_it_cannot_read_its_configuration() {
    let hub = bins::hub();
    let args = ["check", "--config", "/nonexistent/hub.toml"];
    let zh = run_with(&hub, &args, &[("EXCHANGE_LANG", "zh")]).await;
    zh.assert_code(2).assert_mentions(&[
        "无法读取交换中心配置文件 /nonexistent/hub.toml",
        "文件或目录不存在",
    ]);
    assert!(!zh.text().contains("No such file"), "{zh}");
    run_with(&hub, &args, &[("EXCHANGE_LANG", "en")])
        .await
        .assert_code(2)
        .assert_mentions(&["cannot read hub configuration /nonexistent/hub.toml: No such file"]);
}

/// `check` and `queue list` read in Chinese under zh, in English under en.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_queue_list_read_in_chinese_under_zh() {
    let dir = TestDir::new();
    let (config, _url, _source, _) = scene(&dir);
    let zh = agent(&config, "zh", &["check"]).await;
    zh.assert_mentions(&["有效。", &format!("资源 {CODE}"), "未连接数据源和交换中心"]);
    assert!(!zh.text().contains("is valid"), "{zh}");
    let en = agent(&config, "en", &["check"]).await;
    en.assert_mentions(&["is valid.", "Sources and the hub were not contacted"]);

    agent(&config, "en", &["sync", "--timeout", "2s"]).await;
    let zh = agent(&config, "zh", &["queue", "list"]).await;
    zh.assert_mentions(&[&format!("{CODE}：队列中"), "条记录", "序号"]);
    assert!(!zh.text().contains("records"), "{zh}");
    let en = agent(&config, "en", &["queue", "list"]).await;
    en.assert_mentions(&["batches,", "records"]);
}

// ---------------------------------------------------------------------------------------
// Every line the read-only commands print, in the operator's language.

/// A snapshot resource beside [`CODE`]: `members`, one row of which has no key (quarantined).
const SNAPSHOT: &str = "330100-RSJ-0002";
/// A resource stopped by a change of its configuration.
const STOPPED: &str = "330100-RSJ-0003";

/// Values of the configuration that a command prints as they are (a resource's catalogue
/// name is Chinese): not the program's text, so not judged.
const DATA: [&str; 1] = ["测试资源"];

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3000}'..='\u{303f}' | '\u{4e00}'..='\u{9fff}' | '\u{ff00}'..='\u{ffef}')
}

/// A line of the log (`2026-…Z  WARN target: …`): logs stay English on purpose.
fn is_log_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or_default();
    let level = words.next().unwrap_or_default();
    first.starts_with(|c: char| c.is_ascii_digit())
        && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}

/// The line without what is the same in both languages: `backticked` identifiers and
/// commands, and the configuration's own values.
fn judged(line: &str) -> String {
    let mut out = String::new();
    for (i, part) in line.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        }
    }
    DATA.iter().fold(out, |l, d| l.replace(d, ""))
}

/// Three or more English words in a row (a word: ASCII letters only, maybe with punctuation
/// around it; a path, URL, resource code, `key=value`, number or Chinese text breaks the
/// run), if the line has any.
fn english_phrase(line: &str) -> Option<String> {
    // A Chinese character is a token of its own, never a word.
    let line: String = line
        .chars()
        .map(|c| {
            if is_cjk(c) {
                " | ".into()
            } else {
                c.to_string()
            }
        })
        .collect();
    let mut run: Vec<&str> = Vec::new();
    for token in line.split_whitespace() {
        let word = token.trim_matches(|c: char| "()[]{},.;:!?\"'".contains(c));
        if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphabetic()) {
            run.push(token);
            if run.len() >= 3 {
                return Some(run.join(" "));
            }
            if token.ends_with([',', ';', ':', '.']) {
                run.clear();
            }
        } else {
            run.clear();
        }
    }
    None
}

/// The lines of `out` (logs aside) that read in the other language, each with why: under
/// zh, an English phrase (outside backticks); under en, any Chinese.
fn misread(lang: &str, out: &Output) -> Vec<String> {
    let mut found = Vec::new();
    for line in out.text().lines().filter(|l| !is_log_line(l)) {
        let text = judged(line);
        let why = match lang {
            "zh" => english_phrase(&text).map(|p| format!("English `{p}`")),
            _ => text.chars().any(is_cjk).then(|| "Chinese".to_owned()),
        };
        if let Some(why) = why {
            found.push(format!("{lang} `{}`: {why} in\n      {line}", out.command));
        }
    }
    found
}

/// The read-only commands of the agent (and two changes not confirmed, which only say what
/// they would do), and `sync` (which, with [`STOPPED`] stopped, does not complete), each with
/// the exit codes it may end with.
fn agent_commands() -> Vec<(Vec<&'static str>, &'static [i32])> {
    vec![
        (vec!["status"], &[0]),
        (vec!["check"], &[0]),
        (vec!["check", "--connect"], &[0]),
        (vec!["cursor", "show", CODE], &[0]),
        (vec!["cursor", "show", SNAPSHOT], &[0]),
        (vec!["queue", "list"], &[0]),
        (vec!["quarantine", "list"], &[0]),
        (vec!["quarantine", "find", SNAPSHOT, "--key", "M9"], &[0]),
        (vec!["audit", "verify"], &[0]),
        (vec!["resync", CODE], &[2]),
        (vec!["cursor", "reset", CODE], &[2]),
        (vec!["cursor", "show", "NO-SUCH-CODE"], &[1]),
        (vec!["sync", "--timeout", "20s"], &[1]),
    ]
}

/// Runs every agent command under `lang`; the lines that read in the other language.
async fn judge_agent(config: &Path, lang: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (args, codes) in agent_commands() {
        let out = agent(config, lang, &args).await;
        assert!(
            out.code.is_some_and(|c| codes.contains(&c)),
            "expected an exit code in {codes:?}; {out}"
        );
        found.extend(misread(lang, &out));
    }
    found
}

/// The agent's scene with a hub running: [`CODE`] incremental, [`SNAPSHOT`] a snapshot with
/// one row quarantined (no key), both synced, and [`STOPPED`], stopped since a field it
/// dropped is sent; and the hub's `hub.toml` on the same store.
async fn synced_scene(scene: &Scene) -> (PathBuf, PathBuf, SqliteSource) {
    let source = SqliteSource::create(scene.dir.path(), 3);
    source
        .conn
        .execute_batch(
            "CREATE TABLE members (code TEXT, name TEXT NOT NULL, updated_at TEXT NOT NULL);
             INSERT INTO members VALUES ('M1', 'a', '2024-01-01 00:00:00'),
                                        (NULL, 'b', '2024-01-01 00:00:01');",
        )
        .unwrap();
    let members = Resource::snapshot(SNAPSHOT, "biz", "members", "code").fields(&[
        ("code", "plain"),
        ("name", "plain"),
        ("updated_at", "plain"),
    ]);
    let config = scene.dir.path().join("agent.toml");
    let base = scene
        .agent_config()
        .source("biz", "sqlite", &source.url())
        .resource(source.resource(CODE, "biz"))
        .resource(members);
    scene.write_agent(&base.clone().resource(source.resource(STOPPED, "biz")));
    Agent::at(&config).sync_ok().await;
    let mut changed = source.resource(STOPPED, "biz");
    changed.fields.retain(|(f, _)| f != "note");
    changed.fields.push(("note".into(), "plain".into()));
    scene.write_agent(&base.resource(changed));
    let stops = agent(&config, "en", &["sync", "--timeout", "10s"]).await;
    stops.assert_mentions(&["changed since its stream started"]);
    let hub = scene.dir.path().join("hub.toml");
    let store = scene.hub.sqlite.as_ref().expect("a SQLite store");
    let path = |p: &Path| q(&p.display().to_string());
    std::fs::write(
        &hub,
        format!(
            "[listen]\naddr = {}\nca = {}\ncert = {}\nkey = {}\n\n[store]\nurl = {}\n",
            q("127.0.0.1:0"),
            path(&scene.pki.ca_cert),
            path(&scene.pki.hub_cert),
            path(&scene.pki.hub_key),
            q(&format!("sqlite://{}", store.display()))
        ),
    )
    .unwrap();
    (config, hub, source)
}

/// Under zh no line of `status`, `check`, `cursor show`, `queue list`, `quarantine list|find`,
/// `audit verify`, `sync`, an unconfirmed change or an unknown resource, nor of the hub's
/// `check` and `export`, reads in English; under en none reads in Chinese. Then the same with the service
/// running (started under en): what it stored and what it answers through its control socket
/// read in the language of the operator who asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_print_no_english_line_under_zh_and_no_chinese_under_en() {
    let scene = Scene::start().await;
    let (config, hub_toml, _source) = synced_scene(&scene).await;
    let hub_config = hub_toml.display().to_string();
    let mut found = Vec::new();
    for lang in ["zh", "en"] {
        found.extend(judge_agent(&config, lang).await);
        for (args, code) in [
            (vec!["check", "--connect"], 0),
            (vec!["export", "--resource", "NO-SUCH-CODE"], 1),
        ] {
            let mut args = args;
            args.extend(["--config", &hub_config]);
            let out = run_with(&bins::hub(), &args, &[("EXCHANGE_LANG", lang)]).await;
            out.assert_code(code);
            found.extend(misread(lang, &out));
        }
    }

    // The service, in English, holds the queue: the commands go through it or read its
    // status file.
    let log = scene.dir.path().join("service.log");
    let mut service = tokio::process::Command::new(bins::agent())
        .args(["run", "--config", &config.display().to_string()])
        .env("EXCHANGE_LANG", "en")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(scene.dir.path().join("service.err")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Not `status` meanwhile: while it has the queue open, the service cannot start.
    let status_file = scene.dir.path().join("agent-data/status.json");
    wait_until("the service wrote its status file", DEADLINE, || async {
        status_file.exists()
    })
    .await;
    let agent_at = Agent::at(&config);
    wait_until(
        "the service reports how it bounded a pull",
        DEADLINE,
        || async {
            agent_at.try_status().await.is_some_and(|s| {
                s["resources"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().any(|r| !r["horizon"].is_null()))
            })
        },
    )
    .await;
    for lang in ["zh", "en"] {
        for line in judge_agent(&config, lang).await {
            found.push(format!("(service running) {line}"));
        }
    }
    terminate(&mut service).await;
    assert!(
        found.is_empty(),
        "lines in the other language:\n  {}",
        found.join("\n  ")
    );
}
