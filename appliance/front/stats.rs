//! Per-instance request counters for `/metrics`: requests by status class, a
//! latency histogram, php-fpm errors and bytes sent.
//!
//! A request adds a few relaxed atomic increments when it is logged: no lock,
//! no allocation, no label lookup (the site it was routed to holds its
//! counters). A scrape reads them with [`HttpStats::snapshot`]. Counters
//! start at zero with the site, so removing and adding an instance back
//! reads as a counter reset, which Prometheus handles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds: from a cached static
/// file (well under 5 ms) to a slow report page.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Status classes, as labelled: `0xx` is a request with no response (the
/// client went away first).
const CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug, Default)]
pub struct HttpStats {
    by_class: [AtomicU64; 6],
    /// Per bucket, not cumulative; the last one is "above every bound".
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    bytes: AtomicU64,
    /// php-fpm unreachable or broken (502), and silent past the read timeout (504).
    upstream_failed: AtomicU64,
    upstream_timeout: AtomicU64,
}

/// What a scrape reads.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSnapshot {
    /// (class, requests), every class present.
    pub by_class: Vec<(&'static str, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
    /// (upper bound, cumulative count), as [`BUCKETS`].
    pub buckets: Vec<(f64, u64)>,
    pub bytes: u64,
    /// (`kind`, errors): `failed` (502) and `timeout` (504).
    pub upstream_errors: Vec<(&'static str, u64)>,
}

impl HttpStats {
    /// Count one finished request. `upstream_error` is its status when PHP
    /// answered it with an error page of ours (502 or 504).
    pub fn observe(&self, status: u16, bytes: usize, total: Duration, php_error: Option<u16>) {
        let class = usize::from(status / 100).min(5);
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let secs = total.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(total.as_micros() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        match php_error {
            Some(504) => self.upstream_timeout.fetch_add(1, Ordering::Relaxed),
            Some(_) => self.upstream_failed.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }

    pub fn snapshot(&self) -> HttpSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let by_class: Vec<(&'static str, u64)> = CLASSES
            .iter()
            .zip(&self.by_class)
            .map(|(c, n)| (*c, get(n)))
            .collect();
        let mut running = 0;
        let buckets = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(b, n)| {
                running += get(n);
                (*b, running)
            })
            .collect();
        // The count is the buckets' total, so `+Inf` always equals `_count`
        // even while requests are being counted.
        let count = self.buckets.iter().map(get).sum();
        HttpSnapshot {
            by_class,
            count,
            sum_seconds: get(&self.sum_micros) as f64 / 1e6,
            buckets,
            bytes: get(&self.bytes),
            upstream_errors: vec![
                ("failed", get(&self.upstream_failed)),
                ("timeout", get(&self.upstream_timeout)),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_class_and_cumulative_buckets() {
        let s = HttpStats::default();
        s.observe(200, 100, Duration::from_micros(800), None);
        s.observe(404, 10, Duration::from_millis(30), None);
        s.observe(504, 50, Duration::from_secs(20), Some(504));
        s.observe(502, 50, Duration::from_millis(2), Some(502));
        let snap = s.snapshot();
        assert_eq!(snap.count, 4);
        assert_eq!(
            snap.by_class,
            vec![
                ("0xx", 0),
                ("1xx", 0),
                ("2xx", 1),
                ("3xx", 0),
                ("4xx", 1),
                ("5xx", 2)
            ]
        );
        assert_eq!(snap.buckets[0], (0.001, 1));
        assert_eq!(snap.buckets[1], (0.005, 2));
        assert_eq!(snap.buckets[4], (0.05, 3));
        // 20 s is above every bound: only in +Inf (the count).
        assert_eq!(snap.buckets.last(), Some(&(10.0, 3)));
        assert_eq!(snap.bytes, 210);
        assert_eq!(snap.upstream_errors, vec![("failed", 1), ("timeout", 1)]);
        assert!(
            (snap.sum_seconds - 20.0328).abs() < 1e-6,
            "{}",
            snap.sum_seconds
        );
    }
}
