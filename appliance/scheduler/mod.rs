//! The cron scheduler: each instance's cron entries fire one-shot runs, as the
//! instance's user with its application environment, recorded in the state
//! database and logged under the pseudo-unit `cron`.
//!
//! - [`schedule`]: cron patterns and the next fire time (croner).
//! - [`spec`]: config -> checked entries, at plan time.
//! - `entry`: one task per entry: sleep to the next fire time, fire, repeat.
//! - `run`: one run: spawn, capture, timeout, record.
//!
//! It starts processes only through the [`Launcher`] (the single reaper), and
//! writes only through the state writer and the `cron` unit log.

mod entry;
mod run;
pub mod schedule;
pub mod spec;

use crate::config::OverlapPolicy;
use crate::layout::Layout;
use crate::logs::{self, LogHub};
use crate::plan::{Plan, TemplateCtx};
use crate::process::{Command, Identity, Launcher, scan};
use crate::provision::{self, Provisioned};
use crate::state::{CronRun, RunOutcome, RunQuery, StateDb, StateError};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use spec::CronSpec;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// After SIGTERM (timeout or shutdown), a run's process group gets this long
/// before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How many bytes of a run's output (stdout and stderr together) are kept in
/// the state database.
pub const TAIL_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("unknown instance `{name}`; instances: {known}")]
    UnknownInstance { name: String, known: String },
    #[error("instance `{instance}` has no cron entry `{entry}`; entries: {known}")]
    UnknownEntry {
        instance: String,
        entry: String,
        known: String,
    },
    #[error("the scheduler is stopping")]
    Stopping,
    #[error(transparent)]
    State(#[from] StateError),
}

/// What a fire (scheduled or manual) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum Fired {
    /// Run `run` started.
    Started { run: i64 },
    /// The previous run is still going (overlap = skip); `run` records the skip.
    Skipped { run: i64 },
}

/// One entry as the scheduler runs it.
pub(crate) struct EntryRt {
    pub instance: String,
    pub spec: CronSpec,
    /// The command every run starts (a copy per run), or why none can start.
    pub command: Result<Command, String>,
    pub launcher: Launcher,
    pub state: StateDb,
    pub log: logs::UnitLog,
    /// Runs of this entry still going (the overlap guard).
    pub in_flight: AtomicUsize,
    /// Why runs must wait now (the instance's units still starting), if so.
    pub hold: Hold,
    /// Ended runs since applianced started, for `/metrics`.
    pub stats: EntryStats,
}

/// An entry's ended runs since applianced started: counters only go up, so
/// Prometheus can take rates (the state database prunes old runs).
#[derive(Debug, Default)]
pub(crate) struct EntryStats {
    runs: std::sync::atomic::AtomicU64,
    /// Failed, timed out or lost (not skipped or stopped by a shutdown).
    failures: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
    last_success_unix_ms: std::sync::atomic::AtomicI64,
}

/// One entry's counters, as `/metrics` reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryCounts {
    pub instance: String,
    pub entry: String,
    pub runs: u64,
    pub failures: u64,
    pub skipped: u64,
    /// `None`: no run succeeded since applianced started.
    pub last_success_unix_ms: Option<i64>,
    /// Runs going now.
    pub running: usize,
}

impl EntryRt {
    /// Record an ended (or skipped) run: counted, then written to the state db.
    pub(super) fn finish(&self, run: crate::state::CronRun) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        match run.outcome {
            RunOutcome::Skipped => {
                s.skipped.fetch_add(1, Relaxed);
            }
            RunOutcome::Ok => {
                s.runs.fetch_add(1, Relaxed);
                s.last_success_unix_ms
                    .fetch_max(run.ended_unix_ms.unwrap_or_default(), Relaxed);
            }
            RunOutcome::Stopped | RunOutcome::Running => {
                s.runs.fetch_add(1, Relaxed);
            }
            RunOutcome::Failed | RunOutcome::Timeout | RunOutcome::Lost => {
                s.runs.fetch_add(1, Relaxed);
                s.failures.fetch_add(1, Relaxed);
            }
        }
        self.state.record_run(run);
    }

    fn counts(&self) -> EntryCounts {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        let last = s.last_success_unix_ms.load(Relaxed);
        EntryCounts {
            instance: self.instance.clone(),
            entry: self.spec.name.clone(),
            runs: s.runs.load(Relaxed),
            failures: s.failures.load(Relaxed),
            skipped: s.skipped.load(Relaxed),
            last_success_unix_ms: (last > 0).then_some(last),
            running: self.in_flight.load(Relaxed),
        }
    }
}

/// Asked at every fire: `Some(reason)` skips it. The daemon passes "units of
/// this instance still waiting or starting".
pub type Hold = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Clone)]
struct EntryHandle {
    rt: Arc<EntryRt>,
    manual: mpsc::Sender<oneshot::Sender<Fired>>,
}

