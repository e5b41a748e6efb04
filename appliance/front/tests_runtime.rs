//! Sites added and removed while the front end runs: the real front end
//! (pingora on 127.0.0.1, real listeners, real files) serving static-only
//! sites, driven through `add_site` / `remove_site` while other sites keep
//! answering. php-fpm is not needed: only static files are requested (the
//! sockets are bogus paths).

// The front-end integration tests' raw HTTP client, shared rather than copied.
#[path = "../../tests/common/http.rs"]
mod http;

use super::routes::{self, FrontPlan, SitePlan};
use super::{FrontEnd, bind_all, start};
use crate::config;
use crate::layout::Layout;
use crate::logs::LogHub;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The config of instances `a`, `b`, `c`, each a static site of its own
/// under `root` answering `NAME.test`.
fn config(root: &Path, default_instance: Option<&str>) -> String {
    let mut text = String::from("[http]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = []\n");
    if let Some(d) = default_instance {
        text += &format!("default_instance = \"{d}\"\n");
    }
    for name in ["a", "b", "c"] {
        text += &format!(
            "[[instance]]\nname = \"{name}\"\napp_dir = \"{app}\"\ndomains = [\"{name}.test\"]\n\
             [instance.web]\nfastcgi_socket = \"/nonexistent/{name}/php-fpm.sock\"\n",
            app = root.join(name).display(),
        );
    }
    text
}

struct Setup {
    _dir: tempfile::TempDir,
    layout: Layout,
    /// Plan of `a` and `b` (served from the start).
    plan: FrontPlan,
    /// `c`, added later.
    c: SitePlan,
}

fn setup(default_instance: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut app_dirs = Vec::new();
    for name in ["a", "b", "c"] {
        let app = dir.path().join(name);
        std::fs::create_dir_all(app.join("public")).unwrap();
        std::fs::write(app.join("public/index.html"), format!("site {name}\n")).unwrap();
        app_dirs.push(app);
    }
    let loaded = config::load_str(&config(dir.path(), default_instance), "test").unwrap();
    let cfg = loaded.config;
    let layout = Layout::new(dir.path().join("data"));
    let plan = routes::build(&cfg.http, &cfg.instances[..2], &app_dirs[..2], &layout).unwrap();
    let c = routes::site_plan(2, &cfg.instances[2], &app_dirs[2], &layout).unwrap();
    Setup {
        _dir: dir,
        layout,
        plan,
        c,
    }
}

async fn serve(s: &Setup) -> FrontEnd {
    let listeners = bind_all(&s.plan).unwrap().unwrap();
    let hub = LogHub::new(crate::logs::Rotation::by_size(1 << 20, 2));
    start(
        &s.plan,
        listeners,
        &s.layout,
        &hub,
        Arc::new(|_: &str, _: &str| None),
    )
    .await
    .unwrap()
}

