//! Per-instance cgroup v2 subtrees: where every child of an instance runs,
//! what bounds it (`memory.max`, `cpu.weight`, `pids.max`, `io.weight`), how
//! an instance is killed whole, and what it uses.
//!
//! Layout under the cgroup2 mount (applianced's own cgroup when it has one,
//! as under systemd with `Delegate=yes`; else a subtree named after the data
//! dir, as in PID-1 mode or a plain root shell):
//!
//! ```text
//! ROOT/                       controllers enabled for the instances
//!   supervisor/               applianced itself, when ROOT is its own cgroup
//!   INSTANCE/                 the instance's limits; controllers enabled below
//!     mariadb/ redis/ php-fpm/ queue-worker/ ...   one leaf per unit
//!     cron/                   scheduler runs
//!     exec/                   `applianced exec` commands
//! ```
//!
//! A child is moved into its leaf by the launcher between fork and exec (a
//! write of "0" to the leaf's `cgroup.procs`, opened by applianced before the
//! fork), so it runs no code of its own outside it and every descendant
//! stays inside: a stop can kill the whole instance through `cgroup.kill`.
//!
//! Where the machine has no usable cgroup v2 (no cgroup2 mount, or one we may
//! not write), instances run without one and the reason is logged once; where
//! a controller is missing (a hybrid v1/v2 host), the limits that need it are
//! reported as not enforced.
//!
//! Touches only the cgroup2 filesystem, under ROOT.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The controllers applianced enables for instances, when the kernel offers them.
const CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "io"];

/// The kernel's `cpu.weight` for a new cgroup (systemd's `CPUWeight=` default).
pub const DEFAULT_CPU_WEIGHT: u32 = 100;

/// A `cpu.weight` or `io.weight` from the config: 1 to 10000, or unset.
pub fn check_weight(w: Option<u32>) -> Result<Option<u32>, String> {
    match w {
        Some(w) if !(1..=10000).contains(&w) => Err(format!(
            "{w} is out of range 1..=10000 ({DEFAULT_CPU_WEIGHT} is the default)"
        )),
        _ => Ok(w),
    }
}

/// Leaf names applianced itself uses under an instance (besides units).
pub const CRON_LEAF: &str = "cron";
pub const EXEC_LEAF: &str = "exec";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io { path: String, source: io::Error },
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A limit that is a number or `max` (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Max {
    Value(u64),
    Unlimited,
}

impl Max {
    fn render(&self) -> String {
        match self {
            Max::Value(v) => v.to_string(),
            Max::Unlimited => "max".into(),
        }
    }
}

/// An instance's resource limits (`[instance.limits]`), checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max` in bytes (systemd's `MemoryMax=`).
    pub memory_max: Option<Max>,
    /// `cpu.weight`, 1-10000, 100 is the default (systemd's `CPUWeight=`).
    pub cpu_weight: Option<u32>,
    /// `pids.max`: tasks (processes and threads) (systemd's `TasksMax=`).
    pub pids_max: Option<Max>,
    /// `io.weight`, 1-10000 (systemd's `IOWeight=`).
    pub io_weight: Option<u32>,
}

impl Limits {
    /// `(controller, file, value)` for every limit that is set.
    fn files(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut v = Vec::new();
        if let Some(m) = self.memory_max {
            v.push(("memory", "memory.max", m.render()));
        }
        if let Some(w) = self.cpu_weight {
            v.push(("cpu", "cpu.weight", w.to_string()));
        }
        if let Some(p) = self.pids_max {
            v.push(("pids", "pids.max", p.render()));
        }
        if let Some(w) = self.io_weight {
            // `default N` sets the weight for every device.
            v.push(("io", "io.weight", format!("default {w}")));
        }
        v
    }
}

