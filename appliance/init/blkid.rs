//! Which filesystem is on which block device: one `blkid` probe of every
//! device, kept until the set of block devices changes.
//!
//! PID-1 mode asks several questions of it at boot: where the data partition
//! is and its type, then whether a NoCloud seed is attached and its type.
//! Each `blkid` run probes every device; under emulation each one cost
//! 0.1-0.2 s of a boot (five of them ran before the first unit started). Now
//! one run answers them all, and another runs only when a driver loaded since
//! has brought a new device (a CD-ROM behind a controller module, say).
//! No udev here, so no /dev/disk/by-label and no trusted cache: the probe
//! reads the devices themselves (`-c /dev/null`).
//! Reads /sys/class/block; runs blkid through [`super::tools`].

use super::tools;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// One device's probed tags (`DEVNAME`, `LABEL`, `UUID`, `TYPE`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub device: String,
    tags: BTreeMap<String, String>,
}

impl Probed {
    /// The filesystem type (`ext4`, `vfat`, `iso9660`).
    pub fn fstype(&self) -> Option<&str> {
        self.tags.get("TYPE").map(String::as_str)
    }

    /// Does this device match a `KEY=value` token (`LABEL=CIDATA`,
    /// `UUID=...`)? UUIDs compare without regard to case, as blkid's do.
    fn matches(&self, token: &str) -> bool {
        let Some((key, want)) = token.split_once('=') else {
            return false;
        };
        match self.tags.get(key) {
            Some(v) if key.ends_with("UUID") => v.eq_ignore_ascii_case(want),
            Some(v) => v == want,
            None => false,
        }
    }
}

/// The probe last run, and the block devices there were when it ran.
static CACHE: Mutex<Option<(Vec<String>, Vec<Probed>)>> = Mutex::new(None);

/// The devices whose filesystem matches `token` (`LABEL=`, `UUID=`, ...).
pub fn find(token: &str) -> Vec<Probed> {
    probe_all()
        .into_iter()
        .filter(|p| p.matches(token))
        .collect()
}

/// The filesystem type on `device`, if the probe saw one.
pub fn fstype(device: &str) -> Option<String> {
    probe_all()
        .into_iter()
        .find(|p| p.device == device)
        .and_then(|p| p.fstype().map(str::to_string))
}

/// Every device's tags, probed again only when /sys/class/block changed.
fn probe_all() -> Vec<Probed> {
    let devices = block_devices();
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((seen, probed)) = cache.as_ref() {
        if *seen == devices {
            return probed.clone();
        }
    }
    let probed = match tools::run(
        "blkid",
        &["-c", "/dev/null", "-o", "export"],
        Duration::from_secs(20),
    ) {
        // Exit 2: no device has a filesystem blkid knows.
        Ok(o) => parse_export(&o.stdout),
        Err(_) => Vec::new(),
    };
    *cache = Some((devices, probed.clone()));
    probed
}

/// The names under /sys/class/block, sorted.
fn block_devices() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `blkid -o export`: `KEY=value` lines, one blank line between devices;
/// values shell-escaped (`LABEL=my\ disk`).
fn parse_export(text: &str) -> Vec<Probed> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let tags: BTreeMap<String, String> = block
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), unescape(v.trim())))
            .collect();
        if let Some(device) = tags.get("DEVNAME").cloned() {
            out.push(Probed { device, tags });
        }
    }
    out
}

/// Undo blkid's shell escaping: a backslash keeps the character after it.
fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORT: &str = "DEVNAME=/dev/vda3\nLABEL=appliance-root\nUUID=0c6b-AAAA\nBLOCK_SIZE=4096\nTYPE=ext4\n\nDEVNAME=/dev/vdb\nSEC_TYPE=msdos\nLABEL_FATBOOT=CIDATA\nLABEL=CIDATA\nUUID=2417-535B\nTYPE=vfat\n\nDEVNAME=/dev/sr0\nLABEL=my\\ seed\nTYPE=iso9660\n";

    #[test]
    fn export_output_gives_each_device_its_tags() {
        let p = parse_export(EXPORT);
        assert_eq!(
            p.iter().map(|p| p.device.as_str()).collect::<Vec<_>>(),
            ["/dev/vda3", "/dev/vdb", "/dev/sr0"]
        );
        assert_eq!(p[0].fstype(), Some("ext4"));
        assert_eq!(p[1].fstype(), Some("vfat"));
        assert_eq!(p[2].tags["LABEL"], "my seed", "escaped space undone");
    }

    #[test]
    fn tokens_match_the_whole_tag_and_uuids_ignore_case() {
        let p = parse_export(EXPORT);
        assert!(p[1].matches("LABEL=CIDATA"));
        assert!(!p[1].matches("LABEL=cidata"), "labels are case-sensitive");
        assert!(!p[1].matches("LABEL=CIDAT"));
        assert!(
            !p[1].matches("LABEL_FATBOOT"),
            "a token without = matches nothing"
        );
        assert!(p[0].matches("UUID=0c6b-aaaa"));
        assert!(!p[0].matches("PARTUUID=0c6b-AAAA"), "absent tag");
    }

    #[test]
    fn no_output_means_no_devices() {
        assert!(parse_export("").is_empty());
        assert!(parse_export("TYPE=ext4\n").is_empty(), "no DEVNAME");
    }
}
