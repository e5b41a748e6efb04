//! FastCGI client for php-fpm: one [`Exchange`] is one request on one fresh
//! unix-socket connection. The request body streams in with
//! [`Exchange::send_stdin`], the response streams out with
//! [`Exchange::read_head`] and [`Exchange::read_body`]; nothing buffers a
//! whole body.
//!
//! Touches only the php-fpm socket it is given. php-fpm's bytes are untrusted:
//! malformed records are [`FcgiError::Protocol`], never a panic.
//!
//! Connections: [`Exchange::start`] and friends open a fresh one, which
//! php-fpm closes at the request's end. [`Exchange::start_pooled`] takes one
//! from a [`Pool`], setting FCGI_KEEP_CONN when the pool keeps it, and
//! [`Exchange::release`] hands a kept one back when the request ended
//! cleanly; [`pool`] says why reuse is safe with php-fpm, which serves one
//! request per connection at a time.

pub mod pool;
pub(crate) mod record;

pub use self::pool::Pool;
pub use self::record::EndRequest;
use self::record::{END_REQUEST, PARAMS, REQUEST_ID, STDERR, STDIN, STDOUT};
use crate::front::cgi::{CgiError, ResponseHead, parse_head};
use bytes::{Bytes, BytesMut};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Response bytes read ahead while the request body is still being written
/// (php-fpm may answer before it has read the body). Beyond this, writing
/// just waits: memory stays bounded per request.
const MAX_READ_AHEAD: usize = 1024 * 1024;
/// Bytes asked of the socket per read: one full record plus header.
const READ_CHUNK: usize = 64 * 1024 + 16;
/// STDERR kept between two [`Exchange::take_stderr`] calls; the rest is dropped.
const MAX_STDERR: usize = 64 * 1024;

