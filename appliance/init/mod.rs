//! PID-1 mode (`applianced` as `/sbin/init`, or `applianced run --init`):
//! bring the machine up, provision it from a NoCloud seed, run the daemon, and
//! never exit: every error and panic is reported on the console and
//! contained; the end is always [`halt::halt`] (reboot(2), or exit when not pid 1).
//!
//! Boot order: console and panic hook -> API mounts, ctrl-alt-del to SIGINT,
//! `lo` up, the open-file limit raised, module coldplug started on a thread
//! (only when it owns the machine) -> base config -> kernel settings
//! (sysctl, transparent huge pages) -> data partition (grow,
//! mount) -> coldplug's first pass done (the rest goes on in the background)
//! -> NoCloud seed -> hostname -> network ->
//! plan -> daemon (+ power button) -> halt. A config that cannot be used
//! falls back to the system units alone (SSH, DHCP), so the machine stays
//! reachable.
//!
//! | file | role | touches |
//! |---|---|---|
//! | `machine.rs` | pid 1? owning a real machine? | /proc |
//! | `console.rs` | console fds, report lines, panic hook | /dev/console |
//! | `mounts.rs` | API filesystems, data partition, final unmount | mounts, the data partition |
//! | `modules.rs` | modalias coldplug | /sys, modprobe |
//! | `net.rs` | lo, first NIC, static address | links, routes, /etc/resolv.conf |
//! | `seed.rs`, `seed_apply.rs` | NoCloud seed: find, parse, apply | the seed volume, DATA/instances/system |
//! | `power.rs` | ACPI power button | /sys/class/input, /dev/input |
//! | `halt.rs` | kill all, sync, unmount, reboot(2) | every process |
//! | `kernel.rs` | `[system]` sysctl and transparent huge pages | /proc/sys, /sys/kernel/mm |
//! | `blkid.rs` | which filesystem is on which device: one probe, reused | blkid, /sys/class/block |
//! | `tools.rs` | run blkid/ip/modprobe/... before the reaper exists | its children |

pub mod blkid;
pub mod console;
pub mod halt;
pub mod kernel;
pub mod machine;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod power;
pub mod seed;
pub mod seed_apply;
pub mod tools;

use crate::config::{self, ConfigError, Loaded};
use crate::daemon::{self, RunMode, StopAction};
use crate::layout::Layout;
use crate::plan::{self, Plan, system::HostPlan, system::InitFacts, system::Network};
use console::say;
use machine::Machine;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the command line said.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// `--sandbox`: a test inside namespaces; touch nothing of the machine.
    pub sandbox: bool,
}

/// Be PID 1. Never returns.
pub fn run(opts: InitOptions) -> ! {
    let machine = Machine::detect(opts.sandbox);
    if machine.owns {
        console::attach();
    }
    console::install_panic_hook();
    say(format!(
        "PID-1 mode (pid {}{})",
        std::process::id(),
        if machine.owns {
            ", owning the machine"
        } else {
            ", sandbox: no mounts, modules, hostname or network changes"
        }
    ));
    if machine.owns {
        mounts::early();
        if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
            say(format!("cannot route ctrl-alt-del to SIGINT: {e}"));
        }
        net::link_up("lo");
        raise_open_file_limit();
    }
    // Module loading (1-1.5 s under emulation) overlaps with finding,
    // checking and mounting the data partition, which needs none of it: the
    // initramfs already loaded the disk driver. Its first pass is waited for
    // before the NIC's name, the seed's filesystems and the power button are
    // needed; later passes go on in the background.
    let coldplug = if machine.owns {
        let (done, first_pass) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("coldplug".into())
            .spawn(move || {
                modules::coldplug(move || {
                    // The receiver may be gone (boot panicked): nothing to tell.
                    let _ = done.send(());
                })
            });
        match spawned {
            Ok(_) => Some(first_pass),
            // No thread to run it on: the first pass here, then.
            Err(e) => {
                say(format!("coldplug thread: {e}; loading modules now"));
                modules::coldplug(|| {});
                None
            }
        }
    } else {
        None
    };
    let mut data_dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(Layout::default_data_dir);
    let action = match std::panic::catch_unwind(AssertUnwindSafe(|| {
        boot(&opts, machine, &mut data_dir, coldplug)
    })) {
        Ok(a) => a,
        Err(_) => {
            say("boot failed with an internal error (panic); waiting for a shutdown request");
            wait_for_stop(machine)
        }
    };
    halt::halt(action, machine, &data_dir)
}

