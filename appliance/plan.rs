//! Config -> plan: which units each instance runs, merged from the shipped
//! templates and the instance's overrides, checked and topologically ordered.
//!
//! Every check that can be made before starting anything is made here, so a bad
//! config is refused with nothing started: unknown or disabled dependencies,
//! dependency cycles, duplicate names, programs missing from PATH, bad signals
//! and durations, and template errors (rendered once with placeholder secrets).
//! It reads only the embedded units and the filesystem (to find programs).

use crate::assets;
use crate::config::{
    ConfigError, ExecPre, InstanceConfig, Loaded, LogConfig, Readiness, RenderFile, RestartPolicy,
    UnitConfig,
};
use crate::layout::Layout;
use crate::secrets;
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod graph;
mod render;
pub mod system;

use graph::{check_dependencies, topo_order, unit_spec};
pub use render::{
    FieldRenderer, RenderedPre, RenderedUnit, TemplateCtx, UnitRenderError, find_program,
};

/// The shipped units every instance runs unless it disables them.
pub const DEFAULT_UNITS: &[&str] = &["mariadb", "redis", "php-fpm", "queue-worker"];

/// PATH handed to children and used to find programs.
pub const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone)]
pub struct Plan {
    pub source: String,
    pub layout: Layout,
    pub log: LogConfig,
    pub instances: Vec<InstancePlan>,
    /// The HTTP(S) front end: listeners, virtual hosts, sites, certificates.
    pub front: crate::front::routes::FrontPlan,
    /// The admin listener (`/metrics`).
    pub admin: crate::admin::AdminPlan,
    /// Where log lines are shipped (`[[log.ship]]`).
    pub ship: Vec<crate::logs::ship::SinkPlan>,
    /// The machine settings of `[system]` (used in PID-1 mode).
    pub host: system::HostPlan,
    /// The `system` pseudo-instance (sshd, dhcp: root-run units), when the
    /// system units are active: in PID-1 mode, or with `system.enabled = true`.
    pub system: Option<InstancePlan>,
    /// Each app instance's backup settings (`[backup]` + `[instance.backup]`).
    pub backups: Vec<crate::backup::spec::BackupSpec>,
    /// How to build this plan again from an edited config file.
    pub origin: Origin,
}

/// Where a plan came from: `instance add|remove` edit the file and plan it
/// again the same way (same data dir override, same PID-1 facts), so the
/// result is what the next start would run.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The config file; `None`: the embedded default or a seed's text, which
    /// have no file to edit.
    pub file: Option<PathBuf>,
    pub data_dir_override: Option<PathBuf>,
    pub init: Option<system::InitFacts>,
}

impl Plan {
    /// Plan the config file at `path` (a staged edit of [`Origin::file`])
    /// like this plan was; errors name `source` rather than the staged file.
    pub fn rebuild_from(&self, path: &Path, source: &str) -> Result<Plan, ConfigError> {
        let staged = path.display().to_string();
        let mut loaded = crate::config::load(Some(path)).map_err(|mut e| {
            if e.file == staged {
                e.file = source.to_string();
            }
            e
        })?;
        loaded.source = source.to_string();
        loaded.path = self.origin.file.clone();
        build_with(
            &loaded,
            self.origin.data_dir_override.as_deref(),
            self.origin.init.as_ref(),
        )
    }
}

impl Plan {
    /// The app instances, then the `system` pseudo-instance if any.
    pub fn all_instances(&self) -> impl Iterator<Item = &InstancePlan> {
        self.instances.iter().chain(self.system.iter())
    }
}

#[derive(Debug, Clone)]
pub struct InstancePlan {
    pub name: String,
    /// Unix user of every unit unless the unit says otherwise.
    pub user: String,
    pub app_dir: PathBuf,
    /// True when `app_dir` is the bundled demo app, installed on first provision.
    pub bundled_app: bool,
    pub domains: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// In dependency order: each unit after everything it requires or follows.
    pub units: Vec<UnitSpec>,
    /// Cron entries, in name order (see [`crate::scheduler::spec`]).
    pub cron: Vec<crate::scheduler::spec::CronSpec>,
    /// True for the `system` pseudo-instance: root-run units, no user, no
    /// secrets, no app.
    pub system: bool,
    /// `{{ system.KEY }}` template values (system instance only: `interface`,
    /// `hostname`).
    pub vars: BTreeMap<String, String>,
    /// `[instance.web] php_children`: php-fpm's `pm.max_children`.
    pub php_children: u32,
    /// `[instance.web] php_max_requests`: php-fpm's `pm.max_requests`.
    pub php_max_requests: u32,
    /// php-fpm's warm-up page once what it requires is ready ("": none):
    /// `[instance.web] warm_up`, unless `warm_up_early = true` moved it.
    pub warm_up: String,
    /// The page asked as soon as php-fpm answers ("": none).
    pub warm_up_early: String,
    /// `[instance.limits]`, checked.
    pub limits: crate::cgroup::Limits,
    /// `private_tmp`: the units get `DATA/instances/NAME/tmp` as `/tmp`.
    pub private_tmp: bool,
}

