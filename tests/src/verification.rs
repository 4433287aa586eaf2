//! The verification service's fixture (tests/tests/verify*.rs): a `people` table on any
//! source kind, certificates, an agent configuration with resources for every disclosure and
//! grant case, the service in-process or as the real daemon, and the requester's helpers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use exchange_hub::verify::{Verifier, VerifyCallError};
use exchange_protocol::pki::{Usage, Validity};
use exchange_protocol::tls::{MinTlsVersion, MutualTls};
use exchange_protocol::verify::{Claim, FieldResult, Item, VerifyRequest};

use crate::TestDir;
use crate::admin;
use crate::agent::{AgentConfig, Resource, q};
use crate::db::{MyDb, PgDb};
use crate::pki::Pki;
use crate::wait::wait_until;

/// The requester the grants name (CN of the hub's client certificate).
pub const HUB: &str = "city-hub";
/// The purpose the grants allow.
pub const PURPOSE: &str = "社保资格认证";
/// A value that is stored but must never appear anywhere (a stored address, dropped field).
pub const STORED_SECRET: &str = "SECRETSTOREDQX";
/// A claimed value that must never appear anywhere.
pub const CLAIMED_SECRET: &str = "SECRETCLAIMEDZV";

/// A row of `people`.
#[derive(Debug, Clone, Copy)]
pub struct Person {
    pub id_no: &'static str,
    pub name: &'static str,
    pub address: Option<&'static str>,
    pub birth: &'static str,
    pub salary: &'static str,
    pub status: &'static str,
    /// Dropped: never read.
    pub note: &'static str,
    /// Enumerable (two values).
    pub sex: &'static str,
    /// Delivered masked (`139****1111`): enumerable to a requester holding the mask.
    pub mobile: &'static str,
}

/// The rows of `people`.
pub const PEOPLE: [Person; 3] = [
    Person {
        id_no: "11010519491231002X",
        name: "张三",
        address: Some("北京市海淀区中关村大街1号 SECRETSTOREDQX"),
        birth: "1949-12-31",
        salary: "12345.60",
        status: "正常",
        note: "SECRETSTOREDQX",
        sex: "男",
        mobile: "13957381111",
    },
    Person {
        id_no: "440524188001010014",
        name: "李四",
        address: None,
        birth: "1880-01-01",
        salary: "0.00",
        status: "注销",
        note: "x",
        sex: "女",
        mobile: "+86 138-0000-0001",
    },
    Person {
        id_no: "321083197812162119",
        name: "O'Brien\"; DROP TABLE people; --",
        address: Some("上海市"),
        birth: "1978-12-16",
        salary: "-1.5",
        status: "正常",
        note: "y",
        sex: "男",
        mobile: "15000000000",
    },
];

/// Creates `people` with its rows; `kind` is postgres, mysql or sqlite.
pub async fn create_people(
    kind: &str,
    pg: Option<&PgDb>,
    my: Option<&MyDb>,
    sqlite: Option<&Path>,
) {
    let ddl = |date: &str, dec: &str| {
        format!(
            "CREATE TABLE people (id_no varchar(18) PRIMARY KEY, name varchar(80), address varchar(200), birth {date}, salary {dec}, status varchar(20), note varchar(50), sex varchar(4), mobile varchar(32))"
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
                    "INSERT INTO people VALUES ($1, $2, $3, $4::text::date, $5::text::numeric, $6, $7, $8, $9)",
                    &[&p.id_no, &p.name, &p.address, &p.birth, &p.salary, &p.status, &p.note, &p.sex, &p.mobile],
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
                    "INSERT INTO people VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        p.id_no, p.name, p.address, p.birth, p.salary, p.status, p.note, p.sex,
                        p.mobile,
                    ),
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
                    "INSERT INTO people VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    rusqlite::params![
                        p.id_no, p.name, p.address, p.birth, p.salary, p.status, p.note, p.sex,
                        p.mobile
                    ],
                )
                .unwrap();
            }
        }
    }
}

/// A `people` table in a fresh SQLite file and a [`Setup`] over it with `verify_extra`; the
/// file's directory is kept as long as the returned [`TestDir`].
pub async fn sqlite_setup(verify_extra: &[&str]) -> (TestDir, Setup) {
    let dir = TestDir::new();
    let file = dir.path().join("people.db");
    create_people("sqlite", None, None, Some(&file)).await;
    let setup = Setup::new(
        "sqlite",
        &format!("sqlite://{}", file.display()),
        verify_extra,
    );
    (dir, setup)
}

/// Certificates, keys and the agent configuration of one test.
pub struct Setup {
    /// The test's directory (agent data, keys, logs).
    pub dir: TestDir,
    /// The platform CA and the agent's server certificate (`pki.hub_cert`: SAN 127.0.0.1).
    pub pki: Pki,
    /// The hub's client certificate and key (CN `city-hub`).
    pub client: (PathBuf, PathBuf),
    /// The comparison key file (shared by agent and hub).
    pub comparison_key: PathBuf,
    /// The agent's configuration file.
    pub config: PathBuf,
}

/// Writes a 0600 key file of 64 hex digits.
pub fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, hex::encode([byte; 32])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The fields of `people` as resources list them.
pub const FIELDS: [(&str, &str); 9] = [
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
    ("sex", "mask:keep(1,0)"),
    ("mobile", "mask:mobile"),
];

