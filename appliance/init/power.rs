//! The ACPI power button without udev or acpid: input devices whose key
//! capabilities include KEY_POWER (read from sysfs) are opened at
//! /dev/input/eventN and read on a thread each; a press asks for a poweroff
//! (a VPS panel's "shutdown", QEMU's `system_powerdown`). Reads sysfs and
//! /dev/input only.

use crate::daemon::StopAction;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

const EV_KEY: u16 = 1;
const KEY_POWER: usize = 116;

/// Does a sysfs key-capability bitmap (`capabilities/key`: hex words, most
/// significant first, each one `unsigned long`) include `bit`?
pub fn bitmap_has(caps: &str, bit: usize) -> bool {
    let words: Vec<&str> = caps.split_whitespace().collect();
    let bits = usize::BITS as usize;
    let idx = bit / bits;
    if idx >= words.len() {
        return false;
    }
    u64::from_str_radix(words[words.len() - 1 - idx], 16)
        .is_ok_and(|w| w & (1 << (bit % bits)) != 0)
}

/// Event devices (`event3`) that can send KEY_POWER.
fn power_buttons() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/input") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let caps = std::fs::read_to_string(e.path().join("device/capabilities/key")).ok()?;
            (name.starts_with("event") && bitmap_has(&caps, KEY_POWER)).then_some(name)
        })
        .collect()
}

/// Watch for power buttons for as long as the process lives: devices are
/// looked for every 2 s (modules and device nodes appear after boot).
pub fn watch(stop: mpsc::Sender<StopAction>) {
    let _ = std::thread::Builder::new()
        .name("power-button".into())
        .spawn(move || {
            let mut watched = BTreeSet::new();
            loop {
                for dev in power_buttons() {
                    if watched.insert(dev.clone()) {
                        let stop = stop.clone();
                        let _ = std::thread::Builder::new()
                            .name(format!("power-{dev}"))
                            .spawn(move || read_presses(&dev, stop));
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        });
}

fn read_presses(dev: &str, stop: mpsc::Sender<StopAction>) {
    let path = Path::new("/dev/input").join(dev);
    let Ok(mut f) = std::fs::File::open(&path) else {
        return;
    };
    super::console::say(format!("watching {} for the power button", path.display()));
    // struct input_event: struct timeval, u16 type, u16 code, i32 value.
    let tv = std::mem::size_of::<libc::timeval>();
    let mut ev = vec![0u8; tv + 8];
    while f.read_exact(&mut ev).is_ok() {
        let kind = u16::from_ne_bytes([ev[tv], ev[tv + 1]]);
        let code = u16::from_ne_bytes([ev[tv + 2], ev[tv + 3]]);
        let value = i32::from_ne_bytes([ev[tv + 4], ev[tv + 5], ev[tv + 6], ev[tv + 7]]);
        if kind == EV_KEY && code as usize == KEY_POWER && value == 1 {
            super::console::say("power button pressed: powering off");
            let _ = stop.blocking_send(StopAction::Poweroff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_power_is_found_in_an_acpi_button_bitmap() {
        // /sys/class/input/input0/capabilities/key of QEMU's ACPI power button.
        assert!(bitmap_has("10000000000000 0", KEY_POWER));
        // A keyboard without it, and an empty bitmap.
        assert!(!bitmap_has("fffffffffffffffe", KEY_POWER));
        assert!(!bitmap_has("0", KEY_POWER));
    }
}
