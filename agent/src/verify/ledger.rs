//! The budgets against enumeration (docs/PROTOCOL.md §11.7), per requester and resource: items
//! per minute (a sliding window), distinct subjects per UTC day, private set intersection
//! points and scans per UTC day, and per subject and field the answers other than `match`
//! within the `lockout` window (at most `mismatch_lockout`, or `enumerable_lockout` for a field
//! the resource lists as enumerable).
//!
//! **Charged before answering.** [`Ledger::admit`] decides a whole request at once under the
//! service's lock: every question (a field of a subject) is *held* as if it will be answered
//! `mismatch`, next to the misses already in the window, so that concurrent requests see each
//! other; a request that would exceed any budget is refused whole and charges nothing. Once
//! the answer is computed, [`Ledger::settle`] turns each held question answered other than
//! `match` into a miss and lets the matches go ([`Ledger::release`]: nothing was answered).
//! So whatever is sent, the answers other than `match` about one field of one subject within
//! any `lockout` window never exceed its budget.
//!
//! **Persistence.** Subjects are kept only as keyed digests (the audit pseudonym's MAC), never
//! in clear. The durable record of every charge is the request's audit record (its `charged`
//! member, [`Charge`]), which is on disk before the answer leaves. [`Ledger::snapshot`] is
//! saved to `<data_dir>/verify-ledger.json` every minute and at shutdown ([`save`]), with the
//! SM3 of the audit log's last entry read just before the ledger is copied; at start [`load`]
//! reads it and replays the `charged` members of the audit records after that entry, so a
//! restart, a crash or a reload forgets nothing. A request's charge is in the ledger before its
//! audit record is written, so every record up to that entry is in the snapshot, and a
//! request in flight while it was taken may be counted twice after a restart, never less.
//!
//! # Format of `verify-ledger.json`
//!
//! ```json
//! {"format": 1, "taken_ms": 1733500000000, "audit_sm3": "<64 hex>",
//!  "accounts": [{"requester": "city-hub", "resource": "330100-RSJ-0001",
//!                "recent": [[1733499990000, 3]], "day": 20062, "subjects": ["<64 hex>"],
//!                "anonymous": 0, "psi_points": 0, "psi_scans": 0,
//!                "misses": [{"subject": "<64 hex>", "field": "birth", "at": [1733499990000]}]}]}
//! ```
//!
//! Times are milliseconds since 1970 (UTC); `day` is days since 1970 (UTC); a subject is the
//! hex of its keyed digest. Written to a temporary file, synced, then renamed over the old one.
//!
//! Admitting and settling a request cost time in proportion to its own questions, not to the
//! ledger's size: the minute's item count is a running sum. Two things cost time in
//! proportion to an account's size, under the lock, once a minute: sweeping the misses that
//! left the window (`SWEEP`), and copying the ledger for its snapshot.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::verify::Quotas;

/// The window of the item rate, in milliseconds.
const MINUTE_MS: i64 = 60_000;
/// A day in milliseconds.
const DAY_MS: i64 = 86_400_000;
/// How often misses that left the window are swept out of an account, in milliseconds.
const SWEEP: i64 = 60_000;

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

/// A moment, on the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct At {
    /// Milliseconds since 1970 (UTC).
    pub ms: i64,
}

impl At {
    /// The present moment.
    pub fn now() -> At {
        At {
            ms: chrono::Utc::now().timestamp_millis(),
        }
    }

    /// The UTC day, as days since 1970.
    fn day(self) -> i64 {
        self.ms.div_euclid(DAY_MS)
    }

    /// Whole seconds (at least 1) until the next UTC midnight.
    fn secs_to_midnight(self) -> u64 {
        secs_until(self, (self.day() + 1) * DAY_MS)
    }
}

/// Whole seconds, at least 1, from `at` until `ms`.
fn secs_until(at: At, ms: i64) -> u64 {
    (((ms - at.ms).max(0) + 999) / 1000).max(1) as u64
}

/// One question: a field (its configured name) of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guess {
    /// The subject.
    pub subject: SubjectDigest,
    /// The configured field name.
    pub field: String,
}

/// What a request asks, for [`Ledger::admit`].
#[derive(Debug, Default)]
pub struct Ask {
    /// The request's items.
    pub items: u64,
    /// Its subjects (each once).
    pub subjects: Vec<SubjectDigest>,
    /// Subjects the agent cannot see (private set intersection): each counts as new.
    pub anonymous: u64,
    /// Its questions, each with whether its field is enumerable.
    pub guesses: Vec<(Guess, bool)>,
    /// Private set intersection: points to multiply.
    pub points: u64,
    /// Private set intersection: scans of the resource.
    pub scans: u64,
}

/// What an admitted request holds until it is settled or released.
#[derive(Debug)]
#[must_use = "a hold must be settled or released"]
pub struct Hold {
    /// The account.
    account: (String, String),
    /// The held questions.
    guesses: Vec<Guess>,
}

impl Hold {
    /// The held questions, in the order they were asked.
    pub fn guesses(&self) -> &[Guess] {
        &self.guesses
    }
}

