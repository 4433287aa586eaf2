//! `[verify]` (the verification service's listener, identity, limits and quotas) and each
//! resource's `[resources.compare]`, `[[resources.grants]]` and `reveal_not_found`, as
//! written (`Raw…`, `deny_unknown_fields`) and validated: `[verify]` here, a resource's
//! settings in `config::verification`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use exchange_protocol::tls::MutualTls;
use exchange_protocol::tr;
use serde::Deserialize;

use super::{ConfigError, Keys, Validator, parse_duration};
use exchange_rules::compare::Compare;
use exchange_rules::pseudonym::PseudonymKey;

/// One `[[resources.grants]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The requester's identity, as read from its certificate (`[verify] requester_identity`).
    pub requester: String,
    /// The fields it may compare (names as in `[resources.fields]`).
    pub fields: Vec<String>,
    /// The purposes (用途) it may give; `None`: any.
    pub purposes: Option<Vec<String>>,
    /// The first instant the grant no longer holds; `None`: no end.
    pub expires: Option<DateTime<Utc>>,
    /// Whether it allows private set intersection (`psi = true`), where the provider cannot
    /// count guesses per subject.
    pub psi: bool,
    /// Whether enumerable fields may be claimed by private set intersection.
    pub psi_enumerable: bool,
}

/// `[verify]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub listen: String,
    pub cert: String,
    pub key: String,
    pub client_ca: String,
    pub min_tls: Option<String>,
    pub crl: Option<Vec<String>>,
    pub requester_identity: Option<String>,
    pub max_items: Option<usize>,
    pub pool_size: Option<usize>,
    pub query_timeout: Option<String>,
    pub comparison_key_file: Option<String>,
    pub comparison_key_version: Option<u32>,
    pub items_per_minute: Option<u64>,
    pub subjects_per_day: Option<u64>,
    pub mismatch_lockout: Option<u32>,
    pub enumerable_lockout: Option<u32>,
    pub lockout: Option<String>,
    pub psi_points_per_day: Option<u64>,
    pub psi_scans_per_day: Option<u64>,
    pub psi_max_tags: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_handshakes: Option<usize>,
    pub handshake_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub max_streams: Option<u32>,
    pub max_requests: Option<usize>,
}

/// `[[resources.grants]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrant {
    pub requester: String,
    pub fields: Vec<String>,
    pub purposes: Option<Vec<String>>,
    pub expires: Option<String>,
    pub psi: Option<bool>,
    pub psi_enumerable: Option<bool>,
}

/// A resource's verification keys as written (members of `[[resources]]`).
#[derive(Debug, Default)]
pub struct RawVerification {
    pub compare: Option<BTreeMap<String, String>>,
    pub grants: Vec<RawGrant>,
    pub reveal_not_found: Option<bool>,
    pub enumerable: Option<Vec<String>>,
}

/// How the requester's identity is read from its client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequesterIdentity {
    /// The subject's first common name (default).
    CommonName,
    /// A subjectAltName URI `urn:uscc:<统一社会信用代码>`: the code.
    UsccUri,
}

/// Budgets against enumeration, per requester and resource (docs/PROTOCOL.md §11.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Items answered per minute (sliding window).
    pub items_per_minute: u64,
    /// Distinct subjects asked about per day (UTC day).
    pub subjects_per_day: u64,
    /// Answers other than `match` about one field of one subject within `lockout`, at most.
    pub mismatch_lockout: u32,
    /// The same for a field the resource lists as `enumerable`.
    pub enumerable_lockout: u32,
    /// The window those are counted in.
    pub lockout: Duration,
    /// Blinded points a requester may have multiplied per UTC day (private set intersection).
    pub psi_points_per_day: u64,
    /// Private set intersection scans of the resource per UTC day.
    pub psi_scans_per_day: u64,
}

/// The validated `[verify]`.
#[derive(Debug, Clone)]
pub struct Verify {
    /// Where the HTTPS listener binds.
    pub listen: SocketAddr,
    /// This node's server certificate and key, and the CA that issues requesters' certificates.
    pub tls: MutualTls,
    /// How a requester is identified.
    pub requester_identity: RequesterIdentity,
    /// Most items per request.
    pub max_items: usize,
    /// Connections per source used by verification (apart from the pull's).
    pub pool_size: usize,
    /// Longest a lookup may take before the request is answered 504.
    pub query_timeout: Duration,
    /// The key HMAC claims are made under, shared with the requesters that send them.
    pub comparison_key: Option<PseudonymKey>,
    /// Quotas against enumeration.
    pub quotas: Quotas,
    /// Most tags a private set intersection answer holds: rows × (1 + claimed fields)
    /// (`413` above).
    pub psi_max_tags: u64,
    /// The listener's bounds: connections, handshakes, timeouts, streams, requests.
    pub listener: exchange_protocol::server::ConnectionLimits,
    /// A request body must arrive within this (`408`).
    pub body_timeout: Duration,
}

