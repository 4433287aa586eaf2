//! Quotas against enumeration (docs/CONFIG.md, `[verify]`): per requester and resource, items
//! per minute (a sliding window) and distinct subjects per UTC day; per requester, resource
//! and subject, a lock after `mismatch_lockout` mismatched answers within an hour.
//!
//! The ledger lives in memory (a restart forgets it) and holds subjects only as keyed
//! digests (the audit pseudonym's MAC), never in clear. Its size is bounded: per requester
//! and resource at most `subjects_per_day` digests, and mismatch records only for subjects
//! mismatched within the last hour (swept at most once a [`SWEEP`], so an entry may outlive
//! its hour by up to that much).
//!
//! Every operation costs time in proportion to the request's own subjects, not to the
//! ledger's size (a verification service answers 1,000 requests a second under one lock):
//! the minute's item count is kept as a running sum, and expired mismatch records are swept
//! once a [`SWEEP`], not on every request.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::config::verify::Quotas;

/// The window of the item rate.
const MINUTE: Duration = Duration::from_secs(60);
/// The window in which mismatches are counted.
const HOUR: Duration = Duration::from_secs(3600);
/// How often expired mismatch records are swept out of an account.
const SWEEP: Duration = Duration::from_secs(60);

/// A subject, as its keyed digest.
pub type SubjectDigest = [u8; 32];

/// Why a request is throttled (429), and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    /// What is exceeded, without any subject.
    pub reason: String,
    /// Seconds until a retry can succeed.
    pub retry_after: u64,
}

/// Counters of one requester on one resource.
#[derive(Debug, Default)]
struct Account {
    /// (when, items) of the requests answered within the last minute.
    recent: VecDeque<(Instant, u64)>,
    /// The sum of the items in `recent`.
    recent_items: u64,
    /// The UTC day `subjects` counts, as days since 1970.
    day: i64,
    /// Distinct subjects asked about that day.
    subjects: HashSet<SubjectDigest>,
    /// Per subject: instants of mismatched answers within the last hour, and a lock's end.
    mismatches: HashMap<SubjectDigest, (VecDeque<Instant>, Option<Instant>)>,
    /// When `mismatches` was last swept of expired records.
    swept: Option<Instant>,
}

/// When a request is admitted.
#[derive(Debug, Clone, Copy)]
pub struct At {
    /// Now, on the monotonic clock.
    pub now: Instant,
    /// Today (UTC), as days since 1970.
    pub today: i64,
    /// Seconds until the next UTC midnight.
    pub secs_to_midnight: u64,
}

impl At {
    /// The present moment.
    pub fn now() -> At {
        let utc = chrono::Utc::now();
        let secs = utc.timestamp();
        At {
            now: Instant::now(),
            today: secs.div_euclid(86_400),
            secs_to_midnight: (86_400 - secs.rem_euclid(86_400)) as u64,
        }
    }
}

/// Every account, by (requester, resource).
#[derive(Debug, Default)]
pub struct Ledger {
    /// The accounts.
    accounts: HashMap<(String, String), Account>,
}