impl InstancePlan {
    pub fn unit(&self, name: &str) -> Option<&UnitSpec> {
        self.units.iter().find(|u| u.name == name)
    }
}

/// One unit, merged and typed. String fields are still templates.
#[derive(Debug, Clone)]
pub struct UnitSpec {
    pub name: String,
    pub description: String,
    pub command: String,
    pub args: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub app_env: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    pub working_directory: Option<String>,
    pub after: Vec<String>,
    pub requires: Vec<String>,
    /// Spawned without waiting for `requires`; ready only after them.
    pub start_early: bool,
    /// Hold the first start until the other units came up, at most this long
    /// (`start_idle_sec`); `None`: start at once.
    pub start_idle: Option<Duration>,
    pub readiness: Readiness,
    pub restart: RestartPolicy,
    pub restart_sec: Duration,
    pub restart_max_delay: Duration,
    pub restart_reset: Duration,
    pub start_limit_burst: u32,
    pub start_limit_interval: Duration,
    pub timeout_start: Duration,
    pub timeout_stop: Duration,
    pub kill_signal: Signal,
    pub send_sigkill: bool,
    /// 0..=19, applied before exec (see `UnitConfig::nice`).
    pub nice: i32,
    /// 1..=10000 for the unit's cgroup leaf; `None`: the kernel's 100.
    pub cpu_weight: Option<u32>,
    pub replicas: u32,
    pub state_directory: Vec<String>,
    pub render: Vec<RenderFile>,
    pub exec_start_pre: Vec<ExecPre>,
    pub condition_path_exists: Option<String>,
}

/// Build and check the plan. `data_dir` from the CLI wins over the config's.
/// Outside PID-1 mode: the system units run only with `system.enabled = true`.
pub fn build(loaded: &Loaded, data_dir_override: Option<&Path>) -> Result<Plan, ConfigError> {
    build_with(loaded, data_dir_override, None)
}