/// Counters of one requester on one resource.
#[derive(Debug, Default, Clone)]
struct Account {
    /// (when, items) of the requests admitted within the last minute.
    recent: VecDeque<(i64, u64)>,
    /// The sum of the items in `recent`.
    recent_items: u64,
    /// The UTC day the daily counters count, as days since 1970.
    day: i64,
    /// Distinct subjects asked about that day.
    subjects: HashSet<SubjectDigest>,
    /// Subjects of private set intersection requests that day (each counted as new).
    anonymous: u64,
    /// Private set intersection points multiplied that day.
    psi_points: u64,
    /// Private set intersection scans that day.
    psi_scans: u64,
    /// Per question: when it was answered other than `match`, oldest first.
    misses: HashMap<Guess, VecDeque<i64>>,
    /// Per question: requests holding it now.
    held: HashMap<Guess, u32>,
    /// When `misses` was last swept.
    swept: i64,
}

impl Account {
    /// Starts the daily counters afresh on a new day (never on an earlier one: a clock set
    /// back does not reset them).
    fn roll(&mut self, day: i64) {
        if day > self.day {
            self.day = day;
            self.subjects.clear();
            self.anonymous = 0;
            self.psi_points = 0;
            self.psi_scans = 0;
        }
    }

    /// Drops what left the minute window, and (once a [`SWEEP`]) misses that left `window`.
    fn expire(&mut self, at: At, window: i64) {
        while let Some(&(t, k)) = self.recent.front()
            && at.ms - t >= MINUTE_MS
        {
            self.recent.pop_front();
            self.recent_items -= k;
        }
        if at.ms - self.swept >= SWEEP {
            self.misses.retain(|_, times| {
                drop_before(times, at.ms - window);
                !times.is_empty()
            });
            self.swept = at.ms;
        }
    }

    /// Misses of `guess` within the window ending at `at`, and the times of those left.
    fn misses_of(&mut self, guess: &Guess, at: At, window: i64) -> Option<&VecDeque<i64>> {
        let times = self.misses.get_mut(guess)?;
        drop_before(times, at.ms - window);
        Some(times)
    }
}

/// The checks and the charge of [`Ledger::admit`], on the account of one requester and
/// resource; `who` names them in a refusal.
impl Account {
    /// Questions first: a lock says when that subject and field may be asked again (misses
    /// within `lockout`, and questions held by requests in flight, count).
    fn check_questions(
        &mut self,
        quotas: &Quotas,
        ask: &Ask,
        at: At,
        who: &str,
    ) -> Result<(), Throttled> {
        let window = quotas.lockout.as_millis() as i64;
        for (guess, enumerable) in &ask.guesses {
            let limit = i64::from(if *enumerable {
                quotas.enumerable_lockout
            } else {
                quotas.mismatch_lockout
            });
            let held = i64::from(self.held.get(guess).copied().unwrap_or(0));
            let misses = self
                .misses_of(guess, at, window)
                .cloned()
                .unwrap_or_default();
            let over = misses.len() as i64 + held + 1 - limit;
            if over > 0 {
                // The `over`-th oldest miss must leave the window first; questions held by
                // requests in flight may settle as matches any moment.
                let retry_after = match misses.get(over as usize - 1) {
                    Some(t) => secs_until(at, t + window),
                    None => 1,
                };
                return Err(Throttled {
                    reason: format!(
                        "field `{}` of a subject of this request has had {} answers other than match for {who} within {} (at most {limit}{}); it is not answered again before the oldest leaves that window",
                        guess.field,
                        misses.len() as i64 + held,
                        crate::text::duration_text(quotas.lockout),
                        if *enumerable {
                            ", the field being enumerable"
                        } else {
                            ""
                        },
                    ),
                    retry_after,
                });
            }
        }
        Ok(())
    }

    /// The items per minute; a refusal says when enough of the minute has passed for `items`
    /// to fit.
    fn check_items(&self, quotas: &Quotas, items: u64, at: At, who: &str) -> Result<(), Throttled> {
        let used = self.recent_items;
        if used + items <= quotas.items_per_minute {
            return Ok(());
        }
        // Wait until enough of the window has passed for these items to fit.
        let mut freed = quotas.items_per_minute.saturating_sub(used);
        let mut retry = 1;
        for (t, k) in &self.recent {
            freed += k;
            if freed >= items {
                retry = secs_until(at, t + MINUTE_MS);
                break;
            }
        }
        Err(Throttled {
            reason: format!(
                "{who} is over its quota of {} items per minute",
                quotas.items_per_minute
            ),
            retry_after: retry,
        })
    }

