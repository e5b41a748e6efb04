//! What holds a unit's start: the units it `requires` or comes `after`, and,
//! for a `start_idle_sec` unit, the boot's idle gate (systemd's `Type=idle`).
//!
//! Reads status feeds only; the runner decides what to do while held.

use super::{DepKind, UnitStatus};
use futures_util::future::select_all;
use std::time::Duration;
use tokio::sync::watch;

/// How often a runner looks at what holds it while it waits.
pub const POLL: Duration = Duration::from_millis(20);

/// A dependency as the runner sees it: the status feeds of all its replicas
/// at boot (a later `scale` of the dependency is not seen here).
#[derive(Clone)]
pub struct Dep {
    pub name: String,
    pub kind: DepKind,
    pub replicas: Vec<watch::Receiver<UnitStatus>>,
}

impl Dep {
    fn satisfied(&self) -> bool {
        self.replicas.iter().all(|r| {
            let st = r.borrow();
            match self.kind {
                DepKind::Requires => st.state.is_settled_up(),
                DepKind::After => !st.state.is_coming_up(),
            }
        })
    }
}

/// The dependencies in `deps` not yet satisfied, by name. `before_spawn`:
/// those that hold the spawn (all of them, or only `after` ones for a
/// `start_early` unit); else those that hold readiness: `requires`, for every
/// unit (one that went down since the spawn holds it too).
pub fn unmet(deps: &[Dep], start_early: bool, before_spawn: bool) -> Vec<&str> {
    let holds = |d: &Dep| match (before_spawn, d.kind) {
        (true, DepKind::Requires) => !start_early,
        (true, DepKind::After) => true,
        (false, DepKind::Requires) => true,
        (false, DepKind::After) => false,
    };
    deps.iter()
        .filter(|d| holds(d) && !d.satisfied())
        .map(|d| d.name.as_str())
        .collect()
}

/// Open, for good, once every unit started at boot without `start_idle_sec`
/// has come up: ready, exited, skipped, failed or stopped. It never closes
/// again, so a later restart of an idle unit (sshd after a crash, or on an
/// operator's command) is not held by an app unit in backoff.
#[derive(Clone)]
pub struct IdleGate(watch::Receiver<bool>);

impl IdleGate {
    /// A gate and the sender that opens it ([`open_when_up`]).
    pub fn new() -> (watch::Sender<bool>, IdleGate) {
        let (tx, rx) = watch::channel(false);
        (tx, IdleGate(rx))
    }

    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }
}

/// Opens the gate once none of `feeds` is on its way up. Woken by their
/// changes, not a timer, so it costs nothing while an app unit sits in a
/// long backoff. A feed whose runner is gone (its instance removed) no
/// longer counts.
pub async fn open_when_up(mut feeds: Vec<watch::Receiver<UnitStatus>>, gate: watch::Sender<bool>) {
    loop {
        feeds.retain_mut(|f| f.has_changed().is_ok() && f.borrow_and_update().state.is_coming_up());
        if feeds.is_empty() {
            let _ = gate.send(true);
            return;
        }
        // Wait for any change; the loop above looks at them all again.
        let _ = select_all(feeds.iter_mut().map(|f| Box::pin(f.changed()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::{UnitState, initial_status};

    #[tokio::test]
    async fn the_idle_gate_opens_once_every_unit_has_come_up_and_stays_open() {
        let (db_tx, db) = watch::channel(initial_status("a", "db", 0));
        let (web_tx, web) = watch::channel(initial_status("a", "web", 0));
        let (tx, gate) = IdleGate::new();
        let task = tokio::spawn(open_when_up(vec![db, web], tx));
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        settle().await;
        assert!(!gate.is_open(), "both units are still waiting");
        db_tx.send_modify(|s| s.state = UnitState::Running);
        web_tx.send_modify(|s| s.state = UnitState::Starting);
        settle().await;
        assert!(!gate.is_open(), "web is still starting");
        web_tx.send_modify(|s| s.state = UnitState::Failed);
        settle().await;
        assert!(
            gate.is_open(),
            "a failed unit has come up as far as it will"
        );
        task.await.unwrap();
        // A later backoff does not close it again.
        db_tx.send_modify(|s| s.state = UnitState::Backoff);
        assert!(gate.is_open());
    }

    #[tokio::test]
    async fn the_idle_gate_does_not_count_a_unit_whose_runner_is_gone() {
        let (db_tx, db) = watch::channel(initial_status("a", "db", 0));
        let (tx, gate) = IdleGate::new();
        let task = tokio::spawn(open_when_up(vec![db], tx));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!gate.is_open());
        drop(db_tx);
        task.await.unwrap();
        assert!(gate.is_open());
    }
}
