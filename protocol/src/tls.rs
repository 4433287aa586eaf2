//! Every rustls configuration in the workspace is built here.
//!
//! Architecture invariants:
//! - one crypto provider (`ring`), installed as the process default by [`install_provider`];
//! - certificate verification is never disabled: a client trusts exactly the configured CA
//!   file (or, for a source database without one, the system trust store), and a server asks
//!   for and verifies a client certificate against the configured client CA;
//! - TLS 1.3 only unless TLS 1.2 is explicitly allowed;
//! - where certificate revocation lists are configured (`crl = [...]`), the peer's own
//!   certificate must be covered by one of them and not listed: a certificate whose issuer
//!   has no CRL among them is refused too (unknown status is never taken as good), and a CRL
//!   not issued by a CA of the same configuration is refused when the configuration is
//!   built. A CRL past its next update stays in force (`check` warns about it): revocations
//!   never lapse because a newer list is late;
//! - a private key file readable by group or other users is refused.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// What a file is (`TlsError`'s `what`), in Chinese.
fn noun_zh(what: &str) -> &str {
    match what {
        "CA" => "CA 证书",
        "client CA" => "客户端 CA 证书",
        "hub CA" => "交换中心 CA 证书",
        "source CA" => "数据源 CA 证书",
        "client certificate" => "客户端证书",
        "server certificate" => "服务器证书",
        "node certificate" => "节点证书",
        "verification certificate" => "核验服务证书",
        "verification client CA" => "核验客户端 CA 证书",
        "the hub's client certificate" => "交换中心的客户端证书",
        "private key" => "私钥",
        "secret" => "密钥",
        "certificate revocation list" => "证书吊销列表",
        other => other,
    }
}

/// What can go wrong while building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, CA or key file could not be read. The I/O error is part of the message
    /// and not a `source`, so that a chain (`{:#}`) names it once.
    #[error("{}", crate::tr!(
        "cannot read {what} file {path}: {error}",
        "无法读取{what}文件 {path}：{error}",
        what = crate::lang::pick(what, noun_zh(what)),
        error = crate::translate::io(error),
        path = path.display()
    ))]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file holds no PEM item of the expected kind.
    #[error("{}", crate::tr!(
        "{what} file {path} holds no PEM {expected}",
        "{what}文件 {path} 中没有 PEM {expected}",
        what = crate::lang::pick(what, noun_zh(what)),
        path = path.display()
    ))]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    /// The file is not valid PEM.
    #[error("{}", crate::tr!(
        "{what} file {path} is not valid PEM: {reason}",
        "{what}文件 {path} 不是有效的 PEM：{reason}",
        what = crate::lang::pick(what, noun_zh(what)),
        path = path.display()
    ))]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A private key that other users can read is refused.
    #[error("{}", crate::tr!(
        "private key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` and make it owned by the service user",
        "私钥 {path} 可被其他用户读取（权限 {mode:o}）；请运行 `chmod 600 {path}`，并将其属主设为服务用户",
        path = path.display()
    ))]
    KeyPermissions { path: PathBuf, mode: u32 },
    /// rustls refused the material (its error in the message, not a `source`: named once).
    #[error("{context}: {error}")]
    Rustls {
        context: String,
        error: rustls::Error,
    },
    /// The certificate verifier could not be built (an unusable CA or CRL).
    #[error("{}", crate::tr!(
        "CA {path} or its certificate revocation lists: {reason}",
        "CA {path} 或其证书吊销列表：{reason}",
        path = path.display()
    ))]
    Verifier { path: PathBuf, reason: String },
    /// The system trust store could not be loaded.
    #[error("{}", crate::tr!(
        "no usable certificate in the system trust store: {0}",
        "系统信任库中没有可用的证书：{0}", .0
    ))]
    SystemRoots(String),
}

/// Lowest TLS version a connection may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
pub enum MinTlsVersion {
    /// TLS 1.3 only (default).
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    Tls12,
}

/// As the configuration writes it: `1.3`, `1.2`.
impl std::fmt::Display for MinTlsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MinTlsVersion::Tls13 => "1.3",
            MinTlsVersion::Tls12 => "1.2",
        })
    }
}

impl MinTlsVersion {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static V13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        static V12: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            MinTlsVersion::Tls13 => V13,
            MinTlsVersion::Tls12 => V12,
        }
    }
}

