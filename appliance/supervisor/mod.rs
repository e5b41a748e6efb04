//! The supervisor: runs every instance's units per the plan, in dependency order,
//! restarts them per policy, and stops them in reverse order.
//!
//! Each replica is one `runner::Runner` task. The [`Appliance`] holds their
//! command channels and status feeds; it never touches processes itself.

pub mod backoff;
mod cleanup;
mod hold;
mod instance;
mod instances;
mod runner;

pub use cleanup::cleanup_leftovers;
pub use instances::{AddError, InstanceSummary, InstanceUsage};

use crate::layout::Layout;
use crate::logs::LogHub;
use crate::plan::Plan;
use crate::process::Launcher;
use crate::provision::{self, ProvisionError, Provisioned};
use crate::state::StateDb;
use instance::{Deps, InstanceRt, Replica, UnitRt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use tokio::sync::{oneshot, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitState {
    /// Not running, and not meant to be (stopped, or never started).
    Inactive,
    /// Waiting for the units it requires (or follows) to be ready.
    Waiting,
    /// Spawned; readiness probe not yet passed.
    Starting,
    /// Up and ready.
    Running,
    Stopping,
    /// Crashed; a restart is scheduled.
    Backoff,
    /// Gave up (start limit, or a failure with restart = never).
    Failed,
    /// Finished successfully and is not restarted.
    Exited,
    /// Not started: its `condition_path_exists` does not exist (systemd's
    /// condition check). Counts as settled, like `exited`.
    Skipped,
}

impl UnitState {
    /// Up, or done with nothing left to do: what `requires` waits for.
    pub fn is_settled_up(&self) -> bool {
        matches!(
            self,
            UnitState::Running | UnitState::Exited | UnitState::Skipped
        )
    }

    /// On its way up: waiting for dependencies, started but not yet ready,
    /// or between a crash and its restart. What `after` waits out, and what
    /// the front end holds PHP requests for.
    pub fn is_coming_up(&self) -> bool {
        matches!(
            self,
            UnitState::Waiting | UnitState::Starting | UnitState::Backoff
        )
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            UnitState::Inactive => "inactive",
            UnitState::Waiting => "waiting",
            UnitState::Starting => "starting",
            UnitState::Running => "running",
            UnitState::Stopping => "stopping",
            UnitState::Backoff => "backoff",
            UnitState::Failed => "failed",
            UnitState::Exited => "exited",
            UnitState::Skipped => "skipped",
        }
    }
}

/// One replica's status, as `applianced status --json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub instance: String,
    pub unit: String,
    pub replica: u32,
    pub state: UnitState,
    pub pid: Option<i32>,
    /// When the current process started (unix ms).
    pub started_ms: Option<i64>,
    /// When the state last changed (unix ms).
    pub since_ms: i64,
    pub ready: bool,
    /// Automatic restarts since applianced started.
    pub restarts: u32,
    /// How the previous process ended, e.g. `signal SIGKILL`.
    pub last_exit: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug)]
pub enum Cmd {
    Start,
    Stop(oneshot::Sender<()>),
    Restart(Option<oneshot::Sender<()>>),
}

/// What an operator can ask of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepKind {
    Requires,
    After,
}

/// A name the operator typed that does not exist.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("unknown instance `{name}`; instances: {known}")]
    UnknownInstance { name: String, known: String },
    #[error("instance `{instance}` has no unit `{unit}`; units: {known}")]
    UnknownUnit {
        instance: String,
        unit: String,
        known: String,
    },
    #[error("`{0}` is not INSTANCE/UNIT")]
    Malformed(String),
    #[error(
        "the `system` instance runs the machine's own units (sshd, the network): stop them one at a time with `applianced stop system/UNIT`, or use `applianced poweroff`"
    )]
    SystemInstance,
}

/// A unit of a snapshot of an instance (keeps the instance alive while used).
struct UnitRef {
    inst: Arc<InstanceRt>,
    idx: usize,
}

impl std::ops::Deref for UnitRef {
    type Target = UnitRt;
    fn deref(&self) -> &UnitRt {
        &self.inst.units[self.idx]
    }
}

/// The most replicas one unit may have (the same bound as `replicas` in config).
pub const MAX_REPLICAS: u32 = 256;

/// Why a `scale` was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ScaleError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{0} replicas is out of range 1..={MAX_REPLICAS}")]
    OutOfRange(u32),
}

/// What `applianced exec` needs to run a command like the app does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    /// The instance's `exec` cgroup leaf, which the command joins before it runs.
    #[serde(default)]
    pub cgroup: Option<std::path::PathBuf>,
    /// The instance's private `/tmp`, when it has one.
    #[serde(default)]
    pub private_tmp: Option<std::path::PathBuf>,
}

