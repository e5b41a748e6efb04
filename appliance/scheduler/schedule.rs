//! Cron schedules: parsing (5 fields, or 6 with seconds first) and the next
//! fire time after a given instant, in the machine's local time zone.
//!
//! Pure computation over [`croner`]; touches nothing.

use chrono::{DateTime, Local};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use std::time::SystemTime;

/// A parsed schedule and the text it came from.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

impl Schedule {
    /// `*/5 * * * *`, `*/2 * * * * *` (seconds first), or an alias such as
    /// `@hourly`. The error says what is wrong in an operator's words.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let trimmed = text.trim();
        let fields = trimmed.split_whitespace().count();
        if !trimmed.starts_with('@') && fields != 5 && fields != 6 {
            return Err(format!(
                "`{text}` has {fields} fields; a schedule has 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| format!("`{text}` is not a valid cron schedule: {e}"))?;
        // A pattern that never matches (e.g. 30 February) is useless: refuse it now.
        let s = Schedule {
            text: trimmed.to_string(),
            cron,
        };
        if s.next_after(SystemTime::now()).is_none() {
            return Err(format!("`{text}` never fires"));
        }
        Ok(s)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first fire time strictly after `t` (sub-second parts of `t` count:
    /// after 12:00:00.300 an every-second schedule fires at 12:00:01.000).
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let local: DateTime<Local> = t.into();
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(SystemTime::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }
    fn ms(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    }

    #[test]
    fn five_fields_fire_on_the_minute_and_six_on_the_second() {
        let base = 1_800_000_000_000; // a whole minute (1800000000 = 30000000 * 60)
        let every_minute = Schedule::parse("* * * * *").unwrap();
        assert_eq!(
            ms(every_minute.next_after(at(base + 300)).unwrap()),
            base + 60_000
        );
        let every_second = Schedule::parse("* * * * * *").unwrap();
        assert_eq!(
            ms(every_second.next_after(at(base + 300)).unwrap()),
            base + 1000
        );
        // Strictly after: a fire time itself leads to the next one.
        assert_eq!(ms(every_second.next_after(at(base)).unwrap()), base + 1000);
        let every_third = Schedule::parse("*/3 * * * * *").unwrap();
        assert_eq!(
            ms(every_third.next_after(at(base + 1)).unwrap()),
            base + 3000
        );
    }

    #[test]
    fn the_next_fire_is_computed_from_now_so_missed_fires_are_not_replayed() {
        let s = Schedule::parse("* * * * * *").unwrap();
        let long_ago = at(1_800_000_000_000);
        let now = at(1_800_000_100_250);
        // Only one fire time is ever due: the next after now, not the 100 missed.
        assert_eq!(ms(s.next_after(now).unwrap()), 1_800_000_101_000);
        assert!(s.next_after(long_ago).unwrap() < now);
    }

    #[test]
    fn bad_schedules_are_refused_with_a_reason() {
        let e = Schedule::parse("* * *").unwrap_err();
        assert!(e.contains("has 3 fields"), "{e}");
        let e = Schedule::parse("* * * * * * 2030").unwrap_err();
        assert!(e.contains("has 7 fields"), "{e}");
        let e = Schedule::parse("61 * * * *").unwrap_err();
        assert!(e.contains("not a valid cron schedule"), "{e}");
        let e = Schedule::parse("every minute please").unwrap_err();
        assert!(e.contains("fields"), "{e}");
        let e = Schedule::parse("0 0 30 2 *").unwrap_err();
        assert!(e.contains("never fires"), "{e}");
        assert!(Schedule::parse("@hourly").is_ok());
    }
}