/// The open-file limit applianced and every unit inherit in PID-1 mode: the
/// .deb's `LimitNOFILE=65536` (packaging/applianced.service). The kernel
/// gives pid 1 a soft 1024 (hard 4096): MariaDB then logged `Could not
/// increase number of max_open_files to more than 1024 (request: 32233)` and
/// cut its table cache to 397 (a tenant database each adds tables), and the
/// front end could hold at most ~1000 connections.
const OPEN_FILE_LIMIT: u64 = 65536;

fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, OPEN_FILE_LIMIT, OPEN_FILE_LIMIT) {
        say(format!(
            "cannot raise the open-file limit to {OPEN_FILE_LIMIT}: {e}"
        ));
    }
}

/// Everything between the early mounts and the stop request. `coldplug`:
/// hears when the module loading started beside it has done its first pass.
fn boot(
    opts: &InitOptions,
    machine: Machine,
    data_dir: &mut PathBuf,
    coldplug: Option<std::sync::mpsc::Receiver<()>>,
) -> StopAction {
    let base = load_base(opts.config.as_deref());
    let host = match &base {
        Ok(l) => plan::system::host(&l.config.system)
            .map_err(|(k, p)| ConfigError::new(&l.source, k, p))
            .unwrap_or_else(|e| {
                say(format!("config error: {e}; using the default [system]"));
                HostPlan::default()
            }),
        Err(e) => {
            say(format!("config error: {e}; using the default [system]"));
            HostPlan::default()
        }
    };
    if opts.data_dir.is_none() {
        if let Some(d) = base.as_ref().ok().and_then(|l| l.config.data_dir.clone()) {
            *data_dir = d;
        }
    }
    let data_dir = data_dir.clone();
    if machine.owns {
        // Before anything big is allocated: the daemon's threads, MariaDB's
        // buffer pool and php-fpm's opcache all come after this.
        kernel::apply(&host);
        mounts::data_partition(&host.data_device, host.grow_data, &data_dir);
    }
    if coldplug.is_some_and(|first_pass| first_pass.recv().is_err()) {
        say("coldplug failed with an internal error; some modules may be missing");
    }
    let layout = Layout::new(&data_dir);
    let facts = InitFacts {
        interface: if machine.owns {
            host.interface.clone().or_else(net::first_nic)
        } else {
            None
        },
        allow_no_instances: false,
    };
    if host.seed {
        provision_from_seed(&layout, &facts);
    }
    let hostname = seed_apply::boot_hostname(&layout, host.hostname.as_deref());
    if machine.owns {
        match nix::unistd::sethostname(&hostname) {
            Ok(()) => {
                net::ensure_hosts(&hostname);
                say(format!("hostname {hostname}"))
            }
            Err(e) => say(format!("cannot set hostname {hostname}: {e}")),
        }
    } else {
        say(format!("hostname {hostname} (sandbox: not set)"));
    }
    if machine.owns {
        match (&facts.interface, &host.network) {
            (_, Network::None) => {}
            (Some(i), net) => net::configure(i, net),
            (None, _) => say("no network interface found"),
        }
    }
    let plan = choose_plan(base, &layout, &facts);
    match serve(plan, machine) {
        Ok(a) => a,
        Err(e) => {
            say(format!(
                "applianced failed: {e}; keeping SSH and the network up"
            ));
            let fallback = fallback_plan(&data_dir, &facts);
            match serve(fallback.map_err(|e| e.to_string()), machine) {
                Ok(a) => a,
                Err(e) => {
                    say(format!(
                        "the system units cannot run either: {e}; waiting for a shutdown request"
                    ));
                    wait_for_stop(machine)
                }
            }
        }
    }
}

/// `--config`, else /etc/applianced/appliance.toml when present, else the
/// embedded default.
fn load_base(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let etc = Path::new(seed::ETC_CONFIG);
    match path {
        Some(p) => config::load(Some(p)),
        None if etc.exists() => config::load(Some(etc)),
        None => config::load(None),
    }
}

