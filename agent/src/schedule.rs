//! When a resource is pulled: a 5-field crontab expression (crontab semantics, local time;
//! when both day-of-month and day-of-week are restricted, either may match) or a fixed
//! interval (`every = "30s"`).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Local};

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
            return Err(format!(
                "`{expr}` has {fields} fields; expected 5 (minute hour day-of-month month day-of-week), e.g. \"*/5 * * * *\""
            ));
        }
        let cron = croner::Cron::from_str(expr)
            .map_err(|e| format!("`{expr}` is not a valid crontab expression: {e}"))?;
        Ok(Schedule::Cron(Box::new(cron)))
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
}
