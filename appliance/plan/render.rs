//! Rendering a planned unit for one start: the template context, every
//! templated field of a unit (program, args, environment, files, readiness,
//! pre-start steps) and program lookup in [`CHILD_PATH`]. Used at plan time
//! with placeholder secrets (so a template error is a config error) and by
//! the supervisor before each start. Reads only the filesystem (programs).

use super::{CHILD_PATH, InstancePlan, UnitSpec};
use crate::assets;
use crate::config::Readiness;
use crate::layout::Layout;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// `[instance.web] php_children`: the php-fpm pool's `pm.max_children`.
    pub php_children: u32,
    /// `[instance.web] php_max_requests`: the pool's `pm.max_requests`.
    pub php_max_requests: u32,
    /// `{{ warm_up }}`: php-fpm's warm-up page once the backends are
    /// ready ("": none).
    pub warm_up: String,
    /// `{{ warm_up_early }}`: the page asked before them ("": none).
    pub warm_up_early: String,
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
            applianced: own_binary().to_string(),
            php_children: inst.php_children,
            php_max_requests: inst.php_max_requests,
            warm_up: inst.warm_up.clone(),
            warm_up_early: inst.warm_up_early.clone(),
        }
    }
}

/// This binary's path, looked up once: a template context is made for every
/// render of every unit start, and the answer never changes.
fn own_binary() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "applianced".into())
    })
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
        Readiness::Listen { address } => {
            let address = r(f, address)?;
            if address.parse::<std::net::SocketAddr>().is_err() {
                return Err(UnitRenderError {
                    field: f,
                    problem: format!(
                        "listen address `{address}` is not IP:PORT (e.g. 127.0.0.1:22 or [::1]:22)"
                    ),
                });
            }
            Readiness::Listen { address }
        }
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
            warm_script,
            warm_uri,
            warm_early_uri,
        } => Readiness::Fastcgi {
            socket: r(f, socket)?,
            path: r(f, path)?,
            response: r(f, response)?,
            warm_script: warm_script.as_ref().map(|s| r(f, s)).transpose()?,
            warm_uri: r(f, warm_uri)?,
            warm_early_uri: r(f, warm_early_uri)?,
        },
        Readiness::Mariadb { socket } => Readiness::Mariadb {
            socket: r(f, socket)?,
        },
        Readiness::Redis { socket, password } => Readiness::Redis {
            socket: r(f, socket)?,
            password: password.as_ref().map(|p| r(f, p)).transpose()?,
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
