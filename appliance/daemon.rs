//! `applianced run`: bring the whole appliance up, serve the control socket,
//! and on SIGTERM/SIGINT (or `applianced shutdown`) stop everything in reverse
//! order and exit 0.
//!
//! Order of work: plan (already checked) -> data dir and lock -> own log ->
//! launcher/reaper -> state db -> stop leftovers -> cgroups (kill what
//! escaped) -> provision and start units -> scheduler -> front end -> control
//! socket -> wait -> shutdown (scheduler, front end, units, each instance's
//! cgroup) -> reap stragglers.

use crate::control::server::{self, Server};
use crate::logs::{LogHub, RotatingFile};
use crate::plan::Plan;
use crate::process::{self, Launcher, scan};
use crate::provision;
use crate::scheduler::Scheduler;
use crate::state::StateDb;
use crate::supervisor::{self, Appliance};
use nix::sys::signal::Signal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("another applianced is already running with data dir {0}")]
    AlreadyRunning(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    #[error("front end: {0}")]
    Front(#[from] crate::front::FrontError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What to do once every unit has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopAction {
    /// End applianced (a daemon's stop; in PID-1 mode, the same as poweroff).
    Exit,
    Poweroff,
    Reboot,
}

impl StopAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            StopAction::Exit => "exit",
            StopAction::Poweroff => "poweroff",
            StopAction::Reboot => "reboot",
        }
    }
}

/// How `run_with` is driven: whether applianced is the machine's init, and
/// the channel every stop request (signal, control socket, power button)
/// arrives on.
pub struct RunMode {
    /// PID-1 mode: `reboot`/`poweroff` are allowed, SIGTERM means poweroff,
    /// SIGINT (ctrl-alt-del) reboot, SIGPWR poweroff.
    pub init: bool,
    pub stop_tx: mpsc::Sender<StopAction>,
    pub stop_rx: mpsc::Receiver<StopAction>,
}

impl RunMode {
    pub fn new(init: bool) -> RunMode {
        let (stop_tx, stop_rx) = mpsc::channel(8);
        RunMode {
            init,
            stop_tx,
            stop_rx,
        }
    }
}

/// Run until asked to stop. Returns after a clean shutdown.
pub async fn run(plan: Plan) -> Result<(), DaemonError> {
    run_with(plan, RunMode::new(false)).await.map(|_| ())
}

