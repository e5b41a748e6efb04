//! Configuration: `appliance.toml` plus `APPLIANCE_*` environment overrides.
//!
//! This module only parses and type-checks. Turning a [`Config`] into a runnable
//! plan (unit templates merged, programs found, dependency cycles refused) is
//! [`crate::plan`]'s job, which reports its problems with the same [`ConfigError`]
//! so an operator always sees `FILE: KEY: PROBLEM`.
//!
//! It touches nothing but the config file it is told to read and the process
//! environment.

mod admin;
mod backup;
mod cron;
pub mod edit;
mod http;
mod ship;
mod system;
mod unit;

pub use admin::{AdminAuthConfig, AdminConfig};
pub use backup::{BackupConfig, S3Config};
pub use cron::{CronConfig, OverlapPolicy};
pub use http::{HttpConfig, PhpModeConfig, TlsCertConfig, WebConfig};
pub use ship::{ShipConfig, ShipKindConfig};
pub use system::{DEFAULT_DATA_DEVICE, NetworkMode, SystemConfig};
pub use unit::{ExecPre, Readiness, RenderFile, RestartPolicy, UnitConfig};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The embedded default: one instance named `demo` running the bundled demo app.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../assets/default-appliance.toml");

/// Where a config came from, for error messages.
pub const EMBEDDED_NAME: &str = "<embedded default config>";

/// The whole appliance: global settings and its instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Root of everything applianced writes: instances, logs, state, secrets.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Log capture settings for children and applianced itself.
    #[serde(default)]
    pub log: LogConfig,
    /// The HTTP(S) front end: listeners, limits, default host.
    #[serde(default)]
    pub http: HttpConfig,
    /// The admin listener: `/metrics`, apart from the public sites.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The machine itself (PID-1 mode): hostname, network, SSH, data partition.
    #[serde(default)]
    pub system: SystemConfig,
    /// Backup defaults for every instance (`[instance.backup]` overrides).
    #[serde(default)]
    pub backup: BackupConfig,
    /// The application stacks this appliance runs.
    #[serde(default, rename = "instance")]
    pub instances: Vec<InstanceConfig>,
}

/// Rotation and retention of every log file applianced writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Rotate a log file once it reaches this many bytes.
    #[serde(default = "LogConfig::default_max_bytes")]
    pub max_bytes: u64,
    /// How many rotated files to keep beside the live one.
    #[serde(default = "LogConfig::default_keep")]
    pub keep: u32,
    /// Rotate a log file once its first line is this many hours old, so each
    /// file covers about a day. 0: by size only.
    #[serde(default = "LogConfig::default_max_age_hours")]
    pub max_age_hours: u32,
    /// Delete rotated files older than this many days, even when fewer than
    /// `keep`. 0: by count only.
    #[serde(default = "LogConfig::default_retain_days")]
    pub retain_days: u32,
    /// Sinks every line is also shipped to (`[[log.ship]]`).
    #[serde(default)]
    pub ship: Vec<ShipConfig>,
}

impl LogConfig {
    fn default_max_bytes() -> u64 {
        10 * 1024 * 1024
    }
    fn default_keep() -> u32 {
        5
    }
    fn default_max_age_hours() -> u32 {
        24
    }
    fn default_retain_days() -> u32 {
        30
    }

    /// The policy every log file follows.
    pub fn rotation(&self) -> crate::logs::Rotation {
        let hours = |h: u64| std::time::Duration::from_secs(h * 3600);
        crate::logs::Rotation {
            max_bytes: self.max_bytes,
            keep: self.keep,
            max_age: (self.max_age_hours > 0).then(|| hours(u64::from(self.max_age_hours))),
            retain: (self.retain_days > 0).then(|| hours(24 * u64::from(self.retain_days))),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_bytes: Self::default_max_bytes(),
            keep: Self::default_keep(),
            max_age_hours: Self::default_max_age_hours(),
            retain_days: Self::default_retain_days(),
            ship: Vec::new(),
        }
    }
}

