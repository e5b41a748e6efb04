//! The front end's TLS: certificates chosen by SNI (wildcards included) and
//! verified by a real client, HTTP/2 through ALPN, HTTP -> HTTPS redirects with
//! HSTS, certificate reload without a restart, and graceful shutdown.

mod common;
use common::http::curl;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A CA and a leaf it signs for `names`, made with the real `openssl`.
/// Returns (ca.pem, cert.pem, key.pem).
fn issue(dir: &Path, label: &str, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{label}-{f}"));
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let script = format!(
        "set -e
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
          -subj '/CN={label} test CA' -keyout {cakey} -out {ca} 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
          -subj '/CN={cn}' -keyout {key} -out {csr} 2>/dev/null
        printf 'subjectAltName={san}\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > {ext}
        openssl x509 -req -in {csr} -CA {ca} -CAkey {cakey} -CAcreateserial -days 2 \
          -extfile {ext} -out {cert} 2>/dev/null",
        cakey = p("ca.key").display(),
        ca = p("ca.pem").display(),
        key = p("key.pem").display(),
        csr = p("csr").display(),
        ext = p("ext").display(),
        cert = p("cert.pem").display(),
        cn = names[0],
    );
    let (code, _) = sh(&script);
    assert_eq!(code, 0, "openssl failed for {label}");
    for f in ["key.pem", "cert.pem"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

struct Tls {
    a: Appliance,
    /// The admin listener (`/metrics`, no auth on loopback).
    admin_port: u16,
    site_ca: PathBuf,
    other_ca: PathBuf,
    site_cert: PathBuf,
    site_key: PathBuf,
}

/// Two instances with their own certificates: `t` (site.test, *.site.test)
/// and `u` (other.test), each from its own CA.
fn serve_tls() -> Tls {
    require_programs(&["php-fpm8.2", "curl", "openssl"]);
    let mut a = Appliance::new(None);
    let app = a.fixture_app("front-app");
    let certs = a.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (site_ca, site_cert, site_key) = issue(&certs, "site", &["site.test", "*.site.test"]);
    let (other_ca, other_cert, other_key) = issue(&certs, "other", &["other.test"]);
    let units = PHP_FPM_ONLY;
    let admin_port = free_port();
    let cfg = format!(
        r#"
[http]
grace_period_sec = 5

[admin]
listen = ["127.0.0.1:{admin_port}"]

[[instance]]
name = "t"
app_dir = "{app}"
domains = ["site.test", "*.site.test"]
tls = [{{ cert = "{sc}", key = "{sk}" }}]
{units}
[[instance]]
name = "u"
app_dir = "{app}"
domains = ["other.test"]
tls = [{{ cert = "{oc}", key = "{ok}" }}]
{units}"#,
        app = app.display(),
        sc = site_cert.display(),
        sk = site_key.display(),
        oc = other_cert.display(),
        ok = other_key.display(),
    );
    std::fs::write(a.dir.path().join("appliance.toml"), cfg).unwrap();
    a.config = Some(a.dir.path().join("appliance.toml"));
    a.start();
    a.wait_all_ready(Duration::from_secs(60));
    Tls {
        a,
        admin_port,
        site_ca,
        other_ca,
        site_cert,
        site_key,
    }
}

impl Tls {
    /// curl over HTTPS to `host`, verifying against `ca`.
    fn get(&self, host: &str, ca: &Path, path: &str, extra: &[&str]) -> common::http::Resp {
        let resolve = format!("{host}:{}:127.0.0.1", self.a.https_port);
        let url = format!("https://{host}:{}{path}", self.a.https_port);
        let ca = ca.display().to_string();
        let mut args = vec!["--resolve", &resolve, "--cacert", &ca];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }

    /// Does a verified handshake with `ca` succeed for `host`?
    fn verifies(&self, host: &str, ca: &Path) -> bool {
        let (code, _) = sh(&format!(
            "curl -s -o /dev/null --resolve {host}:{port}:127.0.0.1 --cacert {ca} https://{host}:{port}/hello.txt",
            port = self.a.https_port,
            ca = ca.display()
        ));
        code == 0
    }
}

#[test]
fn sni_picks_each_instances_certificate_and_a_real_client_verifies_it() {
    let t = serve_tls();
    let r = t.get("site.test", &t.site_ca, "/hello.txt", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "plain text file\n"));
    // The wildcard certificate covers tenants.
    let r = t.get("tenant7.site.test", &t.site_ca, "/echo", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["server"]["HTTPS"], "on");
    assert_eq!(r.json()["server"]["SERVER_NAME"], "tenant7.site.test");
    // other.test gets its own certificate: only its CA verifies it.
    assert!(t.verifies("other.test", &t.other_ca));
    assert!(
        !t.verifies("other.test", &t.site_ca),
        "site's cert served for other.test"
    );
    assert!(
        !t.verifies("site.test", &t.other_ca),
        "other's cert served for site.test"
    );
    // TLS 1.2 and 1.3 only.
    let (code, _) = sh(&format!(
        "curl -s -o /dev/null --tls-max 1.1 --resolve site.test:{p}:127.0.0.1 --cacert {ca} https://site.test:{p}/",
        p = t.a.https_port,
        ca = t.site_ca.display()
    ));
    assert_ne!(code, 0, "a TLS 1.1 handshake succeeded");
}

#[test]
fn http2_is_negotiated_through_alpn_and_serves_php_and_static_files() {
    let t = serve_tls();
    let r = t.get("site.test", &t.site_ca, "/css/app.css", &["--http2"]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"));
    assert_eq!(r.body.len(), 4096);
    let r = t.get(
        "site.test",
        &t.site_ca,
        "/echo?x=1",
        &["--http2", "--data", "a=b"],
    );
    assert_eq!((r.status, r.version.as_str()), (200, "2"));
    let j = r.json();
    assert_eq!(j["post"]["a"], "b");
    assert_eq!(j["get"]["x"], "1");
    assert_eq!(j["server"]["SERVER_PROTOCOL"], "HTTP/2.0");
    // A chunk-less HTTP/2 upload of unknown length still reaches PHP whole.
    let r = t.get(
        "site.test",
        &t.site_ca,
        "/body",
        &[
            "--http2",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            "@/etc/services",
        ],
    );
    let expect = std::fs::metadata("/etc/services").unwrap().len();
    assert!(r.text().starts_with(&format!("{expect} ")), "{}", r.text());
    // HTTP/1.1 is still offered.
    let r = t.get("site.test", &t.site_ca, "/hello.txt", &["--http1.1"]);
    assert_eq!(r.version, "1.1");
}

#[test]
fn plain_http_redirects_to_https_with_308_and_https_answers_carry_hsts() {
    let t = serve_tls();
    let url = format!("http://127.0.0.1:{}/echo?q=1", t.a.http_port);
    let r = curl(&["-H", "Host: Tenant.Site.Test", &url]);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").unwrap(),
        format!("https://tenant.site.test:{}/echo?q=1", t.a.https_port)
    );
    let r = t.get("site.test", &t.site_ca, "/hello.txt", &[]);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let t = serve_tls();
    assert!(t.verifies("site.test", &t.site_ca));
    // Renew from a new CA, replacing the files in place (as certbot's deploy does).
    let renew_dir = t.a.dir.path().join("renew");
    std::fs::create_dir_all(&renew_dir).unwrap();
    let (new_ca, new_cert, new_key) = issue(&renew_dir, "renewed", &["site.test", "*.site.test"]);
    std::fs::copy(&new_key, &t.site_key).unwrap();
    std::fs::copy(&new_cert, &t.site_cert).unwrap();
    let t0 = Instant::now();
    while !t.verifies("site.test", &new_ca) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "renewed certificate not picked up\n{}",
            t.a.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!t.verifies("site.test", &t.site_ca));
    // A broken file is refused and the current certificate stays.
    std::fs::write(&t.site_cert, "not a certificate").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(t.verifies("site.test", &new_ca));
}

