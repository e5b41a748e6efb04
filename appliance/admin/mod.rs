//! The admin listener: `/metrics` for Prometheus and the dashboard (`/`,
//! `assets/dashboard/index.html`, reading `/api/*`), on its own addresses
//! (`[admin] listen`), never on the public virtual hosts.
//!
//! Plain HTTP/1.1 through hyper: a scraper on the box or on the operator's
//! network, not the internet. Auth is `none` (refused at plan time unless
//! every address is loopback), a bearer token or basic auth. Credentials are
//! `ADMIN_TOKEN`, or `ADMIN_USER` and `ADMIN_PASSWORD`, from applianced's
//! environment or `DATA/secrets/admin.env` (0600), generated there on first
//! start when missing, so a network-facing listener is never open by
//! accident. They are compared in constant time.
//!
//! `api.rs` answers the dashboard's JSON (`/api/overview`, `/api/history`).
//!
//! Touches its listening sockets and `DATA/secrets/admin.env`.

mod api;

use crate::config::{AdminAuthConfig, AdminConfig};
use crate::layout::Layout;
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The dashboard: one static page that reads `/api/*`.
const DASHBOARD: &str = include_str!("../../assets/dashboard/index.html");

/// A client must send its request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin credentials {path}: {problem}")]
    Credentials { path: String, problem: String },
}

/// `[admin]`, checked.
#[derive(Debug, Clone, Default)]
pub struct AdminPlan {
    pub listen: Vec<SocketAddr>,
    pub auth: AdminAuthConfig,
    /// Between points of the dashboard's history, and how long it reaches back.
    pub history_interval: Duration,
    pub history_span: Duration,
}

/// Check `[admin]`: addresses parse, and no address off the machine is
/// served without auth. Errors are (key, problem).
pub fn plan(cfg: &AdminConfig) -> Result<AdminPlan, (String, String)> {
    let mut listen = Vec::new();
    for (i, a) in cfg.listen.iter().enumerate() {
        let addr: SocketAddr = a.parse().map_err(|_| {
            (
                format!("admin.listen[{i}]"),
                format!("`{a}` is not an IP:PORT address (e.g. 127.0.0.1:9180)"),
            )
        })?;
        if cfg.auth == AdminAuthConfig::None && !addr.ip().is_loopback() {
            return Err((
                format!("admin.listen[{i}]"),
                format!(
                    "`{a}` is reachable from the network and admin.auth is `none`; set admin.auth = \"bearer\" or \"basic\", or listen on 127.0.0.1"
                ),
            ));
        }
        listen.push(addr);
    }
    let interval = cfg.history_interval_sec.unwrap_or(30);
    if !(1..=3600).contains(&interval) {
        return Err((
            "admin.history_interval_sec".into(),
            format!("{interval} is outside 1..=3600"),
        ));
    }
    let hours = cfg.history_hours.unwrap_or(6);
    if !(1..=168).contains(&hours) {
        return Err((
            "admin.history_hours".into(),
            format!("{hours} is outside 1..=168"),
        ));
    }
    Ok(AdminPlan {
        listen,
        auth: cfg.auth,
        history_interval: Duration::from_secs(interval),
        history_span: Duration::from_secs(hours * 3600),
    })
}

/// Bind every admin address now, so a busy port is an error before any
/// unit starts. Empty when the admin listener is off.
pub fn bind(plan: &AdminPlan) -> Result<Vec<std::net::TcpListener>, AdminError> {
    plan.listen
        .iter()
        .map(|&addr| {
            let l = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| AdminError::Bind { addr, source })?;
            Ok(l)
        })
        .collect()
}

/// What a request must carry.
#[derive(Clone)]
pub enum Credentials {
    None,
    /// The expected `Authorization` header value.
    Header(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "Credentials::None",
            Credentials::Header(_) => "Credentials::Header(<redacted>)",
        })
    }
}

