//! `applianced instance add|remove` while the appliance runs: one instance
//! comes or goes; the appliance, the front end and every other instance keep
//! running untouched.
//!
//! Both go through the operator's config file, so what runs is what the next
//! start would run: the edit is staged beside the file ([`edit::Staged`]),
//! planned exactly like at start (every check, with the same data dir and
//! PID-1 facts), applied, and only then renamed over the file. A refused or
//! failed change leaves the file as it was.
//!
//! - add: plan -> provision and start the units -> config committed -> cron
//!   entries, backup schedule, then the site (its domains answer from then on).
//! - remove: plan -> the site goes (421), cron entries end, every unit but
//!   MariaDB stops (nothing writes after the dump) -> final backup (if it
//!   fails and not `force`: units, cron entries and site come back, refused)
//!   -> backup schedule ends -> the rest stops, the cgroup is killed and
//!   removed -> config committed -> [`retire`] (sockets deleted, data kept
//!   root-only, the user deleted).
//!
//! One change at a time (a lock around the running plan). Touches only the
//! config file itself; everything else goes through the services' own APIs.

use crate::backup::{BackupError, Backups, Progress};
use crate::config::ConfigError;
use crate::config::edit::{self, EditError, NewInstance, Staged};
use crate::front::FrontEnd;
use crate::front::routes::SitePlan;
use crate::plan::Plan;
use crate::process::Launcher;
use crate::retire::{self, RetireError, Retired};
use crate::scheduler::{Hold, Scheduler};
use crate::supervisor::{AddError, Appliance, TargetError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(
        "applianced runs on its embedded default config ({0}), which has no file to record instances in; start it with `--config FILE` (or put the config at /etc/applianced/appliance.toml in the image)"
    )]
    NoConfigFile(String),
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("the config with this change is refused: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Add(#[from] AddError),
    #[error("front end: {0}")]
    Front(#[from] crate::front::FrontError),
    #[error(
        "the final backup of `{instance}` failed, so it was not removed: {source} (`--force` removes it without one)"
    )]
    FinalBackup {
        instance: String,
        source: BackupError,
    },
    #[error(transparent)]
    Retire(#[from] RetireError),
    #[error("cron entries of `{instance}`: {source}")]
    Cron {
        instance: String,
        source: std::io::Error,
    },
}

/// What `instance add` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Added {
    pub instance: String,
    pub user: String,
    pub app_dir: PathBuf,
    pub domains: Vec<String>,
    pub config: PathBuf,
}

/// What `instance remove` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Removed {
    pub instance: String,
    /// The final backup's id; `None` when it failed and `force` went on.
    pub final_backup: Option<String>,
    /// Why there is no final backup, when `force` went on without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_backup_error: Option<String>,
    #[serde(flatten)]
    pub retired: Retired,
    pub config: PathBuf,
}

/// The services an instance lives in, and the plan they run.
pub struct Lifecycle {
    /// The plan as running now; held across a whole change.
    plan: tokio::sync::Mutex<Plan>,
    appliance: Arc<Appliance>,
    scheduler: Arc<Scheduler>,
    backups: Arc<Backups>,
    front: Option<Arc<FrontEnd>>,
    launcher: Launcher,
}

/// The check every cron fire of `instance` makes: held while a restore runs
/// or its units are down or coming up.
pub fn hold(appliance: &Arc<Appliance>, backups: &Arc<Backups>, instance: &str) -> Hold {
    let (a, b, name) = (appliance.clone(), backups.clone(), instance.to_string());
    Arc::new(move || {
        if b.paused(&name) {
            return Some("a backup restore is running".to_string());
        }
        a.not_running_reason(&name)
    })
}

impl Lifecycle {
    pub fn new(
        plan: Plan,
        appliance: Arc<Appliance>,
        scheduler: Arc<Scheduler>,
        backups: Arc<Backups>,
        front: Option<Arc<FrontEnd>>,
        launcher: Launcher,
    ) -> Lifecycle {
        Lifecycle {
            plan: tokio::sync::Mutex::new(plan),
            appliance,
            scheduler,
            backups,
            front,
            launcher,
        }
    }

    /// `instance add`: see the module header. Returns once the units were
    /// started (they come up in the background).
    pub async fn add(&self, new: NewInstance, progress: Progress) -> Result<Added, LifecycleError> {
        let mut running = self.plan.lock().await;
        let file = config_file(&running)?;
        let text = read(&file)?;
        let staged = Staged::write(&file, &edit::add_instance(&text, &file, &new)?)?;
        let next = running.rebuild_from(staged.path(), &file.display().to_string())?;
        let Some(inst) = next.instances.iter().find(|i| i.name == new.name) else {
            return Err(not_planned(&new.name));
        };
        progress(format!(
            "[1/3] provisioning `{}` (user {}, dirs, secrets) and starting its units",
            inst.name, inst.user
        ));
        self.appliance.add_instance(inst).await?;
        progress(format!("[2/3] recording it in {}", file.display()));
        if let Err(e) = staged.commit() {
            // The config could not take it: the instance must not outlive us.
            let _ = self.appliance.remove_instance(&inst.name).await;
            return Err(e.into());
        }
        progress("[3/3] scheduling its cron entries and backups, routing its domains".into());
        if let Some(prov) = self.appliance.provisioned(&inst.name) {
            let hold = hold(&self.appliance, &self.backups, &inst.name);
            if let Err(source) = self.scheduler.add_instance(inst, &prov, hold) {
                tracing::error!(instance = %inst.name, error = %source, "cron entries not scheduled");
            }
        }
        if let Some(spec) = next.backups.iter().find(|b| b.instance == inst.name) {
            self.backups.add_instance(spec);
        }
        if let (Some(front), Some(site)) = (
            &self.front,
            next.front.sites.iter().find(|s| s.instance == inst.name),
        ) {
            front.add_site(site)?;
        }
        let added = Added {
            instance: inst.name.clone(),
            user: inst.user.clone(),
            app_dir: inst.app_dir.clone(),
            domains: inst.domains.clone(),
            config: file,
        };
        *running = next;
        Ok(added)
    }

