//! The front end's serving threads: one per core, each a single-threaded
//! tokio runtime running its own pingora `Service` over its own listening
//! sockets (one per address and thread, bound with `SO_REUSEPORT`).
//!
//! Why not pingora's "no steal" runtime: its accept loop runs on one thread
//! and hands each connection to a random thread, but the socket stays
//! registered with the accepting thread's epoll. For every connection that
//! lands elsewhere, each readiness event (every request) then wakes the
//! accepting thread, which wakes the serving one through its eventfd: a
//! second thread and a second wake-up per request. Measured on a PHP hello
//! page: one eventfd write per request from the accepting thread, and
//! applianced's CPUs idle ~5% more than nginx's under the same load. Here
//! every thread accepts on its own sockets and serves each connection to its
//! end on the same thread.
//!
//! Why a socket per thread rather than one shared socket in every thread's
//! epoll: then every thread wakes for a new connection and the first to run
//! takes all that are queued (pingora's accept loop goes on until the
//! backlog is empty), so a burst of connections landed mostly on one thread
//! and a static-file load ran on one core (45k-54k req/s against 78k when
//! they happened to split evenly). With `SO_REUSEPORT` the kernel spreads
//! connections over the sockets by their address hash: as even as
//! pingora's random pick was, and no thread can take another's.
//!
//! Touches only the listening sockets it is given.

use pingora::apps::ServerApp;
use pingora::server::Fds;
use pingora::services::Service as _;
use pingora::services::listening::Service;
use std::io;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Send pingora's own timeouts of a second or more (request heads and
/// bodies, keep-alive) to tokio's timer instead of pingora's "fast" timers.
///
/// Why: the fast timers are served by a thread that wakes every 10 ms for as
/// long as the process lives, busy or idle: 100 wake-ups a second on a box
/// that serves nothing, and CPU taken from everything else at boot. Measured
/// in the appliance VM (TCG): 1.6 s of CPU in the first 40 s after boot.
/// Every timeout applianced sets is whole seconds by default, so with the
/// threshold at zero the clock thread never starts; tokio's timer wheel
/// sleeps until something is due. A sub-second `header_timeout_sec` or
/// `idle_timeout_sec` still takes the fast path (and starts the thread).
/// The setting is process-wide and idempotent.
fn no_clock_thread() {
    pingora::time::fast_timeout::set_fast_timeout_to_tokio_threshold(Some(Duration::ZERO));
}

/// The running threads.
pub struct Threads {
    /// One per thread: fires when its accept loops have ended.
    accepting: Vec<oneshot::Receiver<()>>,
    /// One per thread: send (or drop) to end it.
    stop: Vec<oneshot::Sender<()>>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

impl Threads {
    /// Start a thread named `front-N` for each entry of `sockets`: the
    /// sockets it serves, keyed by address (pingora picks up a bound socket
    /// by its address). Each gets from `app()` the app to serve and from
    /// `endpoints` the listener settings for its `Service`. Serving ends
    /// when `shutdown` turns true.
    pub fn start<A, E, Er>(
        sockets: Vec<Vec<(String, std::net::TcpListener)>>,
        app: impl Fn() -> A,
        endpoints: E,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Threads, Er>
    where
        A: ServerApp + Send + Sync + 'static,
        E: Fn(&mut Service<A>) -> Result<(), Er>,
        Er: From<io::Error>,
    {
        no_clock_thread();
        let mut started = Threads {
            accepting: Vec::new(),
            stop: Vec::new(),
            joins: Vec::new(),
        };
        for (n, mine) in sockets.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut fds = Fds::new();
            for (key, socket) in mine {
                // pingora owns it from here (and closes it when its listener
                // is dropped with the thread's runtime).
                fds.add(key, socket.into_raw_fd());
            }
            let mut service = Service::new(format!("applianced front {n}"), app());
            endpoints(&mut service)?;
            let (accepting_tx, accepting_rx) = oneshot::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let shutdown = shutdown.clone();
            let join = std::thread::Builder::new()
                .name(format!("front-{n}"))
                .spawn(move || {
                    let fds = Arc::new(parking_lot::Mutex::new(fds));
                    runtime.block_on(async move {
                        service.start_service(Some(fds), shutdown, 1).await;
                        let _ = accepting_tx.send(());
                        // Connections still open go on until the grace is over.
                        let _ = stop_rx.await;
                    });
                    // Whatever still runs is dropped: the grace is over.
                    runtime.shutdown_timeout(Duration::from_millis(100));
                })?;
            started.accepting.push(accepting_rx);
            started.stop.push(stop_tx);
            started.joins.push(join);
        }
        Ok(started)
    }

    /// Wait until every thread has stopped accepting (after `shutdown`).
    pub async fn accepting_ended(&mut self) {
        for rx in &mut self.accepting {
            let _ = rx.await;
        }
    }

    /// End every thread, dropping what still runs there; blocks until they
    /// have exited.
    pub fn end(self) {
        drop(self.stop);
        for join in self.joins {
            let _ = join.join();
        }
    }
}
