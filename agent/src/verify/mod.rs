//! The verification service (数据不落地核验): `POST /v1/verify` over mutual TLS. The hub (or
//! another requester with a certificate from `[verify] client_ca`) sends subjects and
//! claimed values; the agent compares them with the source, live, and answers match /
//! mismatch / no value per field, and nothing else (docs/PROTOCOL.md §11).
//!
//! Request handling, in order: the requester's identity from its certificate
//! ([`RequesterIdentity`]; nothing in the body can claim one) → the body within
//! [`Service::max_body`] (413) → [`VerifyRequest::parse`] (400) → the resource and the
//! requester's grant on it ([`grant::resource_for`], 403: an unknown resource and an ungranted
//! one answer the same) → the claimed names, each resolved once to a configured field, and
//! the subjects, each asked about once ([`question`], 400) → the grant covers the fields
//! ([`grant::covers`], 403) → the claims fit their fields' semantics (400) → the budgets
//! ([`ledger::Ledger::admit`], 429 with `Retry-After`), which hold every question *before*
//! anything is looked up → one lookup of every subject ([`Connector::lookup`]:
//! parameterized, one statement per batch of keys, on connections of its own, within
//! `query_timeout`, else 504; an unreachable source 503) → comparison ([`compare`]) → the
//! questions answered other than `match` settled into the ledger → an audit record holding
//! the charge → the answer. Every request, answered or refused, leaves one audit record
//! ([`crate::audit::Writer`]) naming subjects only by keyed pseudonym; the ledger is rebuilt
//! from its snapshot and those records at start ([`ledger::load`]).
//!
//! A connection refused in the TLS handshake (a certificate from another CA, expired, none,
//! not TLS, too slow) never reaches a handler: it is counted
//! (`exchange_tls_handshake_failures_total{listener="verify",reason}`) and audited as
//! `connection.rejected` in aggregate ([`refusals`]: one entry per address and reason per
//! interval, with a count), so that the accept loop never waits for the disk and a stranger's
//! flood costs a few entries.
//!
//! Architecture invariant: no stored value and no claimed value leaves this module except
//! as a [`FieldResult`]: not in an answer, an error, a log line or the audit record.
//! Connector errors, which may quote a bound parameter, are logged by kind only.

pub use exchange_rules::compare;
pub mod grant;
pub mod ledger;
pub mod psi;
pub mod question;
pub mod refusals;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use axum::{Extension, Json};
use exchange_connectors::{Connector, ConnectorError, Value};
use exchange_protocol::batch::ErrorBody;
use exchange_protocol::server::{Observers, Peer, Rejection};
use exchange_protocol::verify::{
    AnswerItem, Claim, FieldResult, SubjectResult, VERIFY_PATH, VerifyAnswer, VerifyRequest,
};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::audit;
use crate::config::verify::{RequesterIdentity, Verify};
use crate::config::{Config, Resource};
use crate::identifier;
use compare::{ClaimError, Context, Outcome};
use ledger::{Ask, At, Charge, Guess, Hold, Ledger, Throttled};
use question::{Columns, Questions, Unfit};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The configuration has no `[verify]`.
    #[error("{}", exchange_protocol::tr!(
        "the configuration has no [verify] section",
        "配置中没有 [verify] 节"
    ))]
    NotConfigured,
    /// The TLS material of `[verify]` is unusable.
    #[error("{}", exchange_protocol::tr!(
        "cannot set up TLS from [verify] (client_ca, cert, key): {0}",
        "无法根据 [verify]（client_ca、cert、key）建立 TLS：{0}", .0
    ))]
    Tls(exchange_protocol::tls::TlsError),
    /// A source cannot be opened.
    #[error(transparent)]
    Source(#[from] ConnectorError),
    /// The listener cannot be bound, or failed.
    #[error("{}", exchange_protocol::tr!(
        "the verification listener on {addr} ([verify] listen) is unusable",
        "核验监听地址 {addr}（[verify] listen）不可用"
    ))]
    Listener {
        /// `[verify] listen`, or the address it was bound to.
        addr: String,
        /// Why (the port taken, not allowed…).
        #[source]
        source: std::io::Error,
    },
    /// The data directory (where the audit log is) is unusable.
    #[error("{0}")]
    DataDir(String),
    /// The ledger of budgets cannot be restored.
    #[error("{}", exchange_protocol::tr!(
        "cannot restore the verification budgets: {0}",
        "无法恢复核验额度：{0}", .0
    ))]
    Ledger(ledger::LedgerError),
}

