//! The HTTP(S) front end: pingora listeners, virtual hosts, TLS, and the two
//! handlers pingora does not have: static files and FastCGI to php-fpm.
//!
//! It replaces nginx + nginx-proxy. pingora's `Service` runs on applianced's
//! own serving threads (`threads.rs`; not pingora's `Server`, which owns
//! signals, runtimes and `exit()`): applianced binds the sockets itself, so a
//! busy port is a clean error, and drives shutdown through pingora's shutdown
//! watch with a short grace period instead of pingora's 300 s.
//! Sites can be added and removed while it runs ([`FrontEnd::add_site`],
//! [`FrontEnd::remove_site`]): see [`routing`] for the snapshot requests are
//! routed by. Listeners and certificates are set up at start only.
//! It touches the listening sockets, each instance's `public/` dir (read
//! only), php-fpm's unix sockets and the certificate files (read only).

pub mod access_log;
pub mod cgi;
pub mod fastcgi;
pub mod guard;
pub mod handler;
pub mod pages;
mod php;
mod quiet;
pub mod routes;
pub mod routing;
pub mod site;
mod spool;
pub mod static_files;
mod statics;
pub mod stats;
mod threads;
pub mod tls;
pub mod vhost;

use crate::layout::Layout;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use handler::Front;
use pingora::apps::ServerApp;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;
use routes::{FrontPlan, Limits, SitePlan};
use routing::{Routing, SiteRuntime};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Per-connection write buffer (see `start`).
const WRITE_BUFFER: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error("cannot start the serving threads: {0}")]
    Threads(#[from] std::io::Error),
    #[error("instance `{0}` already has a site")]
    SiteExists(String),
    #[error("instance `{instance}`: {source}")]
    Domain {
        instance: String,
        source: vhost::DomainError,
    },
}

/// A running front end.
pub struct FrontEnd {
    shutdown: watch::Sender<bool>,
    services: std::sync::Mutex<Vec<JoinHandle<()>>>,
    inflight: Arc<AtomicUsize>,
    grace: Duration,
    certs: Option<Arc<tls::CertStore>>,
    access: access_log::AccessLog,
    /// What requests are routed by, shared with the handler.
    routing: Arc<ArcSwap<Routing>>,
    /// Serialises `add_site` / `remove_site` (requests never take it).
    edit: std::sync::Mutex<()>,
    /// `http.default_instance`, the default while it is served.
    default_instance: Option<String>,
    /// The serving threads, until `stop` ends them.
    serving: std::sync::Mutex<Option<threads::Threads>>,
    /// Requests for no known host (421), shared with the handler.
    unrouted: Arc<stats::HttpStats>,
    /// The instances of the boot plan, indexed like the certificate store.
    boot_sites: Vec<String>,
    /// For sites added later: their php-fpm unit's start.
    starting: UnitStarting,
    pub bound: Vec<SocketAddr>,
}

/// The app pingora runs: its HTTP proxy behind the head guard.
struct Guarded {
    proxy: Arc<HttpProxy<Front>>,
    limits: Limits,
}

#[async_trait]
impl ServerApp for Guarded {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.proxy.process_new(stream, shutdown).await;
        }
        let guarded = guard::GuardedStream::new(
            stream,
            self.limits.header_timeout,
            self.limits.max_header_bytes,
        );
        self.proxy.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.proxy.cleanup().await;
    }
}

/// The listening sockets, bound before anything else starts so a busy port
/// is reported before any unit runs: for each address, one socket per
/// serving thread (`SO_REUSEPORT`; see `threads.rs`).
pub struct Listeners {
    plain: Vec<Vec<std::net::TcpListener>>,
    tls: Vec<Vec<std::net::TcpListener>>,
}

