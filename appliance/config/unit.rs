//! The unit schema shared by `units/*.toml` and `[instance.units.NAME]` tables.
//!
//! Every field is optional so an instance table can override just one field of a
//! shipped unit. Field names follow systemd where the concept is the same
//! (`after`, `requires`, `restart`, `restart_sec`, `timeout_stop_sec`,
//! `kill_signal`, `send_sigkill`, `exec_start_pre`, `state_directory`).
//! String values are minijinja templates, rendered per instance by [`crate::plan`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitConfig {
    pub description: Option<String>,
    /// Base this unit on a shipped template of another name (e.g. a second redis).
    pub template: Option<String>,
    /// `false` drops a shipped unit from this instance.
    pub enabled: Option<bool>,
    /// Program name (looked up in PATH) or absolute path.
    pub command: Option<String>,
    pub args: Option<Vec<String>>,
    /// Extra environment. Merged key by key over the template's.
    pub environment: Option<BTreeMap<String, String>>,
    /// Hand the unit the application environment: DB_*, REDIS_*, APP_* and `[instance.env]`.
    pub app_env: Option<bool>,
    /// Default: the instance user. `root` only when applianced runs as root.
    pub user: Option<String>,
    pub group: Option<String>,
    pub working_directory: Option<String>,
    /// Start only after these units are settled (ready, failed or stopped).
    pub after: Option<Vec<String>>,
    /// Start only after these units are ready; stopping them stops this unit first.
    pub requires: Option<Vec<String>>,
    /// Start beside the units in `requires` rather than after them. The unit
    /// still counts as ready only once they are: its probe must pass, then
    /// they must be ready, then php-fpm's warm-up runs. The stop order is
    /// unchanged. The shipped php-fpm uses it, so PHP loads while MariaDB
    /// starts or recovers.
    pub start_early: Option<bool>,
    /// systemd's `Type=idle`, with the cap in seconds: hold the first start
    /// until every unit without it, in every instance, has come up (ready,
    /// failed, skipped or stopped), but no longer than this. 0, the default,
    /// starts at once. The shipped sshd uses 10, so SSH's start (host keys,
    /// OpenSSL) does not take CPU from the app's boot, and a broken app
    /// keeps SSH away for 10 s at most.
    pub start_idle_sec: Option<f64>,
    pub readiness: Option<Readiness>,
    pub restart: Option<RestartPolicy>,
    /// First restart delay; it doubles on each consecutive failure.
    pub restart_sec: Option<f64>,
    /// Cap of the growing restart delay.
    pub restart_max_delay_sec: Option<f64>,
    /// Uptime after which a crash counts as the first again (delay and burst reset).
    pub restart_reset_sec: Option<f64>,
    /// More than this many starts within `start_limit_interval_sec` marks the unit failed.
    pub start_limit_burst: Option<u32>,
    pub start_limit_interval_sec: Option<f64>,
    /// How long the readiness probe may take before the start counts as failed.
    pub timeout_start_sec: Option<f64>,
    /// How long a stop may take before the process group gets SIGKILL.
    pub timeout_stop_sec: Option<f64>,
    /// Signal for a stop, e.g. `SIGTERM` or `SIGQUIT`.
    pub kill_signal: Option<String>,
    /// `false` never SIGKILLs (databases): a stop waits as long as it takes.
    pub send_sigkill: Option<bool>,
    /// systemd's `Nice=`, 0 (default) to 19: a lower CPU priority for the unit's
    /// processes and everything they start. The shipped queue workers use 10, so
    /// web requests win the CPU from background jobs.
    pub nice: Option<i32>,
    /// systemd's `CPUWeight=`, 1 to 10000 (default 100): the unit's share of
    /// the CPU against the instance's other units when they compete. It is
    /// what makes `nice` count: each unit has its own cgroup, and nice only
    /// ranks processes within one. The shipped queue workers use 20.
    pub cpu_weight: Option<u32>,
    /// Number of identical, independently supervised processes.
    pub replicas: Option<u32>,
    /// Directories under the instance dir created for, and owned by, the unit user.
    pub state_directory: Option<Vec<String>>,
    /// Config files rendered from `assets/` before every start.
    pub render: Option<Vec<RenderFile>>,
    /// One-shot commands run before every start, in order; a failure fails the start.
    pub exec_start_pre: Option<Vec<ExecPre>>,
    /// systemd's `ConditionPathExists=`: when this path does not exist at start,
    /// the unit is skipped (state `skipped`, not a failure). The shipped
    /// queue-worker uses `{{ app_dir }}/artisan`, so apps without Laravel run none.
    pub condition_path_exists: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderFile {
    /// Path under `assets/`, e.g. `mariadb/my.cnf`.
    pub template: String,
    /// Destination, usually under `{{ run_dir }}`.
    pub path: String,
    /// Octal file mode as a string, default `"0600"`.
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecPre {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Skip the command when this path exists (e.g. an initialised data dir).
    #[serde(default)]
    pub skip_if_exists: Option<String>,
    /// Run the command only when this path exists (systemd's
    /// `ConditionPathExists=`, for one step): a missing path skips it.
    #[serde(default)]
    pub condition_path_exists: Option<String>,
}

/// How the supervisor learns that a unit is up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Readiness {
    /// Ready as soon as the process has started.
    None,
    /// A TCP connect to `address` (host:port) succeeds.
    Tcp { address: String },
    /// A socket listens on `address` (IP:port), as the kernel's table
    /// (/proc/net/tcp, tcp6) shows; a wildcard listener of the port counts.
    /// No connection is made: for servers that fork (or worse) per
    /// connection, like sshd, whose probe connection cost a whole re-exec
    /// and a `Connection closed ... [preauth]` line at every start.
    Listen { address: String },
    /// A connect to the unix stream socket at `path` succeeds.
    Unix { path: String },
    /// The command exits 0 (run as the unit's user, with its environment).
    Exec {
        command: String,
        #[serde(default)]
        args: Vec<String>,
    },
    /// An HTTP GET answers with a 2xx status (or `status` when given).
    Http {
        url: String,
        #[serde(default)]
        status: Option<u16>,
    },
    /// php-fpm's ping page answers over FastCGI.
    Fastcgi {
        socket: String,
        #[serde(default = "default_ping_path")]
        path: String,
        #[serde(default = "default_ping_response")]
        response: String,
        /// Warm-up: before the unit counts as ready, `GET warm_early_uri`
        /// once the ping answers, then `GET warm_uri` once what the unit
        /// requires is ready, through this script (the app's front
        /// controller), so the app is compiled into opcache (and its file
        /// cache) before clients and the queue workers arrive. The answers
        /// are logged, not judged; a missing script skips them, and `""`
        /// skips one.
        #[serde(default)]
        warm_script: Option<String>,
        #[serde(default = "default_warm_uri")]
        warm_uri: String,
        #[serde(default)]
        warm_early_uri: String,
    },
    /// The MariaDB server sends its protocol greeting on `socket`.
    Mariadb { socket: String },
    /// Redis answers PING (after AUTH when `password` is set).
    Redis {
        socket: String,
        #[serde(default)]
        password: Option<String>,
    },
    /// The process sends `READY=1` to the `NOTIFY_SOCKET` applianced serves.
    Notify,
}

