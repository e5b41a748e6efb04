//! The request handler: pingora's [`ProxyHttp`] with every request answered in
//! `request_filter` (static file, PHP over FastCGI, redirect or error page), so
//! pingora's upstream machinery is never used.
//!
//! Per request (ambiguous framing was already refused by [`guard`](super::guard)):
//! route the Host to a site (or 421) through the current [`Routing`] snapshot,
//! loaded once, its site kept in [`Ctx`] until the request is logged -> redirect plain HTTP to HTTPS for sites with a certificate -> resolve
//! the path ([`site`](super::site)) -> serve. Every response carries HSTS on
//! HTTPS for such sites, and is logged by [`AccessLog`] in `logging`.
//! It touches the sites' web roots (read only) and php-fpm's sockets.

use super::access_log::{AccessLog, AccessRecord};
use super::pages::ErrorPages;
use super::routes::Limits;
use super::routing::Routing;
pub use super::routing::SiteRuntime;
use super::site::Route;
use super::{php, statics};
use crate::logs::ACCESS_UNIT;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, header};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Everything a request needs, shared by all connections.
pub struct Front {
    /// The sites and host table; swapped whole by `FrontEnd::add_site` and
    /// `remove_site`, loaded once per request.
    pub routing: Arc<ArcSwap<Routing>>,
    pub limits: Limits,
    /// Port of the first HTTPS listener, for redirects.
    pub https_port: Option<u16>,
    pub access: AccessLog,
    pub pages: ErrorPages,
    /// Requests in progress, so shutdown can wait for them.
    pub inflight: Arc<AtomicUsize>,
    /// Rate limit for "php-fpm unreachable" lines.
    pub quiet: super::quiet::Quiet,
    /// Small static files kept in memory, for every site.
    pub small_files: super::static_files::SmallFiles,
    /// Counters of requests for no known host.
    pub unrouted: Arc<super::stats::HttpStats>,
}

/// Per-request state, kept for the access log.
pub struct Ctx {
    start: Instant,
    /// The site routed to: held until the request is logged, so a site
    /// removed meanwhile (its php-fpm pool, its log file) outlives it.
    pub site: Option<Arc<SiteRuntime>>,
    pub handler: &'static str,
    pub upstream: Option<Duration>,
    _inflight: InflightGuard,
}

struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl ProxyHttp for Front {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        Ctx {
            start: Instant::now(),
            site: None,
            handler: "front",
            upstream: None,
            _inflight: InflightGuard(self.inflight.clone()),
        }
    }

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Every request is answered in request_filter; there is no upstream.
        Error::e_explain(ErrorType::InternalError, "no upstream: answered locally")
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.handle(session, ctx).await?;
        Ok(true)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let total = ctx.start.elapsed();
        let php_error = (ctx.handler == "php" && matches!(status, 502 | 504)).then_some(status);
        let stats = ctx.site.as_ref().map_or(&*self.unrouted, |s| &s.stats);
        stats.observe(status, session.body_bytes_sent(), total, php_error);
        if !self.access.enabled() {
            return;
        }
        let req = session.req_header();
        let instance = self.instance_of(ctx);
        let remote = session
            .client_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let rec = AccessRecord {
            ts: crate::logs::now_rfc3339(),
            instance,
            unit: ACCESS_UNIT,
            stream: ACCESS_UNIT,
            msg: format!("{} {} {status}", req.method, req.uri.path()),
            level: crate::logs::level::of_status(status),
            host: request_host(req).unwrap_or(""),
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            bytes: session.body_bytes_sent(),
            total_ms: ms(total),
            upstream_ms: ctx.upstream.map(ms),
            remote,
            proto: if session.is_http2() {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            },
            tls: is_tls(session),
            handler: ctx.handler,
        };
        let sink = ctx.site.as_ref().and_then(|s| s.access.as_deref());
        self.access.record(sink, &rec);
    }
}

/// The `Date` header value, formatted once per second per thread.
fn http_date() -> HeaderValue {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if let Ok(v) = HeaderValue::from_str(&text) {
                *c = (secs, v);
            }
        }
        c.1.clone()
    })
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The request's host: `:authority` (HTTP/2, absolute-form) or `Host`.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get("host").and_then(|v| v.to_str().ok()))
}

pub fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

