//! PHP requests: one FastCGI exchange with the instance's php-fpm per request.
//!
//! The request body streams to php-fpm as it arrives (never held whole), with
//! the upload limit enforced on the way (413); the response streams back
//! chunk by chunk, so a script that flushes early reaches the client early.
//! Connections come from the instance's [`Pool`]: at most `php_children`
//! requests in flight, connections kept for the next request (the pool says
//! why that is safe with php-fpm). Only a GET, HEAD or OPTIONS without a body
//! takes an idle connection, because only such a request can be sent again
//! on a fresh one when php-fpm had closed the idle one.
//! php-fpm unreachable -> 502 page; silent past the read timeout -> 504 page.
//! Touches only php-fpm's socket.

use super::cgi::{self, FcgiParams, RequestInfo};
use super::fastcgi::{Exchange, FcgiError, Pool};
use super::handler::{Ctx, Front, is_tls};
use super::spool;
use bytes::BytesMut;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::path::Path;
use std::time::Instant;

/// Where and what to run.
pub struct Target<'a> {
    pub php: &'a std::sync::Arc<Pool>,
    pub document_root: &'a Path,
    pub script_filename: &'a Path,
    pub script_name: &'a str,
    pub path_info: &'a str,
    pub document_uri: &'a str,
    pub host: &'a str,
}

/// A response up to this size that php-fpm has already sent whole goes out
/// with a Content-Length in one write instead of chunked.
const GATHER_MAX: usize = 64 * 1024;

/// Hop-by-hop headers a CGI response must not dictate to the client.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "te",
    "trailer",
];

pub async fn serve(
    front: &Front,
    session: &mut Session,
    ctx: &mut Ctx,
    t: &Target<'_>,
) -> Result<()> {
    let limits = &front.limits;
    let declared_len = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > limits.max_body_bytes) {
        return front.respond_page(session, ctx, 413).await;
    }
    let has_body = !session.is_body_done();
    if has_body && expects_continue(session) {
        let cont = pingora::http::ResponseHeader::build(100, None)?;
        session.write_response_header(Box::new(cont), false).await?;
    }
    // A chunked body has no declared length, and php-fpm reads no body without
    // CONTENT_LENGTH: spool it first (as nginx does), then send it with its length.
    let spooled = match (has_body, declared_len) {
        (true, None) => match spool::read_all(session, limits.max_body_bytes).await {
            Ok(s) => Some(s),
            Err(status) => return front.respond_page(session, ctx, status).await,
        },
        _ => None,
    };
    let length = spooled.as_ref().map(|s| s.len()).or(declared_len);
    let params = build_params(session, t, length);
    let started = Instant::now();
    if let Some(name) = params.too_long {
        let e = FcgiError::ParamTooLong(name);
        return upstream_failed(front, session, ctx, started, e).await;
    }
    // A request that can be sent twice may take an idle connection.
    let resendable = !has_body
        && matches!(
            session.req_header().method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
    if resendable {
        return match exchange_resendable(t.php, &params.bytes, limits).await {
            Ok((ex, head)) => respond(front, session, ctx, started, ex, head).await,
            Err(e) => upstream_failed(front, session, ctx, started, e).await,
        };
    }
    let begun = Exchange::start_pooled(
        t.php,
        false,
        &params.bytes,
        limits.fastcgi_connect_timeout,
        limits.fastcgi_read_timeout,
        has_body,
    )
    .await;
    let mut ex = match begun {
        Ok(ex) => ex,
        Err(e) => return upstream_failed(front, session, ctx, started, e).await,
    };

    // Request body: streamed as it arrives (declared length), or from the spool.
    let sent = match spooled {
        Some(s) => s.send(&mut ex, limits.fastcgi_read_timeout).await,
        None if has_body => stream_body(session, &mut ex, limits).await,
        None => Ok(()),
    };
    let sent = match sent {
        Ok(()) => ex.finish_stdin().await.map_err(BodyError::Upstream),
        Err(e) => Err(e),
    };
    match sent {
        Ok(()) => {}
        Err(BodyError::Client(status)) => return front.respond_page(session, ctx, status).await,
        Err(BodyError::Upstream(e)) => {
            return upstream_failed(front, session, ctx, started, e).await;
        }
    }

    let head = match ex.read_head(limits.fastcgi_read_timeout).await {
        Ok(h) => h,
        Err(e) => return upstream_failed(front, session, ctx, started, e).await,
    };
    respond(front, session, ctx, started, ex, head).await
}

