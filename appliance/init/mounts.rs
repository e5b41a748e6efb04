//! Filesystems: the API filesystems PID 1 mounts (idempotently: Debian's
//! initramfs already mounted /dev, /run, /proc and /sys), the data partition
//! (found by label with blkid, grown with sfdisk + partx, mounted at the
//! data dir, its ext4 grown online by the kernel) and, at the end,
//! unmounting and remounting read-only.
//! Touches mount points, the data partition's partition table and filesystem.

use super::console::say;
use super::tools;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One API filesystem.
pub struct Api {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

const NSD: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In order: each target exists once the ones before it are mounted.
pub const EARLY: [Api; 8] = [
    Api {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NSD,
        data: None,
    },
    Api {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NSD,
        data: None,
    },
    Api {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Api {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
    },
    Api {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    Api {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Api {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    Api {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NSD,
        data: Some("nsdelegate"),
    },
];

/// Mount points, from /proc/self/mountinfo (octal escapes decoded).
pub fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

pub fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|p| p == path)
}

/// Mount one API filesystem unless something is mounted there already.
pub fn mount_one(a: &Api) -> Result<bool, nix::Error> {
    let target = Path::new(a.target);
    if is_mounted(target) {
        return Ok(false);
    }
    let _ = std::fs::create_dir_all(target);
    mount(Some(a.source), target, Some(a.fstype), a.flags, a.data)?;
    Ok(true)
}

/// Mount every API filesystem that is missing, then the /dev links udev
/// would make. Failures are reported, never fatal.
pub fn early() {
    let mut done = Vec::new();
    for a in &EARLY {
        match mount_one(a) {
            Ok(true) => done.push(a.target),
            Ok(false) => {}
            Err(e) => say(format!("cannot mount {} on {}: {e}", a.fstype, a.target)),
        }
    }
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(to, link);
        }
    }
    let _ = std::fs::create_dir_all("/run/lock");
    say(format!(
        "mounted {}",
        if done.is_empty() {
            "nothing (all there already)".to_string()
        } else {
            done.join(" ")
        }
    ));
}

/// Resolve `LABEL=`, `UUID=` or a `/dev/` path to a device node.
pub fn resolve_device(spec: &str) -> Option<String> {
    if spec.starts_with("/dev/") {
        return Path::new(spec).exists().then(|| spec.to_string());
    }
    super::blkid::find(spec)
        .into_iter()
        .next()
        .map(|p| p.device)
}

/// `/dev/vda4` -> (`/dev/vda`, 4), from sysfs (`/sys/class/block/vda4`).
pub fn disk_and_partition(device: &str) -> Option<(String, u32)> {
    let sys = sys_block(device)?;
    let num = sys_number(&sys.join("partition"))? as u32;
    let disk = sys_disk(&sys)?.file_name()?.to_str()?.to_string();
    Some((format!("/dev/{disk}"), num))
}

/// `/dev/vda4` -> `/sys/class/block/vda4`.
fn sys_block(device: &str) -> Option<PathBuf> {
    let name = Path::new(device).file_name()?.to_str()?;
    Some(Path::new("/sys/class/block").join(name))
}

/// The disk a partition's sysfs dir belongs to (its parent in /sys/devices).
fn sys_disk(part: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(part)
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

/// A number sysfs shows in a file (`size` and `start` are in 512-byte sectors).
fn sys_number(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The data partition, mounted.
pub struct DataPartition {
    pub device: String,
    /// Its filesystem growing into the partition, online, on a thread of
    /// its own (`None`: nothing to grow): the new size in bytes, or why not.
    pub growing: Option<std::thread::JoinHandle<Result<u64, String>>>,
}

/// Find the data partition, grow it to the end of its disk, mount it at
/// `data_dir` (noatime, nodev, nosuid), and grow its filesystem online in
/// the background. Idempotent: an already grown or mounted partition is
/// left as it is. `None` when there is no such partition.
///
/// The filesystem grows after the mount, beside the boot, not before it:
/// `e2fsck -f` and an offline `resize2fs` cost a first boot ~0.8 s under
/// emulation (more on a bigger disk) before anything could start. The
/// kernel grows a mounted ext4 by itself ([`grow_online`]).
pub fn data_partition(spec: &str, grow: bool, data_dir: &Path) -> Option<DataPartition> {
    let Some(dev) = resolve_device(spec) else {
        say(format!(
            "no data partition {spec}: data stays on the root filesystem at {}",
            data_dir.display()
        ));
        return None;
    };
    if grow && partition_has_room(&dev) {
        match disk_and_partition(&dev) {
            Some((disk, n)) => match grow_partition(&disk, n) {
                Ok(()) => say(format!("grew {dev} to the end of {disk}")),
                Err(e) => say(format!("cannot grow {dev}: {e}")),
            },
            None => say(format!("{dev} is not a partition; not growing it")),
        }
    }
    if !is_mounted(data_dir) {
        let _ = std::fs::create_dir_all(data_dir);
        let fstype = super::blkid::fstype(&dev).unwrap_or_else(|| "ext4".into());
        let flags = MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        if let Err(e) = mount(
            Some(dev.as_str()),
            data_dir,
            Some(fstype.as_str()),
            flags,
            None::<&str>,
        ) {
            say(format!(
                "cannot mount {dev} ({fstype}) on {}: {e}; data stays on the root filesystem",
                data_dir.display()
            ));
            return None;
        }
        say(format!(
            "mounted {dev} ({fstype}) on {}",
            data_dir.display()
        ));
    }
    let growing = grow
        .then(|| room_to_grow(&dev))
        .flatten()
        .and_then(|blocks| {
            let (dev, dir) = (dev.clone(), data_dir.to_path_buf());
            std::thread::Builder::new()
                .name("grow-data".into())
                .spawn(move || {
                    let grown = grow_online(&dir, blocks);
                    say(match &grown {
                        Ok(bytes) => format!(
                            "grew the filesystem on {dev} to {} MiB (online)",
                            bytes >> 20
                        ),
                        Err(e) => format!(
                            "cannot grow the filesystem on {dev} online: {e}; `resize2fs {dev}` would"
                        ),
                    });
                    grown
                })
                .ok()
        });
    Some(DataPartition {
        device: dev,
        growing,
    })
}

// EXT4_IOC_RESIZE_FS (linux/ext4.h): _IOW('f', 16, __u64), the new size in
// blocks.
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

/// Grow the ext4 filesystem mounted at `mount_point` to `target` (from
/// [`room_to_grow`]): the ioctl `resize2fs` itself makes for a mounted
/// ext4, without a child process (the daemon's reaper may be running, see
/// [`tools`]). The new size in bytes.
fn grow_online(mount_point: &Path, target: Ext4Geometry) -> Result<u64, String> {
    let dir = std::fs::File::open(mount_point).map_err(|e| e.to_string())?;
    use std::os::fd::AsRawFd;
    // SAFETY: the ioctl reads one u64 through a pointer to a live local, on
    // a descriptor that stays open for the call.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &target.blocks) }.map_err(|e| e.to_string())?;
    Ok(target.blocks * target.block_size)
}

/// Grow partition `n` of `disk` to the disk's end: sfdisk rewrites its end
/// in the table (GPT or MBR; a GPT's backup header moves to the disk's new
/// end on the way), then partx tells the kernel the new size. What growpart
/// does, without growpart: a shell script forking some forty tools, 3 s of
/// a first boot under emulation where these two take a fraction of one.
fn grow_partition(disk: &str, n: u32) -> Result<(), tools::ToolError> {
    let nr = n.to_string();
    let quick = Duration::from_secs(60);
    // ", +": same start, as large as the disk allows.
    let table = ["--no-reread", "--no-tell-kernel", "-q", "-N", &nr, disk];
    tools::check_with_input("sfdisk", &table, b", +\n", quick)?;
    tools::check("partx", &["--update", "--nr", &nr, disk], quick)?;
    Ok(())
}

/// Whether the disk has more than 1 MiB after the end of partition `dev`
/// (room to grow it), from sysfs. Unknown counts as room. On every boot
/// but the first the answer is no, which saves running sfdisk.
fn partition_has_room(dev: &str) -> bool {
    let Some(part) = sys_block(dev) else {
        return true;
    };
    let Some(disk) = sys_disk(&part) else {
        return true;
    };
    match (
        sys_number(&part.join("start")),
        sys_number(&part.join("size")),
        sys_number(&disk.join("size")),
    ) {
        // 2048 sectors: 1 MiB, more than GPT's backup table (33 sectors) at the end.
        (Some(start), Some(size), Some(disk_size)) => start + size + 2048 < disk_size,
        _ => true,
    }
}

/// When the ext4 filesystem on `dev` ends more than 1 MiB before the
/// device does, the size (in its blocks) that fills the device; else
/// `None` (not ext4, already grown, or unknown).
fn room_to_grow(dev: &str) -> Option<Ext4Geometry> {
    let dev_bytes = device_bytes(dev)?;
    let g = ext4_geometry(&read_superblock(dev).ok()?)?;
    (g.blocks * g.block_size + (1 << 20) < dev_bytes).then(|| Ext4Geometry {
        blocks: dev_bytes / g.block_size,
        block_size: g.block_size,
    })
}

/// A block device's size in bytes, from sysfs.
fn device_bytes(dev: &str) -> Option<u64> {
    sys_block(dev)
        .and_then(|b| sys_number(&b.join("size")))
        .map(|sectors| sectors * 512)
}

/// The 1024 bytes at offset 1024: an ext2/3/4 superblock, if there is one.
fn read_superblock(dev: &str) -> std::io::Result<[u8; 1024]> {
    use std::os::unix::fs::FileExt;
    let mut sb = [0u8; 1024];
    std::fs::File::open(dev)?.read_exact_at(&mut sb, 1024)?;
    Ok(sb)
}

/// An ext2/3/4 filesystem's size, in blocks of `block_size` bytes.
#[derive(Debug, PartialEq)]
struct Ext4Geometry {
    blocks: u64,
    block_size: u64,
}

/// Block count and block size from a superblock; `None` if it is not one.
/// Read directly rather than through dumpe2fs, which is a process spawn on
/// every boot.
fn ext4_geometry(sb: &[u8; 1024]) -> Option<Ext4Geometry> {
    let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return None;
    }
    let log = u32_at(0x18);
    if log > 6 {
        return None;
    }
    let mut blocks = u64::from(u32_at(0x04));
    const INCOMPAT_64BIT: u32 = 0x80;
    if u32_at(0x60) & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(u32_at(0x150)) << 32;
    }
    Some(Ext4Geometry {
        blocks,
        block_size: 1024u64 << log,
    })
}

/// The last step before reboot(2): unmount the data dir (or remount it
/// read-only when busy) and remount / read-only, so the journals are clean.
pub fn finish(data_dir: &Path) {
    if is_mounted(data_dir) {
        if let Err(e) = umount2(data_dir, MntFlags::empty()) {
            let ro = mount(
                None::<&str>,
                data_dir,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
            say(format!(
                "unmount {}: {e}; remount read-only: {}",
                data_dir.display(),
                ro.map(|_| "ok".to_string())
                    .unwrap_or_else(|e| e.to_string())
            ));
        }
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        say(format!("remount / read-only: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_size_is_read_from_the_superblock_as_mkfs_made_it() {
        let img = std::env::temp_dir().join(format!("applianced-sb-{}.img", std::process::id()));
        std::fs::write(&img, vec![0u8; 64 << 20]).unwrap();
        let mut sb = [0u8; 1024];
        let read = |sb: &mut [u8; 1024]| {
            use std::os::unix::fs::FileExt;
            std::fs::File::open(&img)
                .unwrap()
                .read_exact_at(sb, 1024)
                .unwrap();
        };
        read(&mut sb);
        assert_eq!(ext4_geometry(&sb), None, "zeros are not ext4");
        let mkfs = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-O", "64bit"])
            .arg(&img)
            .arg("48M")
            .status()
            .expect("mkfs.ext4 (e2fsprogs) must be installed");
        assert!(mkfs.success());
        read(&mut sb);
        assert_eq!(
            ext4_geometry(&sb),
            Some(Ext4Geometry {
                blocks: 48 << 8,
                block_size: 4096
            })
        );
        std::fs::remove_file(&img).unwrap();
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn proc_is_seen_as_mounted() {
        assert!(is_mounted(Path::new("/proc")));
        assert!(!is_mounted(Path::new("/proc/definitely-not-a-mount")));
    }
}
