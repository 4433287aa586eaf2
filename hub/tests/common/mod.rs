//! What the hub's integration tests share: certificates made per test, a hub started
//! in-process on `127.0.0.1:0`, an agent-like client, and a fresh PostgreSQL database.

#![allow(dead_code)] // each test file uses part of this module

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use exchange_hub::config::{HubConfig, Limits, StoreConfig};
use exchange_hub::server::{HubError, Load};
use exchange_protocol::batch::{self, Ack, ErrorBody, Op, Record, header};
use exchange_protocol::pki::{Authority, Usage, Validity};
use exchange_protocol::tls::{self, MinTlsVersion, MutualTls};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A throwaway PKI in a temporary directory: the platform CA, the hub's certificate.
pub struct Pki {
    /// Holds every file; removed on drop.
    pub dir: tempfile::TempDir,
    /// The CA that issues the hub's and the agents' certificates.
    pub ca: Authority,
    /// The CA certificate file.
    pub ca_path: PathBuf,
    /// The hub's TLS paths (client CA, certificate, key).
    pub hub_tls: MutualTls,
}

impl Pki {
    pub fn new() -> Pki {
        tls::install_provider();
        // Logs go to the test's captured output, shown when it fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("exchange_hub=debug")
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::generate("Test platform CA").unwrap();
        let ca_path = dir.path().join("ca.pem");
        ca.write_cert(&ca_path).unwrap();
        let (cert, key) = ca
            .issue_server(&["127.0.0.1", "localhost"])
            .unwrap()
            .write(dir.path(), "hub")
            .unwrap();
        let hub_tls = MutualTls {
            ca: ca_path.clone(),
            cert,
            key,
            min_version: MinTlsVersion::Tls13,
            crls: Vec::new(),
        };
        Pki {
            dir,
            ca,
            ca_path,
            hub_tls,
        }
    }

    /// A current client certificate for `node`, as the agent's TLS paths.
    pub fn client(&self, node: &str) -> MutualTls {
        self.client_with(&self.ca, node, Validity::Current, node)
    }

    /// A client certificate issued by `issuer` with `validity`, written as `<stem>.pem/.key`.
    pub fn client_with(
        &self,
        issuer: &Authority,
        node: &str,
        validity: Validity,
        stem: &str,
    ) -> MutualTls {
        let (cert, key) = issuer
            .issue(node, &[], Usage::ClientAuth, validity)
            .unwrap()
            .write(self.dir.path(), stem)
            .unwrap();
        MutualTls {
            ca: self.ca_path.clone(),
            cert,
            key,
            min_version: MinTlsVersion::Tls13,
            crls: Vec::new(),
        }
    }

    /// A SQLite store in the PKI's directory.
    pub fn sqlite(&self) -> StoreConfig {
        StoreConfig::sqlite(self.dir.path().join("hub.db"))
    }
}

/// A hub running in-process.
pub struct Hub {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its configuration.
    pub config: HubConfig,
    /// What it carries (connections, requests, body bytes).
    pub load: Arc<Load>,
    /// Resolves the shutdown future.
    stop: oneshot::Sender<()>,
    /// The `run` task.
    task: JoinHandle<Result<(), HubError>>,
}

impl Hub {
    pub async fn start(pki: &Pki, store: StoreConfig) -> Hub {
        Self::start_with(pki, store, batch::DEFAULT_MAX_BATCH_BYTES).await
    }

    pub async fn start_with(pki: &Pki, store: StoreConfig, max_batch_bytes: usize) -> Hub {
        let limits = Limits {
            max_batch_bytes,
            ..Limits::default()
        };
        Self::start_limited(pki, store, limits).await
    }

