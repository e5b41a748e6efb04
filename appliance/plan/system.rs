//! `[system]` -> the machine settings PID-1 mode applies ([`HostPlan`]) and
//! the `system` pseudo-instance: root-run units (`sshd`, `dhcp`) from
//! `units/system/`, shown in `status` as instance `system`.
//!
//! Checks only; it reads the embedded units and finds programs in PATH.

use super::{InstancePlan, KeyedProblem, TemplateCtx, merge_units};
use crate::assets;
use crate::config::{DEFAULT_DATA_DEVICE, NetworkMode, SystemConfig};
use crate::layout::Layout;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The instance name system units are shown under.
pub const SYSTEM_INSTANCE: &str = "system";

/// What PID-1 mode found on the machine before planning.
#[derive(Debug, Clone, Default)]
pub struct InitFacts {
    /// The first non-loopback NIC, if any.
    pub interface: Option<String>,
    /// Plan even without `[[instance]]`: the fallback that keeps SSH and the
    /// network up when the config cannot be used.
    pub allow_no_instances: bool,
}

/// How the NIC is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    Dhcp,
    Static {
        address: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        dns: Vec<IpAddr>,
    },
    None,
}

/// The machine settings, checked.
#[derive(Debug, Clone)]
pub struct HostPlan {
    pub enabled: Option<bool>,
    pub hostname: Option<String>,
    pub network: Network,
    pub interface: Option<String>,
    pub ssh: bool,
    pub data_device: String,
    pub grow_data: bool,
    pub seed: bool,
    /// What to write to /sys/kernel/mm/transparent_hugepage/enabled;
    /// `None`: leave the kernel's setting.
    pub transparent_hugepages: Option<&'static str>,
    /// `/proc/sys` settings (dotted names), the defaults merged with the config's.
    pub sysctl: BTreeMap<String, String>,
}

/// Kernel settings PID-1 mode applies unless the config says otherwise.
///
/// - `vm.overcommit_memory = 1`: Redis forks for its AOF rewrite and
///   background saves, and asks for this at every start (`WARNING Memory
///   overcommit must be enabled!`): without it a fork of a large Redis can
///   fail on a box with memory to spare.
pub const DEFAULT_SYSCTL: [(&str, &str); 1] = [("vm.overcommit_memory", "1")];

/// The transparent huge page mode PID-1 mode sets unless the config says
/// otherwise: `madvise`, so only programs that ask get huge pages. MariaDB
/// and Redis advise against `always` (Debian's kernel default): latency
/// spikes and memory bloat. At boot it also costs: each first touch of a 2
/// MiB region (thread stacks, malloc arenas, buffer pools) zeroes a whole
/// huge page, and under emulation that zeroing was a third of applianced's
/// CPU while the units started (perf in the image, 2026-12-04).
pub const DEFAULT_THP: &str = "madvise";

