//! `exchange-hub verify`: the requester side of the verification service (docs/PROTOCOL.md
//! §11). Sends subjects and claimed values to an agent over mutual TLS, presenting the hub's
//! `[client]` certificate, and reads back match / mismatch / no value per field.
//!
//! Claims file (`--file claims.csv`): UTF-8 CSV (RFC 4180 quoting), a header row `subject,
//! <field>, <field> …`, then one subject per row; an empty cell claims nothing for that
//! field. The answers are written next to it as `<name>.answers.csv`: the header `row,
//! subject, found, <field> …`, then per row its line number in the claims file, the subject
//! as given, `found` / `not_found` (empty where the resource does not reveal it) and each
//! field's result (`match`, `mismatch`, `no_value`, empty where nothing was claimed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use exchange_protocol::batch::ErrorBody;
use exchange_protocol::tls::MutualTls;
use exchange_protocol::tr;
use exchange_protocol::verify::{
    AnswerItem, Claim, Item, SubjectResult, VERIFY_PATH, VerifyAnswer, VerifyRequest,
};

/// Why a verification could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VerifyCallError {
    /// The TLS material of `[client]` is unusable (the TLS error is in the message, not a
    /// `source`: a chain, `{:#}`, names it once).
    #[error("{}", exchange_protocol::tr!(
        "cannot set up TLS from [client] (or [listen]): {0}",
        "无法根据 [client]（或 [listen]）建立 TLS：{0}", .0
    ))]
    Tls(exchange_protocol::tls::TlsError),
    /// The agent URL is not `https://host:port`.
    #[error("{}", exchange_protocol::tr!(
        "`{0}` is not an https:// URL of an agent's verification service",
        "`{0}` 不是前置机核验服务的 https:// 地址", .0
    ))]
    Url(String),
    /// The TLS handshake with the agent failed: `message` says which side refused which
    /// certificate, with the TLS reason, and what to check.
    #[error("{message}")]
    Handshake {
        /// The agent's URL.
        url: String,
        /// The sentence for the operator.
        message: String,
    },
    /// The agent could not be reached or the connection broke.
    #[error("{}", exchange_protocol::tr!(
        "cannot reach the agent at {url}: {reason}",
        "无法连接前置机 {url}：{reason}"
    ))]
    Transport {
        /// The agent's URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The agent refused the request.
    #[error("{}", exchange_protocol::tr!(
        "the agent refused the request ({status}): {message}",
        "前置机拒绝了请求（{status}）：{message}"
    ))]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The agent's error message.
        message: String,
        /// `Retry-After`, if given.
        retry_after: Option<String>,
    },
    /// The answer is not a verification answer.
    #[error("{}", exchange_protocol::tr!(
        "the agent's answer is not a verification answer: {0}",
        "前置机的应答不是核验应答：{0}", .0
    ))]
    Answer(String),
}

impl From<exchange_protocol::tls::TlsError> for VerifyCallError {
    fn from(e: exchange_protocol::tls::TlsError) -> Self {
        VerifyCallError::Tls(e)
    }
}

/// A client of agents' verification services.
pub struct Verifier {
    /// The HTTPS client (the hub's certificate, only the configured CA trusted).
    http: reqwest::Client,
    /// `https://host:port/v1/verify`.
    url: String,
    /// The client's TLS configuration, for finding out why a handshake failed.
    tls: std::sync::Arc<rustls::ClientConfig>,
}