/// The one crypto provider of the workspace.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs the workspace's crypto provider as the process default, so that libraries that
/// build their own rustls configuration (mysql_async) use it too. Safe to call more than once.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate of a PEM file.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_owned(),
        error,
    })?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// Refuses a secret file (private key, password) that group or other users can read.
pub fn check_secret_permissions(path: &Path) -> Result<(), TlsError> {
    let meta = fs::metadata(path).map_err(|error| TlsError::Read {
        what: "secret",
        path: path.to_owned(),
        error,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1 PEM), refusing one other users can read.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = fs::read(path).map_err(|error| TlsError::Read {
        what: "private key",
        path: path.to_owned(),
        error,
    })?;
    check_secret_permissions(path)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "private key",
            path: path.to_owned(),
            expected: "PRIVATE KEY",
        },
        other => TlsError::Pem {
            what: "private key",
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

fn roots_from(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots.add(cert).map_err(|error| TlsError::Rustls {
            context: format!(
                "{} {}",
                crate::lang::pick(what, noun_zh(what)),
                path.display()
            ),
            error,
        })?;
    }
    Ok(roots)
}

/// Paths of a mutual-TLS identity: the CA that issued the peer, our certificate and key.
#[derive(Debug, Clone)]
pub struct MutualTls {
    /// The CA certificate(s) that the peer's certificate must chain to (only these).
    pub ca: PathBuf,
    /// Our certificate chain, leaf first.
    pub cert: PathBuf,
    /// Our private key (must not be readable by other users).
    pub key: PathBuf,
    /// Lowest TLS version allowed.
    pub min_version: MinTlsVersion,
    /// Certificate revocation lists (PEM `X509 CRL` or DER) of the peer's CA; empty: no
    /// revocation checks.
    pub crls: Vec<PathBuf>,
}

/// Reads every CRL of the files (PEM, several per file allowed, or one DER CRL per file).
pub fn load_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    Ok(crl_files(paths)?.into_iter().map(|(_, crl)| crl).collect())
}

/// Every CRL of the files, with the file it came from; each must parse as a CRL.
fn crl_files(
    paths: &[PathBuf],
) -> Result<Vec<(PathBuf, CertificateRevocationListDer<'static>)>, TlsError> {
    let mut out = Vec::new();
    for path in paths {
        let invalid = |reason: String| TlsError::Pem {
            what: "certificate revocation list",
            path: path.to_owned(),
            reason,
        };
        let data = fs::read(path).map_err(|error| TlsError::Read {
            what: "certificate revocation list",
            path: path.to_owned(),
            error,
        })?;
        let mut crls = CertificateRevocationListDer::pem_slice_iter(&data)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        if crls.is_empty() {
            if data.first() != Some(&0x30) {
                return Err(TlsError::Empty {
                    what: "certificate revocation list",
                    path: path.to_owned(),
                    expected: "X509 CRL",
                });
            }
            // DER: an ASN.1 SEQUENCE.
            crls.push(CertificateRevocationListDer::from(data));
        }
        for crl in crls {
            x509_parser::parse_x509_crl(crl.as_ref())
                .map_err(|e| invalid(format!("not an X.509 CRL: {e}")))?;
            out.push((path.clone(), crl));
        }
    }
    Ok(out)
}

/// The CRLs of `crls`, each checked to be issued (by name) by a certificate of the CA file
/// `ca`: a CRL of another CA would leave every peer's revocation status unknown, and so
/// every peer refused.
fn crls_of(
    ca: &Path,
    crls: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    if crls.is_empty() {
        return Ok(Vec::new());
    }
    let subjects: Vec<Vec<u8>> = load_certs("CA", ca)?
        .iter()
        .filter_map(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
            Some(c.subject().as_raw().to_vec())
        })
        .collect();
    let mut out = Vec::new();
    for (path, crl) in crl_files(crls)? {
        let issuer = x509_parser::parse_x509_crl(crl.as_ref())
            .map(|(_, c)| (c.issuer().as_raw().to_vec(), c.issuer().to_string()))
            .unwrap_or_default();
        if !subjects.contains(&issuer.0) {
            return Err(TlsError::Verifier {
                path: ca.to_owned(),
                reason: format!(
                    "the certificate revocation list {} is issued by `{}`, which is not a CA in {}",
                    path.display(),
                    issuer.1,
                    ca.display()
                ),
            });
        }
        out.push(crl);
    }
    Ok(out)
}

