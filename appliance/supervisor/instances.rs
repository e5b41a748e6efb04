//! Whole-instance operations of the [`Appliance`]: `instance add|remove`
//! while running, `instance stop|start`, and what `instance list` and
//! `status` show of each (usage read from its cgroup, CPU rate sampled).

use super::instance::{self, InstanceRt};
use super::{Appliance, Cmd, CpuSample, TargetError, UnitState, UnitStatus};
use crate::plan::InstancePlan;
use crate::provision::ProvisionError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One instance's resource use, whole and per unit (`/metrics`).
#[derive(Debug, Clone)]
pub struct InstanceUsage {
    pub instance: String,
    pub total: crate::cgroup::Usage,
    /// (unit, its replicas together).
    pub units: Vec<(String, crate::cgroup::Usage)>,
}

/// One instance as `applianced instance list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceSummary {
    pub name: String,
    pub system: bool,
    pub domains: Vec<String>,
    pub app_dir: String,
    pub user: String,
    /// Replicas of all units, and how many are up (running, exited or skipped).
    pub units: usize,
    pub units_up: usize,
    /// `running` (every unit up), `stopped` (none running) or `degraded`.
    pub state: String,
    pub cgroup: Option<String>,
    /// Configured limits this machine cannot apply.
    pub limits_not_enforced: Vec<String>,
    pub usage: Option<crate::cgroup::Usage>,
}

/// Why `instance add` could not add an instance to the running appliance.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("instance `{0}` is running already")]
    Exists(String),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

impl Appliance {
    /// `instance add`: provision `inst` (user, dirs, secrets, cgroup) and
    /// start its units, leaving every other instance alone. Refused when an
    /// instance of that name runs already.
    pub async fn add_instance(&self, inst: &InstancePlan) -> Result<(), AddError> {
        if self.instance(&inst.name).is_ok() {
            return Err(AddError::Exists(inst.name.clone()));
        }
        let rt = Arc::new(instance::start(&self.deps, inst).await?);
        let mut list = self.instances.write().unwrap_or_else(|p| p.into_inner());
        if list.iter().any(|i| i.plan.name == inst.name) {
            return Err(AddError::Exists(inst.name.clone()));
        }
        // App instances before `system`, which stops last at shutdown.
        let at = list
            .iter()
            .position(|i| i.plan.system)
            .unwrap_or(list.len());
        list.insert(at, rt);
        tracing::info!(instance = %inst.name, "instance added");
        Ok(())
    }

