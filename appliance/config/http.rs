//! The front end's config schema: the global `[http]` table and each instance's
//! `[instance.web]` table and `tls` certificate list.
//!
//! Parsing and type checks only; [`crate::front::routes`] validates names,
//! addresses and certificate files and builds the routing table.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[http]`: listeners and limits shared by every instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `false` runs no front end at all (the units still run).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Plain HTTP listen addresses, `IP:PORT`. The image's default is port 80.
    #[serde(default = "HttpConfig::default_listen")]
    pub listen: Vec<String>,
    /// HTTPS listen addresses; bound only when some instance has a certificate.
    #[serde(default = "HttpConfig::default_tls_listen")]
    pub tls_listen: Vec<String>,
    /// Instance that answers a Host matching no domain. Unset: 421 Misdirected Request.
    #[serde(default)]
    pub default_instance: Option<String>,
    /// Largest request body accepted (uploads); larger gets 413.
    #[serde(default = "HttpConfig::default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Largest request head (request line plus headers); larger gets 431.
    #[serde(default = "HttpConfig::default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// A client must send its whole request head within this time (slowloris).
    #[serde(default = "HttpConfig::default_header_timeout_sec")]
    pub header_timeout_sec: f64,
    /// Idle time allowed between reads of a request body, and between
    /// requests on a kept-alive connection.
    #[serde(default = "HttpConfig::default_idle_timeout_sec")]
    pub idle_timeout_sec: f64,
    /// How long php-fpm may stay silent while producing a response (nginx's
    /// `fastcgi_read_timeout`); then 504.
    #[serde(default = "HttpConfig::default_fastcgi_read_timeout_sec")]
    pub fastcgi_read_timeout_sec: f64,
    /// On shutdown, in-flight requests get this long to finish.
    #[serde(default = "HttpConfig::default_grace_period_sec")]
    pub grace_period_sec: f64,
    /// `Strict-Transport-Security: max-age` for hosts with a certificate; 0 sends none.
    #[serde(default = "HttpConfig::default_hsts_max_age_sec")]
    pub hsts_max_age_sec: u64,
    /// Write one JSON line per request to `DATA/logs/INSTANCE/access.log`.
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Memory for small static files (64 KiB or less) kept ready to send,
    /// in MiB; each is revalidated with one `lstat` per request. 0: none.
    #[serde(default = "HttpConfig::default_static_cache_mib")]
    pub static_cache_mib: u32,
}

fn yes() -> bool {
    true
}

impl HttpConfig {
    fn default_listen() -> Vec<String> {
        vec!["0.0.0.0:80".into()]
    }
    fn default_tls_listen() -> Vec<String> {
        vec!["0.0.0.0:443".into()]
    }
    fn default_max_body_bytes() -> u64 {
        100 * 1024 * 1024
    }
    fn default_max_header_bytes() -> usize {
        64 * 1024
    }
    fn default_header_timeout_sec() -> f64 {
        10.0
    }
    fn default_idle_timeout_sec() -> f64 {
        60.0
    }
    fn default_fastcgi_read_timeout_sec() -> f64 {
        3600.0
    }
    fn default_grace_period_sec() -> f64 {
        5.0
    }
    fn default_hsts_max_age_sec() -> u64 {
        31_536_000
    }
    fn default_static_cache_mib() -> u32 {
        16
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: Self::default_listen(),
            tls_listen: Self::default_tls_listen(),
            default_instance: None,
            max_body_bytes: Self::default_max_body_bytes(),
            max_header_bytes: Self::default_max_header_bytes(),
            header_timeout_sec: Self::default_header_timeout_sec(),
            idle_timeout_sec: Self::default_idle_timeout_sec(),
            fastcgi_read_timeout_sec: Self::default_fastcgi_read_timeout_sec(),
            grace_period_sec: Self::default_grace_period_sec(),
            hsts_max_age_sec: Self::default_hsts_max_age_sec(),
            access_log: true,
            static_cache_mib: Self::default_static_cache_mib(),
        }
    }
}