    /// The daily quotas (distinct subjects, PSI points, PSI scans), each refused until
    /// midnight; returns the subjects of `ask` new to the account today.
    fn check_daily(
        &self,
        quotas: &Quotas,
        ask: &Ask,
        at: At,
        who: &str,
    ) -> Result<HashSet<SubjectDigest>, Throttled> {
        let new: HashSet<SubjectDigest> = ask
            .subjects
            .iter()
            .filter(|s| !self.subjects.contains(*s))
            .copied()
            .collect();
        let subjects = self.subjects.len() as u64 + self.anonymous;
        let over = |reason: String| Throttled {
            reason,
            retry_after: at.secs_to_midnight(),
        };
        if subjects + new.len() as u64 + ask.anonymous > quotas.subjects_per_day {
            return Err(over(format!(
                "{who} is over its quota of {} distinct subjects per day",
                quotas.subjects_per_day
            )));
        }
        if self.psi_points + ask.points > quotas.psi_points_per_day {
            return Err(over(format!(
                "{who} is over its quota of {} private set intersection points per day ({} used; this request has {})",
                quotas.psi_points_per_day, self.psi_points, ask.points
            )));
        }
        if self.psi_scans + ask.scans > quotas.psi_scans_per_day {
            return Err(over(format!(
                "{who} is over its quota of {} private set intersection requests per day",
                quotas.psi_scans_per_day
            )));
        }
        Ok(new)
    }

    /// Charges an admitted request: its `new` subjects, points, scans and items, and holds
    /// its questions.
    fn charge(&mut self, ask: &Ask, new: HashSet<SubjectDigest>, at: At) {
        self.subjects.extend(new);
        self.anonymous += ask.anonymous;
        self.psi_points += ask.points;
        self.psi_scans += ask.scans;
        if ask.items > 0 {
            self.recent.push_back((at.ms, ask.items));
            self.recent_items += ask.items;
        }
        for (guess, _) in &ask.guesses {
            *self.held.entry(guess.clone()).or_default() += 1;
        }
    }
}

/// Drops the times at or before `limit` from the front of `times`.
fn drop_before(times: &mut VecDeque<i64>, limit: i64) {
    while times.front().is_some_and(|t| *t <= limit) {
        times.pop_front();
    }
}

/// Every account, by (requester, resource).
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// The accounts.
    accounts: HashMap<(String, String), Account>,
    /// Whether anything changed since the last snapshot.
    dirty: bool,
}

impl Ledger {
    /// Admits a request or says why not. An admitted request is charged its items, subjects,
    /// points and scans, and holds its questions; a refused one charges nothing.
    pub fn admit(
        &mut self,
        quotas: &Quotas,
        requester: &str,
        resource: &str,
        ask: &Ask,
        at: At,
    ) -> Result<Hold, Throttled> {
        let key = (requester.to_owned(), resource.to_owned());
        let account = self.accounts.entry(key.clone()).or_default();
        let window = quotas.lockout.as_millis() as i64;
        account.expire(at, window);
        account.roll(at.day());
        let who = format!("requester `{requester}` on resource `{resource}`");
        account.check_questions(quotas, ask, at, &who)?;
        account.check_items(quotas, ask.items, at, &who)?;
        let new = account.check_daily(quotas, ask, at, &who)?;
        account.charge(ask, new, at);
        self.dirty = true;
        Ok(Hold {
            account: key,
            guesses: ask.guesses.iter().map(|(g, _)| g.clone()).collect(),
        })
    }

    /// Settles a hold once its answer is computed: each question answered other than `match`
    /// (`missed`, in the order of [`Hold::guesses`]) becomes a miss at `at`.
    pub fn settle(&mut self, hold: Hold, missed: &[bool], at: At) {
        debug_assert_eq!(hold.guesses.len(), missed.len());
        let Some(account) = self.accounts.get_mut(&hold.account) else {
            return;
        };
        for (guess, missed) in hold.guesses.into_iter().zip(missed) {
            unhold(account, &guess);
            if *missed {
                account.misses.entry(guess).or_default().push_back(at.ms);
            }
        }
        self.dirty = true;
    }

    /// Lets a hold go: nothing was answered.
    pub fn release(&mut self, hold: Hold) {
        if let Some(account) = self.accounts.get_mut(&hold.account) {
            for guess in &hold.guesses {
                unhold(account, guess);
            }
        }
    }

    /// Applies a charge read back from an audit record written at `at` (replay at start).
    pub fn apply(&mut self, requester: &str, resource: &str, charge: &Charge, at: At) {
        let account = self
            .accounts
            .entry((requester.to_owned(), resource.to_owned()))
            .or_default();
        if charge.items > 0 {
            account.recent.push_back((at.ms, charge.items));
            account.recent_items += charge.items;
        }
        if at.day() >= account.day {
            account.roll(at.day());
            account
                .subjects
                .extend(charge.subjects.iter().filter_map(|t| digest_of_token(t)));
            account.anonymous += charge.anonymous;
            account.psi_points += charge.points;
            account.psi_scans += charge.scans;
        }
        for (token, fields) in &charge.mismatched {
            let Some(subject) = digest_of_token(token) else {
                continue;
            };
            for field in fields {
                let guess = Guess {
                    subject,
                    field: field.clone(),
                };
                let times = account.misses.entry(guess).or_default();
                // Records come in the order written; keep each list sorted all the same.
                let at_or_after = times.partition_point(|t| *t <= at.ms);
                times.insert(at_or_after, at.ms);
            }
        }
        self.dirty = true;
    }