/// Parse a byte size: `1073741824`, `512K`, `256M`, `2G`, `1T` (powers of
/// 1024), or `max`.
pub fn parse_bytes(s: &str) -> Result<Max, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("max") || t.eq_ignore_ascii_case("infinity") {
        return Ok(Max::Unlimited);
    }
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ if t[..i].trim().parse::<u64>().is_ok() => {
                    return Err(format!("`{s}`: unknown unit `{c}`; use K, M, G, T or max"));
                }
                _ => return Err(format!("`{s}` is not a size like 512M, 2G or max")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512M, 2G or max"))?;
    n.checked_mul(mult)
        .map(Max::Value)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// The subtree applianced owns.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    dir: PathBuf,
    /// Controllers enabled for the instances (a subset of [`CONTROLLERS`]).
    controllers: Vec<String>,
}

impl CgroupRoot {
    /// Find the cgroup2 mount and take a subtree in it. `name` is the subtree
    /// made when applianced sits in the root cgroup (PID 1, or a root shell on
    /// a host without a service manager). `Ok(None)`: no cgroup2 here.
    pub fn detect(name: &str) -> Result<Option<CgroupRoot>, CgroupError> {
        let Some(mount) = cgroup2_mount() else {
            return Ok(None);
        };
        let own = own_cgroup().unwrap_or_else(|| "/".into());
        let own_dir = mount.join(own.trim_start_matches('/'));
        let dir = if own == "/" {
            // The root cgroup lists every controller; a child sees only those
            // the root enables for its children.
            enable_controllers(&mount)?;
            let dir = mount.join(name);
            mkdir(&dir)?;
            dir
        } else {
            // Our own cgroup (a delegated service cgroup): processes may not sit
            // beside child cgroups that have controllers, so applianced moves
            // itself into a leaf of its own first.
            let sup = own_dir.join("supervisor");
            mkdir(&sup)?;
            let procs = sup.join("cgroup.procs");
            std::fs::write(&procs, std::process::id().to_string()).map_err(at(&procs))?;
            own_dir
        };
        let controllers = enable_controllers(&dir)?;
        Ok(Some(CgroupRoot { dir, controllers }))
    }

    /// A root at `dir`, which must exist (tests).
    pub fn at_dir(dir: PathBuf) -> Result<CgroupRoot, CgroupError> {
        let controllers = enable_controllers(&dir)?;
        Ok(CgroupRoot { dir, controllers })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    /// The cgroup of `instance`, made if missing, with `limits` written.
    /// Limits whose controller is missing are listed in
    /// [`InstanceCgroup::not_enforced`], not an error: the caller says so.
    pub fn instance(&self, instance: &str, limits: &Limits) -> Result<InstanceCgroup, CgroupError> {
        let dir = self.dir.join(instance);
        mkdir(&dir)?;
        let mut not_enforced = Vec::new();
        for (controller, file, value) in limits.files() {
            if !self.controllers.iter().any(|c| c == controller) {
                not_enforced.push(format!("{file} (no {controller} controller)"));
                continue;
            }
            let path = dir.join(file);
            std::fs::write(&path, &value).map_err(at(&path))?;
        }
        // Per-unit usage (memory.current, ...) needs the controllers one level down.
        let wanted: Vec<String> = self.controllers.clone();
        write_subtree_control(&dir, &wanted)?;
        Ok(InstanceCgroup { dir, not_enforced })
    }

    /// At start, before any unit: kill what a crashed applianced left in the
    /// subtree (every leaf but `exec`, whose commands an operator started and
    /// which outlive a daemon restart), and remove the cgroups of instances
    /// not in `keep` (removed from the config). Returns how many cgroups held
    /// processes.
    pub async fn clear_leftovers(&self, keep: &[String]) -> usize {
        let mut killed = 0;
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.file_type().is_ok_and(|t| t.is_dir()) || name == "supervisor" {
                continue;
            }
            let kept = keep.contains(&name);
            let inst = InstanceCgroup {
                dir: e.path(),
                not_enforced: Vec::new(),
            };
            let Ok(leaves) = std::fs::read_dir(inst.dir()) else {
                continue;
            };
            for leaf in leaves.flatten() {
                if !leaf.file_type().is_ok_and(|t| t.is_dir())
                    || (kept && leaf.file_name() == EXEC_LEAF)
                {
                    continue;
                }
                let cg = InstanceCgroup {
                    dir: leaf.path(),
                    not_enforced: Vec::new(),
                };
                if cg.populated() {
                    killed += 1;
                    if let Err(e) = cg.kill().await {
                        tracing::warn!(cgroup = %cg.dir.display(), error = %e, "killing a leftover cgroup");
                    }
                }
            }
            if !kept {
                inst.remove();
            }
        }
        killed
    }

