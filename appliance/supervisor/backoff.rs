//! Restart pacing: an exponentially growing delay with a cap, reset after stable
//! uptime, and a start limit (systemd's `StartLimitBurst=` within
//! `StartLimitIntervalSec=`) after which the unit is marked failed.
//! Pure logic, no I/O, so it is tested on its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    reset_after: Duration,
    burst: u32,
    interval: Duration,
    consecutive: u32,
    starts: VecDeque<Instant>,
}

impl Backoff {
    pub fn new(
        initial: Duration,
        cap: Duration,
        reset_after: Duration,
        burst: u32,
        interval: Duration,
    ) -> Self {
        Self {
            initial,
            cap,
            reset_after,
            burst,
            interval,
            consecutive: 0,
            starts: VecDeque::new(),
        }
    }

    /// Forget all failures (an operator's `start` of a failed unit).
    pub fn reset(&mut self) {
        self.consecutive = 0;
        self.starts.clear();
    }

    pub fn note_start(&mut self, now: Instant) {
        self.starts.push_back(now);
    }

    /// After an unplanned exit that had been up for `uptime`: the delay before the
    /// next start, or `None` when the start limit is hit and the unit must fail.
    pub fn on_exit(&mut self, now: Instant, uptime: Duration) -> Option<Duration> {
        if uptime >= self.reset_after {
            // It was stable: this crash is the first of a new series.
            self.consecutive = 0;
            self.starts.retain(|t| now.duration_since(*t) <= uptime);
        }
        while let Some(t) = self.starts.front() {
            if now.duration_since(*t) > self.interval {
                self.starts.pop_front();
            } else {
                break;
            }
        }
        if self.starts.len() as u32 >= self.burst {
            return None;
        }
        self.consecutive += 1;
        let factor = 2u32.saturating_pow(self.consecutive - 1);
        Some(self.initial.saturating_mul(factor).min(self.cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Backoff {
        Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(10),
            5,
            Duration::from_secs(10),
        )
    }

    #[test]
    fn delay_doubles_up_to_the_cap() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(350),
            Duration::from_secs(10),
            100,
            Duration::from_secs(10),
        );
        let t = Instant::now();
        let delays: Vec<_> = (0..4)
            .map(|_| b.on_exit(t, Duration::ZERO).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }

    #[test]
    fn crashing_at_once_fails_after_the_burst_limit() {
        let mut b = b();
        let mut t = Instant::now();
        let mut delays = Vec::new();
        loop {
            b.note_start(t);
            match b.on_exit(t, Duration::ZERO) {
                Some(d) => {
                    delays.push(d.as_millis());
                    t += d;
                }
                None => break,
            }
        }
        assert_eq!(delays, [100, 200, 400, 800]);
    }

    #[test]
    fn stable_uptime_resets_the_delay() {
        let mut b = b();
        let t = Instant::now();
        b.note_start(t);
        assert_eq!(
            b.on_exit(t, Duration::ZERO),
            Some(Duration::from_millis(100))
        );
        b.note_start(t);
        assert_eq!(
            b.on_exit(t, Duration::ZERO),
            Some(Duration::from_millis(200))
        );
        let later = t + Duration::from_secs(60);
        b.note_start(t + Duration::from_secs(1));
        assert_eq!(
            b.on_exit(later, Duration::from_secs(59)),
            Some(Duration::from_millis(100))
        );
    }
}