/// Serving threads: one per core.
/// Measured: one thread on 2 cores lost ~12% of PHP req/s.
fn serving_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Bind every configured address (HTTPS ones only when some site has a
/// certificate). `Ok(None)` when `http.enabled = false`.
pub fn bind_all(plan: &FrontPlan) -> Result<Option<Listeners>, FrontError> {
    if !plan.enabled {
        return Ok(None);
    }
    let threads = serving_threads();
    let plain = plan
        .listen
        .iter()
        .map(|a| bind_group(*a, threads))
        .collect::<Result<_, _>>()?;
    let tls = if plan.has_tls() {
        plan.tls_listen
            .iter()
            .map(|a| bind_group(*a, threads))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    Ok(Some(Listeners { plain, tls }))
}

/// Where the front end learns that a site's php-fpm unit is on its way up
/// (see "hold while starting" in [`fastcgi::pool`]): given the instance and
/// the unit, a feed that is `true` while it starts, or `None` when there is
/// no such unit. The daemon hands in the supervisor's.
pub type UnitStarting = Arc<dyn Fn(&str, &str) -> Option<watch::Receiver<bool>> + Send + Sync>;

/// A site's hold on its php-fpm unit's start, when it has one.
fn php_hold(plan: &SitePlan, starting: &UnitStarting) -> Option<fastcgi::pool::Hold> {
    let unit = plan.php_unit.as_deref()?;
    Some(fastcgi::pool::Hold {
        starting: starting(&plan.instance, unit)?,
        max: fastcgi::pool::HOLD_MAX,
    })
}

/// Start serving on bound listeners.
pub async fn start(
    plan: &FrontPlan,
    listeners: Listeners,
    layout: &Layout,
    hub: &Arc<crate::logs::LogHub>,
    starting: UnitStarting,
) -> Result<FrontEnd, FrontError> {
    let certs = if plan.has_tls() {
        let files = plan.sites.iter().map(|s| s.certs.clone()).collect();
        Some(Arc::new(tls::CertStore::load(files, plan.vhosts.clone())?))
    } else {
        None
    };
    let access = if plan.access_log {
        access_log::AccessLog::start(
            layout.data_dir().join("logs").join("access.log"),
            hub.clone(),
        )
        .map_err(FrontError::AccessLog)?
    } else {
        access_log::AccessLog::disabled()
    };
    let mut sites = Vec::new();
    for (i, s) in plan.sites.iter().enumerate() {
        let has_cert = certs.as_ref().is_some_and(|c| c.site_has_cert(i));
        let hold = php_hold(s, &starting);
        sites.push(Arc::new(SiteRuntime::open(s, has_cert, &access, hold)?));
    }
    let routing = Arc::new(ArcSwap::from_pointee(Routing::build(
        sites,
        plan.default_instance.as_deref(),
    )));
    let local = |l: &std::net::TcpListener| l.local_addr().ok();
    let inflight = Arc::new(AtomicUsize::new(0));
    let unrouted = Arc::new(stats::HttpStats::default());
    let front = Front {
        routing: routing.clone(),
        limits: plan.limits.clone(),
        https_port: listeners
            .tls
            .first()
            .and_then(|g| g.first())
            .and_then(local)
            .map(|a| a.port()),
        access: access.clone(),
        pages: pages::ErrorPages::render(),
        inflight: inflight.clone(),
        quiet: quiet::Quiet::default(),
        small_files: static_files::SmallFiles::new(plan.static_cache_bytes),
        unrouted: unrouted.clone(),
    };

    // pingora's own knobs: no upstream pools to speak of, a short grace.
    let grace = Some(plan.limits.grace_period.as_secs().max(1));
    let conf = ServerConf {
        grace_period_seconds: grace,
        graceful_shutdown_timeout_seconds: grace,
        ..ServerConf::default()
    };
    let conf = Arc::new(conf);
    let mut proxy = HttpProxy::new(front, conf);
    proxy.handle_init_modules();
    let proxy = Arc::new(proxy);
    let limits = plan.limits.clone();
    let app = || Guarded {
        proxy: proxy.clone(),
        limits: limits.clone(),
    };

    // pingora picks up our already-bound sockets by address: thread N gets
    // socket N of each address.
    let mut bound = Vec::new();
    let mut sockets: Vec<Vec<(String, std::net::TcpListener)>> = Vec::new();
    let all = listeners
        .plain
        .into_iter()
        .map(|g| (g, false))
        .chain(listeners.tls.into_iter().map(|g| (g, true)));
    for (group, is_tls) in all {
        let Some(addr) = group.first().and_then(local) else {
            continue;
        };
        bound.push((addr, is_tls));
        for (n, socket) in group.into_iter().enumerate() {
            if sockets.len() <= n {
                sockets.push(Vec::new());
            }
            sockets[n].push((addr.to_string(), socket));
        }
    }
    let endpoints = |service: &mut Service<Guarded>| -> Result<(), FrontError> {
        for &(addr, is_tls) in &bound {
            // A write buffer that holds a typical response head and body
            // (pingora's default is one MSS, 1460 bytes): a small page or a
            // 4 KiB file then leaves in one send instead of a header packet
            // and a body packet.
            let buffers = L4BufferSettings::default().write(WRITE_BUFFER);
            let mut endpoint = ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers);
            if let (Some(store), true) = (&certs, is_tls) {
                let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")
                    .map_err(|e| FrontError::Bind {
                        addr,
                        source: std::io::Error::other(e.to_string()),
                    })?;
                settings.set_cert_resolver(Arc::new(tls::Resolver(store.clone())));
                settings.enable_h2();
                endpoint = endpoint.tls(settings);
            }
            service.add_listener(endpoint);
        }
        Ok(())
    };
    let (tx, rx) = watch::channel(false);
    let mut services = Vec::new();
    services.push(tokio::spawn(reap_idle(routing.clone(), tx.subscribe())));
    // One serving thread per core, each accepting and serving its own
    // connections (see `threads` for why not pingora's no-steal runtime, and
    // why not the shared work-stealing runtime: cross-thread wake-ups per
    // request were the largest cost in a profile of a PHP hello page).
    let serving = threads::Threads::start(sockets, app, endpoints, &rx)?;
    let bound: Vec<SocketAddr> = bound.into_iter().map(|(a, _)| a).collect();
    if let Some(store) = certs.clone() {
        let mut stop = tx.subscribe();
        services.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.changed() => break,
                }
                reload(&store);
            }
        }));
    }
    tracing::info!(listen = ?bound, sites = plan.sites.len(), tls = certs.is_some(), "front end listening");
    Ok(FrontEnd {
        unrouted,
        boot_sites: plan.sites.iter().map(|s| s.instance.clone()).collect(),
        starting,
        shutdown: tx,
        services: std::sync::Mutex::new(services),
        inflight,
        grace: plan.limits.grace_period,
        certs,
        access,
        routing,
        edit: std::sync::Mutex::new(()),
        default_instance: plan.default_instance.clone(),
        serving: std::sync::Mutex::new(Some(serving)),
        bound,
    })
}