/// Why an exchange failed, and so what the caller answers.
#[derive(Debug, thiserror::Error)]
pub enum FcgiError {
    /// php-fpm is not there or not accepting (also a connect timeout): 502.
    #[error("cannot connect to php-fpm at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No data from php-fpm within the idle timeout: 504.
    #[error("php-fpm sent nothing within the read timeout")]
    Timeout,
    /// The connection failed mid-exchange: 502.
    #[error("php-fpm connection: {0}")]
    Io(#[from] io::Error),
    /// php-fpm sent something that is not a valid FastCGI response (or closed
    /// the connection before END_REQUEST): 502.
    #[error("FastCGI protocol error: {0}")]
    Protocol(String),
    /// END_REQUEST with a protocol status other than "complete" (php-fpm
    /// overloaded, ...): the script never ran. 503.
    #[error("php-fpm refused the request: {}", .0.protocol_status_text())]
    Refused(EndRequest),
    /// The CGI response head PHP printed is malformed or too large: 502.
    #[error(transparent)]
    Head(#[from] CgiError),
    /// A parameter name or value longer than FastCGI can encode (2 GiB).
    #[error("FastCGI parameter {0} is too long to encode")]
    ParamTooLong(String),
    /// The exchange was misused (body after its end, a cancelled write).
    #[error("FastCGI exchange misuse: {0}")]
    Usage(&'static str),
}

/// Where the request body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stdin {
    Open,
    /// The empty STDIN record was sent.
    Finished,
    /// php-fpm finished or hung up; further body bytes are dropped.
    Abandoned,
}

/// What the next meaningful record carried.
enum Event {
    Stdout(Bytes),
    End,
}

/// One FastCGI request in flight on its own connection. Dropping it closes
/// the connection (php-fpm then stops the request on its next write);
/// [`Self::release`] returns a pooled one for reuse.
#[derive(Debug)]
pub struct Exchange {
    stream: UnixStream,
    /// Set for a pooled connection; FCGI_KEEP_CONN was sent if it is kept.
    lease: Option<pool::Lease>,
    /// The empty STDIN record went out whole: php-fpm has the whole request.
    stdin_ended: bool,
    /// Some byte came from php-fpm.
    received: bool,
    /// Raw bytes read from php-fpm but not yet decoded.
    inbound: BytesMut,
    /// Nothing more to read: php-fpm closed its side, or a read failed.
    read_done: bool,
    /// Why reading stopped, when it was an error seen while writing.
    read_error: Option<io::Error>,
    stdin: Stdin,
    /// A write was cancelled mid-record: the stream is unusable.
    write_torn: bool,
    /// STDOUT bytes collected until the CGI head is complete.
    head_buf: BytesMut,
    head_done: bool,
    /// Body bytes that arrived together with the head.
    pending_body: Option<Bytes>,
    stderr: Vec<u8>,
    end: Option<EndRequest>,
}

impl Exchange {
    /// Connect (bounded by `connect_timeout`; a timeout is a
    /// [`FcgiError::Connect`] with `TimedOut`), then send BEGIN_REQUEST and
    /// the PARAMS stream. The body follows with [`Self::send_stdin`] and
    /// [`Self::finish_stdin`].
    ///
    /// Params are written without a timeout of their own: they fit in the
    /// socket buffer in practice; bound the whole exchange if that matters.
    pub async fn start(
        socket: &Path,
        params: &[(String, Vec<u8>)],
        connect_timeout: Duration,
    ) -> Result<Exchange, FcgiError> {
        let pairs = record::encode_pairs(params).map_err(|e| FcgiError::ParamTooLong(e.0))?;
        let stream = connect(socket, connect_timeout).await?;
        Self::begin(stream, None, &pairs, true).await
    }

    /// [`Self::start`] with the PARAMS stream already encoded (see
    /// [`crate::front::cgi::FcgiParams`]): no per-parameter allocations.
    pub async fn start_encoded(
        socket: &Path,
        pairs: &[u8],
        connect_timeout: Duration,
        body_follows: bool,
    ) -> Result<Exchange, FcgiError> {
        let stream = connect(socket, connect_timeout).await?;
        Self::begin(stream, None, pairs, body_follows).await
    }

    /// [`Self::start_encoded`] on a connection of `pool`: an idle one when
    /// `reuse` allows it (see [`Self::reused`]), else a new one. `wait`
    /// bounds the wait for a place among the pool's requests in flight.
    pub async fn start_pooled(
        pool: &std::sync::Arc<Pool>,
        reuse: bool,
        pairs: &[u8],
        connect_timeout: Duration,
        wait: Duration,
        body_follows: bool,
    ) -> Result<Exchange, FcgiError> {
        let (stream, lease) = pool.checkout(reuse, connect_timeout, wait).await?;
        Self::begin(stream, lease, pairs, body_follows).await
    }

    /// [`Self::start`] for a request without a body: BEGIN_REQUEST, PARAMS and
    /// the empty STDIN go out in one write (one syscall, one packet).
    pub async fn start_without_body(
        socket: &Path,
        params: &[(String, Vec<u8>)],
        connect_timeout: Duration,
    ) -> Result<Exchange, FcgiError> {
        let pairs = record::encode_pairs(params).map_err(|e| FcgiError::ParamTooLong(e.0))?;
        let stream = connect(socket, connect_timeout).await?;
        Self::begin(stream, None, &pairs, false).await
    }

    async fn begin(
        stream: UnixStream,
        lease: Option<pool::Lease>,
        pairs: &[u8],
        body_follows: bool,
    ) -> Result<Exchange, FcgiError> {
        let mut out = Vec::with_capacity(pairs.len() + 64);
        let keep = lease.as_ref().is_some_and(|l| l.kept);
        record::push_begin_request(&mut out, keep);
        record::push_stream(&mut out, PARAMS, pairs);
        record::push_end_of_stream(&mut out, PARAMS);
        if !body_follows {
            record::push_end_of_stream(&mut out, STDIN);
        }
        tracing::trace!(params_bytes = pairs.len(), keep, "fastcgi request");
        let mut exchange = Exchange {
            stream,
            lease,
            stdin_ended: false,
            received: false,
            inbound: BytesMut::with_capacity(READ_CHUNK),
            read_done: false,
            read_error: None,
            stdin: Stdin::Open,
            write_torn: false,
            head_buf: BytesMut::new(),
            head_done: false,
            pending_body: None,
            stderr: Vec::new(),
            end: None,
        };
        exchange.write_reading(&out).await?;
        if !body_follows && exchange.stdin == Stdin::Open {
            exchange.stdin = Stdin::Finished;
            exchange.stdin_ended = true;
        }
        Ok(exchange)
    }

    /// The connection came from the pool's idle ones. If such an exchange
    /// fails having [`Self::received_nothing`], php-fpm closed the connection
    /// while it was idle (a child reaching `pm.max_requests`): the request
    /// never ran, and a request without a body can be sent again.
    pub fn reused(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| l.reused)
    }

    /// Send the same bodyless request again on a new connection, keeping this
    /// exchange's place in its pool (no second wait behind other requests).
    /// For an exchange that was [`Self::reused`] and [`Self::received_nothing`].
    pub async fn retry_fresh(
        self,
        pairs: &[u8],
        connect_timeout: Duration,
    ) -> Result<Exchange, FcgiError> {
        let Some(mut lease) = self.lease else {
            return Err(FcgiError::Usage("only a pooled exchange is retried"));
        };
        drop(self.stream);
        let stream = lease.reconnect(connect_timeout).await?;
        Self::begin(stream, Some(lease), pairs, false).await
    }

    /// Not one byte came back from php-fpm.
    pub fn received_nothing(&self) -> bool {
        !self.received
    }

    /// The exchange is over: a kept connection whose request ended cleanly
    /// (whole request sent, END_REQUEST "complete" read, nothing left over)
    /// goes back to its pool; any other is closed.
    pub fn release(self) {
        let clean = self.stdin_ended
            && !self.write_torn
            && !self.read_done
            && self.inbound.is_empty()
            && self.pending_body.is_none()
            && self.end.is_some_and(|e| e.completed());
        if let (Some(lease), true) = (&self.lease, self.end.is_some()) {
            lease.answered();
        }
        if let (Some(lease), true) = (self.lease, clean) {
            lease.release(self.stream);
        }
    }

    /// Send one piece of request body as STDIN records. An empty chunk sends
    /// nothing (an empty record would end the body). While writing, response
    /// records are read and kept (up to 1 MiB), so a script that answers
    /// before reading its body cannot deadlock against us.
    ///
    /// Once php-fpm has finished or hung up, the body is silently dropped: the
    /// response (or the error for its absence) comes from [`Self::read_head`].
    /// There is no timeout here; wrap the call if the client may be slow.
    /// Cancelling it mid-write makes the exchange unusable.
    pub async fn send_stdin(&mut self, chunk: &[u8]) -> Result<(), FcgiError> {
        match self.stdin {
            Stdin::Finished => return Err(FcgiError::Usage("request body after its end")),
            Stdin::Abandoned => return Ok(()),
            Stdin::Open if chunk.is_empty() => return Ok(()),
            Stdin::Open => {}
        }
        let mut out = Vec::new();
        record::push_stream(&mut out, STDIN, chunk);
        self.write_reading(&out).await
    }

    /// Send the empty STDIN record that ends the body. Idempotent.
    pub async fn finish_stdin(&mut self) -> Result<(), FcgiError> {
        if self.stdin != Stdin::Open {
            return Ok(());
        }
        let mut out = Vec::new();
        record::push_end_of_stream(&mut out, STDIN);
        self.write_reading(&out).await?;
        if self.stdin == Stdin::Open {
            self.stdin = Stdin::Finished;
            self.stdin_ended = true;
        }
        Ok(())
    }

    /// Read until the CGI response head is complete. Ends the body first if
    /// the caller has not. `timeout` bounds each wait for data from php-fpm.
    pub async fn read_head(&mut self, timeout: Duration) -> Result<ResponseHead, FcgiError> {
        if self.head_done {
            return Err(FcgiError::Usage("response head already read"));
        }
        self.finish_stdin().await?;
        loop {
            if let Some((head, used)) = parse_head(&self.head_buf)? {
                let body = self.head_buf.split_off(used);
                if !body.is_empty() {
                    self.pending_body = Some(body.freeze());
                }
                self.head_buf = BytesMut::new();
                self.head_done = true;
                return Ok(head);
            }
            match self.next_event(timeout).await? {
                Event::Stdout(data) => self.head_buf.extend_from_slice(&data),
                Event::End => return Err(self.end_before_head()),
            }
        }
    }

    /// The next piece of response body as it arrives (one record's worth at
    /// most), or `None` once END_REQUEST has come. `timeout` bounds each wait
    /// for data.
    pub async fn read_body(&mut self, timeout: Duration) -> Result<Option<Bytes>, FcgiError> {
        if !self.head_done {
            return Err(FcgiError::Usage("response body before its head"));
        }
        if let Some(body) = self.pending_body.take() {
            return Ok(Some(body));
        }
        if self.end.is_some() {
            return Ok(None);
        }
        match self.next_event(timeout).await? {
            Event::Stdout(data) => Ok(Some(data)),
            Event::End => Ok(None),
        }
    }

    /// STDERR text php-fpm sent so far (PHP warnings, `error_log()` without a
    /// log file), taken out so the caller can log it.
    pub fn take_stderr(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.stderr)
    }

