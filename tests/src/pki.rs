//! Certificates generated per test: the platform CA, the hub's server certificate
//! (SAN `127.0.0.1`, `localhost`) and the node's client certificate (CN = node id).
//! Private keys are written with mode 0600.

use std::path::{Path, PathBuf};

use exchange_protocol::pki::{Authority, Usage, Validity};
use exchange_protocol::tls::{MinTlsVersion, MutualTls};

/// A throwaway PKI in `<dir>/tls`.
pub struct Pki {
    /// The directory holding every file.
    pub dir: PathBuf,
    /// The platform CA: issues the hub's and the nodes' certificates.
    pub ca: Authority,
    /// The CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// The hub's certificate (PEM).
    pub hub_cert: PathBuf,
    /// The hub's private key (PEM, mode 0600).
    pub hub_key: PathBuf,
    /// The node's client certificate (PEM, CN = the node id).
    pub node_cert: PathBuf,
    /// The node's private key (PEM, mode 0600).
    pub node_key: PathBuf,
}

impl Pki {
    /// Generates the CA, the hub's certificate and a client certificate for `node`.
    pub fn new(dir: &Path, node: &str) -> Pki {
        exchange_protocol::tls::install_provider();
        let dir = dir.join("tls");
        std::fs::create_dir_all(&dir).expect("create the tls directory");
        let ca = Authority::generate("Test platform CA").expect("generate the CA");
        let ca_cert = dir.join("ca.pem");
        ca.write_cert(&ca_cert).expect("write the CA certificate");
        let (hub_cert, hub_key) = ca
            .issue_server(&["127.0.0.1", "localhost"])
            .expect("issue the hub certificate")
            .write(&dir, "hub")
            .expect("write the hub certificate");
        let (node_cert, node_key) = ca
            .issue_client(node)
            .expect("issue the node certificate")
            .write(&dir, "node")
            .expect("write the node certificate");
        Pki {
            dir,
            ca,
            ca_cert,
            hub_cert,
            hub_key,
            node_cert,
            node_key,
        }
    }

    /// The hub's TLS files: its certificate and key, and the CA that issues client certificates.
    pub fn hub_tls(&self) -> MutualTls {
        MutualTls {
            ca: self.ca_cert.clone(),
            cert: self.hub_cert.clone(),
            key: self.hub_key.clone(),
            min_version: MinTlsVersion::Tls13,
            crls: Vec::new(),
        }
    }

    /// Issues a certificate with full control, written as `<dir>/<stem>.pem` and `.key`.
    pub fn issue(
        &self,
        issuer: &Authority,
        common_name: &str,
        hosts: &[&str],
        usage: Usage,
        validity: Validity,
        stem: &str,
    ) -> (PathBuf, PathBuf) {
        issuer
            .issue(common_name, hosts, usage, validity)
            .expect("issue a certificate")
            .write(&self.dir, stem)
            .expect("write a certificate")
    }

    /// Generates another CA (one the hub and the agent do not trust) and writes its
    /// certificate as `<dir>/<stem>.pem`.
    pub fn other_ca(&self, stem: &str) -> (Authority, PathBuf) {
        let ca = Authority::generate("Some other CA").expect("generate a CA");
        let path = self.dir.join(format!("{stem}.pem"));
        ca.write_cert(&path).expect("write a CA certificate");
        (ca, path)
    }
}
