//! The verification service (数据不落地核验) end to end: real PostgreSQL, MariaDB and SQLite
//! sources, real mutual TLS with certificates generated here, the agent's service
//! (`exchange_agent::verify::run`, and the real `exchange-agent run` daemon) and the hub's
//! client (`exchange_hub::verify::Verifier`, and the real `exchange-hub verify` command).
//!
//! Pinned: matches, mismatches, NULLs, not-found with `reveal_not_found` both ways, every
//! comparison semantics, HMAC claims; every authorization failure (403 naming what is
//! missing); 4xx JSON errors for a 10 MB body, malformed JSON, unknown resource and field;
//! subjects with SQL metacharacters and Unicode; a certificate from another CA and an expired
//! one (refused in the handshake, counted by reason and audited as `connection.rejected`);
//! quotas (429 with Retry-After, audited) and the mismatch lockout; the audit record of
//! every request naming subjects only by pseudonym; the hub's command line against the daemon
//! on PostgreSQL, MariaDB and SQLite; and that after a run of verifications no claimed or
//! stored value is anywhere on the agent's disk or in its log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use exchange_hub::verify::{Verifier, VerifyCallError, claim_of};
use exchange_protocol::pki::{Usage, Validity};
use exchange_protocol::tls::{MinTlsVersion, MutualTls};
use exchange_protocol::verify::{Claim, FieldResult, Item, SubjectResult, VerifyRequest};
use exchange_tests::TestDir;
use exchange_tests::admin;
use exchange_tests::agent::{AgentConfig, Resource, q, run};
use exchange_tests::db::{MyDb, PgDb};
use exchange_tests::pki::Pki;
use exchange_tests::wait::{wait_for, wait_until};

/// The requester the grants name (CN of the hub's client certificate).
const HUB: &str = "city-hub";
/// The purpose the grants allow.
const PURPOSE: &str = "社保资格认证";
/// A value that is stored but must never appear anywhere (a stored address, dropped field).
const STORED_SECRET: &str = "SECRETSTOREDQX";
/// A claimed value that must never appear anywhere.
const CLAIMED_SECRET: &str = "SECRETCLAIMEDZV";

/// A row of `people`: (id_no, name, address, birth, salary, status, note).
type Person = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// The rows of `people`.
const PEOPLE: [Person; 3] = [
    (
        "11010519491231002X",
        "张三",
        Some("北京市海淀区中关村大街1号 SECRETSTOREDQX"),
        "1949-12-31",
        "12345.60",
        "正常",
        "SECRETSTOREDQX",
    ),
    (
        "440524188001010014",
        "李四",
        None,
        "1880-01-01",
        "0.00",
        "注销",
        "x",
    ),
    (
        "321083197812162119",
        "O'Brien\"; DROP TABLE people; --",
        Some("上海市"),
        "1978-12-16",
        "-1.5",
        "正常",
        "y",
    ),
];

/// Creates `people` with its rows; `kind` is postgres, mysql or sqlite.
async fn create_people(kind: &str, pg: Option<&PgDb>, my: Option<&MyDb>, sqlite: Option<&Path>) {
    let ddl = |date: &str, dec: &str| {
        format!(
            "CREATE TABLE people (id_no varchar(18) PRIMARY KEY, name varchar(80), address varchar(200), birth {date}, salary {dec}, status varchar(20), note varchar(50))"
        )
    };
    match kind {
        "postgres" => {
            let c = &pg.unwrap().client;
            c.batch_execute(&ddl("date", "numeric(12,2)"))
                .await
                .unwrap();
            for p in PEOPLE {
                c.execute(
                    "INSERT INTO people VALUES ($1, $2, $3, $4::text::date, $5::text::numeric, $6, $7)",
                    &[&p.0, &p.1, &p.2, &p.3, &p.4, &p.5, &p.6],
                )
                .await
                .unwrap();
            }
        }
        "mysql" => {
            use mysql_async::prelude::Queryable;
            let mut c = my.unwrap().conn().await;
            c.query_drop(ddl("DATE", "DECIMAL(12,2)")).await.unwrap();
            for p in PEOPLE {
                c.exec_drop(
                    "INSERT INTO people VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (p.0, p.1, p.2, p.3, p.4, p.5, p.6),
                )
                .await
                .unwrap();
            }
        }
        _ => {
            let c = rusqlite::Connection::open(sqlite.unwrap()).unwrap();
            c.execute_batch(&ddl("TEXT", "TEXT")).unwrap();
            for p in PEOPLE {
                c.execute(
                    "INSERT INTO people VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    rusqlite::params![p.0, p.1, p.2, p.3, p.4, p.5, p.6],
                )
                .unwrap();
            }
        }
    }
}

