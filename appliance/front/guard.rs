//! Slow and oversized request heads: a deadline for the whole head and a size
//! limit, enforced on the byte stream under pingora's HTTP/1 parser.
//!
//! pingora times out each read (60 s), not the whole head, so a client
//! trickling a byte at a time (slowloris) could hold a connection forever; and
//! its head limit is 1 MiB. [`GuardedStream`] wraps a downstream connection
//! (after TLS, so it sees plain HTTP/1) and watches the head of every request:
//! - the head must be complete within `header_timeout` of the connection's
//!   start, or of the first byte of a later request on a kept-alive
//!   connection; otherwise the client gets `408` and the connection closes;
//! - a head larger than `max_header_bytes` gets `431` and the connection closes;
//! - a head with smuggling-prone framing (both Content-Length and
//!   Transfer-Encoding, repeated lengths) gets `400` and the connection closes.
//!
//! The end of a head is found by scanning for the blank line; bytes after it
//! (the body) are not scanned. A response written by the app marks the end of
//! a request, so the next byte read starts the next head. HTTP/2 connections
//! are not wrapped: their framing is different and h2 limits its own headers.
//! It touches only the connection it wraps.

use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const TOO_LARGE_RESPONSE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const BAD_FRAMING_RESPONSE: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Why a connection is being refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Timeout,
    TooLarge,
    /// Request smuggling material: see [`framing_problem`].
    BadFraming(&'static str),
}

impl Refusal {
    fn response(self) -> &'static [u8] {
        match self {
            Refusal::Timeout => TIMEOUT_RESPONSE,
            Refusal::TooLarge => TOO_LARGE_RESPONSE,
            Refusal::BadFraming(_) => BAD_FRAMING_RESPONSE,
        }
    }
    fn reason(self) -> &'static str {
        match self {
            Refusal::Timeout => "request head not received in time",
            Refusal::TooLarge => "request head too large",
            Refusal::BadFraming(why) => why,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for or reading a request head.
    Head,
    /// Head complete; reading the body or waiting for the response.
    Body,
    /// A canned response is being written, then the connection fails.
    Refuse { sent: usize, why: Refusal },
}

/// A downstream connection with a head deadline, a head size limit and a
/// framing check.
#[derive(Debug)]
pub struct GuardedStream {
    inner: Stream,
    phase: Phase,
    /// The current head so far (bounded by `max_header_bytes` plus one read).
    head: Vec<u8>,
    deadline: Pin<Box<Sleep>>,
    /// The deadline runs only once the head has started (after the first request).
    armed: bool,
    header_timeout: Duration,
    max_header_bytes: usize,
    /// Body bytes of the current request still to come: `Some(n)` from its
    /// Content-Length, `None` for a chunked body (length unknown here).
    body_left: Option<u64>,
    /// The final response to the current request has started.
    responded: bool,
}

impl GuardedStream {
    pub fn new(inner: Stream, header_timeout: Duration, max_header_bytes: usize) -> Self {
        Self {
            inner,
            phase: Phase::Head,
            head: Vec::with_capacity(1024),
            // The first request's head is timed from the connection's start.
            deadline: Box::pin(tokio::time::sleep(header_timeout)),
            armed: true,
            header_timeout,
            max_header_bytes,
            body_left: Some(0),
            responded: false,
        }
    }

    /// The current request is over: the next byte read starts a new head.
    fn next_request(&mut self) {
        self.phase = Phase::Head;
        self.armed = false;
        self.responded = false;
        self.body_left = Some(0);
    }

    /// Count body bytes read; a request whose body is all read and whose
    /// response has started is over.
    fn consumed(&mut self, n: usize) {
        if let Some(left) = self.body_left.as_mut() {
            *left = left.saturating_sub(n as u64);
            if *left == 0 && self.responded {
                self.next_request();
            }
        }
    }