// The causes above are in their messages, so they are not sources too (a chain printed with
// `{:#}` names each once).
impl From<exchange_protocol::tls::TlsError> for VerifyError {
    fn from(e: exchange_protocol::tls::TlsError) -> Self {
        VerifyError::Tls(e)
    }
}

impl From<ledger::LedgerError> for VerifyError {
    fn from(e: ledger::LedgerError) -> Self {
        VerifyError::Ledger(e)
    }
}

/// What a configuration gives the service; replaced whole by [`Service::reload`].
struct Settings {
    /// The configuration (resources, grants, keys).
    config: Arc<Config>,
    /// Its `[verify]`.
    verify: Verify,
    /// A connector per source, with connections of its own (`[verify] pool_size`).
    lookups: HashMap<String, Arc<dyn Connector>>,
}

/// What [`Service::prepare`] built from a new configuration, ready for [`Service::apply`].
pub struct Prepared {
    /// Grants, comparison rules, quotas, lookups.
    settings: Settings,
    /// The listener's TLS configuration.
    tls: rustls::ServerConfig,
}

/// The verification service: settings, budgets and the audit log.
pub struct Service {
    /// The current settings (grants reload with the configuration).
    settings: RwLock<Arc<Settings>>,
    /// The TLS configuration of new handshakes (reloads with the configuration).
    tls: exchange_protocol::server::ServerTls,
    /// Budgets against enumeration (restored at start, kept across reloads).
    ledger: Arc<Mutex<Ledger>>,
    /// The audit log.
    audit: audit::Writer,
    /// Where the audit log and the ledger's snapshot are.
    data_dir: PathBuf,
    /// Private set intersection scans answered at once (their cost is a scan of the resource
    /// and a scalar multiplication per row and field).
    psi_scans: tokio::sync::Semaphore,
    /// Held while the ledger's snapshot is saved: one save at a time.
    saving: Mutex<()>,
}

/// How often the ledger's snapshot is saved while the service runs (also at shutdown).
const LEDGER_SAVE: Duration = Duration::from_secs(60);

impl Service {
    /// A service for `config`, which must have `[verify]`; its budgets as the last run left
    /// them.
    pub fn new(config: Arc<Config>) -> Result<Service, VerifyError> {
        let Prepared { settings, tls } = Self::build(config)?;
        let data_dir = settings.config.node.data_dir.clone();
        crate::data_dir::prepare(&data_dir).map_err(VerifyError::DataDir)?;
        // Charges older than the longest window (and a day, for the daily counters) count no
        // more.
        let horizon = settings.verify.quotas.lockout + Duration::from_secs(86_400 + 3600);
        let ledger = ledger::load(&data_dir, horizon)?;
        Ok(Service {
            audit: audit::Writer::new(&data_dir),
            settings: RwLock::new(Arc::new(settings)),
            tls: exchange_protocol::server::ServerTls::new(tls),
            ledger: Arc::new(Mutex::new(ledger)),
            data_dir,
            psi_scans: tokio::sync::Semaphore::new(1),
            saving: Mutex::new(()),
        })
    }

    /// Saves the ledger's snapshot if anything changed since the last one. Audit records
    /// written from the snapshot's instant on are replayed over it at the next start.
    pub fn save_ledger(&self) -> Result<(), ledger::LedgerError> {
        let _one = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        // Every audit record up to this entry has its charge in the ledger already.
        let audit_sm3 = audit::last_sm3(&self.data_dir);
        let taken = At::now();
        let mut copy = {
            let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            if !ledger.is_dirty() {
                return Ok(());
            }
            ledger.take_copy()
        };
        ledger::save(&self.data_dir, &copy.snapshot(taken, audit_sm3))
    }

    fn build(config: Arc<Config>) -> Result<Prepared, VerifyError> {
        let verify = config.verify.clone().ok_or(VerifyError::NotConfigured)?;
        let mut tls = exchange_protocol::tls::mutual_server_config(&verify.tls)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut lookups = HashMap::new();
        for r in &config.resources {
            if r.verification.grants.is_empty() || lookups.contains_key(&r.source) {
                continue;
            }
            let mut spec = config.sources[&r.source].clone();
            spec.pool_size = verify.pool_size;
            lookups.insert(r.source.clone(), exchange_connectors::open(&spec)?);
        }
        Ok(Prepared {
            settings: Settings {
                config,
                verify,
                lookups,
            },
            tls,
        })
    }

