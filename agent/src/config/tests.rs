//! Configuration errors name the file, line and key and say what is expected.

use std::path::PathBuf;

use super::*;
use exchange_protocol::pki::Authority;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).unwrap();
        let ca = Authority::generate("test CA").unwrap();
        ca.write_cert(&tls.join("ca.pem")).unwrap();
        ca.issue_client("rsj-node-01")
            .unwrap()
            .write(&tls, "node")
            .unwrap();
        std::fs::write(dir.path().join("business.db"), b"").unwrap();
        Fixture { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        Config::parse(&self.path(), text)
    }
}

const GOOD: &str = r#"[node]
id = "rsj-node-01"
department = "11330100MB0123456W"
data_dir = "data"

[hub]
url = "https://hub.example:8443"
ca = "tls/ca.pem"
cert = "tls/node.pem"
key = "tls/node.key"

[[sources]]
name = "hr"
kind = "sqlite"
url = "sqlite://business.db"

[[resources]]
code = "330100-RSJ-0001"
name = "社保参保人员"
share = "unconditional"
source = "hr"
table = "insured_person"
key = "id_card"
mode = "incremental"
cursor = ["updated_at", "id"]
schedule = "*/5 * * * *"

[resources.fields]
id_card = "plain"
name = "plain"
internal_note = "drop"
"#;

fn message(e: &ConfigError) -> String {
    e.to_string()
}

#[test]
fn the_reference_shape_is_valid_and_resolves_paths_against_the_file() {
    let f = Fixture::new();
    let c = f.parse(GOOD).unwrap();
    assert_eq!(c.node.data_dir, f.dir.path().join("data"));
    assert_eq!(c.hub.tls.ca, f.dir.path().join("tls/ca.pem"));
    assert_eq!(c.batch.max_records, 5000);
    assert_eq!(c.batch.max_bytes, 4 << 20);
    assert_eq!(c.queue.max_bytes, 1 << 30);
    let r = &c.resources[0];
    assert_eq!(
        r.fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["id_card", "name", "internal_note"]
    );
}

#[test]
fn an_unknown_key_names_file_line_and_key() {
    let f = Fixture::new();
    let text = GOOD.replace(
        "key = \"id_card\"",
        "key = \"id_card\"\nsafety_lagg = \"1s\"",
    );
    let e = f.parse(&text).unwrap_err();
    let m = message(&e);
    assert!(
        m.starts_with(&format!("{}:24:1:", f.path().display())),
        "{m}"
    );
    assert!(m.contains("resources[0].safety_lagg"), "{m}");
    assert!(m.contains("expected one of"), "{m}");
}

#[test]
fn a_wrong_value_names_the_line_and_what_is_expected() {
    let f = Fixture::new();
    let e = f
        .parse(&GOOD.replace("share = \"unconditional\"", "share = \"public\""))
        .unwrap_err();
    let m = message(&e);
    assert!(
        m.contains("agent.toml:20:1: key `resources[0].share`"),
        "{m}"
    );
    assert!(
        m.contains("expected \"unconditional\", \"conditional\" or \"none\""),
        "{m}"
    );
}

#[test]
fn a_type_error_is_located() {
    let f = Fixture::new();
    let e = f
        .parse(&GOOD.replace(
            "cursor = [\"updated_at\", \"id\"]",
            "cursor = \"updated_at\"",
        ))
        .unwrap_err();
    let m = message(&e);
    assert!(m.contains(":25:"), "{m}");
    assert!(m.contains("resources[0].cursor"), "{m}");
}

#[test]
fn a_missing_source_lists_the_defined_ones() {
    let f = Fixture::new();
    let e = f
        .parse(&GOOD.replace("source = \"hr\"", "source = \"finance\""))
        .unwrap_err();
    let m = message(&e);
    assert!(
        m.contains("no source named `finance`; defined: `hr`"),
        "{m}"
    );
    assert!(m.contains(":21:1:"), "{m}");
}

