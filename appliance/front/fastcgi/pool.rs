//! Kept-alive connections to one php-fpm pool (FastCGI's `FCGI_KEEP_CONN`),
//! so most PHP requests cost php-fpm no accept() and us no connect().
//!
//! php-fpm serves one request per connection at a time, and a child whose
//! connection is kept open waits on that connection alone: it accepts nothing
//! else. Reuse is only safe if a child is always free for a new connection,
//! so the pool keeps these rules (`children` is php-fpm's `pm.max_children`):
//! - at most `children - 1` connections are kept (in use or idle): one child
//!   always accepts new connections. A request that finds no idle connection
//!   and no room for another kept one gets a plain connection, which php-fpm
//!   closes at the request's end. That child also serves the supervisor's
//!   readiness probe, and the request whose kept connection php-fpm closed
//!   (its child retired at `pm.max_requests`) without waiting for a new child
//!   to be forked;
//! - at most `children` requests are in flight; more wait here, first come
//!   first served (without the pool they would wait in php-fpm's listen
//!   backlog, also in arrival order);
//! - an idle connection is closed after [`IDLE_TIMEOUT`] ([`Pool::reap`]), so
//!   a quiet site pins no child and php-fpm's stop or reload is not held up.
//!
//! The front end runs one runtime per thread, and a socket's readiness comes
//! from the runtime it was registered with: a request prefers an idle
//! connection of its own thread, and re-registers another thread's.
//!
//! `children == 0` turns all of this off: a plain connection per request with
//! no limit of ours (nginx's default).
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
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    /// Most recently returned last.
    idle: Vec<Idle>,
    /// Kept connections, idle or in use: at most `children - 1`.
    count: usize,
    /// Set by [`Pool::close`]: nothing is kept any more.
    closed: bool,
}

#[derive(Debug)]
struct Idle {
    stream: UnixStream,
    thread: ThreadId,
    since: Instant,
}

/// A request's hold on the pool: its place among the `children` in flight,
/// and whether its connection is a kept one (counted until it is back idle
/// or closed).
#[derive(Debug)]
pub(super) struct Lease {
    pool: Arc<Pool>,
    /// Send FCGI_KEEP_CONN; the connection counts as kept.
    pub(super) kept: bool,
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
            kept: Mutex::new(Kept::default()),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A connection for one request: an idle one (its own thread's first)
    /// when `reuse` allows it, else a new one, kept if there is room. Waits
    /// at most `wait` for a place among the requests in flight
    /// ([`FcgiError::Timeout`] past it).
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
            kept: false,
            reused: false,
            _permit: permit,
        };
        let me = std::thread::current().id();
        let taken = {
            let mut kept = self.kept.lock();
            let pos = kept.idle.iter().rposition(|c| c.thread == me);
            let taken = match pos {
                Some(pos) if reuse => Some(kept.idle.remove(pos)),
                // Another thread's: re-registered below.
                None if reuse => kept.idle.pop(),
                _ => None,
            };
            if taken.is_some() {
                lease.kept = true;
            } else if !kept.closed && kept.count + 1 < self.children {
                kept.count += 1;
                lease.kept = true;
            }
            taken
        };
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
                    return Ok((lease.reconnect(connect_timeout).await?, Some(lease)));
                }
            }
        }
        let stream = connect(&self.socket, connect_timeout).await?;
        Ok((stream, Some(lease)))
    }

    /// Close connections idle for [`IDLE_TIMEOUT`] or longer; returns how
    /// many. Called every few hundred milliseconds by the front end.
    pub fn reap(&self, now: Instant) -> usize {
        let expired: Vec<Idle> = {
            let mut kept = self.kept.lock();
            let (old, fresh): (Vec<Idle>, Vec<Idle>) = kept
                .idle
                .drain(..)
                .partition(|c| now.duration_since(c.since) >= IDLE_TIMEOUT);
            kept.idle = fresh;
            kept.count -= old.len();
            old
        };
        expired.len()
    }

    /// Close every idle connection now and keep none from here on (the
    /// site was removed; requests still in flight end on plain connections
    /// or close their kept one at their end). Returns how many were closed.
    pub fn close(&self) -> usize {
        let idle: Vec<Idle> = {
            let mut kept = self.kept.lock();
            kept.closed = true;
            let idle = std::mem::take(&mut kept.idle);
            kept.count -= idle.len();
            idle
        };
        idle.len()
    }

    /// Connections idle right now (tests, status).
    pub fn idle_count(&self) -> usize {
        self.kept.lock().idle.len()
    }

    /// Kept connections, idle or in use (tests, status).
    pub fn kept_count(&self) -> usize {
        self.kept.lock().count
    }
}

impl Lease {
    /// A new connection in the same place among the requests in flight, for
    /// a request whose idle connection php-fpm had closed. It stays a kept
    /// one: the dead connection's count passes to it.
    pub(super) async fn reconnect(
        &mut self,
        connect_timeout: Duration,
    ) -> Result<UnixStream, FcgiError> {
        self.reused = false;
        connect(&self.pool.socket, connect_timeout).await
    }

    /// The request ended cleanly on a kept `stream`: idle until the next one.
    pub(super) fn release(mut self, stream: UnixStream) {
        if !self.kept {
            return;
        }
        let mut kept = self.pool.kept.lock();
        if kept.closed {
            // Dropped with the lease (which uncounts it), outside the lock.
            drop(kept);
            drop(stream);
            return;
        }
        kept.idle.push(Idle {
            stream,
            thread: std::thread::current().id(),
            since: Instant::now(),
        });
        drop(kept);
        // Counted as idle now, not by this lease.
        self.kept = false;
    }
}

impl Drop for Lease {
    /// A kept connection closed rather than returned no longer counts.
    fn drop(&mut self) {
        if self.kept {
            self.pool.kept.lock().count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_closed_pool_drops_its_idle_connections_and_keeps_no_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fpm.sock");
        // A listener that accepts and holds connections (no FastCGI needed
        // to check what the pool keeps).
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let pool = Pool::new(path, 4);
        let (a, lease_a) = pool.checkout(true, WAIT, WAIT).await.unwrap();
        let (b, lease_b) = pool.checkout(true, WAIT, WAIT).await.unwrap();
        let (lease_a, lease_b) = (lease_a.unwrap(), lease_b.unwrap());
        assert!(lease_a.kept && lease_b.kept);
        lease_a.release(a);
        assert_eq!((pool.idle_count(), pool.kept_count()), (1, 2));

        assert_eq!(pool.close(), 1);
        assert_eq!((pool.idle_count(), pool.kept_count()), (0, 1));
        // A request that was in flight ends: its connection is closed, not kept.
        lease_b.release(b);
        assert_eq!((pool.idle_count(), pool.kept_count()), (0, 0));
        // A request routed before the removal still gets a connection, a plain one.
        let (c, lease_c) = pool.checkout(true, WAIT, WAIT).await.unwrap();
        let lease_c = lease_c.unwrap();
        assert!(!lease_c.kept);
        lease_c.release(c);
        assert_eq!((pool.idle_count(), pool.kept_count()), (0, 0));
        accept.abort();
    }
}
