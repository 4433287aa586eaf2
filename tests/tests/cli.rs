//! The command line as an administrator meets it: `check` on malformed configurations (exit 2,
//! naming the file, line, column and key), on an unreachable source (exit 3) and on a private
//! key readable by others (refused); every example configuration under `config/` passes
//! `check`; `exchange-demo` works with no arguments but a directory; the configuration path comes
//! from `--config`, `EXCHANGE_AGENT_CONFIG` or the default and a missing file names it; log
//! lines carry no colour codes unless on a terminal, and are JSON on request.

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

/// `check` refuses each forbidden desensitization configuration with the file, line,
/// resource and field: an unkeyed hash, `plain` on a conditional resource without an
/// approval, a pseudonym without a key, a masked key, a rule unknown for the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_forbidden_desensitization_naming_resource_and_field() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "\"name\" = ",
            "\"name\" = \"sha256\"",
            &["unkeyed hash", "pseudonym"],
        ),
        ("\"name\" = ", "\"name\" = \"md5\"", &["unkeyed hash"]),
        (
            "share = ",
            "share = \"conditional\"",
            &["is conditional", "may not leave plain", "plain_allowed"],
        ),
        (
            "\"name\" = ",
            "\"name\" = \"pseudonym\"",
            &["needs a key", "pseudonym_key_file"],
        ),
        (
            "\"id\" = ",
            "\"id\" = \"mask:keep(1,1)\"",
            &["(the key)", "collide"],
        ),
        (
            "\"name\" = ",
            "\"name\" = \"mask:passport\"",
            &["not a field rule", "mask:keep(FIRST,LAST)"],
        ),
    ];
    for (prefix, with, needles) in cases {
        let mut draft = Draft::new();
        let line = draft.line_of(if prefix.starts_with("share") {
            "\"id\" = "
        } else {
            prefix
        });
        draft.replace_line(prefix, with);
        let out = draft.check().await;
        out.assert_code(2).assert_mentions(&[
            &format!("{}:", draft.path().display()),
            &format!("resource `{CODE}`"),
            "field `",
        ]);
        out.assert_mentions(needles);
        out.assert_mentions(&[&format!(":{line}:")]);
    }
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