/// `[instance.web]`: how the instance's site is served.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// `front-controller` (default) runs only `public/index.php`;
    /// `any-script` runs any existing `.php` file, as the classic nginx site does.
    #[serde(default)]
    pub php_mode: PhpModeConfig,
    /// php-fpm's socket. Default: the shipped php-fpm unit's, `RUN_DIR/php-fpm.sock`.
    #[serde(default)]
    pub fastcgi_socket: Option<PathBuf>,
    /// Children of the instance's php-fpm pool (`pm = static`,
    /// `pm.max_children`). The front end sends at most this many PHP requests
    /// at once (more wait in arrival order) and keeps their connections open
    /// for the next ones. With your own `fastcgi_socket`, set it to that
    /// pool's `pm.max_children`.
    #[serde(default = "WebConfig::default_php_children")]
    pub php_children: u32,
    /// php-fpm's `pm.max_requests`: a child is replaced after serving this
    /// many requests, a guard against memory leaks in extensions or app code.
    /// `0` (default, as php-fpm's own default and the seed's php-fpm image)
    /// never replaces one. Under a steady load of alike requests every child
    /// reaches the count at about the same moment and the pool is short of
    /// children until php-fpm has forked their replacements: set it only to
    /// contain a leak you have seen.
    #[serde(default)]
    pub php_max_requests: u32,
    /// The page php-fpm's warm-up asks the app for (through
    /// `public/index.php`) each time php-fpm starts, before it counts as
    /// ready: the app is compiled once, alone, before clients and queue
    /// workers arrive. `"/"` by default; a health page that only reads is
    /// the best choice; `""` turns the warm-up off.
    #[serde(default = "WebConfig::default_warm_up")]
    pub warm_up: String,
    /// A warm-up page that reads neither the database nor Redis (Laravel's
    /// `/up`), requested as soon as php-fpm answers, while MariaDB and Redis
    /// are still starting (or recovering); `warm_up` then follows once they
    /// are ready, and php-fpm counts as ready after it. The app's framework
    /// is then compiled during MariaDB's start, and its database path
    /// before clients and the queue workers arrive. `true` (the older form)
    /// moves `warm_up` itself before them; `false`, the default, asks no
    /// early page.
    #[serde(default)]
    pub warm_up_early: WarmUpEarly,
    /// Reuse php-fpm connections (FastCGI keep-conn). `false`: a fresh
    /// connection per request and no limit of ours, as nginx does by default.
    #[serde(default = "yes")]
    pub fastcgi_keepalive: bool,
}

/// `[instance.web] warm_up_early`: a page, or the older flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a page starting with `/` (like \"/up\"), or true / false"
)]
pub enum WarmUpEarly {
    /// `true`: `warm_up` runs early instead of after the backends.
    Flag(bool),
    /// This page runs early, and `warm_up` after the backends.
    Page(String),
}

impl Default for WarmUpEarly {
    fn default() -> Self {
        WarmUpEarly::Flag(false)
    }
}

impl WebConfig {
    /// The warm-up pages as (early, once the backends are ready); `""` is
    /// none.
    pub fn warm_up_pages(&self) -> (String, String) {
        match &self.warm_up_early {
            WarmUpEarly::Flag(false) => (String::new(), self.warm_up.clone()),
            WarmUpEarly::Flag(true) => (self.warm_up.clone(), String::new()),
            WarmUpEarly::Page(p) => (p.clone(), self.warm_up.clone()),
        }
    }

    /// Most Facturador-sized boxes have 2 cores; 8 children keep them busy
    /// while some requests wait on MariaDB.
    pub const DEFAULT_PHP_CHILDREN: u32 = 8;

    fn default_php_children() -> u32 {
        Self::DEFAULT_PHP_CHILDREN
    }

    fn default_warm_up() -> String {
        "/".into()
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            php_mode: PhpModeConfig::default(),
            fastcgi_socket: None,
            php_children: Self::DEFAULT_PHP_CHILDREN,
            php_max_requests: 0,
            warm_up: Self::default_warm_up(),
            warm_up_early: WarmUpEarly::default(),
            fastcgi_keepalive: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhpModeConfig {
    #[default]
    FrontController,
    AnyScript,
}

/// One certificate of an instance: a PEM chain and its PEM private key. The
/// certificate is offered for every name of the instance it covers (SANs,
/// wildcards included).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(toml_text: &str) -> (String, String) {
        toml::from_str::<WebConfig>(toml_text)
            .unwrap()
            .warm_up_pages()
    }

    #[test]
    fn warm_up_early_is_a_page_of_its_own_or_the_older_flag_that_moves_warm_up() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(pages(""), s("", "/"));
        assert_eq!(pages("warm_up = \"/health\""), s("", "/health"));
        assert_eq!(
            pages("warm_up = \"/health\"\nwarm_up_early = \"/up\""),
            s("/up", "/health")
        );
        assert_eq!(
            pages("warm_up = \"/up\"\nwarm_up_early = true"),
            s("/up", "")
        );
        assert_eq!(pages("warm_up_early = false"), s("", "/"));
    }
}
