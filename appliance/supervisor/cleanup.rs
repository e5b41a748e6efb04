//! Stopping what a crashed applianced left running, before anything starts.
//!
//! Leftovers are found by their `APPLIANCED_SCOPE` marker ([`crate::process::scan`])
//! and stopped with their unit's own stop policy: MariaDB gets its clean
//! shutdown and is never SIGKILLed. They are not our children, so their end is
//! observed through `/proc`.

use crate::plan::Plan;
use crate::process::{self, scan};
use crate::state::{Event, EventKind, StateDb, now_unix_ms};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Stop every leftover of this data dir. Returns how many processes were found.
pub async fn cleanup_leftovers(plan: &Plan, state: &StateDb) -> usize {
    let found = scan::find(plan.layout.data_dir());
    if found.is_empty() {
        return 0;
    }
    let mut by_unit: BTreeMap<String, Vec<scan::Leftover>> = BTreeMap::new();
    for l in &found {
        by_unit.entry(l.unit.clone()).or_default().push(l.clone());
    }
    let jobs = by_unit.into_iter().map(|(unit, procs)| {
        let (instance, name) = unit.split_once('/').map(|(a, b)| (a.to_string(), b.to_string())).unwrap_or_default();
        let spec = plan.all_instances().find(|i| i.name == instance).and_then(|i| i.unit(&name)).cloned();
        let (sig, timeout, sigkill) = match &spec {
            Some(s) => (s.kill_signal, s.timeout_stop, s.send_sigkill),
            None => (Signal::SIGTERM, Duration::from_secs(10), true),
        };
        async move {
            let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
            tracing::warn!(instance = %instance, unit = %name, ?pids, "stopping processes left by a previous applianced");
            // The oldest process of each group is the one the stop signal is meant for.
            let leaders: Vec<i32> = procs.iter().filter(|p| p.pid == p.pgid).map(|p| p.pid).collect();
            let targets = if leaders.is_empty() { pids.clone() } else { leaders };
            for p in &targets {
                process::signal_pid(*p, sig);
            }
            let deadline = Instant::now() + timeout;
            while pids.iter().any(|p| scan::alive(*p)) {
                if Instant::now() > deadline && sigkill {
                    for p in &pids {
                        process::signal_pid(*p, Signal::SIGKILL);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            state.record(Event {
                ts_unix_ms: now_unix_ms(),
                instance,
                unit: name,
                replica: 0,
                kind: EventKind::Cleanup,
                pid: targets.first().copied(),
                exit: None,
                detail: Some(format!("stopped {} leftover process(es): {pids:?}", pids.len())),
            });
        }
    });
    futures_util::future::join_all(jobs).await;
    found.len()
}
