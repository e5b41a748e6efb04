//! The launcher: every child is forked from one dedicated thread, and one task
//! owns every `waitpid`.
//!
//! Why a dedicated thread: `PR_SET_PDEATHSIG` fires when the *thread* that forked
//! the child exits, not the process. tokio's blocking-pool threads come and go,
//! so forking from them would kill children at random. This thread lives as long
//! as the process.
//!
//! Why one reaper: applianced is a child subreaper, so orphaned grandchildren are
//! reparented to it and must be reaped. A `waitpid(-1)` loop would steal exit
//! statuses from anyone else who waits, so nobody else does (tokio's `process`
//! feature is not even compiled in). The pid table lock is held across
//! fork+register and across each reap pass, so an exit can never be reaped before
//! its pid is known.

use super::ExitStatus;
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

/// What to start. The environment is exactly `env`: nothing is inherited.
#[derive(Debug, Clone, Default)]
pub struct Command {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    /// `(uid, gid)` to switch to; supplementary groups are dropped.
    pub identity: Option<(u32, u32)>,
    /// Pipe stdout and stderr back (otherwise they go to /dev/null).
    pub capture: bool,
    /// Signal the child gets when applianced dies.
    pub pdeathsig: Option<Signal>,
    /// Niceness increment (0..=19) set before exec, inherited by its children.
    pub nice: i32,
    /// The cgroup (v2) directory the child joins before it runs any code of
    /// its own, so every descendant stays in it (see [`crate::cgroup`]).
    pub cgroup: Option<PathBuf>,
    /// Bind this directory over `/tmp` in a mount namespace of the child's
    /// own (systemd's `PrivateTmp=`, one dir shared by an instance's units).
    pub private_tmp: Option<PathBuf>,
    /// The child's stdin (a pipe's read end, duplicated at spawn); `None`:
    /// /dev/null. Backups feed `mariadb` this way.
    pub stdin: Option<std::sync::Arc<OwnedFd>>,
}

/// A started child. Its exit arrives on `exit` exactly once.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub exit: oneshot::Receiver<ExitStatus>,
}

type Table = Arc<Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>>;
type Job = (Command, std::sync::mpsc::SyncSender<io::Result<Child>>);

