//! Networking without udev or systemd-networkd: loopback up, the first NIC
//! found in /sys/class/net (udev-less names: eth0, ens3, ...), and a static
//! address with `ip` when the config asks for one (DHCP is the supervised
//! `system/dhcp` unit instead). Touches links, addresses, routes and
//! /etc/resolv.conf.

use super::console::say;
use super::tools;
use crate::plan::system::Network;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

/// The first non-loopback interface, preferring ones backed by a device
/// (virtual links like bridges and veths have no `device`).
pub fn first_nic() -> Option<String> {
    first_nic_in(Path::new("/sys/class/net"))
}

fn first_nic_in(dir: &Path) -> Option<String> {
    let mut names: Vec<(bool, String)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            (name != "lo").then(|| (!e.path().join("device").exists(), name))
        })
        .collect();
    names.sort();
    names.into_iter().next().map(|(_, n)| n)
}

pub fn link_up(iface: &str) {
    if let Err(e) = set_link_up(iface) {
        say(format!("cannot bring {iface} up: {e}"));
    }
}

/// Set `IFF_UP` on `iface` with the `SIOCGIFFLAGS`/`SIOCSIFFLAGS` ioctls, as
/// `ifconfig IFACE up` does. Exec'ing `ip link set IFACE up` instead cost
/// ~0.4 s at boot under emulation (the first run of a cold `ip`, which links
/// libbpf and libelf), twice on PID 1's path: `lo` and the NIC. On `lo` the
/// kernel adds 127.0.0.1/8 and ::1 itself as the link comes up.
fn set_link_up(iface: &str) -> std::io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use std::os::fd::AsRawFd;
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an interface name",
        ));
    }
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: `ifreq` is plain data (a name and a union of integers and
    // addresses); all zeroes is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // The name was checked above: shorter than IFNAMSIZ, so NUL-terminated.
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from `req` and writes the flags
    // member of its union; `req` outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel has just written the union's flags member.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `req`, which
    // outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Configure `iface` per `net`: static address, route and resolv.conf; DHCP
/// only brings the link up (the dhcp unit does the rest).
pub fn configure(iface: &str, net: &Network) {
    link_up(iface);
    let Network::Static {
        address,
        prefix,
        gateway,
        dns,
    } = net
    else {
        return;
    };
    let cidr = format!("{address}/{prefix}");
    let mut problems = Vec::new();
    if let Err(e) = tools::check("ip", &["addr", "replace", &cidr, "dev", iface], T) {
        problems.push(e.to_string());
    }
    if let Some(gw) = gateway {
        let gw = gw.to_string();
        if let Err(e) = tools::check(
            "ip",
            &["route", "replace", "default", "via", &gw, "dev", iface],
            T,
        ) {
            problems.push(e.to_string());
        }
    }
    if !dns.is_empty() {
        let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        if let Err(e) =
            crate::secrets::write_atomic_mode(Path::new("/etc/resolv.conf"), text.as_bytes(), 0o644)
        {
            problems.push(format!("/etc/resolv.conf: {e}"));
        }
    }
    if problems.is_empty() {
        say(format!("{iface}: static address {cidr}"));
    } else {
        say(format!(
            "{iface}: static address {cidr}: {}",
            problems.join("; ")
        ));
    }
}

/// Make `hostname` resolve locally (Debian's `127.0.1.1 NAME` line):
/// mariadb-install-db and sudo look it up, and there is no DNS for it.
pub fn ensure_hosts(hostname: &str) {
    ensure_hosts_in(Path::new("/etc/hosts"), hostname);
}

fn ensure_hosts_in(path: &Path, hostname: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let known = text.lines().any(|l| {
        let l = l.split('#').next().unwrap_or("");
        l.split_whitespace().skip(1).any(|n| n == hostname)
    });
    if known {
        return;
    }
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("127.0.1.1"))
        .map(|l| format!("{l}\n"))
        .collect();
    if !text
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("localhost"))
    {
        out.insert_str(0, "127.0.0.1\tlocalhost\n");
    }
    out.push_str(&format!("127.0.1.1\t{hostname}\n"));
    if let Err(e) = crate::secrets::write_atomic_mode(path, out.as_bytes(), 0o644) {
        say(format!("{}: {e}", path.display()));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_gets_the_hostname_once_replacing_an_old_127_0_1_1_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hosts");
        std::fs::write(&p, "127.0.0.1\tlocalhost\n127.0.1.1\told-name\n").unwrap();
        ensure_hosts_in(&p, "shop");
        ensure_hosts_in(&p, "shop");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tshop\n"
        );
        let empty = d.path().join("none");
        ensure_hosts_in(&empty, "x");
        assert_eq!(
            std::fs::read_to_string(&empty).unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tx\n"
        );
    }

    use super::*;

    /// Runs `f` on a thread of its own inside a new network namespace (the
    /// namespace is per thread), where `lo` starts down. Needs root.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET) needs root: run the tests as root");
            f()
        })
        .join()
        .unwrap()
    }

    fn loopback_connects() -> bool {
        let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else {
            return false;
        };
        std::net::TcpStream::connect(l.local_addr().unwrap()).is_ok()
    }

    #[test]
    fn link_up_brings_a_new_namespaces_loopback_up() {
        let (before, after) = in_new_netns(|| {
            let before = loopback_connects();
            set_link_up("lo").unwrap();
            (before, loopback_connects())
        });
        assert!(!before, "a new namespace's lo should start down");
        assert!(after, "127.0.0.1 should answer once lo is up");
    }

    #[test]
    fn link_up_names_what_is_wrong_with_a_missing_or_malformed_interface() {
        let missing = in_new_netns(|| set_link_up("nosuch0").unwrap_err());
        assert_eq!(missing.raw_os_error(), Some(libc::ENODEV), "{missing}");
        let long = set_link_up("a-name-longer-than-ifnamsiz").unwrap_err();
        assert_eq!(long.kind(), std::io::ErrorKind::InvalidInput);
        assert!(set_link_up("").is_err());
    }

    #[test]
    fn first_nic_skips_lo_and_prefers_real_devices() {
        let d = tempfile::tempdir().unwrap();
        for n in ["lo", "br0", "eth1", "eth0"] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        for n in ["eth1", "eth0"] {
            std::fs::create_dir(d.path().join(n).join("device")).unwrap();
        }
        assert_eq!(first_nic_in(d.path()).as_deref(), Some("eth0"));
        std::fs::remove_dir_all(d.path().join("eth0")).unwrap();
        std::fs::remove_dir_all(d.path().join("eth1")).unwrap();
        assert_eq!(first_nic_in(d.path()).as_deref(), Some("br0"));
    }
}