/// A bodyless GET/HEAD/OPTIONS up to its response head, on an idle pooled
/// connection if there is one. When php-fpm had closed that connection (not
/// one byte came back), the request never ran: it goes again, once, on a
/// new connection.
async fn exchange_resendable(
    php: &std::sync::Arc<Pool>,
    params: &[u8],
    limits: &super::routes::Limits,
) -> Result<(Exchange, cgi::ResponseHead), FcgiError> {
    let (connect, read) = (limits.fastcgi_connect_timeout, limits.fastcgi_read_timeout);
    let mut ex = Exchange::start_pooled(php, true, params, connect, read, false).await?;
    match ex.read_head(read).await {
        Ok(head) => Ok((ex, head)),
        Err(e) if ex.reused() && ex.received_nothing() && !matches!(e, FcgiError::Timeout) => {
            tracing::debug!(error = %e, "idle php-fpm connection was closed; sending again");
            let mut ex = ex.retry_fresh(params, connect).await?;
            let head = ex.read_head(read).await?;
            Ok((ex, head))
        }
        Err(e) => Err(e),
    }
}

/// Send php-fpm's response, head read, to the client: whole with a
/// Content-Length when it has all arrived already, else streamed.
async fn respond(
    front: &Front,
    session: &mut Session,
    ctx: &mut Ctx,
    started: Instant,
    mut ex: Exchange,
    head: cgi::ResponseHead,
) -> Result<()> {
    let limits = &front.limits;
    front.quiet.recovered(front.instance_of(ctx));
    // Gather what php-fpm has already sent. A small page usually arrives whole
    // with its head: it then goes out with a Content-Length in one write, and
    // php-fpm's connection is closed before the client write. Never waits.
    let mut gathered = BytesMut::new();
    let mut complete = false;
    while gathered.len() < GATHER_MAX {
        match ex.read_body_now() {
            Some(Ok(Some(chunk))) => gathered.extend_from_slice(&chunk),
            Some(Ok(None)) => {
                complete = true;
                break;
            }
            Some(Err(e)) => return upstream_failed(front, session, ctx, started, e).await,
            None => break,
        }
    }
    let mut resp = front.response_keeping_case(session, ctx, head.status)?;
    // A status with no standard phrase (Laravel's 419) keeps the script's own,
    // as nginx passes it; a known status keeps the standard one.
    if let Some(reason) = head.reason.as_deref().filter(|_| {
        http::StatusCode::from_u16(head.status)
            .ok()
            .and_then(|c| c.canonical_reason())
            .is_none()
    }) {
        resp.set_reason_phrase(Some(reason))?;
    }
    let mut has_length = false;
    for (name, value) in head.headers {
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) {
            continue;
        }
        if lower == "content-length" {
            has_length = true;
        }
        resp.append_header(name, value.as_slice())?;
    }
    let head_only = session.req_header().method == pingora::http::Method::HEAD;
    let bodyless = head_only || no_body_status(head.status);
    if complete {
        finish(ex, ctx, front, started);
        if !has_length && !no_body_status(head.status) {
            resp.insert_header("Content-Length", gathered.len().to_string())?;
        }
        if bodyless || gathered.is_empty() {
            return session.write_response_header(Box::new(resp), true).await;
        }
        session.write_response_header(Box::new(resp), false).await?;
        return session
            .write_response_body(Some(gathered.freeze()), true)
            .await;
    }
    if !has_length && !session.is_http2() && !bodyless {
        resp.insert_header("Transfer-Encoding", "chunked")?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    if !gathered.is_empty() && !head_only {
        session
            .write_response_body(Some(gathered.freeze()), false)
            .await?;
    }
    loop {
        match ex.read_body(limits.fastcgi_read_timeout).await {
            Ok(Some(chunk)) => {
                if !head_only && !chunk.is_empty() {
                    session.write_response_body(Some(chunk), false).await?;
                }
            }
            Ok(None) => break,
            Err(e) => {
                finish(ex, ctx, front, started);
                // Headers are out: all we can do is cut the response short.
                return Error::e_explain(
                    ErrorType::ReadError,
                    format!("php-fpm response interrupted: {e}"),
                );
            }
        }
    }
    finish(ex, ctx, front, started);
    session.write_response_body(None, true).await
}