/// A resource's verification settings.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Field → semantics (`[resources.compare]`); a field without an entry compares `exact`.
    pub compare: BTreeMap<String, Compare>,
    /// Who may compare what (`[[resources.grants]]`).
    pub grants: Vec<Grant>,
    /// Whether answers say `found` / `not_found` per subject (and `no_value` for NULL).
    pub reveal_not_found: bool,
    /// Fields with a small value space (sex, status, dates, what a delivered mask leaves
    /// hidden), configured names: a stricter guess budget, and no private set intersection
    /// unless a grant allows it.
    pub enumerable: Vec<String>,
}

impl Verification {
    /// How `field` is compared.
    pub fn compare_of(&self, field: &str) -> Compare {
        self.compare
            .iter()
            .find(|(f, _)| f.eq_ignore_ascii_case(field))
            .map(|(_, c)| *c)
            .unwrap_or(Compare::Exact)
    }

    /// Whether `field` (a configured name) is enumerable.
    pub fn is_enumerable(&self, field: &str) -> bool {
        self.enumerable
            .iter()
            .any(|f| f.eq_ignore_ascii_case(field))
    }
}

impl Validator<'_> {
    /// `[verify]` in named steps: its listener and TLS files, how requesters are identified,
    /// the request limits, the comparison key, the quotas and the connection limits. It needs
    /// the pseudonym key, by which its audit records name subjects.
    pub(super) fn verify(
        &self,
        v: RawVerify,
        keys: &Keys,
        data_dir: &Path,
    ) -> Result<Verify, ConfigError> {
        if keys.pseudonym.is_none() {
            return Err(self.err(
                "verify",
                tr!(
                    "the verification service names subjects in its audit records by their keyed pseudonym, never in clear: set `pseudonym_key_file` in [policy]",
                    "核验服务在审计记录中只用带密钥的假名记录主体，从不记录明文：请在 [policy] 中设置 `pseudonym_key_file`"
                ),
            ));
        }
        let listen: SocketAddr = v.listen.trim().parse().map_err(|_| {
            self.err(
                "verify.listen",
                tr!(
                    "`{}` is not an address; expected an IP address and port such as \"0.0.0.0:9443\"",
                    "`{}` 不是有效地址；应为 IP 地址加端口，例如 \"0.0.0.0:9443\"",
                    v.listen
                ),
            )
        })?;
        let min_version = self.min_tls("verify.min_tls", v.min_tls.as_deref())?;
        let key = self.secret_path("verify.key", &v.key)?;
        let tls = MutualTls {
            ca: self.existing_file("verify.client_ca", &v.client_ca)?,
            cert: self.existing_file("verify.cert", &v.cert)?,
            key,
            min_version,
            crls: self.crls("verify.crl", v.crl.as_deref())?,
        };
        let requester_identity = self.requester_identity(v.requester_identity.as_deref())?;
        let (max_items, pool_size, query_timeout) = self.request_limits(&v)?;
        let comparison_key = self.comparison_key_file(&v, data_dir)?;
        let quotas = self.quotas(&v, max_items)?;
        let psi_max_tags = v.psi_max_tags.unwrap_or(600_000);
        if !(1..=100_000_000).contains(&psi_max_tags) {
            return Err(self.err(
                "verify.psi_max_tags",
                tr!(
                    "{psi_max_tags} is out of range; expected 1 to 100000000",
                    "{psi_max_tags} 超出范围；应为 1 到 100000000"
                ),
            ));
        }
        let (listener, body_timeout) = self.listener_limits(&v)?;
        Ok(Verify {
            listen,
            tls,
            requester_identity,
            max_items,
            pool_size,
            query_timeout,
            comparison_key,
            quotas,
            psi_max_tags,
            listener,
            body_timeout,
        })
    }

    fn requester_identity(&self, value: Option<&str>) -> Result<RequesterIdentity, ConfigError> {
        match value {
            None | Some("cn") => Ok(RequesterIdentity::CommonName),
            Some("uscc_uri") => Ok(RequesterIdentity::UsccUri),
            Some(other) => Err(self.err(
                "verify.requester_identity",
                tr!("`{other}` is not allowed; expected \"cn\" (the certificate's common name, default) or \"uscc_uri\" (a subjectAltName URI urn:uscc:<统一社会信用代码>)", "不允许 `{other}`；应为 \"cn\"（证书的通用名称，默认）或 \"uscc_uri\"（subjectAltName 中的 URI urn:uscc:<统一社会信用代码>）"),
            )),
        }
    }

    /// Most items per request, connections per source, and how long a lookup may take.
    fn request_limits(&self, v: &RawVerify) -> Result<(usize, usize, Duration), ConfigError> {
        let max_items = v.max_items.unwrap_or(1000);
        if !(1..=100_000).contains(&max_items) {
            return Err(self.err(
                "verify.max_items",
                tr!(
                    "{max_items} is out of range; expected 1 to 100000",
                    "{max_items} 超出范围；应为 1 到 100000"
                ),
            ));
        }
        let pool_size = v.pool_size.unwrap_or(4);
        if !(1..=256).contains(&pool_size) {
            return Err(self.err(
                "verify.pool_size",
                tr!("expected 1 to 256", "应为 1 到 256"),
            ));
        }
        let query_timeout = match &v.query_timeout {
            Some(t) => parse_duration(t).map_err(|e| self.err("verify.query_timeout", e))?,
            None => Duration::from_secs(5),
        };
        if query_timeout < Duration::from_millis(10) {
            return Err(self.err(
                "verify.query_timeout",
                tr!("must be at least 10ms", "不能小于 10ms"),
            ));
        }
        Ok((max_items, pool_size, query_timeout))
    }

    /// The key HMAC claims are made under (a key file like `[policy]`'s), with its version.
    fn comparison_key_file(
        &self,
        v: &RawVerify,
        data_dir: &Path,
    ) -> Result<Option<PseudonymKey>, ConfigError> {
        match &v.comparison_key_file {
            Some(f) => {
                let text = self.secret_file("verify.comparison_key_file", f, data_dir)?;
                Ok(Some(
                    PseudonymKey::from_hex(v.comparison_key_version.unwrap_or(1), &text)
                        .map_err(|e| self.err("verify.comparison_key_file", e))?,
                ))
            }
            None if v.comparison_key_version.is_some() => Err(self.err(
                "verify.comparison_key_version",
                tr!(
                    "a key version without `comparison_key_file`",
                    "设置了密钥版本，却没有设置 `comparison_key_file`"
                ),
            )),
            None => Ok(None),
        }
    }

    /// The quotas against enumeration: each at least 1, and a full request of `max_items`
    /// always admissible.
    fn quotas(&self, v: &RawVerify, max_items: usize) -> Result<Quotas, ConfigError> {
        let lockout = match &v.lockout {
            Some(t) => parse_duration(t).map_err(|e| self.err("verify.lockout", e))?,
            None => Duration::from_secs(86_400),
        };
        if lockout < Duration::from_secs(60) {
            return Err(self.err(
                "verify.lockout",
                tr!(
                    "must be at least 1m (it is the window in which wrong answers are counted)",
                    "不能小于 1m（它是统计错误回答次数的时间窗口）"
                ),
            ));
        }
        let quotas = Quotas {
            items_per_minute: v.items_per_minute.unwrap_or(6000),
            subjects_per_day: v.subjects_per_day.unwrap_or(100_000),
            mismatch_lockout: v.mismatch_lockout.unwrap_or(5),
            enumerable_lockout: v.enumerable_lockout.unwrap_or(1),
            lockout,
            psi_points_per_day: v.psi_points_per_day.unwrap_or(10_000),
            psi_scans_per_day: v.psi_scans_per_day.unwrap_or(100),
        };
        for (k, n) in [
            ("verify.items_per_minute", quotas.items_per_minute),
            ("verify.subjects_per_day", quotas.subjects_per_day),
            (
                "verify.mismatch_lockout",
                u64::from(quotas.mismatch_lockout),
            ),
            (
                "verify.enumerable_lockout",
                u64::from(quotas.enumerable_lockout),
            ),
            ("verify.psi_points_per_day", quotas.psi_points_per_day),
            ("verify.psi_scans_per_day", quotas.psi_scans_per_day),
        ] {
            if n == 0 {
                return Err(self.err(k, tr!("must be at least 1", "不能小于 1")));
            }
        }
        self.quotas_admit(&quotas, max_items)?;
        Ok(quotas)
    }

    /// A request of `max_items` must be admissible, or every full request is refused; an
    /// enumerable field gets the stricter budget.
    fn quotas_admit(&self, quotas: &Quotas, max_items: usize) -> Result<(), ConfigError> {
        for (k, n, what) in [
            (
                "verify.items_per_minute",
                quotas.items_per_minute,
                exchange_protocol::lang::pick("items per minute", "每分钟条数"),
            ),
            (
                "verify.subjects_per_day",
                quotas.subjects_per_day,
                exchange_protocol::lang::pick("distinct subjects per day", "每日不同主体数"),
            ),
        ] {
            if (max_items as u64) > n {
                return Err(self.err(
                    k,
                    tr!("{n} {what} is less than max_items ({max_items}), so a request of max_items items could never be answered; raise it or lower max_items", "{what} {n} 小于 max_items（{max_items}），满 max_items 条的请求将永远得不到回答；请调高此值，或调低 max_items"),
                ));
            }
        }
        if quotas.enumerable_lockout > quotas.mismatch_lockout {
            return Err(self.err(
                "verify.enumerable_lockout",
                tr!(
                    "{} is more than mismatch_lockout ({}): an enumerable field (a small value space) gets the stricter budget",
                    "{} 大于 mismatch_lockout（{}）：可枚举字段（取值空间小）的预算应更严格",
                    quotas.enumerable_lockout, quotas.mismatch_lockout
                ),
            ));
        }
        if quotas.psi_points_per_day < 2 * max_items as u64 {
            return Err(self.err(
                "verify.psi_points_per_day",
                tr!("{} is less than twice max_items ({max_items}), so a private set intersection request of max_items items with one claim each could never be answered; raise it or lower max_items", "{} 小于 max_items（{max_items}）的两倍，含 max_items 条、每条一个声称值的隐私集合求交请求将永远得不到回答；请调高此值，或调低 max_items", quotas.psi_points_per_day),
            ));
        }
        Ok(())
    }

    /// The listener's bounds (connections, handshakes, timeouts, streams, requests) and the
    /// time a request body may take.
    fn listener_limits(
        &self,
        v: &RawVerify,
    ) -> Result<(exchange_protocol::server::ConnectionLimits, Duration), ConfigError> {
        let default = exchange_protocol::server::ConnectionLimits::DEFAULT;
        let duration = |key: &str, value: &Option<String>, default: Duration| match value {
            Some(t) => {
                let d = parse_duration(t).map_err(|e| self.err(key, e))?;
                if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&d) {
                    return Err(self.err(key, tr!("expected 100ms to 1h", "应在 100ms 到 1h 之间")));
                }
                Ok(d)
            }
            None => Ok(default),
        };
        let count = |key: &str, value: Option<usize>, default: usize, max: usize| {
            let n = value.unwrap_or(default);
            if (1..=max).contains(&n) {
                Ok(n)
            } else {
                Err(self.err(
                    key,
                    tr!(
                        "{n} is out of range; expected 1 to {max}",
                        "{n} 超出范围；应为 1 到 {max}"
                    ),
                ))
            }
        };
        let listener = exchange_protocol::server::ConnectionLimits {
            max_connections: count(
                "verify.max_connections",
                v.max_connections,
                default.max_connections,
                100_000,
            )?,
            max_handshakes: count(
                "verify.max_handshakes",
                v.max_handshakes,
                default.max_handshakes,
                10_000,
            )?,
            handshake_timeout: duration(
                "verify.handshake_timeout",
                &v.handshake_timeout,
                default.handshake_timeout,
            )?,
            header_timeout: duration(
                "verify.header_timeout",
                &v.header_timeout,
                default.header_timeout,
            )?,
            idle_timeout: duration("verify.idle_timeout", &v.idle_timeout, default.idle_timeout)?,
            max_streams: count(
                "verify.max_streams",
                v.max_streams.map(|n| n as usize),
                default.max_streams as usize,
                10_000,
            )? as u32,
            max_requests: count(
                "verify.max_requests",
                v.max_requests,
                default.max_requests,
                100_000,
            )?,
        };
        let body_timeout = duration(
            "verify.body_timeout",
            &v.body_timeout,
            Duration::from_secs(30),
        )?;
        Ok((listener, body_timeout))
    }
}