/// An agent of the scene reading one resource from a 3-row SQLite source.
fn sqlite_agent(scene: &Scene) -> (SqliteSource, Agent) {
    let source = SqliteSource::create(scene.dir.path(), 3);
    let agent = scene.write_agent(
        &scene
            .agent_config()
            .source("rsj", "sqlite", &source.url())
            .resource(source.resource(CODE, "rsj")),
    );
    (source, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_passes_when_source_and_hub_are_reachable() {
    let scene = Scene::start().await;
    let (_source, agent) = sqlite_agent(&scene);
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
    // An offline hub's directories exist (the gateway's; created by the administrator).
    for key in ["outbox", "inbox"] {
        if let Some(d) = str_at(&table, "hub", key) {
            std::fs::create_dir_all(place(dir, d, &mut replacements)).unwrap();
        }
    }
    for (key, hex) in [
        ("pseudonym_key_file", "ab".repeat(32)),
        ("fpe_key_file", "cd".repeat(16)),
        ("seal_key_file", "ef".repeat(32)),
    ] {
        if let Some(f) = str_at(&table, "policy", key) {
            write_secret(&place(dir, f, &mut replacements), &format!("{hex}\n"));
        }
    }
    if table.contains_key("verify") {
        let server = ca.issue_server(&["127.0.0.1"]).unwrap();
        let client_ca = place(
            dir,
            str_at(&table, "verify", "client_ca").expect("verify.client_ca"),
            &mut replacements,
        );
        create_parent(&client_ca);
        ca.write_cert(&client_ca).unwrap();
        let cert = place(
            dir,
            str_at(&table, "verify", "cert").expect("verify.cert"),
            &mut replacements,
        );
        create_parent(&cert);
        std::fs::write(&cert, &server.cert_pem).unwrap();
        write_secret(
            &place(
                dir,
                str_at(&table, "verify", "key").expect("verify.key"),
                &mut replacements,
            ),
            &server.key_pem,
        );
        if let Some(f) = str_at(&table, "verify", "comparison_key_file") {
            write_secret(
                &place(dir, f, &mut replacements),
                &format!("{}\n", "12".repeat(32)),
            );
        }
    }
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
        if source.get("kind").and_then(|k| k.as_str()) == Some("files") {
            let path = source
                .get("path")
                .and_then(|p| p.as_str())
                .expect("sources.path");
            std::fs::create_dir_all(place(dir, path, &mut replacements)).unwrap();
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
    let out = agent::run(&bins::demo(), &["--dir", &demo_arg]).await;
    out.assert_code(0).assert_mentions(&[
        "The hub now holds",
        "3000 records of 330100-RSJ-0001, desensitized",
        "One resident, in business.db → at the hub",
        "mask:name",
        "generalize:year_month",
        "(absent)",
        "never reached the hub: it left only as its pseudonym",
    ]);
    assert!(!out.stdout.contains("ALSO REACHED"), "{out}");
    // It asks the agent as the hub would: a match, a mismatch, and a brute force refused
    // whole in one request and stopped by the budget across requests.
    let line = |start: &str| {
        out.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line `{start}`: {out}"))
            .to_owned()
    };
    assert!(
        line("a. ").ends_with("insured_since: match (一致), name: match (一致)"),
        "{out}"
    );
    assert!(line("b. ").ends_with("name: mismatch (不一致)"), "{out}");
    assert!(
        line("12 guesses in one request").contains("refused 400"),
        "{out}"
    );
    assert!(
        line("guess 1 ").ends_with("mobile: mismatch (不一致)"),
        "{out}"
    );
    assert!(line("guess 2 ").contains("refused 429"), "{out}");
    assert!(!out.stdout.contains("ANSWERED (this is a bug)"), "{out}");
    let audit = std::fs::read_to_string(demo_dir.join("agent-data/audit.jsonl")).unwrap();
    assert_eq!(audit.matches("\"action\":\"verify\"").count(), 5, "{audit}");

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
    // Every record as the demo's policy makes it: a pseudonymized key, masked name and
    // mobile, the approved plain district, a year-month, no internal_note.
    for l in &lines {
        let key = l["key"].as_str().unwrap();
        let f = &l["fields"];
        let text = |name: &str| f[name].as_str().unwrap_or_else(|| panic!("{name}: {l}"));
        assert!(
            l["resource"] == CODE
                && key.starts_with("v1:")
                && key.len() == 67
                && f["id_card"] == key,
            "{l}"
        );
        let name: Vec<char> = text("name").chars().collect();
        assert!(
            name.len() >= 2 && name[0] != '*' && name[1..].iter().all(|c| *c == '*'),
            "{l}"
        );
        let mobile = text("mobile");
        assert!(
            mobile.len() == 11
                && &mobile[3..7] == "****"
                && mobile
                    .bytes()
                    .enumerate()
                    .all(|(i, b)| (3..7).contains(&i) || b.is_ascii_digit()),
            "{l}"
        );
        assert!(text("district").starts_with("浙江省杭州市"), "{l}");
        let since = text("insured_since");
        assert!(since.len() == 7 && since.as_bytes()[4] == b'-', "{l}");
        assert!(f.get("internal_note").is_none(), "{l}");
    }
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

// ---------------------------------------------------------------------------------------
// The production binary

/// The packages `package` depends on (normal dependencies), one `name version` per line.
fn dependencies_of(package: &str) -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["tree", "--offline", "-p", package, "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && tree.contains(package),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tree
}

#[test]
fn the_production_agent_depends_on_neither_the_hub_nor_the_certificate_generator() {
    let tree = dependencies_of("exchange-agent");
    let forbidden: Vec<&str> = tree
        .lines()
        .filter(|l| l.starts_with("exchange-hub ") || l.starts_with("rcgen "))
        .collect();
    assert!(
        forbidden.is_empty(),
        "exchange-agent (normal dependencies) must not contain the reference hub or rcgen: {forbidden:?}"
    );
}

#[test]
fn the_reference_hub_does_not_link_the_agent() {
    let tree = dependencies_of("exchange-hub");
    let agent: Vec<&str> = tree
        .lines()
        .filter(|l| {
            ["exchange-agent ", "exchange-connectors ", "rcgen "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert!(
        agent.is_empty(),
        "exchange-hub (normal dependencies) must not contain the agent, the connectors or rcgen: {agent:?}"
    );
    assert!(tree.lines().any(|l| l.starts_with("exchange-rules ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_has_no_demo_command() {
    let out = agent::run(&bins::agent(), &["demo"]).await;
    out.assert_code(2).assert_mentions(&["demo"]);
}

// ---------------------------------------------------------------------------------------
// Where the configuration comes from

/// Runs `exchange-agent <args>` in `cwd` with `EXCHANGE_AGENT_CONFIG` set to `env` (or unset).
async fn agent_in(cwd: &Path, env: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(bins::agent());
    cmd.args(args).current_dir(cwd).env("RUST_LOG", "warn");
    match env {
        Some(p) => cmd.env("EXCHANGE_AGENT_CONFIG", p),
        None => cmd.env_remove("EXCHANGE_AGENT_CONFIG"),
    };
    output(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_reads_the_configuration_from_the_environment_when_no_option_is_given() {
    let draft = Draft::new();
    std::fs::write(draft.path(), &draft.text).unwrap();
    let elsewhere = TestDir::new();
    let out = agent_in(elsewhere.path(), Some(&draft.path()), &["check"]).await;
    out.assert_code(0)
        .assert_mentions(&[&draft.path().display().to_string()]);
    // `status` before any run names the queue directory of that configuration.
    let out = agent_in(elsewhere.path(), Some(&draft.path()), &["status"]).await;
    out.assert_mentions(&[&draft.dir.path().join("agent-data").display().to_string()]);
    // --config wins over the environment.
    let missing = elsewhere.path().join("missing.toml");
    let out = agent_in(
        elsewhere.path(),
        Some(&missing),
        &["check", "--config", &draft.path().display().to_string()],
    )
    .await;
    out.assert_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_configuration_names_its_absolute_path_and_where_it_came_from() {
    let dir = TestDir::new();
    let out = agent_in(dir.path(), None, &["check", "--config", "nope.toml"]).await;
    out.assert_code(2).assert_mentions(&[
        &dir.path().join("nope.toml").display().to_string(),
        "--config",
    ]);
    let out = agent_in(dir.path(), Some(Path::new("env.toml")), &["sync"]).await;
    out.assert_code(2).assert_mentions(&[
        &dir.path().join("env.toml").display().to_string(),
        "EXCHANGE_AGENT_CONFIG",
    ]);
    // Neither: the default, which the message names (whether or not this machine has it).
    let out = agent_in(dir.path(), None, &["status"]).await;
    out.assert_mentions(&["/etc/exchange-agent/agent.toml"]);
}

// ---------------------------------------------------------------------------------------
// Log lines

/// Starts `exchange-agent run` with stderr to a file (not a terminal) and the extra
/// arguments and environment; returns the log once the daemon has said it started.
async fn daemon_log(args: &[&str], env: &[(&str, &str)]) -> String {
    let scene = Scene::start().await;
    let (_source, agent) = sqlite_agent(&scene);
    let log = scene.dir.path().join("agent.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut daemon = tokio::process::Command::new(bins::agent())
        .arg("run")
        .args(args)
        .arg("--config")
        .arg(&agent.config)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    exchange_tests::wait::wait_until(
        "the daemon logged that it started",
        exchange_tests::DEADLINE,
        || async { std::fs::read_to_string(&log).unwrap().contains("started") },
    )
    .await;
    agent::terminate(&mut daemon).await;
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let log = daemon_log(&[], &[]).await;
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log file:\n{log}"
    );
    assert!(log.contains("INFO"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    for (args, env) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[][..], &[("EXCHANGE_AGENT_LOG_FORMAT", "json")][..]),
    ] {
        let log = daemon_log(args, env).await;
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{log}"));
            assert!(v["level"].is_string(), "{line}");
        }
        assert!(log.contains("\"Agent started.\""), "{log}");
    }
}

// ---------------------------------------------------------------------------------------
// Error messages an administrator can act on

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_crontab_names_the_field_and_its_range_and_check_shows_the_next_runs() {
    let mut draft = Draft::new();
    draft.replace_line("every = ", "schedule = \"0 25 * * *\"");
    draft
        .check()
        .await
        .assert_code(2)
        .assert_mentions(&["field 2 (hour) is 25; allowed 0–23"]);
    draft.replace_line("schedule = ", "schedule = \"30 2 * * *\"");
    let out = draft.check().await;
    out.assert_code(0).assert_mentions(&["next runs"]);
    let runs = out
        .stdout
        .lines()
        .find(|l| l.contains("next runs"))
        .unwrap();
    assert_eq!(runs.matches("02:30:00").count(), 3, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_suggests_the_nearest_valid_one_in_every_section() {
    for (line, typo, valid) in [
        ("every = ", "evry = \"1s\"", "every"),
        ("department = ", "departmnt = \"x\"", "department"),
        ("max_records = ", "max_record = 10", "max_records"),
    ] {
        let mut draft = Draft::new();
        draft.replace_line(line, typo);
        let wrong = typo.split(' ').next().unwrap();
        draft
            .check()
            .await
            .assert_code(2)
            .assert_mentions(&[&format!("unknown key `{wrong}`; did you mean `{valid}`?")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_say_integer_rather_than_a_rust_type_name() {
    let mut draft = Draft::new();
    draft.replace_line("max_records = ", "max_records = \"ten\"");
    let out = draft.check().await;
    out.assert_code(2)
        .assert_mentions(&["max_records", "integer"]);
    assert!(!out.stderr.contains("usize"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_is_named_by_its_absolute_path() {
    let mut draft = Draft::new();
    draft.replace_line("cert = ", "cert = \"tls/nowhere.pem\"");
    std::fs::write(draft.path(), &draft.text).unwrap();
    // A relative --config: the message still names the absolute path.
    let out = agent_in(draft.dir.path(), None, &["check", "--config", "agent.toml"]).await;
    out.assert_code(2).assert_mentions(&[&draft
        .dir
        .path()
        .join("tls/nowhere.pem")
        .display()
        .to_string()]);
}
