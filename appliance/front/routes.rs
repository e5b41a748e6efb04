//! The front end's plan: listeners, limits, and one [`SitePlan`] per instance,
//! checked before anything starts.
//!
//! Built by [`crate::plan::build`] from `[http]`, each instance's `domains`,
//! `tls` and `[instance.web]`. Every problem is reported as a config error that
//! names the key: an address that does not parse, a domain that is invalid or
//! served twice, an unknown default instance, an unreadable or mismatched
//! certificate. It reads the certificate files (to refuse bad ones early).
//! [`site_plan`] also builds the plan of an instance added at runtime, for
//! `FrontEnd::add_site` (which checks its domains against the sites served).

use super::tls;
use super::vhost::VhostTable;
use crate::config::{HttpConfig, InstanceConfig, PhpModeConfig, TlsCertConfig};
use crate::layout::Layout;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Limits and timeouts of the front end, from `[http]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub fastcgi_connect_timeout: Duration,
    pub fastcgi_read_timeout: Duration,
    pub grace_period: Duration,
    pub hsts_max_age: u64,
}

/// How one instance's site is served.
#[derive(Debug, Clone)]
pub struct SitePlan {
    pub instance: String,
    /// The host names it answers (exact or `*.` wildcards), as configured.
    pub domains: Vec<String>,
    /// The web root: the app's `public/`.
    pub public_dir: PathBuf,
    pub php_mode: PhpModeConfig,
    pub fastcgi_socket: PathBuf,
    /// The unit that serves `fastcgi_socket` (the shipped `php-fpm`), whose
    /// start the front end holds PHP requests for; `None` for a php-fpm of
    /// the operator's own (`web.fastcgi_socket`).
    pub php_unit: Option<String>,
    /// Requests in flight to php-fpm and kept connections (see
    /// [`crate::front::fastcgi::pool`]); 0: a fresh connection per request.
    pub fastcgi_pool: usize,
    pub certs: Vec<TlsCertConfig>,
    /// `DATA/logs/INSTANCE/access.log`
    pub access_log: PathBuf,
}

#[derive(Debug, Clone)]
pub struct FrontPlan {
    pub enabled: bool,
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    /// Host -> site index, the default instance included: the boot-time
    /// table, used for TLS (SNI -> certificate). Requests are routed by the
    /// front end's own table, rebuilt from the sites as they come and go.
    pub vhosts: VhostTable,
    /// Indexed like the plan's instances.
    pub sites: Vec<SitePlan>,
    /// `http.default_instance`: answers hosts no instance names, while it is
    /// served.
    pub default_instance: Option<String>,
    pub limits: Limits,
    pub access_log: bool,
    /// Capacity of the small static file cache, in bytes (0: none).
    pub static_cache_bytes: usize,
}

impl FrontPlan {
    pub fn has_tls(&self) -> bool {
        self.sites.iter().any(|s| !s.certs.is_empty())
    }
}

/// `(key, problem)`, turned into a [`crate::config::ConfigError`] by the caller.
pub type KeyedProblem = (String, String);

/// Check `[http]` and the instances' web settings; `app_dirs` are the resolved
/// app dirs of the instances, in order.
pub fn build(
    http: &HttpConfig,
    instances: &[InstanceConfig],
    app_dirs: &[PathBuf],
    layout: &Layout,
) -> Result<FrontPlan, KeyedProblem> {
    let addrs = |key: &str, list: &[String]| -> Result<Vec<SocketAddr>, KeyedProblem> {
        list.iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<SocketAddr>().map_err(|_| {
                    (
                        format!("http.{key}[{i}]"),
                        format!(
                            "`{a}` is not an IP:PORT address (e.g. `0.0.0.0:80` or `[::]:443`)"
                        ),
                    )
                })
            })
            .collect()
    };
    let listen = addrs("listen", &http.listen)?;
    let tls_listen = addrs("tls_listen", &http.tls_listen)?;
    for (key, v) in [
        ("header_timeout_sec", http.header_timeout_sec),
        ("idle_timeout_sec", http.idle_timeout_sec),
        ("fastcgi_read_timeout_sec", http.fastcgi_read_timeout_sec),
        ("grace_period_sec", http.grace_period_sec),
    ] {
        if !(v.is_finite() && v > 0.0 && v < 1e7) {
            return Err((
                format!("http.{key}"),
                format!("must be a positive number of seconds, got {v}"),
            ));
        }
    }
    if http.max_header_bytes < 1024 {
        return Err((
            "http.max_header_bytes".into(),
            "must be at least 1024".into(),
        ));
    }
    let owners: Vec<String> = instances.iter().map(|i| i.name.clone()).collect();
    let mut vhosts = VhostTable::default();
    let mut sites = Vec::new();
    for (i, inst) in instances.iter().enumerate() {
        for (d, name) in inst.domains.iter().enumerate() {
            vhosts
                .add(name, i, &owners)
                .map_err(|e| (format!("instance[{i}].domains[{d}]"), e.to_string()))?;
        }
        sites.push(site_plan(i, inst, &app_dirs[i], layout)?);
    }
    let default_site = match &http.default_instance {
        Some(name) => Some(owners.iter().position(|o| o == name).ok_or_else(|| {
            (
                "http.default_instance".to_string(),
                format!(
                    "no instance is named `{name}`; instances: {}",
                    owners.join(", ")
                ),
            )
        })?),
        None => None,
    };
    if let Some(d) = default_site {
        vhosts.set_default(d);
    }
    let plan = FrontPlan {
        enabled: http.enabled,
        listen,
        tls_listen,
        vhosts,
        sites,
        default_instance: http.default_instance.clone(),
        limits: Limits {
            max_body_bytes: http.max_body_bytes,
            max_header_bytes: http.max_header_bytes,
            header_timeout: Duration::from_secs_f64(http.header_timeout_sec),
            idle_timeout: Duration::from_secs_f64(http.idle_timeout_sec),
            fastcgi_connect_timeout: Duration::from_secs(5),
            fastcgi_read_timeout: Duration::from_secs_f64(http.fastcgi_read_timeout_sec),
            grace_period: Duration::from_secs_f64(http.grace_period_sec),
            hsts_max_age: http.hsts_max_age_sec,
        },
        access_log: http.access_log,
        static_cache_bytes: http.static_cache_mib as usize * 1024 * 1024,
    };
    if plan.enabled && plan.has_tls() && plan.tls_listen.is_empty() {
        return Err((
            "http.tls_listen".into(),
            "an instance has `tls` certificates but no HTTPS listen address is configured".into(),
        ));
    }
    if plan.enabled && plan.listen.is_empty() && plan.tls_listen.is_empty() {
        return Err((
            "http.listen".into(),
            "no listen address; set `http.enabled = false` to run without a front end".into(),
        ));
    }
    Ok(plan)
}

/// One instance's [`SitePlan`], checked: its certificate files load and match
/// their keys, `php_children` is in range. `index` names the instance in the
/// keys of errors (`instance[INDEX]...`). Its `domains` are checked against the
/// other instances' by [`build`] (at boot) or by the front end's `add_site`.
pub fn site_plan(
    index: usize,
    inst: &InstanceConfig,
    app_dir: &Path,
    layout: &Layout,
) -> Result<SitePlan, KeyedProblem> {
    let i = index;
    for (c, pair) in inst.tls.iter().enumerate() {
        tls::load_pair(pair).map_err(|e| {
            let field = match &e {
                tls::TlsError::Read { path, .. } if *path == pair.cert => "cert",
                tls::TlsError::NoCert(_) => "cert",
                _ => "key",
            };
            (format!("instance[{i}].tls[{c}].{field}"), e.to_string())
        })?;
    }
    if !(1..=1024).contains(&inst.web.php_children) {
        return Err((
            format!("instance[{i}].web.php_children"),
            format!("must be 1 to 1024, got {}", inst.web.php_children),
        ));
    }
    let run_dir = layout.instance_run_dir(&inst.name);
    Ok(SitePlan {
        instance: inst.name.clone(),
        domains: inst.domains.clone(),
        public_dir: app_dir.join("public"),
        php_mode: inst.web.php_mode,
        fastcgi_socket: inst
            .web
            .fastcgi_socket
            .clone()
            .unwrap_or_else(|| run_dir.join("php-fpm.sock")),
        php_unit: inst
            .web
            .fastcgi_socket
            .is_none()
            .then(|| "php-fpm".to_string()),
        fastcgi_pool: match inst.web.fastcgi_keepalive {
            true => inst.web.php_children as usize,
            false => 0,
        },
        certs: inst.tls.clone(),
        access_log: layout.instance_log_dir(&inst.name).join("access.log"),
    })
}