impl Verifier {
    /// A client presenting `tls.cert`/`tls.key` and trusting only `tls.ca`, for the agent at
    /// `agent` (`https://host:port`).
    pub fn new(tls: &MutualTls, agent: &str) -> Result<Verifier, VerifyCallError> {
        if !agent.starts_with("https://") {
            return Err(VerifyCallError::Url(agent.to_owned()));
        }
        let mut config = exchange_protocol::tls::hub_client_config(tls)?;
        // HTTP/2 when the agent offers it (it does): concurrent requests share one connection
        // instead of opening one each, each with a TLS handshake of its own, which under a
        // burst costs more CPU than the verifications (bench/verify).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = std::sync::Arc::new(config.clone());
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .https_only(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| VerifyCallError::Transport {
                url: agent.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Verifier {
            http,
            url: format!("{}{VERIFY_PATH}", agent.trim_end_matches('/')),
            tls,
        })
    }

    /// Sends one request; returns the answer as parsed and as the agent sent it.
    pub async fn verify(
        &self,
        request: &VerifyRequest,
    ) -> Result<(VerifyAnswer, String), VerifyCallError> {
        let url = self.url.clone();
        let text = self
            .post(
                &url,
                serde_json::to_vec(request).expect("a request serializes"),
            )
            .await?;
        let answer: VerifyAnswer = parse_answer(&text)?;
        check_answers(request, &answer.request_id, answer.items.len())?;
        Ok((answer, text))
    }

    /// Sends `request` by private set intersection (docs/PROTOCOL.md §11.6): subjects and
    /// claims leave only blinded; the answer is computed here. HMAC claims are not possible
    /// (the comparison is on blinded values already); a claim must be a value.
    pub async fn verify_psi(
        &self,
        request: &VerifyRequest,
    ) -> Result<VerifyAnswer, VerifyCallError> {
        use exchange_protocol::psi::{self, PsiAnswer, Secret};
        let mut random = [0u8; 64];
        random[..32].copy_from_slice(&rand::random::<[u8; 32]>());
        random[32..].copy_from_slice(&rand::random::<[u8; 32]>());
        let secret = Secret::from_random_bytes(&random);
        let body = blind(&secret, request)?;
        let url = self.url.replace(VERIFY_PATH, psi::PSI_PATH);
        let text = self
            .post(&url, serde_json::to_vec(&body).expect("serializes"))
            .await?;
        let answer: PsiAnswer = parse_answer(&text)?;
        check_answers(request, &answer.request_id, answer.items.len())?;
        unblind(&secret, request, answer)
    }

    /// POSTs a JSON body; the answer's text, or the refusal.
    async fn post(&self, url: &str, body: Vec<u8>) -> Result<String, VerifyCallError> {
        let transport = |e: reqwest::Error| match tls_error_in(&e) {
            Some(tls) => handshake_error(url, &tls),
            None => VerifyCallError::Transport {
                url: url.to_owned(),
                reason: exchange_protocol::cause::chain(&e),
            },
        };
        let sent = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Err(self.failure(url, e).await),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.map_err(transport)?;
        if !status.is_success() {
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or_else(|_| text.chars().take(500).collect());
            return Err(VerifyCallError::Refused {
                status: status.as_u16(),
                message,
                retry_after,
            });
        }
        Ok(text)
    }

    /// Why a request to `url` could not be sent. HTTP/2 may report an agent's refusal of the
    /// hub's certificate only as "channel closed", so when the error names no TLS reason, a
    /// handshake of its own finds out whether TLS was the cause.
    async fn failure(&self, url: &str, e: reqwest::Error) -> VerifyCallError {
        let tls = match tls_error_in(&e) {
            Some(tls) => Some(tls),
            None if !e.is_timeout() => self.handshake_probe().await,
            None => None,
        };
        match tls {
            Some(tls) => handshake_error(url, &tls),
            None => VerifyCallError::Transport {
                url: url.to_owned(),
                reason: exchange_protocol::cause::chain(&e),
            },
        }
    }

    /// A TLS handshake with the agent, as the client makes it; the TLS error it ends with,
    /// if any. In TLS 1.3 the agent checks the hub's certificate after the hub's last
    /// handshake message, so its refusal arrives as an alert on the first read.
    async fn handshake_probe(&self) -> Option<rustls::Error> {
        use rustls::pki_types::ServerName;
        use tokio::io::AsyncReadExt;
        let url = reqwest::Url::parse(&self.url).ok()?;
        let port = url.port_or_known_default()?;
        let host = url.host_str()?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::from(ip),
            Err(_) => ServerName::try_from(bare.to_owned()).ok()?,
        };
        let addr = format!("{host}:{port}");
        let step = Duration::from_secs(5);
        let tcp = tokio::time::timeout(step, tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let mut stream = match tokio::time::timeout(step, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tls_error_in(&e),
            Err(_) => return None,
        };
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await {
            Ok(Err(e)) => tls_error_in(&e),
            _ => None,
        }
    }
}

/// The TLS error somewhere in `e`'s chain of causes. rustls' errors travel inside (nested)
/// `std::io::Error`s, whose `source` skips them, and an alert the peer sent may have been
/// turned into its text on the way.
fn tls_error_in(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| tls_error_in(inner));
        if inner.is_some() {
            return inner;
        }
        if let Some(alert) = alert_named_in(&c.to_string()) {
            return Some(rustls::Error::AlertReceived(alert));
        }
        cause = c.source();
    }
    None
}

