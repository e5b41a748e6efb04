//! One replica of one unit: a task that owns the process and walks it through
//! waiting -> starting -> running -> (exit) -> backoff -> ... or failed.
//!
//! It talks to the rest of applianced only through its command channel, its
//! status `watch`, the event recorder and its unit log.

mod prepare;

use super::backoff::Backoff;
use super::hold::{self, Dep, IdleGate};
use super::{Cmd, UnitState, UnitStatus};
use crate::layout::Layout;
use crate::logs::UnitLog;
use crate::notify::NotifySocket;
use crate::plan::{InstancePlan, UnitSpec};
use crate::process::{self, Child, ExitStatus, Launcher, scan};
use crate::provision::Provisioned;
use crate::readiness::{self, ProbeEnv};
use crate::state::{Event, EventKind, StateDb, now_unix_ms};
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Everything a runner needs, fixed for its lifetime.
pub struct Runner {
    pub layout: Layout,
    pub instance: Arc<InstancePlan>,
    pub provisioned: Arc<Provisioned>,
    pub spec: Arc<UnitSpec>,
    pub replica: u32,
    pub launcher: Launcher,
    pub state: StateDb,
    pub log: UnitLog,
    pub deps: Vec<Dep>,
    /// Holds the first start of a `start_idle_sec` unit.
    pub idle: IdleGate,
    pub status: watch::Sender<UnitStatus>,
}

/// How a supervised run ended, as far as the loop is concerned.
enum Outcome {
    /// Exited on its own (or failed to start) after `uptime`.
    Died {
        exit: Option<ExitStatus>,
        uptime: Duration,
        reason: String,
    },
    /// Stopped on request; `then` says what the operator wants next.
    Stopped { then: After },
    /// Not started: the unit's condition does not hold.
    Skipped { reason: String },
}

enum After {
    StayStopped,
    StartAgain,
}

impl Runner {
    /// The dependencies not yet satisfied, by name (see [`hold::unmet`]).
    fn unmet(&self, before_spawn: bool) -> Vec<&str> {
        hold::unmet(&self.deps, self.spec.start_early, before_spawn)
    }

    fn replica_label(&self) -> Option<u32> {
        (self.spec.replicas > 1 || self.replica > 0).then_some(self.replica)
    }

    fn emit(
        &self,
        kind: EventKind,
        pid: Option<i32>,
        exit: Option<ExitStatus>,
        detail: Option<String>,
    ) {
        let note = match (&exit, &detail) {
            (Some(e), Some(d)) => format!("{}: {} ({d})", kind.as_str(), e.describe()),
            (Some(e), None) => format!("{}: {}", kind.as_str(), e.describe()),
            (None, Some(d)) => format!("{}: {d}", kind.as_str()),
            (None, None) => kind.as_str().to_string(),
        };
        let note = match pid {
            Some(p) => format!("{note} [pid {p}]"),
            None => note,
        };
        tracing::info!(instance = %self.instance.name, unit = %self.spec.name, replica = self.replica, event = kind.as_str(), pid, detail = %note, "unit event");
        self.log.write(self.replica_label(), "applianced", note);
        self.state.record(Event {
            ts_unix_ms: now_unix_ms(),
            instance: self.instance.name.clone(),
            unit: self.spec.name.clone(),
            replica: self.replica,
            kind,
            pid,
            exit,
            detail,
        });
    }

    fn set(&self, f: impl FnOnce(&mut UnitStatus)) {
        self.status.send_modify(|st| {
            let before = st.state;
            f(st);
            if st.state != before {
                st.since_ms = now_unix_ms();
            }
        });
    }