/// One isolated application stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Short name: lowercase letters, digits and `-`, at most 20 characters.
    pub name: String,
    /// The PHP application (its `public/` is the web root). Default: the bundled
    /// demo app, copied under the instance's data dir on first provision.
    #[serde(default)]
    pub app_dir: Option<PathBuf>,
    /// Unix user the instance's programs run as. Default `app-NAME`, created on
    /// first provision when applianced runs as root.
    #[serde(default)]
    pub user: Option<String>,
    /// Virtual host names, exact or `*.wildcard`, e.g. `["fact.rog.pe", "*.fact.rog.pe"]`.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Certificates for these domains (PEM files), chosen by SNI. With one,
    /// plain HTTP redirects to HTTPS and HSTS is sent.
    #[serde(default)]
    pub tls: Vec<TlsCertConfig>,
    /// How the site is served: PHP mode, php-fpm socket.
    #[serde(default)]
    pub web: WebConfig,
    /// Extra environment for the application (php-fpm, exec and workers).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Units beyond, or overriding, the shipped defaults (mariadb, redis, php-fpm).
    /// A key naming a shipped unit overrides its fields; `enabled = false` drops it.
    #[serde(default)]
    pub units: BTreeMap<String, UnitConfig>,
    /// Cron entries beyond, or overriding, the shipped `schedule-run`
    /// (`php artisan schedule:run` every minute, on when the app has `artisan`).
    #[serde(default)]
    pub cron: BTreeMap<String, CronConfig>,
    /// The instance's cgroup limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Give the instance's programs a `/tmp` of their own (a mount
    /// namespace with `DATA/instances/NAME/tmp` bound over `/tmp`), shared
    /// by its units, cron runs and `exec` (systemd's `PrivateTmp=`).
    #[serde(default)]
    pub private_tmp: bool,
    /// Backups of this instance, over the top-level `[backup]` defaults.
    #[serde(default)]
    pub backup: BackupConfig,
}

/// `[instance.limits]`: the instance's cgroup v2 limits, named after the
/// cgroup files (systemd's `MemoryMax=`, `CPUWeight=`, `TasksMax=`,
/// `IOWeight=`). Unset keys leave the kernel's default (no limit, weight 100).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Memory of all the instance's processes (page cache included): bytes,
    /// `512M`, `2G` (powers of 1024) or `max`. Past it the kernel reclaims,
    /// then OOM-kills inside the instance only.
    #[serde(default)]
    pub memory_max: Option<SizeValue>,
    /// CPU share against other instances under contention, 1-10000 (default 100).
    #[serde(default)]
    pub cpu_weight: Option<u32>,
    /// Tasks (processes and threads) the instance may have, or `max`.
    #[serde(default)]
    pub pids_max: Option<SizeValue>,
    /// Disk I/O share against other instances, 1-10000 (default 100).
    #[serde(default)]
    pub io_weight: Option<u32>,
}

/// A number, or a string such as `2G` or `max`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SizeValue {
    Number(u64),
    Text(String),
}

/// A config that cannot be used. Every variant names the file and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `<embedded default config>` / `environment`) the key came from.
    pub file: String,
    /// Dotted path of the offending key, e.g. `instance[0].units.php-fpm.command`.
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.problem)
        } else {
            write!(f, "{}: key `{}`: {}", self.file, self.key, self.problem)
        }
    }
}

impl ConfigError {
    pub fn new(
        file: impl Into<String>,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// A parsed config and the name of its source, kept for later error messages.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: String,
    /// The file it was read from (`None`: the embedded default or a seed's text).
    pub path: Option<PathBuf>,
}

/// Parse config text that did not come from a file (a NoCloud seed's
/// `applianced:` key), named `source` in errors. No environment overrides.
pub fn load_str(text: &str, source: &str) -> Result<Loaded, ConfigError> {
    let figment = Figment::from(Toml::string(text))
        .join(Serialized::default("log", LogConfig::default()))
        .join(Serialized::default("http", HttpConfig::default()));
    let config: Config = figment.extract().map_err(|e| figment_error(e, source))?;
    Ok(Loaded {
        config,
        source: source.to_string(),
        path: None,
    })
}

/// Read `path` (or the embedded default when `None`), then apply `APPLIANCE_*`
/// environment overrides (`APPLIANCE_DATA_DIR`, `APPLIANCE_LOG__KEEP`, ...).
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let (figment, source) = match path {
        Some(p) => {
            let name = p.display().to_string();
            if !p.exists() {
                return Err(ConfigError::new(name, "", "config file does not exist"));
            }
            if let Err(e) = std::fs::read_to_string(p) {
                return Err(ConfigError::new(name, "", format!("cannot read: {e}")));
            }
            (Figment::from(Toml::file_exact(p)), name)
        }
        None => (
            Figment::from(Toml::string(EMBEDDED_DEFAULT)),
            EMBEDDED_NAME.to_string(),
        ),
    };
    let figment = figment
        // Ignore the variables the CLI itself reads so they are not mistaken for keys.
        .merge(
            Env::prefixed("APPLIANCE_")
                .ignore(&[
                    "CONFIG",
                    "SOCKET",
                    "LOG_LEVEL",
                    "INSTANCE",
                    "REPLICA",
                    "TEST_PANIC_TASK",
                ])
                .split("__"),
        )
        .join(Serialized::default("log", LogConfig::default()))
        .join(Serialized::default("http", HttpConfig::default()));
    let config: Config = figment.extract().map_err(|e| figment_error(e, &source))?;
    Ok(Loaded {
        config,
        source,
        path: path.map(Path::to_path_buf),
    })
}

