//! Configuration errors in the administrator's language: `exchange-agent check` and
//! `exchange-hub check` on a bad file print Chinese under `EXCHANGE_LANG=zh` and English under
//! `EXCHANGE_LANG=en`, and in both the file, line, column and key are named the same way
//! (`agent.toml:2:1: 配置项 \`node.id\`：…`), so an administrator finds the place either way.
//!
//! The language is read once per process, so only the binaries can show it: a unit test of the
//! configuration module runs in the test's own (English) process.

use std::path::{Path, PathBuf};

use exchange_tests::TestDir;
use exchange_tests::agent::{AgentConfig, Output, run_with};
use exchange_tests::bins;
use exchange_tests::pki::Pki;
use exchange_tests::scene::NODE;
use exchange_tests::sqlite_source::SqliteSource;

const CODE: &str = "330100-RSJ-0001";

/// `BIN check --config FILE` with `EXCHANGE_LANG=lang`.
async fn check(bin: PathBuf, config: &Path, lang: &str) -> Output {
    let config = config.display().to_string();
    run_with(
        &bin,
        &["check", "--config", &config],
        &[("EXCHANGE_LANG", lang)],
    )
    .await
}

/// An agent configuration whose `[node]` section is `node` (the `[hub]` files are never
/// reached: `[node]` is validated first).
fn agent_file(dir: &TestDir, node: &str) -> PathBuf {
    let path = dir.path().join("agent.toml");
    let text = format!(
        "[node]\n{node}\n\n[hub]\nurl = \"https://hub.example:8443\"\nca = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_names_a_bad_value_in_chinese_under_zh_and_in_english_under_en() {
    let dir = TestDir::new();
    let path = agent_file(
        &dir,
        "id = \"rsj node\"\ndepartment = \"11330100MB0123456W\"\ndata_dir = \"data\"",
    );
    let at = format!("{}:2:1: ", path.display());
    check(bins::agent(), &path, "zh")
        .await
        .assert_code(2)
        .assert_mentions(&[
            &format!("{at}配置项 `node.id`：只能由字母、数字、`-`、`_` 或 `.` 组成"),
            "节点证书的通用名称",
        ]);
    let en = check(bins::agent(), &path, "en").await;
    en.assert_code(2).assert_mentions(&[&format!(
        "{at}key `node.id`: expected letters, digits, `-`, `_` or `.`"
    )]);
    assert!(!en.text().contains("配置项"), "{en}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_names_an_unknown_key_and_the_nearest_valid_one_in_chinese() {
    let dir = TestDir::new();
    let path = agent_file(
        &dir,
        "id = \"rsj-node-01\"\nidd = \"x\"\ndepartment = \"11330100MB0123456W\"\ndata_dir = \"data\"",
    );
    let file = path.display().to_string();
    check(bins::agent(), &path, "zh")
        .await
        .assert_code(2)
        .assert_mentions(&[
            &format!("{file}:3:1: "),
            "未知配置项 `idd`，是否应为 `id`？",
            "可用的配置项：`id`、`department`、`data_dir`",
        ]);
    check(bins::agent(), &path, "en")
        .await
        .assert_code(2)
        .assert_mentions(&[
            &format!("{file}:3:1: "),
            "unknown key `idd`; did you mean `id`?",
        ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_refuses_an_unkeyed_hash_rule_in_chinese_naming_resource_and_field() {
    let dir = TestDir::new();
    let pki = Pki::new(dir.path(), NODE);
    let source = SqliteSource::create(dir.path(), 3);
    let text = AgentConfig::new(dir.path(), &pki, NODE, "https://127.0.0.1:8443")
        .source("rsj", "sqlite", &source.url())
        .resource(source.resource(CODE, "rsj").fields(&[
            ("id", "plain"),
            ("name", "sha256"),
            ("updated_at", "plain"),
        ]))
        .to_toml();
    let line = text
        .lines()
        .position(|l| l.starts_with("\"name\" = \"sha256\""))
        .expect("the `name` field")
        + 1;
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let at = format!("{}:{line}:1: ", path.display());
    check(bins::agent(), &path, "zh")
        .await
        .assert_code(2)
        .assert_mentions(&[
            &format!("{at}配置项 `resources[0].fields.name`：资源 `{CODE}` 的字段 `name`："),
            "`sha256` 是不带密钥的哈希，不予接受",
            "\"pseudonym\"",
        ]);
    check(bins::agent(), &path, "en")
        .await
        .assert_code(2)
        .assert_mentions(&[
            &format!("{at}key `resources[0].fields.name`: resource `{CODE}`, field `name`:"),
            "`sha256` is an unkeyed hash, which is refused",
        ]);
}

/// A hub configuration: `[listen]` with `addr` and three files, `[store]` with `store`.
fn hub_file(dir: &TestDir, addr: &str, store: &str) -> PathBuf {
    let path = dir.path().join("hub.toml");
    let text = format!(
        "[listen]\naddr = \"{addr}\"\nca = \"tls/ca.pem\"\ncert = \"tls/hub.pem\"\nkey = \"tls/hub.key\"\n\n{store}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_check_names_a_bad_value_in_chinese_under_zh_and_in_english_under_en() {
    let dir = TestDir::new();
    let path = hub_file(&dir, "localhost", "[store]\nurl = \"sqlite://hub.db\"");
    let at = format!("{}:2:8: ", path.display());
    check(bins::hub(), &path, "zh")
        .await
        .assert_code(2)
        .assert_mentions(&[&format!(
            "{at}配置项 `listen.addr`：`localhost` 不是有效地址；应为 IP 地址加端口"
        )]);
    check(bins::hub(), &path, "en")
        .await
        .assert_code(2)
        .assert_mentions(&[&format!(
            "{at}key `listen.addr`: `localhost` is not an address; expected an IP address and port"
        )]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_check_names_syntax_errors_and_missing_files_in_chinese() {
    let dir = TestDir::new();
    let unclosed = hub_file(&dir, "127.0.0.1:8443", "[store\nurl = \"sqlite://hub.db\"");
    check(bins::hub(), &unclosed, "zh")
        .await
        .assert_code(2)
        .assert_mentions(&[&format!(
            "{}:7:7: TOML 语法错误：表头 `[…]` 没有闭合，应为 `]`",
            unclosed.display()
        )]);
    let missing = hub_file(&dir, "127.0.0.1:8443", "[store]\nurl = \"sqlite://hub.db\"");
    let out = check(bins::hub(), &missing, "zh").await;
    out.assert_code(2).assert_mentions(&[
        &format!("{}:3:6: 配置项 `listen.ca`：", missing.display()),
        "签发代理证书的 CA 证书",
        "tls/ca.pem 不存在或不是文件",
    ]);
}
