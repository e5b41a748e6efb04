//! What kind of PID-1 run this is, decided once at start: whether applianced
//! is pid 1, and whether it owns a real machine (so may mount, load modules,
//! configure the network, set the hostname and remount filesystems). Reads
//! /proc only.

/// The facts every init step checks before touching the system.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    /// Our pid is 1 (of the machine, or of a PID namespace). Only then are
    /// `kill(-1)` and `reboot(2)` used: in a PID namespace the kernel confines
    /// both to it (reboot(2) ends the namespace's init, never the machine).
    pub pid1: bool,
    /// pid 1 of the machine's initial PID namespace and not `--sandbox`:
    /// mounts, modules, hostname, network and the data partition are ours.
    pub owns: bool,
}

impl Machine {
    pub fn detect(sandbox: bool) -> Machine {
        let pid1 = std::process::id() == 1;
        if !pid1 || sandbox {
            return Machine { pid1, owns: false };
        }
        // A fresh kernel may hand us no /proc yet; pid 1 may mount it (in a
        // container that is its own mount namespace's business).
        if !std::path::Path::new("/proc/self").exists() {
            let _ = super::mounts::mount_one(&super::mounts::EARLY[0]);
        }
        Machine {
            pid1,
            owns: in_initial_pid_namespace(),
        }
    }
}

/// The initial PID namespace has the kernel's thread daemon as pid 2; a
/// container's or `unshare --pid`'s namespace does not.
fn in_initial_pid_namespace() -> bool {
    std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd")
}
