//! The command line as an administrator meets it: `check` on malformed configurations (exit 2,
//! naming the file, line, column and key), on an unreachable source (exit 3) and on a private
//! key readable by others (refused); every example configuration under `config/` passes
//! `check`; and `exchange-agent demo` works with no arguments but a directory.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use exchange_protocol::pki::Authority;
use exchange_tests::TestDir;
use exchange_tests::agent::{self, Agent, AgentConfig, Output};
use exchange_tests::bins;
use exchange_tests::pki::Pki;
use exchange_tests::scene::{NODE, Scene};
use exchange_tests::sqlite_source::SqliteSource;

const CODE: &str = "330100-RSJ-0001";

/// A valid configuration (SQLite source) as text, and where it goes.
struct Draft {
    dir: TestDir,
    text: String,
}

impl Draft {
    fn new() -> Draft {
        let dir = TestDir::new();
        let pki = Pki::new(dir.path(), NODE);
        let source = SqliteSource::create(dir.path(), 3);
        let text = AgentConfig::new(dir.path(), &pki, NODE, "https://127.0.0.1:8443")
            .source("rsj", "sqlite", &source.url())
            .resource(source.resource(CODE, "rsj"))
            .to_toml();
        Draft { dir, text }
    }

    /// The 1-based number of the line that starts with `prefix`.
    fn line_of(&self, prefix: &str) -> usize {
        self.text
            .lines()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with `{prefix}` in\n{}", self.text))
            + 1
    }

