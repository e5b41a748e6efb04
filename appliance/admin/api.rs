//! The admin listener's JSON API, what the dashboard reads:
//! `/api/overview` (instances, units, backups, certificates, log sinks) and
//! `/api/history` (the key metrics' recent points, from
//! [`crate::metrics::history`]).
//!
//! Reads the services' views only; changes nothing.

use crate::metrics::Metrics;
use serde_json::{Value, json};

/// Instances, every unit's state and restarts, the latest exits, restarts
/// and failures, the last backups, the certificates' expiry and the log
/// sinks, now.
pub async fn overview(m: &Metrics) -> Value {
    let state = m.state.clone();
    let trouble = tokio::task::spawn_blocking(move || state.recent_trouble(20))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let certs: Vec<Value> = m
        .front
        .as_ref()
        .map(|f| f.cert_expiries())
        .unwrap_or_default()
        .into_iter()
        .map(|(app, file, not_after)| json!({"app": app, "file": file, "not_after": not_after}))
        .collect();
    let backups: Vec<Value> = m
        .backups
        .last_runs()
        .into_iter()
        .map(|(last, ok)| json!({"last": last, "last_ok": ok}))
        .collect();
    let sinks: Vec<Value> = m
        .logs
        .ship_stats()
        .into_iter()
        .map(|s| {
            json!({"name": s.name, "sent": s.sent, "dropped": s.dropped,
                   "failures": s.failures, "buffered_bytes": s.buffered_bytes})
        })
        .collect();
    json!({
        "time": crate::logs::now_rfc3339(),
        "instances": m.appliance.instance_summaries(),
        "units": m.appliance.status(),
        "recent_trouble": trouble,
        "backups": backups,
        "certificates": certs,
        "log_sinks": sinks,
    })
}

/// Every series of the history, with its unit.
pub fn history(m: &Metrics) -> Value {
    let Some(h) = &m.history else {
        return json!({"interval_sec": null, "series": []});
    };
    let series: Vec<Value> = h
        .snapshot()
        .into_iter()
        .map(|(app, metric, points)| {
            let unit = crate::metrics::history::SERIES
                .iter()
                .find(|(n, _)| *n == metric)
                .map(|(_, u)| *u)
                .unwrap_or("");
            json!({"app": app, "metric": metric, "unit": unit, "points": points})
        })
        .collect();
    json!({"interval_sec": h.interval.as_secs(), "series": series})
}
