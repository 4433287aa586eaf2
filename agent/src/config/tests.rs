//! Configuration errors name the file, line and key and say what is expected.

use std::path::PathBuf;

use super::*;
use exchange_protocol::pki::Authority;

/// A directory with a CA and the node's certificate in `tls/` and an empty `business.db`.
pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
}

impl Fixture {
    pub(super) fn new() -> Self {
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

    pub(super) fn path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    pub(super) fn parse(&self, text: &str) -> Result<Config, ConfigError> {
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

fn with_fields(fields: &str) -> String {
    GOOD.replace(
        "id_card = \"plain\"\nname = \"plain\"\ninternal_note = \"drop\"\n",
        fields,
    )
}

fn write_key(f: &Fixture, name: &str, hex: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = f.dir.path().join(name);
    std::fs::write(&p, hex).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

const POLICY: &str = "[policy]\npseudonym_key_file = \"pseudonym.key\"\nfpe_key_file = \"fpe.key\"\nseal_key_file = \"seal.key\"\n\n[[sources]]";

fn with_keys(f: &Fixture, text: &str) -> String {
    write_key(f, "pseudonym.key", &"ab".repeat(32));
    write_key(f, "fpe.key", &"cd".repeat(16));
    write_key(f, "seal.key", &"ef".repeat(32));
    text.replacen("[[sources]]", POLICY, 1)
}

#[test]
fn a_hidden_key_needs_a_seal_key_of_the_node_outside_data_dir() {
    let f = Fixture::new();
    let text = with_keys(
        &f,
        &with_fields("id_card = \"pseudonym\"\nname = \"plain\"\n"),
    );
    f.parse(&text).unwrap();
    // Without it: refused, with the command that makes one.
    let without = text.replace("seal_key_file = \"seal.key\"\n", "");
    let m = message(&f.parse(&without).unwrap_err());
    let file = f.dir.path().join("seal.key");
    assert!(
        m.contains("resources[0].fields.id_card")
            && m.contains("leaves pseudonymized")
            && m.contains("seal_key_file")
            && m.contains(&format!("openssl rand -hex 32 > {}", file.display()))
            && m.contains(&format!("chmod 600 {}", file.display())),
        "{m}"
    );
    // A resource that is not delivered stores no position: no seal key needed.
    f.parse(&without.replace("share = \"unconditional\"", "share = \"none\""))
        .unwrap();
    // A key of its own: not the pseudonym key, which other departments share.
    write_key(&f, "seal.key", &"ab".repeat(32));
    let m = message(&f.parse(&text).unwrap_err());
    assert!(
        m.contains("policy.seal_key_file") && m.contains("of its own"),
        "{m}"
    );
    // Keys live outside data_dir.
    std::fs::create_dir_all(f.dir.path().join("data")).unwrap();
    write_key(&f, "data/seal.key", &"ef".repeat(32));
    for path in ["data/seal.key", "./data/../data/seal.key"] {
        let m = message(
            &f.parse(&text.replace(
                "seal_key_file = \"seal.key\"",
                &format!("seal_key_file = \"{path}\""),
            ))
            .unwrap_err(),
        );
        assert!(
            m.contains("policy.seal_key_file") && m.contains("inside data_dir"),
            "{path}: {m}"
        );
    }
    write_key(&f, "data/pseudonym.key", &"ab".repeat(32));
    let m = message(
        &f.parse(&text.replace("\"pseudonym.key\"", "\"data/pseudonym.key\""))
            .unwrap_err(),
    );
    assert!(
        m.contains("policy.pseudonym_key_file") && m.contains("inside data_dir"),
        "{m}"
    );
}

#[test]
fn desensitization_rules_parse_with_identifiers_and_keys() {
    let f = Fixture::new();
    let text = with_keys(
        &f,
        &with_fields(
            "id_card = { rule = \"pseudonym\", identifier = \"citizen_id\" }\nname = \"mask:name\"\nmobile = \"mask:keep(3,4)\"\nbirth = \"generalize:year\"\ncard = { rule = \"fpe:digits\", domain = \"hr-card\" }\ninternal_note = \"drop\"\n",
        ),
    );
    let c = f.parse(&text).unwrap();
    let r = &c.resources[0];
    assert_eq!(r.key_kind, IdKind::CitizenId);
    assert_eq!(
        r.fields[0].1,
        Rule::Pseudonym {
            kind: IdKind::CitizenId,
            domain: "citizen_id".into()
        }
    );
    assert_eq!(
        r.fields[4].1,
        Rule::FpeDigits {
            kind: IdKind::Other,
            domain: "hr-card".into()
        }
    );
    assert_eq!(c.keys.pseudonym.as_ref().unwrap().version(), 1);
    assert!(c.keys.fpe.is_some());
}

#[test]
fn forbidden_rules_are_refused_naming_resource_and_field() {
    let f = Fixture::new();
    for (fields, needles) in [
        (
            "id_card = \"plain\"\nname = \"sha256\"\n",
            vec![
                "unkeyed hash",
                "`330100-RSJ-0001`",
                "field `name`",
                "resources[0].fields.name",
            ],
        ),
        (
            "id_card = \"plain\"\nname = \"mask:face\"\n",
            vec!["not a field rule", "field `name`"],
        ),
        (
            "id_card = \"plain\"\nname = \"pseudonym\"\n",
            vec![
                "needs a key",
                "pseudonym_key_file",
                "field `name`",
                "`330100-RSJ-0001`",
            ],
        ),
        (
            "id_card = \"plain\"\nname = \"fpe:digits\"\n",
            vec!["fpe_key_file", "field `name`"],
        ),
        (
            "id_card = \"mask:citizen_id\"\nname = \"plain\"\n",
            vec!["field `id_card` (the key)", "collide"],
        ),
        (
            "id_card = { rule = \"plain\", identifier = \"passport\" }\n",
            vec!["not an identifier kind", "field `id_card`"],
        ),
        (
            "id_card = \"plain\"\nupdated_at = \"generalize:year\"\n",
            vec!["cursor column `updated_at` is desensitized"],
        ),
    ] {
        let e = f.parse(&with_fields(fields)).unwrap_err();
        let m = message(&e);
        for n in needles {
            assert!(m.contains(n), "{fields}: expected `{n}` in {m}");
        }
    }
}

#[test]
fn a_conditional_resource_refuses_plain_fields_without_an_approval() {
    let f = Fixture::new();
    let conditional = |fields: &str, extra: &str| {
        with_keys(&f, &with_fields(fields)).replace(
            "share = \"unconditional\"",
            &format!("share = \"conditional\"{extra}"),
        )
    };
    let e = f
        .parse(&conditional(
            "id_card = \"pseudonym\"\nname = \"plain\"\n",
            "",
        ))
        .unwrap_err();
    let m = message(&e);
    assert!(
        m.contains("resource `330100-RSJ-0001` is conditional") && m.contains("field `name`"),
        "{m}"
    );
    assert!(m.contains("resources[0].fields.name"), "{m}");
    let e = f
        .parse(&conditional(
            "id_card = \"plain\"\nname = \"mask:name\"\n",
            "",
        ))
        .unwrap_err();
    assert!(message(&e).contains("field `id_card`"), "{e}");
    let e = f
        .parse(&conditional(
            "id_card = \"pseudonym\"\nname = \"plain\"\n",
            "\nplain_allowed = [\"name\"]",
        ))
        .unwrap_err();
    assert!(message(&e).contains("plain_reason"), "{e}");
    let c = f
        .parse(&conditional(
            "id_card = \"pseudonym\"\nname = \"plain\"\n",
            "\nplain_allowed = [\"name\"]\nplain_reason = \"批复 2024-17\"",
        ))
        .unwrap();
    assert_eq!(c.resources[0].share, Share::Conditional { deliver: false });
    assert!(!c.resources[0].share.delivers());
    let c = f
        .parse(&conditional(
            "id_card = \"pseudonym\"\nname = \"mask:name\"\n",
            "\ndeliver = true",
        ))
        .unwrap();
    assert!(c.resources[0].share.delivers());
    // A band of one year is the exact age.
    let e = f
        .parse(&conditional(
            "id_card = \"pseudonym\"\nage = \"generalize:age_band(1)\"\n",
            "",
        ))
        .unwrap_err();
    let m = message(&e);
    assert!(
        m.contains("resource `330100-RSJ-0001` is conditional")
            && m.contains("field `age`")
            && m.contains("resources[0].fields.age")
            && m.contains("2 or more"),
        "{m}"
    );
    f.parse(&conditional(
        "id_card = \"pseudonym\"\nage = \"generalize:age_band(2)\"\n",
        "",
    ))
    .unwrap();
    f.parse(&with_fields(
        "id_card = \"plain\"\nage = \"generalize:age_band(1)\"\n",
    ))
    .unwrap();
    let e = f
        .parse(&GOOD.replace("schedule =", "deliver = true\nschedule ="))
        .unwrap_err();
    assert!(
        message(&e).contains("`deliver` applies to share = \"conditional\" only"),
        "{e}"
    );
}

#[test]
fn key_files_are_checked() {
    let f = Fixture::new();
    let text = with_keys(&f, &with_fields("id_card = \"pseudonym\"\n"));
    write_key(&f, "pseudonym.key", "abcd");
    let e = f.parse(&text).unwrap_err();
    assert!(
        message(&e).contains("policy.pseudonym_key_file") && message(&e).contains("at least 32"),
        "{e}"
    );
    write_key(&f, "pseudonym.key", &"ab".repeat(32));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        f.dir.path().join("pseudonym.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert!(f.parse(&text).is_err());
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

#[test]
fn the_time_zone_is_a_fixed_offset_defaulting_to_china() {
    let f = Fixture::new();
    let c = f.parse(GOOD).unwrap();
    assert_eq!(c.keys.time_zone.local_minus_utc(), 8 * 3600);
    let with = |zone: &str| {
        GOOD.replace(
            "[[sources]]",
            &format!("[policy]\ntime_zone = \"{zone}\"\n\n[[sources]]"),
        )
    };
    let c = f.parse(&with("+05:30")).unwrap();
    assert_eq!(c.keys.time_zone.local_minus_utc(), 5 * 3600 + 1800);
    let e = f.parse(&with("Asia/Shanghai")).unwrap_err();
    let m = message(&e);
    assert!(
        m.contains("key `policy.time_zone`") && m.contains("+08:00") && m.contains(":13:"),
        "{m}"
    );
}

/// `GOOD` with keys, a `[verify]` section with `verify` appended to it, and the resource
/// extended by `resource` (lines before its `[resources.fields]`).
fn with_verify(f: &Fixture, verify: &str, resource: &str) -> String {
    let text = with_keys(f, GOOD).replace(
        "[resources.fields]",
        &format!("{resource}\n[resources.fields]"),
    );
    format!(
        "{text}\n[verify]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/node.pem\"\nkey = \"tls/node.key\"\nclient_ca = \"tls/ca.pem\"\n{verify}\n"
    )
}

#[test]
fn verification_budgets_and_grants_are_checked() {
    let f = Fixture::new();
    let grant =
        |extra: &str| format!("grants = [{{ requester = \"hub\", fields = [\"name\"]{extra} }}]");
    let ok = with_verify(
        &f,
        "",
        &format!(
            "enumerable = [\"name\"]\n{}",
            grant(", psi = true, psi_enumerable = true")
        ),
    );
    let config = f.parse(&ok).unwrap_or_else(|e| panic!("{e}"));
    let v = config.verify.as_ref().unwrap();
    assert_eq!(
        (v.quotas.mismatch_lockout, v.quotas.enumerable_lockout),
        (5, 1)
    );
    assert_eq!(v.quotas.lockout, std::time::Duration::from_secs(86_400));
    assert!(config.resources[0].verification.is_enumerable("NAME"));
    assert_eq!(
        v.listener,
        exchange_protocol::server::ConnectionLimits::DEFAULT
    );
    let tuned = with_verify(
        &f,
        "max_handshakes = 8\nidle_timeout = \"5s\"\nmax_requests = 10\nbody_timeout = \"2s\"",
        &grant(""),
    );
    let config = f.parse(&tuned).unwrap_or_else(|e| panic!("{e}"));
    let v = config.verify.as_ref().unwrap();
    assert_eq!(
        (v.listener.max_handshakes, v.listener.max_requests),
        (8, 10)
    );
    assert_eq!(v.listener.idle_timeout, std::time::Duration::from_secs(5));
    assert_eq!(v.body_timeout, std::time::Duration::from_secs(2));
    for (verify, resource, needles) in [
        (
            "items_per_minute = 500",
            grant(""),
            vec!["verify.items_per_minute", "max_items (1000)"],
        ),
        (
            "max_items = 10\nsubjects_per_day = 9",
            grant(""),
            vec!["verify.subjects_per_day", "max_items (10)"],
        ),
        (
            "idle_timeout = \"10ms\"",
            grant(""),
            vec!["verify.idle_timeout", "100ms to 1h"],
        ),
        (
            "max_handshakes = 0",
            grant(""),
            vec!["verify.max_handshakes", "1 to 10000"],
        ),
        (
            "psi_points_per_day = 1999",
            grant(""),
            vec!["verify.psi_points_per_day", "max_items (1000)"],
        ),
        (
            "enumerable_lockout = 6",
            grant(""),
            vec!["verify.enumerable_lockout", "stricter"],
        ),
        (
            "",
            "grants = [{ requester = \"hub\", fields = [\"id_card\"] }]".to_owned(),
            vec!["grants[0].fields", "is the key"],
        ),
        (
            "",
            format!(
                "enumerable = [\"name\"]\n{}",
                grant(", psi_enumerable = true")
            ),
            vec!["grants[0].psi_enumerable", "psi = true"],
        ),
        (
            "",
            format!("enumerable = [\"colour\"]\n{}", grant("")),
            vec!["enumerable[0]", "`colour`"],
        ),
        (
            "",
            format!("enumerable = [\"internal_note\"]\n{}", grant("")),
            vec!["enumerable[0]", "dropped"],
        ),
    ] {
        let e = f
            .parse(&with_verify(&f, verify, &resource))
            .expect_err(verify);
        for n in needles {
            assert!(message(&e).contains(n), "`{e}` should name `{n}`");
        }
    }
}

#[test]
fn revocation_lists_must_exist_and_hold_a_crl() {
    let f = Fixture::new();
    let tls = f.dir.path().join("tls");
    Authority::generate("test CA")
        .unwrap()
        .write_crl(&tls.join("ca.crl"), &[], 1)
        .unwrap();
    std::fs::write(tls.join("not-a.crl"), "hello").unwrap();
    let hub = |crl: &str| {
        GOOD.replace(
            "key = \"tls/node.key\"\n",
            &format!("key = \"tls/node.key\"\ncrl = [\"{crl}\"]\n"),
        )
    };
    let config = f
        .parse(&hub("tls/ca.crl"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.hub.tls.crls, [tls.join("ca.crl")]);
    let e = message(&f.parse(&hub("tls/missing.crl")).unwrap_err());
    assert!(e.contains("hub.crl") && e.contains("missing.crl"), "{e}");
    let e = message(&f.parse(&hub("tls/not-a.crl")).unwrap_err());
    assert!(e.contains("hub.crl") && e.contains("X509 CRL"), "{e}");
    let verify = with_verify(&f, "crl = [\"tls/not-a.crl\"]", "");
    let e = message(&f.parse(&verify).unwrap_err());
    assert!(e.contains("verify.crl") && e.contains("not-a.crl"), "{e}");
}

#[test]
fn the_compression_level_is_a_zstd_level_and_defaults_to_1() {
    let f = Fixture::new();
    assert_eq!(f.parse(GOOD).unwrap().batch.compression_level, 1);
    let with = |level: &str| {
        GOOD.replace(
            "[[sources]]",
            &format!("[batch]\ncompression_level = {level}\n\n[[sources]]"),
        )
    };
    assert_eq!(f.parse(&with("-3")).unwrap().batch.compression_level, -3);
    assert_eq!(f.parse(&with("9")).unwrap().batch.compression_level, 9);
    for bad in ["0", "10", "-8"] {
        let m = message(&f.parse(&with(bad)).unwrap_err());
        assert!(m.contains("batch.compression_level"), "{m}");
        assert!(m.contains("expected -7 to -1"), "{m}");
    }
}

/// The reference shape with its source a file drop at `<dir>/drop` and its resource reading
/// `directory = "roster"`: `source` and `resource` are appended to the two sections.
fn file_drop(f: &Fixture, source: &str, resource: &str) -> String {
    std::fs::create_dir_all(f.dir.path().join("drop")).unwrap();
    GOOD.replace(
        "kind = \"sqlite\"\nurl = \"sqlite://business.db\"",
        &format!("kind = \"files\"\npath = \"drop\"\n{source}"),
    )
    .replace(
        "table = \"insured_person\"",
        &format!("directory = \"roster\"\n{resource}"),
    )
    .replace(
        "mode = \"incremental\"\ncursor = [\"updated_at\", \"id\"]\n",
        "",
    )
}

#[test]
fn a_file_drop_resource_is_validated_with_its_directory_mode_and_types() {
    let f = Fixture::new();
    let good = file_drop(
        &f,
        "encoding = \"gbk\"\nready = \"marker\"",
        "mode = \"upsert\"",
    )
    .replace(
        "name = \"plain\"",
        "name = \"plain\"\nborn = { rule = \"plain\", type = \"date\" }",
    );
    let c = f.parse(&good).unwrap();
    let file = c.resources[0].files.as_ref().expect("a file drop resource");
    assert_eq!(file.dir(), f.dir.path().join("drop/roster"));
    assert_eq!(file.each_file, EachFile::Upsert);
    assert_eq!(
        file.type_of("BORN"),
        exchange_connectors::files::FieldType::Date
    );
    assert_eq!(file.drop.ready, exchange_connectors::files::Ready::Marker);
    assert_eq!(c.sources["hr"].kind, exchange_connectors::SourceKind::Files);

    for (text, key, needle) in [
        (
            file_drop(&f, "", "mode = \"incremental\""),
            "resources[0].mode",
            "\"snapshot\"",
        ),
        (
            file_drop(&f, "", "mode = \"upsert\"\ncursor = [\"id\"]"),
            "resources[0].cursor",
            "`cursor`",
        ),
        (
            file_drop(&f, "", "mode = \"snapshot\"")
                .replace("directory = \"roster\"", "directory = \"done\""),
            "resources[0].directory",
            "one name",
        ),
        (
            file_drop(&f, "encoding = \"latin1\"", "mode = \"snapshot\""),
            "sources[0].encoding",
            "\"gbk\"",
        ),
        (
            file_drop(&f, "url = \"x\"", "mode = \"snapshot\""),
            "sources[0].url",
            "`path`",
        ),
        (
            GOOD.replace(
                "name = \"plain\"",
                "name = { rule = \"plain\", type = \"int\" }",
            ),
            "resources[0].fields.name",
            "a database says",
        ),
        (
            GOOD.replace(
                "url = \"sqlite://business.db\"",
                "url = \"sqlite://business.db\"\nencoding = \"gbk\"",
            ),
            "sources[0].encoding",
            "kind = \"files\"",
        ),
    ] {
        let m = message(&f.parse(&text).unwrap_err());
        assert!(m.contains(&format!("key `{key}`")), "{key}: {m}");
        assert!(m.contains(needle), "{needle}: {m}");
    }
}

#[test]
fn an_offline_hub_needs_two_existing_distinct_directories() {
    let f = Fixture::new();
    for d in ["out", "in"] {
        std::fs::create_dir_all(f.dir.path().join(d)).unwrap();
    }
    let offline = |extra: &str| {
        GOOD.replace(
            "key = \"tls/node.key\"\n",
            &format!("key = \"tls/node.key\"\n{extra}\n"),
        )
    };
    let c = f
        .parse(&offline(
            "mode = \"offline\"\noutbox = \"out\"\ninbox = \"in\"\nresend_after = \"30m\"",
        ))
        .unwrap();
    let o = c.hub.offline.expect("offline");
    assert_eq!(o.outbox, f.dir.path().join("out"));
    assert_eq!(o.resend_after, std::time::Duration::from_secs(1800));
    assert!(f.parse(GOOD).unwrap().hub.offline.is_none());
    for (text, key, needle) in [
        (
            offline("mode = \"carrier-pigeon\""),
            "hub.mode",
            "\"offline\"",
        ),
        (
            offline("mode = \"offline\"\ninbox = \"in\""),
            "hub.outbox",
            "`outbox`",
        ),
        (
            offline("mode = \"offline\"\noutbox = \"out\"\ninbox = \"missing\""),
            "hub.inbox",
            "does not exist",
        ),
        (
            offline("mode = \"offline\"\noutbox = \"out\"\ninbox = \"out\""),
            "hub.inbox",
            "not be the outbox",
        ),
        (
            offline("outbox = \"out\""),
            "hub.outbox",
            "mode = \"offline\"",
        ),
    ] {
        let m = message(&f.parse(&text).unwrap_err());
        assert!(m.contains(&format!("key `{key}`")), "{key}: {m}");
        assert!(m.contains(needle), "{needle}: {m}");
    }
}