    /// Builds what a new configuration gives the service (grants, comparison semantics,
    /// quotas, sources, TLS material) without taking it: an error here leaves the service
    /// exactly as it is.
    pub fn prepare(&self, config: Arc<Config>) -> Result<Prepared, VerifyError> {
        Self::build(config)
    }

    /// Takes what [`Service::prepare`] built: requests already running finish under the old
    /// settings; handshakes from now on use the new TLS material (client CA, certificate,
    /// key, minimum version, CRLs), connections already open keep theirs until they close.
    /// The listener's address stays as started.
    pub fn apply(&self, next: Prepared) {
        self.tls.replace(next.tls);
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next.settings);
    }

    /// [`Service::prepare`] then [`Service::apply`].
    pub fn reload(&self, config: Arc<Config>) -> Result<(), VerifyError> {
        let next = self.prepare(config)?;
        self.apply(next);
        Ok(())
    }

    fn current(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The largest request body accepted: 64 KiB plus 4 KiB per item allowed.
    pub fn max_body(&self) -> usize {
        64 * 1024 + self.current().verify.max_items * 4096
    }

    /// The routes: `POST /v1/verify`; anything else 404/405 with a JSON error.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(
                VERIFY_PATH,
                endpoint("verify", |service, settings, requester, request, record| {
                    Box::pin(answer(service, settings, requester, request, record))
                }),
            )
            .route(
                exchange_protocol::psi::PSI_PATH,
                endpoint("verify.psi", |service, settings, requester, request, record| {
                    Box::pin(psi::answer(service, settings, requester, request, record))
                }),
            )
            .fallback(|| async {
                refusal(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no such endpoint; the verification service answers POST {VERIFY_PATH} and POST {}",
                        exchange_protocol::psi::PSI_PATH
                    ),
                )
            })
            .with_state(self)
    }
}

/// Serves the verification service of `config` on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), VerifyError> {
    let service = Arc::new(Service::new(config)?);
    serve(listener, service, shutdown).await
}

/// Serves `service` on `listener` until `shutdown` resolves (the caller keeps the service to
/// reload it).
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), VerifyError> {
    let verify = service.current().verify.clone();
    if let Ok(addr) = listener.local_addr() {
        info!(addr = %addr, max_items = verify.max_items, "Verification service listening on {addr}.");
    }
    let limits = verify.listener;
    let counters = std::sync::Arc::new(exchange_protocol::server::Counters::default());
    crate::metrics::global().listener("verify", counters.clone());
    let (refusals, flusher) = refusals::Refusals::start(service.audit.clone());
    let observers = Observers {
        connections: Default::default(),
        rejections: Some(Arc::new(move |r: Rejection| {
            crate::metrics::global().handshake_failed("verify", r.reason.label());
            refusals.report(r);
        })),
        counters,
    };
    let saver = tokio::spawn({
        let service = service.clone();
        async move {
            let mut every = tokio::time::interval(LEDGER_SAVE);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                save_ledger_logged(&service).await;
            }
        }
    });
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let served = exchange_protocol::server::serve_router(
        "Verification service",
        listener,
        service.tls.clone(),
        service.clone().router(),
        limits,
        observers,
        shutdown,
    )
    .await
    .map_err(|e| VerifyError::Listener { addr, source: e.0 });
    saver.abort();
    flusher.finish().await;
    save_ledger_logged(&service).await;
    served
}

/// Saves the ledger off the async workers; a failure is logged (the audit records still hold
/// every charge, so the next start replays more of them).
async fn save_ledger_logged(service: &Arc<Service>) {
    let service = service.clone();
    match tokio::task::spawn_blocking(move || service.save_ledger()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "Cannot save the verification budgets; they are rebuilt from the audit log at the next start.")
        }
        Err(e) => warn!(error = %e, "The task saving the verification budgets failed."),
    }
}