pub struct Appliance {
    layout: Layout,
    /// App instances in plan order (added ones at the end), then `system`.
    /// Changed only by `instance add|remove`; readers take a snapshot.
    instances: RwLock<Vec<Arc<InstanceRt>>>,
    deps: Deps,
    /// Per instance: the last CPU sample (when, usage_usec) and the rate
    /// since the one before, for `status` (see [`Appliance::sample_cpu`]).
    cpu: std::sync::Mutex<BTreeMap<String, CpuSample>>,
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: std::time::Instant,
    usec: u64,
    percent: Option<f64>,
}

impl Appliance {
    /// Provision every instance and start all its units. Returns at once; units
    /// come up in the background in dependency order.
    pub async fn boot(
        plan: &Plan,
        launcher: &Launcher,
        state: &StateDb,
        logs: &Arc<LogHub>,
        cgroups: Option<&crate::cgroup::CgroupRoot>,
    ) -> Result<Appliance, ProvisionError> {
        let (open_idle, idle) = hold::IdleGate::new();
        let deps = Deps {
            layout: plan.layout.clone(),
            launcher: launcher.clone(),
            state: state.clone(),
            logs: logs.clone(),
            cgroups: cgroups.cloned(),
            idle,
        };
        let mut instances = Vec::new();
        for inst in plan.all_instances() {
            instances.push(Arc::new(instance::start(&deps, inst).await?));
        }
        // The gate for `start_idle_sec` units: every other unit started here.
        let others = instances
            .iter()
            .flat_map(|i| i.units.iter())
            .filter(|u| u.spec.start_idle.is_none())
            .flat_map(|u| u.replicas().into_iter().map(|r| r.status))
            .collect();
        tokio::spawn(hold::open_when_up(others, open_idle));
        Ok(Appliance {
            layout: plan.layout.clone(),
            instances: RwLock::new(instances),
            deps,
            cpu: Default::default(),
        })
    }

    /// `Ok` when an instance of that name runs.
    pub fn check_instance(&self, name: &str) -> Result<(), TargetError> {
        self.instance(name).map(|_| ())
    }

