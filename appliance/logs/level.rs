//! A log line's level, parsed from what the line says where it says it:
//! MariaDB's `[ERROR]`/`[Warning]`/`[Note]`, Redis's `#`/`*`/`-`/`.` marks,
//! php-fpm's `WARNING:`/`NOTICE:`, PHP's `PHP Fatal error:`, Laravel's
//! `local.ERROR:`, a JSON line's `level`, a leading `ERROR`/`WARN`/`INFO`
//! word; the access log's from its status. A line that says nothing has no
//! level (`None`), rather than a guess.
//!
//! Pure functions: touches nothing.

use serde::{Deserialize, Serialize};

/// Levels, least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// A level name as operators write it (`warning`, `ERR`, `notice`, ...).
    pub fn parse(word: &str) -> Option<Level> {
        Some(match word.to_ascii_lowercase().as_str() {
            "trace" | "debug" | "verbose" => Level::Debug,
            "info" | "notice" | "note" | "informational" => Level::Info,
            "warn" | "warning" => Level::Warn,
            "error" | "err" | "fatal" | "critical" | "crit" | "alert" | "emergency" | "emerg"
            | "panic" => Level::Error,
            _ => return None,
        })
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        Level::parse(s)
            .ok_or_else(|| format!("`{s}` is not a level: use debug, info, warn or error"))
    }
}

/// The access log's level: 5xx error, 4xx warn, the rest info.
pub fn of_status(status: u16) -> Level {
    match status {
        500.. => Level::Error,
        400..=499 => Level::Warn,
        _ => Level::Info,
    }
}

/// The level `msg` states, if any.
pub fn of_message(msg: &str) -> Option<Level> {
    let m = msg.trim_start();
    // A JSON line (Monolog's JSON formatter, many Go/Node services).
    if m.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(m) {
            let word = ["level", "level_name", "severity", "lvl"]
                .iter()
                .find_map(|k| v.get(*k)?.as_str());
            if let Some(l) = word.and_then(Level::parse) {
                return Some(l);
            }
        }
    }
    // MariaDB: `2026-12-03  8:00:00 0 [Warning] Aborted connection ...`
    for (tag, level) in [
        ("[ERROR]", Level::Error),
        ("[Warning]", Level::Warn),
        ("[Note]", Level::Info),
    ] {
        if m.contains(tag) {
            return Some(level);
        }
    }
    // PHP: `PHP Fatal error:  Uncaught ...`, `PHP Warning:  ...`
    if let Some(rest) = m.strip_prefix("PHP ") {
        for (prefix, level) in [
            ("Fatal error", Level::Error),
            ("Parse error", Level::Error),
            ("Warning", Level::Warn),
            ("Notice", Level::Info),
            ("Deprecated", Level::Info),
        ] {
            if rest.starts_with(prefix) {
                return Some(level);
            }
        }
    }
    // Laravel/Monolog: `[2026-12-03 08:00:00] local.ERROR: ...`
    if let Some(l) = monolog(m) {
        return Some(l);
    }
    // php-fpm: `[03-Dec-2026 08:00:00] WARNING: [pool app] ...`, or no date.
    let after_date = m
        .strip_prefix('[')
        .and_then(|r| r.split_once("] "))
        .map_or(m, |(_, r)| r);
    if let Some((word, _)) = after_date.split_once(':') {
        if word.len() <= 9 && word.chars().all(|c| c.is_ascii_uppercase()) {
            if let Some(l) = Level::parse(word) {
                return Some(l);
            }
        }
    }
    // Redis: `1234:M 03 Dec 2026 08:00:00.123 # Warning: ...`
    if let Some(l) = redis(m) {
        return Some(l);
    }
    // A leading level word: `ERROR something`, `WARN: ...`, `[error] ...`.
    let first = m
        .split(|c: char| c.is_whitespace() || c == ':')
        .next()
        .unwrap_or("")
        .trim_matches(|c| c == '[' || c == ']');
    if first.len() >= 4 && first.chars().all(|c| c.is_ascii_alphabetic()) && first != "Note" {
        return Level::parse(first);
    }
    None
}

/// `... CHANNEL.LEVEL: ...` after a `[date]`.
fn monolog(m: &str) -> Option<Level> {
    let (_, rest) = m.strip_prefix('[')?.split_once("] ")?;
    let (head, _) = rest.split_once(": ")?;
    let (channel, word) = head.rsplit_once('.')?;
    (!channel.contains(' ') && word.chars().all(|c| c.is_ascii_uppercase()))
        .then(|| Level::parse(word))
        .flatten()
}

/// Redis's `PID:ROLE DD Mon YYYY HH:MM:SS.mmm MARK msg`.
fn redis(m: &str) -> Option<Level> {
    let mut parts = m.splitn(7, ' ');
    let pid_role = parts.next()?;
    let (pid, role) = pid_role.split_once(':')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || role.len() != 1 {
        return None;
    }
    // day, month, year, time, then the mark.
    let mark = parts.nth(4)?;
    match mark {
        "#" => Some(Level::Warn),
        "*" => Some(Level::Info),
        "-" | "." => Some(Level::Debug),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_servers_own_marks_give_the_level() {
        let cases = [
            (
                "2026-12-03  8:00:00 0 [Warning] Aborted connection 12 to db",
                Some(Level::Warn),
            ),
            (
                "2026-12-03  8:00:00 0 [ERROR] InnoDB: Cannot open datafile",
                Some(Level::Error),
            ),
            (
                "2026-12-03  8:00:00 0 [Note] Starting MariaDB",
                Some(Level::Info),
            ),
            (
                "1234:M 03 Dec 2026 08:00:00.123 # WARNING overcommit_memory is set to 0",
                Some(Level::Warn),
            ),
            (
                "1234:M 03 Dec 2026 08:00:00.123 * Ready to accept connections",
                Some(Level::Info),
            ),
            (
                "[03-Dec-2026 08:00:00] WARNING: [pool app] server reached pm.max_children",
                Some(Level::Warn),
            ),
            (
                "[03-Dec-2026 08:00:00] NOTICE: ready to handle connections",
                Some(Level::Info),
            ),
            (
                "PHP Fatal error:  Uncaught Exception: boom",
                Some(Level::Error),
            ),
            ("PHP Warning:  Undefined variable $x", Some(Level::Warn)),
            (
                "[2026-12-03 08:00:00] local.ERROR: SUNAT timeout",
                Some(Level::Error),
            ),
            (
                "[2026-12-03 08:00:00] production.INFO: invoice sent",
                Some(Level::Info),
            ),
            (r#"{"message":"x","level":"warning"}"#, Some(Level::Warn)),
            (
                r#"{"message":"x","level_name":"CRITICAL"}"#,
                Some(Level::Error),
            ),
            ("ERROR failed to connect", Some(Level::Error)),
            ("[error] oops", Some(Level::Error)),
            ("Processing: App\\Jobs\\SendInvoice", None),
            ("Hello, world", None),
            ("Note that nothing is wrong", None),
        ];
        for (line, want) in cases {
            assert_eq!(of_message(line), want, "{line}");
        }
    }

    #[test]
    fn levels_parse_from_operator_words_and_order_by_severity() {
        assert_eq!("warning".parse::<Level>(), Ok(Level::Warn));
        assert_eq!("ERR".parse::<Level>(), Ok(Level::Error));
        assert!("loud".parse::<Level>().is_err());
        assert!(Level::Error > Level::Warn && Level::Warn > Level::Info);
        assert_eq!(of_status(503), Level::Error);
        assert_eq!(of_status(404), Level::Warn);
        assert_eq!(of_status(200), Level::Info);
    }
}