    /// Take newly read head bytes; decide once the head is complete.
    fn take(&mut self, data: &[u8]) -> Option<Refusal> {
        let from = self.head.len().saturating_sub(3);
        self.head.extend_from_slice(data);
        let end = find_head_end(&self.head[from..]).map(|e| from + e);
        let limit = self.max_header_bytes;
        match end {
            None if self.head.len() > limit => Some(Refusal::TooLarge),
            None => None,
            Some(end) if end > limit => Some(Refusal::TooLarge),
            Some(end) => match framing(&self.head[..end]) {
                Err(why) => Some(Refusal::BadFraming(why)),
                Ok(body) => {
                    let extra = self.head.len() - end;
                    self.head.clear();
                    self.phase = Phase::Body;
                    self.responded = false;
                    self.body_left = body;
                    self.consumed(extra);
                    None
                }
            },
        }
    }

    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Phase::Refuse { mut sent, why } = self.phase else {
            return Poll::Ready(Ok(()));
        };
        let msg = why.response();
        while sent < msg.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &msg[sent..]))?;
            if n == 0 {
                break;
            }
            sent += n;
            self.phase = Phase::Refuse { sent, why };
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        tracing::debug!(
            reason = why.reason(),
            "connection refused by the head guard"
        );
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            why.reason(),
        )))
    }
}

/// `HTTP/1.x 1xx`: an interim response, after which the request goes on.
fn is_interim(data: &[u8]) -> bool {
    data.len() > 9 && data.starts_with(b"HTTP/1.") && data[9] == b'1'
}

/// End of the head (index after the blank line): `\r\n\r\n`, or a bare
/// `\n\n`, which the parser tolerates.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// The body length a raw head declares (`Some(n)`; `None` for chunked), or the
/// framing problem that request smuggling relies on (pingora drops
/// Content-Length when Transfer-Encoding is present, so the handler could not
/// see it): both headers, several Content-Length headers or values, a
/// non-numeric length, or a Transfer-Encoding other than `chunked`.
pub fn framing(head: &[u8]) -> Result<Option<u64>, &'static str> {
    let (mut cl, mut te) = (0, 0);
    let mut length = 0u64;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            cl += 1;
            length = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or("malformed Content-Length")?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te += 1;
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err("unsupported Transfer-Encoding");
            }
        }
    }
    match (cl, te) {
        (c, t) if c > 0 && t > 0 => Err("both Content-Length and Transfer-Encoding"),
        (c, _) if c > 1 => Err("repeated Content-Length"),
        (_, t) if t > 1 => Err("repeated Transfer-Encoding"),
        (_, 1) => Ok(None),
        _ => Ok(Some(length)),
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if matches!(this.phase, Phase::Refuse { .. }) {
            return this.poll_refuse(cx);
        }
        if this.phase == Phase::Body {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let n = buf.filled().len() - before;
            this.consumed(n);
            return Poll::Ready(Ok(()));
        }
        if this.armed && this.deadline.as_mut().poll(cx).is_ready() {
            this.phase = Phase::Refuse {
                sent: 0,
                why: Refusal::Timeout,
            };
            return this.poll_refuse(cx);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if new.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if !this.armed {
            this.armed = true;
            let at = Instant::now() + this.header_timeout;
            this.deadline.as_mut().reset(at);
        }
        if let Some(why) = this.take(new) {
            this.phase = Phase::Refuse { sent: 0, why };
            return this.poll_refuse(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        // A final response (not `100 Continue`) is going out: once the body is
        // read too, the next byte read starts a new head. With a chunked body
        // the end is not tracked here, so the response marks it.
        if this.phase == Phase::Body && !this.responded && !is_interim(data) {
            this.responded = true;
            if this.body_left.is_none_or(|left| left == 0) {
                this.next_request();
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_with_crlf_or_bare_lf() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"),
            Some(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: a\n\nbody"), Some(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_a_framing_problem() {
        let h = b"POST / HTTP/1.1\r\nContent-Length: 5\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(framing(h).is_err());
    }

    #[test]
    fn repeated_or_malformed_lengths_and_odd_encodings_are_framing_problems() {
        for h in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(framing(h).is_err(), "{}", String::from_utf8_lossy(h));
        }
    }

    #[test]
    fn ordinary_requests_have_no_framing_problem() {
        for h in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-Note: content-length: 5\r\n\r\n",
        ] {
            assert!(framing(h).is_ok(), "{}", String::from_utf8_lossy(h));
        }
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(Some(12))
        );
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(None)
        );
        assert_eq!(framing(b"GET / HTTP/1.1\r\n\r\n"), Ok(Some(0)));
    }

    #[test]
    fn only_1xx_responses_are_interim() {
        assert!(is_interim(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(!is_interim(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_interim(b"hello"));
    }
}