/// A JSON error answer.
fn refusal(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

/// A refused request: status, sentence, and for 429 the seconds to wait.
struct Refused {
    /// The HTTP status.
    status: StatusCode,
    /// What was wrong (never a subject or a value).
    message: String,
    /// `Retry-After` (429).
    retry_after: Option<u64>,
    /// The audit outcome: `refused`, `denied` or `throttled`.
    outcome: &'static str,
}

impl Refused {
    fn new(status: StatusCode, message: impl Into<String>) -> Refused {
        Refused {
            status,
            message: message.into(),
            retry_after: None,
            outcome: "refused",
        }
    }
}

/// What the audit record of a request holds.
#[derive(Default)]
struct Record {
    /// The request's id, purpose and case reference, once parsed.
    request: Option<(String, String, String)>,
    /// The resource code, once parsed.
    resource: String,
    /// Items in the request.
    items: usize,
    /// The subjects as keyed pseudonyms.
    subjects: Vec<String>,
    /// Counts of results.
    counts: BTreeMap<&'static str, u64>,
    /// What the budgets were charged, once admitted (replayed into the ledger at start).
    charged: Option<Charge>,
}

impl Record {
    /// What the parsed request says, for the record.
    fn begin(
        &mut self,
        request_id: &str,
        purpose: &str,
        case_ref: &str,
        resource: &str,
        items: usize,
    ) {
        self.request = Some((
            request_id.to_owned(),
            purpose.to_owned(),
            case_ref.to_owned(),
        ));
        self.resource = resource.to_owned();
        self.items = items;
    }
}

/// Questions held in the ledger by an admitted request: settled once answered, released if
/// the request ends before (an error, or a client that went away).
struct Held {
    /// The ledger.
    ledger: Arc<Mutex<Ledger>>,
    /// The hold, until settled.
    hold: Option<Hold>,
}

impl Held {
    /// Settles the hold: `missed[i]` says whether question `i` was answered other than
    /// `match`.
    fn settle(mut self, missed: &[bool]) {
        if let Some(hold) = self.hold.take() {
            lock(&self.ledger).settle(hold, missed, At::now());
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            lock(&self.ledger).release(hold);
        }
    }
}

/// The ledger, locked (a panic elsewhere never makes it unusable).
fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

/// Charges `ask` against the requester's budgets on `resource` before anything is looked up
/// (`429` with `Retry-After` when over: nothing is charged then).
fn admit(
    service: &Service,
    settings: &Settings,
    requester: &str,
    resource: &str,
    ask: &Ask,
) -> Result<Held, Refused> {
    let hold = lock(&service.ledger)
        .admit(&settings.verify.quotas, requester, resource, ask, At::now())
        .map_err(
            |Throttled {
                 reason,
                 retry_after,
             }| Refused {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: reason,
                retry_after: Some(retry_after),
                outcome: "throttled",
            },
        )?;
    Ok(Held {
        ledger: service.ledger.clone(),
        hold: Some(hold),
    })
}

/// A `403` refusal.
fn denied(message: impl Into<String>) -> Refused {
    Refused {
        status: StatusCode::FORBIDDEN,
        message: message.into(),
        retry_after: None,
        outcome: "denied",
    }
}

/// Authorizes a request before anything resource-specific is told (docs/PROTOCOL.md
/// §11.5): the resource and the requester's grant on it (`403`, an unknown resource as an
/// ungranted one), then the claimed names (`names[i]`: item `i`'s) resolved once each
/// (`400`), then that one grant covers them (`403`). By private set intersection (`psi`)
/// the resource must reveal membership, the grant say `psi = true`, and an enumerable field
/// need `psi_enumerable = true`.
fn authorize<'s, S: AsRef<str>>(
    settings: &'s Settings,
    requester: &str,
    code: &str,
    purpose: &str,
    names: &[Vec<S>],
    psi: bool,
) -> Result<(&'s Resource, Questions), Refused> {
    let now = chrono::Utc::now();
    let resource = grant::resource_for(&settings.config, code, requester, purpose, now)
        .map_err(|e| denied(e.to_string()))?;
    if psi && !resource.verification.reveal_not_found {
        return Err(denied(format!(
            "resource `{}` does not reveal whether a subject is known (reveal_not_found = false), and a private set intersection answer would; use POST /v1/verify",
            resource.code
        )));
    }
    let questions = Questions::resolve(resource, names).map_err(unfit)?;
    grant::covers(resource, requester, purpose, &questions.names(), psi, now)
        .map_err(|e| denied(e.to_string()))?;
    Ok((resource, questions))
}

/// A `400` refusal for questions that cannot be asked.
fn unfit(e: Unfit) -> Refused {
    Refused::new(StatusCode::BAD_REQUEST, e.to_string())
}

/// The route of an endpoint: `POST` handled by [`serve_request`] with `answer`, its requests
/// audited as `action`; another method `405`.
fn endpoint<T: serde::Serialize + Send + 'static>(
    action: &'static str,
    answer: Answering<T>,
) -> MethodRouter<Arc<Service>> {
    post(
        move |State(service): State<Arc<Service>>,
              Extension(peer): Extension<Peer>,
              request: Request| { serve_request(service, peer, request, action, answer) },
    )
    .fallback(|| async { refusal(StatusCode::METHOD_NOT_ALLOWED, "use POST") })
}