    /// A hub with these limits; its [`Load`] is in `load`.
    pub async fn start_limited(pki: &Pki, store: StoreConfig, limits: Limits) -> Hub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = HubConfig::new(addr, pki.hub_tls.clone(), store);
        config.limits = limits;
        let (stop, stopped) = oneshot::channel::<()>();
        let run_config = config.clone();
        let load = Arc::new(Load::default());
        let run_load = load.clone();
        let task = tokio::spawn(async move {
            exchange_hub::server::run_observed(listener, &run_config, run_load, async {
                let _ = stopped.await;
            })
            .await
        });
        Hub {
            addr,
            config,
            load,
            stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// Resolves the shutdown future and waits (with a deadline) for `run` to return.
    pub async fn stop(self) -> Result<(), HubError> {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the hub did not stop before the deadline")
            .expect("the hub task panicked")
    }

    /// A store handle on the same database, for reading what arrived.
    pub async fn store(&self) -> exchange_hub::store::Store {
        exchange_hub::store::Store::open(&self.config.store)
            .await
            .unwrap()
    }
}

/// An agent-like HTTPS client presenting `tls`'s certificate.
pub fn client(tls: &MutualTls) -> reqwest::Client {
    client_from(tls::hub_client_config(tls).unwrap())
}

/// An HTTPS client from a finished rustls configuration.
pub fn client_from(config: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .timeout(DEADLINE)
        .build()
        .unwrap()
}

pub fn upsert(key: &str, fields: &str) -> Record {
    Record {
        op: Op::Upsert,
        key: key.to_owned(),
        fields: Some(serde_json::from_str(fields).unwrap()),
        flags: Vec::new(),
    }
}

pub fn delete(key: &str) -> Record {
    Record {
        op: Op::Delete,
        key: key.to_owned(),
        fields: None,
        flags: Vec::new(),
    }
}

/// A stream id unique to this process run.
pub fn new_stream() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!(
        "{:016x}{:08x}{:08x}",
        nanos,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One batch request, with every part overridable to build bad requests.
#[derive(Clone)]
pub struct Push {
    pub node: String,
    pub resource: String,
    pub stream: String,
    pub seq: u64,
    pub records: Vec<Record>,
    /// Replaces the computed digest.
    pub digest: Option<String>,
    /// Replaces the computed record count.
    pub count: Option<String>,
    /// Replaces the compressed body.
    pub body: Option<Vec<u8>>,
    /// The protocol header (`None` omits it).
    pub protocol: Option<String>,
    /// The `exchange-baseline` header (`None` omits it).
    pub baseline: Option<String>,
    /// The `exchange-signature` header (`None` omits it).
    pub signature: Option<String>,
}

impl Push {
    pub fn new(node: &str, resource: &str, stream: &str, seq: u64, records: Vec<Record>) -> Push {
        Push {
            node: node.to_owned(),
            resource: resource.to_owned(),
            stream: stream.to_owned(),
            seq,
            records,
            digest: None,
            count: None,
            body: None,
            protocol: Some(batch::PROTOCOL_VERSION.to_owned()),
            baseline: None,
            signature: None,
        }
    }

    /// This batch, signed with the key of `tls` (docs/PROTOCOL.md §4.7).
    pub fn signed(mut self, tls: &MutualTls) -> Push {
        let mut ndjson = Vec::new();
        for r in &self.records {
            batch::push_line(&mut ndjson, r);
        }
        let key = exchange_protocol::tls::load_key(&tls.key).unwrap();
        let signer = exchange_protocol::signature::BatchSigner::new(&key).unwrap();
        let sm3 = batch::digest_hex(&ndjson);
        self.signature = Some(
            signer
                .sign(&exchange_protocol::signature::Signed {
                    node: &self.node,
                    resource: &self.resource,
                    stream: &self.stream,
                    seq: self.seq,
                    sm3: &sm3,
                })
                .unwrap(),
        );
        self
    }

    /// This batch, marked as completing its stream's baseline.
    pub fn completing_baseline(mut self) -> Push {
        self.baseline = Some(batch::BASELINE_COMPLETE.to_owned());
        self
    }

    pub async fn send(&self, client: &reqwest::Client, hub: &Hub) -> reqwest::Response {
        self.try_send(client, hub).await.unwrap()
    }

    pub async fn try_send(
        &self,
        client: &reqwest::Client,
        hub: &Hub,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.send_to(client, &hub.url("")).await
    }

    /// Sends to the hub at `base` (`https://host:port`).
    pub async fn send_to(
        &self,
        client: &reqwest::Client,
        base: &str,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut ndjson = Vec::new();
        for r in &self.records {
            batch::push_line(&mut ndjson, r);
        }
        let mut request = client
            .post(format!("{base}{}", batch::BATCHES_PATH))
            .header(header::NODE, &self.node)
            .header(header::RESOURCE, &self.resource)
            .header(header::STREAM, &self.stream)
            .header(header::SEQ, self.seq.to_string())
            .header(
                header::RECORDS,
                self.count
                    .clone()
                    .unwrap_or_else(|| self.records.len().to_string()),
            )
            .header(
                header::DIGEST,
                self.digest
                    .clone()
                    .unwrap_or_else(|| batch::digest_hex(&ndjson)),
            )
            .header(
                header::IDEMPOTENCY_KEY,
                format!(
                    "{}/{}/{}/{}",
                    self.node, self.resource, self.stream, self.seq
                ),
            )
            .header("content-type", batch::CONTENT_TYPE)
            .header("content-encoding", batch::CONTENT_ENCODING)
            .body(
                self.body
                    .clone()
                    .unwrap_or_else(|| batch::compress(&ndjson)),
            );
        if let Some(p) = &self.protocol {
            request = request.header(header::PROTOCOL, p);
        }
        if let Some(b) = &self.baseline {
            request = request.header(header::BASELINE, b);
        }
        if let Some(v) = &self.signature {
            request = request.header(exchange_protocol::signature::HEADER, v);
        }
        request.send().await
    }
}

/// Expects a 200 with an Ack.
pub async fn ack(response: reqwest::Response) -> Ack {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Expects `status` with an ErrorBody; returns its sentence.
pub async fn refusal(response: reqwest::Response, status: u16) -> String {
    refusal_body(response, status).await.error
}

/// Expects `status` with an ErrorBody; returns it.
pub async fn refusal_body(response: reqwest::Response, status: u16) -> ErrorBody {
    let got = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str::<ErrorBody>(&text)
        .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {text}"))
}

/// The exported records of `resource` as `(key, fields JSON text)`.
pub async fn exported(hub: &Hub, resource: &str) -> Vec<(String, String)> {
    let store = hub.store().await;
    exchange_hub::export::export(&store, resource)
        .await
        .unwrap()
        .into_iter()
        .map(|v| {
            (
                v["key"].as_str().unwrap().to_owned(),
                serde_json::to_string(&v["fields"]).unwrap(),
            )
        })
        .collect()
}

/// A PostgreSQL database created for one test and dropped after it.
///
/// The server comes from `EXCHANGE_TEST_PG_URL` (default
/// `postgres://postgres@127.0.0.1:5432/test`); the test fails if it is unreachable.
pub struct PgDb {
    /// The database's name.
    pub name: String,
    /// URL of the administrative database the test database was created from.
    admin_url: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let admin_url = std::env::var("EXCHANGE_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let name = format!(
            "hub_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let client = admin(&admin_url).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e:?}"));
        PgDb { name, admin_url }
    }

    pub fn url(&self) -> String {
        let (base, query) = match self.admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (self.admin_url.as_str(), String::new()),
        };
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        format!("{base}/{}{query}", self.name)
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig::postgres(&self.url()).unwrap()
    }

