//! Which backups to keep: the newest backup of each of the last `daily`
//! days, `weekly` ISO weeks and `monthly` months (local time), as restic's
//! and borg's `--keep-*` do. Pure; the caller deletes.
//!
//! The rule that protects against losing everything: retention is only ever
//! applied to one target right after a newer backup was written *and read
//! back* there, and the newest verified backup is always kept.

use super::manifest::parse_id;
use super::spec::Keep;
use chrono::{DateTime, Datelike, Local};
use std::collections::BTreeSet;

/// The ids to keep among `ids` (backup ids of one instance, any order).
/// Ids that do not parse are kept (never delete what is not understood).
pub fn keep(ids: &[String], keep: Keep) -> BTreeSet<String> {
    let mut dated: Vec<(i64, &String)> = Vec::new();
    let mut out = BTreeSet::new();
    for id in ids {
        match parse_id(id) {
            Some((_, ms)) => dated.push((ms, id)),
            None => {
                out.insert(id.clone());
            }
        }
    }
    dated.sort_by(|a, b| b.cmp(a));
    let local = |ms: i64| -> DateTime<Local> {
        DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .with_timezone(&Local)
    };
    let mut bucket = |n: u32, key: &dyn Fn(DateTime<Local>) -> (i32, u32, u32)| {
        let mut last = None;
        let mut taken = 0;
        for (ms, id) in &dated {
            if taken >= n {
                break;
            }
            let k = key(local(*ms));
            if last != Some(k) {
                last = Some(k);
                taken += 1;
                out.insert((*id).clone());
            }
        }
    };
    bucket(keep.daily, &|t| (t.year(), t.month(), t.day()));
    bucket(keep.weekly, &|t| {
        let w = t.iso_week();
        (w.year(), w.week(), 0)
    });
    bucket(keep.monthly, &|t| (t.year(), t.month(), 0));
    if let Some((_, newest)) = dated.first() {
        out.insert((*newest).clone());
    }
    out
}

/// What to delete from `present` (ids in one target) once `verified_newest`
/// has been written and read back there: everything older than it that
/// [`keep`] does not keep. Nothing newer than it is touched.
pub fn to_prune(present: &[String], verified_newest: &str, k: Keep) -> Vec<String> {
    let Some((_, newest_ms)) = parse_id(verified_newest) else {
        return Vec::new();
    };
    let kept = keep(present, k);
    present
        .iter()
        .filter(|id| !kept.contains(*id) && id.as_str() != verified_newest)
        .filter(|id| parse_id(id).is_some_and(|(_, ms)| ms < newest_ms))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::manifest::backup_id;
    use super::*;
    use chrono::{NaiveDate, TimeZone};

    /// Local noon of a date, as unix ms (noon: no DST edge moves the day).
    fn noon(y: i32, m: u32, d: u32) -> i64 {
        let t = NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap();
        Local.from_local_datetime(&t).unwrap().timestamp_millis()
    }

    /// Run `days` simulated days from 2026-01-01 with one backup a day
    /// (verified), pruning after each like the daemon does; return what is
    /// left, as dates.
    fn simulate(days: i64, k: Keep, failing: &[i64]) -> Vec<String> {
        let start = noon(2026, 1, 1);
        let mut present: Vec<String> = Vec::new();
        for day in 0..days {
            let id = backup_id("shop", start + day * 86_400_000);
            if failing.contains(&day) {
                // A backup that was not verified prunes nothing.
                continue;
            }
            present.push(id.clone());
            let gone = to_prune(&present, &id, k);
            present.retain(|p| !gone.contains(p));
        }
        present
            .iter()
            .map(|id| {
                let (_, ms) = parse_id(id).unwrap();
                DateTime::from_timestamp_millis(ms)
                    .unwrap()
                    .with_timezone(&Local)
                    .format("%Y-%m-%d")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn keep_daily_seven_keeps_exactly_the_last_seven_days() {
        let left = simulate(
            30,
            Keep {
                daily: 7,
                weekly: 0,
                monthly: 0,
            },
            &[],
        );
        assert_eq!(
            left,
            [
                "2026-01-24",
                "2026-01-25",
                "2026-01-26",
                "2026-01-27",
                "2026-01-28",
                "2026-01-29",
                "2026-01-30"
            ]
        );
    }

    #[test]
    fn daily_weekly_and_monthly_keep_the_newest_of_each_bucket() {
        // 2026-01-01 is a Thursday; 100 days end on Friday 2026-04-10.
        let left = simulate(
            100,
            Keep {
                daily: 3,
                weekly: 2,
                monthly: 3,
            },
            &[],
        );
        assert_eq!(
            left,
            [
                "2026-02-28", // February's newest (monthly)
                "2026-03-31", // March's newest (monthly)
                "2026-04-05", // Sunday: the newest of ISO week 14 (weekly)
                "2026-04-08", // daily x3
                "2026-04-09",
                "2026-04-10", // also this week's and April's newest
            ]
        );
    }

    #[test]
    fn nothing_is_pruned_while_backups_fail_to_verify() {
        // Days 10-19 fail: the seven good backups before them stay.
        let left = simulate(
            20,
            Keep {
                daily: 7,
                weekly: 0,
                monthly: 0,
            },
            &(10..20).collect::<Vec<_>>(),
        );
        assert_eq!(left.len(), 7);
        assert_eq!(left.last().unwrap(), "2026-01-10");
    }

    #[test]
    fn two_backups_on_one_day_count_once_and_the_newer_wins() {
        let a = backup_id("shop", noon(2026, 3, 1));
        let b = backup_id("shop", noon(2026, 3, 1) + 3_600_000);
        let c = backup_id("shop", noon(2026, 3, 2));
        let kept = keep(
            &[a.clone(), b.clone(), c.clone()],
            Keep {
                daily: 2,
                weekly: 0,
                monthly: 0,
            },
        );
        assert_eq!(kept, BTreeSet::from([b, c]));
        let _ = a;
    }

    #[test]
    fn a_backup_newer_than_the_verified_one_is_never_pruned() {
        let old = backup_id("shop", noon(2026, 3, 1));
        let verified = backup_id("shop", noon(2026, 3, 2));
        let newer = backup_id("shop", noon(2026, 3, 3));
        let gone = to_prune(
            &[old.clone(), verified.clone(), newer.clone()],
            &verified,
            Keep {
                daily: 1,
                weekly: 0,
                monthly: 0,
            },
        );
        assert_eq!(gone, [old]);
    }
}
