//! What `applianced instance remove` does to the machine once the instance's
//! units have stopped and its cgroup is gone: nothing of it stays reachable.
//!
//! - its run dir (sockets, pid files, rendered configs holding passwords) is
//!   deleted, so no socket is left to connect to;
//! - its instance dir (MariaDB and Redis data, the bundled app), secrets file
//!   and logs are moved into `DATA/removed/NAME-TIME/` (root only, 0700): a
//!   final backup was taken, but a mistaken remove should still lose nothing,
//!   and the files of a deleted user must not stay where a later user that
//!   gets the same uid could reach them;
//! - the Unix user is deleted when applianced made it (the default `app-NAME`);
//!   a user the config named (`user = ...`) may be shared and is kept.
//!
//! An app dir given with `--app` belongs to the operator and is left alone.
//! Touches `DATA/` and, as root, `/etc/passwd` through `userdel`.

use crate::layout::Layout;
use crate::plan::InstancePlan;
use crate::process::Launcher;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error("instance {instance}: {what} {path}: {source}")]
    Io {
        instance: String,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("instance {instance}: {message}")]
    User { instance: String, message: String },
}

/// What was done, for the operator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Retired {
    /// Where the instance's dir, secrets and logs went.
    pub kept_in: Option<PathBuf>,
    /// The Unix user deleted, if applianced had made it.
    pub user_deleted: Option<String>,
}

/// Clear an instance off the machine (see the module header).
pub async fn retire(
    layout: &Layout,
    inst: &InstancePlan,
    launcher: &Launcher,
) -> Result<Retired, RetireError> {
    let io = |what: &'static str, path: &Path| {
        let (instance, path) = (inst.name.clone(), path.to_path_buf());
        move |source| RetireError::Io {
            instance,
            what,
            path,
            source,
        }
    };
    let mut done = Retired::default();
    let run = layout.instance_run_dir(&inst.name);
    if run.exists() {
        std::fs::remove_dir_all(&run).map_err(io("removing", &run))?;
    }
    let moves = [
        (layout.instance_dir(&inst.name), "instance"),
        (layout.secrets_file(&inst.name), "secrets.env"),
        (layout.instance_log_dir(&inst.name), "logs"),
    ];
    if moves.iter().any(|(from, _)| from.exists()) {
        let removed = layout.removed_dir();
        crate::provision::mkdir(&removed, 0o700, None).map_err(io("creating", &removed))?;
        let stamp = crate::logs::now_rfc3339().replace(':', "");
        let dest = removed.join(format!("{}-{stamp}", inst.name));
        crate::provision::mkdir(&dest, 0o700, None).map_err(io("creating", &dest))?;
        for (from, name) in moves {
            if from.exists() {
                let to = dest.join(name);
                std::fs::rename(&from, &to).map_err(io("moving", &from))?;
            }
        }
        done.kept_in = Some(dest);
    }
    let made_by_us = inst.user == format!("app-{}", inst.name);
    if made_by_us
        && !inst.system
        && nix::unistd::geteuid().is_root()
        && crate::process::Identity::lookup(&inst.user, None).is_ok()
    {
        delete_user(&inst.user, launcher)
            .await
            .map_err(|message| RetireError::User {
                instance: inst.name.clone(),
                message,
            })?;
        done.user_deleted = Some(inst.user.clone());
    }
    tracing::info!(instance = %inst.name, kept_in = ?done.kept_in, user_deleted = ?done.user_deleted, "instance retired");
    Ok(done)
}

/// `userdel USER` (its user group goes with it), under the lock `useradd` takes.
async fn delete_user(user: &str, launcher: &Launcher) -> Result<(), String> {
    let _turn = crate::provision::useradd_lock().await?;
    crate::provision::passwd_tool("userdel", vec![user.to_string()], launcher, |_| false).await
}
