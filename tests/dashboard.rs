//! The dashboard, rendered by a real browser: headless Chromium (Debian's
//! `chromium`) loads the admin listener's page, runs its script against the
//! JSON API, and the DOM it leaves must show the instance, its units and a
//! graph with points; a screenshot is taken too.

mod common;
use common::front::serve_with_admin;
use common::http::curl;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Chromium's flags for a closed network, as root, no GPU (see the
/// machine notes: without the background-networking flags it keeps trying
/// to reach Google).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // Let the page's fetches and rendering finish before the DOM is dumped.
    "--virtual-time-budget=8000",
];

#[test]
fn headless_chromium_renders_the_instances_units_a_crash_and_a_request_graph() {
    require_programs(&["php-fpm8.2", "curl", "chromium"]);
    let port = free_port();
    let a = serve_with_admin(port, "auth = \"bearer\"\nhistory_interval_sec = 1", "shop");
    let token = a.admin_token();
    // php-fpm crashes once (SIGKILL) and the supervisor restarts it.
    let pid = a.unit("shop", "php-fpm")["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    a.wait_unit("shop", "php-fpm", Duration::from_secs(30), |s| {
        s["ready"] == true && s["restarts"] == 1
    });
    // Traffic until the history has a request rate with a few points.
    let site = format!("http://127.0.0.1:{}/", a.http_port);
    let bearer = format!("Authorization: Bearer {token}");
    let t0 = Instant::now();
    loop {
        for _ in 0..5 {
            curl(&["-H", "Host: site.test", &site]);
        }
        let h = curl(&[
            "-H",
            &bearer,
            &format!("http://127.0.0.1:{port}/api/history"),
        ])
        .json();
        let points = h["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["app"] == "shop" && s["metric"] == "requests_per_s")
            .map_or(0, |s| s["points"].as_array().unwrap().len());
        if points >= 3 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no history: {h}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The API refuses a browser without the token; the page shell loads.
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{port}/api/overview")]).status,
        401
    );
    let page = format!("http://127.0.0.1:{port}/#token={token}");
    let profile = a.dir.path().join("chromium-profile");
    let run = |extra: &[&str]| {
        Command::new("chromium")
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&page)
            .output()
            .expect("run chromium")
    };
    let out = run(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("<table id=\"instances\">"),
        "chromium failed: {}\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The instances table lists `shop`, running; the units table its php-fpm.
    let instances = section(&dom, "<table id=\"instances\">", "</table>");
    assert!(instances.contains("<td>shop</td>"), "{instances}");
    assert!(instances.contains(">running<"), "{instances}");
    let units = section(&dom, "<table id=\"units\">", "</table>");
    assert!(units.contains("shop/php-fpm"), "{units}");
    // The crash shows among the recent trouble.
    let trouble = section(&dom, "<table id=\"trouble\">", "</table>");
    assert!(
        trouble.contains("shop/php-fpm") && trouble.contains("signal SIGKILL"),
        "{trouble}"
    );
    // A graph of shop's requests with at least 3 points.
    let graphs = section(&dom, "<div id=\"graphs\">", "<h2>Units</h2>");
    assert!(graphs.contains("<h3>shop</h3>"), "{graphs}");
    assert!(graphs.contains("requests per s"), "{graphs}");
    let points = graphs
        .split("<polyline points=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no polyline in {graphs}"));
    assert!(points.split(' ').count() >= 3, "{points}");
    let status = section(&dom, "<div id=\"status\">", "</div>");
    assert!(status.contains("updated"), "{status}");
    // And a screenshot, as an operator would see it.
    let shot = a.dir.path().join("dashboard.png");
    let out = run(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1200,900",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

/// The part of `text` from `start` to the next `end`.
fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in the DOM"));
    let rest = &text[from..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}
