//! One unit's config -> its checked [`UnitSpec`], and the unit graph: every
//! dependency names a unit that exists, no cycles, and a start order
//! (topological, stable in definition order). Touches nothing.

use super::{DEFAULT_UNITS, KeyedProblem, UnitSpec};
use crate::config::{Readiness, RestartPolicy, UnitConfig};
use crate::process::parse_signal;
use nix::sys::signal::Signal;
use std::time::Duration;

pub(super) fn unit_spec(
    name: &str,
    c: UnitConfig,
    ukey: &dyn Fn(&str) -> String,
) -> Result<UnitSpec, KeyedProblem> {
    let secs = |field: &str, v: Option<f64>, default: f64| -> Result<Duration, KeyedProblem> {
        let v = v.unwrap_or(default);
        // `try_`: a finite but huge value (1e30) overflows a Duration, and
        // `from_secs_f64` would panic on it.
        Duration::try_from_secs_f64(v).map_err(|_| {
            (
                ukey(field),
                format!("{v} is not a duration in seconds (must be >= 0 and finite)"),
            )
        })
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
    let cpu_weight =
        crate::cgroup::check_weight(c.cpu_weight).map_err(|p| (ukey("cpu_weight"), p))?;
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
        start_early: c.start_early.unwrap_or(false),
        start_idle: Some(secs("start_idle_sec", c.start_idle_sec, 0.0)?).filter(|d| !d.is_zero()),
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
        cpu_weight,
        replicas,
        state_directory: c.state_directory.unwrap_or_default(),
        render: c.render.unwrap_or_default(),
        exec_start_pre: c.exec_start_pre.unwrap_or_default(),
        condition_path_exists: c.condition_path_exists,
    })
}

pub(super) fn check_dependencies(
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
pub(super) fn topo_order(
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
