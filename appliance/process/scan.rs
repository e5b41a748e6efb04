//! Finding what a crashed applianced left running.
//!
//! Two marks, because each alone misses cases:
//! - every child (and, by inheritance, every grandchild) carries
//!   `APPLIANCED_SCOPE=DATA_DIR:INSTANCE/UNIT` in its environment; but programs
//!   that rewrite their process title (php-fpm, redis) clobber `/proc/PID/environ`;
//! - every unit's process group is recorded in `DATA/run/groups/` (pgid and the
//!   leader's start time, so a reused pid is never mistaken for ours) while it runs.
//!
//! On start, applianced stops whatever either mark finds before starting
//! anything, so two MariaDBs never open the same data dir.
//! Touches `/proc` (read) and `DATA/run/groups/`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The environment variable that marks a process as belonging to a unit.
pub const SCOPE_VAR: &str = "APPLIANCED_SCOPE";

/// The marker value for one unit.
pub fn scope_value(data_dir: &Path, instance: &str, unit: &str) -> String {
    format!("{}:{instance}/{unit}", data_dir.display())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub pid: i32,
    pub pgid: i32,
    /// `INSTANCE/UNIT`
    pub unit: String,
}

fn groups_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("run/groups")
}

fn group_file(data_dir: &Path, instance: &str, unit: &str, replica: u32) -> PathBuf {
    groups_dir(data_dir).join(format!("{instance}.{unit}.{replica}"))
}

/// Remember that `pgid` (a freshly spawned leader) belongs to a unit.
pub fn record_group(data_dir: &Path, instance: &str, unit: &str, replica: u32, pgid: i32) {
    let Some(start) = start_time(pgid) else {
        return;
    };
    let dir = groups_dir(data_dir);
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        group_file(data_dir, instance, unit, replica),
        format!("{pgid} {start} {instance}/{unit}\n"),
    );
}

/// The unit's group is gone (stopped, or exited and its leftovers killed).
pub fn forget_group(data_dir: &Path, instance: &str, unit: &str, replica: u32) {
    let _ = std::fs::remove_file(group_file(data_dir, instance, unit, replica));
}

fn start_time(pid: i32) -> Option<u64> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.starttime)
}

/// Processes of this data dir's units (by either mark), excluding ourselves and zombies.
pub fn find(data_dir: &Path) -> Vec<Leftover> {
    let prefix = format!("{}:", data_dir.display());
    // pgid -> (leader start time, unit)
    let mut groups: HashMap<i32, (u64, String)> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir(groups_dir(data_dir)) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let mut it = text.split_whitespace();
            if let (Some(Ok(pgid)), Some(Ok(start)), Some(unit)) = (
                it.next().map(str::parse::<i32>),
                it.next().map(str::parse::<u64>),
                it.next(),
            ) {
                groups.insert(pgid, (start, unit.to_string()));
            }
        }
    }
    let me = std::process::id() as i32;
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for p in all.flatten() {
        if p.pid == me {
            continue;
        }
        let Ok(stat) = p.stat() else { continue };
        if stat.state == 'Z' {
            continue;
        }
        // Started no earlier than the recorded leader: not a recycled pgid.
        if let Some((_, unit)) = groups
            .get(&stat.pgrp)
            .filter(|(start, _)| stat.starttime >= *start)
        {
            found.push(Leftover {
                pid: p.pid,
                pgid: stat.pgrp,
                unit: unit.clone(),
            });
            continue;
        }
        let Ok(env) = p.environ() else { continue };
        let Some(scope) = env.get(OsStr::new(SCOPE_VAR)).and_then(|v| v.to_str()) else {
            continue;
        };
        let Some(unit) = scope.strip_prefix(&prefix) else {
            continue;
        };
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