/// The certificate alert a text like "received fatal alert: UnknownCA" names.
fn alert_named_in(text: &str) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    let name = text.split("received fatal alert: ").nth(1)?;
    [
        A::UnknownCA,
        A::CertificateExpired,
        A::CertificateRevoked,
        A::UnsupportedCertificate,
        A::BadCertificate,
        A::CertificateRequired,
        A::CertificateUnknown,
        A::DecryptError,
        A::AccessDenied,
    ]
    .into_iter()
    .find(|a| name.split(|c: char| !c.is_ascii_alphanumeric()).next() == Some(&format!("{a:?}")))
}

/// Names a failed TLS handshake with the agent at `url`: the agent's certificate the hub
/// refused, or the hub's certificate the agent refused (told by its alert), with the reason.
fn handshake_error(url: &str, err: &rustls::Error) -> VerifyCallError {
    use rustls::Error as E;
    let message = match err {
        E::InvalidCertificate(c) => {
            let why = agent_certificate_problem(c);
            exchange_protocol::tr!(
                "the TLS handshake with the agent at {url} failed: {err}: the agent's certificate ([verify] cert) {why}",
                "与代理 {url} 的 TLS 握手失败：{err}：代理的证书（[verify] cert）{why}"
            )
        }
        E::AlertReceived(alert) => match hub_certificate_problem(*alert) {
            Some(why) => exchange_protocol::tr!(
                "the agent at {url} refused the hub's certificate ([client] cert, else [listen] cert) in the TLS handshake: {err}: {why}; the agent's log and audit (connection.rejected) name the reason",
                "代理 {url} 在 TLS 握手中拒绝了交换中心的证书（[client] cert，未配置时为 [listen] cert）：{err}：{why}；代理的日志与审计记录（connection.rejected）写明原因"
            ),
            None => exchange_protocol::tr!(
                "the TLS handshake with the agent at {url} failed: the agent sent {err} (do both sides allow the same TLS version, min_tls?)",
                "与代理 {url} 的 TLS 握手失败：代理发来 {err}（两端的 TLS 版本 min_tls 是否一致？）"
            ),
        },
        other => exchange_protocol::tr!(
            "the TLS handshake with the agent at {url} failed: {other}",
            "与代理 {url} 的 TLS 握手失败：{other}"
        ),
    };
    VerifyCallError::Handshake {
        url: url.to_owned(),
        message,
    }
}

/// What is wrong with the agent's certificate, as the hub's verifier found it.
fn agent_certificate_problem(err: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match err {
        C::UnknownIssuer => exchange_protocol::tr!(
            "was not issued by the CA the hub trusts ([client] ca, else [listen] ca)",
            "不是交换中心信任的 CA（[client] ca，未配置时为 [listen] ca）签发的"
        ),
        C::Expired | C::ExpiredContext { .. } => {
            exchange_protocol::tr!("has expired", "已过期")
        }
        C::NotValidYet | C::NotValidYetContext { .. } => exchange_protocol::tr!(
            "is not valid yet (check both machines' clocks)",
            "尚未生效（请检查两台机器的时钟）"
        ),
        C::NotValidForName | C::NotValidForNameContext { .. } => exchange_protocol::tr!(
            "does not hold the host of --agent in its subjectAltName",
            "的 subjectAltName 中没有 --agent 中的主机"
        ),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => exchange_protocol::tr!(
            "is not for TLS servers (its extended key usage lacks serverAuth)",
            "不是服务端证书（扩展密钥用途缺少 serverAuth）"
        ),
        _ => exchange_protocol::tr!("was refused", "未被接受"),
    }
}

