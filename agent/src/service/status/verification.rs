//! The verification service (`[verify]`) in `exchange-agent status`: its listener and
//! whether it listens, its certificate's and client CA's expiry, the grants and budgets, and
//! the lockouts in force.
//!
//! Read by the `status` command itself, never by asking the service: the lockouts come from
//! the budgets' snapshot (`verify-ledger.json`) with the audit records after it replayed, as
//! the service restores them at start ([`crate::verify::ledger::load`]), without writing
//! anything; whether the listener listens from the kernel's table of listening sockets
//! (`/proc/net/tcp`, `/proc/net/tcp6`), since a probe connection would be counted and audited
//! as a refused handshake. Lockouts name requesters, resources and fields and count subjects;
//! a subject is never shown.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use exchange_protocol::tr;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::config::verify::Verify;
use crate::verify::ledger::{self, At, Locked};

/// The verification service as `status` sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    /// `[verify] listen`.
    pub listen: String,
    /// Whether a socket listens on it (`None`: this system does not tell).
    pub listening: Option<bool>,
    /// The server certificate and the client CA, with their expiry.
    pub certificates: Vec<Certificate>,
    /// The budgets against enumeration, per requester and resource.
    pub budgets: Budgets,
    /// Every grant, by resource.
    pub grants: Vec<GrantStatus>,
    /// The lockouts in force.
    pub lockouts: Vec<LockoutStatus>,
    /// Why the lockouts could not be read, if they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockouts_error: Option<String>,
}

/// One certificate of the verification service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Certificate {
    /// What it is for (`verify.cert`, `verify.client_ca`).
    pub what: String,
    /// Its file.
    pub path: PathBuf,
    /// Its subject's common name.
    pub subject: Option<String>,
    /// When it expires (UTC).
    pub not_after: Option<String>,
    /// Whole days left (negative once expired).
    pub days_left: Option<i64>,
    /// `valid`, `expiring` (fewer than 30 days left), `expired` or `unreadable`.
    pub state: String,
    /// What `status` prints about it.
    pub text: String,
}

/// The budgets of `[verify]` (docs/PROTOCOL.md §11.7).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Budgets {
    /// Items per minute.
    pub items_per_minute: u64,
    /// Distinct subjects per UTC day.
    pub subjects_per_day: u64,
    /// Answers other than `match` about one field of one subject within `lockout`.
    pub mismatch_lockout: u32,
    /// The same for an enumerable field.
    pub enumerable_lockout: u32,
    /// The window those are counted in.
    pub lockout: String,
}

/// One grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantStatus {
    /// The requester.
    pub requester: String,
    /// The resource code.
    pub resource: String,
    /// The fields it may compare.
    pub fields: Vec<String>,
    /// The purposes it may give (`None`: any).
    pub purposes: Option<Vec<String>>,
    /// When it ends (RFC 3339), if it does.
    pub expires: Option<String>,
    /// Whether it has ended.
    pub expired: bool,
    /// Whether it allows private set intersection.
    pub psi: bool,
}

/// One lockout in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockoutStatus {
    /// The requester.
    pub requester: String,
    /// The resource code.
    pub resource: String,
    /// The field locked for `subjects` subjects, or `None` for a daily quota.
    pub field: Option<String>,
    /// How many subjects (a field's lockout).
    pub subjects: u64,
    /// The daily quota used up (`subjects_per_day`, …), or `None` for a field's lockout.
    pub quota: Option<String>,
    /// When it lifts (RFC 3339, UTC; for a field, the last of its subjects').
    pub until: String,
}