    /// `instance remove`: stop every unit (reverse order, each with its stop
    /// signal and timeout), kill what is left in the cgroup, remove the cgroup,
    /// and forget the instance. Returns its plan, for [`crate::retire`]. The
    /// `system` instance is refused.
    pub async fn remove_instance(&self, name: &str) -> Result<Arc<InstancePlan>, TargetError> {
        let inst = self.instance(name)?;
        if inst.plan.system {
            return Err(TargetError::SystemInstance);
        }
        inst.stop_all().await;
        if let Some(cg) = &inst.provisioned.cgroup {
            cg.remove();
        }
        self.instances
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|i| !Arc::ptr_eq(i, &inst));
        self.cpu
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        tracing::info!(instance = name, "instance removed");
        Ok(inst.plan.clone())
    }

    /// `applianced instance stop NAME`: every unit in reverse dependency
    /// order (each with its own stop signal and timeout), then whatever is
    /// left in the instance's cgroup (grandchildren that left their process
    /// group, `exec` commands) is killed. The instance's cron entries skip
    /// their fires while it is down (its units are not running).
    pub async fn stop_instance(&self, instance: &str) -> Result<(), TargetError> {
        let inst = self.instance(instance)?;
        if inst.plan.system {
            return Err(TargetError::SystemInstance);
        }
        inst.stop_all().await;
        Ok(())
    }

    /// Stop every unit of `instance` except those named in `keep`, in reverse
    /// dependency order: `instance remove` keeps MariaDB alone for the final
    /// backup, so nothing writes into the data after it was dumped.
    pub async fn stop_all_but(&self, instance: &str, keep: &[&str]) -> Result<(), TargetError> {
        let inst = self.instance(instance)?;
        for u in inst
            .units
            .iter()
            .rev()
            .filter(|u| !keep.contains(&u.spec.name.as_str()))
        {
            super::stop_replicas(u).await;
        }
        Ok(())
    }

    /// `applianced instance start NAME`: every unit, in dependency order.
    pub async fn start_instance(&self, instance: &str) -> Result<(), TargetError> {
        let inst = self.instance(instance)?;
        for u in &inst.units {
            for r in u.replicas() {
                let _ = r.cmd.send(Cmd::Start).await;
            }
        }
        Ok(())
    }

    /// Take a CPU sample of every instance's cgroup; the daemon calls this
    /// every few seconds so `status` can show a recent CPU rate.
    pub fn sample_cpu(&self) {
        let now = std::time::Instant::now();
        let mut map = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
        for i in self.list() {
            let Some(cg) = &i.provisioned.cgroup else {
                continue;
            };
            let usec = cg.usage().cpu_usec;
            let percent = map.get(&i.plan.name).and_then(|prev| {
                let wall = now.duration_since(prev.at).as_micros() as f64;
                (wall > 0.0).then(|| usec.saturating_sub(prev.usec) as f64 * 100.0 / wall)
            });
            map.insert(
                i.plan.name.clone(),
                CpuSample {
                    at: now,
                    usec,
                    percent,
                },
            );
        }
    }

    /// An instance's resource use, read from its cgroup now, with the CPU
    /// rate of the last sample.
    fn usage_of(&self, i: &InstanceRt) -> Option<crate::cgroup::Usage> {
        let mut u = i.provisioned.cgroup.as_ref()?.usage();
        u.cpu_percent = self
            .cpu
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&i.plan.name)
            .and_then(|s| s.percent);
        Some(u)
    }

    /// Resource use for `/metrics`: per instance (its whole cgroup) and per
    /// unit (its leaf, every replica together). Empty without cgroups.
    pub fn usage_tree(&self) -> Vec<InstanceUsage> {
        self.list()
            .iter()
            .filter_map(|i| {
                let cg = i.provisioned.cgroup.as_ref()?;
                let units = i
                    .units
                    .iter()
                    .filter_map(|u| Some((u.spec.name.clone(), cg.leaf_usage(&u.spec.name)?)))
                    .collect();
                Some(InstanceUsage {
                    instance: i.plan.name.clone(),
                    total: cg.usage(),
                    units,
                })
            })
            .collect()
    }

    /// What `applianced instance list` shows of each instance.
    pub fn instance_summaries(&self) -> Vec<InstanceSummary> {
        self.list()
            .iter()
            .map(|i| {
                let status: Vec<UnitStatus> = i
                    .units
                    .iter()
                    .flat_map(|u| u.replicas().into_iter().map(|r| r.status.borrow().clone()))
                    .collect();
                let up = status.iter().filter(|s| s.state.is_settled_up()).count();
                let stopped = status
                    .iter()
                    .filter(|s| s.state == UnitState::Inactive)
                    .count();
                InstanceSummary {
                    name: i.plan.name.clone(),
                    system: i.plan.system,
                    domains: i.plan.domains.clone(),
                    app_dir: i.plan.app_dir.display().to_string(),
                    user: i.provisioned.effective_identity().user,
                    units: status.len(),
                    units_up: up,
                    state: if up == status.len() {
                        "running"
                    } else if stopped == status.len() {
                        "stopped"
                    } else {
                        "degraded"
                    }
                    .into(),
                    cgroup: i
                        .provisioned
                        .cgroup
                        .as_ref()
                        .map(|c| c.dir().display().to_string()),
                    limits_not_enforced: i
                        .provisioned
                        .cgroup
                        .as_ref()
                        .map(|c| c.not_enforced.clone())
                        .unwrap_or_default(),
                    usage: self.usage_of(i),
                }
            })
            .collect()
    }
}