/// How an endpoint answers a request, given its service, settings, requester, the request and
/// the audit record to fill in.
type Answering<T> =
    for<'a> fn(
        &'a Service,
        &'a Settings,
        Option<&'a str>,
        Request,
        &'a mut Record,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<T, Refused>> + Send + 'a>>;

/// Handles a request of either endpoint to its end ([`to_the_end`]): the requester from the
/// certificate, the endpoint's answer, then its audit record (`action`) and the response.
async fn serve_request<T: serde::Serialize + Send + 'static>(
    service: Arc<Service>,
    peer: Peer,
    request: Request,
    action: &'static str,
    answer: Answering<T>,
) -> Response {
    to_the_end(async move {
        let settings = service.current();
        let started = Instant::now();
        let requester = requester_of(&peer, settings.verify.requester_identity);
        let mut record = Record::default();
        let result = answer(
            &service,
            &settings,
            requester.as_deref(),
            request,
            &mut record,
        )
        .await;
        respond(&service, &peer, requester, record, started, action, result).await
    })
    .await
}

/// Runs a request's handling on a task of its own, so that it goes on to its end (its charge
/// settled, its audit record written) when the requester goes away and the connection drops
/// the handler.
async fn to_the_end(handling: impl Future<Output = Response> + Send + 'static) -> Response {
    tokio::spawn(handling)
        .await
        .unwrap_or_else(|_| refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}

/// Writes the audit record of a request, then answers it (`503` instead when the record
/// cannot be written).
async fn respond<T: serde::Serialize>(
    service: &Arc<Service>,
    peer: &Peer,
    requester: Option<String>,
    record: Record,
    started: Instant,
    action: &'static str,
    result: Result<T, Refused>,
) -> Response {
    let (status, outcome, reason) = match &result {
        Ok(_) => (StatusCode::OK, "answered", None),
        Err(r) => (r.status, r.outcome, Some(r.message.clone())),
    };
    let (request_id, purpose, case_ref) = record.request.clone().unwrap_or_default();
    let detail = serde_json::json!({
        "outcome": outcome,
        "status": status.as_u16(),
        "requester": requester.as_deref().unwrap_or("-"),
        "peer": peer.addr.to_string(),
        "request_id": request_id,
        "purpose": purpose,
        "case_ref": case_ref,
        "items": record.items,
        "results": record.counts,
        "subjects": record.subjects,
        "reason": reason,
    });
    let mut detail = detail;
    if let Some(charged) = &record.charged {
        detail["charged"] = serde_json::to_value(charged).expect("a charge serializes");
    }
    let actor = requester.clone().unwrap_or_else(|| "-".into());
    let resource = if record.resource.is_empty() {
        "-".to_owned()
    } else {
        record.resource.clone()
    };
    if let Err(e) = service
        .audit
        .append(&actor, action, &resource, detail)
        .await
    {
        warn!(error = %e, "Cannot write the audit record of a verification; the request is refused.");
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the provider cannot record this request in its audit log; nothing was answered",
        );
    }
    crate::metrics::global().verify_answered(
        if action == "verify" {
            "verify"
        } else {
            "verify_psi"
        },
        outcome,
    );
    info!(
        requester = requester.as_deref().unwrap_or("-"),
        resource = %record.resource,
        items = record.items,
        status = status.as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Verification {outcome}."
    );
    match result {
        Ok(answer) => (StatusCode::OK, Json(answer)).into_response(),
        Err(r) => {
            let mut response = refusal(r.status, r.message);
            if let Some(secs) = r.retry_after {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&secs.to_string()).expect("digits"),
                );
            }
            response
        }
    }
}

/// The requester's identity from its certificate.
fn requester_of(peer: &Peer, how: RequesterIdentity) -> Option<String> {
    match how {
        RequesterIdentity::CommonName => peer.node.clone(),
        RequesterIdentity::UsccUri => peer
            .certificate
            .as_deref()
            .map(exchange_protocol::tls::peer_uri_names)
            .unwrap_or_default()
            .into_iter()
            .find_map(|uri| {
                uri.strip_prefix("urn:uscc:")
                    .filter(|code| identifier::is_valid_uscc(code))
                    .map(str::to_owned)
            }),
    }
}