/// Why a request body could not be handed over.
pub(super) enum BodyError {
    /// The client's fault: 400 (malformed body) or 413 (over the limit).
    Client(u16),
    Upstream(FcgiError),
}

/// Stream a body of declared length to php-fpm, chunk by chunk.
async fn stream_body(
    session: &mut Session,
    ex: &mut Exchange,
    limits: &super::routes::Limits,
) -> Result<(), BodyError> {
    let mut total: u64 = 0;
    loop {
        let chunk = match session.read_request_body().await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "bad request body");
                return Err(BodyError::Client(400));
            }
        };
        total += chunk.len() as u64;
        if total > limits.max_body_bytes {
            return Err(BodyError::Client(413));
        }
        send(ex, &chunk, limits.fastcgi_read_timeout).await?;
    }
}

/// php-fpm reads the body before the script runs; one that stops reading for
/// the read timeout is treated as silent (504), never waited on forever.
pub(super) async fn send(
    ex: &mut Exchange,
    chunk: &[u8],
    timeout: std::time::Duration,
) -> Result<(), BodyError> {
    match tokio::time::timeout(timeout, ex.send_stdin(chunk)).await {
        Ok(r) => r.map_err(BodyError::Upstream),
        Err(_) => Err(BodyError::Upstream(FcgiError::Timeout)),
    }
}

fn no_body_status(status: u16) -> bool {
    status == 204 || status == 304 || (100..200).contains(&status)
}

fn expects_continue(session: &Session) -> bool {
    !session.is_http2()
        && session
            .req_header()
            .headers
            .get("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

async fn upstream_failed(
    front: &Front,
    session: &mut Session,
    ctx: &mut Ctx,
    started: Instant,
    e: FcgiError,
) -> Result<()> {
    ctx.upstream = Some(started.elapsed());
    let status = match e {
        FcgiError::Timeout => 504,
        _ => 502,
    };
    let instance = front.instance_of(ctx);
    if matches!(e, FcgiError::Connect { .. }) {
        // php-fpm starting or restarting: one line per window, not per request.
        if let Some(held_back) = front.quiet.admit(instance, Instant::now()) {
            tracing::warn!(instance, status, error = %e, held_back, "php-fpm unreachable; further failures are counted, one line per 10 s");
        }
    } else {
        tracing::warn!(instance, status, error = %e, "php-fpm request failed");
    }
    front.respond_page(session, ctx, status).await
}

/// The exchange is over: record php-fpm's time, log what it wrote to stderr,
/// and hand the connection back to the pool or close it (php-fpm's child is
/// pinned until then).
fn finish(mut ex: Exchange, ctx: &mut Ctx, front: &Front, started: Instant) {
    ctx.upstream = Some(started.elapsed());
    let err = ex.take_stderr();
    ex.release();
    if err.is_empty() {
        return;
    }
    let instance = front.instance_of(ctx);
    for line in String::from_utf8_lossy(&err)
        .lines()
        .filter(|l| !l.is_empty())
    {
        tracing::warn!(instance, php = line, "php stderr");
    }
}

/// The request's CGI parameters, encoded as the FastCGI PARAMS stream.
fn build_params(session: &Session, t: &Target<'_>, content_length: Option<u64>) -> FcgiParams {
    let req = session.req_header();
    let tls = is_tls(session);
    let (remote_addr, remote_port) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| (a.ip(), a.port()))
        .unwrap_or((std::net::Ipv4Addr::LOCALHOST.into(), 0));
    let (server_addr, server_port) = session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map(|a| (Some(a.ip()), a.port()))
        .unwrap_or((None, if tls { 443 } else { 80 }));
    let server_name = super::vhost::normalize(t.host);
    let headers: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let info = RequestInfo {
        method: req.method.as_str(),
        request_uri: req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        query: req.uri.query().unwrap_or(""),
        script_filename: t.script_filename,
        script_name: t.script_name,
        path_info: t.path_info,
        document_root: t.document_root,
        document_uri: t.document_uri,
        server_name: &server_name,
        server_addr,
        server_port,
        https: tls,
        server_protocol: if session.is_http2() {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        },
        remote_addr,
        remote_port,
        headers: &headers,
        content_length,
        content_type: req
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
    };
    let mut out = FcgiParams {
        bytes: Vec::with_capacity(1024),
        too_long: None,
    };
    cgi::write_params(&info, &mut out);
    out
}