/// The issuer and next update of one CRL (what `check` warns about).
#[derive(Debug, Clone)]
pub struct CrlValidity {
    /// The file.
    pub path: PathBuf,
    /// The issuer's name.
    pub issuer: String,
    /// When the issuer promised a newer list, seconds since 1970-01-01 UTC (`None`: not
    /// said). A list past it stays in force: replace it with the newer one.
    pub next_update: Option<i64>,
}

/// The issuer and next update of every CRL of the files.
pub fn crl_validity(paths: &[PathBuf]) -> Result<Vec<CrlValidity>, TlsError> {
    Ok(crl_files(paths)?
        .into_iter()
        .filter_map(|(path, crl)| {
            let (_, c) = x509_parser::parse_x509_crl(crl.as_ref()).ok()?;
            Some(CrlValidity {
                path,
                issuer: c.issuer().to_string(),
                next_update: c.next_update().map(|t| t.timestamp()),
            })
        })
        .collect())
}

/// Client configuration for the agent's connection to the hub: trusts only `ca`, presents
/// `cert`/`key`.
pub fn hub_client_config(m: &MutualTls) -> Result<ClientConfig, TlsError> {
    let verifier = peer_verifier("hub CA", m, WebPkiServerVerifier::builder_with_provider)?;
    let (certs, key) = own_identity("client certificate", m)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(m.min_version.versions())
        .map_err(versions_refused)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(|e| key_mismatch("client certificate", m, e))?;
    Ok(config)
}

/// Server configuration that requires a client certificate issued by `ca`.
pub fn mutual_server_config(m: &MutualTls) -> Result<ServerConfig, TlsError> {
    let verifier = peer_verifier("client CA", m, WebPkiClientVerifier::builder_with_provider)?;
    let (certs, key) = own_identity("server certificate", m)?;
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(m.min_version.versions())
        .map_err(versions_refused)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| key_mismatch("server certificate", m, e))
}

/// The verifier of a client certificate presented outside a handshake (an offline batch
/// file's chain, docs/PROTOCOL.md §12): chained to `m.ca`, not revoked by `m.crls`.
pub fn client_certificate_verifier(
    m: &MutualTls,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    peer_verifier("client CA", m, WebPkiClientVerifier::builder_with_provider)
}

/// The verifier of the hub's certificate presented outside a handshake (an offline answer
/// file's chain): chained to `m.ca`, not revoked by `m.crls`.
pub fn server_certificate_verifier(m: &MutualTls) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    peer_verifier("hub CA", m, WebPkiServerVerifier::builder_with_provider)
}

/// The webpki verifier builders of both sides (the client's of the server certificate, the
/// server's of the client certificate), which [`peer_verifier`] configures alike.
trait VerifierBuilder: Sized {
    /// What it builds.
    type Verifier: ?Sized;
    /// Checks the peer's own certificate against `crls` (only the end entity).
    fn revoking(self, crls: Vec<CertificateRevocationListDer<'static>>) -> Self;
    /// The verifier.
    fn finish(self) -> Result<Arc<Self::Verifier>, rustls::server::VerifierBuilderError>;
}

impl VerifierBuilder for rustls::client::ServerCertVerifierBuilder {
    type Verifier = WebPkiServerVerifier;

    fn revoking(self, crls: Vec<CertificateRevocationListDer<'static>>) -> Self {
        self.with_crls(crls).only_check_end_entity_revocation()
    }

    fn finish(self) -> Result<Arc<WebPkiServerVerifier>, rustls::server::VerifierBuilderError> {
        self.build()
    }
}

impl VerifierBuilder for rustls::server::ClientCertVerifierBuilder {
    type Verifier = dyn rustls::server::danger::ClientCertVerifier;

    fn revoking(self, crls: Vec<CertificateRevocationListDer<'static>>) -> Self {
        self.with_crls(crls).only_check_end_entity_revocation()
    }