    /// What a snapshot holds now (held questions are not saved: their requests either settle
    /// into an audit record written after the snapshot, or never answer).
    pub fn snapshot(&mut self, taken: At, audit_sm3: Option<String>) -> Snapshot {
        self.dirty = false;
        let mut accounts: Vec<SavedAccount> = self
            .accounts
            .iter()
            .map(|((requester, resource), a)| {
                let mut misses: Vec<SavedMisses> = a
                    .misses
                    .iter()
                    .filter(|(_, t)| !t.is_empty())
                    .map(|(g, t)| SavedMisses {
                        subject: hex::encode(g.subject),
                        field: g.field.clone(),
                        at: t.iter().copied().collect(),
                    })
                    .collect();
                misses.sort_by(|a, b| (&a.subject, &a.field).cmp(&(&b.subject, &b.field)));
                let mut subjects: Vec<String> = a.subjects.iter().map(hex::encode).collect();
                subjects.sort_unstable();
                SavedAccount {
                    requester: requester.clone(),
                    resource: resource.clone(),
                    recent: a.recent.iter().copied().collect(),
                    day: a.day,
                    subjects,
                    anonymous: a.anonymous,
                    psi_points: a.psi_points,
                    psi_scans: a.psi_scans,
                    misses,
                }
            })
            .collect();
        accounts.sort_by(|a, b| (&a.requester, &a.resource).cmp(&(&b.requester, &b.resource)));
        Snapshot {
            format: 1,
            taken_ms: taken.ms,
            audit_sm3,
            accounts,
        }
    }

    /// Whether anything changed since the last snapshot.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// A copy to take a snapshot of outside the lock (the original counts as saved).
    pub fn take_copy(&mut self) -> Ledger {
        self.dirty = false;
        self.clone()
    }

    /// A ledger holding what `snapshot` holds.
    pub fn from_snapshot(snapshot: &Snapshot) -> Ledger {
        let mut ledger = Ledger::default();
        for a in &snapshot.accounts {
            let account = Account {
                recent_items: a.recent.iter().map(|(_, k)| k).sum(),
                recent: a.recent.iter().copied().collect(),
                day: a.day,
                subjects: a.subjects.iter().filter_map(|s| digest_of_hex(s)).collect(),
                anonymous: a.anonymous,
                psi_points: a.psi_points,
                psi_scans: a.psi_scans,
                misses: a
                    .misses
                    .iter()
                    .filter_map(|m| {
                        Some((
                            Guess {
                                subject: digest_of_hex(&m.subject)?,
                                field: m.field.clone(),
                            },
                            m.at.iter().copied().collect(),
                        ))
                    })
                    .collect(),
                held: HashMap::new(),
                swept: 0,
            };
            ledger
                .accounts
                .insert((a.requester.clone(), a.resource.clone()), account);
        }
        ledger
    }
}

/// A budget used up now: what a requester may not ask on a resource, and until when
/// (`exchange-agent status`). Names fields and counts subjects, never a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    /// The requester.
    pub requester: String,
    /// The resource code.
    pub resource: String,
    /// What is locked.
    pub what: Locked,
    /// When it lifts (milliseconds since 1970, UTC): for a field, the latest of its subjects'.
    pub until_ms: i64,
}

/// What a [`Lockout`] locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locked {
    /// `field` of `subjects` subjects had its budget of answers other than `match` within the
    /// `lockout` window: not answered again for them before the oldest leaves the window.
    Field {
        /// The configured field name.
        field: String,
        /// How many subjects.
        subjects: u64,
    },
    /// A daily quota is used up until UTC midnight: `subjects_per_day`,
    /// `psi_points_per_day` or `psi_scans_per_day`.
    Daily {
        /// The quota's key in `[verify]`.
        quota: &'static str,
    },
}

