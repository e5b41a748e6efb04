//! The front-end tests' appliance: one instance `t` serving the
//! `tests/fixtures/front-app` fixture with php-fpm only, reached as
//! `site.test` (and `*.site.test`).

use super::http::{Resp, curl};
use super::*;
use std::path::Path;
use std::time::Duration;

/// One instance `t` serving `tests/fixtures/front-app` with php-fpm only.
pub fn front_config(app: &Path, http: &str, instance: &str) -> String {
    format!(
        r#"
[http]
{http}

[[instance]]
name = "t"
app_dir = "{}"
domains = ["site.test", "*.site.test"]
{instance}
{PHP_FPM_ONLY}"#,
        app.display()
    )
}

/// Start an appliance serving the front-app fixture; waits for php-fpm.
pub fn serve(http: &str, instance: &str) -> Appliance {
    require_programs(&["php-fpm8.2", "curl"]);
    let mut a = Appliance::new(None);
    let app = a.fixture_app("front-app");
    let cfg = a.dir.path().join("appliance.toml");
    std::fs::write(&cfg, front_config(&app, http, instance)).unwrap();
    a.config = Some(cfg);
    a.start();
    a.wait_all_ready(Duration::from_secs(60));
    a
}

impl Appliance {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }
    /// curl against the plain listener with `Host: site.test`.
    pub fn get(&self, path: &str, extra: &[&str]) -> Resp {
        let url = self.url(path);
        let mut args = vec!["-H", "Host: site.test", "--path-as-is"];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }
}