/// The refusal of a request without a requester identity.
fn no_identity(how: RequesterIdentity) -> Refused {
    let what = match how {
        RequesterIdentity::CommonName => "a common name",
        RequesterIdentity::UsccUri => {
            "a subjectAltName URI urn:uscc:<统一社会信用代码> with a valid check character"
        }
    };
    denied(format!(
        "the client certificate has no {what}, so the requester is unknown"
    ))
}

/// Answers a clear verification request: the steps of the module's opening, in order.
async fn answer(
    service: &Service,
    settings: &Settings,
    requester: Option<&str>,
    request: Request,
    record: &mut Record,
) -> Result<VerifyAnswer, Refused> {
    let (requester, body) = identified_body(service, settings, requester, request).await?;
    let parsed = VerifyRequest::parse(&body, settings.verify.max_items)
        .map_err(|e| Refused::new(StatusCode::BAD_REQUEST, e.0))?;
    drop(body);
    let (resource, questions) = resolve(settings, requester, record, &parsed, false)?;
    let subjects: Vec<String> = parsed
        .items
        .iter()
        .map(|i| subject_key(resource, &i.subject))
        .collect();
    question::distinct(&subjects).map_err(unfit)?;
    let digests = pseudonyms(settings, resource, &subjects, record);
    let cx = Context {
        comparison_key: settings.verify.comparison_key.as_ref(),
        time_zone: settings.config.keys.time_zone,
    };
    check_claims(&parsed, &questions, cx)?;

    // Every question is held before anything is looked up.
    let ask = Ask {
        items: parsed.items.len() as u64,
        subjects: digests.clone(),
        guesses: guesses(&questions, &digests),
        ..Ask::default()
    };
    let held = admit(service, settings, requester, &resource.code, &ask)?;
    record.charged = Some(Charge {
        items: ask.items,
        subjects: record.subjects.clone(),
        ..Charge::default()
    });

    let rows = lookup(settings, resource, &questions, &subjects).await?;
    let compared = Compared::of(
        &parsed,
        &questions,
        &subjects,
        &rows,
        cx,
        resource.verification.reveal_not_found,
        record,
    );
    held.settle(&compared.missed);
    if let Some(charged) = &mut record.charged {
        charged.mismatched = compared.mismatched;
    }
    Ok(VerifyAnswer {
        request_id: parsed.request_id,
        items: compared.items,
    })
}

/// The first steps of both endpoints: the requester's identity (`403` without one), then
/// the body within the size and time limits.
async fn identified_body<'r>(
    service: &Service,
    settings: &Settings,
    requester: Option<&'r str>,
    request: Request,
) -> Result<(&'r str, Vec<u8>), Refused> {
    let requester = requester.ok_or_else(|| no_identity(settings.verify.requester_identity))?;
    let body = read_body(
        request.into_body(),
        service.max_body(),
        settings.verify.body_timeout,
    )
    .await?;
    Ok((requester, body))
}

/// Records what a request says it is (id, purpose, case, resource, items), then resolves its
/// resource, the requester's grant and the claimed names of its items ([`authorize`]); for
/// both endpoints (a private set intersection request, `psi`, in the shape of a clear one).
fn resolve<'s>(
    settings: &'s Settings,
    requester: &str,
    record: &mut Record,
    request: &VerifyRequest,
    psi: bool,
) -> Result<(&'s Resource, Questions), Refused> {
    record.begin(
        &request.request_id,
        &request.purpose,
        &request.case_ref,
        &request.resource,
        request.items.len(),
    );
    let names: Vec<Vec<&str>> = request
        .items
        .iter()
        .map(|i| i.claims.keys().map(String::as_str).collect())
        .collect();
    authorize(
        settings,
        requester,
        &request.resource,
        &request.purpose,
        &names,
        psi,
    )
}

/// The keyed digest of each subject (the ledger's), its pseudonym noted in the record.
fn pseudonyms(
    settings: &Settings,
    resource: &Resource,
    subjects: &[String],
    record: &mut Record,
) -> Vec<ledger::SubjectDigest> {
    let pseudonym = settings
        .config
        .keys
        .pseudonym
        .as_ref()
        .expect("checked by the configuration");
    let domain = resource.key_kind.as_str();
    let digests: Vec<ledger::SubjectDigest> =
        subjects.iter().map(|s| pseudonym.mac(domain, s)).collect();
    record.subjects = digests.iter().map(|d| pseudonym.token_of_mac(d)).collect();
    digests
}