/// Read-only views of the ledger.
impl Ledger {
    /// The lockouts in force at `at`, sorted by requester, resource and what (nothing is
    /// swept or charged). `enumerable(resource, field)` says whether a field has the stricter
    /// budget (`enumerable_lockout`).
    pub fn lockouts(
        &self,
        quotas: &Quotas,
        enumerable: impl Fn(&str, &str) -> bool,
        at: At,
    ) -> Vec<Lockout> {
        let window = quotas.lockout.as_millis() as i64;
        let mut out = Vec::new();
        for ((requester, resource), a) in &self.accounts {
            let lockout = |what, until_ms| Lockout {
                requester: requester.clone(),
                resource: resource.clone(),
                what,
                until_ms,
            };
            let mut fields: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
            for (guess, times) in &a.misses {
                let limit = (if enumerable(resource, &guess.field) {
                    quotas.enumerable_lockout
                } else {
                    quotas.mismatch_lockout
                }) as usize;
                let recent: Vec<i64> = times
                    .iter()
                    .copied()
                    .filter(|t| *t > at.ms - window)
                    .collect();
                if limit == 0 || recent.len() < limit {
                    continue;
                }
                // Answered again once all but `limit - 1` of them left the window.
                let lifts = recent[recent.len() - limit] + window;
                let (subjects, until) = fields.entry(&guess.field).or_default();
                *subjects += 1;
                *until = (*until).max(lifts);
            }
            for (field, (subjects, until)) in fields {
                let field = field.to_owned();
                out.push(lockout(Locked::Field { field, subjects }, until));
            }
            if a.day == at.day() {
                let midnight = (a.day + 1) * DAY_MS;
                for (quota, used, limit) in [
                    (
                        "subjects_per_day",
                        a.subjects.len() as u64 + a.anonymous,
                        quotas.subjects_per_day,
                    ),
                    (
                        "psi_points_per_day",
                        a.psi_points,
                        quotas.psi_points_per_day,
                    ),
                    ("psi_scans_per_day", a.psi_scans, quotas.psi_scans_per_day),
                ] {
                    if used > 0 && used >= limit {
                        out.push(lockout(Locked::Daily { quota }, midnight));
                    }
                }
            }
        }
        out.sort_by(|x, y| {
            (&x.requester, &x.resource, format!("{:?}", x.what)).cmp(&(
                &y.requester,
                &y.resource,
                format!("{:?}", y.what),
            ))
        });
        out
    }
}

/// One question fewer held.
fn unhold(account: &mut Account, guess: &Guess) {
    if let Some(n) = account.held.get_mut(guess) {
        *n -= 1;
        if *n == 0 {
            account.held.remove(guess);
        }
    }
}

/// The digest in a pseudonym token (`v<version>:` and 64 hex digits).
fn digest_of_token(token: &str) -> Option<SubjectDigest> {
    digest_of_hex(token.split_once(':')?.1)
}

/// 32 bytes from 64 hex digits.
fn digest_of_hex(text: &str) -> Option<SubjectDigest> {
    hex::decode(text).ok()?.try_into().ok()
}

/// What a request was charged, as its audit record holds it (member `charged`): replayed by
/// [`load`] into the ledger at start. Subjects are pseudonym tokens, fields configured names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charge {
    /// Items counted against the minute.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub items: u64,
    /// Subjects counted against the day (tokens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Subjects of a private set intersection request, each counted as new.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub anonymous: u64,
    /// Per subject (token): the fields answered other than `match`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mismatched: BTreeMap<String, Vec<String>>,
    /// Private set intersection points multiplied.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub points: u64,
    /// Private set intersection scans.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scans: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `verify-ledger.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// 1.
    pub format: u32,
    /// When it was taken (milliseconds since 1970, UTC).
    pub taken_ms: i64,
    /// The SM3 (hex) of the audit log's last entry when it was taken: the records after it
    /// are replayed over it (if the log no longer holds it, those from `taken_ms` on).
    #[serde(default)]
    pub audit_sm3: Option<String>,
    /// The accounts.
    pub accounts: Vec<SavedAccount>,
}

/// One account in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedAccount {
    /// The requester.
    pub requester: String,
    /// The resource code.
    pub resource: String,
    /// (milliseconds, items) within the last minute.
    pub recent: Vec<(i64, u64)>,
    /// The UTC day of the daily counters.
    pub day: i64,
    /// Distinct subjects that day (hex digests).
    pub subjects: Vec<String>,
    /// Private set intersection subjects that day.
    pub anonymous: u64,
    /// Private set intersection points that day.
    pub psi_points: u64,
    /// Private set intersection scans that day.
    pub psi_scans: u64,
    /// Misses per question.
    pub misses: Vec<SavedMisses>,
}

/// The misses of one question in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedMisses {
    /// The subject (hex digest).
    pub subject: String,
    /// The configured field name.
    pub field: String,
    /// When each miss was answered (milliseconds since 1970, UTC).
    pub at: Vec<i64>,
}

/// The snapshot's file name in the data directory.
const FILE: &str = "verify-ledger.json";

/// The ledger's file in a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Why the ledger cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The snapshot or the audit log cannot be read.
    #[error("{}", exchange_protocol::tr!(
        "cannot read {path}: {reason}",
        "无法读取 {path}：{reason}",
        path = path.display()
    ))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The snapshot cannot be written. Logged with `%e`, so the I/O error is in the message
    /// and not a `source` (a chain, `{:#}`, names it once).
    #[error("{}", exchange_protocol::tr!(
        "cannot write {path}: {error}",
        "无法写入 {path}：{error}",
        path = path.display()
    ))]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// Saves `snapshot` (atomically and durably: [`crate::data_dir::replace`]).
pub fn save(data_dir: &Path, snapshot: &Snapshot) -> Result<(), LedgerError> {
    let bytes = serde_json::to_vec(snapshot).expect("a snapshot serializes");
    crate::data_dir::replace(data_dir, FILE, &bytes).map_err(|error| LedgerError::Write {
        path: path(data_dir),
        error,
    })
}