pub const COMPARE: &str = "compare = { address = \"normalized\", birth = \"date\", salary = \"number\", status = \"hmac\", mobile = \"normalized\" }";

pub fn grant(requester: &str, fields: &[&str], extra: &str) -> String {
    let fields: Vec<String> = fields.iter().map(|f| q(f)).collect();
    format!(
        "{{ requester = {}, fields = [{}]{extra} }}",
        q(requester),
        fields.join(", ")
    )
}

impl Setup {
    /// Certificates and an agent configuration verifying `people` on `source_url`.
    pub fn new(kind: &str, source_url: &str, verify_extra: &[&str]) -> Setup {
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
        let all = [
            "name", "address", "birth", "salary", "status", "sex", "mobile",
        ];
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
                    "enumerable = [\"sex\"]".into(),
                    COMPARE.into(),
                    grants(vec![
                        grant(HUB, &all, &format!("{purposes}, psi = true")),
                        grant("narrow-hub", &["name"], ""),
                    ]),
                ],
            ))
            .resource(resource(
                "R-HIDDEN",
                "conditional",
                vec![
                    "enumerable = [\"sex\", \"mobile\"]".into(),
                    COMPARE.into(),
                    grants(vec![grant(HUB, &all, &purposes)]),
                ],
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
    pub fn client_tls(&self, cert: &Path, key: &Path) -> MutualTls {
        MutualTls {
            ca: self.pki.ca_cert.clone(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            min_version: MinTlsVersion::Tls13,
            crls: Vec::new(),
        }
    }

    /// The comparison key as the hub reads it.
    pub fn comparison_key(&self) -> exchange_agent::policy::PseudonymKey {
        exchange_hub::verify::read_comparison_key(&self.comparison_key, 1).unwrap()
    }

    /// Starts the service in-process; the URL and a stopper.
    pub async fn serve(&self) -> Service {
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
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("agent-data/audit.jsonl"))
            .unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A running service.
pub struct Service {
    pub url: String,
    pub verifier: Verifier,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), exchange_agent::verify::VerifyError>>>,
}

impl Service {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

pub fn request(resource: &str, items: Vec<Item>) -> VerifyRequest {
    VerifyRequest {
        request_id: "req-1".into(),
        purpose: PURPOSE.into(),
        case_ref: "2024-0001".into(),
        resource: resource.into(),
        items,
    }
}

pub fn item(subject: &str, claims: &[(&str, Claim)]) -> Item {
    Item {
        subject: subject.into(),
        claims: claims
            .iter()
            .map(|(f, c)| (f.to_string(), c.clone()))
            .collect(),
    }
}

pub fn v(s: &str) -> Claim {
    Claim::Value(s.into())
}

pub fn results(pairs: &[(&str, FieldResult)]) -> BTreeMap<String, FieldResult> {
    pairs.iter().map(|(f, r)| (f.to_string(), *r)).collect()
}

/// The refusal of a request: status and message.
pub async fn refused(verifier: &Verifier, r: &VerifyRequest) -> (u16, String) {
    match verifier.verify(r).await {
        Err(VerifyCallError::Refused {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Nothing claimed or stored appears in the agent's data directory or in `extra` files.
pub fn assert_no_secret(setup: &Setup, extra: &[PathBuf]) {
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

/// A reqwest client with the hub's client certificate, for bodies the Verifier never sends.
pub fn raw_client(setup: &Setup) -> reqwest::Client {
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
pub fn refused_certificates(setup: &Setup) -> [(PathBuf, PathBuf); 2] {
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

/// The real `exchange-agent run` daemon on a [`Setup`]'s configuration.
pub struct Daemon {
    /// The process.
    pub child: tokio::process::Child,
    /// The verification service's URL.
    pub url: String,
    /// The admin listener's port.
    pub admin: u16,
    /// The daemon's log.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with its verification and admin listeners on fixed ports; returns
    /// once the admin listener answers, which it does only after the verification listener
    /// is bound (so no probe of ours is ever a refused connection).
    pub async fn start(setup: &Setup) -> Daemon {
        let port = admin::free_port();
        let admin_port = admin::free_port();
        let text = std::fs::read_to_string(&setup.config).unwrap().replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ) + &admin::section(admin_port);
        std::fs::write(&setup.config, text).unwrap();
        Daemon::launch(setup, port, admin_port, "agent.log").await
    }

    /// Starts the daemon again, on the ports a stopped or killed `previous` used, logging to
    /// `log` in the test's directory.
    pub async fn restart(setup: &Setup, previous: (String, u16), log: &str) -> Daemon {
        let port = previous
            .0
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a URL with a port");
        Daemon::launch(setup, port, previous.1, log).await
    }

    async fn launch(setup: &Setup, port: u16, admin_port: u16, log: &str) -> Daemon {
        let log = setup.dir.path().join(log);
        let child = crate::agent::Agent::at(&setup.config).spawn_run(&log);
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

    /// SIGKILL (nothing of a shutdown runs), then waits for the exit; the ports, for
    /// [`Daemon::restart`].
    pub async fn kill(mut self) -> (String, u16) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("a killed daemon exits")
            .unwrap();
        (self.url, self.admin)
    }

    /// SIGTERM, then waits for the exit; the log.
    pub async fn stop(mut self) -> PathBuf {
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