    /// The runner's whole life. `start` says whether to run at once.
    pub async fn run(self, mut cmds: mpsc::Receiver<Cmd>, start: bool) {
        let s = &self.spec;
        let mut backoff = Backoff::new(
            s.restart_sec,
            s.restart_max_delay,
            s.restart_reset,
            s.start_limit_burst,
            s.start_limit_interval,
        );
        let mut want = start;
        // `start_idle_sec` is counted from the runner's creation (the boot,
        // for the units in the config), so only the first start can wait.
        let idle_until = s.start_idle.map(|cap| Instant::now() + cap);
        loop {
            if !want {
                match cmds.recv().await {
                    Some(Cmd::Start) | Some(Cmd::Restart(None)) => {
                        backoff.reset();
                        want = true;
                    }
                    Some(Cmd::Restart(Some(reply))) => {
                        backoff.reset();
                        want = true;
                        let _ = reply.send(());
                    }
                    Some(Cmd::Stop(reply)) => {
                        let _ = reply.send(());
                    }
                    None => return,
                }
                continue;
            }
            match self.run_once(&mut cmds, &mut backoff, idle_until).await {
                Outcome::Stopped {
                    then: After::StayStopped,
                } => {
                    self.set(|st| st.state = UnitState::Inactive);
                    want = false;
                }
                Outcome::Stopped {
                    then: After::StartAgain,
                } => backoff.reset(),
                Outcome::Skipped { reason } => {
                    self.emit(EventKind::Skipped, None, None, Some(reason.clone()));
                    self.set(|st| {
                        st.state = UnitState::Skipped;
                        st.message = Some(reason);
                    });
                    want = false;
                }
                Outcome::Died {
                    exit,
                    uptime,
                    reason,
                } => {
                    let clean = exit.map(|e| e.success()).unwrap_or(false);
                    use crate::config::RestartPolicy::*;
                    let restart = match s.restart {
                        Always => true,
                        OnFailure => !clean,
                        Never => false,
                    };
                    if !restart {
                        self.set(|st| {
                            st.state = if clean {
                                UnitState::Exited
                            } else {
                                UnitState::Failed
                            };
                            st.message = Some(reason.clone());
                        });
                        if !clean {
                            self.emit(
                                EventKind::Failed,
                                None,
                                exit,
                                Some(format!("{reason}; restart={:?}", s.restart)),
                            );
                        }
                        want = false;
                        continue;
                    }
                    match backoff.on_exit(Instant::now(), uptime) {
                        None => {
                            let why = format!(
                                "start limit hit: {} starts within {:?}; giving up (last: {reason}). `applianced start` retries",
                                s.start_limit_burst, s.start_limit_interval
                            );
                            self.emit(EventKind::Failed, None, exit, Some(why.clone()));
                            self.set(|st| {
                                st.state = UnitState::Failed;
                                st.message = Some(why);
                            });
                            want = false;
                        }
                        Some(delay) => {
                            self.emit(
                                EventKind::Restart,
                                None,
                                None,
                                Some(format!("in {:.1}s after {reason}", delay.as_secs_f64())),
                            );
                            self.set(|st| {
                                st.state = UnitState::Backoff;
                                st.restarts += 1;
                                st.message = Some(format!(
                                    "restarting in {:.1}s: {reason}",
                                    delay.as_secs_f64()
                                ));
                            });
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                cmd = cmds.recv() => match cmd {
                                    Some(Cmd::Stop(reply)) => {
                                        self.set(|st| st.state = UnitState::Inactive);
                                        want = false;
                                        let _ = reply.send(());
                                    }
                                    Some(Cmd::Restart(reply)) => {
                                        backoff.reset();
                                        if let Some(r) = reply { let _ = r.send(()); }
                                    }
                                    Some(Cmd::Start) => backoff.reset(),
                                    None => return,
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Wait for dependencies, prepare, spawn, wait for readiness, supervise.
    async fn run_once(
        &self,
        cmds: &mut mpsc::Receiver<Cmd>,
        backoff: &mut Backoff,
        idle_until: Option<Instant>,
    ) -> Outcome {
        // 1. Dependencies (with `start_early`, only those in `after`: the
        // required ones are waited for once the probe passes, below), and
        // the idle gate for a `start_idle_sec` unit, up to its cap.
        let idle_held = || idle_until.is_some_and(|t| Instant::now() < t && !self.idle.is_open());
        let was_idle_held = idle_held();
        if !self.unmet(true).is_empty() || was_idle_held {
            let mut waiting = self.unmet(true);
            if was_idle_held {
                waiting.push("the other units to come up (start_idle_sec)");
            }
            self.set(|st| {
                st.state = UnitState::Waiting;
                st.message = Some(format!("waiting for {}", waiting.join(", ")));
            });
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(hold::POLL) => {
                        if self.unmet(true).is_empty() && !idle_held() { break; }
                    }
                    cmd = cmds.recv() => match cmd {
                        Some(Cmd::Stop(reply)) => { let _ = reply.send(()); return Outcome::Stopped { then: After::StayStopped }; }
                        Some(Cmd::Restart(reply)) => { if let Some(r) = reply { let _ = r.send(()); } }
                        Some(Cmd::Start) => {}
                        None => return Outcome::Stopped { then: After::StayStopped },
                    }
                }
            }
            if was_idle_held && !self.idle.is_open() {
                let cap = self.spec.start_idle.unwrap_or_default().as_secs_f64();
                self.log.write(
                    self.replica_label(),
                    "applianced",
                    format!(
                        "starting after start_idle_sec = {cap}: other units are still coming up"
                    ),
                );
            }
        }
        if let Some(reason) = self.condition_unmet() {
            return Outcome::Skipped { reason };
        }
        self.set(|st| {
            st.state = UnitState::Starting;
            st.message = None;
        });
        // 2. Prepare: render configs, state dirs, pre-start commands.
        let started = Instant::now();
        backoff.note_start(started);
        let (rendered, command) = match self.prepare().await {
            Ok(x) => x,
            Err(reason) => {
                self.emit(
                    EventKind::Exit,
                    None,
                    None,
                    Some(format!("start failed: {reason}")),
                );
                return Outcome::Died {
                    exit: None,
                    uptime: Duration::ZERO,
                    reason,
                };
            }
        };
        let notify = match &rendered.readiness {
            crate::config::Readiness::Notify => {
                let path = self
                    .layout
                    .instance_run_dir(&self.instance.name)
                    .join(format!("notify-{}-{}.sock", self.spec.name, self.replica));
                match NotifySocket::bind(&path, command.identity) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        return Outcome::Died {
                            exit: None,
                            uptime: Duration::ZERO,
                            reason: format!("notify socket {}: {e}", path.display()),
                        };
                    }
                }
            }
            _ => None,
        };
        let mut command = command;
        if let Some(n) = &notify {
            command
                .env
                .insert("NOTIFY_SOCKET".into(), n.path().display().to_string());
        }
        // 3. Spawn.
        let mut child = match self.launcher.spawn(command.clone()).await {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot execute {}: {e}", command.program.display());
                self.emit(EventKind::Exit, None, None, Some(reason.clone()));
                return Outcome::Died {
                    exit: None,
                    uptime: Duration::ZERO,
                    reason,
                };
            }
        };
        let pid = child.pid;
        scan::record_group(
            self.layout.data_dir(),
            &self.instance.name,
            &self.spec.name,
            self.replica,
            pid,
        );
        let label = self.replica_label();
        let mut pipes = Vec::new();
        if let Some(fd) = child.stdout.take() {
            pipes.push(self.log.capture(fd, label, "stdout"));
        }
        if let Some(fd) = child.stderr.take() {
            pipes.push(self.log.capture(fd, label, "stderr"));
        }
        self.emit(EventKind::Start, Some(pid), None, None);
        self.set(|st| {
            st.pid = Some(pid);
            st.started_ms = Some(now_unix_ms());
            st.ready = false;
        });
        // 4. Readiness.
        let probe_env = ProbeEnv {
            launcher: self.launcher.clone(),
            template: command.clone(),
        };
        // The probe is bounded by timeout_start; a `start_early` unit then
        // waits, unbounded, for what it requires (a MariaDB recovering for
        // minutes is not this unit's failure); the warm-up comes last, so it
        // runs against ready backends. An early page (`warm_up_early`, one
        // that reads no backend) comes before the wait.
        let notify_state = notify.as_ref().map(|n| n.state());
        let ready = async {
            readiness::wait_ready(
                &rendered.readiness,
                &probe_env,
                notify_state,
                self.spec.timeout_start,
            )
            .await?;
            let up = started.elapsed();
            let mut notes = Vec::new();
            // An early warm-up (its page reads no backend) overlaps
            // MariaDB's start rather than following it.
            notes.extend(readiness::warm_up(&rendered.readiness, true).await);
            let unmet = self.unmet(false);
            if !unmet.is_empty() {
                let waited = unmet.join(", ");
                let verb = if unmet.len() == 1 { "is" } else { "are" };
                self.set(|st| st.message = Some(format!("up; ready once {waited} {verb}")));
                while !self.unmet(false).is_empty() {
                    tokio::time::sleep(hold::POLL).await;
                }
                self.set(|st| st.message = None);
                let up = format!("up after {} ms", up.as_millis());
                if notes.is_empty() {
                    notes.push(format!("{up}, then waited for {waited}"));
                } else {
                    // "up after N ms; warmed the app: ...; then waited for X"
                    notes.insert(0, up);
                    notes.push(format!("then waited for {waited}"));
                }
            }
            notes.extend(readiness::warm_up(&rendered.readiness, false).await);
            Ok::<_, String>((!notes.is_empty()).then(|| notes.join("; ")))
        };
        tokio::pin!(ready);
        let mut is_ready = false;
        let outcome = loop {
            tokio::select! {
                r = &mut ready, if !is_ready => match r {
                    Ok(note) => {
                        is_ready = true;
                        let mut detail = format!("after {} ms", started.elapsed().as_millis());
                        if let Some(note) = note {
                            detail = format!("{detail} ({note})");
                        }
                        self.emit(EventKind::Ready, Some(pid), None, Some(detail));
                        self.set(|st| { st.state = UnitState::Running; st.ready = true; });
                    }
                    Err(reason) => {
                        let exit = self.stop_child(&mut child, pid, &reason).await;
                        break Outcome::Died { exit, uptime: Duration::ZERO, reason };
                    }
                },
                status = &mut child.exit => {
                    let exit = status.ok();
                    let reason = match exit { Some(e) => e.describe(), None => "lost".into() };
                    self.emit(EventKind::Exit, Some(pid), exit, (!is_ready).then(|| "before it was ready".to_string()));
                    self.kill_leftovers(pid);
                    let uptime = if is_ready { started.elapsed() } else { Duration::ZERO };
                    break Outcome::Died { exit, uptime, reason };
                }
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Start) => {}
                    Some(Cmd::Stop(reply)) => {
                        self.stop_child(&mut child, pid, "stop requested").await;
                        let _ = reply.send(());
                        break Outcome::Stopped { then: After::StayStopped };
                    }
                    Some(Cmd::Restart(reply)) => {
                        self.stop_child(&mut child, pid, "restart requested").await;
                        if let Some(r) = reply { let _ = r.send(()); }
                        break Outcome::Stopped { then: After::StartAgain };
                    }
                    None => {
                        self.stop_child(&mut child, pid, "supervisor gone").await;
                        break Outcome::Stopped { then: After::StayStopped };
                    }
                },
            }
        };
        drop(notify);
        scan::forget_group(
            self.layout.data_dir(),
            &self.instance.name,
            &self.spec.name,
            self.replica,
        );
        self.set(|st| {
            st.pid = None;
            st.ready = false;
        });
        // Output already written stays; don't wait on pipes a leftover might hold.
        for p in pipes {
            let _ = tokio::time::timeout(Duration::from_millis(200), p).await;
        }
        if let Outcome::Died { exit, .. } = &outcome {
            let exit = *exit;
            self.set(|st| st.last_exit = exit.map(|e| e.describe()));
        }
        outcome
    }