    fn finish(self) -> Result<Arc<Self::Verifier>, rustls::server::VerifierBuilderError> {
        self.build()
    }
}

/// The verifier of the peer's certificate of a mutual-TLS identity: chained to its CA only
/// (`what` names the CA in errors), and not revoked by its CRLs when it has some.
fn peer_verifier<B: VerifierBuilder>(
    what: &'static str,
    m: &MutualTls,
    builder: impl FnOnce(Arc<RootCertStore>, Arc<CryptoProvider>) -> B,
) -> Result<Arc<B::Verifier>, TlsError> {
    let roots = roots_from(what, &m.ca)?;
    let mut verifier = builder(Arc::new(roots), provider());
    let crls = crls_of(&m.ca, &m.crls)?;
    if !crls.is_empty() {
        verifier = verifier.revoking(crls);
    }
    verifier.finish().map_err(|e| TlsError::Verifier {
        path: m.ca.clone(),
        reason: e.to_string(),
    })
}

/// Our certificate chain (`what` names it in errors) and private key of a mutual-TLS identity.
fn own_identity(
    what: &'static str,
    m: &MutualTls,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = load_certs(what, &m.cert)?;
    let key = load_key(&m.key)?;
    Ok((certs, key))
}

/// rustls refused the protocol versions.
fn versions_refused(error: rustls::Error) -> TlsError {
    TlsError::Rustls {
        context: crate::tr!("TLS versions", "TLS 版本"),
        error,
    }
}

/// rustls refused our certificate (`what`) with our key.
fn key_mismatch(what: &str, m: &MutualTls, error: rustls::Error) -> TlsError {
    TlsError::Rustls {
        context: crate::tr!(
            "{what} {} does not match key {}",
            "{what} {} 与私钥 {} 不匹配",
            m.cert.display(),
            m.key.display(),
            what = crate::lang::pick(what, noun_zh(what))
        ),
        error,
    }
}

/// Client configuration for a source database: trusts `ca` when given, else the system
/// trust store. Never without verification.
pub fn source_client_config(ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let roots = match ca {
        Some(path) => roots_from("source CA", path)?,
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(TlsError::SystemRoots(format!("{:?}", loaded.errors)));
            }
            roots
        }
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(MinTlsVersion::Tls12.versions())
        .map_err(versions_refused)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Takes `sslmode` out of a PostgreSQL connection string (URL or `key=value` form), since
/// tokio-postgres's own TLS modes allow a fallback to plaintext; returns the rest of the
/// string and the mode, lower-cased.
pub fn take_postgres_sslmode(url: &str) -> (String, Option<String>) {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), None);
        };
        let mut mode = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| match pair.split_once('=') {
                Some(("sslmode", v)) => {
                    mode = Some(v.to_ascii_lowercase());
                    false
                }
                _ => !pair.is_empty(),
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, mode)
    } else {
        // key=value form: `sslmode` [spaces] `=` [spaces] value
        let mut mode = None;
        let mut rest = String::with_capacity(url.len());
        let mut tail = url;
        while let Some(at) = tail.find("sslmode") {
            let starts_word = at == 0 || tail[..at].ends_with(char::is_whitespace);
            let after = tail[at + "sslmode".len()..].trim_start();
            match after.strip_prefix('=') {
                Some(value) if starts_word => {
                    let value = value.trim_start();
                    let end = value.find(char::is_whitespace).unwrap_or(value.len());
                    mode = Some(value[..end].trim_matches('\'').to_ascii_lowercase());
                    rest.push_str(&tail[..at]);
                    tail = &value[end..];
                }
                _ => {
                    rest.push_str(&tail[..at + "sslmode".len()]);
                    tail = &tail[at + "sslmode".len()..];
                }
            }
        }
        rest.push_str(tail);
        (rest, mode)
    }
}

/// Whether a PostgreSQL connection must use TLS, from its `sslmode` and whether a CA file is
/// configured. Any mode that asks for TLS (`prefer` included) means TLS **required**, always
/// verified ([`source_client_config`]); never a fallback to plaintext. No mode and no CA:
/// plaintext. The error is a sentence naming the unknown mode.
pub fn postgres_requires_tls(sslmode: Option<&str>, has_ca: bool) -> Result<bool, String> {
    match sslmode {
        None => Ok(has_ca),
        Some("disable" | "allow") => Ok(false),
        Some("prefer" | "require" | "verify-ca" | "verify-full") => Ok(true),
        Some(other) => Err(format!(
            "unknown sslmode `{other}` in the URL (expected disable, prefer, require, verify-ca \
             or verify-full)"
        )),
    }
}

/// The identity a peer certificate asserts: its subject common name.
///
/// The hub takes a node's id from here; a node may push only under that id.
pub fn peer_common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