/// `[system] sysctl` keys: dotted names under /proc/sys. Each part is
/// letters, digits, `_` or `-`, so no path can leave /proc/sys (no `/`,
/// no empty or `..` part).
fn valid_sysctl_name(k: &str) -> bool {
    k.split('.').all(|p| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

impl Default for HostPlan {
    fn default() -> Self {
        host(&SystemConfig::default()).expect("the default [system] is valid")
    }
}

/// A hostname the kernel and DNS accept: dot-separated labels of letters,
/// digits and `-` (not at either end), each 1-63, at most 253 in all.
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Check `[system]`'s values; errors name `system.KEY`.
pub fn host(c: &SystemConfig) -> Result<HostPlan, KeyedProblem> {
    let e = |k: &str, p: String| (format!("system.{k}"), p);
    if let Some(h) = &c.hostname {
        if !valid_hostname(h) {
            return Err(e(
                "hostname",
                format!(
                    "`{h}` is not a valid hostname: letters, digits and `-` in dot-separated labels of at most 63"
                ),
            ));
        }
    }
    if let Some(i) = &c.interface {
        if i.is_empty() || i.len() > 15 || i.contains('/') || i.contains(char::is_whitespace) {
            return Err(e("interface", format!("`{i}` is not an interface name")));
        }
    }
    let ip = |k: &str, v: &str| {
        v.parse::<IpAddr>()
            .map_err(|_| e(k, format!("`{v}` is not an IP address")))
    };
    let network = match c.network {
        NetworkMode::Static => {
            let a = c.address.as_deref().ok_or_else(|| {
                e(
                    "address",
                    "`network = \"static\"` needs `address` (e.g. \"192.0.2.10/24\")".into(),
                )
            })?;
            let (addr, prefix) = a.split_once('/').ok_or_else(|| {
                e(
                    "address",
                    format!("`{a}` has no prefix length; write ADDRESS/PREFIX, e.g. 192.0.2.10/24"),
                )
            })?;
            let address = ip("address", addr)?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let prefix = prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| {
                    e(
                        "address",
                        format!("`{prefix}` is not a prefix length 0..={max}"),
                    )
                })?;
            let gateway = c.gateway.as_deref().map(|g| ip("gateway", g)).transpose()?;
            let dns = c
                .dns
                .iter()
                .enumerate()
                .map(|(i, d)| ip(&format!("dns[{i}]"), d))
                .collect::<Result<_, _>>()?;
            Network::Static {
                address,
                prefix,
                gateway,
                dns,
            }
        }
        mode => {
            for (k, set) in [
                ("address", c.address.is_some()),
                ("gateway", c.gateway.is_some()),
                ("dns", !c.dns.is_empty()),
            ] {
                if set {
                    return Err(e(k, "only used with `network = \"static\"`".into()));
                }
            }
            if mode == NetworkMode::Dhcp {
                Network::Dhcp
            } else {
                Network::None
            }
        }
    };
    let data_device = c
        .data_device
        .clone()
        .unwrap_or_else(|| DEFAULT_DATA_DEVICE.into());
    let ok_device = ["LABEL=", "UUID=", "/dev/"]
        .iter()
        .any(|p| data_device.strip_prefix(p).is_some_and(|r| !r.is_empty()));
    if !ok_device {
        return Err(e(
            "data_device",
            format!("`{data_device}` is not LABEL=..., UUID=... or a /dev/ path"),
        ));
    }
    let transparent_hugepages = match c.transparent_hugepages.as_deref().unwrap_or(DEFAULT_THP) {
        "always" => Some("always"),
        "madvise" => Some("madvise"),
        "never" => Some("never"),
        "kernel" => None,
        other => {
            return Err(e(
                "transparent_hugepages",
                format!(
                    "`{other}` is not one of always, madvise, never, kernel (leave the kernel's setting)"
                ),
            ));
        }
    };
    let mut sysctl: BTreeMap<String, String> = DEFAULT_SYSCTL
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &c.sysctl {
        if !valid_sysctl_name(k) {
            return Err(e(
                &format!("sysctl.{k}"),
                "is not a kernel setting name: dot-separated parts of letters, digits, `_` and `-` (e.g. net.core.somaxconn)".into(),
            ));
        }
        if v.trim().is_empty() || v.contains('\n') {
            return Err(e(
                &format!("sysctl.{k}"),
                format!("`{v}` is not a value: one line, not empty"),
            ));
        }
        sysctl.insert(k.clone(), v.trim().to_string());
    }
    Ok(HostPlan {
        transparent_hugepages,
        sysctl,
        enabled: c.enabled,
        hostname: c.hostname.clone(),
        network,
        interface: c.interface.clone(),
        ssh: c.ssh.unwrap_or(true),
        data_device,
        grow_data: c.grow_data.unwrap_or(true),
        seed: c.seed.unwrap_or(true),
    })
}

/// The `system` pseudo-instance, or `None` when the system units are off:
/// outside PID-1 mode unless `enabled = true`; never with `enabled = false`.
pub fn instance(
    c: &SystemConfig,
    host: &HostPlan,
    layout: &Layout,
    init: Option<&InitFacts>,
) -> Result<Option<InstancePlan>, KeyedProblem> {
    if !host.enabled.unwrap_or(init.is_some()) {
        return Ok(None);
    }
    // Outside PID-1 mode applianced does not own the network: DHCP only on an
    // interface named in the config.
    let interface = host
        .interface
        .clone()
        .or_else(|| init.and_then(|f| f.interface.clone()));
    let mut defaults = Vec::new();
    if host.ssh {
        defaults.push("sshd");
    }
    if host.network == Network::Dhcp && interface.is_some() {
        defaults.push("dhcp");
    }
    let key = |rest: String| format!("system{rest}");
    let shipped = |name: &str| assets::unit_template(&format!("system/{name}"));
    // Overrides of a shipped system unit that `[system]` turned off (`ssh =
    // false`, a static network) are kept for later, not run.
    let overrides: BTreeMap<_, _> = c
        .units
        .iter()
        .filter(|(name, _)| defaults.contains(&name.as_str()) || shipped(name).is_none())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let units = merge_units(&key, &defaults, &shipped, &overrides)?;
    let mut vars = BTreeMap::new();
    vars.insert("interface".to_string(), interface.unwrap_or_default());
    let plan = InstancePlan {
        name: SYSTEM_INSTANCE.into(),
        user: "root".into(),
        app_dir: "/".into(),
        bundled_app: false,
        domains: Vec::new(),
        env: BTreeMap::new(),
        units,
        cron: Vec::new(),
        system: true,
        vars,
        php_children: 0,
        php_max_requests: 0,
        warm_up: String::new(),
        warm_up_early: String::new(),
        limits: Default::default(),
        private_tmp: false,
    };
    for u in &plan.units {
        let ctx = TemplateCtx::new(layout, &plan, &u.name, 0, BTreeMap::new());
        u.render(&ctx)
            .map_err(|e| (format!("system.units.{}.{}", u.name, e.field), e.problem))?;
    }
    Ok(Some(plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(text: &str) -> SystemConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn static_network_without_address_names_the_address_key() {
        let (k, p) = host(&sys("network = \"static\"\ngateway = \"10.0.0.1\"")).unwrap_err();
        assert_eq!(k, "system.address");
        assert!(p.contains("needs `address`"), "{p}");
    }

    #[test]
    fn static_address_needs_a_prefix_and_valid_ips() {
        let (k, _) = host(&sys("network = \"static\"\naddress = \"10.0.0.5\"")).unwrap_err();
        assert_eq!(k, "system.address");
        let (k, _) = host(&sys("network = \"static\"\naddress = \"10.0.0.5/33\"")).unwrap_err();
        assert_eq!(k, "system.address");
        let (k, _) = host(&sys(
            "network = \"static\"\naddress = \"10.0.0.5/24\"\ndns = [\"1.1.1.1\", \"nope\"]",
        ))
        .unwrap_err();
        assert_eq!(k, "system.dns[1]");
        let h = host(&sys(
            "network = \"static\"\naddress = \"10.0.0.5/24\"\ngateway = \"10.0.0.1\"",
        ))
        .unwrap();
        assert!(matches!(h.network, Network::Static { prefix: 24, .. }));
    }

    #[test]
    fn address_with_dhcp_is_refused_as_unused() {
        let (k, p) = host(&sys("address = \"10.0.0.5/24\"")).unwrap_err();
        assert_eq!(k, "system.address");
        assert!(p.contains("only used with"), "{p}");
    }

    #[test]
    fn bad_hostname_and_data_device_name_their_keys() {
        assert_eq!(
            host(&sys("hostname = \"no_underscores\"")).unwrap_err().0,
            "system.hostname"
        );
        assert_eq!(
            host(&sys("hostname = \"-x\"")).unwrap_err().0,
            "system.hostname"
        );
        assert_eq!(
            host(&sys("data_device = \"sda4\"")).unwrap_err().0,
            "system.data_device"
        );
        let h = host(&sys("hostname = \"shop.example.com\"")).unwrap();
        assert_eq!(h.data_device, "LABEL=appliance-data");
        assert!(h.ssh && h.seed && h.grow_data && h.network == Network::Dhcp);
    }

    #[test]
    fn system_units_run_only_in_init_mode_unless_enabled() {
        let layout = Layout::new("/tmp/applianced-plan-test");
        let c = sys("ssh = false");
        let h = host(&c).unwrap();
        assert!(instance(&c, &h, &layout, None).unwrap().is_none());
        let c = sys("enabled = false");
        let h = host(&c).unwrap();
        let facts = InitFacts {
            interface: Some("eth0".into()),
            allow_no_instances: false,
        };
        assert!(instance(&c, &h, &layout, Some(&facts)).unwrap().is_none());
    }
}
