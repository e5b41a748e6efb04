//! Our FastCGI client and CGI parameters against a real php-fpm8.2.
//!
//! Each test starts its own php-fpm (pool of 2, unix socket in a tempdir,
//! `output_buffering = 0` so `flush()` streams) running the scripts in
//! `tests/fixtures/fastcgi/`, and stops it on drop. A missing php-fpm8.2 fails
//! the test with the install command; it never skips.

use appliance::front::cgi::{self, RequestInfo, ResponseHead};
use appliance::front::fastcgi::{Exchange, FcgiError};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONNECT: Duration = Duration::from_secs(2);
const READ: Duration = Duration::from_secs(10);
/// No test may hang: a deadlock fails it instead.
const WHOLE_TEST: Duration = Duration::from_secs(60);

#[path = "fastcgi/pool.rs"]
mod pool;

/// A private php-fpm8.2 master; SIGTERM (then SIGKILL) on drop.
struct PhpFpm {
    dir: tempfile::TempDir,
    child: Child,
    socket: PathBuf,
}

impl PhpFpm {
    fn start() -> PhpFpm {
        Self::start_with("")
    }

    /// [`Self::start`] with `extra` lines appended to the pool's config.
    fn start_with(extra: &str) -> PhpFpm {
        let bin = appliance::plan::find_program("php-fpm8.2").unwrap_or_else(|| {
            panic!("php-fpm8.2 is not installed: run `apt-get install -y php8.2-fpm php8.2-cli`")
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("php.sock");
        let conf = dir.path().join("php-fpm.conf");
        let text = fpm_conf(dir.path(), &socket) + extra;
        std::fs::write(&conf, text).expect("write php-fpm.conf");
        let mut cmd = Command::new(bin);
        cmd.arg("--nodaemonize").arg("--fpm-config").arg(&conf);
        // As root php-fpm wants a pool `user`; -R lets workers stay root so
        // they can read the fixtures wherever the checkout lives.
        if nix::unistd::geteuid().is_root() {
            cmd.arg("--allow-to-run-as-root");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn php-fpm8.2");
        let mut fpm = PhpFpm { dir, child, socket };
        fpm.wait_ready();
        fpm
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("php-fpm8.2 exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("php-fpm8.2 not listening within 15 s:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("php-fpm.log")).unwrap_or_default()
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fpm_conf(dir: &Path, socket: &Path) -> String {
    format!(
        "[global]
error_log = {dir}/php-fpm.log
daemonize = no
pid = {dir}/php-fpm.pid

[test]
listen = {socket}
listen.mode = 0600
pm = static
pm.max_children = 2
clear_env = no
catch_workers_output = yes
ping.path = /fpm-ping
ping.response = pong
; Streaming: PHP's own output buffer would hold flush()ed output back.
php_admin_value[output_buffering] = 0
; Log lines go to the FastCGI STDERR stream, not to a file.
php_admin_flag[log_errors] = on
",
        dir = dir.display(),
        socket = socket.display()
    )
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fastcgi")
}

/// One request to a fixture script; `params()` turns it into CGI variables.
struct Req<'a> {
    method: &'a str,
    script: &'a str,
    path_info: &'a str,
    query: &'a str,
    https: bool,
    headers: &'a [(&'a str, &'a [u8])],
    content_length: Option<u64>,
    content_type: Option<&'a str>,
}

impl<'a> Req<'a> {
    fn get(script: &'a str) -> Req<'a> {
        Req {
            method: "GET",
            script,
            path_info: "",
            query: "",
            https: false,
            headers: &[("Host", b"example.test")],
            content_length: None,
            content_type: None,
        }
    }

    /// The PARAMS stream, encoded (what [`Exchange::start_pooled`] takes).
    fn encoded(&self) -> Vec<u8> {
        let mut out = cgi::FcgiParams::default();
        for (name, value) in self.params() {
            cgi::ParamSink::put(&mut out, name.as_bytes(), &[&value]);
        }
        out.bytes
    }

    fn params(&self) -> Vec<(String, Vec<u8>)> {
        let root = fixtures();
        let filename = root.join(self.script);
        let script_name = format!("/{}", self.script);
        let path = format!("{script_name}{}", self.path_info);
        let uri = match self.query {
            "" => path.clone(),
            q => format!("{path}?{q}"),
        };
        cgi::params(&RequestInfo {
            method: self.method,
            request_uri: &uri,
            document_uri: &path,
            query: self.query,
            script_filename: &filename,
            script_name: &script_name,
            path_info: self.path_info,
            document_root: &root,
            server_name: "example.test",
            server_addr: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            server_port: if self.https { 443 } else { 80 },
            https: self.https,
            server_protocol: "HTTP/1.1",
            remote_addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
            remote_port: 40000,
            headers: self.headers,
            content_length: self.content_length,
            content_type: self.content_type,
        })
    }
}

/// A whole response, plus what the exchange reported on the side.
struct Response {
    head: ResponseHead,
    body: Vec<u8>,
    stderr: Vec<u8>,
    completed: bool,
}

impl Response {
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Send `req` with its body in `chunk`-sized pieces and read the whole answer.
async fn exchange(fpm: &PhpFpm, req: &Req<'_>, body: &[u8], chunk: usize) -> Response {
    let run = async {
        let mut ex = Exchange::start(&fpm.socket, &req.params(), CONNECT)
            .await
            .expect("start");
        for piece in body.chunks(chunk.max(1)) {
            ex.send_stdin(piece).await.expect("send_stdin");
        }
        ex.finish_stdin().await.expect("finish_stdin");
        let head = ex.read_head(READ).await.expect("read_head");
        let mut body = Vec::new();
        while let Some(piece) = ex.read_body(READ).await.expect("read_body") {
            body.extend_from_slice(&piece);
        }
        let completed = ex.end_request().is_some_and(|e| e.completed());
        Response {
            head,
            body,
            stderr: ex.take_stderr(),
            completed,
        }
    };
    tokio::time::timeout(WHOLE_TEST, run)
        .await
        .expect("exchange hung")
}

/// Deterministic, incompressible-looking test data (xorshift).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Hex digest from coreutils (`sha256sum`, `md5sum`).
fn digest(tool: &str, data: &[u8]) -> String {
    let mut child = Command::new(tool)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let out = child.wait_with_output().expect("digest");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn get_passes_cgi_variables_and_request_headers_to_php() {
    let fpm = PhpFpm::start();
    let headers: &[(&str, &[u8])] = &[
        ("Host", b"example.test"),
        ("X-Custom", b"v1"),
        ("x-custom", b"v2"),
        ("Cookie", b"a=1"),
        ("Cookie", b"b=2"),
        ("Proxy", b"http://evil.test:3128"),
        ("X_Spoofed", b"yes"),
    ];
    let req = Req {
        path_info: "/extra/path",
        query: "a=1&b=two",
        https: true,
        headers,
        ..Req::get("server.php")
    };
    let resp = exchange(&fpm, &req, b"", 1).await;
    assert_eq!(resp.head.status, 200);
    assert!(resp.completed);
    let s = resp.json();
    let root = fixtures();
    let script_filename = root.join("server.php").to_string_lossy().into_owned();
    let path_translated = format!("{}/extra/path", root.display());
    let expect = [
        ("SCRIPT_NAME", "/server.php"),
        ("SCRIPT_FILENAME", script_filename.as_str()),
        ("PATH_INFO", "/extra/path"),
        ("PATH_TRANSLATED", path_translated.as_str()),
        ("PHP_SELF", "/server.php/extra/path"),
        ("REQUEST_URI", "/server.php/extra/path?a=1&b=two"),
        ("QUERY_STRING", "a=1&b=two"),
        ("REQUEST_METHOD", "GET"),
        ("HTTPS", "on"),
        ("REQUEST_SCHEME", "https"),
        ("SERVER_PORT", "443"),
        ("SERVER_NAME", "example.test"),
        ("SERVER_SOFTWARE", "applianced"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REMOTE_ADDR", "192.0.2.9"),
        ("REMOTE_PORT", "40000"),
        ("REDIRECT_STATUS", "200"),
        ("HTTP_HOST", "example.test"),
        ("HTTP_X_CUSTOM", "v1, v2"),
        ("HTTP_COOKIE", "a=1; b=2"),
        ("CONTENT_LENGTH", ""),
    ];
    for (name, value) in expect {
        assert_eq!(s[name], value, "$_SERVER['{name}']");
    }
    assert!(
        s.get("HTTP_PROXY").is_none(),
        "httpoxy: Proxy must not pass"
    );
    assert!(
        s.get("HTTP_X_SPOOFED").is_none(),
        "underscore header passed"
    );
}

#[tokio::test]
async fn post_urlencoded_form_arrives_in_post() {
    let fpm = PhpFpm::start();
    let body = b"name=J%C3%BCrgen&list%5B%5D=a&list%5B%5D=b";
    let req = Req {
        method: "POST",
        content_length: Some(body.len() as u64),
        content_type: Some("application/x-www-form-urlencoded"),
        ..Req::get("form.php")
    };
    let resp = exchange(&fpm, &req, body, 7).await;
    let v = resp.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["post"]["name"], "Jürgen");
    assert_eq!(v["post"]["list"], serde_json::json!(["a", "b"]));
}

#[tokio::test]
async fn post_body_streams_to_php_in_chunks() {
    let fpm = PhpFpm::start();
    let body = pseudo_random(5 * 1024 * 1024);
    let req = Req {
        method: "POST",
        content_length: Some(body.len() as u64),
        content_type: Some("application/octet-stream"),
        ..Req::get("hash.php")
    };
    let resp = exchange(&fpm, &req, &body, 64 * 1024).await;
    let v = resp.json();
    assert_eq!(v["length"], body.len());
    assert_eq!(v["sha256"], digest("sha256sum", &body));
    assert_eq!(v["md5"], digest("md5sum", &body));
}

#[tokio::test]
async fn script_answering_before_reading_its_body_does_not_deadlock() {
    let fpm = PhpFpm::start();
    // PUT: PHP reads no body before the script runs (it does for POST), so
    // the script writes its 512 KiB while we are still sending 3 MiB.
    let body = pseudo_random(3 * 1024 * 1024);
    let req = Req {
        method: "PUT",
        content_length: Some(body.len() as u64),
        content_type: Some("application/octet-stream"),
        ..Req::get("early.php")
    };
    let resp = exchange(&fpm, &req, &body, 64 * 1024).await;
    let text = String::from_utf8_lossy(&resp.body);
    let (early, tail) = text.split_once('\n').expect("two parts");
    assert_eq!(early.len(), 512 * 1024);
    assert_eq!(tail, format!("{} {}", body.len(), digest("md5sum", &body)));
}

#[tokio::test]
async fn status_comes_from_http_response_code_and_status_header() {
    let fpm = PhpFpm::start();
    let code = exchange(
        &fpm,
        &Req {
            query: "mode=code",
            ..Req::get("status.php")
        },
        b"",
        1,
    )
    .await;
    assert_eq!(code.head.status, 418);
    assert_eq!(code.body, b"teapot");
    let header = exchange(
        &fpm,
        &Req {
            query: "mode=header",
            ..Req::get("status.php")
        },
        b"",
        1,
    )
    .await;
    assert_eq!(header.head.status, 201);
    assert_eq!(header.head.reason.as_deref(), Some("Created"));
    assert!(
        header.header("status").is_empty(),
        "Status must not reach the client"
    );
}

#[tokio::test]
async fn each_setcookie_becomes_its_own_set_cookie_header() {
    let fpm = PhpFpm::start();
    let resp = exchange(&fpm, &Req::get("cookies.php"), b"", 1).await;
    let cookies = resp.header("set-cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(cookies[0].starts_with("first=one"), "{cookies:?}");
    assert!(cookies[1].starts_with("second=two") && cookies[1].contains("HttpOnly"));
}

#[tokio::test]
async fn location_header_redirects_with_302() {
    let fpm = PhpFpm::start();
    let resp = exchange(&fpm, &Req::get("redirect.php"), b"", 1).await;
    assert_eq!(resp.head.status, 302);
    assert_eq!(
        resp.header("location"),
        vec!["https://example.test/elsewhere"]
    );
}

#[tokio::test]
async fn missing_script_is_php_fpms_404_with_its_stderr() {
    let fpm = PhpFpm::start();
    let resp = exchange(&fpm, &Req::get("no-such-script.php"), b"", 1).await;
    assert_eq!(resp.head.status, 404);
    let stderr = String::from_utf8_lossy(&resp.stderr);
    assert!(stderr.contains("Primary script unknown"), "{stderr}");
}

#[tokio::test]
async fn php_log_lines_arrive_as_stderr_not_in_the_body() {
    let fpm = PhpFpm::start();
    let resp = exchange(&fpm, &Req::get("stderr.php"), b"", 1).await;
    assert_eq!(resp.body, b"logged");
    let stderr = String::from_utf8_lossy(&resp.stderr);
    assert!(
        stderr.contains("fixture-stderr-marker"),
        "stderr: {stderr:?}"
    );
}

#[tokio::test]
async fn flushed_output_reaches_the_client_before_the_script_ends() {
    let fpm = PhpFpm::start();
    let started = Instant::now();
    let mut ex = Exchange::start(&fpm.socket, &Req::get("flush.php").params(), CONNECT)
        .await
        .expect("start");
    ex.finish_stdin().await.expect("finish");
    let head = ex.read_head(READ).await.expect("head");
    assert_eq!(head.status, 200);
    let first = ex
        .read_body(READ)
        .await
        .expect("body")
        .expect("first chunk");
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"first;");
    assert!(
        first_at < Duration::from_millis(800),
        "first chunk after {first_at:?}"
    );
    let mut rest = Vec::new();
    while let Some(piece) = ex.read_body(READ).await.expect("body") {
        rest.extend_from_slice(&piece);
    }
    assert_eq!(rest, b"second");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "script slept 1 s"
    );
}

#[tokio::test]
async fn connecting_to_a_missing_socket_is_a_connect_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("absent.sock");
    let err = Exchange::start(&socket, &Req::get("server.php").params(), CONNECT)
        .await
        .expect_err("no php-fpm there");
    match err {
        FcgiError::Connect { socket: s, source } => {
            assert_eq!(s, socket);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn script_slower_than_the_read_timeout_is_a_timeout() {
    let fpm = PhpFpm::start();
    let mut ex = Exchange::start(&fpm.socket, &Req::get("sleep.php").params(), CONNECT)
        .await
        .expect("start");
    ex.finish_stdin().await.expect("finish");
    let started = Instant::now();
    let err = ex
        .read_head(Duration::from_millis(500))
        .await
        .expect_err("script sleeps 3 s");
    assert!(matches!(err, FcgiError::Timeout), "{err:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn large_response_is_read_chunk_by_chunk() {
    let fpm = PhpFpm::start();
    let run = async {
        let mut ex = Exchange::start(&fpm.socket, &Req::get("large.php").params(), CONNECT)
            .await
            .expect("start");
        ex.finish_stdin().await.expect("finish");
        let head = ex.read_head(READ).await.expect("head");
        assert_eq!(head.status, 200);
        let (mut total, mut chunks, mut largest) = (0usize, 0usize, 0usize);
        while let Some(piece) = ex.read_body(READ).await.expect("body") {
            // Every byte must be the letter of the MiB it falls in.
            for (i, b) in piece.iter().enumerate() {
                let want = b'a' + ((total + i) / (1024 * 1024)) as u8;
                assert_eq!(*b, want, "byte {}", total + i);
            }
            total += piece.len();
            chunks += 1;
            largest = largest.max(piece.len());
        }
        (total, chunks, largest)
    };
    let (total, chunks, largest) = tokio::time::timeout(WHOLE_TEST, run).await.expect("hung");
    assert_eq!(total, 20 * 1024 * 1024);
    assert!(
        largest <= 65535,
        "one record at most per chunk, got {largest}"
    );
    assert!(chunks >= total / 65535, "{chunks} chunks");
}

#[tokio::test]
async fn readiness_ping_goes_through_our_client() {
    let fpm = PhpFpm::start();
    let socket = fpm.socket.to_string_lossy().into_owned();
    appliance::readiness::fastcgi_ping(&socket, "/fpm-ping", "pong")
        .await
        .expect("php-fpm answers pong");
    let wrong = appliance::readiness::fastcgi_ping(&socket, "/fpm-ping", "something-else").await;
    assert!(
        wrong
            .as_ref()
            .is_err_and(|e| e.contains("unexpected ping response: pong")),
        "{wrong:?}"
    );
    let gone =
        appliance::readiness::fastcgi_ping("/nonexistent/php.sock", "/fpm-ping", "pong").await;
    assert!(gone.is_err());
}