    /// Replaces the line starting with `prefix` by `with` (several lines allowed).
    fn replace_line(&mut self, prefix: &str, with: &str) {
        let n = self.line_of(prefix);
        let mut lines: Vec<&str> = self.text.lines().collect();
        lines[n - 1] = with;
        self.text = lines.join("\n") + "\n";
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    async fn check(&self) -> Output {
        std::fs::write(self.path(), &self.text).unwrap();
        Agent::at(&self.path()).check(false).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_the_valid_draft() {
    let draft = Draft::new();
    draft.check().await.assert_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_an_unknown_key_naming_file_line_and_key() {
    let mut draft = Draft::new();
    let id = draft.line_of("id = ");
    draft.replace_line(
        "id = ",
        &format!("id = {}\ncolour = \"blue\"", agent::q(NODE)),
    );
    let out = draft.check().await;
    out.assert_code(2)
        .assert_mentions(&[&format!("{}:{}:", draft.path().display(), id + 1), "colour"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_a_bad_share_class_naming_file_line_and_key() {
    let mut draft = Draft::new();
    let line = draft.line_of("share = ");
    draft.replace_line("share = ", "share = \"public\"");
    let out = draft.check().await;
    out.assert_code(2).assert_mentions(&[
        &format!("{}:{line}:", draft.path().display()),
        "resources[0].share",
        "public",
        "unconditional",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_a_resource_whose_source_is_not_defined() {
    let mut draft = Draft::new();
    let line = draft.line_of("source = ");
    draft.replace_line("source = ", "source = \"nope\"");
    let out = draft.check().await;
    out.assert_code(2).assert_mentions(&[
        &format!("{}:{line}:", draft.path().display()),
        "resources[0].source",
        "nope",
        "rsj",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_a_resource_without_a_source() {
    let mut draft = Draft::new();
    draft.replace_line("source = ", "");
    let out = draft.check().await;
    out.assert_code(2).assert_mentions(&[
        &format!("{}:", draft.path().display()),
        "source",
        "missing",
    ]);
    // A location (line:column) is given.
    let located = out
        .stderr
        .split(&format!("{}:", draft.path().display()))
        .nth(1)
        .unwrap_or("");
    assert!(
        located
            .split(':')
            .next()
            .is_some_and(|n| n.parse::<usize>().is_ok()),
        "expected file:line:column; {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_a_private_key_readable_by_others() {
    let draft = Draft::new();
    let key = draft.dir.path().join("tls/node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = draft.check().await;
    out.assert_code(2)
        .assert_mentions(&["hub.key", &key.display().to_string()]);
    // Other commands refuse it too.
    let out = Agent::at(&draft.path()).sync("5s").await;
    out.assert_code(2).assert_mentions(&["hub.key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_exits_3_when_the_postgres_source_is_unreachable() {
    let scene = Scene::start().await;
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("hr", "postgres", "postgres://reader@127.0.0.1:1/hr")
            .resource(
                exchange_tests::agent::Resource::incremental(CODE, "hr", "people", "id")
                    .fields(&[("id", "plain")]),
            ),
    );
    agent.check(false).await.assert_code(0);
    let out = agent.check(true).await;
    out.assert_code(3).assert_mentions(&["hr", "127.0.0.1:1"]);
    // The hub itself was reachable: the report says so.
    out.assert_mentions(&[&scene.hub.url()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_passes_when_source_and_hub_are_reachable() {
    let scene = Scene::start().await;
    let source = SqliteSource::create(scene.dir.path(), 3);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("rsj", "sqlite", &source.url())
            .resource(source.resource(CODE, "rsj")),
    );
    agent
        .check(true)
        .await
        .assert_code(0)
        .assert_mentions(&[&scene.hub.url()]);
}

// ---------------------------------------------------------------------------------------
// The example configurations

/// The repository's `config/` directory.
fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// Where a path written in a configuration lands when the configuration is in `dir`; absolute
/// paths are moved under `dir/abs/` (the returned text replacement makes the copy use it).
fn place(dir: &Path, written: &str, replacements: &mut BTreeMap<String, String>) -> PathBuf {
    let p = Path::new(written);
    if p.is_absolute() {
        let moved = dir.join("abs").join(p.strip_prefix("/").unwrap());
        replacements.insert(format!("\"{written}\""), format!("\"{}\"", moved.display()));
        moved
    } else {
        dir.join(p)
    }
}

fn create_parent(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
}

fn write_secret(path: &Path, text: &str) {
    create_parent(path);
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn str_at<'a>(table: &'a toml::Table, section: &str, key: &str) -> Option<&'a str> {
    table.get(section)?.get(key)?.as_str()
}

/// Copies an agent example into `dir` with the files it names: CA, node certificate (CN =
/// node.id) and key, SQLite databases, password files. Returns the copy and the environment
/// variables it expects.
fn stage_agent_example(
    example: &Path,
    dir: &Path,
    ca: &Authority,
) -> (PathBuf, Vec<(String, String)>) {
    let text = std::fs::read_to_string(example).unwrap();
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", example.display()));
    let mut replacements = BTreeMap::new();
    let node =
        str_at(&table, "node", "id").unwrap_or_else(|| panic!("{}: no node.id", example.display()));
    let ca_path = place(
        dir,
        str_at(&table, "hub", "ca").expect("hub.ca"),
        &mut replacements,
    );
    create_parent(&ca_path);
    ca.write_cert(&ca_path).unwrap();
    let issued = ca.issue_client(node).unwrap();
    let cert = place(
        dir,
        str_at(&table, "hub", "cert").expect("hub.cert"),
        &mut replacements,
    );
    create_parent(&cert);
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    write_secret(
        &place(
            dir,
            str_at(&table, "hub", "key").expect("hub.key"),
            &mut replacements,
        ),
        &issued.key_pem,
    );
    let mut env = Vec::new();
    for source in table
        .get("sources")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
    {
        if source.get("kind").and_then(|k| k.as_str()) == Some("sqlite") {
            let url = source
                .get("url")
                .and_then(|u| u.as_str())
                .expect("sources.url");
            let file = url.strip_prefix("sqlite://").unwrap_or(url);
            let file = place(dir, file, &mut replacements);
            create_parent(&file);
            rusqlite::Connection::open(&file).unwrap();
            if url.starts_with("sqlite://")
                && Path::new(url.strip_prefix("sqlite://").unwrap()).is_absolute()
            {
                replacements.insert(
                    format!("\"{url}\""),
                    format!("\"sqlite://{}\"", file.display()),
                );
            }
        }
        if let Some(f) = source.get("password_file").and_then(|f| f.as_str()) {
            write_secret(&place(dir, f, &mut replacements), "secret\n");
        }
        if let Some(f) = source.get("ca").and_then(|f| f.as_str()) {
            let path = place(dir, f, &mut replacements);
            create_parent(&path);
            ca.write_cert(&path).unwrap();
        }
        if let Some(var) = source.get("password_env").and_then(|v| v.as_str()) {
            env.push((var.to_owned(), "secret".to_owned()));
        }
    }
    let mut copy = text;
    for (from, to) in &replacements {
        copy = copy.replace(from, to);
    }
    let path = dir.join(example.file_name().unwrap());
    std::fs::write(&path, copy).unwrap();
    (path, env)
}

/// Copies a hub example into `dir` with its CA, certificate and key.
fn stage_hub_example(example: &Path, dir: &Path, ca: &Authority) -> PathBuf {
    let text = std::fs::read_to_string(example).unwrap();
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", example.display()));
    let mut replacements = BTreeMap::new();
    let ca_path = place(
        dir,
        str_at(&table, "listen", "ca").expect("listen.ca"),
        &mut replacements,
    );
    create_parent(&ca_path);
    ca.write_cert(&ca_path).unwrap();
    let issued = ca
        .issue_server(&["127.0.0.1", "localhost", "hub.example"])
        .unwrap();
    let cert = place(
        dir,
        str_at(&table, "listen", "cert").expect("listen.cert"),
        &mut replacements,
    );
    create_parent(&cert);
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    write_secret(
        &place(
            dir,
            str_at(&table, "listen", "key").expect("listen.key"),
            &mut replacements,
        ),
        &issued.key_pem,
    );
    if let Some(f) = str_at(&table, "store", "password_file") {
        write_secret(&place(dir, f, &mut replacements), "secret\n");
    }
    if let Some(url) = str_at(&table, "store", "url")
        && let Some(file) = url.strip_prefix("sqlite://")
    {
        let path = place(dir, file, &mut replacements);
        create_parent(&path);
        if Path::new(file).is_absolute() {
            replacements.insert(
                format!("\"{url}\""),
                format!("\"sqlite://{}\"", path.display()),
            );
        }
    }
    let mut copy = text;
    for (from, to) in &replacements {
        copy = copy.replace(from, to);
    }
    let path = dir.join(example.file_name().unwrap());
    std::fs::write(&path, copy).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_configuration_passes_check() {
    let examples: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !examples.is_empty(),
        "{} has no example configurations (*.toml); every example must exist and pass `check`",
        examples_dir().display()
    );
    let ca = Authority::generate("Examples CA").unwrap();
    let mut failures = Vec::new();
    for example in &examples {
        let dir = TestDir::new();
        let table: toml::Table = std::fs::read_to_string(example)
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("{} is not TOML: {e}", example.display()));
        let out = if table.contains_key("node") {
            let (path, env) = stage_agent_example(example, dir.path(), &ca);
            let mut cmd = tokio::process::Command::new(bins::agent());
            cmd.args(["check", "--config"]).arg(&path).envs(env);
            output(cmd).await
        } else if table.contains_key("listen") {
            let path = stage_hub_example(example, dir.path(), &ca);
            let mut cmd = tokio::process::Command::new(bins::hub());
            cmd.args(["check", "--config"]).arg(&path);
            output(cmd).await
        } else {
            failures.push(format!(
                "{}: neither an agent ([node]) nor a hub ([listen]) configuration",
                example.display()
            ));
            continue;
        };
        if out.code != Some(0) {
            failures.push(format!("{}: {out}", example.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "example configurations that fail `check`:\n{}",
        failures.join("\n\n")
    );
}

async fn output(mut cmd: tokio::process::Command) -> Output {
    let command = format!("{:?}", cmd.as_std());
    let out = cmd.kill_on_drop(true).output().await.unwrap();
    Output {
        command,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// The demo

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_and_the_hub_holds_the_records() {
    let dir = TestDir::new();
    let demo_dir = dir.path().join("demo");
    let demo_arg = demo_dir.display().to_string();
    let out = agent::run(&bins::agent(), &["demo", "--dir", &demo_arg]).await;
    out.assert_code(0).assert_mentions(&[
        "The hub now holds",
        "3000 records of 330100-RSJ-0001",
        "never reached",
    ]);
    assert!(!out.stdout.contains("ALSO REACHED"), "{out}");

    // What the demo printed can be looked at with the other commands, as it says.
    let export = agent::run(
        &bins::hub(),
        &[
            "export",
            "--config",
            &demo_dir.join("hub.toml").display().to_string(),
            "--resource",
            CODE,
        ],
    )
    .await;
    export.assert_code(0);
    let lines: Vec<serde_json::Value> = export
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        3000,
        "exchange-hub export prints one line per record"
    );
    assert!(lines.iter().all(|l| l["resource"] == CODE
        && l["key"].is_string()
        && l["fields"].get("internal_note").is_none()));
    let status = agent::run(
        &bins::agent(),
        &[
            "status",
            "--config",
            &demo_dir.join("agent.toml").display().to_string(),
        ],
    )
    .await;
    status.assert_code(0).assert_mentions(&[CODE, "3000"]);
}
