//! `[hub]`: the hub's URL, the node's mutual TLS files and the request timeout; the node
//! certificate's common name is the node id.

use std::path::PathBuf;
use std::time::Duration;

use exchange_protocol::tls::{MinTlsVersion, MutualTls};
use exchange_protocol::tr;

use super::{ConfigError, Hub, Node, Offline, Validator, parse_duration, raw};

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
        let timeout = match &h.timeout {
            Some(t) => parse_duration(t).map_err(|e| self.err("hub.timeout", e))?,
            None => Duration::from_secs(30),
        };
        if timeout < Duration::from_secs(1) {
            return Err(self.err("hub.timeout", tr!("must be at least 1s", "不能小于 1s")));
        }
        let key = self.secret_path("hub.key", &h.key)?;
        let offline = self.offline(&h)?;
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
            offline,
        })
    }

    /// `mode`, and for `"offline"` its `outbox`, `inbox` and `resend_after`.
    fn offline(&self, h: &raw::RawHub) -> Result<Option<Offline>, ConfigError> {
        match h.mode.as_deref() {
            None | Some("online") => {
                for (key, set) in [
                    ("outbox", h.outbox.is_some()),
                    ("inbox", h.inbox.is_some()),
                    ("resend_after", h.resend_after.is_some()),
                ] {
                    if set {
                        return Err(self.err(
                            &format!("hub.{key}"),
                            tr!(
                                "only an offline hub has `{key}`; set `mode = \"offline\"` or remove it",
                                "只有离线模式才有 `{key}`；请设置 `mode = \"offline\"` 或删除此项"
                            ),
                        ));
                    }
                }
                Ok(None)
            }
            Some("offline") => {
                let dir = |key: &str, value: Option<&String>| -> Result<PathBuf, ConfigError> {
                    let full = format!("hub.{key}");
                    let Some(value) = value else {
                        return Err(self.err(&full, tr!(
                            "an offline hub needs `{key}`, a directory the gateway (网闸) carries files through",
                            "离线模式需要设置 `{key}`：由网闸传递文件的目录"
                        )));
                    };
                    let path = self.path(value);
                    if !path.is_dir() {
                        return Err(self.err(&full, tr!(
                            "directory {} does not exist; create it, writable by the agent's user",
                            "目录 {} 不存在；请创建该目录，并允许本程序的运行用户写入",
                            path.display()
                        )));
                    }
                    Ok(path)
                };
                let outbox = dir("outbox", h.outbox.as_ref())?;
                let inbox = dir("inbox", h.inbox.as_ref())?;
                if outbox == inbox {
                    return Err(self.err("hub.inbox", tr!(
                        "must not be the outbox: batches go out through one directory, answers come back through another",
                        "不能与 outbox 相同：批次从一个目录发出，应答从另一个目录返回"
                    )));
                }
                let resend_after = match &h.resend_after {
                    Some(t) => parse_duration(t).map_err(|e| self.err("hub.resend_after", e))?,
                    None => Duration::from_secs(3600),
                };
                if resend_after < Duration::from_secs(1) {
                    return Err(self.err("hub.resend_after", tr!("must be at least 1s", "不能小于 1s")));
                }
                Ok(Some(Offline { outbox, inbox, resend_after }))
            }
            Some(other) => Err(self.err(
                "hub.mode",
                tr!(
                    "`{other}` is not a mode; expected \"online\" (default: batches go over mutual TLS) or \"offline\" (batches and answers as files through a gateway)",
                    "`{other}` 不是有效模式；应为 \"online\"（默认：通过双向 TLS 发送批次）或 \"offline\"（批次与应答以文件形式经网闸传递）"
                ),
            )),
        }
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
