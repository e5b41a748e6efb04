//! One cron entry's task: compute the next fire time from the wall clock,
//! sleep until it, fire, repeat; and fire at once when an operator asks.
//!
//! Timing rules:
//! - The next fire time is always computed from *now* (and after the last fire
//!   time), so fires missed while applianced was down or the machine slept are
//!   never replayed: at most one late fire, then back on the schedule.
//! - The sleep targets an absolute wall-clock time and is re-aimed from the
//!   wall clock at least every [`REAIM`], so neither timer slack nor a clock
//!   step accumulates into drift, and a fire never happens early.
//!
//! Touches nothing itself: runs are started by [`super::run`].

use super::{EntryRt, Fired, must_skip, run};
use crate::state::now_unix_ms;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

/// Longest single sleep before the deadline is recomputed from the wall clock.
const REAIM: Duration = Duration::from_secs(30);

pub(super) async fn run_entry(
    e: Arc<EntryRt>,
    mut stop: watch::Receiver<bool>,
    mut manual: mpsc::Receiver<oneshot::Sender<Fired>>,
    alive: mpsc::Sender<()>,
) {
    let mut last: Option<SystemTime> = None;
    loop {
        let now = SystemTime::now();
        let from = match last {
            Some(l) if l > now => l,
            _ => now,
        };
        let next = e.spec.schedule.next_after(from);
        if next.is_none() {
            tracing::warn!(instance = %e.instance, entry = %e.spec.name, "cron schedule has no next fire time");
        }
        tokio::select! {
            _ = sleep_until_wall(next) => {}
            _ = stop.changed() => return,
            req = manual.recv() => {
                if let Some(reply) = req {
                    let _ = reply.send(fire(&e, now_unix_ms(), "manual", &stop, &alive));
                }
                continue;
            }
        }
        if *stop.borrow() {
            return;
        }
        let Some(next) = next else { continue };
        last = Some(next);
        fire(&e, unix_ms(next), "schedule", &stop, &alive);
    }
}

/// Sleep until the wall clock reaches `deadline` (forever when `None`).
async fn sleep_until_wall(deadline: Option<SystemTime>) {
    let Some(deadline) = deadline else {
        return std::future::pending().await;
    };
    loop {
        match deadline.duration_since(SystemTime::now()) {
            Ok(left) if !left.is_zero() => tokio::time::sleep(left.min(REAIM)).await,
            _ => return,
        }
    }
}

/// Start a run now, or record a skip when the previous run still goes.
fn fire(
    e: &Arc<EntryRt>,
    scheduled_ms: i64,
    trigger: &'static str,
    stop: &watch::Receiver<bool>,
    alive: &mpsc::Sender<()>,
) -> Fired {
    let id = e.state.next_run_id();
    if must_skip(e) {
        let why = "the previous run is still going (overlap = skip)";
        run::record_skip(e, id, scheduled_ms, trigger, why);
        return Fired::Skipped { run: id };
    }
    // Like a systemd timer's unit with After=: a fire while the instance's
    // units are still coming up (boot, `instance start`) would only fail.
    if let Some(why) = (e.hold)() {
        run::record_skip(e, id, scheduled_ms, trigger, &why);
        return Fired::Skipped { run: id };
    }
    e.in_flight.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(run::execute(
        e.clone(),
        id,
        scheduled_ms,
        trigger,
        stop.clone(),
        alive.clone(),
    ));
    Fired::Started { run: id }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