#[test]
fn shutdown_lets_an_in_flight_request_finish_and_then_exits_promptly() {
    let mut t = serve_tls();
    let url = format!("https://site.test:{}/slow?s=2", t.a.https_port);
    let resolve = format!("site.test:{}:127.0.0.1", t.a.https_port);
    let ca = t.site_ca.display().to_string();
    let slow = std::thread::spawn(move || curl(&["--resolve", &resolve, "--cacert", &ca, &url]));
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    let code = t.a.terminate(Duration::from_secs(30));
    let took = t0.elapsed();
    assert_eq!(code, 0);
    let r = slow.join().unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "done"),
        "in-flight request cut off"
    );
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
}

#[test]
fn each_certificates_expiry_is_published_in_the_metrics() {
    let t = serve_tls();
    let url = format!("http://127.0.0.1:{}/metrics", t.admin_port);
    let text = common::http::curl(&[&url]).text();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for app in ["t", "u"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "applianced_tls_certificate_expiry_timestamp_seconds{{app=\"{app}\""
                ))
            })
            .unwrap_or_else(|| panic!("no expiry for {app}:\n{text}"));
        let expiry: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        // `openssl x509 -days 2`: two days from now, give or take the test.
        let days = (expiry - now) / 86_400.0;
        assert!((1.9..=2.01).contains(&days), "{line}: {days} days");
    }
    assert!(
        text.contains(&format!("file=\"{}\"", t.site_cert.display())),
        "{text}"
    );
}