/// Close php-fpm connections left idle too long, so a quiet site pins no
/// php-fpm child (see [`fastcgi::pool`]). The sites are those served at each
/// tick; a removed site's pool was closed by `remove_site`.
async fn reap_idle(routing: Arc<ArcSwap<Routing>>, mut stop: watch::Receiver<bool>) {
    let tick = fastcgi::pool::IDLE_TIMEOUT / 2;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.changed() => break,
        }
        let now = std::time::Instant::now();
        let routing = routing.load_full();
        for pool in routing.sites().iter().map(|s| &s.php) {
            let closed = pool.reap(now);
            if closed > 0 {
                tracing::trace!(socket = %pool.socket().display(), closed, "idle php-fpm connections closed");
            }
        }
    }
}

#[cfg(test)]
mod tests_runtime;

fn reload(store: &tls::CertStore) {
    let (swapped, errors) = store.reload_changed();
    if swapped > 0 {
        tracing::info!(certificates = swapped, "TLS certificates reloaded");
    }
    for e in errors {
        tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous one");
    }
}

/// `threads` sockets listening on `addr` with `SO_REUSEPORT`: the kernel
/// spreads new connections over them, one per serving thread. Port 0 gets
/// one port for all of them.
fn bind_group(addr: SocketAddr, threads: usize) -> Result<Vec<std::net::TcpListener>, FrontError> {
    let first = bind(addr)?;
    let addr = first
        .local_addr()
        .map_err(|source| FrontError::Bind { addr, source })?;
    let mut group = vec![first];
    for _ in 1..threads.max(1) {
        group.push(bind(addr)?);
    }
    Ok(group)
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, FrontError> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let err = |e: nix::errno::Errno| FrontError::Bind {
        addr,
        source: std::io::Error::from(e),
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = socket(family, SockType::Stream, flags, None).map_err(err)?;
    // SO_REUSEADDR as std sets it (a restart does not wait for TIME_WAIT);
    // SO_REUSEPORT for the group.
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    setsockopt(&fd, sockopt::ReusePort, &true).map_err(err)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(err)?;
    listen(&fd, Backlog::new(1024).map_err(err)?).map_err(err)?;
    Ok(std::net::TcpListener::from(fd))
}

impl FrontEnd {
    /// Serve one more instance's site (its `domains` from the plan). Errors
    /// (nothing changed) when a domain is invalid or already served by
    /// another instance, the instance already has a site, or its access log
    /// cannot be opened. It gets no certificate: TLS is set up at start.
    pub fn add_site(&self, plan: &SitePlan) -> Result<(), FrontError> {
        let _edit = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.routing.load_full();
        // Checked before opening anything, so a refusal leaves nothing behind.
        current.admit(&plan.instance, &plan.domains)?;
        let hold = php_hold(plan, &self.starting);
        let site = Arc::new(SiteRuntime::open(plan, false, &self.access, hold)?);
        let sink = site.access.clone();
        match current.with(site, self.default_instance.as_deref()) {
            Ok(next) => self.routing.store(Arc::new(next)),
            Err(e) => {
                if let Some(sink) = sink {
                    self.access.close_site(sink);
                }
                return Err(e);
            }
        }
        tracing::info!(instance = %plan.instance, domains = ?plan.domains, "site added");
        Ok(())
    }

    /// Stop routing to the instance: its hosts get 421 (or the default
    /// instance, if one is configured and still served) from now on; requests
    /// already in flight finish (they hold the site); its idle php-fpm
    /// connections are closed, and those in use are closed when their
    /// request ends; its access log is written out now and closed once its
    /// last request is logged. `false` when it had no site.
    pub fn remove_site(&self, instance: &str) -> bool {
        let _edit = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.routing.load_full();
        let Some((next, gone)) = current.without(instance, self.default_instance.as_deref()) else {
            return false;
        };
        self.routing.store(Arc::new(next));
        drop(current);
        let closed = gone.php.close();
        let sink = gone.access.clone();
        // Requests in flight hold their own Arc; without them, this frees the
        // site now and its log file is closed at once.
        drop(gone);
        if let Some(sink) = sink {
            self.access.close_site(sink);
        }
        tracing::info!(
            instance,
            idle_php_connections_closed = closed,
            "site removed"
        );
        true
    }

    /// Request counters of every site served, by instance, and of requests
    /// for no known host (instance `""`), for `/metrics`.
    pub fn http_stats(&self) -> Vec<(String, stats::HttpSnapshot)> {
        let routing = self.routing.load();
        let mut out: Vec<(String, stats::HttpSnapshot)> = routing
            .sites()
            .iter()
            .map(|s| (s.instance.clone(), s.stats.snapshot()))
            .collect();
        out.push((String::new(), self.unrouted.snapshot()));
        out
    }

    /// Every TLS certificate: (instance, cert file, `notAfter` unix
    /// seconds), for `/metrics`.
    pub fn cert_expiries(&self) -> Vec<(String, std::path::PathBuf, Option<i64>)> {
        let Some(store) = &self.certs else {
            return Vec::new();
        };
        store
            .expiries()
            .into_iter()
            .filter_map(|(i, file, t)| Some((self.boot_sites.get(i)?.clone(), file, t)))
            .collect()
    }

    /// Each served instance's php-fpm socket, for `/metrics`.
    pub fn php_sockets(&self) -> Vec<(String, std::path::PathBuf)> {
        let routing = self.routing.load();
        routing
            .sites()
            .iter()
            .map(|s| (s.instance.clone(), s.php.socket().to_path_buf()))
            .collect()
    }

    /// The instances served, in order (for tests and status).
    pub fn site_names(&self) -> Vec<String> {
        let routing = self.routing.load();
        routing.sites().iter().map(|s| s.instance.clone()).collect()
    }

    /// Re-read certificates whose files changed (also done every 2 s).
    pub fn reload_certificates(&self) {
        if let Some(store) = &self.certs {
            reload(store);
        }
    }

    /// Stop accepting, let in-flight requests finish within the grace period,
    /// then return. Connections still open after it are dropped.
    pub async fn stop(&self) {
        let _ = self.shutdown.send(true);
        let access = self.access.clone();
        let deadline = Instant::now() + self.grace;
        let serving = self
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut serving) = serving else {
            return; // stopped already
        };
        let _ = tokio::time::timeout_at(deadline.into(), serving.accepting_ended()).await;
        let services =
            std::mem::take(&mut *self.services.lock().unwrap_or_else(|p| p.into_inner()));
        for s in services {
            let _ = tokio::time::timeout_at(deadline.into(), s).await;
        }
        while self.inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        access.flush();
        // Whatever is still running there is dropped: the grace is over.
        let _ = tokio::task::spawn_blocking(move || serving.end()).await;
        let left = self.inflight.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(
                requests = left,
                "grace period over; dropping in-flight requests"
            );
        } else {
            tracing::info!("front end stopped");
        }
    }
}