impl Front {
    /// The name of the instance the request was routed to (`""` before routing).
    pub fn instance_of<'c>(&self, ctx: &'c Ctx) -> &'c str {
        ctx.site.as_ref().map_or("", |s| s.instance.as_str())
    }

    async fn handle(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        // `idle_timeout_sec`: between body reads, and before the next request on
        // this connection (pingora's defaults are 60 s each).
        let idle = self.limits.idle_timeout;
        session.set_read_timeout(Some(idle));
        session.set_keepalive(Some(idle.as_secs().max(1)));
        let host = request_host(session.req_header()).map(str::to_owned);
        let Some(host) = host else {
            // HTTP/1.1 requires Host; HTTP/1.0 clients get the default site.
            if session.req_header().version == pingora::http::Version::HTTP_10 {
                return self.route(session, ctx, "").await;
            }
            return self.respond_page(session, ctx, 400).await;
        };
        self.route(session, ctx, &host).await
    }

    async fn route(&self, session: &mut Session, ctx: &mut Ctx, host: &str) -> Result<()> {
        // One load of the snapshot, dropped at once (never held across an
        // await); the site's Arc, kept in ctx until the request is logged, is
        // what keeps a site removed meanwhile alive.
        let site = self.routing.load().route(host).cloned();
        let Some(site) = site else {
            return self.respond_page(session, ctx, 421).await;
        };
        ctx.site = Some(site.clone());
        let tls = is_tls(session);
        if site.has_cert && !tls {
            if let Some(port) = self.https_port {
                let name = super::vhost::normalize(host);
                let port = if port == 443 {
                    String::new()
                } else {
                    format!(":{port}")
                };
                let target = session
                    .req_header()
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let location = format!("https://{name}{port}{target}");
                ctx.handler = "redirect";
                return self.respond_redirect(session, ctx, 308, &location).await;
            }
        }
        let Some(web) = &site.site else {
            return self.respond_page(session, ctx, 503).await;
        };
        let req = session.req_header();
        let route = web.resolve(req.uri.path(), req.uri.query());
        match route {
            Route::Static { file, meta } => {
                ctx.handler = "static";
                statics::serve(self, session, ctx, &file, &meta).await
            }
            Route::Php {
                script_filename,
                script_name,
                path_info,
                document_uri,
            } => {
                ctx.handler = "php";
                let target = php::Target {
                    php: &site.php,
                    document_root: web.root(),
                    script_filename: &script_filename,
                    script_name: &script_name,
                    path_info: &path_info,
                    document_uri: &document_uri,
                    host,
                };
                php::serve(self, session, ctx, &target).await
            }
            Route::Redirect { location, status } => {
                ctx.handler = "redirect";
                self.respond_redirect(session, ctx, status, &location).await
            }
            Route::Deny => self.respond_page(session, ctx, 403).await,
            Route::NotFound => self.respond_page(session, ctx, 404).await,
            Route::BadRequest(_) => self.respond_page(session, ctx, 400).await,
        }
    }

    /// A response header with the headers every answer carries.
    pub fn response(&self, session: &Session, ctx: &Ctx, status: u16) -> Result<ResponseHeader> {
        self.response_head(
            ResponseHeader::build_no_case(status, Some(10))?,
            session,
            ctx,
        )
    }

    /// [`Self::response`] for headers whose case must survive as sent (PHP's:
    /// nginx passes `X-Powered-By` through as the script wrote it).
    pub fn response_keeping_case(
        &self,
        session: &Session,
        ctx: &Ctx,
        status: u16,
    ) -> Result<ResponseHeader> {
        self.response_head(ResponseHeader::build(status, Some(10))?, session, ctx)
    }

    fn response_head(
        &self,
        mut resp: ResponseHeader,
        session: &Session,
        ctx: &Ctx,
    ) -> Result<ResponseHeader> {
        resp.insert_header(header::SERVER, HeaderValue::from_static("applianced"))?;
        resp.insert_header(header::DATE, http_date())?;
        let has_cert = ctx.site.as_ref().is_some_and(|s| s.has_cert);
        if self.limits.hsts_max_age > 0 && has_cert && is_tls(session) {
            resp.insert_header(
                "Strict-Transport-Security",
                format!("max-age={}", self.limits.hsts_max_age),
            )?;
        }
        Ok(resp)
    }

    /// Write a whole small response.
    pub async fn respond_bytes(
        &self,
        session: &mut Session,
        mut resp: ResponseHeader,
        body: Bytes,
    ) -> Result<()> {
        let head_only = session.req_header().method == pingora::http::Method::HEAD;
        resp.insert_header("Content-Length", body.len().to_string())?;
        if head_only || body.is_empty() {
            session.write_response_header(Box::new(resp), true).await
        } else {
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(body), true).await
        }
    }

    /// One of the front end's own pages.
    pub async fn respond_page(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
    ) -> Result<()> {
        let mut resp = self.response(session, ctx, status)?;
        resp.insert_header("Content-Type", "text/html; charset=utf-8")?;
        resp.insert_header("Cache-Control", "no-store")?;
        if status == 405 {
            resp.insert_header("Allow", "GET, HEAD")?;
        }
        if matches!(status, 400 | 408 | 413 | 431) {
            resp.insert_header("Connection", "close")?;
            session.set_keepalive(None);
        }
        self.respond_bytes(session, resp, self.pages.get(status))
            .await
    }

    async fn respond_redirect(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        location: &str,
    ) -> Result<()> {
        let mut resp = self.response(session, ctx, status)?;
        resp.insert_header("Location", location)?;
        resp.insert_header("Content-Type", "text/plain; charset=utf-8")?;
        let body = Bytes::from(format!("Redirecting to {location}\n"));
        self.respond_bytes(session, resp, body).await
    }
}