    /// END_REQUEST's statuses, once it has arrived.
    pub fn end_request(&self) -> Option<EndRequest> {
        self.end
    }

    fn end_before_head(&self) -> FcgiError {
        match self.end {
            Some(end) if !end.completed() => FcgiError::Refused(end),
            _ => FcgiError::Protocol("END_REQUEST before the response head was complete".into()),
        }
    }

    /// The next piece of body if it can be had without waiting: from bytes
    /// already received, or one non-blocking read. `None`: nothing yet. Lets
    /// the caller gather a small response whole (and send it with a
    /// Content-Length in one write) without ever waiting for a slow script.
    pub fn read_body_now(&mut self) -> Option<Result<Option<Bytes>, FcgiError>> {
        if !self.head_done {
            return Some(Err(FcgiError::Usage("response body before its head")));
        }
        if let Some(body) = self.pending_body.take() {
            return Some(Ok(Some(body)));
        }
        for attempt in 0..2 {
            match self.decode_event() {
                Ok(Some(Event::Stdout(data))) => return Some(Ok(Some(data))),
                Ok(Some(Event::End)) => return Some(Ok(None)),
                Err(e) => return Some(Err(e)),
                Ok(None) if attempt == 0 && !self.read_done => {
                    self.inbound.reserve(READ_CHUNK);
                    match self.stream.try_read_buf(&mut self.inbound) {
                        Ok(0) => self.read_done = true,
                        Ok(_) => self.received = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                        Err(e) => {
                            self.read_done = true;
                            self.read_error = Some(e);
                        }
                    }
                }
                Ok(None) => return None,
            }
        }
        None
    }

