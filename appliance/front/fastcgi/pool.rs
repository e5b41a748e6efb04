//! Kept-alive connections to one php-fpm pool (FastCGI's `FCGI_KEEP_CONN`),
//! so a PHP request costs php-fpm no accept() and us no connect().
//!
//! php-fpm serves one request per connection at a time, and a child whose
//! connection is kept open waits on that connection alone: it accepts nothing
//! else. Reuse is only safe if a child is always free for a new connection,
//! so the pool keeps these rules (`children` is php-fpm's `pm.max_children`):
//! - at most `children` requests are in flight; more wait here, first come
//!   first served (without the pool they would wait in php-fpm's listen
//!   backlog, also in arrival order);
//! - before it opens a connection, a request closes idle ones until idle plus
//!   the other in-flight requests leave a child free to accept it;
//! - at most `children - 1` connections stay idle, so one child is always free
//!   for the supervisor's readiness probe and any other client;
//! - an idle connection is closed after [`IDLE_TIMEOUT`] ([`Pool::reap`]), so
//!   a quiet site pins no child and php-fpm's stop or reload is not held up.
//!
//! The front end runs one runtime per thread, and a socket's readiness comes
//! from the runtime it was registered with: a request prefers an idle
//! connection of its own thread, and re-registers another thread's.
//!
//! `children == 0` turns all of this off: a fresh connection per request,
//! closed by php-fpm at its end, with no limit of ours (nginx's default).
//!
//! Touches only the php-fpm socket it is given.

use super::{FcgiError, connect};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a connection may sit idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// The connections of one php-fpm socket.
#[derive(Debug)]
pub struct Pool {
    socket: PathBuf,
    children: usize,
    /// One per request in flight; `children` of them.
    permits: Arc<Semaphore>,
    /// Most recently returned last.
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    stream: UnixStream,
    thread: ThreadId,
    since: Instant,
}

/// A request's hold on the pool: its place among the `children` in flight,
/// and where its connection goes back to.
#[derive(Debug)]
pub(super) struct Lease {
    pool: Arc<Pool>,
    /// The connection served an earlier request: php-fpm may have closed it
    /// since (its child reached `pm.max_requests`).
    pub(super) reused: bool,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A pool for php-fpm's `socket`, whose pool runs `children` children
    /// (0: no reuse, no limit).
    pub fn new(socket: PathBuf, children: usize) -> Arc<Pool> {
        Arc::new(Pool {
            socket,
            children,
            permits: Arc::new(Semaphore::new(children.max(1))),
            idle: Mutex::new(Vec::new()),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A connection for one request: an idle one of this thread when `reuse`
    /// allows it, else a new one. Waits at most `wait` for a place among the
    /// requests in flight ([`FcgiError::Timeout`] past it).
    pub(super) async fn checkout(
        self: &Arc<Self>,
        reuse: bool,
        connect_timeout: Duration,
        wait: Duration,
    ) -> Result<(UnixStream, Option<Lease>), FcgiError> {
        if self.children == 0 {
            return Ok((connect(&self.socket, connect_timeout).await?, None));
        }
        let permit = match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(FcgiError::Usage("connection pool closed")),
            Err(_) => return Err(FcgiError::Timeout),
        };
        let mut lease = Lease {
            pool: self.clone(),
            reused: false,
            _permit: permit,
        };
        let me = std::thread::current().id();
        let (taken, closing) = {
            let mut idle = self.idle.lock();
            match idle.iter().rposition(|c| c.thread == me) {
                Some(pos) if reuse => (Some(idle.remove(pos)), Vec::new()),
                // Another thread's: re-registered below.
                None if reuse && !idle.is_empty() => (idle.pop(), Vec::new()),
                _ => {
                    // In flight besides this request; each pins a child, as
                    // does every idle connection. Leave one free to accept ours.
                    let others = self.children - self.permits.available_permits() - 1;
                    let keep = self.children.saturating_sub(others + 1);
                    let excess = idle.len().saturating_sub(keep);
                    (None, idle.drain(..excess).collect::<Vec<_>>())
                }
            }
        };
        drop(closing);
        if let Some(conn) = taken {
            lease.reused = true;
            if conn.thread == me {
                return Ok((conn.stream, Some(lease)));
            }
            // Move its registration to this thread's runtime: two epoll_ctl
            // calls, cheaper than a new connection and php-fpm's accept.
            match conn.stream.into_std().and_then(UnixStream::from_std) {
                Ok(stream) => return Ok((stream, Some(lease))),
                Err(e) => {
                    tracing::debug!(error = %e, "re-registering an idle php-fpm connection");
                    lease.reused = false;
                }
            }
        }
        let stream = connect(&self.socket, connect_timeout).await?;
        Ok((stream, Some(lease)))
    }

    /// Take back the connection of a request that ended cleanly, unless
    /// `children - 1` are idle already.
    fn checkin(&self, stream: UnixStream) {
        let mut idle = self.idle.lock();
        if idle.len() + 1 < self.children {
            idle.push(Idle {
                stream,
                thread: std::thread::current().id(),
                since: Instant::now(),
            });
        }
    }

    /// Close connections idle for [`IDLE_TIMEOUT`] or longer; returns how
    /// many. Called every few hundred milliseconds by the front end.
    pub fn reap(&self, now: Instant) -> usize {
        let expired: Vec<Idle> = {
            let mut idle = self.idle.lock();
            let (old, fresh): (Vec<Idle>, Vec<Idle>) = idle
                .drain(..)
                .partition(|c| now.duration_since(c.since) >= IDLE_TIMEOUT);
            *idle = fresh;
            old
        };
        expired.len()
    }

    /// Connections idle right now (tests, status).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }
}

impl Lease {
    /// The request ended cleanly on `stream`: keep it for the next one.
    pub(super) fn release(self, stream: UnixStream) {
        self.pool.checkin(stream);
    }
}
