//! Kernel modules without udev: a "coldplug" that asks modprobe for every
//! modalias the kernel lists under /sys/devices (virtio-net, the ACPI power
//! button, evdev, ...), plus the filesystems a NoCloud seed may use; then,
//! in the background, again while new devices appear (a bus driver brings
//! its devices).
//! The CPU's own alias (`cpu:type:x86,...`) is left out: it asks for the
//! kernel's crypto accelerators (aesni, ghash, sha, crc32c: each runs its
//! self-tests on load), kvm and cpufreq drivers, none of which an appliance
//! uses (TLS is rustls in user space; ext4 falls back to the generic crc32c;
//! the cloud kernel's intel_pstate and amd_pstate are built in). They took
//! 1.7 s of a 2.4 s coldplug under QEMU TCG, so they were loaded in the
//! background; then, in one CI boot (2026-12-04), loading
//! ghash_clmulni_intel beside applianced creating its cgroups hung both
//! vCPUs in kmem_cache_alloc (soft lockups, PID 1 stuck for good). An
//! operator who wants them can `modprobe` them, or add a system unit that
//! does.
//! Reads /sys; loads modules through modprobe.

use super::console::say;
use super::tools;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Filesystems and input handlers that no modalias asks for.
const ALWAYS: &[&str] = &[
    "evdev",
    "button",
    "vfat",
    "iso9660",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
];

/// Every `modalias` file's content under `root`, not following symlinks
/// (sysfs links back up the tree).
pub fn modaliases(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && depth < 24 {
                stack.push((e.path(), depth + 1));
            } else if ft.is_file() && e.file_name() == "modalias" {
                if let Ok(a) = std::fs::read_to_string(e.path()) {
                    let a = a.trim();
                    if !a.is_empty() {
                        out.insert(a.to_string());
                    }
                }
            }
        }
    }
    out
}

/// Load what the devices present ask for, plus [`ALWAYS`], in one modprobe
/// run; then call `first_pass_done` (the boot goes on: the NIC, the seed's
/// devices and the power button are there) and keep looking for devices the
/// new drivers brought (a bus's children) in the background. Errors (an
/// alias no module serves, which is most of them) are expected and ignored.
///
/// The follow-up passes used to run before the boot went on: two more walks
/// of /sys/devices and 200 ms of waiting for new buses, ~0.5 s under
/// emulation, for devices (serio, input) that no boot step needs. Their
/// modprobe runs are detached: the daemon's reaper may be running by then,
/// so nothing here may wait on a child (see [`tools`]).
pub fn coldplug(first_pass_done: impl FnOnce()) {
    let mut seen = BTreeSet::new();
    let (cpu, devices) = new_aliases(&mut seen);
    for (i, chunk) in devices.chunks(100).enumerate() {
        let mut args = vec!["-a", "-q", "-b"];
        args.extend(chunk.iter().map(String::as_str));
        if i == 0 {
            args.extend(ALWAYS);
        }
        let _ = tools::run("modprobe", &args, Duration::from_secs(60));
    }
    if devices.is_empty() {
        let mut args = vec!["-a", "-q", "-b"];
        args.extend(ALWAYS);
        let _ = tools::run("modprobe", &args, Duration::from_secs(60));
    }
    say(format!(
        "coldplug: {} device aliases offered to modprobe ({} CPU feature alias left out)",
        devices.len(),
        cpu.len()
    ));
    first_pass_done();
    for _pass in 0..2 {
        // Give new buses a moment to register their devices.
        std::thread::sleep(Duration::from_millis(300));
        let (_cpu, devices) = new_aliases(&mut seen);
        if devices.is_empty() {
            break;
        }
        detached_modprobe(&devices);
    }
}

/// The aliases under /sys/devices not offered yet: (the CPU's, the devices').
fn new_aliases(seen: &mut BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    modaliases(Path::new("/sys/devices"))
        .into_iter()
        .filter(|a| seen.insert(a.clone()))
        .partition(|a| is_cpu_alias(a))
}

/// `nice -n 19 modprobe -a ALIASES`, not waited for: at the lowest
/// priority, so the units starting meanwhile come first.
fn detached_modprobe(aliases: &[String]) {
    if aliases.is_empty() {
        return;
    }
    let mut args = vec!["-n", "19", "modprobe", "-a", "-q", "-b"];
    args.extend(aliases.iter().map(String::as_str));
    if let Err(e) = tools::spawn_detached("nice", &args) {
        say(format!("coldplug: devices found later: {e}"));
    }
}

/// The CPU's feature alias: modules that accelerate or manage the CPU, none
/// of which a device needs to work (left out, see the module doc).
fn is_cpu_alias(alias: &str) -> bool {
    alias.starts_with("cpu:")
}
