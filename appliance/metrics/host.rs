//! applianced's own process (`process_*`, as every Prometheus client
//! publishes it) and the data partition's space (`node_filesystem_*`, under
//! node_exporter's names and labels).
//!
//! Reads `/proc/self` and `/proc/self/mountinfo`, and `statvfs` of the data dir.

use super::encode::{Families, labels};
use std::path::Path;

/// Add applianced's own CPU, memory, open files and start time.
pub fn add_process(f: &mut Families) {
    let Ok(me) = procfs::process::Process::myself() else {
        return;
    };
    if let Ok(stat) = me.stat() {
        let tps = procfs::ticks_per_second() as f64;
        f.counter(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            vec![],
            (stat.utime + stat.stime) as f64 / tps,
        );
        f.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            vec![],
            (stat.rss * procfs::page_size()) as f64,
        );
        f.gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            vec![],
            stat.vsize as f64,
        );
        if let Ok(boot) = procfs::boot_time_secs() {
            f.gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                vec![],
                boot as f64 + stat.starttime as f64 / tps,
            );
        }
    }
    if let Ok(n) = me.fd_count() {
        f.gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            vec![],
            n as f64,
        );
    }
}

/// Add the size and free space of the filesystem holding `dir`.
pub fn add_filesystem(f: &mut Families, dir: &Path) {
    let Ok(st) = nix::sys::statvfs::statvfs(dir) else {
        return;
    };
    let (mountpoint, device, fstype) = mount_of(dir).unwrap_or_else(|| {
        (
            dir.display().to_string(),
            "unknown".into(),
            "unknown".into(),
        )
    });
    let l = || {
        labels(&[
            ("mountpoint", &mountpoint),
            ("device", &device),
            ("fstype", &fstype),
        ])
    };
    let frag = st.fragment_size() as f64;
    f.gauge(
        "node_filesystem_size_bytes",
        "Filesystem size in bytes.",
        l(),
        st.blocks() as f64 * frag,
    );
    f.gauge(
        "node_filesystem_free_bytes",
        "Filesystem free space in bytes.",
        l(),
        st.blocks_free() as f64 * frag,
    );
    f.gauge(
        "node_filesystem_avail_bytes",
        "Filesystem space available to non-root users in bytes.",
        l(),
        st.blocks_available() as f64 * frag,
    );
    f.gauge(
        "node_filesystem_files_free",
        "Filesystem free file nodes.",
        l(),
        st.files_free() as f64,
    );
}

/// (mount point, device, filesystem type) of the mount holding `dir`: the
/// longest mount point that is a prefix of its canonical path.
fn mount_of(dir: &Path) -> Option<(String, String, String)> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text, &dir)
}

fn parse_mountinfo(text: &str, dir: &Path) -> Option<(String, String, String)> {
    text.lines()
        .filter_map(|line| {
            // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER`
            let (left, right) = line.split_once(" - ")?;
            let mountpoint = unescape(left.split(' ').nth(4)?);
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let device = unescape(r.next()?);
            dir.starts_with(&mountpoint)
                .then_some((mountpoint, device, fstype))
        })
        .max_by_key(|(m, ..)| m.len())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let code = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok());
            if let Some(c) = code {
                out.push(c);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_mount_point_holding_the_dir_wins() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 254:16 / /var/lib/applianced rw,relatime shared:2 - ext4 /dev/vdb1 rw
31 22 0:27 / /var/lib/app\\040x rw - tmpfs tmpfs rw
";
        assert_eq!(
            parse_mountinfo(info, Path::new("/var/lib/applianced/instances")),
            Some((
                "/var/lib/applianced".into(),
                "/dev/vdb1".into(),
                "ext4".into()
            ))
        );
        assert_eq!(
            parse_mountinfo(info, Path::new("/srv")),
            Some(("/".into(), "/dev/vda".into(), "ext4".into()))
        );
        assert_eq!(
            parse_mountinfo(info, Path::new("/var/lib/app x/d")),
            Some(("/var/lib/app x".into(), "tmpfs".into(), "tmpfs".into()))
        );
    }

    #[test]
    fn process_and_filesystem_series_are_present() {
        let mut f = Families::new();
        add_process(&mut f);
        add_filesystem(&mut f, Path::new("/"));
        assert!(f.has("process_resident_memory_bytes"));
        assert!(f.has("process_cpu_seconds"));
        assert!(f.has("node_filesystem_avail_bytes"));
    }
}
