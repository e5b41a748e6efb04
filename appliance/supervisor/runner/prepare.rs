//! A runner's start, up to the spawn: the unit's templates rendered, its
//! state directories and rendered files in place, its identity and
//! environment, and its pre-start commands run. Touches the instance's
//! files and runs `exec_start_pre` through the launcher.

use super::Runner;
use crate::plan::{RenderedUnit, TemplateCtx};
use crate::process::{self, Command, scan};
use crate::provision;

impl Runner {
    pub(super) fn template_ctx(&self) -> TemplateCtx {
        TemplateCtx::new(
            &self.layout,
            &self.instance,
            &self.spec.name,
            self.replica,
            self.provisioned.secrets.clone(),
        )
    }

    /// systemd's `ConditionPathExists=`, checked at every start: the reason the
    /// unit is skipped, or `None` to go ahead. A template error is not a skip;
    /// the render in `prepare` reports it as a failed start.
    pub(super) fn condition_unmet(&self) -> Option<String> {
        let cond = self.spec.condition_path_exists.as_ref()?;
        let path = crate::assets::render_str(cond, &self.template_ctx()).ok()?;
        (!std::path::Path::new(&path).exists())
            .then(|| format!("condition_path_exists: {path} does not exist"))
    }

    /// Render the unit, create its dirs and files, run its pre-start commands.
    pub(super) async fn prepare(&self) -> Result<(RenderedUnit, Command), String> {
        let r = self
            .spec
            .render(&self.template_ctx())
            .map_err(|e| format!("{}: {}", e.field, e.problem))?;
        let identity = self.identity()?;
        let owner = nix::unistd::geteuid()
            .is_root()
            .then_some((identity.uid, identity.gid));
        for d in &self.spec.state_directory {
            let path = self.layout.instance_dir(&self.instance.name).join(d);
            provision::mkdir(&path, 0o700, owner)
                .map_err(|e| format!("state directory {}: {e}", path.display()))?;
        }
        for (path, content, mode) in &r.files {
            crate::secrets::write_replacing(path, content.as_bytes(), *mode)
                .map_err(|e| format!("render {}: {e}", path.display()))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", path.display()))?;
            }
        }
        let mut env = provision::base_env(&identity, &self.instance.name);
        if self.spec.app_env {
            env.extend(self.provisioned.app_env.clone());
        }
        env.extend(r.environment.clone());
        env.insert("APPLIANCE_REPLICA".into(), self.replica.to_string());
        env.insert(
            scan::SCOPE_VAR.into(),
            scan::scope_value(self.layout.data_dir(), &self.instance.name, &self.spec.name),
        );
        let command = Command {
            program: r.program.clone(),
            args: r.args.clone(),
            env,
            cwd: r.working_directory.clone(),
            identity: owner,
            capture: true,
            pdeathsig: Some(self.spec.kill_signal),
            nice: self.spec.nice,
            cgroup: self
                .provisioned
                .cgroup_leaf(&self.spec.name, self.spec.cpu_weight)?,
            private_tmp: self.provisioned.private_tmp.clone(),
            stdin: None,
        };
        for pre in &r.pre {
            if !pre.applies() {
                continue;
            }
            let mut c = command.clone();
            c.program = pre.program.clone();
            c.args = pre.args.clone();
            let shown = pre.program.display().to_string();
            self.log.write(
                self.replica_label(),
                "applianced",
                format!("exec_start_pre: {shown} {}", pre.args.join(" ")),
            );
            let (status, out) = self
                .launcher
                .output(c, self.spec.timeout_start)
                .await
                .map_err(|e| format!("exec_start_pre {shown}: {e}"))?;
            for line in out.lines() {
                self.log
                    .write(self.replica_label(), "stdout", line.to_string());
            }
            if !status.success() {
                return Err(format!(
                    "exec_start_pre {shown} failed: {}",
                    status.describe()
                ));
            }
        }
        Ok((r, command))
    }

    fn identity(&self) -> Result<process::Identity, String> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(process::Identity::current());
        }
        match &self.spec.user {
            Some(u) => process::Identity::lookup(u, self.spec.group.as_deref()),
            None => match &self.spec.group {
                Some(g) => {
                    let base = self.provisioned.effective_identity();
                    process::Identity::lookup(&base.user, Some(g))
                }
                None => Ok(self.provisioned.effective_identity()),
            },
        }
    }
}
