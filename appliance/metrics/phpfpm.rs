//! php-fpm's pool, read from its status page (`pm.status_path`, JSON) over
//! FastCGI on the pool's socket, under the names of hipages'
//! php-fpm_exporter (`phpfpm_*`), which php-fpm dashboards query.
//!
//! Touches only the pool's socket. The page is php-fpm's own: no script
//! runs, and no route of the public site exposes it.

use super::encode::{Families, Kind, labels};
use std::path::Path;
use std::time::Duration;

/// The status path of the shipped php-fpm pool (`assets/php-fpm/php-fpm.conf`).
pub const STATUS_PATH: &str = "/fpm-status";

/// The pool status fields read, as (JSON key, metric, kind, help).
const FIELDS: &[(&str, &str, Kind, &str)] = &[
    (
        "accepted conn",
        "phpfpm_accepted_connections",
        Kind::Untyped,
        "Requests accepted by the pool since it started.",
    ),
    (
        "start since",
        "phpfpm_start_since",
        Kind::Untyped,
        "Seconds since the pool started.",
    ),
    (
        "listen queue",
        "phpfpm_listen_queue",
        Kind::Gauge,
        "Requests waiting for a free process.",
    ),
    (
        "max listen queue",
        "phpfpm_max_listen_queue",
        Kind::Untyped,
        "Most requests ever waiting for a free process.",
    ),
    (
        "listen queue len",
        "phpfpm_listen_queue_length",
        Kind::Gauge,
        "Size of the socket's queue of pending connections.",
    ),
    (
        "idle processes",
        "phpfpm_idle_processes",
        Kind::Gauge,
        "Idle processes.",
    ),
    (
        "active processes",
        "phpfpm_active_processes",
        Kind::Gauge,
        "Active processes (this status request is one of them).",
    ),
    (
        "total processes",
        "phpfpm_total_processes",
        Kind::Gauge,
        "Idle plus active processes.",
    ),
    (
        "max active processes",
        "phpfpm_max_active_processes",
        Kind::Untyped,
        "Most processes ever active at once.",
    ),
    (
        "max children reached",
        "phpfpm_max_children_reached",
        Kind::Untyped,
        "Times the pool hit pm.max_children and a request had to wait.",
    ),
    (
        "slow requests",
        "phpfpm_slow_requests",
        Kind::Untyped,
        "Requests that exceeded request_slowlog_timeout.",
    ),
];

/// The status page of the pool at `socket`, as (metric, value) pairs.
pub async fn read(socket: &Path, timeout: Duration) -> Result<Vec<(usize, f64)>, String> {
    let body = crate::readiness::php_fpm_page(
        &socket.display().to_string(),
        STATUS_PATH,
        "json",
        256 * 1024,
        timeout,
    )
    .await?;
    parse(&body)
}

/// (index into the field table, value) of each field the page has.
fn parse(body: &str) -> Result<Vec<(usize, f64)>, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| {
        let start: String = body.chars().take(80).collect();
        format!("status page is not JSON ({e}): {start}")
    })?;
    Ok(FIELDS
        .iter()
        .enumerate()
        .filter_map(|(i, (key, ..))| v.get(*key)?.as_f64().map(|n| (i, n)))
        .collect())
}

/// Add one instance's pool: `phpfpm_up` and, when up, every field read.
pub fn add(f: &mut Families, instance: &str, read: &Result<Vec<(usize, f64)>, String>) {
    let l = || labels(&[("app", instance)]);
    f.gauge(
        "phpfpm_up",
        "1 when php-fpm's status page answered.",
        l(),
        f64::from(u8::from(read.is_ok())),
    );
    if let Ok(values) = read {
        for (i, v) in values {
            let (_, name, kind, help) = FIELDS[*i];
            f.number(name, help, kind, l(), *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_fields_become_exporter_metrics() {
        // php-fpm 8.2's `?json` page.
        let body = r#"{"pool":"www","process manager":"static","start time":1764720000,
            "start since":42,"accepted conn":7,"listen queue":0,"max listen queue":1,
            "listen queue len":511,"idle processes":7,"active processes":1,
            "total processes":8,"max active processes":3,"max children reached":2,
            "slow requests":0}"#;
        let got = parse(body).unwrap();
        assert_eq!(got.len(), FIELDS.len());
        let mut f = Families::new();
        add(&mut f, "demo", &Ok(got));
        let text = f.classic();
        assert!(text.contains("phpfpm_up{app=\"demo\"} 1"), "{text}");
        assert!(
            text.contains("phpfpm_total_processes{app=\"demo\"} 8"),
            "{text}"
        );
        assert!(
            text.contains("phpfpm_max_children_reached{app=\"demo\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn an_unreadable_page_is_phpfpm_up_0_and_nothing_else() {
        assert!(parse("File not found.").is_err());
        let mut f = Families::new();
        add(&mut f, "demo", &Err("connection refused".into()));
        let text = f.classic();
        assert!(text.contains("phpfpm_up{app=\"demo\"} 0"), "{text}");
        assert!(!text.contains("phpfpm_idle_processes{"), "{text}");
    }
}
