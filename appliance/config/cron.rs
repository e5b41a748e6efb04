//! The cron entry schema: `[instance.cron.NAME]` tables.
//!
//! Like units, every field is optional so an instance can override one field
//! of the shipped default entry (`schedule-run`) or drop it with
//! `enabled = false`. Parsing and type checks only; schedules, timeouts and
//! programs are checked by [`crate::scheduler::spec`] at plan time.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronConfig {
    /// `false` drops the entry (the shipped `schedule-run` included).
    pub enabled: Option<bool>,
    /// Program name (looked up in PATH) or absolute path. No shell: use
    /// `command = "sh"`, `args = ["-c", "..."]` for one.
    pub command: Option<String>,
    pub args: Option<Vec<String>>,
    /// Cron schedule: 5 fields (`m h dom mon dow`) or 6 with seconds first.
    pub schedule: Option<String>,
    /// A run still going after this long is stopped (SIGTERM, then SIGKILL),
    /// e.g. `"10m"`, `"90s"`. Default `1h`.
    pub timeout: Option<String>,
    /// What a fire does while the previous run of this entry still runs.
    pub overlap: Option<OverlapPolicy>,
    /// Default: the app dir.
    pub working_directory: Option<String>,
    /// Default: the instance user. Another user only when applianced runs as root.
    pub user: Option<String>,
    /// Extra environment, over the application environment.
    pub environment: Option<BTreeMap<String, String>>,
}

/// What a fire does while the entry's previous run is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverlapPolicy {
    /// Record a `skipped` run and start nothing (supercronic's default).
    #[default]
    Skip,
    /// Start another run beside the running one.
    Allow,
}

impl OverlapPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            OverlapPolicy::Skip => "skip",
            OverlapPolicy::Allow => "allow",
        }
    }
}

impl CronConfig {
    /// Field-by-field overlay: every field set in `over` wins; environment maps merge.
    pub fn overlay(mut self, over: &CronConfig) -> CronConfig {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f.clone(); } )* };
        }
        take!(
            enabled,
            command,
            args,
            schedule,
            timeout,
            overlap,
            working_directory,
            user
        );
        if let Some(env) = &over.environment {
            let mut merged = self.environment.take().unwrap_or_default();
            merged.extend(env.clone());
            self.environment = Some(merged);
        }
        self
    }
}