/// Why the agent refused the hub's certificate, from the TLS alert it sent; `None` for an
/// alert about something other than a certificate.
fn hub_certificate_problem(alert: rustls::AlertDescription) -> Option<String> {
    use rustls::AlertDescription as A;
    Some(match alert {
        A::UnknownCA => exchange_protocol::tr!(
            "it was not issued by a CA of the agent's [verify] client_ca",
            "它不是代理 [verify] client_ca 中的 CA 签发的"
        ),
        A::CertificateExpired => {
            exchange_protocol::tr!("it has expired or is not valid yet", "它已过期或尚未生效")
        }
        A::CertificateRevoked => exchange_protocol::tr!(
            "it is revoked (listed in the agent's [verify] crl)",
            "它已被吊销（列在代理的 [verify] crl 中）"
        ),
        A::UnsupportedCertificate | A::BadCertificate => exchange_protocol::tr!(
            "it is not usable as a client certificate (its extended key usage must allow clientAuth)",
            "它不能用作客户端证书（扩展密钥用途须允许 clientAuth）"
        ),
        A::CertificateRequired => {
            exchange_protocol::tr!("no certificate was presented", "未出示证书")
        }
        A::CertificateUnknown | A::DecryptError | A::AccessDenied => exchange_protocol::tr!(
            "the agent could not accept it (not issued by its [verify] client_ca, or a bad signature)",
            "代理无法接受它（不是其 [verify] client_ca 签发的，或签名无效）"
        ),
        _ => return None,
    })
}

/// An agent's answer parsed from its JSON text.
fn parse_answer<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, VerifyCallError> {
    serde_json::from_str(text).map_err(|e| VerifyCallError::Answer(e.to_string()))
}

/// Refuses an answer (with `request_id` and `items` items) that is not to `request`.
fn check_answers(
    request: &VerifyRequest,
    request_id: &str,
    items: usize,
) -> Result<(), VerifyCallError> {
    if request_id != request.request_id || items != request.items.len() {
        return Err(VerifyCallError::Answer(tr!(
            "its request id or number of items differs from the request's",
            "其请求 ID 或条目数与请求不一致"
        )));
    }
    Ok(())
}

/// The PSI request of `request`: each subject and claim hashed to a point and blinded by
/// `secret`.
fn blind(
    secret: &exchange_protocol::psi::Secret,
    request: &VerifyRequest,
) -> Result<exchange_protocol::psi::PsiRequest, VerifyCallError> {
    use exchange_protocol::psi::{self, PsiItem, PsiRequest};
    use exchange_rules::compare::{canonical, psi_form};
    let mut items = Vec::with_capacity(request.items.len());
    for item in &request.items {
        let subject = canonical(&item.subject);
        let mut claims = BTreeMap::new();
        for (f, c) in &item.claims {
            let Claim::Value(value) = c else {
                return Err(VerifyCallError::Answer(tr!(
                    "an HMAC claim cannot be sent by private set intersection",
                    "HMAC 声称值不能以隐私集合求交方式发送"
                )));
            };
            let p = psi::hash_claim(f, &subject, &psi_form(value));
            claims.insert(f.clone(), hex::encode(secret.blind(&p)));
        }
        items.push(PsiItem {
            subject: hex::encode(secret.blind(&psi::hash_subject(&subject))),
            claims,
        });
    }
    Ok(PsiRequest {
        request_id: request.request_id.clone(),
        purpose: request.purpose.clone(),
        case_ref: request.case_ref.clone(),
        resource: request.resource.clone(),
        items,
    })
}

/// The answer to `request` from the agent's PSI answer: each subject and claim point
/// unblinded by `secret` and looked up among the tags of what the agent holds.
fn unblind(
    secret: &exchange_protocol::psi::Secret,
    request: &VerifyRequest,
    answer: exchange_protocol::psi::PsiAnswer,
) -> Result<VerifyAnswer, VerifyCallError> {
    use exchange_protocol::psi;
    let subjects: std::collections::HashSet<&str> =
        answer.subjects.iter().map(String::as_str).collect();
    let stored: std::collections::HashSet<&str> =
        answer.claims.iter().map(String::as_str).collect();
    let bad_point = || VerifyCallError::Answer(tr!("a point does not decode", "有一个点无法解码"));
    let mut out = Vec::with_capacity(answer.items.len());
    for (asked, got) in request.items.iter().zip(&answer.items) {
        let s = psi::point_from_hex(&got.subject).ok_or_else(bad_point)?;
        let s = secret.unblind(&s).ok_or_else(bad_point)?;
        let found = subjects.contains(psi::tag(&s).as_str());
        let mut fields = BTreeMap::new();
        for f in asked.claims.keys() {
            let p = got
                .claims
                .get(f)
                .and_then(|c| psi::point_from_hex(c))
                .ok_or_else(bad_point)?;
            let p = secret.unblind(&p).ok_or_else(bad_point)?;
            let result = if found && stored.contains(psi::tag(&p).as_str()) {
                exchange_protocol::verify::FieldResult::Match
            } else {
                exchange_protocol::verify::FieldResult::Mismatch
            };
            fields.insert(f.clone(), result);
        }
        out.push(AnswerItem {
            subject: Some(if found {
                SubjectResult::Found
            } else {
                SubjectResult::NotFound
            }),
            fields,
        });
    }
    Ok(VerifyAnswer {
        request_id: answer.request_id,
        items: out,
    })
}

