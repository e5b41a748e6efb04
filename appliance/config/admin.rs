//! The `[admin]` table: the admin listener that serves `/metrics` (and the
//! dashboard), apart from the public virtual hosts.
//!
//! Parsing and type checks only; [`crate::admin::plan`] checks addresses and
//! refuses a network-facing listener without auth. Credentials are never
//! config keys: they come from `DATA/secrets/admin.env` or the environment.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `IP:PORT` addresses. Empty (the default): no admin listener.
    #[serde(default)]
    pub listen: Vec<String>,
    /// `none`, `bearer` (`Authorization: Bearer ADMIN_TOKEN`) or `basic`
    /// (`ADMIN_USER` / `ADMIN_PASSWORD`). Default `none`, which is allowed
    /// on loopback addresses only.
    #[serde(default)]
    pub auth: AdminAuthConfig,
    /// Seconds between points of the dashboard's history. Default 30.
    #[serde(default)]
    pub history_interval_sec: Option<u64>,
    /// Hours of history kept in memory. Default 6.
    #[serde(default)]
    pub history_hours: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminAuthConfig {
    #[default]
    None,
    Bearer,
    Basic,
}
