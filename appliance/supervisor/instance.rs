//! One instance's runtime: its provisioned identity and, per unit, the
//! replicas' runner tasks (command channels and status feeds). Built when the
//! appliance boots and when `instance add` adds one while it runs; it holds
//! no processes itself (the runners do, through the launcher).

use super::hold::{Dep, IdleGate};
use super::{Cmd, DepKind, UnitStatus, initial_status, runner};
use crate::layout::Layout;
use crate::logs::LogHub;
use crate::plan::{InstancePlan, UnitSpec};
use crate::process::Launcher;
use crate::provision::{self, ProvisionError, Provisioned};
use crate::state::StateDb;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// What every instance's runners are built with, kept by the appliance so
/// instances can be added after boot.
#[derive(Clone)]
pub(super) struct Deps {
    pub(super) layout: Layout,
    pub(super) launcher: Launcher,
    pub(super) state: StateDb,
    pub(super) logs: Arc<LogHub>,
    pub(super) cgroups: Option<crate::cgroup::CgroupRoot>,
    pub(super) idle: IdleGate,
}

/// Both ends of one replica's status channel.
pub(super) type StatusFeed = (watch::Sender<UnitStatus>, watch::Receiver<UnitStatus>);

#[derive(Clone)]
pub(super) struct Replica {
    pub(super) cmd: mpsc::Sender<Cmd>,
    pub(super) status: watch::Receiver<UnitStatus>,
}

/// Makes one more replica of a unit: a runner task with everything fixed at
/// boot (dependencies' feeds included), started at once.
pub(super) type SpawnReplica = Box<dyn Fn(u32, StatusFeed) -> Replica + Send + Sync>;

pub(super) struct UnitRt {
    pub(super) spec: Arc<UnitSpec>,
    /// Replica `i` is at index `i`. Changed only by `scale`, under `scaling`.
    pub(super) replicas: std::sync::Mutex<Vec<Replica>>,
    pub(super) spawn: SpawnReplica,
    /// One `scale` or rolling restart of this unit at a time.
    pub(super) scaling: tokio::sync::Mutex<()>,
}

impl UnitRt {
    /// A snapshot of the current replicas (cheap clones of channel ends).
    pub(super) fn replicas(&self) -> Vec<Replica> {
        self.replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub(super) struct InstanceRt {
    pub(super) plan: Arc<InstancePlan>,
    pub(super) provisioned: Arc<Provisioned>,
    pub(super) units: Vec<UnitRt>,
}

impl InstanceRt {
    /// Stop every unit in reverse dependency order, then kill what is left
    /// in the instance's cgroup.
    pub(super) async fn stop_all(&self) {
        for u in self.units.iter().rev() {
            super::stop_replicas(u).await;
        }
        if let Some(cg) = &self.provisioned.cgroup {
            if cg.populated() {
                let left = cg.pids_recursive();
                tracing::warn!(instance = %self.plan.name, pids = ?left, "killing processes left in the instance's cgroup");
                if let Err(e) = cg.kill().await {
                    tracing::error!(instance = %self.plan.name, error = %e, "killing the instance's cgroup");
                }
            }
        }
    }
}

/// Provision `inst` and start all its units: runners come up in the
/// background in dependency order.
pub(super) async fn start(deps: &Deps, inst: &InstancePlan) -> Result<InstanceRt, ProvisionError> {
    let layout = &deps.layout;
    let provisioned =
        Arc::new(provision::provision(layout, inst, &deps.launcher, deps.cgroups.as_ref()).await?);
    let inst = Arc::new(inst.clone());
    // All status channels first, so every runner can watch its dependencies.
    let mut feeds: BTreeMap<String, Vec<StatusFeed>> = BTreeMap::new();
    for u in &inst.units {
        let v = (0..u.replicas)
            .map(|r| watch::channel(initial_status(&inst.name, &u.name, r)))
            .collect();
        feeds.insert(u.name.clone(), v);
    }
    let mut units = Vec::new();
    for u in &inst.units {
        let spec = Arc::new(u.clone());
        let log = deps
            .logs
            .unit_sink(&layout.unit_log(&inst.name, &u.name), &inst.name, &u.name)
            .map_err(|source| ProvisionError::Io {
                instance: inst.name.clone(),
                what: format!("log of {}", u.name),
                source,
            })?;
        let deps_of: Vec<Dep> = u
            .requires
            .iter()
            .map(|d| (d, DepKind::Requires))
            .chain(u.after.iter().map(|d| (d, DepKind::After)))
            .map(|(d, kind)| Dep {
                name: d.clone(),
                kind,
                replicas: feeds[d].iter().map(|(_, rx)| rx.clone()).collect(),
            })
            .collect();
        let idle = deps.idle.clone();
        let (layout, inst_c, prov, spec_c, launcher, state, log) = (
            layout.clone(),
            inst.clone(),
            provisioned.clone(),
            spec.clone(),
            deps.launcher.clone(),
            deps.state.clone(),
            log.clone(),
        );
        let spawn: SpawnReplica = Box::new(move |replica, (tx, rx)| {
            let (cmd_tx, cmd_rx) = mpsc::channel(16);
            let runner = runner::Runner {
                layout: layout.clone(),
                instance: inst_c.clone(),
                provisioned: prov.clone(),
                spec: spec_c.clone(),
                replica,
                launcher: launcher.clone(),
                state: state.clone(),
                log: log.clone(),
                deps: deps_of.clone(),
                idle: idle.clone(),
                status: tx,
            };
            tokio::spawn(runner.run(cmd_rx, true));
            Replica {
                cmd: cmd_tx,
                status: rx,
            }
        });
        let replicas = feeds[&u.name]
            .iter()
            .cloned()
            .enumerate()
            .map(|(r, feed)| spawn(r as u32, feed))
            .collect();
        units.push(UnitRt {
            spec,
            replicas: std::sync::Mutex::new(replicas),
            spawn,
            scaling: tokio::sync::Mutex::new(()),
        });
    }
    Ok(InstanceRt {
        plan: inst,
        provisioned,
        units,
    })
}