    /// Runs SQL on the administrative database (e.g. to cut the hub off).
    pub async fn admin(&self, sql: &str) {
        admin(&self.admin_url)
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {url} is unreachable ({e}); start it or set EXCHANGE_TEST_PG_URL — these tests never skip"
            )
        });
    tokio::spawn(connection);
    client
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = admin(&url).await;
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

/// Polls `check` until it returns `Some`, failing the test at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A rustls client config with HTTP/2 offered by ALPN.
pub fn h2_config(tls: &MutualTls) -> rustls::ClientConfig {
    let mut config = tls::hub_client_config(tls).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// The hub's CA-only client configuration (no client certificate).
pub fn anonymous_config(pki: &Pki) -> Arc<rustls::ClientConfig> {
    Arc::new(tls::source_client_config(Some(&pki.ca_path)).unwrap())
}

/// The keys of `resource` at the hub, in order.
pub async fn keys(hub: &Hub, resource: &str) -> Vec<String> {
    exported(hub, resource)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect()
}

/// Stream A writes a, b, c; a resync stream B re-sends a (changed) and d over two batches,
/// the second completing its baseline: b and c are swept, only B's keys remain, and a
/// batch before the completing one sweeps nothing.
pub async fn baseline_sweeps_the_keys_other_streams_wrote(pki: &Pki, hub: &Hub) {
    const NODE: &str = "sweep-node";
    const RESOURCE: &str = "SWEEP-0001";
    let client = client(&pki.client(NODE));
    let old = new_stream();
    let first = Push::new(
        NODE,
        RESOURCE,
        &old,
        1,
        vec![
            upsert("a", r#"{"v":1}"#),
            upsert("b", r#"{"v":1}"#),
            upsert("c", r#"{"v":1}"#),
        ],
    );
    ack(first.send(&client, hub).await).await;
    let new = new_stream();
    let part = Push::new(NODE, RESOURCE, &new, 1, vec![upsert("a", r#"{"v":2}"#)]);
    let part_ack = ack(part.send(&client, hub).await).await;
    assert_eq!(part_ack.swept, 0, "only the completing batch sweeps");
    assert_eq!(keys(hub, RESOURCE).await, ["a", "b", "c"]);
    let last = Push::new(NODE, RESOURCE, &new, 2, vec![upsert("d", r#"{"v":2}"#)]);
    let done = ack(last.clone().completing_baseline().send(&client, hub).await).await;
    assert_eq!((done.records, done.swept, done.last_seq), (1, 2, 2));
    assert_eq!(
        exported(hub, RESOURCE).await,
        vec![
            ("a".to_owned(), r#"{"v":2}"#.to_owned()),
            ("d".to_owned(), r#"{"v":2}"#.to_owned()),
        ]
    );
    // Resent after a lost answer: a duplicate, nothing swept again.
    let again = ack(last.completing_baseline().send(&client, hub).await).await;
    assert_eq!(
        (again.status, again.swept),
        (batch::AckStatus::Duplicate, 0)
    );
}

/// An empty batch is applied (0 records); an empty batch completing a new stream's baseline
/// empties the resource (the source table is empty).
pub async fn empty_baseline_empties_the_resource(pki: &Pki, hub: &Hub) {
    const NODE: &str = "empty-node";
    const RESOURCE: &str = "EMPTY-0001";
    let client = client(&pki.client(NODE));
    let old = new_stream();
    let first = Push::new(NODE, RESOURCE, &old, 1, vec![upsert("a", "{}")]);
    ack(first.send(&client, hub).await).await;
    let empty = ack(Push::new(NODE, RESOURCE, &old, 2, vec![])
        .send(&client, hub)
        .await)
    .await;
    assert_eq!(
        (empty.status, empty.records),
        (batch::AckStatus::Applied, 0)
    );
    // A zero-length body is an empty batch too.
    let mut zero = Push::new(NODE, RESOURCE, &old, 3, vec![]);
    zero.body = Some(Vec::new());
    assert_eq!(ack(zero.send(&client, hub).await).await.last_seq, 3);
    assert_eq!(keys(hub, RESOURCE).await, ["a"]);
    let baseline = Push::new(NODE, RESOURCE, &new_stream(), 1, vec![]).completing_baseline();
    let done = ack(baseline.send(&client, hub).await).await;
    assert_eq!((done.records, done.swept), (0, 1));
    assert!(keys(hub, RESOURCE).await.is_empty());
}
