//! A throwaway certificate authority: what `exchange-demo` and the tests use (cargo feature
//! `pki`; the production binaries do not contain it).
//!
//! Production deployments use certificates issued by the platform's CA; nothing here is
//! needed for that. Keys are ECDSA P-256. Files are written with mode 0600 for keys.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// What can go wrong while issuing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused (its error is the `source`: a chain, `{:#}`, names it once).
    #[error("{}", crate::tr!(
        "certificate generation failed",
        "证书生成失败"
    ))]
    Generate(#[from] rcgen::Error),
    /// A certificate just issued does not parse back.
    #[error("{}", crate::tr!(
        "the certificate issued does not parse: {0}",
        "签发的证书无法解析：{0}", .0
    ))]
    Parse(String),
    /// Writing a file failed (the I/O error is the `source`: a chain, `{:#}`, names it once).
    #[error("{}", crate::tr!(
        "cannot write {path}",
        "无法写入 {path}",
        path = path.display()
    ))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate's serial number (big-endian), to revoke it ([`Authority::crl`]).
    pub serial: Vec<u8>,
}

impl Issued {
    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>.key` (mode 0600); returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write_file(&cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok((cert, key))
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    Ok(())
}

/// Validity of an issued certificate.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From an hour ago for a year.
    Current,
    /// Expired: from two days ago until yesterday.
    Expired,
}

/// A self-signed CA that can issue server and client certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl Authority {
    /// Generates a new CA with the given common name.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(3);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA certificate to `path`.
    pub fn write_cert(&self, path: &Path) -> Result<(), PkiError> {
        write_file(path, self.cert_pem.as_bytes(), 0o644)
    }

    /// Issues a server certificate valid for the given DNS names or IP addresses.
    pub fn issue_server(&self, hosts: &[&str]) -> Result<Issued, PkiError> {
        self.issue(
            hosts[0],
            hosts,
            ExtendedKeyUsagePurpose::ServerAuth,
            Validity::Current,
        )
    }

    /// Issues a client certificate whose common name is `common_name` (a node id).
    pub fn issue_client(&self, common_name: &str) -> Result<Issued, PkiError> {
        self.issue(
            common_name,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            Validity::Current,
        )
    }

    /// Issues a certificate with full control (used by tests for expired certificates).
    pub fn issue(
        &self,
        common_name: &str,
        hosts: &[&str],
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for host in hosts {
            let san = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                // A URI name, e.g. `urn:uscc:<code>` (a requester identity of verification).
                Err(_) if host.starts_with("urn:") => SanType::URI((*host).try_into()?),
                Err(_) => SanType::DnsName((*host).try_into()?),
            };
            params.subject_alt_names.push(san);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        match validity {
            Validity::Current => {
                params.not_before = now - Duration::hours(1);
                params.not_after = now + Duration::days(365);
            }
            Validity::Expired => {
                params.not_before = now - Duration::days(2);
                params.not_after = now - Duration::days(1);
            }
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let serial = x509_parser::parse_x509_certificate(cert.der())
            .map(|(_, c)| c.tbs_certificate.raw_serial().to_vec())
            .map_err(|e| PkiError::Parse(e.to_string()))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A certificate revocation list of this CA (PEM) revoking the certificates with the
    /// given serial numbers ([`Issued::serial`]), valid from an hour ago for 30 days;
    /// `number` is the CRL number (higher for a newer list).
    pub fn crl(&self, revoked: &[&[u8]], number: u64) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(30),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(serial),
                    revocation_time: now - Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Writes [`Authority::crl`] to `path`, replacing it at once (written beside it, then
    /// renamed over it, as an administrator replaces a CRL a running service watches).
    pub fn write_crl(&self, path: &Path, revoked: &[&[u8]], number: u64) -> Result<(), PkiError> {
        let mut next = path.as_os_str().to_owned();
        next.push(".new");
        let next = PathBuf::from(next);
        write_file(&next, self.crl(revoked, number)?.as_bytes(), 0o644)?;
        fs::rename(&next, path).map_err(|source| PkiError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

pub use rcgen::ExtendedKeyUsagePurpose as Usage;