    /// `instance remove`: see the module header.
    pub async fn remove(
        &self,
        name: &str,
        force: bool,
        progress: Progress,
    ) -> Result<Removed, LifecycleError> {
        let mut running = self.plan.lock().await;
        let file = config_file(&running)?;
        if name == crate::plan::system::SYSTEM_INSTANCE {
            return Err(TargetError::SystemInstance.into());
        }
        // Known to the running appliance (a clear "unknown instance" first).
        self.appliance.check_instance(name)?;
        let text = read(&file)?;
        let staged = Staged::write(&file, &edit::remove_instance(&text, &file, name)?)?;
        let next = running.rebuild_from(staged.path(), &file.display().to_string())?;
        progress(format!(
            "[1/4] unrouting `{name}` (421), ending its cron entries, stopping all its units but MariaDB"
        ));
        let site = running
            .front
            .sites
            .iter()
            .find(|s| s.instance == name)
            .cloned();
        if let Some(front) = &self.front {
            front.remove_site(name);
        }
        self.scheduler.remove_instance(name);
        self.appliance.stop_all_but(name, &["mariadb"]).await?;
        progress(format!("[2/4] final backup of `{name}`"));
        let (final_backup, final_backup_error) =
            match self.backups.run_now(name, "final", progress.clone()).await {
                Ok(rec) => (rec.backup_id, None),
                Err(source) if !force => {
                    self.undo_remove(&running, name, site.as_ref()).await;
                    return Err(LifecycleError::FinalBackup {
                        instance: name.into(),
                        source,
                    });
                }
                Err(e) => {
                    progress(format!(
                        "final backup failed: {e}; removing anyway (--force)"
                    ));
                    (None, Some(e.to_string()))
                }
            };
        self.backups.remove_instance(name);
        progress("[3/4] stopping MariaDB and killing what is left in its cgroup".into());
        let inst = self.appliance.remove_instance(name).await?;
        // It is gone from the running appliance: the file must say so too,
        // even if clearing it off the machine below fails.
        staged.commit()?;
        let layout = running.layout.clone();
        *running = next;
        progress("[4/4] deleting its sockets and user, keeping its data root-only".into());
        let retired = retire::retire(&layout, &inst, &self.launcher).await?;
        Ok(Removed {
            instance: name.into(),
            final_backup,
            final_backup_error,
            retired,
            config: file,
        })
    }
}

impl Lifecycle {
    /// A refused remove puts back what it had taken down: units, cron
    /// entries, the site.
    async fn undo_remove(&self, running: &Plan, name: &str, site: Option<&SitePlan>) {
        if let Err(e) = self.appliance.start_instance(name).await {
            tracing::error!(instance = name, error = %e, "restarting after a refused remove");
        }
        if let (Some(inst), Some(prov)) = (
            running.instances.iter().find(|i| i.name == name),
            self.appliance.provisioned(name),
        ) {
            let hold = hold(&self.appliance, &self.backups, name);
            if let Err(e) = self.scheduler.add_instance(inst, &prov, hold) {
                tracing::error!(instance = name, error = %e, "cron entries after a refused remove");
            }
        }
        if let (Some(front), Some(site)) = (&self.front, site) {
            if let Err(e) = front.add_site(site) {
                tracing::error!(instance = name, error = %e, "routing after a refused remove");
            }
        }
    }
}

fn config_file(plan: &Plan) -> Result<PathBuf, LifecycleError> {
    plan.origin
        .file
        .clone()
        .ok_or_else(|| LifecycleError::NoConfigFile(plan.source.clone()))
}

fn read(file: &std::path::Path) -> Result<String, LifecycleError> {
    std::fs::read_to_string(file).map_err(|source| LifecycleError::Read {
        file: file.display().to_string(),
        source,
    })
}

/// The edited config planned without the instance it adds: an environment
/// override replaced the instance list.
fn not_planned(name: &str) -> LifecycleError {
    LifecycleError::Config(ConfigError::new(
        "environment",
        "instance",
        format!(
            "`{name}` was added to the file but the planned config has no such instance (an APPLIANCE_INSTANCE override?)"
        ),
    ))
}