#[test]
fn a_dropped_key_or_cursor_is_refused() {
    let f = Fixture::new();
    let e = f
        .parse(&GOOD.replace("id_card = \"plain\"", "id_card = \"drop\""))
        .unwrap_err();
    assert!(message(&e).contains("the key must be delivered"), "{e}");
    let text = GOOD.replace(
        "internal_note = \"drop\"",
        "internal_note = \"drop\"\nupdated_at = \"drop\"",
    );
    let e = f.parse(&text).unwrap_err();
    assert!(
        message(&e).contains("cursor column `updated_at` is dropped"),
        "{e}"
    );
}

#[test]
fn desensitization_rules_are_refused_until_they_exist() {
    let f = Fixture::new();
    let e = f
        .parse(&GOOD.replace(
            "name = \"plain\"\ninternal",
            "name = \"mask:name\"\ninternal",
        ))
        .unwrap_err();
    let m = message(&e);
    assert!(m.contains("resources[0].fields.name"), "{m}");
    assert!(m.contains(":30:1:"), "{m}");
}

#[test]
fn a_plain_http_hub_is_refused() {
    let f = Fixture::new();
    let e = f
        .parse(&GOOD.replace("https://hub.example", "http://hub.example"))
        .unwrap_err();
    assert!(message(&e).contains("must start with https://"), "{e}");
}

#[test]
fn a_readable_private_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    std::fs::set_permissions(
        f.dir.path().join("tls/node.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let e = f.parse(GOOD).unwrap_err();
    let m = message(&e);
    assert!(
        m.contains("key `hub.key`") && m.contains("chmod 600"),
        "{m}"
    );
}

#[test]
fn a_certificate_for_another_node_is_refused() {
    let f = Fixture::new();
    let e = f
        .parse(&GOOD.replace("id = \"rsj-node-01\"", "id = \"other-node\""))
        .unwrap_err();
    let m = message(&e);
    assert!(
        m.contains("key `hub.cert`") && m.contains("`rsj-node-01`") && m.contains("`other-node`"),
        "{m}"
    );
}

#[test]
fn an_invalid_department_code_is_refused() {
    let f = Fixture::new();
    let e = f
        .parse(&GOOD.replace("11330100MB0123456W", "11330100MB0123456X"))
        .unwrap_err();
    assert!(message(&e).contains("统一社会信用代码"), "{e}");
}

#[test]
fn password_files_are_read_and_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let pw = f.dir.path().join("hr.pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = GOOD.replace(
        "url = \"sqlite://business.db\"",
        "url = \"sqlite://business.db\"\npassword_file = \"hr.pw\"",
    );
    let c = f.parse(&text).unwrap();
    assert_eq!(c.sources["hr"].password.as_deref(), Some("s3cret"));
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = f.parse(&text).unwrap_err();
    assert!(!message(&e).contains("s3cret"));
    assert!(message(&e).contains("sources[0].password_file"), "{e}");
}

#[test]
fn names_that_differ_only_in_case_cannot_reach_a_dropped_column() {
    let f = Fixture::new();
    let text = GOOD.replace(
        "internal_note = \"drop\"",
        "internal_note = \"drop\"\nINTERNAL_NOTE = \"plain\"",
    );
    assert!(message(&f.parse(&text).unwrap_err()).contains("listed twice"));
    let text = GOOD.replace(
        "cursor = [\"updated_at\", \"id\"]",
        "cursor = [\"Internal_Note\"]",
    );
    assert!(message(&f.parse(&text).unwrap_err()).contains("is dropped"));
}

#[test]
fn resource_codes_must_be_short_visible_ascii() {
    let f = Fixture::new();
    let e = f
        .parse(&GOOD.replace("330100-RSJ-0001", "社保-0001"))
        .unwrap_err();
    assert!(message(&e).contains("visible ASCII"), "{e}");
}

#[test]
fn zero_intervals_are_refused() {
    let f = Fixture::new();
    let e = f
        .parse(&GOOD.replace("schedule = \"*/5 * * * *\"", "every = \"0s\""))
        .unwrap_err();
    assert!(message(&e).contains("at least 1s"), "{e}");
}
