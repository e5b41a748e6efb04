//! The HTTP(S) front end, end to end: the real applianced binary, its pingora
//! listeners and the real php-fpm8.2 running PHP fixtures; clients are curl
//! and raw sockets.

mod common;
use common::front::{front_config, serve};
use common::http::{curl, raw, raw_status};
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn php_gets_query_strings_posted_forms_cookies_and_the_cgi_variables_apps_rely_on() {
    let a = serve("", "");
    let r = a.get(
        "/echo?a=1&b=x%20y",
        &[
            "-H",
            "X-Custom: yes",
            "-H",
            "Proxy: http://evil",
            "--cookie",
            "c=3",
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["get"]["a"], "1");
    assert_eq!(j["get"]["b"], "x y");
    assert_eq!(j["cookie"]["c"], "3");
    let s = &j["server"];
    assert_eq!(s["REQUEST_METHOD"], "GET");
    assert_eq!(s["REQUEST_URI"], "/echo?a=1&b=x%20y");
    assert_eq!(s["QUERY_STRING"], "a=1&b=x%20y");
    assert_eq!(s["SCRIPT_NAME"], "/index.php");
    assert!(
        s["SCRIPT_FILENAME"]
            .as_str()
            .unwrap()
            .ends_with("/public/index.php"),
        "{s}"
    );
    assert_eq!(s["SERVER_NAME"], "site.test");
    assert_eq!(s["SERVER_PORT"], a.http_port.to_string());
    assert_eq!(s["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(s["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(s["HTTP_X_CUSTOM"], "yes");
    assert!(
        s["HTTP_PROXY"].is_null(),
        "httpoxy: Proxy must not reach PHP: {s}"
    );
    assert!(s["HTTPS"].is_null() || s["HTTPS"] == "", "{s}");

    let r = a.get("/echo", &["--data", "name=Ana+Mar%C3%ADa&n=42"]);
    let j = r.json();
    assert_eq!(j["server"]["REQUEST_METHOD"], "POST");
    assert_eq!(j["post"]["name"], "Ana María");
    assert_eq!(j["post"]["n"], "42");
    assert_eq!(
        j["server"]["CONTENT_TYPE"],
        "application/x-www-form-urlencoded"
    );

    // Two Set-Cookie headers stay two headers.
    let r = a.get("/cookies", &[]);
    assert_eq!(r.all("set-cookie").len(), 2, "{:?}", r.headers);
    // Redirects and custom statuses from PHP.
    let r = a.get("/redirect", &[]);
    assert_eq!((r.status, r.header("location")), (302, Some("/target")));
    assert_eq!(a.get("/status/418", &[]).status, 418);
    // A status without a standard phrase keeps the script's (like nginx).
    let head = raw(
        a.http_port,
        b"GET /expired HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(head.starts_with("HTTP/1.1 419 Page Expired\r\n"), "{head}");
    let r = a.get("/created", &[]);
    assert_eq!((r.status, r.text().as_str()), (201, "created"));
    // Unknown paths reach the front controller (Laravel routes).
    let r = a.get("/invoices/17", &[]);
    assert_eq!(r.text(), "front controller: /invoices/17");
}

#[test]
fn a_50_mib_upload_reaches_php_intact_and_a_body_over_the_limit_gets_413() {
    let a = serve("max_body_bytes = 62914560", "");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    let mut data = vec![0u8; 50 * 1024 * 1024];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    std::fs::write(&big, &data).unwrap();
    let md5 = sh(&format!("md5sum {}", big.display())).1;
    let md5 = md5.split_whitespace().next().unwrap().to_string();
    let form = format!("file=@{}", big.display());
    let r = a.get("/upload", &["-F", &form, "-F", "note=hi"]);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["files"]["file"]["size"], 50 * 1024 * 1024, "{j}");
    assert_eq!(j["files"]["file"]["md5"], md5.as_str());
    assert_eq!(j["post"]["note"], "hi");

    // A raw body streamed with chunked encoding arrives whole too.
    let file_arg = format!("@{}", big.display());
    let r = a.get(
        "/body",
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &file_arg,
        ],
    );
    assert_eq!(
        r.text(),
        format!("{} {md5}", 50 * 1024 * 1024),
        "{} {:?}",
        r.status,
        r.headers
    );

    // Over the limit: declared length -> 413 before any byte is read.
    let huge = dir.path().join("huge.bin");
    std::fs::write(&huge, vec![b'x'; 61 * 1024 * 1024]).unwrap();
    let form = format!("file=@{}", huge.display());
    let r = a.get("/upload", &["-F", &form]);
    assert_eq!(r.status, 413);
    assert!(r.text().contains("Content Too Large"), "{}", r.text());
    // ...and a chunked body that grows past it.
    let file_arg = format!("@{}", huge.display());
    let r = a.get(
        "/body",
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &file_arg,
        ],
    );
    assert_eq!(r.status, 413);
}

#[test]
fn a_streamed_response_reaches_the_client_before_the_script_ends() {
    let a = serve("", "");
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", a.http_port)).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first;") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let first_at = t0.elapsed();
    assert!(
        first_at < Duration::from_millis(1500),
        "first chunk took {first_at:?}: it waited for the script's 2 s sleep"
    );
    assert!(!String::from_utf8_lossy(&got).contains("second"));
    s.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("second"), "{text}");
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
}