impl Ledger {
    /// Admits a request of `subjects` (one per item, repeats allowed) or says why not; an
    /// admitted request is counted.
    pub fn admit(
        &mut self,
        quotas: &Quotas,
        requester: &str,
        resource: &str,
        subjects: &[SubjectDigest],
        at: At,
    ) -> Result<(), Throttled> {
        let At {
            now,
            today,
            secs_to_midnight,
        } = at;
        let account = self
            .accounts
            .entry((requester.to_owned(), resource.to_owned()))
            .or_default();
        while let Some(&(t, k)) = account.recent.front()
            && now.duration_since(t) >= MINUTE
        {
            account.recent.pop_front();
            account.recent_items -= k;
        }
        // Locked subjects first: their lock says when to come back.
        for s in subjects {
            if let Some((_, Some(until))) = account.mismatches.get(s)
                && *until > now
            {
                return Err(Throttled {
                    reason: format!(
                        "a subject of this request is locked for requester `{requester}` on resource `{resource}` after {} mismatched answers within an hour",
                        quotas.mismatch_lockout
                    ),
                    retry_after: until.duration_since(now).as_secs().max(1),
                });
            }
        }
        let n = subjects.len() as u64;
        let used = account.recent_items;
        if used + n > quotas.items_per_minute {
            // Wait until enough of the window has passed for these items to fit.
            let mut freed = quotas.items_per_minute.saturating_sub(used);
            let mut retry = MINUTE;
            for (t, k) in &account.recent {
                freed += k;
                if freed >= n {
                    retry = MINUTE.saturating_sub(now.duration_since(*t));
                    break;
                }
            }
            return Err(Throttled {
                reason: format!(
                    "requester `{requester}` is over its quota of {} items per minute on resource `{resource}`",
                    quotas.items_per_minute
                ),
                retry_after: retry.as_secs().max(1),
            });
        }
        if account.day != today {
            account.day = today;
            account.subjects.clear();
        }
        let new: HashSet<&SubjectDigest> = subjects
            .iter()
            .filter(|s| !account.subjects.contains(*s))
            .collect();
        if account.subjects.len() as u64 + new.len() as u64 > quotas.subjects_per_day {
            return Err(Throttled {
                reason: format!(
                    "requester `{requester}` is over its quota of {} distinct subjects per day on resource `{resource}`",
                    quotas.subjects_per_day
                ),
                retry_after: secs_to_midnight.max(1),
            });
        }
        account.subjects.extend(new.into_iter().copied());
        account.recent.push_back((now, n));
        account.recent_items += n;
        Ok(())
    }