    /// Decode records until one carries response data or ends the request.
    /// STDERR is collected on the way; empty STDOUT (end of stream) skipped.
    async fn next_event(&mut self, timeout: Duration) -> Result<Event, FcgiError> {
        loop {
            if let Some(ev) = self.decode_event()? {
                return Ok(ev);
            }
            self.read_more(timeout).await?;
        }
    }

    /// Like [`Self::next_event`] from the bytes already received only:
    /// `Ok(None)` when a whole meaningful record is not there yet.
    fn decode_event(&mut self) -> Result<Option<Event>, FcgiError> {
        if self.end.is_some() {
            return Ok(Some(Event::End));
        }
        loop {
            let Some(rec) = record::decode(&mut self.inbound).map_err(FcgiError::Protocol)? else {
                return Ok(None);
            };
            if rec.request_id != REQUEST_ID {
                return Err(FcgiError::Protocol(format!(
                    "record type {} for request id {} (expected {REQUEST_ID})",
                    rec.kind, rec.request_id
                )));
            }
            match rec.kind {
                STDOUT if rec.content.is_empty() => {}
                STDOUT => return Ok(Some(Event::Stdout(rec.content))),
                STDERR => self.keep_stderr(&rec.content),
                END_REQUEST => {
                    let end = record::parse_end_request(&rec.content).ok_or_else(|| {
                        FcgiError::Protocol("END_REQUEST shorter than 8 bytes".into())
                    })?;
                    tracing::trace!(?end, "fastcgi request ended");
                    self.end = Some(end);
                    // Nothing more will be sent. php-fpm drains the connection
                    // until EOF, so the caller drops the exchange (closing it)
                    // as soon as it has the end: no shutdown() syscall needed.
                    self.stdin = Stdin::Abandoned;
                    return Ok(Some(Event::End));
                }
                other => {
                    return Err(FcgiError::Protocol(format!(
                        "unexpected record type {other} from php-fpm"
                    )));
                }
            }
        }
    }