/// Certificates, keys and the agent configuration of one test.
struct Setup {
    /// The test's directory (agent data, keys, logs).
    dir: TestDir,
    /// The platform CA and the agent's server certificate (`pki.hub_cert`: SAN 127.0.0.1).
    pki: Pki,
    /// The hub's client certificate and key (CN `city-hub`).
    client: (PathBuf, PathBuf),
    /// The comparison key file (shared by agent and hub).
    comparison_key: PathBuf,
    /// The agent's configuration file.
    config: PathBuf,
}

/// Writes a 0600 key file of 64 hex digits.
fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, hex::encode([byte; 32])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The fields of `people` as resources list them.
const FIELDS: [(&str, &str); 7] = [
    (
        "id_no",
        "{ rule = \"pseudonym\", identifier = \"citizen_id\" }",
    ),
    ("name", "mask:name"),
    ("address", "mask:address"),
    ("birth", "generalize:year"),
    ("salary", "mask:keep(1,0)"),
    ("status", "mask:keep(1,0)"),
    ("note", "drop"),
];

const COMPARE: &str = "compare = { address = \"normalized\", birth = \"date\", salary = \"number\", status = \"hmac\" }";

fn grant(requester: &str, fields: &[&str], extra: &str) -> String {
    let fields: Vec<String> = fields.iter().map(|f| q(f)).collect();
    format!(
        "{{ requester = {}, fields = [{}]{extra} }}",
        q(requester),
        fields.join(", ")
    )
}

impl Setup {
    /// Certificates and an agent configuration verifying `people` on `source_url`.
    fn new(kind: &str, source_url: &str, verify_extra: &[&str]) -> Setup {
        let dir = TestDir::new();
        let pki = Pki::new(dir.path(), "rsj-node-01");
        let client = pki.issue(
            &pki.ca,
            HUB,
            &[],
            Usage::ClientAuth,
            Validity::Current,
            "city-hub",
        );
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let pseudonym = key_file(&keys, "pseudonym.key", 1);
        let comparison_key = key_file(&keys, "comparison.key", 2);
        let all = ["name", "address", "birth", "salary", "status"];
        let resource = |code: &str, share: &str, extra: Vec<String>| {
            let mut r = Resource::snapshot(code, "src", "people", "id_no")
                .fields(&FIELDS)
                .share(share, &[]);
            r.extra = extra;
            r
        };
        let purposes = format!(", purposes = [{}]", q(PURPOSE));
        let grants = |g: Vec<String>| format!("grants = [{}]", g.join(", "));
        let config = AgentConfig::new(dir.path(), &pki, "rsj-node-01", "https://127.0.0.1:9")
            .policy(&[&format!(
                "pseudonym_key_file = {}",
                q(&pseudonym.display().to_string())
            )])
            .source("src", kind, source_url)
            .resource(resource(
                "R-SHOWN",
                "conditional",
                vec![
                    "reveal_not_found = true".into(),
                    COMPARE.into(),
                    grants(vec![
                        grant(HUB, &all, &purposes),
                        grant("narrow-hub", &["name"], ""),
                    ]),
                ],
            ))
            .resource(resource(
                "R-HIDDEN",
                "conditional",
                vec![COMPARE.into(), grants(vec![grant(HUB, &all, &purposes)])],
            ))
            .resource(resource(
                "R-NONE",
                "none",
                vec![grants(vec![grant(HUB, &all, "")])],
            ))
            .resource(resource(
                "R-EXPIRED",
                "conditional",
                vec![grants(vec![grant(HUB, &all, ", expires = \"2020-01-01\"")])],
            ));
        let mut text = config.to_toml();
        text.push_str(&format!(
            "[verify]\nlisten = \"127.0.0.1:0\"\ncert = {}\nkey = {}\nclient_ca = {}\ncomparison_key_file = {}\n{}\n",
            q(&pki.hub_cert.display().to_string()),
            q(&pki.hub_key.display().to_string()),
            q(&pki.ca_cert.display().to_string()),
            q(&comparison_key.display().to_string()),
            verify_extra.join("\n")
        ));
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        Setup {
            dir,
            pki,
            client,
            comparison_key,
            config: path,
        }
    }

