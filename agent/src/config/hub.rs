//! `[hub]`: the hub's URL, the node's mutual TLS files and the request timeout; the node
//! certificate's common name is the node id.

use std::path::PathBuf;
use std::time::Duration;

use exchange_protocol::tls::{MinTlsVersion, MutualTls};
use exchange_protocol::tr;

use super::{ConfigError, Hub, Node, Validator, parse_duration, raw};

impl Validator<'_> {
    pub(super) fn hub(&self, h: raw::RawHub) -> Result<Hub, ConfigError> {
        if !h.url.starts_with("https://") {
            return Err(self.err(
                "hub.url",
                tr!(
                    "`{}` must start with https:// (the hub is reached over mutual TLS only)",
                    "`{}` 必须以 https:// 开头（只能通过双向 TLS 连接交换中心）",
                    h.url
                ),
            ));
        }
        let min_version = self.min_tls("hub.min_tls", h.min_tls.as_deref())?;
        let timeout = match h.timeout {
            Some(t) => parse_duration(&t).map_err(|e| self.err("hub.timeout", e))?,
            None => Duration::from_secs(30),
        };
        if timeout < Duration::from_secs(1) {
            return Err(self.err("hub.timeout", tr!("must be at least 1s", "不能小于 1s")));
        }
        let key = self.secret_path("hub.key", &h.key)?;
        Ok(Hub {
            url: h.url.trim_end_matches('/').to_owned(),
            tls: MutualTls {
                ca: self.existing_file("hub.ca", &h.ca)?,
                cert: self.existing_file("hub.cert", &h.cert)?,
                key,
                min_version,
                crls: self.crls("hub.crl", h.crl.as_deref())?,
            },
            timeout,
        })
    }

    /// The certificate revocation list files of `key`: each must exist and hold CRLs.
    pub(super) fn crls(
        &self,
        key: &str,
        files: Option<&[String]>,
    ) -> Result<Vec<PathBuf>, ConfigError> {
        files
            .unwrap_or_default()
            .iter()
            .map(|f| {
                let path = self.existing_file(key, f)?;
                exchange_protocol::tls::load_crls(std::slice::from_ref(&path))
                    .map_err(|e| self.err(key, e))?;
                Ok(path)
            })
            .collect()
    }

    /// The node certificate's common name is the node id: the hub takes the id from it.
    pub(super) fn node_certificate(&self, hub: &Hub, node: &Node) -> Result<(), ConfigError> {
        let certs = exchange_protocol::tls::load_certs("node certificate", &hub.tls.cert)
            .map_err(|e| self.err("hub.cert", e))?;
        match certs
            .first()
            .and_then(exchange_protocol::tls::peer_common_name)
        {
            Some(cn) if cn == node.id => Ok(()),
            cn => Err(self.err(
                "hub.cert",
                tr!(
                    "the certificate's common name is {} but node.id is `{}`; the hub takes the node id from the certificate, so they must be equal",
                    "证书的通用名称（CN）{}，而 node.id 是 `{}`；交换中心从证书中读取节点标识，两者必须相同",
                    cn.map(|c| tr!("`{c}`", "为 `{c}`"))
                        .unwrap_or_else(|| tr!("missing", "缺失")),
                    node.id
                ),
            )),
        }
    }

    /// The lowest TLS version of `key` (`[hub]` or `[verify]`): "1.3" (default) or "1.2".
    pub(super) fn min_tls(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> Result<MinTlsVersion, ConfigError> {
        match value {
            None | Some("1.3") => Ok(MinTlsVersion::Tls13),
            Some("1.2") => Ok(MinTlsVersion::Tls12),
            Some(other) => Err(self.err(
                key,
                tr!(
                    "`{other}` is not supported; expected \"1.3\" (default) or \"1.2\"",
                    "不支持 `{other}`；应为 \"1.3\"（默认）或 \"1.2\""
                ),
            )),
        }
    }
}