/// A claim as given on the command line or in a file: in clear, or as HMAC-SM3 under the
/// comparison key when `key` is given.
pub fn claim_of(
    key: Option<&exchange_rules::pseudonym::PseudonymKey>,
    field: &str,
    value: &str,
) -> Claim {
    match key {
        Some(k) => Claim::Hmac(exchange_rules::compare::claim_mac(k, field, value)),
        None => Claim::Value(value.to_owned()),
    }
}

/// Reads a comparison key file (64+ hex digits).
pub fn read_comparison_key(
    path: &Path,
    version: u32,
) -> Result<exchange_rules::pseudonym::PseudonymKey, String> {
    exchange_protocol::tls::check_secret_permissions(path).map_err(|e| e.to_string())?;
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let e = exchange_protocol::translate::io(&e);
        tr!(
            "cannot read the comparison key {file}: {e}",
            "无法读取比对密钥 {file}：{e}"
        )
    })?;
    exchange_rules::pseudonym::PseudonymKey::from_hex(version, &text)
        .map_err(|e| tr!("comparison key {file}: {e}", "比对密钥 {file}：{e}"))
}

/// One row of a claims file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRow {
    /// The line it starts on (1-based, the header is line 1).
    pub line: usize,
    /// The subject.
    pub subject: String,
    /// Field → claimed value (non-empty cells only).
    pub claims: BTreeMap<String, String>,
}

/// Reads a claims file: the field names (header order) and the rows.
pub fn read_claims(path: &Path) -> Result<(Vec<String>, Vec<ClaimRow>), String> {
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let e = exchange_protocol::translate::io(&e);
        tr!("cannot read {file}: {e}", "无法读取 {file}：{e}")
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let records = parse_csv(text).map_err(|(line, m)| format!("{}:{line}: {m}", path.display()))?;
    let mut records = records.into_iter();
    let Some((_, header)) = records.next() else {
        return Err(tr!(
            "{file} is empty; expected a header row `subject,<field>,…`",
            "{file} 为空；应有表头行 `subject,<field>,…`"
        ));
    };
    if header.first().map(|h| h.trim()) != Some("subject") || header.len() < 2 {
        return Err(tr!(
            "{file}:1: the header must be `subject,<field>,…` (a column per claimed field)",
            "{file}:1：表头必须是 `subject,<field>,…`（每个声称字段一列）"
        ));
    }
    let fields: Vec<String> = header[1..].iter().map(|h| h.trim().to_owned()).collect();
    let mut rows = Vec::new();
    for (line, record) in records {
        if record.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        if record.len() != header.len() {
            let (found, expected) = (record.len(), header.len());
            return Err(tr!(
                "{file}:{line}: {found} columns; the header has {expected}",
                "{file}:{line}：有 {found} 列；表头有 {expected} 列"
            ));
        }
        let claims = fields
            .iter()
            .zip(&record[1..])
            .filter(|(_, v)| !v.is_empty())
            .map(|(f, v)| (f.clone(), v.clone()))
            .collect();
        rows.push(ClaimRow {
            line,
            subject: record[0].trim().to_owned(),
            claims,
        });
    }
    Ok((fields, rows))
}

/// A CSV record: the line it starts on and its cells.
type CsvRecord = (usize, Vec<String>);