/// [`build`], for PID-1 mode when `init` is given: the system units run
/// unless `system.enabled = false`, with the facts init found (the NIC).
pub fn build_with(
    loaded: &Loaded,
    data_dir_override: Option<&Path>,
    init: Option<&system::InitFacts>,
) -> Result<Plan, ConfigError> {
    let src = loaded.source.as_str();
    let cfg = &loaded.config;
    let err = |key: String, problem: String| ConfigError::new(src, key, problem);
    let data_dir = data_dir_override
        .map(Path::to_path_buf)
        .or_else(|| cfg.data_dir.clone())
        .unwrap_or_else(Layout::default_data_dir);
    let data_dir = if data_dir.is_absolute() {
        data_dir
    } else {
        std::env::current_dir()
            .map_err(|e| err("data_dir".into(), e.to_string()))?
            .join(data_dir)
    };
    let layout = Layout::new(data_dir);
    if cfg.instances.is_empty() && init.is_none_or(|f| !f.allow_no_instances) {
        return Err(err(
            "instance".into(),
            "no [[instance]] is defined; an appliance needs at least one".into(),
        ));
    }
    if cfg.log.keep == 0 || cfg.log.max_bytes < 4096 {
        return Err(err(
            "log".into(),
            "log.max_bytes must be at least 4096 and log.keep at least 1".into(),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut instances = Vec::new();
    for (i, inst) in cfg.instances.iter().enumerate() {
        let key = |rest: &str| format!("instance[{i}]{rest}");
        if inst.name == system::SYSTEM_INSTANCE {
            return Err(err(
                key(".name"),
                "`system` is reserved for the machine's own units (sshd, dhcp); pick another name"
                    .into(),
            ));
        }
        if !valid_name(&inst.name, 20) {
            return Err(err(
                key(".name"),
                format!(
                    "`{}` is not a valid instance name: use 1-20 lowercase letters, digits or `-`, starting with a letter",
                    inst.name
                ),
            ));
        }
        if let Some(prev) = seen.insert(&inst.name, i) {
            return Err(err(
                key(".name"),
                format!(
                    "duplicate instance name `{}` (already used by instance[{prev}])",
                    inst.name
                ),
            ));
        }
        instances.push(build_instance(i, inst, &layout).map_err(|(k, p)| err(k, p))?);
    }
    let app_dirs: Vec<PathBuf> = instances.iter().map(|i| i.app_dir.clone()).collect();
    let front = crate::front::routes::build(&cfg.http, &cfg.instances, &app_dirs, &layout)
        .map_err(|(k, p)| err(k, p))?;
    let backups = crate::backup::spec::build(&cfg.backup, &cfg.instances, &instances, &layout)
        .map_err(|(k, p)| err(k, p))?;
    let admin = crate::admin::plan(&cfg.admin).map_err(|(k, p)| err(k, p))?;
    let ship = crate::logs::ship::plan(&cfg.log.ship).map_err(|(k, p)| err(k, p))?;
    let host = system::host(&cfg.system).map_err(|(k, p)| err(k, p))?;
    let system = system::instance(&cfg.system, &host, &layout, init).map_err(|(k, p)| err(k, p))?;
    Ok(Plan {
        source: loaded.source.clone(),
        layout,
        log: cfg.log.clone(),
        instances,
        front,
        admin,
        ship,
        host,
        system,
        backups,
        origin: Origin {
            file: loaded.path.clone(),
            data_dir_override: data_dir_override.map(Path::to_path_buf),
            init: init.cloned(),
        },
    })
}

/// 1..=`max` lowercase letters, digits or `-`, starting with a letter.
pub(crate) fn valid_name(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= max
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(crate) type KeyedProblem = (String, String);

/// `[instance.limits]` checked: sizes parsed, weights in 1..=10000.
fn limits(c: &crate::config::LimitsConfig) -> Result<crate::cgroup::Limits, KeyedProblem> {
    use crate::cgroup::{Max, parse_bytes};
    use crate::config::SizeValue;
    let size = |k: &str, v: &Option<SizeValue>, bytes: bool| -> Result<Option<Max>, KeyedProblem> {
        match v {
            None => Ok(None),
            Some(SizeValue::Number(n)) => Ok(Some(Max::Value(*n))),
            Some(SizeValue::Text(t)) if bytes => {
                parse_bytes(t).map(Some).map_err(|p| (k.into(), p))
            }
            Some(SizeValue::Text(t)) if t.trim() == "max" => Ok(Some(Max::Unlimited)),
            Some(SizeValue::Text(t)) => Err((k.into(), format!("`{t}` is not a number or `max`"))),
        }
    };
    let weight = |k: &str, v: Option<u32>| -> Result<Option<u32>, KeyedProblem> {
        crate::cgroup::check_weight(v).map_err(|p| (k.into(), p))
    };
    let l = crate::cgroup::Limits {
        memory_max: size("memory_max", &c.memory_max, true)?,
        cpu_weight: weight("cpu_weight", c.cpu_weight)?,
        pids_max: size("pids_max", &c.pids_max, false)?,
        io_weight: weight("io_weight", c.io_weight)?,
    };
    if l.memory_max == Some(Max::Value(0)) || l.pids_max == Some(Max::Value(0)) {
        let k = if l.memory_max == Some(Max::Value(0)) {
            "memory_max"
        } else {
            "pids_max"
        };
        return Err((
            k.into(),
            "0 would stop every process of the instance; use `max` for no limit".into(),
        ));
    }
    Ok(l)
}

fn build_instance(
    i: usize,
    inst: &InstanceConfig,
    layout: &Layout,
) -> Result<InstancePlan, KeyedProblem> {
    let key = |rest: String| format!("instance[{i}]{rest}");
    let am_root = nix::unistd::geteuid().is_root();
    let user = match (&inst.user, am_root) {
        (Some(u), _) => u.clone(),
        (None, true) => format!("app-{}", inst.name),
        (None, false) => current_user_name(),
    };
    let (app_dir, bundled_app) = match &inst.app_dir {
        Some(d) => {
            if !d.is_dir() {
                return Err((
                    key(".app_dir".into()),
                    format!("`{}` is not a directory", d.display()),
                ));
            }
            (d.clone(), false)
        }
        None => (layout.default_app_dir(&inst.name), true),
    };
    let (warm_up_early, warm_up) = inst.web.warm_up_pages();
    for (field, page) in [
        ("warm_up", &inst.web.warm_up),
        ("warm_up_early", &warm_up_early),
    ] {
        if !page.is_empty() && !page.starts_with('/') {
            return Err((
                key(format!(".web.{field}")),
                format!("`{page}` must be a path starting with `/` (or \"\" for no warm-up)"),
            ));
        }
    }
    let units = merge_units(&key, DEFAULT_UNITS, &assets::unit_template, &inst.units)?;
    let cron_key = |e: &str, f: &str| {
        if f.is_empty() {
            key(format!(".cron.{e}"))
        } else {
            key(format!(".cron.{e}.{f}"))
        }
    };
    let cron = crate::scheduler::spec::build(inst, &app_dir, bundled_app, &cron_key)?;
    let limits = limits(&inst.limits).map_err(|(k, p)| (key(format!(".limits.{k}")), p))?;
    let plan = InstancePlan {
        name: inst.name.clone(),
        user,
        app_dir,
        bundled_app,
        domains: inst.domains.clone(),
        env: inst.env.clone(),
        units,
        cron,
        system: false,
        vars: BTreeMap::new(),
        php_children: inst.web.php_children,
        php_max_requests: inst.web.php_max_requests,
        warm_up,
        warm_up_early,
        limits,
        private_tmp: inst.private_tmp,
    };
    // Render every unit once with placeholder secrets: template and PATH errors now, not at start.
    for u in &plan.units {
        let ctx = TemplateCtx::new(layout, &plan, &u.name, 0, secrets::placeholders());
        u.render(&ctx)
            .map_err(|e| (key(format!(".units.{}.{}", u.name, e.field)), e.problem))?;
    }
    for c in &plan.cron {
        let ctx = TemplateCtx::new(
            layout,
            &plan,
            crate::logs::CRON_UNIT,
            0,
            secrets::placeholders(),
        );
        c.render(&ctx)
            .map_err(|e| (cron_key(&c.name, e.field), e.problem))?;
    }
    Ok(plan)
}

/// Shipped units (`defaults`, looked up with `shipped`) merged with the
/// overrides of one instance (or `[system]`), checked and in dependency order.
/// `key` turns `.units.NAME...` into the full key path.
pub(crate) fn merge_units(
    key: &dyn Fn(String) -> String,
    defaults: &[&str],
    shipped: &dyn Fn(&str) -> Option<&'static str>,
    overrides: &BTreeMap<String, UnitConfig>,
) -> Result<Vec<UnitSpec>, KeyedProblem> {
    // Shipped defaults first, in their declared order, then the instance's own units.
    let mut names: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
    names.extend(
        overrides
            .keys()
            .filter(|k| !defaults.contains(&k.as_str()))
            .cloned(),
    );
    let mut specs = Vec::new();
    for name in &names {
        let ukey = |f: &str| {
            key(format!(
                ".units.{name}{}",
                if f.is_empty() {
                    String::new()
                } else {
                    format!(".{f}")
                }
            ))
        };
        if !valid_name(name, 40) {
            return Err((
                ukey(""),
                format!("`{name}` is not a valid unit name: lowercase letters, digits and `-`"),
            ));
        }
        if name == crate::logs::ACCESS_UNIT {
            return Err((
                ukey(""),
                "`access` is reserved for the instance's access log (`applianced logs INSTANCE/access`)".into(),
            ));
        }
        if name == crate::logs::CRON_UNIT {
            return Err((
                ukey(""),
                "`cron` is reserved for the output of the instance's cron runs (`applianced logs INSTANCE/cron`)".into(),
            ));
        }
        let over = overrides.get(name);
        let template = over
            .and_then(|o| o.template.clone())
            .or_else(|| shipped(name).map(|_| name.clone()));
        let base = match &template {
            Some(t) => {
                let text = shipped(t).ok_or_else(|| {
                    (
                        ukey("template"),
                        format!(
                            "no shipped unit `{t}`; shipped: {}",
                            assets::unit_names().join(", ")
                        ),
                    )
                })?;
                toml::from_str::<UnitConfig>(text)
                    .map_err(|e| (format!("units/{t}.toml"), e.to_string()))?
            }
            None => UnitConfig::default(),
        };
        let merged = match over {
            Some(o) => base.overlay(o),
            None => base,
        };
        if merged.enabled == Some(false) {
            continue;
        }
        specs.push(unit_spec(name, merged, &ukey)?);
    }
    // systemd's After= is ordering only: naming a shipped unit this instance
    // disabled is fine (the shipped queue-worker is `after` mariadb and redis).
    let present: BTreeSet<String> = specs.iter().map(|s| s.name.clone()).collect();
    for s in &mut specs {
        s.after
            .retain(|d| present.contains(d) || !defaults.contains(&d.as_str()));
    }
    check_dependencies(&specs, &|u: &str, f: &str| key(format!(".units.{u}.{f}")))?;
    topo_order(specs, &|u: &str, f: &str| key(format!(".units.{u}.{f}")))
}

fn current_user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "nobody".into())
}

#[cfg(test)]
mod tests;