/// Turn figment's error into ours: file, `a.b[0].c` key and the problem.
fn figment_error(err: figment::Error, default_source: &str) -> ConfigError {
    // figment chains several errors; the first is the most specific.
    let first = err
        .into_iter()
        .next()
        .expect("figment errors are never empty");
    let file = match first.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        Some(figment::Source::File(p)) => p.display().to_string(),
        Some(figment::Source::Custom(s)) => s.clone(),
        _ => match first.metadata.as_ref() {
            Some(m) if m.name.contains("environment") => "environment (APPLIANCE_*)".to_string(),
            _ => default_source.to_string(),
        },
    };
    ConfigError::new(file, key_path(&first.path), describe_kind(&first.kind))
}

/// `["instance", "0", "units", "redis", "args"]` -> `instance[0].units.redis.args`.
pub fn key_path(parts: &[String]) -> String {
    let mut out = String::new();
    for p in parts {
        if p.chars().all(|c| c.is_ascii_digit()) && !out.is_empty() {
            out.push_str(&format!("[{p}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(p);
        }
    }
    out
}

fn describe_kind(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::UnknownField(field, expected) => {
            format!(
                "unknown key `{field}`; expected one of: {}",
                expected.join(", ")
            )
        }
        Kind::MissingField(field) => format!("missing required key `{field}`"),
        Kind::InvalidType(actual, expected) => {
            format!("wrong type: found {actual}, expected {expected}")
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value: found {actual}, expected {expected}")
        }
        Kind::UnknownVariant(v, expected) => {
            format!(
                "unknown value `{v}`; expected one of: {}",
                expected.join(", ")
            )
        }
        Kind::DuplicateField(f) => format!("key `{f}` given twice"),
        Kind::Message(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(s: &str) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("appliance.toml");
        std::fs::write(&p, s).unwrap();
        load(Some(&p))
    }

    #[test]
    fn embedded_default_parses_to_one_demo_instance() {
        let loaded = load(None).unwrap();
        assert_eq!(loaded.config.instances.len(), 1);
        assert_eq!(loaded.config.instances[0].name, "demo");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = load_str("[[instance]]\nname = \"a\"\nnme = \"b\"\n").unwrap_err();
        assert!(err.file.ends_with("appliance.toml"), "{err}");
        assert_eq!(err.key, "instance[0].nme");
        assert!(err.problem.contains("unknown key `nme`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key_and_both_types() {
        let err = load_str("[[instance]]\nname = \"a\"\n[instance.units.x]\ncommand = \"true\"\nreplicas = \"many\"\n")
            .unwrap_err();
        assert_eq!(err.key, "instance[0].units.x.replicas");
        assert!(err.problem.contains("wrong type"), "{err}");
    }

    #[test]
    fn missing_file_is_reported_by_name() {
        let err = load(Some(Path::new("/nonexistent/appliance.toml"))).unwrap_err();
        assert_eq!(err.file, "/nonexistent/appliance.toml");
        assert!(err.problem.contains("does not exist"));
    }

    #[test]
    fn key_path_renders_indices_in_brackets() {
        let parts: Vec<String> = ["instance", "2", "units", "php-fpm"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(key_path(&parts), "instance[2].units.php-fpm");
    }
}
