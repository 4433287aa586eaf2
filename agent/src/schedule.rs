//! When a resource is pulled: a 5-field crontab expression (crontab semantics, local time;
//! when both day-of-month and day-of-week are restricted, either may match) or a fixed
//! interval (`every = "30s"`).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Local};
use exchange_protocol::tr;

/// A resource's schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Crontab expression.
    Cron(Box<croner::Cron>),
    /// Fixed interval between the starts of two pulls.
    Every(Duration),
}

impl Schedule {
    /// Parses a 5-field crontab expression.
    pub fn cron(expr: &str) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        if fields != 5 {
            return Err(tr!(
                "`{expr}` has {fields} fields; expected 5 (minute hour day-of-month month day-of-week), e.g. \"*/5 * * * *\"",
                "`{expr}` 有 {fields} 个字段；应为 5 个（分 时 日 月 星期），例如 \"*/5 * * * *\""
            ));
        }
        for (i, (field, (name, min, max))) in expr.split_whitespace().zip(FIELDS).enumerate() {
            check_field(field, min, max).map_err(|found| {
                tr!(
                    "`{expr}`: field {} ({name}) is {found}; allowed {min}–{max}",
                    "`{expr}`：第 {} 个字段（{name}）为 {found}；允许 {min}–{max}",
                    i + 1
                )
            })?;
        }
        let cron = croner::Cron::from_str(expr).map_err(|e| {
            tr!(
                "`{expr}` is not a valid crontab expression: {e}",
                "`{expr}` 不是有效的 crontab 表达式：{e}"
            )
        })?;
        Ok(Schedule::Cron(Box::new(cron)))
    }

    /// The next `n` run times after `now` (for an interval: counted from `now`).
    pub fn next_runs(&self, now: DateTime<Local>, n: usize) -> Vec<DateTime<Local>> {
        match self {
            Schedule::Every(d) => (1..=n as u32)
                .filter_map(|i| chrono::Duration::from_std(*d * i).ok().map(|d| now + d))
                .collect(),
            Schedule::Cron(c) => c.iter_after(now).take(n).collect(),
        }
    }

    /// How long to wait from `now` until the next run.
    pub fn delay_from(&self, now: DateTime<Local>) -> Duration {
        match self {
            Schedule::Every(d) => *d,
            Schedule::Cron(c) => c
                .find_next_occurrence(&now, false)
                .ok()
                .and_then(|next| (next - now).to_std().ok())
                .unwrap_or(Duration::from_secs(60)),
        }
    }
}

/// The five crontab fields: name, smallest and largest number allowed.
const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