fn default_ping_path() -> String {
    "/fpm-ping".into()
}
fn default_ping_response() -> String {
    "pong".into()
}
fn default_warm_uri() -> String {
    "/".into()
}

impl UnitConfig {
    /// Field-by-field overlay: every field set in `over` wins; environment maps merge.
    pub fn overlay(mut self, over: &UnitConfig) -> UnitConfig {
        macro_rules! take {
            ($($f:ident),*) => {
                // Exhaustive: a field added to UnitConfig but not listed here
                // does not compile, rather than being silently not overlaid.
                let UnitConfig { $($f: _,)* environment: _ } = over;
                $( if over.$f.is_some() { self.$f = over.$f.clone(); } )*
            };
        }
        take!(
            description,
            template,
            enabled,
            command,
            args,
            app_env,
            user,
            group,
            working_directory,
            after,
            requires,
            start_early,
            start_idle_sec,
            readiness,
            restart,
            restart_sec,
            restart_max_delay_sec,
            restart_reset_sec,
            start_limit_burst,
            start_limit_interval_sec,
            timeout_start_sec,
            timeout_stop_sec,
            kill_signal,
            send_sigkill,
            nice,
            cpu_weight,
            replicas,
            state_directory,
            render,
            exec_start_pre,
            condition_path_exists
        );
        if let Some(env) = &over.environment {
            let mut merged = self.environment.take().unwrap_or_default();
            merged.extend(env.clone());
            self.environment = Some(merged);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_replaces_fields_and_merges_environment() {
        let base: UnitConfig = toml::from_str(
            "command = \"redis-server\"\nreplicas = 1\n[environment]\nA = \"1\"\nB = \"2\"\n",
        )
        .unwrap();
        let over: UnitConfig = toml::from_str("replicas = 3\n[environment]\nB = \"x\"\n").unwrap();
        let merged = base.overlay(&over);
        assert_eq!(merged.command.as_deref(), Some("redis-server"));
        assert_eq!(merged.replicas, Some(3));
        let env = merged.environment.unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x");
    }

    #[test]
    fn readiness_kinds_parse_with_defaults() {
        let r: Readiness = toml::from_str("kind = \"fastcgi\"\nsocket = \"/s\"\n").unwrap();
        assert_eq!(
            r,
            Readiness::Fastcgi {
                socket: "/s".into(),
                path: "/fpm-ping".into(),
                response: "pong".into(),
                warm_script: None,
                warm_uri: "/".into(),
                warm_early_uri: String::new(),
            }
        );
        let r: Readiness = toml::from_str("kind = \"notify\"").unwrap();
        assert_eq!(r, Readiness::Notify);
        assert!(toml::from_str::<Readiness>("kind = \"smoke-signal\"").is_err());
    }
}
