//! A small in-memory history of the key metrics, for the dashboard's graphs:
//! no time-series database, just a ring of points per (instance, metric).
//!
//! A sampler takes a point every `interval` from counters applianced already
//! keeps (the front end's per-site requests, the cgroups' CPU and memory),
//! so a sample costs microseconds and asks no child anything. Rates are the
//! difference between two samples; a counter that went backwards (a site
//! removed and added back) restarts its rate instead of going negative.
//!
//! Touches nothing outside its own memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The series kept per instance, with their units, as the dashboard shows them.
pub const SERIES: &[(&str, &str)] = &[
    ("requests_per_s", "req/s"),
    ("errors_per_s", "5xx/s"),
    ("latency_ms", "ms (mean)"),
    ("cpu_percent", "% of a core"),
    ("memory_mb", "MB"),
];

/// One sample's raw readings for one instance (counters and gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub requests: u64,
    pub errors: u64,
    pub latency_sum_s: f64,
    pub cpu_usec: Option<u64>,
    pub memory_bytes: Option<u64>,
}

/// Points of one series: (unix seconds, value), oldest first.
pub type Points = VecDeque<(i64, f64)>;

/// (instance, metric, points) of one series, as read.
pub type Series = (String, &'static str, Vec<(i64, f64)>);

pub struct History {
    pub interval: Duration,
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    series: BTreeMap<(String, &'static str), Points>,
    last: HashMap<String, (Instant, Reading)>,
}

impl History {
    /// Keep `span` of points taken every `interval`.
    pub fn new(interval: Duration, span: Duration) -> History {
        let cap = (span.as_secs() / interval.as_secs().max(1)).max(2) as usize;
        History {
            interval,
            cap,
            inner: Mutex::default(),
        }
    }

    /// Record one sample of every instance, taken at `now`.
    pub fn record(&self, now: Instant, wall: SystemTime, readings: &[(String, Reading)]) {
        let t = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (app, r) in readings {
            let mut values: Vec<(&'static str, f64)> = Vec::new();
            if let Some(m) = r.memory_bytes {
                values.push(("memory_mb", m as f64 / 1e6));
            }
            if let Some((then, p)) = inner.last.get(app).copied() {
                let dt = now.duration_since(then).as_secs_f64();
                if dt > 0.0 {
                    // A counter that went backwards started again from 0.
                    let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
                    let requests = delta(r.requests, p.requests);
                    values.push(("requests_per_s", requests as f64 / dt));
                    values.push(("errors_per_s", delta(r.errors, p.errors) as f64 / dt));
                    if requests > 0 {
                        let lat = (r.latency_sum_s - p.latency_sum_s).max(0.0);
                        values.push(("latency_ms", lat * 1000.0 / requests as f64));
                    }
                    if let (Some(c), Some(pc)) = (r.cpu_usec, p.cpu_usec) {
                        values.push(("cpu_percent", delta(c, pc) as f64 / 1e6 / dt * 100.0));
                    }
                }
            }
            for (metric, v) in values {
                let points = inner.series.entry((app.clone(), metric)).or_default();
                points.push_back((t, v));
                while points.len() > self.cap {
                    points.pop_front();
                }
            }
            inner.last.insert(app.clone(), (now, *r));
        }
    }

    /// Every series: (instance, metric, points).
    pub fn snapshot(&self) -> Vec<Series> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .series
            .iter()
            .map(|((app, metric), p)| (app.clone(), *metric, p.iter().copied().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(requests: u64, errors: u64, lat: f64, cpu: u64, mem: u64) -> Reading {
        Reading {
            requests,
            errors,
            latency_sum_s: lat,
            cpu_usec: Some(cpu),
            memory_bytes: Some(mem),
        }
    }

    #[test]
    fn rates_come_from_the_difference_of_two_samples() {
        let h = History::new(Duration::from_secs(10), Duration::from_secs(3600));
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        h.record(
            t0,
            w0,
            &[("demo".into(), reading(100, 1, 1.0, 1_000_000, 50_000_000))],
        );
        h.record(
            t0 + Duration::from_secs(10),
            w0 + Duration::from_secs(10),
            &[("demo".into(), reading(600, 6, 3.5, 6_000_000, 60_000_000))],
        );
        let snap = h.snapshot();
        let get = |m: &str| {
            snap.iter()
                .find(|(a, metric, _)| a == "demo" && *metric == m)
                .map(|(_, _, p)| p.clone())
                .unwrap()
        };
        assert_eq!(get("requests_per_s"), vec![(1_000_010, 50.0)]);
        assert_eq!(get("errors_per_s"), vec![(1_000_010, 0.5)]);
        assert_eq!(get("latency_ms"), vec![(1_000_010, 5.0)]);
        assert_eq!(get("cpu_percent"), vec![(1_000_010, 50.0)]);
        assert_eq!(get("memory_mb"), vec![(1_000_000, 50.0), (1_000_010, 60.0)]);
    }

    #[test]
    fn the_ring_keeps_its_span_and_a_reset_counter_never_goes_negative() {
        let h = History::new(Duration::from_secs(1), Duration::from_secs(3));
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH;
        for i in 0..10u64 {
            // requests go 0, 10, 20, ... and then restart from 5 at i = 6.
            let req = if i < 6 { i * 10 } else { 5 };
            h.record(
                t0 + Duration::from_secs(i),
                w0 + Duration::from_secs(i),
                &[("a".into(), reading(req, 0, 0.0, 0, 1))],
            );
        }
        let snap = h.snapshot();
        let rps = &snap
            .iter()
            .find(|(_, m, _)| *m == "requests_per_s")
            .unwrap()
            .2;
        assert_eq!(rps.len(), 3);
        assert!(rps.iter().all(|(_, v)| *v >= 0.0), "{rps:?}");
    }
}