/// The credentials for `auth`: from the environment, else the secrets file;
/// missing ones are generated into the file.
pub fn credentials(auth: AdminAuthConfig, layout: &Layout) -> Result<Credentials, AdminError> {
    use base64::Engine;
    if auth == AdminAuthConfig::None {
        return Ok(Credentials::None);
    }
    let path = layout.secrets_dir().join("admin.env");
    let err = |problem: String| AdminError::Credentials {
        path: path.display().to_string(),
        problem,
    };
    let mut file: BTreeMap<String, String> = if path.exists() {
        crate::secrets::read(&path).map_err(|e| err(e.to_string()))?
    } else {
        BTreeMap::new()
    };
    let mut changed = false;
    let mut get = |key: &str, generate: &dyn Fn() -> String| -> String {
        if let Some(v) = std::env::var(key).ok().filter(|v| !v.is_empty()) {
            return v;
        }
        file.entry(key.to_string())
            .or_insert_with(|| {
                changed = true;
                generate()
            })
            .clone()
    };
    let secret = || {
        use rand::distr::{Alphanumeric, SampleString};
        Alphanumeric.sample_string(&mut rand::rng(), 40)
    };
    let header = match auth {
        AdminAuthConfig::Bearer => format!("Bearer {}", get("ADMIN_TOKEN", &secret)),
        AdminAuthConfig::Basic => {
            let user = get("ADMIN_USER", &|| "admin".to_string());
            let password = get("ADMIN_PASSWORD", &secret);
            let pair = format!("{user}:{password}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        }
        AdminAuthConfig::None => unreachable!("handled above"),
    };
    if changed {
        let body: String = file.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::create_dir_all(layout.secrets_dir()).map_err(|e| err(e.to_string()))?;
        crate::secrets::write_atomic(
            &path,
            &format!("# Credentials of the admin listener (/metrics).\n{body}"),
        )
        .map_err(|e| err(e.to_string()))?;
        tracing::warn!(file = %path.display(), "generated admin listener credentials");
    }
    Ok(Credentials::Header(header))
}

/// The admin service.
pub struct Admin {
    pub metrics: Metrics,
    pub credentials: Credentials,
}

impl Admin {
    /// Serve every listener until `shutdown` turns true.
    pub fn start(
        self: Arc<Self>,
        listeners: Vec<std::net::TcpListener>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        for l in listeners {
            let l = tokio::net::TcpListener::from_std(l)?;
            if let Ok(a) = l.local_addr() {
                tracing::info!(addr = %a, "admin listener: /metrics");
            }
            tokio::spawn(self.clone().accept(l, shutdown.clone()));
        }
        Ok(())
    }

    async fn accept(
        self: Arc<Self>,
        l: tokio::net::TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let accepted = tokio::select! {
                r = l.accept() => Some(r),
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let stream = match accepted {
                None => return,
                Some(Ok((stream, _))) => stream,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let svc = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, std::convert::Infallible>(me.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(io, svc);
                let _ = conn.await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        // With bearer auth, the dashboard's page (no data in it) loads
        // without the token; its API calls carry the token from the URL
        // fragment. Basic auth covers the page too (the browser asks once).
        let shell = req.uri().path() == "/"
            && matches!(&self.credentials, Credentials::Header(h) if h.starts_with("Bearer"));
        if !shell && !self.authorized(&req) {
            let scheme = match self.credentials {
                Credentials::Header(ref h) if h.starts_with("Basic") => "Basic",
                _ => "Bearer",
            };
            let mut r = text(StatusCode::UNAUTHORIZED, "authorization required\n");
            if let Ok(v) = header::HeaderValue::from_str(&format!("{scheme} realm=\"applianced\""))
            {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return r;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match req.uri().path() {
            "/metrics" => {
                let openmetrics = req.headers().get_all(header::ACCEPT).iter().any(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.contains("application/openmetrics-text"))
                });
                let families = self.metrics.gather().await;
                let (body, kind) = if openmetrics {
                    (
                        families.openmetrics(),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                } else {
                    (
                        families.classic(),
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                };
                typed(StatusCode::OK, Bytes::from(body), kind)
            }
            "/api/overview" => json(api::overview(&self.metrics).await),
            "/api/history" => json(api::history(&self.metrics)),
            "/" => typed(
                StatusCode::OK,
                Bytes::from_static(DASHBOARD.as_bytes()),
                "text/html; charset=utf-8",
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        match &self.credentials {
            Credentials::None => true,
            Credentials::Header(want) => req
                .headers()
                .get(header::AUTHORIZATION)
                .is_some_and(|got| constant_time_eq(got.as_bytes(), want.as_bytes())),
        }
    }
}

/// `body` with its status and Content-Type.
fn typed(status: StatusCode, body: Bytes, kind: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    r
}

fn json(v: serde_json::Value) -> Response<Full<Bytes>> {
    typed(
        StatusCode::OK,
        Bytes::from(v.to_string()),
        "application/json",
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    typed(
        status,
        Bytes::from_static(body.as_bytes()),
        "text/plain; charset=utf-8",
    )
}

/// Equal bytes, in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(listen: &[&str], auth: AdminAuthConfig) -> AdminConfig {
        AdminConfig {
            listen: listen.iter().map(|s| s.to_string()).collect(),
            auth,
            history_interval_sec: None,
            history_hours: None,
        }
    }

    #[test]
    fn a_network_facing_listener_without_auth_is_refused() {
        let (key, problem) = plan(&cfg(
            &["127.0.0.1:9180", "0.0.0.0:9180"],
            AdminAuthConfig::None,
        ))
        .unwrap_err();
        assert_eq!(key, "admin.listen[1]");
        assert!(problem.contains("admin.auth"), "{problem}");
        assert!(plan(&cfg(&["0.0.0.0:9180"], AdminAuthConfig::Bearer)).is_ok());
        assert!(plan(&cfg(&["[::1]:9180"], AdminAuthConfig::None)).is_ok());
    }

    #[test]
    fn a_bad_address_names_its_key() {
        let (key, problem) = plan(&cfg(&["localhost"], AdminAuthConfig::None)).unwrap_err();
        assert_eq!(key, "admin.listen[0]");
        assert!(problem.contains("IP:PORT"), "{problem}");
    }

    #[test]
    fn missing_credentials_are_generated_once_into_the_secrets_file() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_path_buf());
        let Credentials::Header(first) = credentials(AdminAuthConfig::Bearer, &layout).unwrap()
        else {
            panic!("bearer auth has a header")
        };
        assert!(first.starts_with("Bearer ") && first.len() > 30, "{first}");
        let Credentials::Header(again) = credentials(AdminAuthConfig::Bearer, &layout).unwrap()
        else {
            panic!("bearer auth has a header")
        };
        assert_eq!(first, again);
        let file = std::fs::read_to_string(layout.secrets_dir().join("admin.env")).unwrap();
        assert!(file.contains("ADMIN_TOKEN="), "{file}");
    }

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abc", b"Bearer abd"));
        assert!(!constant_time_eq(b"Bearer abc", b"Bearer abcd"));
    }
}
