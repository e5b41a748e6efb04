//! The control API: a unix socket (0600, in a 0700 dir, peer uid checked) that
//! the CLI subcommands of the same binary talk to.
//!
//! Wire format: the client sends one JSON [`Request`] line; the server answers
//! with one or more JSON [`Reply`] lines (several only for `logs --follow`).
//! Plain enough to drive with `socat` in an emergency.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Logs {
        /// `INSTANCE/UNIT`, or `INSTANCE` for all its units.
        target: String,
        lines: usize,
        follow: bool,
        /// Filters (since, until, level, text); none: every line.
        #[serde(default)]
        query: crate::logs::LogQuery,
    },
    Start {
        target: String,
    },
    Stop {
        target: String,
    },
    Restart {
        target: String,
    },
    /// Change a unit's replica count at runtime; the reply is the old count.
    Scale {
        target: String,
        replicas: u32,
    },
    ExecSpec {
        instance: String,
    },
    /// Recent cron runs, oldest first.
    Jobs {
        #[serde(default)]
        instance: Option<String>,
        #[serde(default)]
        entry: Option<String>,
        limit: usize,
    },
    /// Start a run of a cron entry now.
    JobsRun {
        instance: String,
        entry: String,
    },
    /// Every instance: state, domains, cgroup, limits not enforced, usage.
    Instances,
    /// Stop every unit of an instance (reverse order), then kill its cgroup.
    InstanceStop {
        name: String,
    },
    /// Start every unit of an instance.
    InstanceStart {
        name: String,
    },
    /// Add an instance to the config file and start it. Progress lines,
    /// then the record ([`crate::lifecycle::Added`]).
    InstanceAdd {
        name: String,
        #[serde(default)]
        domains: Vec<String>,
        #[serde(default)]
        app_dir: Option<std::path::PathBuf>,
    },
    /// Final backup, stop, clear off the machine, take out of the config
    /// file. Progress lines, then the record ([`crate::lifecycle::Removed`]).
    InstanceRemove {
        name: String,
        #[serde(default)]
        force: bool,
    },
    /// Back an instance up now. Replies: `{"progress": LINE}`..., then the record.
    BackupRun {
        instance: String,
    },
    /// Backup runs (backups, verifies, restores, test restores), newest first.
    BackupList {
        #[serde(default)]
        instance: Option<String>,
        limit: usize,
    },
    /// Check a backup's files against its manifest in every target.
    BackupVerify {
        id: String,
    },
    /// Restore a backup (or one database of it). Progress lines, then the record.
    BackupRestore {
        instance: String,
        id: String,
        #[serde(default)]
        db: Option<String>,
    },
    /// Load a backup (default: the newest) into a throwaway mariadbd and
    /// compare table checksums.
    BackupTestRestore {
        instance: String,
        #[serde(default)]
        id: Option<String>,
    },
    Shutdown,
    /// PID-1 mode only: stop everything, then power the machine off.
    Poweroff,
    /// PID-1 mode only: stop everything, then reboot the machine.
    Reboot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Reply {
    pub fn ok(data: impl Serialize) -> Reply {
        Reply {
            ok: true,
            error: None,
            data: serde_json::to_value(data).unwrap_or_default(),
        }
    }
    pub fn err(msg: impl ToString) -> Reply {
        Reply {
            ok: false,
            error: Some(msg.to_string()),
            data: serde_json::Value::Null,
        }
    }
}
