//! Kernel modules without udev: a "coldplug" that asks modprobe for every
//! modalias the kernel lists under /sys/devices (virtio-net, the ACPI power
//! button, evdev, ...), repeated while new devices appear (a bus driver brings
//! its devices), plus the filesystems a NoCloud seed may use.
//! The CPU's own alias (`cpu:type:x86,...`) is different: it asks for the
//! crypto accelerators (each runs its self-tests on load), kvm and cpufreq,
//! which nothing in the boot needs and which took 1.7 s of a 2.4 s coldplug
//! under QEMU TCG. That modprobe runs in the background instead.
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

/// Load what the devices present ask for. Errors (an alias no module
/// serves, which is most of them) are expected and ignored.
pub fn coldplug() {
    let mut seen = BTreeSet::new();
    let mut later = Vec::new();
    for _pass in 0..3 {
        let (cpu, new): (Vec<String>, Vec<String>) = modaliases(Path::new("/sys/devices"))
            .into_iter()
            .filter(|a| seen.insert(a.clone()))
            .partition(|a| is_cpu_alias(a));
        later.extend(cpu);
        if new.is_empty() {
            break;
        }
        for chunk in new.chunks(100) {
            let mut args = vec!["-a", "-q", "-b"];
            args.extend(chunk.iter().map(String::as_str));
            let _ = tools::run("modprobe", &args, Duration::from_secs(60));
        }
        // Give new buses a moment to register their devices.
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut args = vec!["-a", "-q", "-b"];
    args.extend(ALWAYS);
    let _ = tools::run("modprobe", &args, Duration::from_secs(60));
    if !later.is_empty() {
        // At the lowest priority: the units starting meanwhile come first.
        let mut args = vec!["-n", "19", "modprobe", "-a", "-q", "-b"];
        args.extend(later.iter().map(String::as_str));
        if let Err(e) = tools::spawn_detached("nice", &args) {
            say(format!("coldplug: CPU feature modules: {e}"));
        }
    }
    say(format!(
        "coldplug: {} device aliases offered to modprobe ({} CPU alias in the background)",
        seen.len() - later.len(),
        later.len()
    ));
}

/// The CPU's feature alias: modules that accelerate or manage the CPU, none
/// of which a device needs to work.
fn is_cpu_alias(alias: &str) -> bool {
    alias.starts_with("cpu:")
}