    /// A snapshot of the instances (cheap: `Arc` clones).
    fn list(&self) -> Vec<Arc<InstanceRt>> {
        self.instances
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Every replica of every unit, in instance and dependency order.
    pub fn status(&self) -> Vec<UnitStatus> {
        self.list()
            .iter()
            .flat_map(|i| i.units.iter())
            .flat_map(|u| u.replicas().into_iter().map(|r| r.status.borrow().clone()))
            .collect()
    }

    /// A feed that is `true` while replica 0 of `INSTANCE/UNIT` is on its way
    /// up ([`UnitState::is_coming_up`]) and follows it; closed once the
    /// unit's runner is gone (its instance removed). `None` when there is no
    /// such unit. The front end holds PHP requests on it.
    pub fn starting_feed(&self, instance: &str, unit: &str) -> Option<watch::Receiver<bool>> {
        let mut status = self
            .unit(instance, unit)
            .ok()?
            .replicas()
            .first()?
            .status
            .clone();
        let (tx, rx) = watch::channel(status.borrow_and_update().state.is_coming_up());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = status.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let now = status.borrow_and_update().state.is_coming_up();
                        tx.send_if_modified(|was| std::mem::replace(was, now) != now);
                    }
                }
            }
        });
        Some(rx)
    }

    /// True when every unit that is meant to run is ready.
    pub fn all_ready(&self) -> bool {
        self.status().iter().all(|s| s.state.is_settled_up())
    }

    fn instance(&self, name: &str) -> Result<Arc<InstanceRt>, TargetError> {
        let list = self.list();
        list.iter()
            .find(|i| i.plan.name == name)
            .cloned()
            .ok_or_else(|| TargetError::UnknownInstance {
                name: name.into(),
                known: list
                    .iter()
                    .map(|i| i.plan.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Check an `INSTANCE/UNIT` target and split it.
    pub fn resolve<'a>(&self, target: &'a str) -> Result<(&'a str, &'a str), TargetError> {
        let (i, u) = target
            .split_once('/')
            .ok_or_else(|| TargetError::Malformed(target.into()))?;
        self.unit(i, u)?;
        Ok((i, u))
    }

    /// An operator's verb on `INSTANCE/UNIT`; returns what was done.
    pub async fn apply(&self, verb: Verb, target: &str) -> Result<&'static str, TargetError> {
        let (i, u) = self.resolve(target)?;
        match verb {
            Verb::Start => self.start_unit(i, u).await.map(|_| "started"),
            Verb::Stop => self.stop_unit(i, u).await.map(|_| "stopped"),
            Verb::Restart => self.restart_unit(i, u).await.map(|_| "restarted"),
        }
    }

    fn unit(&self, instance: &str, unit: &str) -> Result<UnitRef, TargetError> {
        let inst = self.instance(instance)?;
        match inst.units.iter().position(|u| u.spec.name == unit) {
            Some(idx) => Ok(UnitRef { inst, idx }),
            None => Err(TargetError::UnknownUnit {
                instance: instance.into(),
                unit: unit.into(),
                known: inst
                    .units
                    .iter()
                    .map(|x| x.spec.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Start a unit (and, implicitly, wait for what it requires). Clears `failed`.
    pub async fn start_unit(&self, instance: &str, unit: &str) -> Result<(), TargetError> {
        let inst = self.instance(instance)?;
        // Requirements first, transitively: a start must be able to succeed.
        for name in requirement_closure(&inst, unit) {
            for r in self.unit(instance, &name)?.replicas() {
                let _ = r.cmd.send(Cmd::Start).await;
            }
        }
        Ok(())
    }

    /// Stop a unit after every unit that requires it (systemd's Requires=).
    pub async fn stop_unit(&self, instance: &str, unit: &str) -> Result<(), TargetError> {
        let inst = self.instance(instance)?;
        self.unit(instance, unit)?;
        let dependents = dependent_closure(&inst, unit);
        for u in inst
            .units
            .iter()
            .rev()
            .filter(|u| dependents.contains(&u.spec.name) || u.spec.name == unit)
        {
            stop_replicas(u).await;
        }
        Ok(())
    }

    /// Restart a unit one replica at a time, each back to ready before the next,
    /// so a pool never drops to zero.
    pub async fn restart_unit(&self, instance: &str, unit: &str) -> Result<(), TargetError> {
        let u = self.unit(instance, unit)?;
        let _one_at_a_time = u.scaling.lock().await;
        for r in u.replicas() {
            let (tx, rx) = oneshot::channel();
            if r.cmd.send(Cmd::Restart(Some(tx))).await.is_ok() {
                let _ = rx.await;
                wait_settled(&r).await;
            }
        }
        Ok(())
    }

    /// Change the number of replicas of `INSTANCE/UNIT` at runtime. New
    /// replicas start at once; surplus ones (the highest numbers) stop like any
    /// stop (kill_signal, up to timeout_stop_sec for the job in flight), then
    /// go away. Not written to the config: a restart of applianced goes back
    /// to `replicas` there. Returns the previous count.
    pub async fn scale(&self, target: &str, count: u32) -> Result<u32, ScaleError> {
        if count == 0 || count > MAX_REPLICAS {
            return Err(ScaleError::OutOfRange(count));
        }
        let (i, name) = self.resolve(target)?;
        let u = self.unit(i, name)?;
        let _one_at_a_time = u.scaling.lock().await;
        let before = u.replicas().len() as u32;
        if count > before {
            let mut list = u.replicas.lock().unwrap_or_else(|p| p.into_inner());
            for r in before..count {
                let feed = watch::channel(initial_status(i, name, r));
                list.push((u.spawn)(r, feed));
            }
        } else if count < before {
            let surplus: Vec<Replica> = u.replicas()[count as usize..].to_vec();
            stop_all(&surplus).await;
            // Dropping the last command sender ends each surplus runner.
            u.replicas
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .truncate(count as usize);
        }
        tracing::info!(
            instance = i,
            unit = name,
            from = before,
            to = count,
            "scaled"
        );
        Ok(before)
    }

    /// Stop everything: app instances in parallel, each in reverse dependency
    /// order, then the `system` units (SSH and the network stay up until the
    /// apps are down).
    pub async fn shutdown(&self) {
        for system in [false, true] {
            let list = self.list();
            let stops = list
                .iter()
                .filter(|inst| inst.plan.system == system)
                .map(|inst| inst.stop_all());
            futures_util::future::join_all(stops).await;
        }
    }

    /// Remove every instance's (now empty) cgroup, after [`Self::shutdown`].
    pub fn remove_cgroups(&self) {
        for i in self.list() {
            if let Some(cg) = &i.provisioned.cgroup {
                cg.remove();
            }
        }
    }

    /// Why `instance`'s cron entries must not run now: units still coming up,
    /// or the instance stopped by an operator.
    pub fn not_running_reason(&self, instance: &str) -> Option<String> {
        let starting = self.units_coming_up(instance);
        if !starting.is_empty() {
            return Some(format!("units still starting: {}", starting.join(", ")));
        }
        let mine: Vec<UnitStatus> = self
            .status()
            .into_iter()
            .filter(|s| s.instance == instance)
            .collect();
        let stopped = !mine.is_empty() && mine.iter().all(|s| s.state == UnitState::Inactive);
        stopped.then(|| "instance stopped".to_string())
    }

    /// Names of every instance, `system` included, in plan order.
    pub fn instance_names(&self) -> Vec<String> {
        self.list().iter().map(|i| i.plan.name.clone()).collect()
    }

    /// The user, environment and directory `exec` runs a command with.
    pub fn exec_spec(&self, instance: &str) -> Result<ExecSpec, TargetError> {
        let inst = self.instance(instance)?;
        let id = inst.provisioned.effective_identity();
        let mut env = provision::base_env(&id, &inst.plan.name);
        env.extend(inst.provisioned.app_env.clone());
        let cgroup = inst
            .provisioned
            .cgroup_leaf(crate::cgroup::EXEC_LEAF, None)
            .unwrap_or_else(|e| {
                tracing::warn!(instance, error = %e, "exec runs outside the instance's cgroup");
                None
            });
        Ok(ExecSpec {
            user: id.user,
            uid: id.uid,
            gid: id.gid,
            cwd: inst.plan.app_dir.display().to_string(),
            env,
            cgroup,
            private_tmp: inst.provisioned.private_tmp.clone(),
        })
    }

    /// What provisioning gave an instance: identity, secrets, app environment.
    /// Units of `instance` still waiting for dependencies or starting (each
    /// named once), e.g. while it boots.
    pub fn units_coming_up(&self, instance: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .status()
            .into_iter()
            .filter(|s| {
                s.instance == instance
                    && matches!(s.state, UnitState::Waiting | UnitState::Starting)
            })
            .map(|s| s.unit)
            .collect();
        names.dedup();
        names
    }

    pub fn provisioned(&self, instance: &str) -> Option<Arc<Provisioned>> {
        self.instance(instance).ok().map(|i| i.provisioned.clone())
    }

    /// The log file of `INSTANCE/UNIT`, after checking it exists.
    pub fn unit_log(&self, instance: &str, unit: &str) -> Result<std::path::PathBuf, TargetError> {
        if crate::logs::is_pseudo_unit(unit) {
            self.instance(instance)?;
        } else {
            self.unit(instance, unit)?;
        }
        Ok(self.layout.unit_log(instance, unit))
    }
}

async fn stop_replicas(u: &UnitRt) {
    stop_all(&u.replicas()).await;
}

/// Stop these replicas concurrently and wait until each has stopped.
async fn stop_all(replicas: &[Replica]) {
    let waits = replicas.iter().map(|r| async move {
        let (tx, rx) = oneshot::channel();
        if r.cmd.send(Cmd::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    });
    futures_util::future::join_all(waits).await;
}

/// Wait until a replica is past starting: up, or down for good.
async fn wait_settled(r: &Replica) {
    let mut st = r.status.clone();
    let _ = st
        .wait_for(|s| {
            !matches!(
                s.state,
                UnitState::Waiting | UnitState::Starting | UnitState::Stopping
            )
        })
        .await;
}

fn initial_status(instance: &str, unit: &str, replica: u32) -> UnitStatus {
    UnitStatus {
        instance: instance.into(),
        unit: unit.into(),
        replica,
        state: UnitState::Waiting,
        pid: None,
        started_ms: None,
        since_ms: crate::state::now_unix_ms(),
        ready: false,
        restarts: 0,
        last_exit: None,
        message: None,
    }
}

/// `unit` and everything it requires, transitively, in dependency order.
fn requirement_closure(inst: &InstanceRt, unit: &str) -> Vec<String> {
    let mut need: BTreeSet<String> = BTreeSet::from([unit.to_string()]);
    for u in inst.units.iter().rev() {
        if need.contains(&u.spec.name) {
            need.extend(u.spec.requires.iter().cloned());
        }
    }
    inst.units
        .iter()
        .filter(|u| need.contains(&u.spec.name))
        .map(|u| u.spec.name.clone())
        .collect()
}

/// Every unit that requires `unit`, transitively.
fn dependent_closure(inst: &InstanceRt, unit: &str) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    // Units are in dependency order, so one forward pass sees requirements first.
    for u in &inst.units {
        if u.spec.requires.iter().any(|r| r == unit || out.contains(r)) {
            out.insert(u.spec.name.clone());
        }
    }
    out
}
