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
//!   a quiet site pins no child and php-fpm's stop or reload is not held up;
//! - **slow start**: while the pool is *cold*, one request at a time goes to
//!   php-fpm. It turns warm when php-fpm ends a request (END_REQUEST, any
//!   status), or [`SLOW_START_MAX`] after the first cold request reached
//!   php-fpm (connected), whichever comes first. A pool is cold when it is made (the front end's
//!   start, an instance added) and again whenever php-fpm refuses a
//!   connection or its socket is gone (a restart). Why: a PHP app's first
//!   request in a new php-fpm compiles the app into opcache's shared memory.
//!   Sent alone, it has the CPU to itself and every later request loads the
//!   compiled scripts; sent together with seven others (a boot with clients
//!   already waiting, a restart under load), each child compiles the same
//!   files at once, and on a small machine the first answer then comes
//!   several times later (measured under emulation: 18 s instead of a few).
//! - **hold while starting**: when the pool knows the supervisor's view of
//!   the php-fpm unit behind it ([`Hold`]), a request that finds the pool
//!   cold while that unit is on its way up (waiting for MariaDB, starting,
//!   warming up, restarting after a crash) waits for it to be ready, for at
//!   most [`HOLD_MAX`], and then goes on as before. Why: php-fpm starts
//!   beside MariaDB and accepts connections before the app can answer; a
//!   request sent then would get the app's database error, or compile the
//!   app beside the warm-up. Held, it gets its page as soon as the app is
//!   ready instead of a 502. The reaper makes the pool cold when the unit
//!   goes back to starting (a restart), so this costs a warm pool nothing
//!   per request.
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How long a connection may sit idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest a cold pool lets one request at a time through: a first
/// request that takes longer (a slow report, a stuck script) holds the
/// others back no more than this.
pub const SLOW_START_MAX: Duration = Duration::from_secs(10);

/// The longest a request waits for php-fpm's unit to be ready (see "hold
/// while starting" in the module doc); then it goes to php-fpm regardless.
pub const HOLD_MAX: Duration = Duration::from_secs(30);

/// The supervisor's view of the php-fpm unit behind a pool.
#[derive(Debug, Clone)]
pub struct Hold {
    /// `true` while the unit is on its way up; closed when it is gone.
    pub starting: watch::Receiver<bool>,
    /// At most this long per request (normally [`HOLD_MAX`]).
    pub max: Duration,
}

/// The connections of one php-fpm socket.
#[derive(Debug)]
pub struct Pool {
    socket: PathBuf,
    children: usize,
    /// One per request in flight; `children` of them.
    permits: Arc<Semaphore>,
    kept: Mutex<Kept>,
    /// Slow start: `true` once warm. Waiters for `gate` watch it, so that a
    /// pool turning warm lets them all through at once.
    warm: watch::Sender<bool>,
    /// The one permit a request holds while the pool is cold.
    gate: Arc<Semaphore>,
    /// When the first request reached php-fpm since the pool turned cold.
    cold_since: Mutex<Option<Instant>>,
    slow_start_max: Duration,
    hold: Option<Hold>,
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
    /// Held while the pool is cold: this request goes to php-fpm alone.
    _gate: Option<OwnedSemaphorePermit>,
}

impl Pool {
    /// A pool for php-fpm's `socket`, whose pool runs `children` children
    /// (0: no reuse, no limit).
    pub fn new(socket: PathBuf, children: usize) -> Arc<Pool> {
        Self::build(socket, children, SLOW_START_MAX, None)
    }

    /// [`Pool::new`] that holds requests while php-fpm's unit starts.
    pub fn holding(socket: PathBuf, children: usize, hold: Hold) -> Arc<Pool> {
        Self::build(socket, children, SLOW_START_MAX, Some(hold))
    }

    /// [`Pool::new`] with another bound on the slow start (tests).
    pub fn with_slow_start(socket: PathBuf, children: usize, max: Duration) -> Arc<Pool> {
        Self::build(socket, children, max, None)
    }

    fn build(socket: PathBuf, children: usize, max: Duration, hold: Option<Hold>) -> Arc<Pool> {
        Arc::new(Pool {
            socket,
            children,
            permits: Arc::new(Semaphore::new(children.max(1))),
            kept: Mutex::new(Kept::default()),
            warm: watch::Sender::new(false),
            gate: Arc::new(Semaphore::new(1)),
            cold_since: Mutex::new(None),
            slow_start_max: max,
            hold,
        })
    }

