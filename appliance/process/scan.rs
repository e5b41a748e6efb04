//! Finding what a crashed applianced left running.
//!
//! Every child (and, by inheritance, every grandchild) carries
//! `APPLIANCED_SCOPE=DATA_DIR:INSTANCE/UNIT` in its environment. On start,
//! applianced looks for processes with its own data dir's prefix and stops them
//! before starting anything, so two MariaDBs never open the same data dir.
//! Read-only: it only looks at `/proc`.

use std::ffi::OsStr;

/// The environment variable that marks a process as belonging to a unit.
pub const SCOPE_VAR: &str = "APPLIANCED_SCOPE";

/// The marker value for one unit.
pub fn scope_value(data_dir: &std::path::Path, instance: &str, unit: &str) -> String {
    format!("{}:{instance}/{unit}", data_dir.display())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub pid: i32,
    pub pgid: i32,
    /// `INSTANCE/UNIT`
    pub unit: String,
}

/// Processes whose scope starts with `DATA_DIR:`, excluding ourselves.
pub fn find(data_dir: &std::path::Path) -> Vec<Leftover> {
    let prefix = format!("{}:", data_dir.display());
    let me = std::process::id() as i32;
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for p in all.flatten() {
        if p.pid == me {
            continue;
        }
        let Ok(env) = p.environ() else { continue };
        let Some(scope) = env.get(OsStr::new(SCOPE_VAR)).and_then(|v| v.to_str()) else {
            continue;
        };
        let Some(unit) = scope.strip_prefix(&prefix) else {
            continue;
        };
        let Ok(stat) = p.stat() else { continue };
        // Zombies are only waiting to be reaped; nothing to stop.
        if stat.state == 'Z' {
            continue;
        }
        found.push(Leftover {
            pid: p.pid,
            pgid: stat.pgrp,
            unit: unit.to_string(),
        });
    }
    found
}

/// Whether `pid` still exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match procfs::process::Process::new(pid).and_then(|p| p.stat()) {
        Ok(stat) => stat.state != 'Z',
        Err(_) => false,
    }
}