    /// Remove the (empty) subtree at shutdown, leaving the machine as found.
    pub fn remove_if_empty(&self) {
        if self.dir.join("supervisor").exists() {
            return; // our own service cgroup: the service manager owns it
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One instance's cgroup.
#[derive(Debug, Clone)]
pub struct InstanceCgroup {
    dir: PathBuf,
    /// Configured limits the machine cannot apply, with the reason.
    pub not_enforced: Vec<String>,
}

/// What an instance uses, read from its cgroup.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// CPU time since the cgroup was made (`cpu.stat` usage_usec).
    pub cpu_usec: u64,
    /// CPU over the last few seconds, 100 = one core busy (filled in by
    /// the supervisor's sampler; `None` until two samples exist).
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// `memory.current`; without the memory controller, the processes' resident sets summed.
    pub memory_bytes: Option<u64>,
    /// `pids.current` (tasks), or the processes listed when there is no pids
    /// controller.
    pub pids: u64,
    /// Bytes read and written (`io.stat`), when the io controller is there.
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
}

impl InstanceCgroup {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The leaf for `name` (a unit, [`CRON_LEAF`] or [`EXEC_LEAF`]), made if
    /// missing, with its `cpu.weight` set to `cpu_weight` (the kernel's
    /// default 100 when `None`, so a setting removed from the config does not
    /// linger in a leaf made earlier).
    ///
    /// Why a weight per leaf: the CPU is shared between sibling cgroups by
    /// their weights first, and a process's nice value only counts against
    /// the others in its own cgroup. Eight `nice = 10` queue workers in
    /// their leaf got as much CPU as php-fpm in its own, at boot while they
    /// load the framework beside the first web requests. Without the cpu
    /// controller (a hybrid v1/v2 host) there is no `cpu.weight` to write and
    /// nothing is applied.
    pub fn leaf(&self, name: &str, cpu_weight: Option<u32>) -> io::Result<PathBuf> {
        let dir = self.dir.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let weight = dir.join("cpu.weight");
        if weight.exists() {
            let value = cpu_weight.unwrap_or(DEFAULT_CPU_WEIGHT).to_string();
            std::fs::write(&weight, value)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", weight.display())))?;
        }
        Ok(dir)
    }

    /// True while any process is in the instance's cgroup or below.
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|s| s.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// SIGKILL every process in the instance's cgroup, and wait (up to 5 s)
    /// until it is empty. `cgroup.kill` (Linux 5.14+) reaches processes
    /// forked while it runs; older kernels get a kill-and-rescan loop.
    pub async fn kill(&self) -> io::Result<()> {
        let kill_file = self.dir.join("cgroup.kill");
        let deadline = Instant::now() + Duration::from_secs(5);
        let has_kill = kill_file.exists();
        while self.populated() {
            if has_kill {
                std::fs::write(&kill_file, "1")?;
            } else {
                for pid in self.pids_recursive() {
                    crate::process::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} still has processes after 5 s", self.dir.display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Every process in the instance's cgroup tree.
    pub fn pids_recursive(&self) -> Vec<i32> {
        let mut out = Vec::new();
        collect_pids(&self.dir, &mut out);
        out
    }

    /// Remove the instance's cgroup and its leaves (they must be empty).
    pub fn remove(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// The whole instance's use.
    pub fn usage(&self) -> Usage {
        usage_at(&self.dir)
    }

    /// One leaf's use (a unit's replicas together, cron runs, exec), when
    /// the leaf exists.
    pub fn leaf_usage(&self, name: &str) -> Option<Usage> {
        let dir = self.dir.join(name);
        dir.is_dir().then(|| usage_at(&dir))
    }
}

fn usage_at(dir: &Path) -> Usage {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let cpu_usec = read("cpu.stat")
        .and_then(|s| keyed(&s, "usage_usec"))
        .unwrap_or(0);
    // Without the memory controller (hybrid hierarchies, where v2 has no
    // controllers), the resident sets of the processes, summed: pages they
    // share (php-fpm's opcache) count once per process.
    let memory_bytes = read("memory.current")
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| {
            let mut pids = Vec::new();
            collect_pids(dir, &mut pids);
            let page = procfs::page_size();
            let rss = pids
                .iter()
                .filter_map(|&pid| procfs::process::Process::new(pid).ok()?.stat().ok())
                .map(|st| st.rss * page)
                .sum::<u64>();
            (!pids.is_empty()).then_some(rss)
        });
    let pids = read("pids.current")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            let mut pids = Vec::new();
            collect_pids(dir, &mut pids);
            pids.len() as u64
        });
    let (io_read_bytes, io_write_bytes) = match read("io.stat") {
        Some(s) => {
            let (mut r, mut w) = (0u64, 0u64);
            for line in s.lines() {
                for kv in line.split_whitespace().skip(1) {
                    match kv.split_once('=') {
                        Some(("rbytes", v)) => r += v.parse::<u64>().unwrap_or(0),
                        Some(("wbytes", v)) => w += v.parse::<u64>().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            (Some(r), Some(w))
        }
        None => (None, None),
    };
    Usage {
        cpu_usec,
        cpu_percent: None,
        memory_bytes,
        pids,
        io_read_bytes,
        io_write_bytes,
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

/// `key N` in a flat-keyed file like `cpu.stat`.
fn keyed(s: &str, key: &str) -> Option<u64> {
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(at(dir)(e)),
    }
}

/// Enable, in `dir`'s `cgroup.subtree_control`, every controller of
/// [`CONTROLLERS`] that `dir` has; returns those enabled.
fn enable_controllers(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let path = dir.join("cgroup.controllers");
    let have = std::fs::read_to_string(&path).map_err(at(&path))?;
    let wanted: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| have.split_whitespace().any(|h| h == **c))
        .map(|c| c.to_string())
        .collect();
    write_subtree_control(dir, &wanted)?;
    Ok(wanted)
}

fn write_subtree_control(dir: &Path, controllers: &[String]) -> Result<(), CgroupError> {
    if controllers.is_empty() {
        return Ok(());
    }
    let path = dir.join("cgroup.subtree_control");
    let line = controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(&path, line).map_err(at(&path))
}

/// Where cgroup2 is mounted: `/sys/fs/cgroup` on a unified host, its
/// `unified/` on a hybrid one, else any cgroup2 line of mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<PathBuf> = Vec::new();
    for line in info.lines() {
        // ... mount_point ... - fstype source options
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = pre.split_whitespace().nth(4) {
                found.push(PathBuf::from(mp.replace("\\040", " ")));
            }
        }
    }
    for preferred in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Some(p) = found.iter().find(|p| p.as_os_str() == preferred) {
            return Some(p.clone());
        }
    }
    found.into_iter().next()
}

/// Our cgroup v2 path, from the `0::PATH` line of `/proc/self/cgroup`.
fn own_cgroup() -> Option<String> {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// The subtree name for a data dir: `applianced` for the default one, else
/// `applianced-` and a short hash, so appliances with different data dirs on
/// one host (tests, several installs) never share a subtree.
pub fn root_name(data_dir: &Path, default_data_dir: &Path) -> String {
    if data_dir == default_data_dir {
        return "applianced".into();
    }
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("applianced-{:08x}", h as u32)
}

#[cfg(test)]
#[path = "cgroup_tests.rs"]
mod tests;
