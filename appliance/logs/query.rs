//! `applianced logs` filters: since, until, minimum level, text. The same
//! [`LogQuery`] picks past lines from the files (newest first, across
//! rotated files, stopping once past `since`) and live lines for `-f`.
//!
//! Touches only the log files it is asked to read.

use super::level::{self, Level};
use super::{LogLine, rotated};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogQuery {
    /// Lines at or after this time (RFC 3339 UTC with milliseconds, as lines
    /// store it, so it compares as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Lines before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Lines at this level or more severe; lines that state no level are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// Lines whose message (or a field's value) contains this text, any case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grep: Option<String>,
}

impl LogQuery {
    pub fn matches(&self, l: &LogLine) -> bool {
        if self.since.as_deref().is_some_and(|s| l.ts.as_str() < s) {
            return false;
        }
        if self.until.as_deref().is_some_and(|u| l.ts.as_str() >= u) {
            return false;
        }
        if let Some(min) = self.level {
            if effective_level(l).is_none_or(|have| have < min) {
                return false;
            }
        }
        if let Some(text) = &self.grep {
            let text = text.to_lowercase();
            let in_fields = || {
                l.fields.values().any(|v| match v {
                    serde_json::Value::String(s) => s.to_lowercase().contains(&text),
                    other => other.to_string().contains(&text),
                })
            };
            if !l.msg.to_lowercase().contains(&text) && !in_fields() {
                return false;
            }
        }
        true
    }
}

/// The line's level: as stored, or (lines written before levels were
/// stored) parsed now the same way.
pub fn effective_level(l: &LogLine) -> Option<Level> {
    l.level.or_else(|| {
        if l.stream == "access" {
            let status = l.fields.get("status")?.as_u64()?;
            Some(level::of_status(u16::try_from(status).ok()?))
        } else {
            level::of_message(&l.msg)
        }
    })
}

/// The last `n` lines of a log that match `q`, oldest first, across its
/// rotated files (`keep` of them).
pub fn tail_matching(path: &Path, n: usize, keep: u32, q: &LogQuery) -> Vec<LogLine> {
    let mut newest_first: Vec<LogLine> = Vec::new();
    let mut files = vec![path.to_path_buf()];
    files.extend((1..=keep.max(1)).map(|i| rotated(path, i)));
    'files: for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for raw in text.lines().rev() {
            if newest_first.len() >= n {
                break 'files;
            }
            let Ok(line) = serde_json::from_str::<LogLine>(raw) else {
                continue;
            };
            if q.since.as_deref().is_some_and(|s| line.ts.as_str() < s) {
                // Files are in time order: everything further is older.
                break 'files;
            }
            if q.matches(&line) {
                newest_first.push(line);
            }
        }
    }
    newest_first.reverse();
    newest_first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: &str, stream: &str, msg: &str) -> LogLine {
        LogLine {
            ts: ts.into(),
            instance: "demo".into(),
            unit: "php-fpm".into(),
            replica: None,
            stream: stream.into(),
            msg: msg.into(),
            level: None,
            fields: serde_json::Map::new(),
        }
    }

    #[test]
    fn since_until_level_and_text_each_narrow_the_lines() {
        let warn = line(
            "2026-12-03T08:00:01.000Z",
            "stderr",
            "[03-Dec-2026 08:00:01] WARNING: [pool app] server reached pm.max_children",
        );
        let note = line(
            "2026-12-03T08:00:02.000Z",
            "stderr",
            "[03-Dec-2026 08:00:02] NOTICE: ready to handle connections",
        );
        let plain = line("2026-12-03T08:00:03.000Z", "stdout", "hello");
        let q = |f: &dyn Fn(&mut LogQuery)| {
            let mut q = LogQuery::default();
            f(&mut q);
            q
        };
        let all = [&warn, &note, &plain];
        let pick = |q: &LogQuery| -> Vec<&str> {
            all.iter()
                .filter(|l| q.matches(l))
                .map(|l| l.ts.as_str())
                .collect()
        };
        assert_eq!(pick(&LogQuery::default()).len(), 3);
        let since = q(&|q| q.since = Some("2026-12-03T08:00:02.000Z".into()));
        assert_eq!(pick(&since), vec![note.ts.as_str(), plain.ts.as_str()]);
        let until = q(&|q| q.until = Some("2026-12-03T08:00:02.000Z".into()));
        assert_eq!(pick(&until), vec![warn.ts.as_str()]);
        let warn_up = q(&|q| q.level = Some(Level::Warn));
        assert_eq!(pick(&warn_up), vec![warn.ts.as_str()]);
        let info_up = q(&|q| q.level = Some(Level::Info));
        assert_eq!(pick(&info_up), vec![warn.ts.as_str(), note.ts.as_str()]);
        let text = q(&|q| q.grep = Some("MAX_CHILDREN".into()));
        assert_eq!(pick(&text), vec![warn.ts.as_str()]);
    }

    #[test]
    fn an_access_line_has_its_statuss_level_and_fields_are_searched() {
        let mut l = line("2026-12-03T08:00:01.000Z", "access", "GET /x 502");
        l.fields.insert("status".into(), 502.into());
        l.fields.insert("host".into(), "acme.fact.rog.pe".into());
        assert_eq!(effective_level(&l), Some(Level::Error));
        let q = LogQuery {
            grep: Some("acme.fact".into()),
            ..LogQuery::default()
        };
        assert!(q.matches(&l));
    }

    #[test]
    fn tail_matching_reads_back_through_rotated_files_and_stops_at_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.log");
        let write = |p: &Path, lines: &[LogLine]| {
            let text: String = lines
                .iter()
                .map(|l| serde_json::to_string(l).unwrap() + "\n")
                .collect();
            std::fs::write(p, text).unwrap();
        };
        let older: Vec<LogLine> = (0..5)
            .map(|i| {
                line(
                    &format!("2026-12-03T08:00:0{i}.000Z"),
                    "stdout",
                    &format!("ERROR old {i}"),
                )
            })
            .collect();
        let newer: Vec<LogLine> = (5..8)
            .map(|i| {
                line(
                    &format!("2026-12-03T08:00:0{i}.000Z"),
                    "stdout",
                    &format!("new {i}"),
                )
            })
            .collect();
        write(&rotated(&path, 1), &older);
        write(&path, &newer);
        let errors = LogQuery {
            level: Some(Level::Error),
            ..LogQuery::default()
        };
        let got = tail_matching(&path, 2, 3, &errors);
        let msgs: Vec<&str> = got.iter().map(|l| l.msg.as_str()).collect();
        assert_eq!(msgs, vec!["ERROR old 3", "ERROR old 4"]);
        let recent = LogQuery {
            since: Some("2026-12-03T08:00:04.000Z".into()),
            ..LogQuery::default()
        };
        let got = tail_matching(&path, 100, 3, &recent);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].msg, "ERROR old 4");
    }
}