    fn keep_stderr(&mut self, text: &[u8]) {
        let room = MAX_STDERR.saturating_sub(self.stderr.len());
        if text.len() > room {
            tracing::debug!(dropped = text.len() - room, "php-fpm stderr over limit");
        }
        self.stderr.extend_from_slice(&text[..text.len().min(room)]);
    }

    /// Read more bytes, waiting at most `timeout`. A close before END_REQUEST
    /// is an error, never a short body.
    async fn read_more(&mut self, timeout: Duration) -> Result<(), FcgiError> {
        if self.read_done {
            return Err(match self.read_error.take() {
                Some(e) => FcgiError::Io(e),
                None => {
                    FcgiError::Protocol("php-fpm closed the connection before END_REQUEST".into())
                }
            });
        }
        self.inbound.reserve(READ_CHUNK);
        let read = self.stream.read_buf(&mut self.inbound);
        let n = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| FcgiError::Timeout)??;
        if n == 0 {
            self.read_done = true;
        } else {
            self.received = true;
        }
        Ok(())
    }

    /// Write `buf` whole while reading whatever php-fpm sends meanwhile (up to
    /// [`MAX_READ_AHEAD`]). Once php-fpm has ended the request or stopped
    /// reading, the rest is dropped and stdin marked abandoned; the reading
    /// side then reports the response or what went wrong.
    async fn write_reading(&mut self, buf: &[u8]) -> Result<(), FcgiError> {
        if self.write_torn {
            return Err(FcgiError::Usage("a cancelled write left a partial record"));
        }
        self.write_torn = true;
        let (mut rd, mut wr) = self.stream.split();
        let mut pos = 0;
        let mut hung_up = false;
        // php-fpm only closes its side after END_REQUEST, so EOF means done.
        while pos < buf.len() && !hung_up && !self.read_done {
            let can_read = self.inbound.len() < MAX_READ_AHEAD;
            if can_read {
                self.inbound.reserve(READ_CHUNK);
            }
            tokio::select! {
                read = rd.read_buf(&mut self.inbound), if can_read => match read {
                    Ok(0) => self.read_done = true,
                    Ok(_) => self.received = true,
                    Err(e) => {
                        self.read_done = true;
                        self.read_error = Some(e);
                    }
                },
                written = wr.write(&buf[pos..]) => match written {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                    Ok(n) => pos += n,
                    Err(e) if is_hangup(&e) => {
                        tracing::debug!(error = %e, "php-fpm stopped reading the request");
                        hung_up = true;
                    }
                    Err(e) => return Err(e.into()),
                },
            }
        }
        self.write_torn = false;
        if pos < buf.len() {
            self.stop_sending().await;
        }
        Ok(())
    }

    /// No more request body will be sent. Shutting our side down matters:
    /// after END_REQUEST php-fpm drains the connection until EOF, so a
    /// connection we keep open would pin a php-fpm child.
    async fn stop_sending(&mut self) {
        if self.stdin == Stdin::Abandoned {
            return;
        }
        self.stdin = Stdin::Abandoned;
        if let Err(e) = self.stream.shutdown().await {
            tracing::trace!(error = %e, "shutdown of the php-fpm connection");
        }
    }
}

/// The peer went away: not an error by itself, its response may be complete.
fn is_hangup(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

async fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, FcgiError> {
    let failed = |source| FcgiError::Connect {
        socket: socket.to_path_buf(),
        source,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match connect_now(socket) {
            Ok(std) => return UnixStream::from_std(std).map_err(failed),
            // A unix socket's listen backlog is full: php-fpm is busy. Retry
            // briefly (nginx would answer 502 at once).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if tokio::time::Instant::now() + pause > deadline {
                    return Err(failed(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("php-fpm's listen queue stayed full for {timeout:?}"),
                    )));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(failed(e)),
        }
    }
}

/// A non-blocking connect. On a unix socket it completes at once (or fails
/// with `WouldBlock` when the backlog is full), so unlike tokio's connect
/// there is no wait for writability and no `SO_ERROR` query: one syscall and
/// one scheduler round trip less per PHP request.
fn connect_now(socket: &Path) -> io::Result<std::os::unix::net::UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(socket)?;
    nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    Ok(std::os::unix::net::UnixStream::from(fd))
}

#[cfg(test)]
mod tests;