/// RFC 4180 records; an error names the line.
fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, (usize, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut record = Vec::new();
        let mut cell = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Err((
                        start,
                        tr!("a quoted cell is not closed", "引号内的单元格没有闭合"),
                    ));
                }
                record.push(std::mem::take(&mut cell));
                break;
            };
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => {
                    if c == '\n' {
                        line += 1;
                    }
                    cell.push(c);
                }
                (false, '"') if cell.is_empty() && !was_quoted => {
                    quoted = true;
                    was_quoted = true;
                }
                (false, ',') => {
                    record.push(std::mem::take(&mut cell));
                    was_quoted = false;
                }
                (false, '\r') if chars.peek() == Some(&'\n') => {}
                (false, '\n') => {
                    line += 1;
                    record.push(std::mem::take(&mut cell));
                    break;
                }
                (false, c) => cell.push(c),
            }
        }
        out.push((start, record));
    }
    Ok(out)
}

/// A CSV cell, quoted when needed.
fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Where the answers to `claims` are written: `<stem>.answers.csv` next to it.
pub fn answers_path(claims: &Path) -> PathBuf {
    let stem = claims
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "claims".into());
    claims.with_file_name(format!("{stem}.answers.csv"))
}

/// The answers file's text.
pub fn answers_csv(fields: &[String], rows: &[ClaimRow], answers: &[AnswerItem]) -> String {
    let mut out = String::from("row,subject,found");
    for f in fields {
        out.push(',');
        out.push_str(&csv_cell(f));
    }
    out.push('\n');
    for (row, answer) in rows.iter().zip(answers) {
        out.push_str(&format!("{},{},", row.line, csv_cell(&row.subject)));
        out.push_str(match answer.subject {
            Some(SubjectResult::Found) => "found",
            Some(SubjectResult::NotFound) => "not_found",
            None => "",
        });
        for f in fields {
            out.push(',');
            if let Some(r) = answer.fields.get(f) {
                out.push_str(r.as_str());
            }
        }
        out.push('\n');
    }
    out
}

/// Splits claim rows into requests in their order: at most `max` rows each, and a subject at
/// most once per request (the agent asks about each subject once per request,
/// docs/PROTOCOL.md §11.2), compared in its canonical form; a repeated subject starts the next
/// request.
pub fn batches(rows: &[ClaimRow], max: usize) -> Vec<std::ops::Range<usize>> {
    use exchange_rules::compare::canonical;
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen = std::collections::HashSet::new();
    for (i, row) in rows.iter().enumerate() {
        let subject = canonical(&row.subject);
        if i - start == max.max(1) || seen.contains(&subject) {
            out.push(start..i);
            start = i;
            seen.clear();
        }
        seen.insert(subject);
    }
    if start < rows.len() {
        out.push(start..rows.len());
    }
    out
}

/// The items of a request from claim rows.
pub fn items_of(
    rows: &[ClaimRow],
    key: Option<&exchange_rules::pseudonym::PseudonymKey>,
) -> Vec<Item> {
    rows.iter()
        .map(|r| Item {
            subject: r.subject.clone(),
            claims: r
                .claims
                .iter()
                .map(|(f, v)| (f.clone(), claim_of(key, f, v)))
                .collect(),
        })
        .collect()
}

/// A request id: the time in milliseconds and a random suffix.
pub fn new_request_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "hub-{millis}-{:08x}",
        std::process::id() ^ (millis as u32).rotate_left(13)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_a_subject_once_and_keep_the_order() {
        let row = |s: &str| ClaimRow {
            line: 0,
            subject: s.into(),
            claims: BTreeMap::new(),
        };
        let rows: Vec<ClaimRow> = ["A", "B", "a ", "C", "D", "E", "F"]
            .into_iter()
            .map(row)
            .collect();
        assert_eq!(batches(&rows, 3), vec![0..2, 2..5, 5..7]);
        assert_eq!(batches(&rows, 100), vec![0..2, 2..7]);
        assert!(batches(&[], 10).is_empty());
    }

    #[test]
    fn csv_cells_are_read_with_quotes_and_line_numbers() {
        let text = "subject,name,address\n\"11010519491231002X\",\"张,三\",\"a \"\"b\"\"\nc\"\r\n\n440524188001010014,,x\n";
        let records = parse_csv(text).unwrap();
        assert_eq!(
            records[0],
            (1, vec!["subject".into(), "name".into(), "address".into()])
        );
        assert_eq!(
            records[1],
            (
                2,
                vec![
                    "11010519491231002X".into(),
                    "张,三".into(),
                    "a \"b\"\nc".into()
                ]
            )
        );
        assert_eq!(
            records[3],
            (5, vec!["440524188001010014".into(), "".into(), "x".into()])
        );
    }
}
