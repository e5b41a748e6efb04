//! Processes: how children are started, waited for, signalled and found again.
//!
//! - [`launcher`] starts every child from one long-lived thread and owns the
//!   single `waitpid` loop (applianced is a child subreaper, so orphaned
//!   grandchildren are reaped there too).
//! - [`scan`] finds processes a crashed applianced left behind.
//!
//! Nothing else in the crate forks or waits. Touches `/proc` and signals only.

pub mod isolate;
pub mod launcher;
pub mod scan;

pub use launcher::{Child, Command, Launcher};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ExitStatus {
    Exited { code: i32 },
    Signaled { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Exited { code: 0 })
    }

    /// Shell convention: the code, or 128 + signal number.
    pub fn shell_code(&self) -> i32 {
        match self {
            ExitStatus::Exited { code } => *code,
            ExitStatus::Signaled { signal, .. } => 128 + signal,
        }
    }

    /// `exit code 1` or `signal SIGKILL`.
    pub fn describe(&self) -> String {
        match self {
            ExitStatus::Exited { code } => format!("exit code {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                let name = Signal::try_from(*signal)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or(signal.to_string());
                if *core_dumped {
                    format!("signal {name} (core dumped)")
                } else {
                    format!("signal {name}")
                }
            }
        }
    }
}

/// `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Option<Signal> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).ok()
}

/// Send `sig` to one process; false if it no longer exists.
pub fn signal_pid(pid: i32, sig: Signal) -> bool {
    kill(Pid::from_raw(pid), sig).is_ok()
}

/// Send `sig` to a whole process group; false if the group is empty.
pub fn signal_group(pgid: i32, sig: Signal) -> bool {
    killpg(Pid::from_raw(pgid), sig).is_ok()
}

/// Whether any process (zombies included) is left in the group.
pub fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}

/// A resolved Unix identity to run a child as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl Identity {
    /// Look up `user` (and optionally `group`) in the system databases.
    pub fn lookup(user: &str, group: Option<&str>) -> Result<Identity, String> {
        let u = nix::unistd::User::from_name(user)
            .map_err(|e| format!("cannot look up user `{user}`: {e}"))?
            .ok_or_else(|| format!("user `{user}` does not exist"))?;
        let gid = match group {
            Some(g) => nix::unistd::Group::from_name(g)
                .map_err(|e| format!("cannot look up group `{g}`: {e}"))?
                .ok_or_else(|| format!("group `{g}` does not exist"))?
                .gid
                .as_raw(),
            None => u.gid.as_raw(),
        };
        Ok(Identity {
            user: u.name,
            uid: u.uid.as_raw(),
            gid,
            home: u.dir.display().to_string(),
        })
    }

    /// Whoever applianced runs as.
    pub fn current() -> Identity {
        let uid = nix::unistd::geteuid();
        let u = nix::unistd::User::from_uid(uid).ok().flatten();
        Identity {
            user: u
                .as_ref()
                .map(|u| u.name.clone())
                .unwrap_or_else(|| uid.to_string()),
            uid: uid.as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            home: u
                .map(|u| u.dir.display().to_string())
                .unwrap_or_else(|| "/".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_in_every_common_spelling() {
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("quit"), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn exit_status_describes_codes_and_signals() {
        assert_eq!(ExitStatus::Exited { code: 3 }.describe(), "exit code 3");
        assert_eq!(
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
            .describe(),
            "signal SIGKILL"
        );
        assert_eq!(
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
            .shell_code(),
            137
        );
    }
}
