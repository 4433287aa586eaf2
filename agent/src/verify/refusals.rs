//! Connections the verification listener refused in the TLS handshake, audited in aggregate so
//! that strangers cannot write the agent's disk: every refusal is counted at once in the
//! metrics (`exchange_tls_handshake_failures_total`, exact), and handed to one task over a
//! bounded queue; the task writes one `connection.rejected` audit entry per peer address and
//! reason per [`INTERVAL`] (with the count, the first and last time and the last TLS error),
//! and at shutdown, in one group commit; an IPv6 address counts by its /64. A flood of any
//! size from one address therefore costs at most one entry per reason per interval, and from
//! many addresses at most [`MAX_KEYS`] entries per interval plus one that counts the rest; a refusal that finds the queue full is counted in the next
//! entries (`dropped`), never blocking the accept loop.
//!
//! Entry detail: `{"listener": "verify", "peer": "<ip>", "reason": "<label>", "count": n,
//! "first": "<RFC 3339>", "last": "<RFC 3339>", "error": "<the last TLS error>"}`; the peers
//! past [`MAX_KEYS`] in one interval as `"peer": "other"`; refusals lost to a full queue as
//! `"reason": "dropped"`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use exchange_protocol::server::Rejection;
use tokio::sync::mpsc;
use tracing::warn;

use crate::audit;

/// How often the counted refusals are written.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Distinct (address, reason) pairs counted per interval; the rest are counted together.
pub const MAX_KEYS: usize = 64;
/// Refusals waiting for the task.
const QUEUE: usize = 4096;

/// What is counted of one (address, reason) in an interval.
struct Tally {
    count: u64,
    first: chrono::DateTime<chrono::Utc>,
    last: chrono::DateTime<chrono::Utc>,
    error: String,
}

/// The sending side: [`Refusals::report`] from the accept loop's connection tasks.
pub struct Refusals {
    /// To the task.
    queue: mpsc::Sender<Rejection>,
    /// Refusals that found the queue full.
    dropped: Arc<AtomicU64>,
}

/// The task counting and writing, for the end: [`Flusher::finish`].
pub struct Flusher {
    /// Tells the task to write what it counted and end.
    stop: tokio::sync::oneshot::Sender<()>,
    /// The task.
    task: tokio::task::JoinHandle<()>,
}

impl Flusher {
    /// Writes what was counted and ends the task.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

impl Refusals {
    /// Starts the task writing into `writer`.
    pub fn start(writer: audit::Writer) -> (Refusals, Flusher) {
        let (queue, mut received) = mpsc::channel::<Rejection>(QUEUE);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        let task = tokio::spawn(async move {
            let mut tally: BTreeMap<(String, &'static str), Tally> = BTreeMap::new();
            let mut every = tokio::time::interval(INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                tokio::select! {
                    r = received.recv() => match r {
                        Some(r) => add(&mut tally, r),
                        None => break,
                    },
                    _ = every.tick() => write(&writer, &mut tally, &lost).await,
                    _ = &mut stopped => break,
                }
            }
            while let Ok(r) = received.try_recv() {
                add(&mut tally, r);
            }
            write(&writer, &mut tally, &lost).await;
        });
        (Refusals { queue, dropped }, Flusher { stop, task })
    }

    /// Hands a refusal to the task, or counts it as dropped when the queue is full.
    pub fn report(&self, r: Rejection) {
        if self.queue.try_send(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts `r` under its address and reason (or under `other` past [`MAX_KEYS`]).
fn add(tally: &mut BTreeMap<(String, &'static str), Tally>, r: Rejection) {
    let now = chrono::Utc::now();
    let reason = r.reason.label();
    let mut key = (ip_of(r.peer.ip()), reason);
    if !tally.contains_key(&key) && tally.len() >= MAX_KEYS {
        key = ("other".to_owned(), reason);
    }
    let t = tally.entry(key).or_insert(Tally {
        count: 0,
        first: now,
        last: now,
        error: String::new(),
    });
    t.count += 1;
    t.last = now;
    t.error = r.detail;
}

/// An address as counted: IPv4 as is (an IPv4-mapped IPv6 address as IPv4), IPv6 by its
/// /64 network (one host can use a whole /64), e.g. `2001:db8:1:2::/64`.
fn ip_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
        v4 => v4.to_string(),
    }
}

/// Writes one entry per counted (address, reason), and one for the dropped, then forgets them.
async fn write(
    writer: &audit::Writer,
    tally: &mut BTreeMap<(String, &'static str), Tally>,
    dropped: &AtomicU64,
) {
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let lost = dropped.swap(0, Ordering::Relaxed);
    let mut entries: Vec<serde_json::Value> = std::mem::take(tally)
        .into_iter()
        .map(|((peer, reason), t)| {
            serde_json::json!({
                "listener": "verify",
                "peer": peer,
                "reason": reason,
                "count": t.count,
                "first": time(t.first),
                "last": time(t.last),
                "error": t.error,
            })
        })
        .collect();
    if lost > 0 {
        entries.push(serde_json::json!({
            "listener": "verify",
            "peer": "other",
            "reason": "dropped",
            "count": lost,
        }));
    }
    // All at once: the writer commits them together.
    let appends = entries
        .into_iter()
        .map(|detail| writer.append("-", "connection.rejected", "-", detail));
    for result in futures_util::future::join_all(appends).await {
        if let Err(e) = result {
            warn!(error = %e, "Cannot write the audit record of refused connections.");
        }
    }
}
