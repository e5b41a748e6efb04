//! The front end's serving threads: one per core, each a single-threaded
//! tokio runtime running its own pingora `Service` over its own duplicate of
//! every listening socket.
//!
//! Why not pingora's "no steal" runtime: its accept loop runs on one thread
//! and hands each connection to a random thread, but the socket stays
//! registered with the accepting thread's epoll. For every connection that
//! lands elsewhere, each readiness event (every request) then wakes the
//! accepting thread, which wakes the serving one through its eventfd: a
//! second thread and a second wake-up per request. Measured on a PHP hello
//! page: one eventfd write per request from the accepting thread, and
//! applianced's CPUs idle ~5% more than nginx's under the same load. Here
//! every thread accepts on its own epoll (both wake for a new connection,
//! one wins the accept, as nginx workers do without `accept_mutex`) and
//! serves that connection to its end on the same thread.
//!
//! Touches only the listening sockets it is given (duplicated, not moved).

use pingora::apps::ServerApp;
use pingora::server::Fds;
use pingora::services::Service as _;
use pingora::services::listening::Service;
use std::io;
use std::os::fd::{AsFd, IntoRawFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The running threads.
pub struct Threads {
    /// One per thread: fires when its accept loops have ended.
    accepting: Vec<oneshot::Receiver<()>>,
    /// One per thread: send (or drop) to end it.
    stop: Vec<oneshot::Sender<()>>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

impl Threads {
    /// Start `threads` threads named `front-N`. Each gets from `app()` the app
    /// to serve and from `endpoints` the listener settings for its
    /// `Service`, given duplicates of `sockets` keyed by address (pingora
    /// picks up a bound socket by its address). Serving ends when `shutdown`
    /// turns true.
    pub fn start<A, E, Er>(
        threads: usize,
        sockets: &[(String, std::net::TcpListener)],
        app: impl Fn() -> A,
        endpoints: E,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Threads, Er>
    where
        A: ServerApp + Send + Sync + 'static,
        E: Fn(&mut Service<A>) -> Result<(), Er>,
        Er: From<io::Error>,
    {
        let mut started = Threads {
            accepting: Vec::new(),
            stop: Vec::new(),
            joins: Vec::new(),
        };
        for n in 0..threads.max(1) {
            let mut fds = Fds::new();
            for (key, socket) in sockets {
                // A failed dup leaves the sockets already given to pingora
                // in `fds` to be closed with it; nothing leaks.
                let dup = socket.as_fd().try_clone_to_owned()?;
                fds.add(key.clone(), dup.into_raw_fd());
            }
            let mut service = Service::new(format!("applianced front {n}"), app());
            endpoints(&mut service)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
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