/// Run until asked to stop; returns what was asked for once every unit has
/// stopped.
pub async fn run_with(plan: Plan, mode: RunMode) -> Result<StopAction, DaemonError> {
    let RunMode {
        init,
        stop_tx: shutdown_tx,
        stop_rx: mut shutdown_rx,
    } = mode;
    let t0 = Instant::now();
    let layout = plan.layout.clone();
    let data = layout.data_dir().to_path_buf();
    let dd = |source| DaemonError::DataDir {
        path: data.display().to_string(),
        source,
    };
    // The data dir and instances/ must be traversable by instance users.
    provision::mkdir(&data, 0o711, None).map_err(dd)?;
    provision::mkdir(&data.join("instances"), 0o711, None).map_err(dd)?;
    provision::mkdir(&layout.run_dir(), 0o700, None).map_err(dd)?;
    provision::mkdir(&data.join("logs"), 0o700, None).map_err(dd)?;
    let _lock = lock_data_dir(&layout.run_dir().join("applianced.lock"))
        .map_err(|_| DaemonError::AlreadyRunning(data.display().to_string()))?;
    let logs = LogHub::new(plan.log.rotation());
    let shipper = crate::logs::ship::Shipper::start(&plan.ship);
    logs.set_shipper(shipper.clone());
    init_tracing(&layout.own_log(), &plan, &logs)?;
    // A panic in a task must not vanish: log it where operators look.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "internal error (panic); please report it");
        eprintln!("applianced: internal error: {info}");
    }));
    tracing::info!(config = %plan.source, data_dir = %data.display(), instances = plan.instances.len(), "applianced starting");

    // Listening sockets first: a busy port is an error before any unit starts.
    let listeners = crate::front::bind_all(&plan.front)?;
    let admin_listeners = crate::admin::bind(&plan.admin)?;
    let admin_credentials = crate::admin::credentials(plan.admin.auth, &layout)?;
    let launcher = Launcher::start()?;
    let state = StateDb::open(&layout.state_db())?;
    let left = supervisor::cleanup_leftovers(&plan, &state).await;
    if left > 0 {
        tracing::warn!(
            count = left,
            "stopped processes left running by a previous applianced"
        );
    }
    // After that graceful, recorded cleanup (a leftover mariadbd gets its
    // stop signal and timeout, never a SIGKILL first): whatever is still in
    // the cgroups (escaped grandchildren) is killed.
    let cgroups = cgroup_root(&plan).await;
    let appliance =
        Arc::new(Appliance::boot(&plan, &launcher, &state, &logs, cgroups.as_ref()).await?);
    let backups = Arc::new(crate::backup::Backups::new(
        &plan.backups,
        &layout,
        &launcher,
        &state,
        appliance.clone(),
    ));
    // Cron entries start counting once their instance is provisioned; the first
    // fire is the next one after now (nothing missed while down is replayed).
    let scheduler = Arc::new(Scheduler::start(
        &plan,
        &|name| appliance.provisioned(name),
        &|name| crate::lifecycle::hold(&appliance, &backups, name),
        &launcher,
        &state,
        &logs,
    )?);
    backups.start();
    // Provisioning has put the apps in place; serve them (PHP requests held
    // while php-fpm starts, see front::fastcgi::pool).
    let front = match listeners {
        Some(l) => match crate::front::start(&plan.front, l, &layout, &logs, {
            let appliance = appliance.clone();
            Arc::new(move |instance: &str, unit: &str| appliance.starting_feed(instance, unit))
        })
        .await
        {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                tracing::error!(error = %e, "front end failed to start; stopping");
                scheduler.stop().await;
                appliance.shutdown().await;
                return Err(e.into());
            }
        },
        None => None,
    };

    // The admin listener (`/metrics`) once everything it reads exists.
    let (admin_stop, admin_stopped) = tokio::sync::watch::channel(false);
    if !admin_listeners.is_empty() {
        let history = Arc::new(crate::metrics::history::History::new(
            plan.admin.history_interval,
            plan.admin.history_span,
        ));
        let admin = Arc::new(crate::admin::Admin {
            metrics: crate::metrics::Metrics {
                appliance: appliance.clone(),
                scheduler: scheduler.clone(),
                backups: backups.clone(),
                front: front.clone(),
                layout: layout.clone(),
                logs: logs.clone(),
                state: state.clone(),
                history: Some(history.clone()),
            },
            credentials: admin_credentials,
        });
        // The dashboard's history: one cheap sample every interval.
        let sampler = admin.clone();
        let mut stopped = admin_stopped.clone();
        tokio::spawn(async move {
            loop {
                let readings = sampler.metrics.readings();
                history.record(Instant::now(), std::time::SystemTime::now(), &readings);
                tokio::select! {
                    _ = tokio::time::sleep(history.interval) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        });
        admin.start(admin_listeners, admin_stopped)?;
    }

    let listener = server::bind(&layout.control_socket())?;
    let lifecycle = Arc::new(crate::lifecycle::Lifecycle::new(
        plan.clone(),
        appliance.clone(),
        scheduler.clone(),
        backups.clone(),
        front.clone(),
        launcher.clone(),
    ));
    let srv = Arc::new(Server {
        appliance: appliance.clone(),
        scheduler: scheduler.clone(),
        backups: backups.clone(),
        lifecycle,
        logs: logs.clone(),
        log_keep: plan.log.keep,
        shutdown: shutdown_tx.clone(),
        init,
    });
    tokio::spawn(srv.serve(listener));
    tokio::spawn(announce_ready(appliance.clone(), t0));
    // CPU rates for `status`: one cgroup read per instance every 5 s.
    let sampler = appliance.clone();
    tokio::spawn(async move {
        loop {
            sampler.sample_cpu();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });

    // SIGHUP re-reads TLS certificates now (they are also watched every 2 s).
    // Config reload is not implemented yet, so say so and keep running.
    let mut hup = signal(SignalKind::hangup())?;
    let hup_front = front.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Some(f) = &hup_front {
                f.reload_certificates();
            }
            tracing::warn!(
                "SIGHUP received: certificates re-read; config reload is not supported yet, restart applianced to apply config changes"
            );
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // SIGPWR: a UPS daemon or the hypervisor asks for a power-off.
    let mut pwr = signal(SignalKind::from_raw(libc::SIGPWR))?;
    let (on_term, on_int) = if init {
        (StopAction::Poweroff, StopAction::Reboot)
    } else {
        (StopAction::Exit, StopAction::Exit)
    };
    let (why, action) = tokio::select! {
        _ = term.recv() => ("SIGTERM", on_term),
        _ = int.recv() => ("SIGINT", on_int),
        _ = pwr.recv() => ("SIGPWR", on_term),
        a = shutdown_rx.recv() => ("request", a.unwrap_or(StopAction::Exit)),
    };
    let why = format!("{why} ({})", action.as_str());
    tracing::info!(
        reason = %why,
        "shutting down: stopping units in reverse dependency order"
    );
    eprintln!("applianced: {why}: stopping units in reverse dependency order");
    // The scheduler first: no new runs; in-flight runs get SIGTERM (SIGKILL
    // after a grace) while the units they may use are still up.
    scheduler.stop().await;
    backups.stop();
    let _ = admin_stop.send(true);
    // Then the front end: no new requests, in-flight ones finish within the grace period.
    if let Some(f) = &front {
        f.stop().await;
    }
    appliance.shutdown().await;
    reap_stragglers(&data).await;
    if let Some(root) = &cgroups {
        appliance.remove_cgroups();
        root.remove_if_empty();
    }
    let _ = std::fs::remove_file(layout.control_socket());
    let st = state.clone();
    if !tokio::task::spawn_blocking(move || st.flush(Duration::from_secs(10)))
        .await
        .unwrap_or(false)
    {
        tracing::warn!("state database: the last events may not be recorded");
    }
    shipper.stop().await;
    tracing::info!("applianced stopped cleanly");
    eprintln!("applianced: stopped cleanly");
    Ok(action)
}

/// The cgroup subtree for the instances, with what a crashed applianced left
/// in it killed; `None` (logged) where the machine has no usable cgroup v2.
async fn cgroup_root(plan: &Plan) -> Option<crate::cgroup::CgroupRoot> {
    use crate::cgroup::{CgroupRoot, root_name};
    let name = root_name(
        plan.layout.data_dir(),
        &crate::layout::Layout::default_data_dir(),
    );
    match CgroupRoot::detect(&name) {
        Ok(Some(root)) => {
            let keep: Vec<String> = plan.all_instances().map(|i| i.name.clone()).collect();
            let killed = root.clear_leftovers(&keep).await;
            if killed > 0 {
                tracing::warn!(
                    cgroups = killed,
                    "killed processes a previous applianced left in its cgroups"
                );
            }
            tracing::info!(cgroup = %root.dir().display(), controllers = ?root.controllers(), "instances get cgroups");
            Some(root)
        }
        Ok(None) => {
            tracing::warn!(
                "no cgroup v2 filesystem: instances run without cgroups (no limits, no whole-instance kill)"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cgroup v2 not usable: instances run without cgroups (no limits, no whole-instance kill)");
            None
        }
    }
}

/// Print (and tell systemd, under Type=notify) when every unit is ready.
async fn announce_ready(appliance: Arc<Appliance>, t0: Instant) {
    while !appliance.all_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ms = t0.elapsed().as_millis();
    tracing::info!(ms, "all units ready");
    eprintln!("applianced: READY: all units ready in {ms} ms");
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() {
            let _ = sock.send_to(b"READY=1\nSTATUS=all units ready", path);
        }
    }
    // What provisioning wrote (users, secrets, the bundled app) and what the
    // children made while starting (Redis's first AOF manifest, MariaDB's
    // first tables) can sit in the page cache for up to 30 s on ext4; a power
    // cut then leaves them empty and Redis refuses to start. One sync here,
    // off the start-up path, covers both.
    let _ = tokio::task::spawn_blocking(nix::unistd::sync).await;
}

/// Anything of ours still alive after all units stopped (adopted grandchildren
/// that left their process group) gets SIGTERM, then SIGKILL.
async fn reap_stragglers(data: &std::path::Path) {
    let left = scan::find(data);
    if left.is_empty() {
        return;
    }
    tracing::warn!(pids = ?left.iter().map(|l| l.pid).collect::<Vec<_>>(), "stopping stray processes");
    for l in &left {
        process::signal_pid(l.pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while left.iter().any(|l| scan::alive(l.pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for l in left.iter().filter(|l| scan::alive(l.pid)) {
        process::signal_pid(l.pid, Signal::SIGKILL);
    }
    // Give the reaper a moment to collect them.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn lock_data_dir(path: &std::path::Path) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| std::io::Error::from(e))
}

/// Human lines on stderr; [`LogLine`](crate::logs::LogLine)s in
/// DATA/applianced.log and on the live feed (`applianced logs applianced`).
fn init_tracing(path: &std::path::Path, plan: &Plan, hub: &Arc<LogHub>) -> std::io::Result<()> {
    use tracing_subscriber::prelude::*;
    let file = Arc::new(Mutex::new(RotatingFile::open(path, plan.log.rotation())?));
    let events = crate::logs::events::EventLayer {
        file,
        hub: hub.clone(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("APPLIANCE_LOG_LEVEL")
        .unwrap_or_else(|_| "info".into());
    // No colour codes on a serial console or in a captured stderr.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let human = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .compact();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(events)
        .with(human)
        .try_init();
    Ok(())
}