fn provision_from_seed(layout: &Layout, facts: &InitFacts) {
    let Some((dev, seed)) = seed::find_and_read() else {
        return;
    };
    say(format!("NoCloud seed on {dev}"));
    let seed = match seed {
        Ok(s) => s,
        Err(e) => {
            say(format!("seed on {dev} cannot be read: {e}; ignored"));
            return;
        }
    };
    let validate = |text: &str| -> Result<(), String> {
        let loaded =
            config::load_str(text, "seed user-data `applianced`").map_err(|e| e.to_string())?;
        plan::build_with(&loaded, Some(layout.data_dir()), Some(facts))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    match seed_apply::apply(&seed, layout, &validate) {
        Ok(a) => say(format!(
            "seed applied: instance-id {}, hostname {}, {} ssh key(s), config {}",
            seed.instance_id.as_deref().unwrap_or("-"),
            a.hostname.as_deref().unwrap_or("-"),
            a.keys,
            if a.config_installed {
                "installed"
            } else if a.config_rejected.is_some() {
                "rejected"
            } else {
                "unchanged"
            }
        )),
        Err(e) => say(format!("seed cannot be applied: {e}")),
    }
}

/// The seeded config (data partition) if usable, else the base config, else
/// the system units alone.
fn choose_plan(
    base: Result<Loaded, ConfigError>,
    layout: &Layout,
    facts: &InitFacts,
) -> Result<Plan, String> {
    let dd = layout.data_dir();
    let seeded = layout.seeded_config();
    if seeded.exists() {
        match config::load(Some(&seeded)).and_then(|l| plan::build_with(&l, Some(dd), Some(facts)))
        {
            Ok(p) => return Ok(p),
            Err(e) => say(format!("config error: {e}; trying the image's config")),
        }
    }
    match base.and_then(|l| plan::build_with(&l, Some(dd), Some(facts))) {
        Ok(p) => Ok(p),
        Err(e) => Err(format!("config error: {e}")),
    }
}

/// No instances, no front end: only the system units (SSH, DHCP).
fn fallback_plan(data_dir: &Path, facts: &InitFacts) -> Result<Plan, ConfigError> {
    let mut loaded =
        config::load_str("[http]\nenabled = false\n", "<fallback: system units only>")?;
    loaded.config.instances.clear();
    let facts = InitFacts {
        allow_no_instances: true,
        ..facts.clone()
    };
    plan::build_with(&loaded, Some(data_dir), Some(&facts))
}

/// Run the daemon on a fresh runtime until a stop request; the runtime is
/// gone when this returns, so nothing else waits on children.
fn serve(plan: Result<Plan, String>, machine: Machine) -> Result<StopAction, String> {
    let plan = plan?;
    let rt = runtime()?;
    let mode = RunMode::new(true);
    if machine.owns {
        power::watch(mode.stop_tx.clone());
    }
    if std::env::var_os("APPLIANCE_TEST_PANIC_TASK").is_some() {
        // Test hook: a task that panics once the daemon runs.
        rt.spawn(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            panic!("test panic in a task (APPLIANCE_TEST_PANIC_TASK)");
        });
    }
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(daemon::run_with(plan, mode))
    }));
    rt.shutdown_timeout(Duration::from_secs(3));
    match r {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("internal error (panic) in the daemon".into()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("applianced")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Nothing else works: reap orphans and wait for a signal or the power
/// button, so the machine can still be shut down cleanly.
fn wait_for_stop(machine: Machine) -> StopAction {
    let Ok(rt) = runtime() else {
        // Not even a runtime: reap forever (PID 1 must not exit).
        loop {
            let _ = nix::sys::wait::waitpid(None, None);
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    let mode = RunMode::new(true);
    if machine.owns {
        power::watch(mode.stop_tx.clone());
    }
    let mut rx = mode.stop_rx;
    let a = rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut pwr), Ok(mut chld)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::from_raw(libc::SIGPWR)),
            signal(SignalKind::child()),
        ) else {
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return StopAction::Poweroff,
                _ = pwr.recv() => return StopAction::Poweroff,
                _ = int.recv() => return StopAction::Reboot,
                a = rx.recv() => return a.unwrap_or(StopAction::Poweroff),
                _ = chld.recv() => { halt::reap_all(); }
                _ = tokio::time::sleep(Duration::from_secs(5)) => { halt::reap_all(); }
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    a
}
