//! The signature a node puts on each batch (docs/PROTOCOL.md §4.7): anyone holding the node's
//! certificate can check, later and without the agent, that the node sent this batch.
//!
//! Format:
//! - the signed message is the ASCII text
//!   `exchange-batch-signature-v1\n{node}\n{resource}\n{stream}\n{seq}\n{sm3}\n`, where `sm3`
//!   is the batch's `exchange-content-sm3` (64 lower-case hex digits): the digest binds the
//!   records, the rest binds the batch's place in its stream;
//! - it is signed with the private key of the node's TLS client certificate, with the first of
//!   the schemes of [`SCHEMES`] that key supports; the header `exchange-signature` carries
//!   `{scheme}:{base64 of the signature}` (standard alphabet, padded); ECDSA signatures are
//!   DER `Ecdsa-Sig-Value`s, as `openssl dgst -verify` reads them;
//! - a hub verifies it against the public key of the certificate the connection presented.
//!
//! Invariant: this module signs and verifies with the workspace's one crypto provider (rustls
//! over `ring`); no other signature code exists.

use std::sync::Arc;

use base64::Engine;
use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::SigningKey;

/// The schemes a batch may be signed with, by name in the header, in order of preference.
pub const SCHEMES: [(&str, SignatureScheme); 4] = [
    ("ecdsa-p256-sha256", SignatureScheme::ECDSA_NISTP256_SHA256),
    ("ecdsa-p384-sha384", SignatureScheme::ECDSA_NISTP384_SHA384),
    ("rsa-pkcs1-sha256", SignatureScheme::RSA_PKCS1_SHA256),
    ("ed25519", SignatureScheme::ED25519),
];

/// The header that carries a batch's signature.
pub const HEADER: &str = "exchange-signature";

/// What a batch's signature covers: its identity and digest.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The sending node.
    pub node: &'a str,
    /// The resource code.
    pub resource: &'a str,
    /// The stream id.
    pub stream: &'a str,
    /// The batch's sequence number.
    pub seq: u64,
    /// SM3 of the uncompressed body, hex.
    pub sm3: &'a str,
}

impl Signed<'_> {
    /// The signed message (module doc).
    pub fn message(&self) -> Vec<u8> {
        format!(
            "exchange-batch-signature-v1\n{}\n{}\n{}\n{}\n{}\n",
            self.node,
            self.resource,
            self.stream,
            self.seq,
            self.sm3.to_ascii_lowercase()
        )
        .into_bytes()
    }
}

/// Why a signature cannot be made or is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The node's key is of a kind no scheme of [`SCHEMES`] uses.
    #[error("{}", crate::tr!(
        "the node's key cannot sign batches: {reason}",
        "节点私钥无法签名批次：{reason}"
    ))]
    Key {
        /// Why.
        reason: String,
    },
    /// The header is not `{scheme}:{base64}` with a known scheme.
    #[error("{}", crate::tr!(
        "header `exchange-signature` must be SCHEME:BASE64 with SCHEME one of {schemes}",
        "请求头 `exchange-signature` 应为 SCHEME:BASE64，SCHEME 为以下之一：{schemes}"
    ))]
    Malformed {
        /// The schemes allowed.
        schemes: String,
    },
    /// The signature does not verify against the certificate.
    #[error("{}", crate::tr!(
        "the batch's signature does not verify against the node's certificate: {reason}",
        "批次签名无法用节点证书验证：{reason}"
    ))]
    Invalid {
        /// Why.
        reason: String,
    },
}

/// Signs batches with a node's key.
#[derive(Debug, Clone)]
pub struct BatchSigner {
    key: Arc<dyn SigningKey>,
    scheme: (&'static str, SignatureScheme),
}

impl BatchSigner {
    /// A signer for `key` (the node's TLS client key), with the first scheme of [`SCHEMES`]
    /// it supports.
    pub fn new(key: &PrivateKeyDer<'_>) -> Result<BatchSigner, SignatureError> {
        let key = rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| {
            SignatureError::Key {
                reason: e.to_string(),
            }
        })?;
        let offered: Vec<SignatureScheme> = SCHEMES.iter().map(|(_, s)| *s).collect();
        let chosen = key
            .choose_scheme(&offered)
            .ok_or_else(|| SignatureError::Key {
                reason: crate::tr!(
                    "its algorithm is none of ECDSA P-256/P-384, RSA or Ed25519",
                    "其算法不是 ECDSA P-256/P-384、RSA 或 Ed25519"
                ),
            })?
            .scheme();
        let scheme = *SCHEMES
            .iter()
            .find(|(_, s)| *s == chosen)
            .expect("chosen among SCHEMES");
        Ok(BatchSigner { key, scheme })
    }