/// The verification service of `config`, if it has `[verify]`; `running`: whether the
/// service runs (a stopped service listens nowhere).
pub fn status(config: &Config, running: bool) -> Option<Verification> {
    let v = config.verify.as_ref()?;
    let (lockouts, lockouts_error) = match lockouts(config, v) {
        Ok(l) => (l, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Some(Verification {
        listen: v.listen.to_string(),
        listening: if running {
            listening_on(v.listen)
        } else {
            Some(false)
        },
        certificates: certificates(v),
        budgets: Budgets {
            items_per_minute: v.quotas.items_per_minute,
            subjects_per_day: v.quotas.subjects_per_day,
            mismatch_lockout: v.quotas.mismatch_lockout,
            enumerable_lockout: v.quotas.enumerable_lockout,
            lockout: crate::text::duration_text(v.quotas.lockout),
        },
        grants: grants(config),
        lockouts,
        lockouts_error,
    })
}

/// The server certificate and the client CA, each certificate of the files with its expiry.
fn certificates(v: &Verify) -> Vec<Certificate> {
    let now = chrono::Utc::now().timestamp();
    let mut out = Vec::new();
    for (what, path) in [
        ("verify.cert", &v.tls.cert),
        ("verify.client_ca", &v.tls.ca),
    ] {
        match exchange_protocol::tls::certificate_validity(what, path) {
            Ok(certs) => out.extend(certs.into_iter().map(|c| Certificate {
                what: what.to_owned(),
                path: path.clone(),
                subject: Some(c.subject.clone()),
                not_after: Some(c.not_after_text()),
                days_left: Some(c.days_left(now)),
                state: c.expiry(now).label().to_owned(),
                text: c.describe(what, path, now),
            })),
            Err(e) => out.push(Certificate {
                what: what.to_owned(),
                path: path.clone(),
                subject: None,
                not_after: None,
                days_left: None,
                state: "unreadable".into(),
                text: tr!("error: {e}", "错误：{e}"),
            }),
        }
    }
    out
}

/// Every grant of every resource, in the configuration's order.
fn grants(config: &Config) -> Vec<GrantStatus> {
    let now = chrono::Utc::now();
    config
        .resources
        .iter()
        .flat_map(|r| {
            r.verification.grants.iter().map(move |g| GrantStatus {
                requester: g.requester.clone(),
                resource: r.code.clone(),
                fields: g.fields.clone(),
                purposes: g.purposes.clone(),
                expires: g.expires.map(beijing_time),
                expired: g.expires.is_some_and(|t| t <= now),
                psi: g.psi,
            })
        })
        .collect()
}

/// An instant as the configuration writes grant ends: RFC 3339 in UTC+8.
fn beijing_time(t: chrono::DateTime<chrono::Utc>) -> String {
    let utc8 = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8 is an offset");
    t.with_timezone(&utc8)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The lockouts in force now, from the budgets as the service would restore them.
fn lockouts(config: &Config, v: &Verify) -> Result<Vec<LockoutStatus>, ledger::LedgerError> {
    // The horizon the service restores with: the longest window, and a day for the daily
    // counters.
    let horizon = v.quotas.lockout + Duration::from_secs(86_400 + 3600);
    let ledger = ledger::load(&config.node.data_dir, horizon)?;
    let enumerable = |resource: &str, field: &str| {
        config
            .resource(resource)
            .is_some_and(|r| r.verification.is_enumerable(field))
    };
    let until = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| ms.to_string())
    };
    Ok(ledger
        .lockouts(&v.quotas, enumerable, At::now())
        .into_iter()
        .map(|l| {
            let (field, subjects, quota) = match l.what {
                Locked::Field { field, subjects } => (Some(field), subjects, None),
                Locked::Daily { quota } => (None, 0, Some(quota.to_owned())),
            };
            LockoutStatus {
                requester: l.requester,
                resource: l.resource,
                field,
                subjects,
                quota,
                until: until(l.until_ms),
            }
        })
        .collect())
}

/// Whether a TCP socket listens on `addr` (or on a wildcard address of its port), from the
/// kernel's tables; `None` when they cannot be read.
fn listening_on(addr: SocketAddr) -> Option<bool> {
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        if listening_sockets(&text)
            .any(|l| l.port() == addr.port() && same_or_wildcard(l.ip(), addr.ip()))
        {
            return Some(true);
        }
    }
    readable.then_some(false)
}

/// Whether a socket bound to `bound` receives connections to `wanted`.
fn same_or_wildcard(bound: IpAddr, wanted: IpAddr) -> bool {
    bound == wanted || bound.is_unspecified() || wanted.is_unspecified()
}

/// The local addresses of the listening sockets (state `0A`) of a `/proc/net/tcp` table.
fn listening_sockets(table: &str) -> impl Iterator<Item = SocketAddr> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let mut cols = line.split_whitespace();
        let local = cols.nth(1)?;
        (cols.nth(1)? == "0A").then_some(())?;
        let (ip, port) = local.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // Each 32-bit word is printed as the host reads the network-order bytes.
        let words: Option<Vec<[u8; 4]>> = (0..ip.len() / 8)
            .map(|i| {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                Some(word.to_ne_bytes())
            })
            .collect();
        let bytes: Vec<u8> = words?.concat();
        let ip = match bytes.len() {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
            16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    })
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listen = &self.listen;
        let state = match self.listening {
            Some(true) => tr!("listening", "正在监听"),
            Some(false) => tr!("NOT listening", "未在监听"),
            None => tr!("cannot tell whether it listens", "无法判断是否在监听"),
        };
        writeln!(
            f,
            "{}",
            tr!(
                "verification  {listen} ({state})",
                "核验服务      {listen}（{state}）"
            )
        )?;
        for c in &self.certificates {
            writeln!(f, "  {}", c.text)?;
        }
        let b = &self.budgets;
        let (items, subjects, mismatch, enumerable, window) = (
            b.items_per_minute,
            b.subjects_per_day,
            b.mismatch_lockout,
            b.enumerable_lockout,
            &b.lockout,
        );
        writeln!(
            f,
            "  {}",
            tr!(
                "budgets per requester and resource: {items} items a minute, {subjects} distinct subjects a day, {mismatch} answers other than match per field of a subject within {window} ({enumerable} for an enumerable field)",
                "每个请求方、每个资源的额度：每分钟 {items} 项，每天 {subjects} 个不同对象，同一对象同一字段在 {window} 内至多 {mismatch} 次非“一致”答复（可枚举字段 {enumerable} 次）"
            )
        )?;
        self.fmt_grants(f)?;
        self.fmt_lockouts(f)
    }
}

