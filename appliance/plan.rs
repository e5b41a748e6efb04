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
use crate::process::parse_signal;
use crate::secrets;
use nix::sys::signal::Signal;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod system;

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
    /// The machine settings of `[system]` (used in PID-1 mode).
    pub host: system::HostPlan,
    /// The `system` pseudo-instance (sshd, dhcp: root-run units), when the
    /// system units are active: in PID-1 mode, or with `system.enabled = true`.
    pub system: Option<InstancePlan>,
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
    pub replicas: u32,
    pub state_directory: Vec<String>,
    pub render: Vec<RenderFile>,
    pub exec_start_pre: Vec<ExecPre>,
    pub condition_path_exists: Option<String>,
}

/// Values templates may use.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateCtx {
    pub instance: String,
    pub instance_dir: String,
    pub run_dir: String,
    pub log_dir: String,
    pub app_dir: String,
    pub data_dir: String,
    pub user: String,
    pub unit: String,
    pub replica: u32,
    pub secrets: BTreeMap<String, String>,
    /// Machine facts for system units (`{{ system.interface }}`); empty for apps.
    pub system: BTreeMap<String, String>,
    /// This binary, for steps applianced itself performs (`repair-aof`).
    pub applianced: String,
}

impl TemplateCtx {
    pub fn new(
        layout: &Layout,
        inst: &InstancePlan,
        unit: &str,
        replica: u32,
        secrets: BTreeMap<String, String>,
    ) -> Self {
        Self {
            instance: inst.name.clone(),
            instance_dir: layout.instance_dir(&inst.name).display().to_string(),
            run_dir: layout.instance_run_dir(&inst.name).display().to_string(),
            log_dir: layout.instance_log_dir(&inst.name).display().to_string(),
            app_dir: inst.app_dir.display().to_string(),
            data_dir: layout.data_dir().display().to_string(),
            user: inst.user.clone(),
            unit: unit.to_string(),
            replica,
            secrets,
            system: inst.vars.clone(),
            applianced: std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "applianced".into()),
        }
    }
}

/// A unit with every template rendered: ready to spawn.
#[derive(Debug, Clone)]
pub struct RenderedUnit {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub working_directory: Option<PathBuf>,
    pub readiness: Readiness,
    pub files: Vec<(PathBuf, String, u32)>,
    pub pre: Vec<RenderedPre>,
    pub condition_path_exists: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RenderedPre {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub skip_if_exists: Option<PathBuf>,
    pub condition_path_exists: Option<PathBuf>,
}

impl RenderedPre {
    /// Whether this step runs now: its condition path exists (when it has
    /// one) and its skip path does not.
    pub fn applies(&self) -> bool {
        self.condition_path_exists
            .as_ref()
            .is_none_or(|p| p.exists())
            && !self.skip_if_exists.as_ref().is_some_and(|p| p.exists())
    }
}

/// Which part of a unit a render problem is in, so the error names the key.
#[derive(Debug)]
pub struct UnitRenderError {
    pub field: &'static str,
    pub problem: String,
}

/// Renders the template fields of a unit or a cron entry against one context;
/// an error names the field, so the config error can name the key.
pub struct FieldRenderer<'a> {
    ctx: &'a TemplateCtx,
}

impl<'a> FieldRenderer<'a> {
    pub fn new(ctx: &'a TemplateCtx) -> Self {
        Self { ctx }
    }

    pub fn str(&self, field: &'static str, s: &str) -> Result<String, UnitRenderError> {
        assets::render_str(s, self.ctx).map_err(|e| UnitRenderError {
            field,
            problem: e.to_string(),
        })
    }

    /// A program name (looked up in the children's PATH) or absolute path.
    pub fn program(&self, field: &'static str, s: &str) -> Result<PathBuf, UnitRenderError> {
        let command = self.str(field, s)?;
        find_program(&command).ok_or_else(|| UnitRenderError {
            field,
            problem: format!(
                "program `{command}` not found (searched {CHILD_PATH}); install it or set `{field}`"
            ),
        })
    }