    /// The hub's client TLS files (or another certificate's).
    fn client_tls(&self, cert: &Path, key: &Path) -> MutualTls {
        MutualTls {
            ca: self.pki.ca_cert.clone(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            min_version: MinTlsVersion::Tls13,
        }
    }

    /// The comparison key as the hub reads it.
    fn comparison_key(&self) -> exchange_agent::policy::PseudonymKey {
        exchange_hub::verify::read_comparison_key(&self.comparison_key, 1).unwrap()
    }

    /// Starts the service in-process; the URL and a stopper.
    async fn serve(&self) -> Service {
        let config =
            exchange_agent::config::Config::load(&self.config).unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(exchange_agent::verify::run(
            listener,
            Arc::new(config),
            async move {
                let _ = stopped.await;
            },
        ));
        let verifier =
            Verifier::new(&self.client_tls(&self.client.0, &self.client.1), &url).unwrap();
        Service {
            url,
            verifier,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The audit records written so far.
    fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("agent-data/audit.jsonl"))
            .unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A running service.
struct Service {
    url: String,
    verifier: Verifier,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), exchange_agent::verify::VerifyError>>>,
}

impl Service {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

fn request(resource: &str, items: Vec<Item>) -> VerifyRequest {
    VerifyRequest {
        request_id: "req-1".into(),
        purpose: PURPOSE.into(),
        case_ref: "2024-0001".into(),
        resource: resource.into(),
        items,
    }
}

fn item(subject: &str, claims: &[(&str, Claim)]) -> Item {
    Item {
        subject: subject.into(),
        claims: claims
            .iter()
            .map(|(f, c)| (f.to_string(), c.clone()))
            .collect(),
    }
}

fn v(s: &str) -> Claim {
    Claim::Value(s.into())
}

fn results(pairs: &[(&str, FieldResult)]) -> BTreeMap<String, FieldResult> {
    pairs.iter().map(|(f, r)| (f.to_string(), *r)).collect()
}

/// The refusal of a request: status and message.
async fn refused(verifier: &Verifier, r: &VerifyRequest) -> (u16, String) {
    match verifier.verify(r).await {
        Err(VerifyCallError::Refused {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Every semantics, NULLs, not-found both ways and HMAC claims on one source kind.
async fn semantics_hold(kind: &str, url: &str) {
    let setup = Setup::new(kind, url, &[]);
    let service = setup.serve().await;
    let key = setup.comparison_key();
    use FieldResult::*;
    let items = vec![
        item(
            "11010519491231002x",
            &[
                ("name", v("张三")),
                (
                    "address",
                    v(" 北京市海淀区中关村大街１号   secretstoredqx "),
                ),
                ("birth", v("1949年12月31日")),
                ("salary", v("12345.6")),
                ("status", claim_of(Some(&key), "status", " 正常 ")),
            ],
        ),
        item(
            "440524188001010014",
            &[
                ("name", v("李")),
                ("address", v("广州")),
                ("birth", v("18800101")),
                ("salary", v("0")),
                ("status", claim_of(Some(&key), "status", "正常")),
            ],
        ),
        item("150102880730303", &[("name", v("王五"))]),
        item(
            "321083197812162119",
            &[
                ("name", v("O'Brien\"; DROP TABLE people; --")),
                ("salary", v("-1.50")),
            ],
        ),
        item("1' OR '1'='1", &[("name", v("张三"))]),
        item("𠀾'; DROP TABLE people; --", &[("name", v("张三"))]),
    ];
    let (answer, raw) = service
        .verifier
        .verify(&request("R-SHOWN", items.clone()))
        .await
        .unwrap();
    assert_eq!(answer.request_id, "req-1");
    let expect = [
        (
            Some(SubjectResult::Found),
            results(&[
                ("name", Match),
                ("address", Match),
                ("birth", Match),
                ("salary", Match),
                ("status", Match),
            ]),
        ),
        (
            Some(SubjectResult::Found),
            results(&[
                ("name", Mismatch),
                ("address", NoValue),
                ("birth", Match),
                ("salary", Match),
                ("status", Mismatch),
            ]),
        ),
        (
            Some(SubjectResult::NotFound),
            results(&[("name", Mismatch)]),
        ),
        (
            Some(SubjectResult::Found),
            results(&[("name", Match), ("salary", Match)]),
        ),
        (
            Some(SubjectResult::NotFound),
            results(&[("name", Mismatch)]),
        ),
        (
            Some(SubjectResult::NotFound),
            results(&[("name", Mismatch)]),
        ),
    ];
    for (i, (got, (subject, fields))) in answer.items.iter().zip(expect).enumerate() {
        assert_eq!(got.subject, subject, "{kind}: item {i}: {raw}");
        assert_eq!(got.fields, fields, "{kind}: item {i}: {raw}");
    }
    assert!(!raw.contains("张三") && !raw.contains("1949"), "{raw}");

    // reveal_not_found = false: no `subject`, a NULL and an unknown subject are mismatches.
    let (hidden, raw) = service
        .verifier
        .verify(&request("R-HIDDEN", items[1..3].to_vec()))
        .await
        .unwrap();
    assert!(!raw.contains("subject"), "{raw}");
    assert!(hidden.items.iter().all(|i| i.subject.is_none()));
    assert_eq!(hidden.items[0].fields["address"], Mismatch);
    assert_eq!(hidden.items[1].fields["name"], Mismatch);

    // Private set intersection: the same answers, computed by the requester from blinded
    // points; refused where membership must not be revealed.
    let psi_items = vec![
        item(
            "11010519491231002x",
            &[
                ("name", v("张三")),
                ("birth", v("1949/12/31")),
                ("salary", v("12345.600")),
            ],
        ),
        item(
            "440524188001010014",
            &[("name", v("王五")), ("address", v("x"))],
        ),
        item("150102880730303", &[("name", v("张三"))]),
    ];
    let psi = service
        .verifier
        .verify_psi(&request("R-SHOWN", psi_items.clone()))
        .await
        .unwrap();
    assert_eq!(psi.items[0].subject, Some(SubjectResult::Found), "{kind}");
    assert_eq!(
        psi.items[0].fields,
        results(&[("name", Match), ("birth", Match), ("salary", Match)]),
        "{kind}"
    );
    assert_eq!(psi.items[1].subject, Some(SubjectResult::Found));
    assert_eq!(
        psi.items[1].fields,
        results(&[("name", Mismatch), ("address", Mismatch)])
    );
    assert_eq!(psi.items[2].subject, Some(SubjectResult::NotFound));
    let (status, message) = match service
        .verifier
        .verify_psi(&request("R-HIDDEN", psi_items))
        .await
    {
        Err(VerifyCallError::Refused {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(status, 403);
    assert!(message.contains("reveal_not_found"), "{message}");

    // The table is still there after the metacharacters.
    let (again, _) = service
        .verifier
        .verify(&request("R-SHOWN", items[..1].to_vec()))
        .await
        .unwrap();
    assert_eq!(again.items[0].subject, Some(SubjectResult::Found));
    service.stop().await;
    assert_no_secret(&setup, &[]);
}

/// Nothing claimed or stored appears in the agent's data directory or in `extra` files.
fn assert_no_secret(setup: &Setup, extra: &[PathBuf]) {
    let mut files = extra.to_vec();
    let mut dirs = vec![setup.dir.path().join("agent-data")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    assert!(!files.is_empty());
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        for needle in [
            STORED_SECRET,
            CLAIMED_SECRET,
            "11010519491231002x",
            "440524188001010014",
            "张三",
            "1949-12-31",
            "12345.6",
        ] {
            assert!(
                !text.contains(&needle.to_lowercase()),
                "{} contains `{needle}`",
                f.display()
            );
        }
    }
}

#[tokio::test]
async fn semantics_hold_on_postgres() {
    let db = PgDb::create().await;
    create_people("postgres", Some(&db), None, None).await;
    semantics_hold("postgres", &db.url).await;
}

#[tokio::test]
async fn semantics_hold_on_mariadb() {
    let db = MyDb::create().await;
    create_people("mysql", None, Some(&db), None).await;
    semantics_hold("mysql", &db.url).await;
}

#[tokio::test]
async fn semantics_hold_on_sqlite() {
    let dir = TestDir::new();
    let file = dir.path().join("people.db");
    create_people("sqlite", None, None, Some(&file)).await;
    semantics_hold("sqlite", &format!("sqlite://{}", file.display())).await;
}

#[tokio::test]
async fn every_denial_is_a_json_error_naming_what_is_missing_and_is_audited() {
    let dir = TestDir::new();
    let file = dir.path().join("people.db");
    create_people("sqlite", None, None, Some(&file)).await;
    let setup = Setup::new("sqlite", &format!("sqlite://{}", file.display()), &[]);
    let service = setup.serve().await;
    let ok = || item("11010519491231002X", &[("name", v("张三"))]);
    let cases: Vec<(VerifyRequest, u16, &[&str])> = vec![
        (request("R-NONE", vec![ok()]), 403, &["not shared", "none"]),
        (request("R-EXPIRED", vec![ok()]), 403, &["expired", HUB]),
        (
            VerifyRequest {
                purpose: "催收".into(),
                ..request("R-SHOWN", vec![ok()])
            },
            403,
            &["purpose `催收`", PURPOSE],
        ),
        (
            request(
                "R-SHOWN",
                vec![item("11010519491231002X", &[("note", v(CLAIMED_SECRET))])],
            ),
            400,
            &["`note`", "drop"],
        ),
        (
            request(
                "R-SHOWN",
                vec![item("11010519491231002X", &[("colour", v(CLAIMED_SECRET))])],
            ),
            400,
            &["no field `colour`"],
        ),
        (request("R-UNKNOWN", vec![ok()]), 404, &["R-UNKNOWN"]),
        (
            request(
                "R-SHOWN",
                vec![item("11010519491231002X", &[("status", v(CLAIMED_SECRET))])],
            ),
            400,
            &["hmac"],
        ),
    ];
    for (r, status, needles) in &cases {
        let (got, message) = refused(&service.verifier, r).await;
        assert_eq!(got, *status, "{message}");
        for n in *needles {
            assert!(message.contains(n), "`{message}` should mention `{n}`");
        }
        assert!(!message.contains(CLAIMED_SECRET) && !message.contains("11010519491231002X"));
    }
    // A requester without a grant, and one whose grant lacks a field.
    for (cn, claim, needle) in [
        ("stranger", "name", "has no grant"),
        ("narrow-hub", "birth", "field `birth`"),
    ] {
        let (cert, key) = setup.pki.issue(
            &setup.pki.ca,
            cn,
            &[],
            Usage::ClientAuth,
            Validity::Current,
            cn,
        );
        let other = Verifier::new(&setup.client_tls(&cert, &key), &service.url).unwrap();
        let r = request(
            "R-SHOWN",
            vec![item("11010519491231002X", &[(claim, v("x"))])],
        );
        let (status, message) = refused(&other, &r).await;
        assert_eq!(status, 403, "{message}");
        assert!(
            message.contains(needle) && message.contains(cn),
            "{message}"
        );
    }
    // Malformed bodies, a 10 MB body: 4xx JSON errors, the service goes on.
    let http = raw_client(&setup);
    for (body, status) in [
        (b"{not json".to_vec(), 400),
        (b"[]".to_vec(), 400),
        (
            br#"{"request_id":"r","purpose":"p","case_ref":"c","resource":"R-SHOWN","items":[{"subject":"x","claims":{"name":5}}]}"#.to_vec(),
            400,
        ),
        (vec![b' '; 10 * 1024 * 1024], 413),
    ] {
        let response = http
            .post(format!("{}/v1/verify", service.url))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        let error: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // Still answering.
    let (answer, _) = service
        .verifier
        .verify(&request("R-SHOWN", vec![ok()]))
        .await
        .unwrap();
    assert_eq!(answer.items[0].fields["name"], FieldResult::Match);
    service.stop().await;
    // Every request left an audit record; denials say so; no subject in clear.
    let audit = setup.audit();
    assert_eq!(audit.len(), cases.len() + 2 + 4 + 1, "{audit:#?}");
    let outcomes: Vec<&str> = audit
        .iter()
        .map(|e| e["detail"]["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.iter().filter(|o| **o == "denied").count() >= 5,
        "{outcomes:?}"
    );
    assert_eq!(outcomes.last(), Some(&"answered"));
    let last = audit.last().unwrap();
    assert_eq!(last["actor"], HUB);
    assert_eq!(last["detail"]["purpose"], PURPOSE);
    assert_eq!(last["detail"]["case_ref"], "2024-0001");
    assert!(
        last["detail"]["subjects"][0]
            .as_str()
            .unwrap()
            .starts_with("v1:")
    );
    assert_no_secret(&setup, &[]);
}

/// A reqwest client with the hub's client certificate, for bodies the Verifier never sends.
fn raw_client(setup: &Setup) -> reqwest::Client {
    let tls = exchange_protocol::tls::hub_client_config(
        &setup.client_tls(&setup.client.0, &setup.client.1),
    )
    .unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

/// Client certificates of the hub's name that the handshake must refuse: one from another CA,
/// one expired; (certificate, key) files.
fn refused_certificates(setup: &Setup) -> [(PathBuf, PathBuf); 2] {
    let (other_ca, _) = setup.pki.other_ca("other-ca");
    let foreign = setup.pki.issue(
        &other_ca,
        HUB,
        &[],
        Usage::ClientAuth,
        Validity::Current,
        "foreign",
    );
    let expired = setup.pki.issue(
        &setup.pki.ca,
        HUB,
        &[],
        Usage::ClientAuth,
        Validity::Expired,
        "expired",
    );
    [foreign, expired]
}

#[tokio::test]
async fn certificates_from_another_ca_or_expired_are_refused_in_the_handshake() {
    let dir = TestDir::new();
    let file = dir.path().join("people.db");
    create_people("sqlite", None, None, Some(&file)).await;
    let setup = Setup::new("sqlite", &format!("sqlite://{}", file.display()), &[]);
    let service = setup.serve().await;
    let [foreign, expired] = refused_certificates(&setup);
    for (cert, key) in [foreign, expired] {
        let r = request(
            "R-SHOWN",
            vec![item("11010519491231002X", &[("name", v("张三"))])],
        );
        let verifier = Verifier::new(&setup.client_tls(&cert, &key), &service.url).unwrap();
        match verifier.verify(&r).await {
            Err(VerifyCallError::Transport { .. }) => {}
            other => panic!("expected a refused handshake, got {other:?}"),
        }
    }
    service.stop().await;
    // Nothing reached a handler: the only records are the two refused connections.
    let audit = wait_for(
        "both refusals are audited",
        Duration::from_secs(10),
        || async {
            let audit = setup.audit();
            (audit.len() >= 2).then_some(audit)
        },
    )
    .await;
    let mut reasons: Vec<&str> = audit
        .iter()
        .map(|e| {
            assert_eq!(e["action"], "connection.rejected", "{e}");
            assert_eq!(e["detail"]["listener"], "verify", "{e}");
            e["detail"]["reason"].as_str().unwrap()
        })
        .collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["expired", "unknown_issuer"]);
    // Counted in this process's metrics (other tests here never fail a handshake in-process).
    let m = exchange_agent::metrics::global();
    assert!(m.handshake_failures("verify", "unknown_issuer") >= 1);
    assert!(m.handshake_failures("verify", "expired") >= 1);
}

/// The daemon counts every refused handshake by reason on `/metrics` and audits it; the
/// service goes on answering.
#[tokio::test]
async fn refused_handshakes_are_counted_by_reason_and_audited_by_the_daemon() {
    use tokio::io::AsyncWriteExt;
    let dir = TestDir::new();
    let file = dir.path().join("people.db");
    create_people("sqlite", None, None, Some(&file)).await;
    let setup = Setup::new("sqlite", &format!("sqlite://{}", file.display()), &[]);
    let daemon = Daemon::start(&setup).await;
    let [foreign, expired] = refused_certificates(&setup);
    let r = request(
        "R-SHOWN",
        vec![item("11010519491231002X", &[("name", v("张三"))])],
    );
    for (cert, key) in [foreign, expired] {
        let verifier = Verifier::new(&setup.client_tls(&cert, &key), &daemon.url).unwrap();
        match verifier.verify(&r).await {
            Err(VerifyCallError::Transport { .. }) => {}
            other => panic!("expected a refused handshake, got {other:?}"),
        }
    }
    // Not TLS at all.
    let mut plain = tokio::net::TcpStream::connect(daemon.url.trim_start_matches("https://"))
        .await
        .unwrap();
    plain
        .write_all(b"POST /v1/verify HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let failures = |samples: &[admin::Sample], reason: &str| {
        admin::sample(
            samples,
            "exchange_tls_handshake_failures_total",
            &[("listener", "verify"), ("reason", reason)],
        )
    };
    let samples = wait_for(
        "the refused handshakes are counted",
        Duration::from_secs(30),
        || async {
            let s = admin::scrape(daemon.admin).await?;
            (failures(&s, "protocol").is_some()).then_some(s)
        },
    )
    .await;
    drop(plain);
    for reason in ["unknown_issuer", "expired", "protocol"] {
        assert_eq!(failures(&samples, reason), Some(1.0), "{reason}");
    }
    let rejected = wait_for("the refusals are audited", Duration::from_secs(30), || {
        let audit = setup.audit();
        async move {
            let rejected: BTreeMap<String, serde_json::Value> = audit
                .into_iter()
                .filter(|e| e["action"] == "connection.rejected")
                .map(|e| (e["detail"]["reason"].as_str().unwrap().to_owned(), e))
                .collect();
            (rejected.len() >= 3).then_some(rejected)
        }
    })
    .await;
    for reason in ["unknown_issuer", "expired", "protocol"] {
        let e = &rejected[reason];
        assert_eq!(e["detail"]["listener"], "verify", "{e}");
        assert_eq!(e["actor"], "-", "{e}");
        let peer: std::net::SocketAddr = e["detail"]["peer"].as_str().unwrap().parse().unwrap();
        assert!(peer.ip().is_loopback(), "{e}");
        assert!(!e["detail"]["error"].as_str().unwrap().is_empty(), "{e}");
    }
    assert!(
        rejected["unknown_issuer"]["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("not issued by the configured CA"),
        "{}",
        rejected["unknown_issuer"]
    );
    // The service goes on answering.
    let verifier = Verifier::new(
        &setup.client_tls(&setup.client.0, &setup.client.1),
        &daemon.url,
    )
    .unwrap();
    let (answer, _) = verifier.verify(&r).await.unwrap();
    assert_eq!(answer.items[0].fields["name"], FieldResult::Match);
    daemon.stop().await;
    assert!(
        exchange_agent::audit::verify(&setup.dir.path().join("agent-data")).is_ok(),
        "the audit chain is intact"
    );
}

#[tokio::test]
async fn a_uscc_uri_identifies_the_requester_when_configured() {
    let dir = TestDir::new();
    let file = dir.path().join("people.db");
    create_people("sqlite", None, None, Some(&file)).await;
    let setup = Setup::new(
        "sqlite",
        &format!("sqlite://{}", file.display()),
        &["requester_identity = \"uscc_uri\""],
    );
    // The grant names the code; the certificate's CN is something else.
    let text = std::fs::read_to_string(&setup.config).unwrap().replace(
        "requester = \"narrow-hub\"",
        "requester = \"91310110666007217T\"",
    );
    std::fs::write(&setup.config, text).unwrap();
    let service = setup.serve().await;
    let (cert, key) = setup.pki.issue(
        &setup.pki.ca,
        "whatever-cn",
        &["urn:uscc:91310110666007217T"],
        Usage::ClientAuth,
        Validity::Current,
        "uscc",
    );
    let r = request(
        "R-SHOWN",
        vec![item("11010519491231002X", &[("name", v("张三"))])],
    );
    let verifier = Verifier::new(&setup.client_tls(&cert, &key), &service.url).unwrap();
    let (answer, _) = verifier.verify(&r).await.unwrap();
    assert_eq!(answer.items[0].fields["name"], FieldResult::Match);
    // The CN-only certificate has no identity under uscc_uri.
    let (status, message) = refused(&service.verifier, &r).await;
    assert_eq!(status, 403);
    assert!(message.contains("urn:uscc"), "{message}");
    service.stop().await;
}

#[tokio::test]
async fn quotas_answer_429_with_retry_after_and_lock_a_subject_after_repeated_mismatches() {
    let dir = TestDir::new();
    let file = dir.path().join("people.db");
    create_people("sqlite", None, None, Some(&file)).await;
    let setup = Setup::new(
        "sqlite",
        &format!("sqlite://{}", file.display()),
        &["items_per_minute = 4", "mismatch_lockout = 2"],
    );
    let service = setup.serve().await;
    let wrong = || item("440524188001010014", &[("name", v("王"))]);
    service
        .verifier
        .verify(&request("R-SHOWN", vec![wrong()]))
        .await
        .unwrap();
    service
        .verifier
        .verify(&request("R-SHOWN", vec![wrong()]))
        .await
        .unwrap();
    match service
        .verifier
        .verify(&request("R-SHOWN", vec![wrong()]))
        .await
    {
        Err(VerifyCallError::Refused {
            status: 429,
            retry_after: Some(secs),
            message,
        }) => {
            assert!(message.contains("locked"), "{message}");
            assert!(secs.parse::<u64>().unwrap() > 3000);
        }
        other => panic!("expected a lockout, got {other:?}"),
    }
    let good = || item("11010519491231002X", &[("name", v("张三"))]);
    let (status, message) = refused(
        &service.verifier,
        &request("R-SHOWN", vec![good(), good(), good()]),
    )
    .await;
    assert_eq!(status, 429);
    assert!(message.contains("items per minute"), "{message}");
    service.stop().await;
    let throttled = setup
        .audit()
        .iter()
        .filter(|e| e["detail"]["outcome"] == "throttled")
        .count();
    assert_eq!(throttled, 2);
}

/// The real `exchange-agent run` daemon on a [`Setup`]'s configuration.
struct Daemon {
    /// The process.
    child: tokio::process::Child,
    /// The verification service's URL.
    url: String,
    /// The admin listener's port.
    admin: u16,
    /// The daemon's log.
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with its verification and admin listeners on fixed ports; returns
    /// once the admin listener answers, which it does only after the verification listener
    /// is bound (so no probe of ours is ever a refused connection).
    async fn start(setup: &Setup) -> Daemon {
        let port = admin::free_port();
        let admin_port = admin::free_port();
        let text = std::fs::read_to_string(&setup.config).unwrap().replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ) + &admin::section(admin_port);
        std::fs::write(&setup.config, text).unwrap();
        let log = setup.dir.path().join("agent.log");
        let child = exchange_tests::agent::Agent::at(&setup.config).spawn_run(&log);
        wait_until(
            "the daemon's admin listener answers",
            Duration::from_secs(60),
            || async { admin::scrape(admin_port).await.is_some() },
        )
        .await;
        Daemon {
            child,
            url: format!("https://127.0.0.1:{port}"),
            admin: admin_port,
            log,
        }
    }

    /// SIGTERM, then waits for the exit; the log.
    async fn stop(mut self) -> PathBuf {
        let pid = i32::try_from(self.child.id().unwrap()).unwrap();
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the daemon exits within 30 s of SIGTERM")
            .unwrap();
        assert!(exit.success(), "{exit:?}");
        self.log
    }
}

#[tokio::test]
async fn the_hub_cli_verifies_against_the_agent_daemon_and_nothing_lands_on_postgres() {
    let db = PgDb::create().await;
    create_people("postgres", Some(&db), None, None).await;
    hub_cli_verifies("postgres", &db.url).await;
}

#[tokio::test]
async fn the_hub_cli_verifies_against_the_agent_daemon_and_nothing_lands_on_mariadb() {
    let db = MyDb::create().await;
    create_people("mysql", None, Some(&db), None).await;
    hub_cli_verifies("mysql", &db.url).await;
}

#[tokio::test]
async fn the_hub_cli_verifies_against_the_agent_daemon_and_nothing_lands_on_sqlite() {
    let dir = TestDir::new();
    let file = dir.path().join("people.db");
    create_people("sqlite", None, None, Some(&file)).await;
    hub_cli_verifies("sqlite", &format!("sqlite://{}", file.display())).await;
}

/// The real binaries on one source kind: `exchange-agent run` hosts the service;
/// `exchange-hub verify` asks it (single, --json, --hmac, --psi, --file), and a refusal exits
/// non-zero with the agent's message. Afterwards no claimed or stored value is in the agent's
/// data directory or log.
async fn hub_cli_verifies(kind: &str, source_url: &str) {
    let setup = Setup::new(kind, source_url, &[]);
    let daemon = Daemon::start(&setup).await;
    let url = daemon.url.clone();
    // The hub's configuration: [listen] for serving, [client] for verify.
    let hub_toml = setup.dir.path().join("hub.toml");
    std::fs::write(
        &hub_toml,
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\nca = {ca}\ncert = {cert}\nkey = {key}\n\n[store]\nurl = {store}\n\n[client]\ncert = {ccert}\nkey = {ckey}\ncomparison_key_file = {ck}\n",
            ca = q(&setup.pki.ca_cert.display().to_string()),
            cert = q(&setup.pki.hub_cert.display().to_string()),
            key = q(&setup.pki.hub_key.display().to_string()),
            store = q(&format!("sqlite://{}", setup.dir.path().join("hub.db").display())),
            ccert = q(&setup.client.0.display().to_string()),
            ckey = q(&setup.client.1.display().to_string()),
            ck = q(&setup.comparison_key.display().to_string()),
        ),
    )
    .unwrap();
    let hub = exchange_tests::bins::hub();
    let base = |resource: &str| {
        vec![
            "verify".to_owned(),
            "--config".into(),
            hub_toml.display().to_string(),
            "--agent".into(),
            url.clone(),
            "--resource".into(),
            resource.into(),
            "--purpose".into(),
            PURPOSE.into(),
            "--case-ref".into(),
            "2024-0002".into(),
        ]
    };
    let call = |args: Vec<String>| {
        let hub = hub.clone();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&hub, &refs).await
        }
    };
    let mut single = base("R-SHOWN");
    single.extend(
        [
            "--subject",
            "11010519491231002X",
            "--claim",
            "name=张三",
            "--claim",
            &format!("address={CLAIMED_SECRET}"),
            "--claim",
            "birth=1949/12/31",
        ]
        .map(String::from),
    );
    let out = call(single.clone()).await;
    out.assert_code(0);
    assert!(out.stdout.contains("found"), "{out}");
    assert!(
        out.stdout.contains("name") && out.stdout.contains("match (一致)"),
        "{out}"
    );
    assert!(out.stdout.contains("mismatch (不一致)"), "{out}");
    let mut json = single.clone();
    json.push("--json".into());
    let out = call(json).await;
    out.assert_code(0);
    let answer: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(answer["items"][0]["fields"]["birth"], "match");
    assert_eq!(answer["items"][0]["subject"], "found");
    // HMAC claims: status compares by hmac only.
    let mut hmac = base("R-SHOWN");
    hmac.extend(
        [
            "--subject",
            "11010519491231002X",
            "--claim",
            "status=正常",
            "--hmac",
            "--json",
        ]
        .map(String::from),
    );
    let out = call(hmac).await;
    out.assert_code(0);
    assert!(out.stdout.contains("\"status\":\"match\""), "{out}");
    // Private set intersection from the command line.
    let mut psi = base("R-SHOWN");
    psi.extend(
        [
            "--subject",
            "11010519491231002X",
            "--claim",
            "name=张三",
            "--claim",
            "birth=19491231",
            "--psi",
            "--json",
        ]
        .map(String::from),
    );
    let out = call(psi).await;
    out.assert_code(0);
    let answer: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(answer["items"][0]["subject"], "found", "{out}");
    assert_eq!(answer["items"][0]["fields"]["name"], "match", "{out}");
    assert_eq!(answer["items"][0]["fields"]["birth"], "match", "{out}");
    // A batch from a file; answers next to it.
    let claims = setup.dir.path().join("claims.csv");
    std::fs::write(
        &claims,
        format!("subject,name,birth\n11010519491231002X,张三,1949-12-31\n440524188001010014,李四,\n999,{CLAIMED_SECRET},2000-01-01\n"),
    )
    .unwrap();
    let mut batch = base("R-HIDDEN");
    batch.extend(["--file".to_owned(), claims.display().to_string()]);
    let out = call(batch).await;
    out.assert_code(0);
    let answers = std::fs::read_to_string(setup.dir.path().join("claims.answers.csv")).unwrap();
    assert_eq!(
        answers,
        "row,subject,found,name,birth\n2,11010519491231002X,,match,match\n3,440524188001010014,,match,\n4,999,,mismatch,mismatch\n"
    );
    // A refusal exits non-zero with the agent's message.
    let mut denied = base("R-EXPIRED");
    denied.extend(["--subject", "11010519491231002X", "--claim", "name=张三"].map(String::from));
    let out = call(denied).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("403") && out.stderr.contains("expired"),
        "{out}"
    );
    // Stop the daemon, then look for the values everywhere it writes.
    let log = daemon.stop().await;
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("Verification answered"), "{log_text}");
    assert_no_secret(&setup, &[log]);
    let audit = setup.audit();
    assert!(audit.len() >= 5, "{audit:?}");
}