#[test]
fn static_files_answer_200_304_206_head_and_404_with_precompressed_variants() {
    let a = serve("", "");
    let r = a.get("/css/app.css", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 4096);
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    let etag = r.header("etag").expect("etag").to_string();
    let modified = r
        .header("last-modified")
        .expect("last-modified")
        .to_string();

    let inm = format!("If-None-Match: {etag}");
    let r = a.get("/css/app.css", &["-H", &inm]);
    assert_eq!((r.status, r.body.len()), (304, 0));
    let ims = format!("If-Modified-Since: {modified}");
    assert_eq!(a.get("/css/app.css", &["-H", &ims]).status, 304);

    let r = a.get("/css/app.css", &["-H", "Range: bytes=10-19"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/4096"));
    let full = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/front-app/public/css/app.css"),
    )
    .unwrap();
    assert_eq!(r.body, full[10..20]);
    assert_eq!(
        a.get("/css/app.css", &["-H", "Range: bytes=5000-"]).status,
        416
    );

    // HEAD: the GET's headers and no body (raw, so nothing hides extra bytes).
    let out = raw(
        a.http_port,
        b"HEAD /css/app.css HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(raw_status(&out), 200, "{out}");
    assert!(
        out.to_ascii_lowercase().contains("content-length: 4096"),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\n"), "HEAD carried a body: {out:?}");

    let r = a.get("/css/app.css", &["-H", "Accept-Encoding: gzip"]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert!(r.body.len() < 4096 && r.body.starts_with(&[0x1f, 0x8b]));

    let r = a.get("/hello.txt", &[]);
    assert_eq!(r.text(), "plain text file\n");
    assert_eq!(
        a.get("/missing.css", &[]).status,
        200,
        "missing files go to the front controller"
    );
    assert_eq!(
        a.get("/missing.css", &[]).text(),
        "front controller: /missing.css"
    );
}

#[test]
fn a_static_file_changed_on_disk_is_served_fresh_from_the_next_request() {
    let a = serve("", "");
    let public = a.dir.path().join("front-app/public");
    let file = public.join("deploy.js");
    std::fs::write(&file, "version one").unwrap();
    // Older than the small-file cache's settle time, so it is kept in memory.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(a.get("/deploy.js", &[]).text(), "version one");
    assert_eq!(a.get("/deploy.js", &[]).text(), "version one");

    // Rewritten in place, same size, mtime put back: only the ctime differs.
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, "version two").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(a.get("/deploy.js", &[]).text(), "version two");

    // A deploy's rename over it, then removal.
    let staged = public.join("deploy.js.new");
    std::fs::write(&staged, "version 3!!").unwrap();
    std::fs::rename(&staged, &file).unwrap();
    assert_eq!(a.get("/deploy.js", &[]).text(), "version 3!!");
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        a.get("/deploy.js", &[]).text(),
        "front controller: /deploy.js"
    );
}

#[test]
fn deny_rules_and_path_traversal_attempts_never_expose_files() {
    let a = serve("", "");
    assert_eq!(a.get("/storage/x.php", &[]).status, 403);
    assert_eq!(a.get("/storage/a/b.html", &[]).status, 403);
    assert_eq!(a.get("/storage/ok.css", &[]).status, 200);
    let r = a.get("/.env", &[]);
    assert_eq!(r.status, 404);
    assert!(!r.text().contains("secret-from-dotenv"));
    assert_eq!(
        a.get("/.well-known/acme-challenge/t", &[]).text(),
        "acme-token-123\n"
    );
    // Front-controller mode: other scripts neither run nor leak their source.
    let r = a.get("/other.php", &[]);
    assert_eq!(r.status, 404);
    assert!(!r.text().contains("other script"));

    for attempt in [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc/passwd",
        "/css/..%2f..%2f..%2f..%2fetc/passwd",
        "/css/..%5c..%5c..%5cetc/passwd",
        "/css/app.css%00.php",
        "/%c0%ae%c0%ae/etc/passwd",
    ] {
        let r = a.get(attempt, &[]);
        assert!(
            r.status == 400 || r.status == 404,
            "{attempt}: {} {}",
            r.status,
            r.text()
        );
        assert!(
            !r.text().contains("root:x:0:0"),
            "{attempt} leaked /etc/passwd"
        );
    }
    // A raw request with a backslash path, which curl would normalise.
    let out = raw(
        a.http_port,
        b"GET /css\\..\\..\\..\\etc\\passwd HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(!out.contains("root:x:0:0"), "{out}");
}

#[test]
fn any_script_mode_runs_existing_php_files_like_the_classic_nginx_site() {
    let a = serve("", "[instance.web]\nphp_mode = \"any-script\"");
    assert_eq!(a.get("/other.php", &[]).text(), "other script ran");
    assert_eq!(a.get("/sub/", &[]).text(), "nested index");
    let r = a.get("/sub", &[]);
    assert_eq!((r.status, r.header("location")), (308, Some("/sub/")));
    // The deny rule still holds.
    assert_eq!(a.get("/storage/x.php", &[]).status, 403);
}

#[test]
fn virtual_hosts_route_exact_names_wildcards_and_refuse_unknown_hosts() {
    require_programs(&["php-fpm8.2", "curl"]);
    let mut a = Appliance::new(None);
    let app = a.fixture_app("front-app");
    let other = a.fixture_app("stack-app");
    let cfg = format!(
        r#"
[[instance]]
name = "t"
app_dir = "{}"
domains = ["site.test", "*.site.test"]
{PHP_FPM_ONLY}
[[instance]]
name = "u"
app_dir = "{}"
domains = ["special.site.test", "*.deep.site.test"]
{PHP_FPM_ONLY}"#,
        app.display(),
        other.display()
    );
    std::fs::write(a.dir.path().join("appliance.toml"), cfg).unwrap();
    a.config = Some(a.dir.path().join("appliance.toml"));
    a.start();
    a.wait_all_ready(Duration::from_secs(60));
    let url = format!("http://127.0.0.1:{}/hello.txt", a.http_port);
    let get = |host: &str| {
        let h = format!("Host: {host}");
        curl(&["-H", &h, &url])
    };
    // t serves hello.txt; u's app has none (its front controller is absent: 404).
    assert_eq!(get("site.test").text(), "plain text file\n");
    assert_eq!(get("TENANT1.Site.Test:8080").text(), "plain text file\n");
    assert_eq!(
        get("special.site.test").status,
        404,
        "exact name beats *.site.test"
    );
    assert_eq!(get("a.deep.site.test").status, 404, "longest wildcard wins");
    let r = get("unknown.example");
    assert_eq!(r.status, 421, "{}", r.text());
    // The access logs are per instance, one JSON object per request.
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(a.data.join("logs/t/access.log")).unwrap();
    let line: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(line["instance"], "t");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/hello.txt");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 16);
    assert!(line["total_ms"].as_f64().is_some() && line["ts"].is_string());
    assert_eq!(line["unit"], "access");
    assert_eq!(line["msg"], "GET /hello.txt 200");
    // ...and part of the log system: `applianced logs t/access`.
    let out = a.cli(&["logs", "-n", "3", "t/access"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("GET /hello.txt 200"),
        "{text}"
    );
    let unknown = std::fs::read_to_string(a.data.join("logs/access.log")).unwrap();
    assert!(
        unknown.contains("unknown.example") && unknown.contains("421"),
        "{unknown}"
    );
}

#[test]
fn php_fpm_down_gives_a_502_page_and_requests_recover_after_the_restart() {
    let a = serve("", "");
    let out = a.cli(&["stop", "t/php-fpm"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = a.get("/echo", &[]);
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains("Bad Gateway") && r.text().contains("<html"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    a.cli(&["start", "t/php-fpm"]);
    a.wait_unit("t", "php-fpm", Duration::from_secs(30), |s| {
        s["ready"] == true
    });
    assert_eq!(a.get("/echo", &[]).status, 200);

    // A crash: the supervisor restarts php-fpm and requests succeed again.
    let pid = a.unit("t", "php-fpm")["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        let s = a.get("/echo", &[]).status;
        seen.push(s);
        if s == 200 && a.unit("t", "php-fpm")["pid"].as_i64() != Some(pid as i64) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no recovery: {seen:?}"
        );
        assert!(s == 200 || s == 502, "unexpected status {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_script_slower_than_the_read_timeout_gets_a_504_page() {
    let a = serve("fastcgi_read_timeout_sec = 1", "");
    let t0 = Instant::now();
    let r = a.get("/slow?s=4", &[]);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("Gateway Timeout"));
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn ambiguous_or_malformed_framing_is_rejected_with_400() {
    let a = serve("", "");
    let cases: [&[u8]; 4] = [
        b"POST /echo HTTP/1.1\r\nHost: site.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: site.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /echo HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"GET /echo HTTP/1.1\r\n\r\n",
    ];
    for req in cases {
        let out = raw(a.http_port, req, Duration::from_secs(5));
        assert_eq!(
            raw_status(&out),
            400,
            "{:?} -> {out}",
            String::from_utf8_lossy(req)
        );
    }
}

#[test]
fn slow_request_heads_are_cut_off_huge_heads_get_431_and_idle_connections_close() {
    let a = serve("header_timeout_sec = 1.5\nidle_timeout_sec = 1", "");
    use std::io::{Read, Write};
    // Slowloris: a header byte every 200 ms never completes in time.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", a.http_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t0 = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\nX-Slow: ")
        .unwrap();
    let mut got = Vec::new();
    let mut closed = false;
    while t0.elapsed() < Duration::from_secs(6) {
        if s.write_all(b"a").is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(closed, "a trickling client kept the connection for 6 s");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    let mut big = b"GET / HTTP/1.1\r\nHost: site.test\r\n".to_vec();
    for i in 0..200 {
        big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(500)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let out = raw(a.http_port, &big, Duration::from_secs(5));
    assert_eq!(raw_status(&out), 431, "{out}");
    // A normal request still works.
    assert_eq!(a.get("/hello.txt", &[]).status, 200);

    // A kept-alive connection left idle past idle_timeout_sec is closed.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", a.http_port)).unwrap();
    s.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("plain text file\n"));
    let t0 = Instant::now();
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the idle connection got data instead of closing");
    let idle = t0.elapsed();
    assert!(
        idle > Duration::from_millis(800) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}

#[test]
fn the_front_end_keeps_no_ten_millisecond_clock_thread_while_it_serves_and_idles() {
    let a = serve("", "");
    // Kept-alive requests, a PHP page and a static file: every timeout
    // pingora arms on the way (head read, keep-alive, body).
    for path in ["/hello.txt", "/index.php", "/hello.txt"] {
        assert_eq!(a.get(path, &[]).status, 200, "{path}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", a.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(
        threads.iter().any(|t| t.starts_with("front-")),
        "no front-N thread among {threads:?}"
    );
    assert!(
        !threads.iter().any(|t| t == "Timer thread"),
        "pingora's fast-timeout clock thread runs: {threads:?}"
    );
}

#[test]
fn laravels_public_storage_link_serves_uploads_but_no_other_symlink_escapes() {
    require_programs(&["php-fpm8.2", "curl"]);
    let mut a = Appliance::new(None);
    let app = a.fixture_app("front-app");
    // `php artisan storage:link`: public/storage -> ../storage/app/public.
    let uploads = app.join("storage/app/public");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::write(uploads.join("invoice-17.pdf"), b"%PDF-1.4 fake").unwrap();
    std::fs::remove_dir_all(app.join("public/storage")).unwrap();
    std::os::unix::fs::symlink("../storage/app/public", app.join("public/storage")).unwrap();
    std::os::unix::fs::symlink("/etc", app.join("public/etc")).unwrap();
    let cfg = a.dir.path().join("appliance.toml");
    std::fs::write(&cfg, front_config(&app, "", "")).unwrap();
    a.config = Some(cfg);
    a.start();
    a.wait_all_ready(Duration::from_secs(60));
    let r = a.get("/storage/invoice-17.pdf", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "%PDF-1.4 fake"));
    assert_eq!(r.header("content-type"), Some("application/pdf"));
    let r = a.get("/etc/hostname", &[]);
    assert_eq!(r.status, 404, "{}", r.text());
}