    /// Records the answer's mismatches: a subject with `mismatch_lockout` of them within an
    /// hour is locked for `lockout`.
    pub fn record_mismatches(
        &mut self,
        quotas: &Quotas,
        requester: &str,
        resource: &str,
        mismatched: &[SubjectDigest],
        now: Instant,
    ) {
        let Some(account) = self
            .accounts
            .get_mut(&(requester.to_owned(), resource.to_owned()))
        else {
            return;
        };
        let expire = |times: &mut VecDeque<Instant>| {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= HOUR)
            {
                times.pop_front();
            }
        };
        if account
            .swept
            .is_none_or(|at| now.duration_since(at) >= SWEEP)
        {
            account.mismatches.retain(|_, (times, until)| {
                expire(times);
                !times.is_empty() || until.is_some_and(|u| u > now)
            });
            account.swept = Some(now);
        }
        for s in mismatched {
            let (times, until) = account.mismatches.entry(*s).or_default();
            expire(times);
            times.push_back(now);
            if times.len() >= quotas.mismatch_lockout as usize {
                *until = Some(now + quotas.lockout);
                times.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(now: Instant, today: i64, secs_to_midnight: u64) -> At {
        At {
            now,
            today,
            secs_to_midnight,
        }
    }

    fn quotas() -> Quotas {
        Quotas {
            items_per_minute: 5,
            subjects_per_day: 4,
            mismatch_lockout: 3,
            lockout: Duration::from_secs(600),
        }
    }

    #[test]
    fn items_per_minute_is_a_sliding_window() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        let s = [[1u8; 32]; 3];
        l.admit(&quotas(), "a", "R", &s, at(t0, 0, 100)).unwrap();
        let over = l
            .admit(
                &quotas(),
                "a",
                "R",
                &s,
                at(t0 + Duration::from_secs(10), 0, 100),
            )
            .unwrap_err();
        assert_eq!(over.retry_after, 50);
        // Another requester and another resource have their own accounts.
        l.admit(&quotas(), "b", "R", &s, at(t0, 0, 100)).unwrap();
        l.admit(&quotas(), "a", "S", &s, at(t0, 0, 100)).unwrap();
        l.admit(&quotas(), "a", "R", &s, at(t0 + MINUTE, 0, 100))
            .unwrap();
    }

    #[test]
    fn distinct_subjects_per_day_count_each_subject_once() {
        let mut l = Ledger::default();
        let t = Instant::now();
        let q = Quotas {
            items_per_minute: 1000,
            ..quotas()
        };
        for i in 0..4u8 {
            l.admit(&q, "a", "R", &[[i; 32], [0; 32]], at(t, 7, 100))
                .unwrap();
        }
        let over = l
            .admit(&q, "a", "R", &[[9; 32]], at(t, 7, 100))
            .unwrap_err();
        assert_eq!(over.retry_after, 100);
        l.admit(&q, "a", "R", &[[9; 32]], at(t, 8, 100)).unwrap();
    }

    #[test]
    fn repeated_mismatches_lock_the_subject_for_that_requester() {
        let mut l = Ledger::default();
        let t = Instant::now();
        let q = Quotas {
            items_per_minute: 1000,
            ..quotas()
        };
        let s = [[3u8; 32]];
        for _ in 0..3 {
            l.admit(&q, "a", "R", &s, at(t, 0, 100)).unwrap();
            l.record_mismatches(&q, "a", "R", &s, t);
        }
        let locked = l.admit(&q, "a", "R", &s, at(t, 0, 100)).unwrap_err();
        assert_eq!(locked.retry_after, 600);
        l.admit(&q, "b", "R", &s, at(t, 0, 100)).unwrap();
        l.admit(&q, "a", "R", &s, at(t + Duration::from_secs(601), 0, 100))
            .unwrap();
    }

    #[test]
    fn mismatches_older_than_an_hour_do_not_count_and_are_swept() {
        let mut l = Ledger::default();
        let t = Instant::now();
        let q = Quotas {
            items_per_minute: 1_000_000,
            subjects_per_day: 1_000_000,
            ..quotas()
        };
        let s = [[5u8; 32]];
        // Two mismatches (one short of the lock), then an hour passes: the third is the first.
        for _ in 0..2 {
            l.admit(&q, "a", "R", &s, at(t, 0, 100)).unwrap();
            l.record_mismatches(&q, "a", "R", &s, t);
        }
        let later = t + HOUR + Duration::from_secs(1);
        l.admit(&q, "a", "R", &s, at(later, 0, 100)).unwrap();
        l.record_mismatches(&q, "a", "R", &s, later);
        l.admit(&q, "a", "R", &s, at(later, 0, 100)).unwrap();
        // Many subjects mismatched once; after an hour and a sweep they are gone.
        for i in 0..1000u32 {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_be_bytes());
            l.admit(&q, "a", "R", &[d], at(later, 0, 100)).unwrap();
            l.record_mismatches(&q, "a", "R", &[d], later);
        }
        let account = &l.accounts[&("a".to_owned(), "R".to_owned())];
        assert!(account.mismatches.len() >= 1000);
        let much_later = later + HOUR + SWEEP;
        l.record_mismatches(&q, "a", "R", &[[7u8; 32]], much_later);
        let account = &l.accounts[&("a".to_owned(), "R".to_owned())];
        assert_eq!(account.mismatches.len(), 1, "only the new subject is kept");
    }

    #[test]
    fn the_minute_window_keeps_its_running_sum() {
        let mut l = Ledger::default();
        let t = Instant::now();
        let q = Quotas {
            items_per_minute: 10,
            subjects_per_day: 1_000_000,
            ..quotas()
        };
        let one = |i: u8| [[i; 32]];
        for i in 0..10u8 {
            l.admit(
                &q,
                "a",
                "R",
                &one(i),
                at(t + Duration::from_secs(i as u64), 0, 100),
            )
            .unwrap();
        }
        // Full: the oldest request leaves the window at t + 60 s.
        let over = l
            .admit(
                &q,
                "a",
                "R",
                &one(20),
                at(t + Duration::from_secs(30), 0, 100),
            )
            .unwrap_err();
        assert_eq!(over.retry_after, 30);
        l.admit(&q, "a", "R", &one(21), at(t + MINUTE, 0, 100))
            .unwrap();
        // t + 60 s: the request at t left, one came in: full again.
        l.admit(&q, "a", "R", &one(22), at(t + MINUTE, 0, 100))
            .unwrap_err();
        // After two minutes every earlier request has left the window.
        for i in 0..10u8 {
            l.admit(
                &q,
                "a",
                "R",
                &one(30 + i),
                at(t + 2 * MINUTE + Duration::from_secs(1), 0, 100),
            )
            .unwrap();
        }
    }
}
