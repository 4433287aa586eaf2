//! `[node]` (this node's identity and data directory) and `[admin]` (the loopback listener
//! for metrics and health).

use super::{ConfigError, Node, Validator, raw};
use crate::identifier;
use exchange_protocol::tr;

impl Validator<'_> {
    pub(super) fn node(&self, n: raw::RawNode) -> Result<Node, ConfigError> {
        if n.id.is_empty()
            || !n
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(self.err("node.id", tr!("expected letters, digits, `-`, `_` or `.` (it must equal the common name of the node certificate)", "只能由字母、数字、`-`、`_` 或 `.` 组成（且必须与节点证书的通用名称 CN 相同）")));
        }
        if !identifier::is_valid_uscc(&n.department) {
            return Err(self.err("node.department", tr!("`{}` is not a valid 统一社会信用代码 (18 characters, GB 32100-2015 check character)", "`{}` 不是有效的统一社会信用代码（应为 18 位，末位校验码符合 GB 32100-2015）", n.department)));
        }
        Ok(Node {
            id: n.id,
            department: n.department,
            data_dir: self.path(&n.data_dir),
        })
    }

    pub(super) fn admin(
        &self,
        a: Option<raw::RawAdmin>,
    ) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let Some(listen) = a.and_then(|a| a.listen) else {
            return Ok(None);
        };
        if listen.is_empty() || listen == "off" {
            return Ok(None);
        }
        let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
            self.err(
                "admin.listen",
                tr!(
                    "`{listen}` is not an address and port, e.g. \"127.0.0.1:9464\" (or \"off\")",
                    "`{listen}` 不是“地址:端口”，应写成 \"127.0.0.1:9464\" 这样的形式（或写 \"off\" 关闭）"
                ),
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(self.err(
                "admin.listen",
                tr!("{addr} is not a loopback address: the admin listener has no authentication, so it listens on 127.0.0.1 or ::1 only (scrape through a local agent or an SSH tunnel)", "{addr} 不是回环地址：管理监听没有身份认证，因此只能监听 127.0.0.1 或 ::1（请通过本机的采集程序或 SSH 隧道抓取指标）"),
            ));
        }
        Ok(Some(addr))
    }
}
