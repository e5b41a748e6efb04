//! Kernel modules without udev: a "coldplug" that asks modprobe for every
//! modalias the kernel lists under /sys/devices (virtio-net, the ACPI power
//! button, ...); then, in the background, evdev and the filesystems a
//! NoCloud seed may use, and again while new devices appear (a bus driver
//! brings its devices).
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

/// Filesystems and input handlers that no modalias asks for. Loaded after
/// the first pass, in the background: nothing in the boot waits for them.
/// A seed's mount asks the kernel for its filesystem (and the kernel runs
/// modprobe itself, `/proc/sys/kernel/modprobe`), and the power button
/// watcher looks for new event devices every 2 s ([`super::power`]).
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

/// Load what the devices present ask for, in one modprobe run; then call
/// `first_pass_done` (the boot goes on: the NIC is there) and, in the
/// background, load [`ALWAYS`] and whatever the devices the new drivers
/// brought (a bus's children) ask for. Errors (an alias no module serves,
/// which is most of them) are expected and ignored.
///
/// What the boot waits for is kept to the devices' own drivers: the first
/// pass with [`ALWAYS`] in it loaded 13 modules in ~1 s under emulation,
/// while the data partition (ext4, built in) was long mounted. The
/// follow-up runs are detached: the daemon's reaper may be running by then,
/// so nothing here may wait on a child (see [`tools`]).
pub fn coldplug(first_pass_done: impl FnOnce()) {
    let mut seen = BTreeSet::new();
    let (cpu, devices) = new_aliases(&mut seen);
    for chunk in devices.chunks(100) {
        let mut args = vec!["-a", "-q", "-b"];
        args.extend(chunk.iter().map(String::as_str));
        let _ = tools::run("modprobe", &args, Duration::from_secs(60));
    }
    say(format!(
        "coldplug: {} device aliases offered to modprobe ({} CPU feature alias left out)",
        devices.len(),
        cpu.len()
    ));
    first_pass_done();
    detached_modprobe(ALWAYS);
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
fn detached_modprobe<S: AsRef<str>>(aliases: &[S]) {
    if aliases.is_empty() {
        return;
    }
    let mut args = vec!["-n", "19", "modprobe", "-a", "-q", "-b"];
    args.extend(aliases.iter().map(AsRef::as_ref));
    if let Err(e) = tools::spawn_detached("nice", &args) {
        say(format!("coldplug: devices found later: {e}"));
    }
}

/// The CPU's feature alias: modules that accelerate or manage the CPU, none
/// of which a device needs to work (left out, see the module doc).
fn is_cpu_alias(alias: &str) -> bool {
    alias.starts_with("cpu:")
}
