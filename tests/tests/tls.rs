//! Mutual TLS is enforced in both directions with clear errors: the agent refuses a hub whose
//! certificate is from another CA, expired or for another name; the hub refuses a client
//! certificate from another CA, an expired one, or one whose common name is not the node id
//! the agent claims. In every case nothing is dropped: the records stay queued, and once the
//! certificates are put right the same queue drains into the hub.

use std::sync::Arc;
use std::time::Duration;

use exchange_protocol::pki::{Usage, Validity};
use exchange_protocol::tls::MutualTls;
use exchange_tests::agent::{Agent, AgentConfig, Output};
use exchange_tests::hub::Hub;
use exchange_tests::pki::Pki;
use exchange_tests::rows::assert_same;
use exchange_tests::scene::NODE;
use exchange_tests::sqlite_source::SqliteSource;
use exchange_tests::wait::wait_until;
use exchange_tests::{DEADLINE, TestDir};

const CODE: &str = "330100-RSJ-0001";
const ROWS: i64 = 300;

/// A hub (with the given TLS files, or the good ones), a SQLite source and an agent
/// configuration made of the good certificates, for each test to spoil.
struct Case {
    hub: Hub,
    source: SqliteSource,
    pki: Pki,
    dir: TestDir,
}

impl Case {
    async fn new(hub_tls: impl FnOnce(&Pki) -> MutualTls) -> Case {
        let dir = TestDir::new();
        let pki = Pki::new(dir.path(), NODE);
        let hub = Hub::start(hub_tls(&pki), dir.path()).await;
        let source = SqliteSource::create(dir.path(), ROWS);
        Case {
            hub,
            source,
            pki,
            dir,
        }
    }

    fn config(&self) -> AgentConfig {
        AgentConfig::new(self.dir.path(), &self.pki, NODE, &self.hub.url())
            .source("rsj", "sqlite", &self.source.url())
            .resource(self.source.resource(CODE, "rsj"))
    }

    fn write(&self, config: &AgentConfig) -> Agent {
        config.write(&self.dir.path().join("agent.toml"))
    }

    /// `sync` fails and says why (every one of `needles`), nothing reached the hub, and every
    /// record is still queued.
    async fn sync_is_refused(&self, agent: &Agent, needles: &[&str]) -> Output {
        let out = agent.sync("5s").await;
        assert_ne!(out.code, Some(0), "sync must fail; {out}");
        out.assert_mentions(&[&self.hub.url(), &format!("{ROWS} records still queued")]);
        out.assert_mentions(needles);
        assert!(
            self.hub.export(CODE).await.is_empty(),
            "nothing may reach the hub"
        );
        let status = agent.resource_status(CODE).await;
        assert_eq!(
            status["queued_records"], ROWS,
            "nothing is dropped: {status}"
        );
        out
    }

    /// With the good configuration the same queue drains into the hub.
    async fn then_drains_with(&self, config: &AgentConfig) {
        let agent = self.write(config);
        agent.sync_ok().await;
        assert_same(&self.hub.rows(CODE).await, &self.source.expected());
        let status = agent.resource_status(CODE).await;
        assert_eq!(status["pushed_records"], ROWS, "{status}");
    }