/// The URIs among a peer certificate's subjectAltNames (e.g. `urn:uscc:<code>`, the identity
/// the verification service can take a requester's from).
pub fn peer_uri_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// The subject and validity end of one certificate in a PEM file.
#[derive(Debug, Clone)]
pub struct CertificateValidity {
    /// The subject's common name (or the whole subject when it has none).
    pub subject: String,
    /// The end of the validity period, seconds since 1970-01-01 UTC.
    pub not_after: i64,
}

/// A certificate expiring within this many days is warned about (`check`, `status`).
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Where a certificate stands against its validity end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Valid for [`EXPIRY_WARNING_DAYS`] or more.
    Valid,
    /// Valid, but for fewer than [`EXPIRY_WARNING_DAYS`]: renew it.
    Soon,
    /// Past its validity end: peers refuse it.
    Expired,
}

impl Expiry {
    /// `valid`, `expiring` or `expired` (JSON, metrics).
    pub fn label(self) -> &'static str {
        match self {
            Expiry::Valid => "valid",
            Expiry::Soon => "expiring",
            Expiry::Expired => "expired",
        }
    }
}

impl CertificateValidity {
    /// Whole days left at `now` (seconds since 1970, UTC); negative once expired.
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }

    /// Valid, expiring within [`EXPIRY_WARNING_DAYS`], or expired, at `now`.
    pub fn expiry(&self, now: i64) -> Expiry {
        if self.not_after <= now {
            Expiry::Expired
        } else if self.days_left(now) < EXPIRY_WARNING_DAYS {
            Expiry::Soon
        } else {
            Expiry::Valid
        }
    }

    /// The validity end as people read it: `2026-03-01 12:00:00 UTC`.
    pub fn not_after_text(&self) -> String {
        chrono::DateTime::from_timestamp(self.not_after, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| self.not_after.to_string())
    }

    /// One line for `check` and `status`, in the language of the command line:
    /// "`what` `subject` valid until …, N days left", a warning within
    /// [`EXPIRY_WARNING_DAYS`], an error once expired (naming the file and what to do).
    pub fn describe(&self, what: &str, path: &Path, now: i64) -> String {
        let (subject, until, days) = (&self.subject, self.not_after_text(), self.days_left(now));
        let file = path.display();
        let what = crate::lang::pick(what, noun_zh(what));
        match self.expiry(now) {
            Expiry::Valid => crate::tr!(
                "{what} `{subject}` valid until {until}, {days} days left",
                "{what} `{subject}` 有效期至 {until}，剩余 {days} 天"
            ),
            Expiry::Soon => crate::tr!(
                "warning: {what} {file} (`{subject}`) expires on {until}, in {days} days; renew it (docs/OPERATIONS.md, certificates)",
                "警告：{what} {file}（`{subject}`）将于 {until} 过期，仅剩 {days} 天；请及时更换（docs/OPERATIONS.md 证书一节）"
            ),
            Expiry::Expired => crate::tr!(
                "error: {what} {file} (`{subject}`) expired on {until}; issue a new one (docs/OPERATIONS.md, certificates)",
                "错误：{what} {file}（`{subject}`）已于 {until} 过期；请签发新证书（docs/OPERATIONS.md 证书一节）"
            ),
        }
    }
}

/// One certificate of the PEM file `path`, parsed.
fn parsed_certificate<'d>(
    what: &'static str,
    path: &Path,
    der: &'d CertificateDer<'_>,
) -> Result<x509_parser::certificate::X509Certificate<'d>, TlsError> {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, parsed)| parsed)
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            reason: format!("not an X.509 certificate: {e}"),
        })
}

/// The subject and expiry of every certificate in a PEM file (what `check` warns about).
pub fn certificate_validity(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateValidity>, TlsError> {
    load_certs(what, path)?
        .iter()
        .map(|der| {
            let parsed = parsed_certificate(what, path, der)?;
            let subject = parsed
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| parsed.subject().to_string());
            Ok(CertificateValidity {
                subject,
                not_after: parsed.validity().not_after.timestamp(),
            })
        })
        .collect()
}