/// Each question of the request (a subject, by digest, and a field), with whether the field
/// is enumerable.
fn guesses(questions: &Questions, digests: &[ledger::SubjectDigest]) -> Vec<(Guess, bool)> {
    questions
        .items
        .iter()
        .zip(digests)
        .flat_map(|(fields, digest)| {
            fields.iter().map(|f| {
                let field = &questions.fields[*f];
                (
                    Guess {
                        subject: *digest,
                        field: field.name.clone(),
                    },
                    field.enumerable,
                )
            })
        })
        .collect()
}

/// The claims of a request compared with the rows looked up.
struct Compared {
    /// The answer's items, in request order.
    items: Vec<AnswerItem>,
    /// Per question, in request order: whether it was answered other than `match`.
    missed: Vec<bool>,
    /// Per subject pseudonym: the configured names of the fields answered other than
    /// `match`.
    mismatched: BTreeMap<String, Vec<String>>,
}

impl Compared {
    /// Compares every claim of `parsed` with the stored value of its subject (`rows`, by
    /// subject key, as [`lookup`] reads them), counting the results in the record. Whether a
    /// subject was found, and a stored NULL, are told only where `reveal` allows.
    fn of(
        parsed: &VerifyRequest,
        questions: &Questions,
        subjects: &[String],
        rows: &HashMap<String, Vec<Option<Value>>>,
        cx: Context<'_>,
        reveal: bool,
        record: &mut Record,
    ) -> Compared {
        let mut compared = Compared {
            items: Vec::with_capacity(parsed.items.len()),
            missed: Vec::new(),
            mismatched: BTreeMap::new(),
        };
        for (((item, fields), subject), token) in parsed
            .items
            .iter()
            .zip(&questions.items)
            .zip(subjects)
            .zip(&record.subjects)
        {
            let row = rows.get(subject);
            let mut results = BTreeMap::new();
            for ((_, claim), f) in item.claims.iter().zip(fields) {
                let field = &questions.fields[*f];
                let stored = row.map(|values| values[Columns::position(*f)].as_ref());
                let result = field_result(field, claim, stored, cx, reveal);
                compared.missed.push(result != FieldResult::Match);
                if result != FieldResult::Match {
                    compared
                        .mismatched
                        .entry(token.clone())
                        .or_default()
                        .push(field.name.clone());
                }
                *record.counts.entry(result.as_str()).or_default() += 1;
                results.insert(field.asked_as.clone(), result);
            }
            let found = if row.is_some() {
                SubjectResult::Found
            } else {
                SubjectResult::NotFound
            };
            *record
                .counts
                .entry(match found {
                    SubjectResult::Found => "found",
                    SubjectResult::NotFound => "not_found",
                })
                .or_default() += 1;
            compared.items.push(AnswerItem {
                subject: reveal.then_some(found),
                fields: results,
            });
        }
        compared
    }
}

/// The answer about one claim: `stored` is `None` for a subject not found, `Some(None)` for
/// a stored value that cannot be converted (never a match).
fn field_result(
    field: &question::Field,
    claim: &Claim,
    stored: Option<Option<&Value>>,
    cx: Context<'_>,
    reveal: bool,
) -> FieldResult {
    let outcome = match stored {
        None => Outcome::Mismatch,
        Some(None) => Outcome::Mismatch,
        Some(Some(stored)) => compare::compare(field.compare, &field.asked_as, claim, stored, cx)
            .unwrap_or(Outcome::Mismatch),
    };
    match outcome {
        Outcome::Match => FieldResult::Match,
        Outcome::Mismatch => FieldResult::Mismatch,
        // A NULL tells that the subject is known: only where that may be revealed.
        Outcome::NoValue if reveal => FieldResult::NoValue,
        Outcome::NoValue => FieldResult::Mismatch,
    }
}

/// Refuses (`400`) a claim that does not fit its field: a clear claim on a `hmac` field, an
/// HMAC claim without a comparison key.
fn check_claims(
    parsed: &VerifyRequest,
    questions: &Questions,
    cx: Context<'_>,
) -> Result<(), Refused> {
    for (i, (item, fields)) in parsed.items.iter().zip(&questions.items).enumerate() {
        for ((name, claim), f) in item.claims.iter().zip(fields) {
            let problem = match (questions.fields[*f].compare, claim) {
                (compare::Compare::Hmac, Claim::Value(_)) => Some(ClaimError::HmacRequired),
                (_, Claim::Hmac(_)) if cx.comparison_key.is_none() => {
                    Some(ClaimError::NoComparisonKey)
                }
                _ => None,
            };
            if let Some(p) = problem {
                return Err(Refused::new(
                    StatusCode::BAD_REQUEST,
                    claim_error(p, i, name),
                ));
            }
        }
    }
    Ok(())
}