/// The ledger of `data_dir`: its snapshot (if any), with the charges of the audit records
/// written after it replayed over it: those after the audit entry that was the last when the
/// snapshot was taken, or, if the log no longer holds that entry (archived), those written
/// from the snapshot's instant on. Without a snapshot, every record. Only records of the last
/// `horizon` can count (the longest budget window and a day), so none older is applied.
pub fn load(data_dir: &Path, horizon: std::time::Duration) -> Result<Ledger, LedgerError> {
    let path = path(data_dir);
    let oldest = At::now().ms - horizon.as_millis() as i64;
    let snapshot: Option<Snapshot> = match std::fs::read(&path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes).map_err(|e| LedgerError::Read {
                path: path.clone(),
                reason: exchange_protocol::tr!(
                    "{e}; move it aside to rebuild the ledger from the audit log",
                    "{e}；将其移走即可从审计日志重建台账"
                ),
            })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(LedgerError::Read {
                path,
                reason: exchange_protocol::translate::io(&e),
            });
        }
    };
    let mut ledger = snapshot
        .as_ref()
        .map(Ledger::from_snapshot)
        .unwrap_or_default();
    let mut replay = |entry: crate::audit::Entry| {
        if !matches!(entry.action.as_str(), "verify" | "verify.psi") {
            return;
        }
        let Some(charged) = entry.detail.get("charged") else {
            return;
        };
        let (Ok(charge), Some(at)) = (
            serde_json::from_value::<Charge>(charged.clone()),
            crate::audit::millis_of(&entry.at),
        ) else {
            return;
        };
        if at >= oldest {
            ledger.apply(&entry.actor, &entry.resource, &charge, At { ms: at });
        }
    };
    let audit_err = |e: std::io::Error| LedgerError::Read {
        path: crate::audit::path(data_dir),
        reason: e.to_string(),
    };
    let after = snapshot.as_ref().and_then(|s| s.audit_sm3.as_deref());
    let found = match after {
        Some(sm3) => crate::audit::for_each_after(data_dir, sm3, &mut replay).map_err(audit_err)?,
        None => false,
    };
    if !found {
        let since = snapshot.as_ref().map_or(oldest, |s| s.taken_ms.max(oldest));
        if snapshot.is_some() {
            tracing::warn!(
                "The audit entry the verification ledger's snapshot follows is not in the audit log (archived?); replaying the records written since the snapshot's time."
            );
        }
        crate::audit::for_each_since(data_dir, since, &mut replay).map_err(audit_err)?;
    }
    ledger.dirty = false;
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIN: i64 = 60_000;
    const T: i64 = 1_000 * DAY_MS;

    fn quotas() -> Quotas {
        Quotas {
            items_per_minute: 5,
            subjects_per_day: 4,
            mismatch_lockout: 3,
            enumerable_lockout: 1,
            lockout: Duration::from_secs(600),
            psi_points_per_day: 10,
            psi_scans_per_day: 2,
        }
    }

    fn roomy() -> Quotas {
        Quotas {
            items_per_minute: 1_000_000,
            subjects_per_day: 1_000_000,
            ..quotas()
        }
    }

    fn at(ms: i64) -> At {
        At { ms }
    }

    fn guess(s: u8, field: &str) -> Guess {
        Guess {
            subject: [s; 32],
            field: field.into(),
        }
    }

    fn ask(items: u64, subjects: &[u8], guesses: &[(u8, &str, bool)]) -> Ask {
        Ask {
            items,
            subjects: subjects.iter().map(|s| [*s; 32]).collect(),
            guesses: guesses.iter().map(|(s, f, e)| (guess(*s, f), *e)).collect(),
            ..Ask::default()
        }
    }

    /// A request of one question (`field` of subject `s`) by `who` at `t`.
    fn one(l: &mut Ledger, who: &str, s: u8, field: &str, t: i64) -> Result<Hold, Throttled> {
        let enumerable = field == "sex";
        l.admit(
            &roomy(),
            who,
            "R",
            &ask(1, &[s], &[(s, field, enumerable)]),
            at(t),
        )
    }

    /// Admits and releases `a` (nothing answered), or says why not.
    fn try_ask(l: &mut Ledger, q: &Quotas, who: &str, a: &Ask, t: i64) -> Result<(), Throttled> {
        let h = l.admit(q, who, "R", a, at(t))?;
        l.release(h);
        Ok(())
    }

    #[test]
    fn items_per_minute_is_a_sliding_window() {
        let mut l = Ledger::default();
        let a = ask(3, &[1], &[]);
        try_ask(&mut l, &quotas(), "a", &a, T).unwrap();
        let over = try_ask(&mut l, &quotas(), "a", &a, T + 10_000).unwrap_err();
        assert_eq!(over.retry_after, 50);
        // Another requester has its own account.
        try_ask(&mut l, &quotas(), "b", &a, T).unwrap();
        try_ask(&mut l, &quotas(), "a", &a, T + MIN).unwrap();
    }

    #[test]
    fn distinct_subjects_per_day_count_each_subject_once_and_reset_at_midnight() {
        let mut l = Ledger::default();
        let q = Quotas {
            subjects_per_day: 4,
            ..roomy()
        };
        let t = 7 * DAY_MS + 100;
        for i in 0..4u8 {
            try_ask(&mut l, &q, "a", &ask(2, &[i, 0], &[]), t).unwrap();
        }
        let over = try_ask(&mut l, &q, "a", &ask(1, &[9], &[]), t).unwrap_err();
        assert_eq!(over.retry_after as i64, (DAY_MS - 100 + 999) / 1000);
        try_ask(&mut l, &q, "a", &ask(1, &[9], &[]), 8 * DAY_MS).unwrap();
    }

    #[test]
    fn a_question_is_held_before_the_answer_so_concurrent_requests_cannot_overdraw() {
        let mut l = Ledger::default();
        // mismatch_lockout 3: three requests in flight about the same field hold all of it.
        let holds: Vec<Hold> = (0..3)
            .map(|_| one(&mut l, "a", 1, "birth", T).unwrap())
            .collect();
        let refused = one(&mut l, "a", 1, "birth", T).unwrap_err();
        assert_eq!(refused.retry_after, 1, "{refused:?}");
        assert!(refused.reason.contains("`birth`"), "{}", refused.reason);
        // Another field of the same subject is its own question.
        let other = one(&mut l, "a", 1, "name", T).unwrap();
        l.release(other);
        // Two matched, one missed: two questions free again.
        let mut holds = holds.into_iter();
        l.settle(holds.next().unwrap(), &[false], at(T));
        l.settle(holds.next().unwrap(), &[false], at(T));
        l.settle(holds.next().unwrap(), &[true], at(T + 5));
        for _ in 0..2 {
            let h = one(&mut l, "a", 1, "birth", T + 10).unwrap();
            l.settle(h, &[true], at(T + 10));
        }
        let locked = one(&mut l, "a", 1, "birth", T + 20).unwrap_err();
        // The oldest miss (T + 5) leaves the 600 s window at T + 600 005 ms.
        assert_eq!(locked.retry_after, 600);
        // Another requester has its own budget; after the window the field is free again.
        let h = one(&mut l, "b", 1, "birth", T + 20).unwrap();
        l.release(h);
        let h = one(&mut l, "a", 1, "birth", T + 600_006).unwrap();
        l.release(h);
    }

    #[test]
    fn an_enumerable_field_has_the_stricter_budget() {
        let mut l = Ledger::default();
        let h = one(&mut l, "a", 1, "sex", T).unwrap();
        l.settle(h, &[true], at(T));
        let e = one(&mut l, "a", 1, "sex", T + 1).unwrap_err();
        assert!(e.reason.contains("enumerable"), "{}", e.reason);
    }

    #[test]
    fn a_refused_request_charges_nothing() {
        let mut l = Ledger::default();
        let h = one(&mut l, "a", 1, "sex", T).unwrap();
        l.settle(h, &[true], at(T));
        // One question over budget: the whole request is refused, the other one not held.
        let both = ask(2, &[1, 2], &[(2, "sex", true), (1, "sex", true)]);
        try_ask(&mut l, &roomy(), "a", &both, T).unwrap_err();
        let h = one(&mut l, "a", 2, "sex", T).unwrap();
        l.settle(h, &[true], at(T));
    }

    #[test]
    fn psi_points_and_scans_have_daily_budgets() {
        let mut l = Ledger::default();
        let q = roomy();
        let psi = |points| Ask {
            items: 1,
            anonymous: 1,
            points,
            scans: 1,
            ..Ask::default()
        };
        try_ask(&mut l, &q, "a", &psi(6), T).unwrap();
        let e = try_ask(&mut l, &q, "a", &psi(5), T).unwrap_err();
        assert!(e.reason.contains("points"), "{}", e.reason);
        try_ask(&mut l, &q, "a", &psi(4), T).unwrap();
        let e = try_ask(&mut l, &q, "a", &psi(0), T).unwrap_err();
        assert!(e.reason.contains("requests per day"), "{}", e.reason);
        try_ask(&mut l, &q, "a", &psi(10), T + DAY_MS).unwrap();
    }

    #[test]
    fn a_snapshot_and_replayed_charges_restore_every_budget() {
        let mut l = Ledger::default();
        let h = one(&mut l, "a", 1, "birth", T).unwrap();
        l.settle(h, &[true], at(T));
        let snapshot = l.snapshot(at(T + 1), None);
        let text = serde_json::to_string(&snapshot).unwrap();
        let mut back = Ledger::from_snapshot(&serde_json::from_str(&text).unwrap());
        // Two more misses replayed from audit records: the field is at its budget of 3.
        let token = format!("v1:{}", hex::encode([1u8; 32]));
        let charge = Charge {
            items: 1,
            subjects: vec![token.clone()],
            mismatched: [(token, vec!["birth".to_owned()])].into(),
            ..Charge::default()
        };
        back.apply("a", "R", &charge, at(T + 2));
        back.apply("a", "R", &charge, at(T + 3));
        let e = one(&mut back, "a", 1, "birth", T + 4).unwrap_err();
        assert_eq!(e.retry_after, 600);
        let s = back.snapshot(at(T + 5), None);
        assert_eq!(s.accounts[0].misses[0].at, vec![T, T + 2, T + 3]);
        assert_eq!(s.accounts[0].subjects.len(), 1);
    }

    #[test]
    fn lockouts_in_force_count_subjects_per_field_and_lift_with_the_window() {
        let mut l = Ledger::default();
        let miss = |l: &mut Ledger, s: u8, field: &str, t: i64| {
            let h = one(l, "hub", s, field, t).unwrap();
            l.settle(h, &[true], at(t));
        };
        for t in [T, T + 1_000, T + 2_000] {
            miss(&mut l, 1, "name", t);
            miss(&mut l, 2, "name", t + 10);
        }
        miss(&mut l, 3, "name", T);
        miss(&mut l, 4, "sex", T + 5_000);
        let enumerable = |_: &str, f: &str| f == "sex";
        let q = roomy();
        let now = l.lockouts(&q, enumerable, at(T + 10_000));
        let window = 600_000;
        assert_eq!(
            now,
            vec![
                Lockout {
                    requester: "hub".into(),
                    resource: "R".into(),
                    what: Locked::Field {
                        field: "name".into(),
                        subjects: 2
                    },
                    until_ms: T + 10 + window,
                },
                Lockout {
                    requester: "hub".into(),
                    resource: "R".into(),
                    what: Locked::Field {
                        field: "sex".into(),
                        subjects: 1
                    },
                    until_ms: T + 5_000 + window,
                },
            ]
        );
        // Reading changes nothing: the same question is still refused.
        assert!(one(&mut l, "hub", 1, "name", T + 10_000).is_err());
        assert_eq!(l.lockouts(&q, enumerable, at(T + 1_000 + window)).len(), 1);
        assert!(
            l.lockouts(&q, enumerable, at(T + 5_000 + window))
                .is_empty()
        );
        // Four distinct subjects today: a daily quota of four is used up until midnight.
        let daily = l.lockouts(&quotas(), enumerable, at(T + 5_000 + window));
        assert_eq!(
            daily
                .iter()
                .map(|x| (&x.what, x.until_ms))
                .collect::<Vec<_>>(),
            vec![(
                &Locked::Daily {
                    quota: "subjects_per_day"
                },
                T + DAY_MS
            )]
        );
    }

    #[test]
    fn misses_that_left_the_window_are_swept() {
        let mut l = Ledger::default();
        for i in 0..200u8 {
            let h = one(&mut l, "a", i, "f", T).unwrap();
            l.settle(h, &[true], at(T));
        }
        try_ask(
            &mut l,
            &roomy(),
            "a",
            &ask(1, &[7], &[]),
            T + 600_000 + SWEEP,
        )
        .unwrap();
        let account = &l.accounts[&("a".to_owned(), "R".to_owned())];
        assert!(account.misses.is_empty(), "{}", account.misses.len());
    }

    proptest::proptest! {
        /// Whatever sequence of requests arrives, with whatever answers, the answers other
        /// than match about one question within any window never exceed its budget.
        #[test]
        fn answers_other_than_match_never_exceed_the_budget(
            steps in proptest::collection::vec(
                (0u8..3, proptest::collection::btree_set((0u8..3, 0u8..2), 1..4), 0i64..400_000, proptest::collection::vec(proptest::bool::ANY, 4)),
                1..120,
            )
        ) {
            let q = roomy();
            let mut l = Ledger::default();
            let mut now = T;
            let mut answered: HashMap<Guess, Vec<i64>> = HashMap::new();
            for (requester, questions, dt, outcomes) in steps {
                now += dt / 10;
                let guesses: Vec<(Guess, bool)> = questions
                    .iter()
                    .map(|(s, f)| (guess(*s, if *f == 0 { "birth" } else { "sex" }), *f == 1))
                    .collect();
                let a = Ask { items: guesses.len() as u64, guesses: guesses.clone(), ..Ask::default() };
                let who = format!("r{}", requester % 2);
                if let Ok(h) = l.admit(&q, &who, "R", &a, at(now)) {
                    let missed: Vec<bool> = outcomes.iter().take(guesses.len()).copied().collect();
                    for ((g, _), m) in guesses.iter().zip(&missed) {
                        if *m && who == "r0" {
                            answered.entry(g.clone()).or_default().push(now);
                        }
                    }
                    l.settle(h, &missed, at(now));
                }
            }
            for (g, times) in answered {
                let limit = if g.field == "sex" { q.enumerable_lockout } else { q.mismatch_lockout } as usize;
                for (i, t) in times.iter().enumerate() {
                    let within = times[i..].iter().filter(|u| **u - t < 600_000).count();
                    proptest::prop_assert!(within <= limit, "{g:?}: {times:?}");
                }
            }
        }
    }
}