    /// The header value for a batch: `{scheme}:{base64}`.
    pub fn sign(&self, batch: &Signed<'_>) -> Result<String, SignatureError> {
        self.sign_message(&batch.message())
    }

    /// The header value for any message (an offline answer's, docs/PROTOCOL.md §12).
    pub fn sign_message(&self, message: &[u8]) -> Result<String, SignatureError> {
        let signer = self
            .key
            .choose_scheme(&[self.scheme.1])
            .expect("the scheme chosen when the signer was made");
        let signature = signer.sign(message).map_err(|e| SignatureError::Key {
            reason: e.to_string(),
        })?;
        Ok(format!(
            "{}:{}",
            self.scheme.0,
            base64::engine::general_purpose::STANDARD.encode(signature)
        ))
    }
}

/// A signature header read: the scheme's name and the signature's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The scheme, as named in [`SCHEMES`].
    pub scheme: &'static str,
    /// The signature.
    pub bytes: Vec<u8>,
}

impl Signature {
    /// Reads a header value.
    pub fn parse(value: &str) -> Result<Signature, SignatureError> {
        let malformed = || SignatureError::Malformed {
            schemes: SCHEMES.map(|(n, _)| n).join(", "),
        };
        let (name, b64) = value.split_once(':').ok_or_else(malformed)?;
        let scheme = SCHEMES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(malformed)?
            .0;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| malformed())?;
        Ok(Signature { scheme, bytes })
    }

    /// Checks the signature of `batch` against `certificate`'s public key.
    pub fn verify(
        &self,
        batch: &Signed<'_>,
        certificate: &CertificateDer<'_>,
    ) -> Result<(), SignatureError> {
        self.verify_message(&batch.message(), certificate)
    }

    /// Checks the signature of any message against `certificate`'s public key.
    pub fn verify_message(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
    ) -> Result<(), SignatureError> {
        let scheme = SCHEMES
            .iter()
            .find(|(n, _)| *n == self.scheme)
            .expect("parsed among SCHEMES")
            .1;
        let invalid = |reason: String| SignatureError::Invalid { reason };
        let algorithms = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, algs)| *algs)
            .unwrap_or_default();
        let cert =
            webpki::EndEntityCert::try_from(certificate).map_err(|e| invalid(e.to_string()))?;
        // A scheme may map to several algorithms (RSA key sizes): one must verify.
        let mut last = crate::tr!("no algorithm for the scheme", "没有该方案的算法");
        for alg in algorithms {
            match cert.verify_signature(*alg, message, &self.bytes) {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(invalid(last))
    }

    /// The header value again.
    pub fn header(&self) -> String {
        format!(
            "{}:{}",
            self.scheme,
            base64::engine::general_purpose::STANDARD.encode(&self.bytes)
        )
    }
}

#[cfg(all(test, feature = "pki"))]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn a_batch_signed_by_a_node_verifies_with_its_certificate_only_unchanged() {
        let ca = crate::pki::Authority::generate("test CA").unwrap();
        let node = ca.issue_client("node-a").unwrap();
        let other = ca.issue_client("node-b").unwrap();
        let key = PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).unwrap();
        let cert = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap();
        let other_cert = CertificateDer::from_pem_slice(other.cert_pem.as_bytes()).unwrap();
        let batch = Signed {
            node: "node-a",
            resource: "R",
            stream: "0123456789abcdef0123456789abcdef",
            seq: 7,
            sm3: &"ab".repeat(32),
        };
        let header = BatchSigner::new(&key).unwrap().sign(&batch).unwrap();
        assert!(header.starts_with("ecdsa-p256-sha256:"), "{header}");
        let signature = Signature::parse(&header).unwrap();
        signature.verify(&batch, &cert).unwrap();
        assert_eq!(signature.header(), header);
        // Another batch, another place in the stream, another node's certificate: refused.
        let moved = Signed { seq: 8, ..batch };
        assert!(signature.verify(&moved, &cert).is_err());
        let other_body = Signed {
            sm3: &"cd".repeat(32),
            ..batch
        };
        assert!(signature.verify(&other_body, &cert).is_err());
        assert!(signature.verify(&batch, &other_cert).is_err());
        assert!(Signature::parse("md5:AAAA").is_err());
        assert!(Signature::parse("ecdsa-p256-sha256:***").is_err());
    }
}