/// The sentence of a claim that does not fit its field.
fn claim_error(e: ClaimError, item: usize, field: &str) -> String {
    match e {
        ClaimError::HmacRequired => format!(
            "items[{item}].claims.{field}: field `{field}` is compared by HMAC only; send {{\"hmac\": \"<64 hex digits>\"}}"
        ),
        ClaimError::NoComparisonKey => format!(
            "items[{item}].claims.{field}: this node has no comparison key, so HMAC claims cannot be compared; send the value"
        ),
    }
}

/// Reads a body of at most `limit` bytes (413 past it, before reading when the length is
/// announced) within `timeout` (408 past it).
async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Vec<u8>, Refused> {
    let too_large = || {
        Refused::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes; send fewer items per request"),
        )
    };
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(Refused::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s (body_timeout)",
                timeout.as_secs()
            ),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "the request body could not be read to its end",
        )),
    }
}

/// The key a subject is looked up and matched by: normalized as the resource's key kind (a
/// value that is not a valid identifier of its kind: as far as it can be cleaned).
fn subject_key(resource: &Resource, subject: &str) -> String {
    match identifier::normalize(resource.key_kind, subject) {
        Ok(n) => n,
        Err(invalid) => invalid.cleaned,
    }
}

/// The connector answering lookups and scans of `resource`.
fn connector_of(settings: &Settings, resource: &Resource) -> Result<Arc<dyn Connector>, Refused> {
    settings
        .lookups
        .get(&resource.source)
        .cloned()
        .ok_or_else(|| {
            Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "resource `{}` has no source open for verification",
                    resource.code
                ),
            )
        })
}

/// Reads the claimed fields of every subject (distinct) in one lookup; per normalized key,
/// the row's values in the order of [`Columns`] (`None`: a value that cannot be converted,
/// which never matches).
async fn lookup(
    settings: &Settings,
    resource: &Resource,
    questions: &Questions,
    subjects: &[String],
) -> Result<HashMap<String, Vec<Option<Value>>>, Refused> {
    let connector = connector_of(settings, resource)?;
    let columns = Columns::of(resource, questions);
    let selection = columns.selection(resource, false);
    let keys: Vec<Value> = subjects.iter().cloned().map(Value::Text).collect();
    let read = tokio::time::timeout(
        settings.verify.query_timeout,
        connector.lookup(&selection, &columns.key, &keys),
    )
    .await;
    let rows = match read {
        Err(_) => {
            warn!(resource = %resource.code, timeout_ms = settings.verify.query_timeout.as_millis() as u64, "Verification lookup timed out.");
            return Err(Refused::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the source of resource `{}` did not answer within {} ms; retry later",
                    resource.code,
                    settings.verify.query_timeout.as_millis()
                ),
            ));
        }
        Ok(Err(e)) => return Err(source_failed(resource, &e)),
        Ok(Ok(rows)) => rows,
    };
    let mut out = HashMap::new();
    for row in rows {
        let values: Vec<Option<Value>> = row.values.into_iter().map(Result::ok).collect();
        let Some(key) = values.get(Columns::KEY).and_then(|k| k.as_ref()?.to_text()) else {
            continue;
        };
        out.entry(subject_key(resource, &key)).or_insert(values);
    }
    Ok(out)
}

/// The refusal of a lookup or scan the source failed (`503` if retrying may help, else `500`);
/// logged by kind only, as a statement error may quote a bound key.
fn source_failed(resource: &Resource, e: &ConnectorError) -> Refused {
    let kind = match e {
        ConnectorError::Unreachable { .. } => e.to_string(),
        ConnectorError::Statement { source_name, .. } => {
            format!("source `{source_name}` refused the lookup statement")
        }
        ConnectorError::Config { source_name, .. } => {
            format!("source `{source_name}` cannot bind the lookup (key type)")
        }
    };
    warn!(resource = %resource.code, error = %kind, "Verification lookup failed.");
    let status = if e.is_transient() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    Refused::new(
        status,
        format!(
            "the source of resource `{}` cannot be read now; retry later",
            resource.code
        ),
    )
}