    pub fn list(&self, field: &'static str, v: &[String]) -> Result<Vec<String>, UnitRenderError> {
        v.iter().map(|a| self.str(field, a)).collect()
    }

    pub fn map(
        &self,
        field: &'static str,
        m: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, UnitRenderError> {
        m.iter()
            .map(|(k, v)| Ok((k.clone(), self.str(field, v)?)))
            .collect()
    }

    pub fn path(
        &self,
        field: &'static str,
        o: &Option<String>,
    ) -> Result<Option<PathBuf>, UnitRenderError> {
        o.as_deref()
            .map(|s| self.str(field, s).map(PathBuf::from))
            .transpose()
    }
}

impl UnitSpec {
    pub fn render(&self, ctx: &TemplateCtx) -> Result<RenderedUnit, UnitRenderError> {
        let f = FieldRenderer::new(ctx);
        let r = |field: &'static str, s: &str| f.str(field, s);
        let program = f.program("command", &self.command)?;
        let args = f.list("args", &self.args)?;
        let environment = f.map("environment", &self.environment)?;
        let working_directory = f.path("working_directory", &self.working_directory)?;
        let readiness = render_readiness(&self.readiness, &r)?;
        let mut files = Vec::new();
        for f in &self.render {
            let path = PathBuf::from(r("render", &f.path)?);
            let content = assets::render_asset(&f.template, ctx).map_err(|e| UnitRenderError {
                field: "render",
                problem: format!("{}: {e}", f.template),
            })?;
            let mode = match &f.mode {
                Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8).map_err(|_| {
                    UnitRenderError {
                        field: "render",
                        problem: format!("mode `{m}` is not an octal number"),
                    }
                })?,
                None => 0o600,
            };
            files.push((path, content, mode));
        }
        let mut pre = Vec::new();
        for p in &self.exec_start_pre {
            pre.push(RenderedPre {
                program: f.program("exec_start_pre", &p.command)?,
                args: f.list("exec_start_pre", &p.args)?,
                skip_if_exists: f.path("exec_start_pre", &p.skip_if_exists)?,
                condition_path_exists: f.path("exec_start_pre", &p.condition_path_exists)?,
            });
        }
        let condition_path_exists = f.path("condition_path_exists", &self.condition_path_exists)?;
        Ok(RenderedUnit {
            program,
            args,
            environment,
            working_directory,
            readiness,
            files,
            pre,
            condition_path_exists,
        })
    }
}