/// What every entry is built with, kept so instances added at runtime get
/// entries too.
struct Base {
    layout: Layout,
    launcher: Launcher,
    state: StateDb,
    hub: Arc<LogHub>,
}

/// The running scheduler.
pub struct Scheduler {
    base: Base,
    /// Instances known, with entries or not; changed by `instance add|remove`.
    instances: RwLock<Vec<String>>,
    entries: RwLock<Vec<EntryHandle>>,
    /// Per instance: ends its entries' tasks (and their runs, like a stop).
    stops: Mutex<BTreeMap<String, watch::Sender<bool>>>,
    /// Every entry task and run task holds a clone; `stop` waits for all to drop.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    done: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl Scheduler {
    /// Start one task per entry of every instance. `provisioned(NAME)` gives
    /// each instance's identity and application environment; `hold(NAME)` the
    /// check that holds its fires while its units come up.
    pub fn start(
        plan: &Plan,
        provisioned: &dyn Fn(&str) -> Option<Arc<Provisioned>>,
        hold: &dyn Fn(&str) -> Hold,
        launcher: &Launcher,
        state: &StateDb,
        hub: &Arc<LogHub>,
    ) -> std::io::Result<Scheduler> {
        let (alive, done) = mpsc::channel::<()>(1);
        let me = Scheduler {
            base: Base {
                layout: plan.layout.clone(),
                launcher: launcher.clone(),
                state: state.clone(),
                hub: hub.clone(),
            },
            instances: RwLock::default(),
            entries: RwLock::default(),
            stops: Mutex::default(),
            alive: Mutex::new(Some(alive)),
            done: tokio::sync::Mutex::new(done),
        };
        for inst in &plan.instances {
            match provisioned(&inst.name) {
                Some(prov) => me.add_instance(inst, &prov, hold(&inst.name))?,
                None => write(&me.instances).push(inst.name.clone()),
            }
        }
        Ok(me)
    }

