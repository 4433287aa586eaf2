//! `[node]` (this node's identity and data directory) and `[admin]` (the loopback listener
//! for metrics and health).

use super::{ConfigError, Node, Validator, raw};
use crate::identifier;

impl Validator<'_> {
    pub(super) fn node(&self, n: raw::RawNode) -> Result<Node, ConfigError> {
        if n.id.is_empty()
            || !n
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(self.err("node.id", "expected letters, digits, `-`, `_` or `.` (it must equal the common name of the node certificate)"));
        }
        if !identifier::is_valid_uscc(&n.department) {
            return Err(self.err("node.department", format!("`{}` is not a valid 统一社会信用代码 (18 characters, GB 32100-2015 check character)", n.department)));
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
                format!(
                    "`{listen}` is not an address and port, e.g. \"127.0.0.1:9464\" (or \"off\")"
                ),
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(self.err(
                "admin.listen",
                format!("{addr} is not a loopback address: the admin listener has no authentication, so it listens on 127.0.0.1 or ::1 only (scrape through a local agent or an SSH tunnel)"),
            ));
        }
        Ok(Some(addr))
    }
}