/// Checks the numbers of one crontab field (`*`, `a`, `a-b`, `*/n`, `a-b/n`, lists with `,`)
/// against its range; returns the offending text. Names (`JAN`, `MON`) and croner's extensions
/// (`L`, `#`, `W`, `?`) are left to croner.
fn check_field(field: &str, min: u32, max: u32) -> Result<(), String> {
    for part in field.split(',') {
        let range = part.split_once('/').map(|(r, _)| r).unwrap_or(part);
        for bound in range.split('-') {
            if bound.chars().all(|c| c.is_ascii_digit()) && !bound.is_empty() {
                match bound.parse::<u32>() {
                    Ok(v) if (min..=max).contains(&v) => {}
                    _ => return Err(bound.to_owned()),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn cron_waits_until_the_next_matching_minute() {
        let s = Schedule::cron("*/5 * * * *").unwrap();
        let now = Local.with_ymd_and_hms(2026, 1, 5, 10, 2, 30).unwrap();
        assert_eq!(s.delay_from(now), Duration::from_secs(150));
    }

    #[test]
    fn six_field_expressions_are_refused() {
        assert!(
            Schedule::cron("0 */5 * * * *")
                .unwrap_err()
                .contains("expected 5")
        );
        assert!(Schedule::cron("61 * * * *").is_err());
    }

    #[test]
    fn an_out_of_range_field_is_named_with_its_allowed_range() {
        let e = Schedule::cron("0 25 * * *").unwrap_err();
        assert!(e.contains("field 2 (hour) is 25; allowed 0–23"), "{e}");
        let e = Schedule::cron("*/5 1-8 * 13 *").unwrap_err();
        assert!(e.contains("field 4 (month) is 13; allowed 1–12"), "{e}");
        let e = Schedule::cron("0 0 0 * *").unwrap_err();
        assert!(
            e.contains("field 3 (day-of-month) is 0; allowed 1–31"),
            "{e}"
        );
        Schedule::cron("0,30 8-18/2 1 JAN MON-FRI").unwrap();
    }

    #[test]
    fn next_runs_lists_the_coming_matching_minutes() {
        let s = Schedule::cron("0 */6 * * *").unwrap();
        let now = Local.with_ymd_and_hms(2026, 1, 5, 10, 2, 30).unwrap();
        let hours: Vec<_> = s
            .next_runs(now, 3)
            .iter()
            .map(chrono::Timelike::hour)
            .collect();
        assert_eq!(hours, [12, 18, 0]);
        let every = Schedule::Every(Duration::from_secs(30)).next_runs(now, 3);
        assert_eq!(every[2] - now, chrono::Duration::seconds(90));
    }

    /// The next `n` runs of `expr` after `from` (local time), as "YYYY-MM-DD HH:MM ddd".
    fn runs(expr: &str, from: (i32, u32, u32, u32, u32), n: usize) -> Vec<String> {
        let (y, mo, d, h, mi) = from;
        let now = Local.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap();
        Schedule::cron(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .next_runs(now, n)
            .iter()
            .map(|t| t.format("%Y-%m-%d %H:%M %a").to_string())
            .collect()
    }

    // 2026-01-01 is a Thursday. Each table row is what Vixie cron (crontab(5)) does.
    #[test]
    fn crontab_semantics_are_pinned() {
        let from = (2026, 1, 1, 0, 0);
        let table: &[(&str, &[&str])] = &[
            // Weekday names and numbers are the same days.
            (
                "0 9 * * MON",
                &["2026-01-05 09:00 Mon", "2026-01-12 09:00 Mon"],
            ),
            (
                "0 9 * * 1",
                &["2026-01-05 09:00 Mon", "2026-01-12 09:00 Mon"],
            ),
            (
                "0 9 * * mon",
                &["2026-01-05 09:00 Mon", "2026-01-12 09:00 Mon"],
            ),
            // 0 and 7 are both Sunday.
            (
                "0 9 * * 0",
                &["2026-01-04 09:00 Sun", "2026-01-11 09:00 Sun"],
            ),
            (
                "0 9 * * 7",
                &["2026-01-04 09:00 Sun", "2026-01-11 09:00 Sun"],
            ),
            (
                "0 9 * * SUN",
                &["2026-01-04 09:00 Sun", "2026-01-11 09:00 Sun"],
            ),
            // Ranges of weekdays, by number and by name.
            (
                "30 8 * * 1-5",
                &[
                    "2026-01-01 08:30 Thu",
                    "2026-01-02 08:30 Fri",
                    "2026-01-05 08:30 Mon",
                ],
            ),
            (
                "30 8 * * MON-FRI",
                &[
                    "2026-01-01 08:30 Thu",
                    "2026-01-02 08:30 Fri",
                    "2026-01-05 08:30 Mon",
                ],
            ),
            (
                "0 12 * * 5-7",
                &[
                    "2026-01-02 12:00 Fri",
                    "2026-01-03 12:00 Sat",
                    "2026-01-04 12:00 Sun",
                ],
            ),
            // Steps, over the whole field and over a range; lists.
            (
                "*/20 * * * *",
                &[
                    "2026-01-01 00:20 Thu",
                    "2026-01-01 00:40 Thu",
                    "2026-01-01 01:00 Thu",
                ],
            ),
            (
                "0 8-18/4 * * *",
                &[
                    "2026-01-01 08:00 Thu",
                    "2026-01-01 12:00 Thu",
                    "2026-01-01 16:00 Thu",
                    "2026-01-02 08:00 Fri",
                ],
            ),
            (
                "15,45 6 * * *",
                &[
                    "2026-01-01 06:15 Thu",
                    "2026-01-01 06:45 Thu",
                    "2026-01-02 06:15 Fri",
                ],
            ),
            // Month names; day-of-month alone.
            (
                "0 0 1 JAN,JUL *",
                &["2026-07-01 00:00 Wed", "2027-01-01 00:00 Fri"],
            ),
            (
                "0 9 13 * *",
                &["2026-01-13 09:00 Tue", "2026-02-13 09:00 Fri"],
            ),
            // Both day fields restricted: a day matching EITHER runs (the OR rule).
            (
                "0 9 13 * FRI",
                &[
                    "2026-01-02 09:00 Fri",
                    "2026-01-09 09:00 Fri",
                    "2026-01-13 09:00 Tue",
                    "2026-01-16 09:00 Fri",
                ],
            ),
            // A restricted day-of-week with day-of-month `*`: only those weekdays.
            (
                "0 9 * * 3",
                &["2026-01-07 09:00 Wed", "2026-01-14 09:00 Wed"],
            ),
        ];
        for (expr, expected) in table {
            assert_eq!(
                runs(expr, from, expected.len()),
                *expected,
                "`{expr}` from 2026-01-01 00:00"
            );
        }
    }

    #[test]
    fn runs_missed_while_stopped_are_not_replayed() {
        // Stopped for a day: the next run is the next matching minute after now, once.
        let s = Schedule::cron("0 * * * *").unwrap();
        let now = Local.with_ymd_and_hms(2026, 1, 6, 10, 30, 0).unwrap();
        assert_eq!(s.delay_from(now), Duration::from_secs(30 * 60));
    }
}