    /// systemd's KillMode=mixed: `kill_signal` to the main process, SIGKILL to the
    /// group after `timeout_stop` (never, with `send_sigkill = false`), then
    /// anything left in the group is killed.
    async fn stop_child(&self, child: &mut Child, pid: i32, why: &str) -> Option<ExitStatus> {
        self.emit(EventKind::Stop, Some(pid), None, Some(why.to_string()));
        self.set(|st| st.state = UnitState::Stopping);
        process::signal_pid(pid, self.spec.kill_signal);
        let exit = match tokio::time::timeout(self.spec.timeout_stop, &mut child.exit).await {
            Ok(r) => r.ok(),
            Err(_) if self.spec.send_sigkill => {
                self.log.write(
                    self.replica_label(),
                    "applianced",
                    format!(
                        "still running after {:?}: SIGKILL to the process group",
                        self.spec.timeout_stop
                    ),
                );
                process::signal_group(pid, Signal::SIGKILL);
                (&mut child.exit).await.ok()
            }
            Err(_) => {
                self.log.write(self.replica_label(), "applianced", format!("still stopping after {:?}; send_sigkill = false, so waiting as long as it takes", self.spec.timeout_stop));
                (&mut child.exit).await.ok()
            }
        };
        self.kill_leftovers(pid);
        self.emit(EventKind::Stopped, Some(pid), exit, None);
        exit
    }

    /// The main process is gone; nothing else of its group may outlive it.
    fn kill_leftovers(&self, pgid: i32) {
        if process::group_alive(pgid) {
            let sig = if self.spec.send_sigkill {
                Signal::SIGKILL
            } else {
                self.spec.kill_signal
            };
            process::signal_group(pgid, sig);
        }
    }
}