impl Verification {
    /// The grants, by requester: the resources and fields each may compare.
    fn fmt_grants(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut requesters: Vec<&str> = self.grants.iter().map(|g| g.requester.as_str()).collect();
        requesters.sort_unstable();
        requesters.dedup();
        let (count, n) = (self.grants.len(), requesters.len());
        writeln!(
            f,
            "  {}",
            tr!(
                "grants: {count} to {n} requesters",
                "授权：{count} 项，{n} 个请求方"
            )
        )?;
        for requester in requesters {
            let resources: Vec<String> = self
                .grants
                .iter()
                .filter(|g| g.requester == requester)
                .map(GrantStatus::text)
                .collect();
            writeln!(f, "    {requester} → {}", resources.join("; "))?;
        }
        Ok(())
    }

    /// The lockouts in force, or that there are none.
    fn fmt_lockouts(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.lockouts_error {
            return writeln!(
                f,
                "  {}",
                tr!("lockouts: cannot be read: {e}", "锁定：无法读取：{e}")
            );
        }
        if self.lockouts.is_empty() {
            return writeln!(f, "  {}", tr!("lockouts: none in force", "锁定：当前没有"));
        }
        let n = self.lockouts.len();
        writeln!(
            f,
            "  {}",
            tr!("lockouts in force: {n}", "生效中的锁定：{n} 项")
        )?;
        for l in &self.lockouts {
            let (requester, resource, until, subjects) =
                (&l.requester, &l.resource, &l.until, l.subjects);
            let line = match (&l.field, &l.quota) {
                (Some(field), _) => tr!(
                    "{requester} on {resource}: field `{field}` locked for {subjects} subjects, until {until}",
                    "{requester} 对 {resource}：{subjects} 个对象的字段 `{field}` 已锁定，至 {until}"
                ),
                (None, quota) => {
                    let quota = quota.as_deref().unwrap_or("?");
                    tr!(
                        "{requester} on {resource}: daily quota `{quota}` used up, until {until}",
                        "{requester} 对 {resource}：每日额度 `{quota}` 已用完，至 {until}"
                    )
                }
            };
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

impl GrantStatus {
    /// `R-1 (name, birth; purposes 社保资格认证; psi; expires …)`.
    fn text(&self) -> String {
        let mut parts = vec![self.fields.join(", ")];
        if let Some(p) = &self.purposes {
            let p = p.join(", ");
            parts.push(tr!("purposes {p}", "用途 {p}"));
        }
        if self.psi {
            parts.push(tr!("private set intersection", "隐私求交"));
        }
        if let Some(t) = &self.expires {
            parts.push(if self.expired {
                tr!("EXPIRED (ended {t})", "已过期（{t} 终止）")
            } else {
                tr!("ends {t}", "{t} 终止")
            });
        }
        format!("{} ({})", self.resource, parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_read_from_the_kernels_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue\n   0: 0100007F:24E3 00000000:0000 0A 00000000:00000000\n   1: 0100007F:9C40 0100007F:24E3 01 00000000:00000000\n";
        let found: Vec<SocketAddr> = listening_sockets(v4).collect();
        let expected = if cfg!(target_endian = "little") {
            vec!["127.0.0.1:9443".parse().unwrap()]
        } else {
            found.clone()
        };
        assert_eq!(found, expected);
        let v6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A\n";
        let found: Vec<SocketAddr> = listening_sockets(v6).collect();
        assert_eq!(found, vec!["[::]:8080".parse().unwrap()]);
        assert!(same_or_wildcard(
            found[0].ip(),
            "127.0.0.1".parse().unwrap()
        ));
    }
}