    /// Restarts the hub (same address, same store) with the good certificates.
    async fn fix_hub(&mut self) {
        self.hub.stop().await;
        self.hub.config.tls = self.pki.hub_tls();
        self.hub.start_again().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_hub_certificate_from_another_ca() {
    let case = Case::new(Pki::hub_tls).await;
    let (_, other_ca) = case.pki.other_ca("other-ca");
    let mut config = case.config();
    config.ca = other_ca;
    let out = case
        .sync_is_refused(
            &case.write(&config),
            &["UnknownIssuer", "not issued by the configured CA"],
        )
        .await;
    not_called_unreachable(&out);
    case.then_drains_with(&case.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_an_expired_hub_certificate() {
    let mut case = Case::new(|pki| {
        let (cert, key) = pki.issue(
            &pki.ca,
            "127.0.0.1",
            &["127.0.0.1", "localhost"],
            Usage::ServerAuth,
            Validity::Expired,
            "hub-expired",
        );
        MutualTls {
            cert,
            key,
            ..pki.hub_tls()
        }
    })
    .await;
    let agent = case.write(&case.config());
    let out = case.sync_is_refused(&agent, &["expired"]).await;
    not_called_unreachable(&out);
    case.fix_hub().await;
    case.then_drains_with(&case.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_hub_certificate_for_another_name() {
    let mut case = Case::new(|pki| {
        let (cert, key) = pki.issue(
            &pki.ca,
            "hub.example",
            &["hub.example"],
            Usage::ServerAuth,
            Validity::Current,
            "hub-other-name",
        );
        MutualTls {
            cert,
            key,
            ..pki.hub_tls()
        }
    })
    .await;
    let agent = case.write(&case.config());
    let out = case
        .sync_is_refused(&agent, &["not valid for name", "hub.example"])
        .await;
    not_called_unreachable(&out);
    case.fix_hub().await;
    case.then_drains_with(&case.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_hub_certificate_its_hub_crl_revokes() {
    let mut serial = Vec::new();
    let mut case = Case::new(|pki| {
        let issued = pki
            .ca
            .issue(
                "127.0.0.1",
                &["127.0.0.1", "localhost"],
                Usage::ServerAuth,
                Validity::Current,
            )
            .unwrap();
        serial = issued.serial.clone();
        let (cert, key) = issued.write(&pki.dir, "hub-revoked").unwrap();
        MutualTls {
            cert,
            key,
            ..pki.hub_tls()
        }
    })
    .await;
    let crl = case.pki.dir.join("ca.crl");
    case.pki.ca.write_crl(&crl, &[&serial], 1).unwrap();
    let mut config = case.config();
    config.hub_crl = vec![crl];
    let out = case
        .sync_is_refused(
            &case.write(&config),
            &["Revoked", "certificate revocation list"],
        )
        .await;
    not_called_unreachable(&out);
    // The hub's certificate replaced by one the CRL does not list: the same configuration
    // (CRL still in force) drains the queue.
    case.fix_hub().await;
    case.then_drains_with(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_refuses_a_client_certificate_its_crl_revokes() {
    // A second certificate of the node, revoked by the CA whose CRL the hub reads.
    let mut revoked = None;
    let case = Case::new(|pki| {
        let issued = pki.ca.issue_client(NODE).unwrap();
        let crl = pki.dir.join("ca.crl");
        pki.ca.write_crl(&crl, &[&issued.serial], 1).unwrap();
        revoked = Some(issued.write(&pki.dir, "node-revoked").unwrap());
        MutualTls {
            crls: vec![crl],
            ..pki.hub_tls()
        }
    })
    .await;
    let (cert, key) = revoked.unwrap();
    let mut config = case.config();
    config.cert = cert;
    config.key = key;
    case.sync_is_refused(
        &case.write(&config),
        &["TLS handshake", "CertificateRevoked"],
    )
    .await;
    // The node's certificate the CRL does not list drains the same queue.
    case.then_drains_with(&case.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_refuses_a_client_certificate_from_another_ca() {
    let case = Case::new(Pki::hub_tls).await;
    let (other, _) = case.pki.other_ca("other-ca");
    let (cert, key) = case.pki.issue(
        &other,
        NODE,
        &[],
        Usage::ClientAuth,
        Validity::Current,
        "node-other-ca",
    );
    let mut config = case.config();
    config.cert = cert;
    config.key = key;
    case.sync_is_refused(&case.write(&config), &["TLS handshake", "UnknownCA"])
        .await;
    case.then_drains_with(&case.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_refuses_an_expired_client_certificate() {
    let case = Case::new(Pki::hub_tls).await;
    let (cert, key) = case.pki.issue(
        &case.pki.ca,
        NODE,
        &[],
        Usage::ClientAuth,
        Validity::Expired,
        "node-expired",
    );
    let mut config = case.config();
    config.cert = cert;
    config.key = key;
    case.sync_is_refused(
        &case.write(&config),
        &["TLS handshake", "CertificateExpired"],
    )
    .await;
    case.then_drains_with(&case.config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_for_another_identity_is_refused_by_check_and_by_the_hub() {
    let case = Case::new(Pki::hub_tls).await;
    let (other_cert, other_key) = case.pki.issue(
        &case.pki.ca,
        "other-node",
        &[],
        Usage::ClientAuth,
        Validity::Current,
        "node-other-identity",
    );
    let mut config = case.config();
    config.cert = other_cert.clone();
    config.key = other_key.clone();
    let agent = case.write(&config);

    let out = agent.check(false).await;
    out.assert_code(2)
        .assert_mentions(&["hub.cert", "other-node", NODE]);
    let out = agent.sync("5s").await;
    out.assert_code(2)
        .assert_mentions(&["hub.cert", "other-node", NODE]);

    // Pushing anyway, bypassing the configuration check (the library, with the certificate
    // swapped after validation): the hub takes the node id from the certificate and refuses a
    // batch that claims another one, naming both.
    let good = case.write(&case.config());
    let mut loaded =
        exchange_agent::config::Config::load(&good.config).expect("the good configuration loads");
    loaded.hub.tls.cert = other_cert;
    loaded.hub.tls.key = other_key;
    let pipeline =
        Arc::new(exchange_agent::pipeline::Pipeline::build(loaded).expect("build the pipeline"));
    let report = exchange_agent::sync::sync(
        pipeline.clone(),
        None,
        exchange_agent::sync::SyncOptions {
            wait: Duration::from_secs(5),
            deadline: Duration::from_secs(5),
        },
        exchange_agent::sync::Pushers::Own,
        Arc::new(|_| {}),
    )
    .await;
    let text = report.to_string();
    assert!(!report.is_complete(), "{text}");
    for needle in ["403", "other-node", NODE, &case.hub.url()] {
        assert!(
            text.contains(needle),
            "expected the report to mention `{needle}`: {text}"
        );
    }
    assert!(
        case.hub.export(CODE).await.is_empty(),
        "nothing may reach the hub"
    );
    let state = pipeline.queue.state(CODE).unwrap();
    assert_eq!(
        state.queued_records, ROWS as u64,
        "nothing is dropped: {state:?}"
    );
    // The sync's tasks let go of the pipeline (and the queue's lock) once they have stopped.
    wait_until("the sync tasks released the pipeline", DEADLINE, || {
        let only_us = Arc::strong_count(&pipeline) == 1;
        async move { only_us }
    })
    .await;
    drop(pipeline);

    case.then_drains_with(&case.config()).await;
}

/// A certificate the agent refuses is a TLS failure, not an unreachable hub: the administrator
/// must be sent to the certificates, not to the network.
#[track_caller]
fn not_called_unreachable(out: &Output) {
    assert!(
        out.stdout.contains("TLS handshake") && !out.stdout.contains("is unreachable"),
        "a refused hub certificate must be reported as a TLS handshake failure, not as an unreachable hub; {out}"
    );
}
