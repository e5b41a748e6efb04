//! The end of PID 1: every process gets SIGTERM then SIGKILL, is reaped, the
//! disks are synced, the data partition unmounted and / remounted read-only,
//! then reboot(2). Only pid 1 signals everything or calls reboot(2) (in a PID
//! namespace the kernel confines both to it); `run --init` as another pid
//! exits instead. Never returns.

use super::console::say;
use super::machine::Machine;
use crate::daemon::StopAction;
use nix::errno::Errno;
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::path::Path;
use std::time::{Duration, Instant};

/// Reap every exited child; true once there are no children left.
pub fn reap_all() -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

fn signal_everyone(sig: Signal, wait: Duration) {
    let _ = kill(Pid::from_raw(-1), sig);
    let t0 = Instant::now();
    while t0.elapsed() < wait {
        if reap_all() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop what is left, sync, unmount, and power off or reboot (or exit when
/// not pid 1).
pub fn halt(action: StopAction, machine: Machine, data_dir: &Path) -> ! {
    if machine.pid1 {
        say("stopping remaining processes");
        signal_everyone(Signal::SIGTERM, Duration::from_secs(5));
        signal_everyone(Signal::SIGKILL, Duration::from_secs(2));
    }
    nix::unistd::sync();
    if machine.owns {
        super::mounts::finish(data_dir);
        nix::unistd::sync();
    }
    if !machine.pid1 {
        say(format!("not PID 1: exiting instead of {}", action.as_str()));
        std::process::exit(0);
    }
    let mode = match action {
        StopAction::Reboot => RebootMode::RB_AUTOBOOT,
        StopAction::Poweroff | StopAction::Exit => RebootMode::RB_POWER_OFF,
    };
    say(match mode {
        RebootMode::RB_AUTOBOOT => "rebooting",
        _ => "powering off",
    });
    let err = reboot(mode).err();
    // Only reached if the kernel refused: stay alive, reaping, as PID 1 must.
    say(format!("reboot(2) failed: {err:?}; halting here"));
    loop {
        let _ = waitpid(None, None);
        std::thread::sleep(Duration::from_secs(1));
    }
}
