//! Log-flood control for one kind of failure: php-fpm unreachable. While an
//! instance's php-fpm is starting or restarting, every request to it fails
//! the same way; one WARN line per request would bury everything else (a
//! boot under a health checker logged dozens). The first failure is logged,
//! then at most one line per window carrying how many were held back.
//! Touches nothing but its own counters.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a still-failing instance gets another line.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Quiet {
    /// Per instance: when its last line was logged, and failures since.
    seen: Mutex<HashMap<String, (Instant, u64)>>,
    /// Whether `seen` has entries: keeps `recovered` off the lock on the
    /// request path, where it is called for every PHP request.
    any: AtomicBool,
}

impl Quiet {
    /// `Some(held_back)` when this failure should be logged (with the number
    /// of failures not logged since the last line), `None` to stay quiet.
    pub fn admit(&self, instance: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(instance) {
            Some((last, held)) if now.duration_since(*last) < WINDOW => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                let n = *held;
                *last = now;
                *held = 0;
                Some(n)
            }
            None => {
                seen.insert(instance.to_string(), (now, 0));
                self.any.store(true, Ordering::Release);
                Some(0)
            }
        }
    }

    /// The instance answered again: its next failure is logged at once.
    pub fn recovered(&self, instance: &str) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.remove(instance);
        self.any.store(!seen.is_empty(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_logged_then_one_line_per_window_with_the_count() {
        let q = Quiet::default();
        let t0 = Instant::now();
        assert_eq!(q.admit("a", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(q.admit("a", t0 + Duration::from_millis(100 * i)), None);
        }
        // Another instance has its own window.
        assert_eq!(q.admit("b", t0), Some(0));
        assert_eq!(q.admit("a", t0 + WINDOW), Some(5));
        assert_eq!(q.admit("a", t0 + WINDOW + Duration::from_secs(1)), None);
        q.recovered("a");
        assert_eq!(q.admit("a", t0 + WINDOW + Duration::from_secs(2)), Some(0));
    }
}