#[derive(Clone)]
pub struct Launcher {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Launcher {
    /// Become a subreaper, start the launcher thread and the reaper task.
    /// Must be called inside a tokio runtime, before any child exists.
    pub fn start() -> io::Result<Launcher> {
        // Orphaned descendants are reparented to us instead of init.
        nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
        let table: Table = Arc::default();
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let reaper_table = table.clone();
        tokio::spawn(async move {
            loop {
                // SIGCHLD coalesces; the periodic pass is a safety net, not the mechanism.
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                reap(&reaper_table);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("launcher".into())
            .spawn(move || {
                for (cmd, reply) in rx {
                    let _ = reply.send(spawn_registered(&table, cmd));
                }
            })?;
        Ok(Launcher { jobs: tx })
    }

    /// Start `cmd`. Fails if the program cannot be executed.
    pub async fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let jobs = self.jobs.clone();
        tokio::task::spawn_blocking(move || {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            jobs.send((cmd, tx))
                .map_err(|_| io::Error::other("launcher thread is gone"))?;
            rx.recv()
                .map_err(|_| io::Error::other("launcher thread is gone"))?
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Run `cmd` to completion, capturing stdout and stderr together (bounded to
    /// the last 64 KiB). On timeout the process group is killed.
    pub async fn output(
        &self,
        mut cmd: Command,
        timeout: Duration,
    ) -> io::Result<(ExitStatus, String)> {
        cmd.capture = true;
        let mut child = self.spawn(cmd).await?;
        let pid = child.pid;
        let read = |fd: Option<OwnedFd>| async move {
            let mut buf = Vec::new();
            if let Some(fd) = fd {
                let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
                let mut chunk = [0u8; 8192];
                loop {
                    let n = rx.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > 65536 {
                        buf.drain(..buf.len() - 65536);
                    }
                }
            }
            io::Result::Ok(buf)
        };
        let all = async {
            let (out, err) = tokio::join!(read(child.stdout.take()), read(child.stderr.take()));
            let status = (&mut child.exit)
                .await
                .map_err(|_| io::Error::other("reaper dropped the exit"))?;
            let mut text = String::from_utf8_lossy(&out.unwrap_or_default()).into_owned();
            text.push_str(&String::from_utf8_lossy(&err.unwrap_or_default()));
            io::Result::Ok((status, text))
        };
        match tokio::time::timeout(timeout, all).await {
            Ok(r) => r,
            Err(_) => {
                super::signal_group(pid, Signal::SIGKILL);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out after {timeout:?}"),
                ))
            }
        }
    }
}

fn spawn_registered(table: &Table, cmd: Command) -> io::Result<Child> {
    let mut c = std::process::Command::new(&cmd.program);
    c.args(&cmd.args).env_clear().envs(&cmd.env);
    match &cmd.stdin {
        Some(fd) => c.stdin(std::process::Stdio::from(fd.try_clone()?)),
        None => c.stdin(std::process::Stdio::null()),
    };
    if let Some(cwd) = &cmd.cwd {
        c.current_dir(cwd);
    }
    // Our own pipes rather than Stdio::piped(): the write ends are chowned to the
    // child's user, so a child that reopens /proc/self/fd/2 (php-fpm's error_log
    // does) is allowed to after dropping privileges.
    let mut read_ends = None;
    if cmd.capture {
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        if let Some((uid, gid)) = cmd.identity {
            for w in [&out_w, &err_w] {
                nix::unistd::fchown(w, Some(uid.into()), Some(gid.into()))
                    .map_err(io::Error::from)?;
            }
        }
        c.stdout(std::process::Stdio::from(out_w))
            .stderr(std::process::Stdio::from(err_w));
        read_ends = Some((out_r, err_r));
    } else {
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }
    // Its own process group, so a stop or kill reaches every descendant that stays in it.
    c.process_group(0);
    let parent = std::process::id();
    let pdeathsig = cmd.pdeathsig;
    let nice = cmd.nice;
    let setup = super::isolate::ChildSetup::prepare(
        cmd.cgroup.as_deref(),
        cmd.private_tmp.as_deref(),
        cmd.identity,
    )?;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (those of `ChildSetup::apply`, then prctl,
    // getppid, setpriority) on memory prepared before the fork. The
    // parent-death signal comes after `apply` because a credential change
    // clears it.
    unsafe {
        c.pre_exec(move || {
            setup.apply()?;
            if nice != 0 && libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(sig) = pdeathsig {
                nix::sys::prctl::set_pdeathsig(sig).map_err(io::Error::from)?;
                // The parent may have died between fork and prctl.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("applianced exited during spawn"));
                }
            }
            Ok(())
        });
    }
    let mut guard = table.lock().unwrap_or_else(|p| p.into_inner());
    let child = c.spawn()?;
    let pid = child.id() as i32;
    let (tx, rx) = oneshot::channel();
    guard.insert(pid, tx);
    drop(guard);
    // Dropping the Command closes our copies of the write ends, so EOF arrives
    // when the child (and everything that inherited them) is gone.
    drop(c);
    let (stdout, stderr) = match read_ends {
        Some((o, e)) => (Some(o), Some(e)),
        None => (None, None),
    };
    Ok(Child {
        pid,
        stdout,
        stderr,
        exit: rx,
    })
}

/// Reap everything that has exited: our children get their status delivered,
/// adopted orphans are just collected so no zombie remains.
fn reap(table: &Table) {
    let mut guard = table.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited { code }),
            Ok(WaitStatus::Signaled(pid, sig, core)) => (
                pid,
                ExitStatus::Signaled {
                    signal: sig as i32,
                    core_dumped: core,
                },
            ),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Err(Errno::EINTR) => continue,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "waitpid failed");
                return;
            }
        };
        match guard.remove(&pid.as_raw()) {
            Some(tx) => {
                let _ = tx.send(status);
            }
            None => {
                tracing::debug!(pid = pid.as_raw(), status = %status.describe(), "reaped adopted orphan")
            }
        }
    }
}