    /// Start the entries of `inst` (at boot, and for `instance add`).
    pub fn add_instance(
        &self,
        inst: &crate::plan::InstancePlan,
        prov: &Provisioned,
        hold: Hold,
    ) -> std::io::Result<()> {
        let Some(alive) = self.alive.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(()); // stopping
        };
        let (stop, stop_rx) = watch::channel(false);
        let base = &self.base;
        let mut added = Vec::new();
        if !inst.cron.is_empty() {
            let log = base.hub.unit_sink(
                &base.layout.unit_log(&inst.name, logs::CRON_UNIT),
                &inst.name,
                logs::CRON_UNIT,
            )?;
            for spec in &inst.cron {
                let ctx =
                    TemplateCtx::new(&base.layout, inst, logs::CRON_UNIT, 0, prov.secrets.clone());
                let command = command_for(&base.layout, inst, prov, spec, &ctx);
                if let Err(e) = &command {
                    tracing::error!(instance = %inst.name, entry = %spec.name, error = %e, "cron entry cannot run");
                }
                let rt = Arc::new(EntryRt {
                    instance: inst.name.clone(),
                    spec: spec.clone(),
                    command,
                    launcher: base.launcher.clone(),
                    state: base.state.clone(),
                    log: log.clone(),
                    in_flight: AtomicUsize::new(0),
                    hold: hold.clone(),
                    stats: EntryStats::default(),
                });
                let (manual, manual_rx) = mpsc::channel(4);
                tracing::info!(instance = %inst.name, entry = %spec.name, schedule = %spec.schedule.as_str(), "cron entry scheduled");
                tokio::spawn(entry::run_entry(
                    rt.clone(),
                    stop_rx.clone(),
                    manual_rx,
                    alive.clone(),
                ));
                added.push(EntryHandle { rt, manual });
            }
        }
        write(&self.entries).extend(added);
        write(&self.instances).push(inst.name.clone());
        self.stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(inst.name.clone(), stop);
        Ok(())
    }

    /// End `instance`'s entries (`instance remove`): no more fires, and runs
    /// in flight get SIGTERM then SIGKILL like at shutdown.
    pub fn remove_instance(&self, instance: &str) {
        if let Some(stop) = self
            .stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(instance)
        {
            let _ = stop.send(true);
        }
        write(&self.entries).retain(|e| e.rt.instance != instance);
        write(&self.instances).retain(|i| i != instance);
    }

    /// No new runs; in-flight runs get SIGTERM, then SIGKILL after
    /// [`KILL_GRACE`], and are recorded `stopped`. Returns when all have ended.
    pub async fn stop(&self) {
        for stop in self
            .stops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = stop.send(true);
        }
        self.alive.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut done = self.done.lock().await;
        while done.recv().await.is_some() {}
    }

    /// Start a run of `instance`'s `entry` now (the overlap policy holds).
    pub async fn trigger(&self, instance: &str, entry: &str) -> Result<Fired, SchedulerError> {
        let e = self.entry(instance, entry)?;
        let (tx, rx) = oneshot::channel();
        e.manual
            .send(tx)
            .await
            .map_err(|_| SchedulerError::Stopping)?;
        rx.await.map_err(|_| SchedulerError::Stopping)
    }

    /// Every entry's run counters since applianced started (`/metrics`).
    pub fn entry_counts(&self) -> Vec<EntryCounts> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|h| h.rt.counts())
            .collect()
    }

    /// Recent runs, oldest first, after checking the names exist.
    pub async fn runs(&self, q: RunQuery) -> Result<Vec<CronRun>, SchedulerError> {
        if let Some(i) = &q.instance {
            self.check_instance(i)?;
            if let Some(e) = &q.entry {
                // A removed entry's history is still worth showing, so only
                // refuse names that neither exist nor ever ran.
                if self.entry(i, e).is_err() {
                    let state = self.base.state.clone();
                    let probe = RunQuery {
                        limit: 1,
                        ..q.clone()
                    };
                    let any = tokio::task::spawn_blocking(move || state.cron_runs(&probe))
                        .await
                        .map_err(|_| SchedulerError::Stopping)??;
                    if any.is_empty() {
                        self.entry(i, e)?;
                    }
                }
            }
        }
        let state = self.base.state.clone();
        Ok(tokio::task::spawn_blocking(move || state.cron_runs(&q))
            .await
            .map_err(|_| SchedulerError::Stopping)??)
    }

    fn check_instance(&self, name: &str) -> Result<(), SchedulerError> {
        let known = read(&self.instances);
        if known.iter().any(|i| i == name) {
            return Ok(());
        }
        Err(SchedulerError::UnknownInstance {
            name: name.into(),
            known: known.join(", "),
        })
    }

    fn entry(&self, instance: &str, entry: &str) -> Result<EntryHandle, SchedulerError> {
        self.check_instance(instance)?;
        let entries = read(&self.entries);
        let mine = || entries.iter().filter(|e| e.rt.instance == instance);
        mine()
            .find(|e| e.rt.spec.name == entry)
            .cloned()
            .ok_or_else(|| SchedulerError::UnknownEntry {
                instance: instance.into(),
                entry: entry.into(),
                known: {
                    let names: Vec<&str> = mine().map(|e| e.rt.spec.name.as_str()).collect();
                    if names.is_empty() {
                        "(none)".into()
                    } else {
                        names.join(", ")
                    }
                },
            })
    }
}

/// The command a run of `spec` starts: rendered, as its user, with the app's
/// environment, in the app dir, output captured.
fn command_for(
    layout: &Layout,
    inst: &crate::plan::InstancePlan,
    prov: &Provisioned,
    spec: &CronSpec,
    ctx: &TemplateCtx,
) -> Result<Command, String> {
    let rendered = spec
        .render(ctx)
        .map_err(|e| format!("{}: {}", e.field, e.problem))?;
    let identity = match &spec.user {
        None => prov.effective_identity(),
        Some(u) => {
            let id = Identity::lookup(u, None)?;
            let me = nix::unistd::geteuid().as_raw();
            if id.uid != me && me != 0 {
                return Err(format!("running as `{u}` needs applianced to run as root"));
            }
            id
        }
    };
    let mut env = provision::base_env(&identity, &inst.name);
    env.extend(prov.app_env.clone());
    env.extend(rendered.environment);
    env.insert(
        scan::SCOPE_VAR.into(),
        scan::scope_value(layout.data_dir(), &inst.name, logs::CRON_UNIT),
    );
    env.insert("APPLIANCE_CRON_ENTRY".into(), spec.name.clone());
    let me = nix::unistd::geteuid().as_raw();
    Ok(Command {
        program: rendered.program,
        args: rendered.args,
        env,
        cwd: Some(
            rendered
                .working_directory
                .unwrap_or_else(|| inst.app_dir.clone()),
        ),
        identity: (me == 0).then_some((identity.uid, identity.gid)),
        capture: true,
        pdeathsig: Some(Signal::SIGTERM),
        nice: 0,
        cgroup: prov.cgroup_leaf(crate::cgroup::CRON_LEAF, None)?,
        private_tmp: prov.private_tmp.clone(),
        stdin: None,
    })
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// `overlap = skip` with a run going: the fire is skipped.
pub(crate) fn must_skip(e: &EntryRt) -> bool {
    e.spec.overlap == OverlapPolicy::Skip
        && e.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0
}
