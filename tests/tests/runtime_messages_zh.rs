//! Messages of a running agent in the operator's language: an unreachable hub in `sync`'s
//! report, and a stop reason the agent stored while running in English, read back by `status`
//! in Chinese (and the other way round). The reason is kept in both languages when it is
//! written (`protocol::lang::Text`), so whoever asks later reads it in their own.
//!
//! The language is read once per process, so only the binaries can show it.

use std::path::{Path, PathBuf};

use exchange_tests::TestDir;
use exchange_tests::agent::{AgentConfig, Output, run_with};
use exchange_tests::bins;
use exchange_tests::pki::Pki;
use exchange_tests::scene::NODE;
use exchange_tests::sqlite_source::SqliteSource;

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
