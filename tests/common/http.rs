//! HTTP clients for front-end tests: the real `curl` (TLS, HTTP/2, uploads)
//! and a raw TCP client for requests no well-behaved client would send.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// `1.1` or `2`.
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Run `curl` with `args` (URL included) and parse what it received. Only the
/// last response's headers are kept (after redirects or 100 Continue).
pub fn curl(args: &[&str]) -> Resp {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let body = dir.path().join("body");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)");
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = w.split_whitespace();
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(
        status != 0,
        "curl {args:?} got no response: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = parts.next().unwrap_or("").to_string();
    let head_text = std::fs::read_to_string(&head).unwrap_or_default();
    // Keep only the last header block.
    let last = head_text
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("");
    let headers = last
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Resp {
        status,
        version,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

/// Send raw bytes, read until the server closes or `timeout`; returns what came back.
pub fn raw(port: u16, request: &[u8], timeout: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 65536];
    while t0.elapsed() < timeout {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in raw output (0 if none).
pub fn raw_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
