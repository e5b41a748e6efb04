//! Kernel settings PID-1 mode applies at boot, before any unit starts:
//! `[system] transparent_hugepages` and `[system] sysctl` (see
//! [`crate::plan::system::DEFAULT_SYSCTL`] and
//! [`crate::plan::system::DEFAULT_THP`] for the defaults and why). What
//! systemd-sysctl and a tuned profile do on other machines. A setting the
//! kernel refuses is reported on the console and the boot goes on.
//!
//! Touches /proc/sys and /sys/kernel/mm/transparent_hugepage only.

use super::console::say;
use crate::plan::system::HostPlan;
use std::path::Path;

const THP: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// Apply `host`'s kernel settings under `proc_sys` and `thp` (the real
/// paths at boot; a scratch dir in tests). Returns what was set, as
/// `name=value`, for the console line.
pub fn apply_at(host: &HostPlan, proc_sys: &Path, thp: &Path) -> Vec<String> {
    let mut set = Vec::new();
    if let Some(mode) = host.transparent_hugepages {
        match std::fs::write(thp, mode) {
            Ok(()) => set.push(format!("transparent_hugepage={mode}")),
            Err(e) => say(format!(
                "cannot set transparent huge pages to {mode} ({}): {e}",
                thp.display()
            )),
        }
    }
    for (name, value) in &host.sysctl {
        let path = proc_sys.join(name.replace('.', "/"));
        match std::fs::write(&path, value) {
            Ok(()) => set.push(format!("{name}={value}")),
            Err(e) => say(format!(
                "cannot set {name} = {value} ({}): {e}",
                path.display()
            )),
        }
    }
    set
}

/// [`apply_at`] on the machine, with one console line for what took.
pub fn apply(host: &HostPlan) {
    let set = apply_at(host, Path::new("/proc/sys"), Path::new(THP));
    if !set.is_empty() {
        say(format!("kernel: {}", set.join(", ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SystemConfig;

    #[test]
    fn the_defaults_and_the_configs_settings_are_written_where_the_kernel_reads_them() {
        let tmp = tempfile::tempdir().unwrap();
        let proc_sys = tmp.path().join("sys");
        std::fs::create_dir_all(proc_sys.join("vm")).unwrap();
        std::fs::create_dir_all(proc_sys.join("net/core")).unwrap();
        let thp = tmp.path().join("thp");
        let mut c = SystemConfig::default();
        c.sysctl
            .insert("net.core.somaxconn".into(), " 4096 ".into());
        let host = crate::plan::system::host(&c).unwrap();
        let set = apply_at(&host, &proc_sys, &thp);
        assert_eq!(
            set,
            [
                "transparent_hugepage=madvise",
                "net.core.somaxconn=4096",
                "vm.overcommit_memory=1"
            ]
        );
        assert_eq!(std::fs::read_to_string(&thp).unwrap(), "madvise");
        assert_eq!(
            std::fs::read_to_string(proc_sys.join("vm/overcommit_memory")).unwrap(),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(proc_sys.join("net/core/somaxconn")).unwrap(),
            "4096"
        );
    }

    #[test]
    fn a_setting_the_kernel_lacks_is_reported_and_the_rest_still_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let proc_sys = tmp.path().join("sys");
        std::fs::create_dir_all(proc_sys.join("vm")).unwrap();
        let mut c = SystemConfig::default();
        c.sysctl.insert("kernel.no_such_knob".into(), "1".into());
        c.transparent_hugepages = Some("kernel".into());
        let host = crate::plan::system::host(&c).unwrap();
        let set = apply_at(&host, &proc_sys, &tmp.path().join("thp"));
        assert_eq!(set, ["vm.overcommit_memory=1"]);
        assert!(
            !tmp.path().join("thp").exists(),
            "`kernel` leaves THP alone"
        );
    }
}