/// Whether the first certificate of a PEM file may authenticate a TLS client: it has no
/// extended key usage, or one that lists clientAuth (or any usage). A server-only
/// certificate (serverAuth alone) is refused by every peer that checks client certificates.
pub fn allows_client_auth(what: &'static str, path: &Path) -> Result<bool, TlsError> {
    // `load_certs` refuses a file without a certificate.
    let certs = load_certs(what, path)?;
    let parsed = parsed_certificate(what, path, &certs[0])?;
    Ok(match parsed.extended_key_usage() {
        Ok(None) => true,
        Ok(Some(eku)) => eku.value.any || eku.value.client_auth,
        Err(_) => false,
    })
}

/// Why a TLS handshake failed, as a small closed set with stable labels (metric labels and
/// audit entries name it by [`HandshakeFailure::label`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandshakeFailure {
    /// The peer's certificate was not issued by the configured CA.
    UnknownIssuer,
    /// The peer's certificate has expired.
    Expired,
    /// The peer's certificate is not valid for the name connected to.
    NotValidForName,
    /// The peer presented no certificate where one is required.
    NoCertificate,
    /// The peer's certificate is revoked.
    Revoked,
    /// Any other problem with the peer's certificate (not yet valid, bad signature, wrong
    /// purpose, undecodable, …).
    BadCertificate,
    /// Not a TLS handshake we accept: version, cipher suite, an alert from the peer, a
    /// malformed message, or bytes that are not TLS at all.
    Protocol,
    /// The handshake did not finish in time.
    Timeout,
    /// The connection failed underneath TLS (reset, closed before the handshake ended).
    Io,
}

impl HandshakeFailure {
    /// Every reason, in label order of the documentation.
    pub const ALL: [HandshakeFailure; 9] = [
        HandshakeFailure::UnknownIssuer,
        HandshakeFailure::Expired,
        HandshakeFailure::NotValidForName,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::Revoked,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::Protocol,
        HandshakeFailure::Timeout,
        HandshakeFailure::Io,
    ];