fn render_readiness(
    rd: &Readiness,
    r: &impl Fn(&'static str, &str) -> Result<String, UnitRenderError>,
) -> Result<Readiness, UnitRenderError> {
    let f = "readiness";
    Ok(match rd {
        Readiness::None => Readiness::None,
        Readiness::Notify => Readiness::Notify,
        Readiness::Tcp { address } => Readiness::Tcp {
            address: r(f, address)?,
        },
        Readiness::Unix { path } => Readiness::Unix { path: r(f, path)? },
        Readiness::Exec { command, args } => {
            let cmd = r(f, command)?;
            let program = find_program(&cmd).ok_or_else(|| UnitRenderError {
                field: f,
                problem: format!("probe program `{cmd}` not found (searched {CHILD_PATH})"),
            })?;
            Readiness::Exec {
                command: program.display().to_string(),
                args: args.iter().map(|a| r(f, a)).collect::<Result<_, _>>()?,
            }
        }
        Readiness::Http { url, status } => Readiness::Http {
            url: r(f, url)?,
            status: *status,
        },
        Readiness::Fastcgi {
            socket,
            path,
            response,
        } => Readiness::Fastcgi {
            socket: r(f, socket)?,
            path: r(f, path)?,
            response: r(f, response)?,
        },
        Readiness::Mariadb { socket } => Readiness::Mariadb {
            socket: r(f, socket)?,
        },
        Readiness::Redis { socket, password } => Readiness::Redis {
            socket: r(f, socket)?,
            password: match password {
                Some(p) => Some(r(f, p)?),
                None => None,
            },
        },
    })
}

/// Resolve a program name against [`CHILD_PATH`], or check an explicit path.
pub fn find_program(command: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if command.contains('/') {
        let p = PathBuf::from(command);
        return executable(&p).then_some(p);
    }
    CHILD_PATH
        .split(':')
        .map(|d| Path::new(d).join(command))
        .find(|p| executable(p))
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
    let host = system::host(&cfg.system).map_err(|(k, p)| err(k, p))?;
    let system = system::instance(&cfg.system, &host, &layout, init).map_err(|(k, p)| err(k, p))?;
    Ok(Plan {
        source: loaded.source.clone(),
        layout,
        log: cfg.log.clone(),
        instances,
        front,
        host,
        system,
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
    let units = merge_units(&key, DEFAULT_UNITS, &assets::unit_template, &inst.units)?;
    let cron_key = |e: &str, f: &str| {
        if f.is_empty() {
            key(format!(".cron.{e}"))
        } else {
            key(format!(".cron.{e}.{f}"))
        }
    };
    let cron = crate::scheduler::spec::build(inst, &app_dir, bundled_app, &cron_key)?;
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

fn unit_spec(
    name: &str,
    c: UnitConfig,
    ukey: &dyn Fn(&str) -> String,
) -> Result<UnitSpec, KeyedProblem> {
    let secs = |field: &str, v: Option<f64>, default: f64| -> Result<Duration, KeyedProblem> {
        let v = v.unwrap_or(default);
        if !v.is_finite() || v < 0.0 {
            return Err((
                ukey(field),
                format!("{v} is not a duration in seconds (must be >= 0)"),
            ));
        }
        Ok(Duration::from_secs_f64(v))
    };
    let command = c.command.clone().ok_or_else(|| {
        (
            ukey("command"),
            format!("unit `{name}` has no `command` and is not a shipped unit"),
        )
    })?;
    let kill_signal = match &c.kill_signal {
        Some(s) => parse_signal(s).ok_or_else(|| {
            (
                ukey("kill_signal"),
                format!("`{s}` is not a signal name (e.g. SIGTERM)"),
            )
        })?,
        None => Signal::SIGTERM,
    };
    let nice = c.nice.unwrap_or(0);
    if !(0..=19).contains(&nice) {
        return Err((
            ukey("nice"),
            format!(
                "{nice} is out of range: 0 (default) to 19; applianced only lowers a unit's CPU priority"
            ),
        ));
    }
    let replicas = c.replicas.unwrap_or(1);
    if replicas == 0 || replicas > crate::supervisor::MAX_REPLICAS {
        return Err((
            ukey("replicas"),
            format!(
                "{replicas} is out of range 1..={}",
                crate::supervisor::MAX_REPLICAS
            ),
        ));
    }
    for d in c.state_directory.iter().flatten() {
        if d.is_empty() || d.starts_with('/') || d.split('/').any(|p| p == "..") {
            return Err((
                ukey("state_directory"),
                format!("`{d}` must be a relative path inside the instance dir"),
            ));
        }
    }
    Ok(UnitSpec {
        name: name.to_string(),
        description: c.description.unwrap_or_default(),
        command,
        args: c.args.unwrap_or_default(),
        environment: c.environment.unwrap_or_default(),
        app_env: c.app_env.unwrap_or(false),
        user: c.user,
        group: c.group,
        working_directory: c.working_directory,
        after: c.after.unwrap_or_default(),
        requires: c.requires.unwrap_or_default(),
        readiness: c.readiness.unwrap_or(Readiness::None),
        restart: c.restart.unwrap_or(RestartPolicy::Always),
        restart_sec: secs("restart_sec", c.restart_sec, 0.1)?,
        restart_max_delay: secs("restart_max_delay_sec", c.restart_max_delay_sec, 30.0)?,
        restart_reset: secs("restart_reset_sec", c.restart_reset_sec, 10.0)?,
        start_limit_burst: c.start_limit_burst.unwrap_or(5).max(1),
        start_limit_interval: secs("start_limit_interval_sec", c.start_limit_interval_sec, 10.0)?,
        timeout_start: secs("timeout_start_sec", c.timeout_start_sec, 90.0)?,
        timeout_stop: secs("timeout_stop_sec", c.timeout_stop_sec, 90.0)?,
        kill_signal,
        send_sigkill: c.send_sigkill.unwrap_or(true),
        nice,
        replicas,
        state_directory: c.state_directory.unwrap_or_default(),
        render: c.render.unwrap_or_default(),
        exec_start_pre: c.exec_start_pre.unwrap_or_default(),
        condition_path_exists: c.condition_path_exists,
    })
}

fn check_dependencies(
    specs: &[UnitSpec],
    key: &dyn Fn(&str, &str) -> String,
) -> Result<(), KeyedProblem> {
    for s in specs {
        for (field, deps) in [("requires", &s.requires), ("after", &s.after)] {
            for d in deps {
                if d == &s.name {
                    return Err((
                        key(&s.name, field),
                        format!("unit `{}` cannot depend on itself", s.name),
                    ));
                }
                if !specs.iter().any(|o| &o.name == d) {
                    let why = if DEFAULT_UNITS.contains(&d.as_str()) {
                        "is disabled"
                    } else {
                        "is not defined"
                    };
                    return Err((
                        key(&s.name, field),
                        format!("unit `{d}` {why} in this instance"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Kahn's algorithm, stable in declaration order; a leftover means a cycle, which
/// is then traced for the message.
fn topo_order(
    specs: Vec<UnitSpec>,
    key: &dyn Fn(&str, &str) -> String,
) -> Result<Vec<UnitSpec>, KeyedProblem> {
    let deps = |s: &UnitSpec| -> Vec<String> {
        s.requires.iter().chain(s.after.iter()).cloned().collect()
    };
    let mut done: Vec<String> = Vec::new();
    let mut ordered = Vec::new();
    let mut rest = specs;
    while !rest.is_empty() {
        let pos = rest
            .iter()
            .position(|s| deps(s).iter().all(|d| done.contains(d)));
        match pos {
            Some(p) => {
                let s = rest.remove(p);
                done.push(s.name.clone());
                ordered.push(s);
            }
            None => {
                // Follow unfinished dependencies from the first stuck unit until one repeats.
                let mut path = vec![rest[0].name.clone()];
                loop {
                    let cur = rest
                        .iter()
                        .find(|s| &s.name == path.last().unwrap())
                        .unwrap();
                    let next = deps(cur).into_iter().find(|d| !done.contains(d)).unwrap();
                    if let Some(start) = path.iter().position(|p| p == &next) {
                        let mut cycle = path[start..].to_vec();
                        cycle.push(next);
                        let field = if cur.requires.contains(cycle.last().unwrap()) {
                            "requires"
                        } else {
                            "after"
                        };
                        return Err((
                            key(&cycle[0], field),
                            format!("dependency cycle: {}", cycle.join(" -> ")),
                        ));
                    }
                    path.push(next);
                }
            }
        }
    }
    Ok(ordered)
}

fn current_user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "nobody".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(toml_text: &str) -> Result<Plan, ConfigError> {
        let config = toml::from_str(toml_text).unwrap();
        let loaded = Loaded {
            config,
            source: "test.toml".into(),
        };
        build(&loaded, Some(Path::new("/tmp/applianced-plan-test")))
    }

    const BASE: &str = "[[instance]]\nname = \"a\"\n[instance.units.mariadb]\nenabled = false\n[instance.units.redis]\nenabled = false\n[instance.units.php-fpm]\nenabled = false\n[instance.units.queue-worker]\nenabled = false\n";

    #[test]
    fn an_exec_start_pre_step_runs_only_when_its_condition_exists_and_its_skip_path_does_not() {
        let dir = std::env::temp_dir().join(format!("applianced-pre-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let there = Some(dir.clone());
        let missing = Some(dir.join("missing"));
        let step = |condition: &Option<PathBuf>, skip: &Option<PathBuf>| RenderedPre {
            program: "true".into(),
            args: vec![],
            skip_if_exists: skip.clone(),
            condition_path_exists: condition.clone(),
        };
        assert!(step(&None, &None).applies());
        assert!(step(&there, &None).applies());
        assert!(step(&there, &missing).applies());
        assert!(!step(&missing, &None).applies(), "missing condition path");
        assert!(!step(&there, &there).applies(), "skip path exists");
        assert!(!step(&None, &there).applies(), "skip path exists");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn after_a_disabled_shipped_unit_is_ordering_only_but_after_a_typo_is_refused() {
        let p = plan(&format!(
            "{BASE}[instance.units.w]\ncommand = \"sleep\"\nafter = [\"mariadb\"]\n"
        ))
        .unwrap();
        assert!(p.instances[0].units[0].after.is_empty());
        let e = plan(&format!(
            "{BASE}[instance.units.w]\ncommand = \"sleep\"\nafter = [\"mariabd\"]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "instance[0].units.w.after");
        assert!(e.problem.contains("`mariabd` is not defined"), "{e}");
    }

    #[test]
    fn units_are_ordered_after_their_dependencies() {
        let p = plan(&format!(
            "{BASE}[instance.units.web]\ncommand = \"sleep\"\nrequires = [\"db\"]\n[instance.units.db]\ncommand = \"sleep\"\n"
        ))
        .unwrap();
        let names: Vec<_> = p.instances[0]
            .units
            .iter()
            .map(|u| u.name.as_str())
            .collect();
        assert_eq!(names, ["db", "web"]);
    }

    #[test]
    fn cycle_is_refused_with_the_path() {
        let e = plan(&format!(
            "{BASE}[instance.units.x]\ncommand = \"sleep\"\nrequires = [\"y\"]\n[instance.units.y]\ncommand = \"sleep\"\nafter = [\"x\"]\n"
        ))
        .unwrap_err();
        assert!(e.problem.contains("dependency cycle"), "{e}");
        assert!(
            e.problem.contains("x -> y -> x") || e.problem.contains("y -> x -> y"),
            "{e}"
        );
    }

    #[test]
    fn missing_program_names_the_command_key() {
        let e = plan(&format!(
            "{BASE}[instance.units.x]\ncommand = \"no-such-program-xyz\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "instance[0].units.x.command");
        assert!(e.problem.contains("not found"), "{e}");
    }

    #[test]
    fn duplicate_instance_names_are_refused() {
        let e = plan(&format!("{BASE}{}", BASE)).unwrap_err();
        assert_eq!(e.key, "instance[1].name");
        assert!(e.problem.contains("duplicate instance name `a`"), "{e}");
    }

    #[test]
    fn requiring_a_disabled_shipped_unit_is_refused() {
        let e = plan("[[instance]]\nname = \"a\"\n[instance.units.mariadb]\nenabled = false\n")
            .unwrap_err();
        assert_eq!(e.key, "instance[0].units.php-fpm.requires");
        assert!(e.problem.contains("`mariadb` is disabled"), "{e}");
    }

    #[test]
    fn template_typo_is_a_config_error() {
        let e = plan(&format!(
            "{BASE}[instance.units.x]\ncommand = \"sleep\"\nargs = [\"{{{{ run_dri }}}}\"]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "instance[0].units.x.args");
    }
}
