//! The front end's kept php-fpm connections, end to end: the real applianced
//! binary, its shipped php-fpm8.2 pool and the
//! front-app fixture. php-fpm's own status page (`/fpm-status?json&full`,
//! read with the real `cgi-fcgi`) is the witness of which children are
//! pinned to a connection.

mod common;
use common::front::serve;
use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One HTTP/1.1 keep-alive client connection; reconnects if the server
/// closes it between requests.
struct Client {
    port: u16,
    stream: Option<TcpStream>,
}

impl Client {
    fn new(port: u16) -> Client {
        Client { port, stream: None }
    }

    /// GET `path` with `Host: site.test`: (status, body).
    fn get(&mut self, path: &str) -> (u16, String) {
        for _ in 0..2 {
            let stream = self.stream.get_or_insert_with(|| {
                let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s
            });
            let req = format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n\r\n");
            if let Some(answer) = stream
                .write_all(req.as_bytes())
                .ok()
                .and_then(|_| read_response(stream))
            {
                return answer;
            }
            self.stream = None;
        }
        panic!("no response to GET {path}");
    }
}

/// One response with a Content-Length body; `None` if the connection closed.
fn read_response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head}"));
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn php_socket(a: &Appliance) -> PathBuf {
    a.data.join("instances/t/run/php-fpm.sock")
}

/// php-fpm's children: (pid, state) from its full JSON status page.
fn children(a: &Appliance) -> Vec<(i64, String)> {
    let out = fastcgi_get(
        &php_socket(a),
        std::path::Path::new("/fpm-status"),
        "json&full",
    );
    let json = out
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_else(|| panic!("status: {out}"));
    let status: serde_json::Value = serde_json::from_str(json).expect("status JSON");
    status["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| {
            (
                p["pid"].as_i64().unwrap(),
                p["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Children not waiting in accept(): the status request itself plus those
/// pinned to a kept connection ("Reading headers").
fn busy_children(a: &Appliance) -> usize {
    children(a).iter().filter(|(_, s)| s != "Idle").count()
}

#[test]
fn php_connections_are_kept_until_php_fpm_retires_the_child_and_no_request_fails() {
    require_programs(&["cgi-fcgi"]);
    let a = serve("", "[instance.web]\nphp_max_requests = 300");
    let mut client = Client::new(a.http_port);
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..400 {
        let (status, pid) = client.get("/pid");
        assert_eq!(status, 200, "request {i}: {pid}");
        *served.entry(pid).or_default() += 1;
    }
    // One client, one kept connection: one child serves every request until
    // pm.max_requests (300, minus the readiness probes it answered) retires
    // it; the request that found its connection closed went again, on a new
    // connection to another child. A connection per request would have
    // spread them over all 8 children.
    let most = served.values().max().copied().unwrap_or(0);
    assert!((250..=300).contains(&most), "{served:?}");
    assert!(served.len() >= 2, "the child was never retired: {served:?}");
}

#[test]
fn requests_beyond_php_children_wait_their_turn_and_a_php_fpm_child_stays_free() {
    require_programs(&["cgi-fcgi"]);
    let a = serve("", "[instance.web]\nphp_children = 2");
    assert_eq!(children(&a).len(), 2, "php_children is the pool's size");
    let t0 = Instant::now();
    let answers: Vec<u16> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|_| s.spawn(|| a.get("/slow?s=1", &[]).status))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(answers, vec![200; 6]);
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "two at a time: {:?}",
        t0.elapsed()
    );
    // One connection is kept and pins its child; the other child answers a
    // client that is not the front end (here: the status page) at once.
    let t1 = Instant::now();
    assert_eq!(busy_children(&a), 2, "{:?}", children(&a));
    assert!(
        t1.elapsed() < Duration::from_millis(500),
        "{:?}",
        t1.elapsed()
    );
    // Idle for over a second: closed, and the child is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while busy_children(&a) != 1 {
        assert!(
            Instant::now() < deadline,
            "still pinned: {:?}",
            children(&a)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
