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
//! - a connection php-fpm hung up is closed at once, found at the request's
//!   end or, failing that, at the reaper's next tick or before reuse,
//!   whichever comes first (one `recv(MSG_PEEK|MSG_DONTWAIT)` each).
//!   A child that reaches `pm.max_requests` ends its last response with a
//!   shutdown and then waits for our close before it exits; php-fpm forks
//!   its replacement only after that exit, so a hung-up connection left idle
//!   would leave the pool a child short;
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
        let mut hung_up = Vec::new();
        let taken = {
            let mut kept = self.kept.lock();
            let taken = loop {
                let pos = kept.idle.iter().rposition(|c| c.thread == me);
                let candidate = match pos {
                    Some(pos) if reuse => Some(kept.idle.remove(pos)),
                    // Another thread's: re-registered below.
                    None if reuse => kept.idle.pop(),
                    _ => None,
                };
                match candidate {
                    // Its child retired after the check in `release`: closed
                    // outside the lock, and no request is sent to it.
                    Some(conn) if peer_hung_up(&conn.stream) => {
                        kept.count -= 1;
                        hung_up.push(conn);
                    }
                    other => break other,
                }
            };
            if taken.is_some() {
                lease.kept = true;
            } else if !kept.closed && kept.count + 1 < self.children {
                kept.count += 1;
                lease.kept = true;
            }
            taken
        };
        drop(hung_up);
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

    /// Close connections idle for [`IDLE_TIMEOUT`] or longer, and those
    /// php-fpm hung up; returns how many. Called every few hundred
    /// milliseconds by the front end.
    pub fn reap(&self, now: Instant) -> usize {
        let expired: Vec<Idle> = {
            let mut kept = self.kept.lock();
            let (old, fresh): (Vec<Idle>, Vec<Idle>) = kept.idle.drain(..).partition(|c| {
                now.duration_since(c.since) >= IDLE_TIMEOUT || peer_hung_up(&c.stream)
            });
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
        if peer_hung_up(&stream) {
            // php-fpm ended this connection with the request: the child
            // reached `pm.max_requests`. It waits in recv() for our close
            // before it exits, and php-fpm forks its replacement only then,
            // so close now (dropped with the lease, which uncounts it).
            drop(stream);
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

/// php-fpm has closed its side of `stream` (or sent bytes no request asked
/// for, or the socket failed): it must not carry another request. A peek
/// without waiting, so it costs one syscall and consumes nothing.
fn peer_hung_up(stream: &UnixStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    !matches!(
        recv(stream.as_raw_fd(), &mut byte, flags),
        Err(nix::errno::Errno::EAGAIN)
    )
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

    #[tokio::test]
    async fn a_connection_php_fpm_hung_up_is_closed_at_release_and_skipped_at_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fpm.sock");
        // Each accepted connection goes back to the test, which plays the
        // retiring child: it shuts its side down (php-fpm's fcgi_close).
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let _ = tx.send(conn);
            }
        });
        let pool = Pool::new(path, 4);

        // Retired before the release: never kept.
        let (a, lease_a) = pool.checkout(true, WAIT, WAIT).await.unwrap();
        let mut peer_a = accepted.recv().await.unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut peer_a)
            .await
            .unwrap();
        lease_a.unwrap().release(a);
        assert_eq!((pool.idle_count(), pool.kept_count()), (0, 0));

        // Retired while idle: the next checkout does not reuse it.
        let (b, lease_b) = pool.checkout(true, WAIT, WAIT).await.unwrap();
        let mut peer_b = accepted.recv().await.unwrap();
        lease_b.unwrap().release(b);
        assert_eq!((pool.idle_count(), pool.kept_count()), (1, 1));
        tokio::io::AsyncWriteExt::shutdown(&mut peer_b)
            .await
            .unwrap();
        let (c, lease_c) = pool.checkout(true, WAIT, WAIT).await.unwrap();
        let lease_c = lease_c.unwrap();
        assert!(lease_c.kept && !lease_c.reused, "a fresh kept connection");
        assert_eq!((pool.idle_count(), pool.kept_count()), (0, 1));
        let _peer_c = accepted.recv().await.unwrap();

        // A live one is kept and reused.
        lease_c.release(c);
        let (_d, lease_d) = pool.checkout(true, WAIT, WAIT).await.unwrap();
        assert!(lease_d.unwrap().reused);
        accept.abort();
    }
}
