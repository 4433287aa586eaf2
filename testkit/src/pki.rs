//! Certificates generated per test (or per benchmark or demo run): the platform CA, the hub's
//! server certificate (SAN `127.0.0.1`, `localhost`) and the node's client certificate
//! (CN = node id), on `exchange_protocol::pki`. Private keys are written with mode 0600.

use std::path::{Path, PathBuf};

use exchange_protocol::pki::{Authority, PkiError, Usage, Validity};
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
    /// Generates the CA, the hub's certificate and a client certificate for `node`; fails the
    /// test when it cannot.
    pub fn new(dir: &Path, node: &str) -> Pki {
        Pki::generate(dir, "Test platform CA", node).unwrap_or_else(|e| {
            panic!(
                "cannot generate the test certificates in {}: {e}",
                dir.display()
            )
        })
    }

    /// Generates a CA named `ca_name`, the hub's certificate (SAN `127.0.0.1`, `localhost`)
    /// and a client certificate for `node` (CN), written in `<dir>/tls` as `ca.pem`,
    /// `hub.pem`/`hub.key` and `node.pem`/`node.key`. Installs the TLS crypto provider.
    pub fn generate(dir: &Path, ca_name: &str, node: &str) -> Result<Pki, PkiError> {
        exchange_protocol::tls::install_provider();
        let dir = dir.join("tls");
        std::fs::create_dir_all(&dir).map_err(|source| PkiError::Write {
            path: dir.clone(),
            source,
        })?;
        let ca = Authority::generate(ca_name)?;
        let ca_cert = dir.join("ca.pem");
        ca.write_cert(&ca_cert)?;
        let (hub_cert, hub_key) = ca
            .issue_server(&["127.0.0.1", "localhost"])?
            .write(&dir, "hub")?;
        let (node_cert, node_key) = ca.issue_client(node)?.write(&dir, "node")?;
        Ok(Pki {
            dir,
            ca,
            ca_cert,
            hub_cert,
            hub_key,
            node_cert,
            node_key,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_writes_the_ca_the_hub_and_the_node_in_tls() {
        let dir = crate::TestDir::new();
        let pki = Pki::generate(dir.path(), "Kit CA", "node-01").unwrap();
        assert_eq!(pki.dir, dir.path().join("tls"));
        for (path, name) in [
            (&pki.ca_cert, "ca.pem"),
            (&pki.hub_cert, "hub.pem"),
            (&pki.hub_key, "hub.key"),
            (&pki.node_cert, "node.pem"),
            (&pki.node_key, "node.key"),
        ] {
            assert_eq!(*path, pki.dir.join(name));
            assert!(path.is_file(), "{name}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pki.node_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
