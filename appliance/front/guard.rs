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
//! - a head larger than `max_header_bytes` gets `431` and the connection closes.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for or reading a request head.
    Head,
    /// Head complete; reading the body or waiting for the response.
    Body,
    /// A canned response is being written, then the connection fails.
    Reject { sent: usize, too_large: bool },
}

/// A downstream connection with a head deadline and a head size limit.
#[derive(Debug)]
pub struct GuardedStream {
    inner: Stream,
    phase: Phase,
    /// Bytes of the current head seen so far.
    head_bytes: usize,
    /// The last 3 bytes of the head so far, to find a `\r\n\r\n` split across reads.
    tail: [u8; 3],
    deadline: Pin<Box<Sleep>>,
    /// The deadline runs only once the head has started (after the first request).
    armed: bool,
    header_timeout: Duration,
    max_header_bytes: usize,
}

impl GuardedStream {
    pub fn new(inner: Stream, header_timeout: Duration, max_header_bytes: usize) -> Self {
        Self {
            inner,
            phase: Phase::Head,
            head_bytes: 0,
            tail: [0; 3],
            // The first request's head is timed from the connection's start.
            deadline: Box::pin(tokio::time::sleep(header_timeout)),
            armed: true,
            header_timeout,
            max_header_bytes,
        }
    }

    /// Scan newly read head bytes; returns true when the head is complete.
    fn scan(&mut self, data: &[u8]) -> bool {
        let mut window = [0u8; 4];
        window[..3].copy_from_slice(&self.tail);
        for (i, &b) in data.iter().enumerate() {
            window.rotate_left(1);
            window[3] = b;
            // `\r\n\r\n`, or a bare `\n\n` (tolerated by the parser).
            if window == *b"\r\n\r\n" || window[2..] == *b"\n\n" {
                self.head_bytes += i + 1;
                return true;
            }
        }
        self.head_bytes += data.len();
        self.tail.copy_from_slice(&window[1..]);
        false
    }

    fn poll_reject(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Phase::Reject {
            mut sent,
            too_large,
        } = self.phase
        else {
            return Poll::Ready(Ok(()));
        };
        let msg = if too_large {
            TOO_LARGE_RESPONSE
        } else {
            TIMEOUT_RESPONSE
        };
        while sent < msg.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &msg[sent..]))?;
            if n == 0 {
                break;
            }
            sent += n;
            self.phase = Phase::Reject { sent, too_large };
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        let why = if too_large {
            "request head too large"
        } else {
            "request head not received in time"
        };
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            why,
        )))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if matches!(this.phase, Phase::Reject { .. }) {
            return this.poll_reject(cx);
        }
        if this.phase == Phase::Body {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.armed && this.deadline.as_mut().poll(cx).is_ready() {
            this.phase = Phase::Reject {
                sent: 0,
                too_large: false,
            };
            return this.poll_reject(cx);
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
        if this.scan(new) {
            this.phase = Phase::Body;
        } else if this.head_bytes > this.max_header_bytes {
            this.phase = Phase::Reject {
                sent: 0,
                too_large: true,
            };
            return this.poll_reject(cx);
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
        // A response is going out: the next byte read starts a new head.
        if this.phase == Phase::Body {
            this.phase = Phase::Head;
            this.head_bytes = 0;
            this.tail = [0; 3];
            this.armed = false;
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