    /// While php-fpm's unit is on its way up, wait for it to be ready, at
    /// most the hold's `max` (see the module doc). Only a cold pool asks.
    async fn hold_while_starting(&self) {
        let Some(hold) = &self.hold else { return };
        let mut starting = hold.starting.clone();
        if !*starting.borrow_and_update() {
            return;
        }
        let waited = Instant::now();
        let _ = tokio::time::timeout(hold.max, starting.wait_for(|s| !*s)).await;
        tracing::debug!(socket = %self.socket.display(), waited_ms = waited.elapsed().as_millis() as u64, "held a request while php-fpm started");
    }

    /// The pool's slow start is over (see the module doc).
    pub fn is_warm(&self) -> bool {
        *self.warm.borrow()
    }

    /// php-fpm answered a request: the slow start is over. Called at the end
    /// of every request, so the common case (already warm) takes only the
    /// channel's read lock.
    fn set_warm(&self) {
        if self.is_warm() {
            return;
        }
        self.warm
            .send_if_modified(|warm| !std::mem::replace(warm, true));
    }

    /// php-fpm is gone or restarting: its next children start cold.
    fn set_cold(&self) {
        // Also while cold: the bound counts from a request php-fpm took.
        *self.cold_since.lock() = None;
        if self
            .warm
            .send_if_modified(|warm| std::mem::replace(warm, false))
        {
            tracing::debug!(socket = %self.socket.display(), "php-fpm unreachable: slow start again");
        }
    }

    /// While the pool is cold: wait for the one cold permit, or for the pool
    /// to turn warm (then `None`, nothing to hold).
    async fn pass_gate(&self) -> Result<Option<OwnedSemaphorePermit>, FcgiError> {
        let mut warm = self.warm.subscribe();
        loop {
            if *warm.borrow_and_update() {
                return Ok(None);
            }
            tokio::select! {
                permit = self.gate.clone().acquire_owned() => {
                    let permit = permit.map_err(|_| FcgiError::Usage("connection pool closed"))?;
                    if *warm.borrow() {
                        return Ok(None);
                    }
                    return Ok(Some(permit));
                }
                changed = warm.changed() => {
                    changed.map_err(|_| FcgiError::Usage("connection pool closed"))?;
                }
            }
        }
    }

    /// A new connection; a refused one (php-fpm down or restarting) makes
    /// the pool cold again.
    async fn connect(&self, connect_timeout: Duration) -> Result<UnixStream, FcgiError> {
        let result = connect(&self.socket, connect_timeout).await;
        if result.is_ok() && !self.is_warm() {
            self.cold_since.lock().get_or_insert_with(Instant::now);
        }
        if let Err(FcgiError::Connect { source, .. }) = &result
            && matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            )
        {
            self.set_cold();
        }
        result
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
        if !self.is_warm() {
            self.hold_while_starting().await;
        }
        let places = async {
            let permit = self.permits.clone().acquire_owned().await;
            let permit = permit.map_err(|_| FcgiError::Usage("connection pool closed"))?;
            Ok::<_, FcgiError>((permit, self.pass_gate().await?))
        };
        let (permit, gate) = match tokio::time::timeout(wait, places).await {
            Ok(places) => places?,
            Err(_) => return Err(FcgiError::Timeout),
        };
        let mut lease = Lease {
            pool: self.clone(),
            kept: false,
            reused: false,
            _permit: permit,
            _gate: gate,
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
        let stream = self.connect(connect_timeout).await?;
        Ok((stream, Some(lease)))
    }

    /// Close connections idle for [`IDLE_TIMEOUT`] or longer, and those
    /// php-fpm hung up; returns how many. Called every few hundred
    /// milliseconds by the front end.
    pub fn reap(&self, now: Instant) -> usize {
        // A slow start that has lasted its longest ends here.
        let started = *self.cold_since.lock();
        if started.is_some_and(|t| now.duration_since(t) >= self.slow_start_max) {
            self.set_warm();
        }
        // php-fpm's unit is restarting: what comes next is held and slow-started.
        if self.is_warm() && self.hold.as_ref().is_some_and(|h| *h.starting.borrow()) {
            self.set_cold();
        }
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
        self.pool.connect(connect_timeout).await
    }

    /// php-fpm ended this request (END_REQUEST read): a child has the app
    /// loaded, so the pool's slow start is over.
    pub(super) fn answered(&self) {
        self.pool.set_warm();
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
#[path = "pool_tests.rs"]
mod tests;