    /// The stable snake_case label.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::UnknownIssuer => "unknown_issuer",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NotValidForName => "not_valid_for_name",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::Revoked => "revoked",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Io => "io",
        }
    }

    /// The reason of a rustls error raised by a handshake.
    pub fn of(err: &rustls::Error) -> HandshakeFailure {
        use rustls::{CertificateError as C, Error};
        match err {
            Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => HandshakeFailure::UnknownIssuer,
                C::Expired | C::ExpiredContext { .. } => HandshakeFailure::Expired,
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    HandshakeFailure::NotValidForName
                }
                C::Revoked => HandshakeFailure::Revoked,
                _ => HandshakeFailure::BadCertificate,
            },
            Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
            _ => HandshakeFailure::Protocol,
        }
    }

    /// The reason of an I/O error returned by a TLS handshake (tokio-rustls carries the
    /// rustls error inside it; anything else failed underneath TLS).
    pub fn of_io(err: &std::io::Error) -> HandshakeFailure {
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map_or(HandshakeFailure::Io, HandshakeFailure::of)
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Makes a human sentence out of a TLS failure, with the hint an administrator needs.
pub fn explain(err: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    let hint = match err {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => crate::lang::pick(
            "the peer's certificate was not issued by the configured CA",
            "对方的证书不是由所配置的 CA 签发的",
        ),
        Error::InvalidCertificate(CertificateError::Expired)
        | Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            crate::lang::pick("the peer's certificate has expired", "对方的证书已过期")
        }
        Error::InvalidCertificate(CertificateError::NotValidForName)
        | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            crate::lang::pick(
                "the peer's certificate is not valid for the address connected to",
                "对方的证书对所连接的地址无效",
            )
        }
        Error::NoCertificatesPresented => crate::lang::pick(
            "the peer presented no client certificate",
            "对方没有出示客户端证书",
        ),
        Error::InvalidCertificate(CertificateError::Revoked) => crate::lang::pick(
            "the peer's certificate is listed in a configured certificate revocation list (crl)",
            "对方的证书列在所配置的证书吊销列表（crl）中",
        ),
        Error::InvalidCertificate(CertificateError::UnknownRevocationStatus) => crate::lang::pick(
            "no configured certificate revocation list (crl) is from the CA that issued the peer's certificate",
            "所配置的证书吊销列表（crl）中没有一个来自签发对方证书的 CA",
        ),
        _ => "",
    };
    if hint.is_empty() {
        err.to_string()
    } else {
        crate::tr!("{err} ({hint})", "{err}（{hint}）")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;

    #[test]
    fn a_minimum_version_reads_as_the_configuration_writes_it() {
        for (v, text) in [(MinTlsVersion::Tls13, "1.3"), (MinTlsVersion::Tls12, "1.2")] {
            assert_eq!(v.to_string(), text);
            let parsed: MinTlsVersion = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(parsed, v);
        }
    }

    #[test]
    fn a_crl_of_another_ca_is_refused_when_the_configuration_is_built() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::Authority::generate("test CA").unwrap();
        let other = crate::pki::Authority::generate("other CA").unwrap();
        let ca_file = dir.path().join("ca.pem");
        ca.write_cert(&ca_file).unwrap();
        let (cert, key) = ca
            .issue_server(&["127.0.0.1"])
            .unwrap()
            .write(dir.path(), "server")
            .unwrap();
        let own = dir.path().join("own.crl");
        ca.write_crl(&own, &[], 1).unwrap();
        let foreign = dir.path().join("foreign.crl");
        other.write_crl(&foreign, &[], 1).unwrap();
        let m = |crls: Vec<PathBuf>| MutualTls {
            ca: ca_file.clone(),
            cert: cert.clone(),
            key: key.clone(),
            min_version: MinTlsVersion::Tls13,
            crls,
        };
        mutual_server_config(&m(vec![own.clone()])).unwrap();
        hub_client_config(&m(vec![own.clone()])).unwrap();
        for build in [
            |m: &MutualTls| mutual_server_config(m).map(|_| ()),
            |m: &MutualTls| hub_client_config(m).map(|_| ()),
        ] {
            let e = build(&m(vec![own.clone(), foreign.clone()])).unwrap_err();
            assert!(
                e.to_string().contains("foreign.crl") && e.to_string().contains("other CA"),
                "{e}"
            );
        }
        let v = crl_validity(&[own]).unwrap();
        assert_eq!(v.len(), 1);
        assert!(v[0].issuer.contains("test CA"), "{:?}", v[0]);
        assert!(v[0].next_update.unwrap() > 0);
    }

    /// docs/PROTOCOL.md §2: the agent offers no ALPN protocol, so every hub answers it in
    /// HTTP/1.1.
    #[test]
    fn the_hub_client_offers_no_alpn_and_so_speaks_http1() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::Authority::generate("test CA").unwrap();
        let ca_file = dir.path().join("ca.pem");
        ca.write_cert(&ca_file).unwrap();
        let (cert, key) = ca
            .issue_client("node-1")
            .unwrap()
            .write(dir.path(), "node")
            .unwrap();
        let client = hub_client_config(&MutualTls {
            ca: ca_file,
            cert,
            key,
            min_version: MinTlsVersion::Tls13,
            crls: Vec::new(),
        })
        .unwrap();
        assert!(
            client.alpn_protocols.is_empty(),
            "{:?}",
            client.alpn_protocols
        );
    }

    #[test]
    fn key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::Authority::generate("test CA").unwrap();
        let issued = ca.issue_client("node-1").unwrap();
        let key = dir.path().join("node.key");
        fs::write(&key, issued.key_pem.as_bytes()).unwrap();
        fs::set_permissions(&key, Permissions::from_mode(0o644)).unwrap();
        let err = load_key(&key).unwrap_err();
        assert!(matches!(err, TlsError::KeyPermissions { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
        fs::set_permissions(&key, Permissions::from_mode(0o600)).unwrap();
        load_key(&key).unwrap();
    }

    #[test]
    fn sslmode_is_taken_out_of_urls_and_key_value_strings() {
        let cases = [
            ("postgres://u@h/db", "postgres://u@h/db", None),
            (
                "postgres://u:p@h:5/db?sslmode=verify-full",
                "postgres://u:p@h:5/db",
                Some("verify-full"),
            ),
            (
                "postgresql://u@h/db?application_name=x&sslmode=REQUIRE&connect_timeout=3",
                "postgresql://u@h/db?application_name=x&connect_timeout=3",
                Some("require"),
            ),
            (
                "host=h user=u sslmode = verify-ca dbname=d",
                "host=h user=u  dbname=d",
                Some("verify-ca"),
            ),
            ("host=h user=sslmode", "host=h user=sslmode", None),
        ];
        for (url, rest, mode) in cases {
            let (r, m) = take_postgres_sslmode(url);
            assert_eq!(r, rest, "{url}");
            assert_eq!(m.as_deref(), mode, "{url}");
        }
    }

    #[test]
    fn any_sslmode_that_asks_for_tls_requires_it() {
        for (mode, ca, tls) in [
            (None, false, false),
            (None, true, true),
            (Some("disable"), true, false),
            (Some("prefer"), false, true),
            (Some("require"), false, true),
            (Some("verify-full"), false, true),
        ] {
            assert_eq!(postgres_requires_tls(mode, ca), Ok(tls), "{mode:?} {ca}");
        }
        assert!(postgres_requires_tls(Some("sometimes"), false).is_err());
    }

    #[test]
    fn handshake_failures_map_to_their_labels() {
        use rustls::{AlertDescription, CertificateError as C, Error, InvalidMessage};
        let cases = [
            (
                Error::InvalidCertificate(C::UnknownIssuer),
                "unknown_issuer",
            ),
            (Error::InvalidCertificate(C::Expired), "expired"),
            (
                Error::InvalidCertificate(C::NotValidForName),
                "not_valid_for_name",
            ),
            (Error::InvalidCertificate(C::Revoked), "revoked"),
            (Error::InvalidCertificate(C::NotValidYet), "bad_certificate"),
            (
                Error::InvalidCertificate(C::BadSignature),
                "bad_certificate",
            ),
            (
                Error::InvalidCertificate(C::InvalidPurpose),
                "bad_certificate",
            ),
            (Error::NoCertificatesPresented, "no_certificate"),
            (
                Error::InvalidMessage(InvalidMessage::InvalidContentType),
                "protocol",
            ),
            (
                Error::AlertReceived(AlertDescription::ProtocolVersion),
                "protocol",
            ),
            (Error::DecryptError, "protocol"),
        ];
        for (err, label) in cases {
            assert_eq!(HandshakeFailure::of(&err).label(), label, "{err:?}");
            // As tokio-rustls returns it.
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
            assert_eq!(HandshakeFailure::of_io(&io).label(), label);
        }
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(HandshakeFailure::of_io(&eof), HandshakeFailure::Io);
        let labels: std::collections::BTreeSet<&str> =
            HandshakeFailure::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), HandshakeFailure::ALL.len());
        assert!(
            labels
                .iter()
                .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }

    #[test]
    fn common_name_is_read_from_a_client_certificate() {
        let ca = crate::pki::Authority::generate("test CA").unwrap();
        let issued = ca.issue_client("rsj-node-01").unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(peer_common_name(&der).as_deref(), Some("rsj-node-01"));
    }

    /// The message and its causes as `{:#}` of an `anyhow::Error` prints them.
    fn chain(e: &(dyn std::error::Error + 'static)) -> String {
        let mut text = e.to_string();
        let mut next = e.source();
        while let Some(cause) = next {
            text.push_str(&format!(": {cause}"));
            next = cause.source();
        }
        text
    }

    #[test]
    fn a_file_that_cannot_be_read_names_its_cause_once_in_a_chain() {
        let missing = Path::new("/nonexistent/exchange-ca.pem");
        let e = load_certs("CA", missing).unwrap_err();
        let io = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        let text = chain(&e);
        assert!(
            text.starts_with("cannot read CA file /nonexistent/exchange-ca.pem: "),
            "{text}"
        );
        let cause = text.rsplit(": ").next().unwrap().to_owned();
        assert_eq!(text.matches(&cause).count(), 1, "{text} ({io})");
    }

    #[test]
    fn expiry_is_valid_then_expiring_within_30_days_then_expired() {
        let now = 1_700_000_000;
        let at = |days: i64| CertificateValidity {
            subject: "node".into(),
            not_after: now + days * 86_400,
        };
        assert_eq!(at(365).expiry(now), Expiry::Valid);
        assert_eq!(at(365).days_left(now), 365);
        assert_eq!(at(30).expiry(now), Expiry::Valid);
        assert_eq!(at(29).expiry(now), Expiry::Soon);
        assert_eq!(at(0).expiry(now), Expiry::Expired);
        assert_eq!(at(-2).expiry(now), Expiry::Expired);
        let file = Path::new("/etc/x.pem");
        assert!(at(365).describe("CA", file, now).contains("365 days left"));
        assert!(
            at(3)
                .describe("CA", file, now)
                .starts_with("warning: CA /etc/x.pem")
        );
        assert!(
            at(-1)
                .describe("CA", file, now)
                .starts_with("error: CA /etc/x.pem")
        );
    }
}
