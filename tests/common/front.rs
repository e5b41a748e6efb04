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

/// The admin listener on `port` (`admin`: more `[admin]` lines) and one
/// instance `name` serving the front-app fixture as `site.test`, with php-fpm
/// only; waits until every unit is ready.
pub fn serve_with_admin(port: u16, admin: &str, name: &str) -> Appliance {
    require_programs(&["php-fpm8.2", "curl"]);
    let mut a = Appliance::new(None);
    let app = a.fixture_app("front-app");
    let cfg = a.dir.path().join("appliance.toml");
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = [\"127.0.0.1:{port}\"]\n{admin}\n\
             [[instance]]\nname = \"{name}\"\napp_dir = \"{}\"\ndomains = [\"site.test\"]\n{PHP_FPM_ONLY}",
            app.display()
        ),
    )
    .unwrap();
    a.config = Some(cfg);
    a.start();
    a.wait_all_ready(Duration::from_secs(60));
    a
}

impl Appliance {
    /// The bearer token applianced generated for the admin listener.
    pub fn admin_token(&self) -> String {
        let env = std::fs::read_to_string(self.data.join("secrets/admin.env")).expect("admin.env");
        env.lines()
            .find_map(|l| l.strip_prefix("ADMIN_TOKEN="))
            .expect("ADMIN_TOKEN in admin.env")
            .to_string()
    }

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
