//! The `[system]` section: the machine itself when applianced is PID 1 (or
//! when asked to run the system units anyway): hostname, network, SSH, the
//! data partition and the NoCloud seed, plus overrides of the system units.
//!
//! Only parsing here; [`crate::plan::system`] checks values and names the key.

use super::UnitConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The data partition the image ships (`p4`, last on the disk).
pub const DEFAULT_DATA_DEVICE: &str = "LABEL=appliance-data";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// Run the system units (`sshd`, `dhcp`). Default: only in PID-1 mode.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The machine's hostname. A NoCloud seed's hostname wins over it.
    #[serde(default)]
    pub hostname: Option<String>,
    /// `dhcp` (default), `static` (with `address`, `gateway`, `dns`) or `none`.
    #[serde(default)]
    pub network: NetworkMode,
    /// The interface to configure; default the first non-loopback NIC.
    #[serde(default)]
    pub interface: Option<String>,
    /// With `network = "static"`: `ADDRESS/PREFIX`, e.g. `192.0.2.10/24`.
    #[serde(default)]
    pub address: Option<String>,
    /// With `network = "static"`: the default route's next hop.
    #[serde(default)]
    pub gateway: Option<String>,
    /// With `network = "static"`: name servers written to `/etc/resolv.conf`.
    #[serde(default)]
    pub dns: Vec<String>,
    /// Run OpenSSH's sshd as the `system/sshd` unit. Default true.
    #[serde(default)]
    pub ssh: Option<bool>,
    /// The data partition mounted at the data dir in PID-1 mode:
    /// `LABEL=...`, `UUID=...` or a `/dev/...` path.
    #[serde(default)]
    pub data_device: Option<String>,
    /// Grow the data partition and its filesystem to fill the disk at boot.
    #[serde(default)]
    pub grow_data: Option<bool>,
    /// Look for a NoCloud seed (a `CIDATA` volume) at boot. Default true.
    #[serde(default)]
    pub seed: Option<bool>,
    /// Transparent huge pages for the whole machine in PID-1 mode: `madvise`
    /// (default), `always`, `never`, or `kernel` (leave the kernel's setting).
    #[serde(default)]
    pub transparent_hugepages: Option<String>,
    /// Kernel settings written to /proc/sys at boot in PID-1 mode, merged
    /// over the defaults (`vm.overcommit_memory = 1`), e.g.
    /// `{ "net.core.somaxconn" = "4096" }`.
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    /// Overrides of the system units (`sshd`, `dhcp`), field by field, or
    /// extra root-run units.
    #[serde(default)]
    pub units: BTreeMap<String, UnitConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    #[default]
    Dhcp,
    Static,
    None,
}