/// `GET /index.html` for `host`: status and body.
fn get(port: u16, host: &str) -> (u16, String) {
    let req = format!("GET /index.html HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let out = http::raw(port, req.as_bytes(), Duration::from_secs(10));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (http::raw_status(&out), body.to_string())
}

async fn get_async(port: u16, host: &str) -> (u16, String) {
    let host = host.to_string();
    tokio::task::spawn_blocking(move || get(port, &host))
        .await
        .unwrap()
}

/// Requests `a.test` and `b.test` in a loop until stopped; counts answers and
/// records any that is not the site's own page.
struct Bystander {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Bystander {
    fn start(port: u16) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            let mut wrong = Vec::new();
            while !s.load(Ordering::Relaxed) {
                for name in ["a", "b"] {
                    let got = get(port, &format!("{name}.test"));
                    if got != (200, format!("site {name}\n")) {
                        wrong.push(format!("{name}.test: {got:?}"));
                    }
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
            wrong
        });
        Bystander {
            stop,
            served,
            thread,
        }
    }

    /// Wait until it has made `more` further requests.
    async fn wait_for(&self, more: usize) {
        let target = self.served.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.served.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "bystander requests stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let wrong = self.thread.join().unwrap();
        (self.served.load(Ordering::Relaxed), wrong)
    }
}

/// Wait (up to 5 s) until `path` contains `needle`; its text.
async fn file_with(path: &PathBuf, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_are_added_and_removed_while_the_others_keep_serving() {
    let s = setup(Some("a"));
    let front = serve(&s).await;
    let port = front.bound[0].port();
    assert_eq!(front.site_names(), ["a", "b"]);
    // No site names it yet: the default instance answers.
    assert_eq!(get_async(port, "c.test").await.1, "site a\n");

    let others = Bystander::start(port);
    others.wait_for(4).await;

    front.add_site(&s.c).unwrap();
    assert_eq!(front.site_names(), ["a", "b", "c"]);
    assert_eq!(
        get_async(port, "c.test").await,
        (200, "site c\n".to_string())
    );
    // Adding it again, or a domain someone serves, is refused; nothing changes.
    let again = front.add_site(&s.c).unwrap_err();
    assert_eq!(again.to_string(), "instance `c` already has a site");
    let mut clash = s.c.clone();
    clash.instance = "d".into();
    clash.domains = vec!["d.test".into(), "B.test".into()];
    let err = front.add_site(&clash).unwrap_err();
    assert_eq!(
        err.to_string(),
        "instance `d`: `B.test` is already served by instance `b`"
    );
    assert_eq!(front.site_names(), ["a", "b", "c"]);
    assert_eq!(get_async(port, "d.test").await.1, "site a\n");
    others.wait_for(4).await;

    assert!(front.remove_site("c"));
    assert!(!front.remove_site("c"));
    assert_eq!(front.site_names(), ["a", "b"]);
    // Its name falls to the default instance.
    assert_eq!(
        get_async(port, "c.test").await,
        (200, "site a\n".to_string())
    );
    // Its access log was written out (its request included) and closed.
    let log = s.layout.instance_log_dir("c").join("access.log");
    let text = file_with(&log, "\"host\":\"c.test\"").await;
    assert!(text.contains("\"status\":200"), "{text}");
    assert!(!text.contains("d.test"), "{text}");

    // Back again, same name and log file.
    front.add_site(&s.c).unwrap();
    assert_eq!(get_async(port, "c.test").await.1, "site c\n");
    others.wait_for(4).await;
    let (served, wrong) = others.finish();
    assert!(
        wrong.is_empty(),
        "of {served} bystander requests: {wrong:?}"
    );
    // The others' requests reached their own logs all along.
    let a_log = s.layout.instance_log_dir("a").join("access.log");
    assert!(
        file_with(&a_log, "a.test")
            .await
            .contains("\"instance\":\"a\"")
    );

    // The default instance removed: names no one serves get 421.
    assert!(front.remove_site("a"));
    assert_eq!(get_async(port, "a.test").await.0, 421);
    assert_eq!(get_async(port, "d.test").await.0, 421);
    assert_eq!(get_async(port, "c.test").await.1, "site c\n");
    assert!(front.remove_site("c"));
    assert_eq!(get_async(port, "c.test").await.0, 421);
    assert_eq!(
        get_async(port, "b.test").await,
        (200, "site b\n".to_string())
    );
    assert_eq!(front.site_names(), ["b"]);
    front.stop().await;
}

/// The serving threads belong to the front end: one stopped leaves nothing
/// a later one could pick up (pingora's no-steal runtime kept per-thread
/// handles in a thread-local whose slots later threads reused, so a second
/// front end in one process lost its accept loop), and stop ends them (the
/// port is closed: their duplicates of the listening socket are gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_ends_started_one_after_another_in_one_process_each_serve() {
    let s = setup(Some("a"));
    for round in 0..3 {
        let front = serve(&s).await;
        let port = front.bound[0].port();
        for _ in 0..4 {
            assert_eq!(
                get_async(port, "b.test").await,
                (200, "site b\n".to_string()),
                "round {round}"
            );
        }
        front.stop().await;
        let refused = std::net::TcpStream::connect(("127.0.0.1", port));
        assert!(
            refused.is_err(),
            "round {round}: port {port} still open after stop"
        );
    }
}
