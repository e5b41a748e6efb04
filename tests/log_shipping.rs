//! Log shipping end to end: the real daemon ships a unit's output to a local
//! receiver speaking Loki's push API, Elasticsearch's bulk API and syslog
//! over UDP; the receiver goes down and comes back; nothing within the
//! buffer is lost, and a sink that stays down keeps memory bounded.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A receiver: Loki's push (`POST /loki/api/v1/push`) and Elasticsearch's
/// bulk (`POST /_bulk`) over HTTP, syslog over UDP; each line it gets is
/// appended to `loki.txt`, `es.txt` or `syslog.txt` in its dir.
const RECEIVER: &str = r#"
import json, socket, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
out, http_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lock = threading.Lock()
def save(name, lines):
    with lock, open(f"{out}/{name}", "a") as f:
        for l in lines:
            f.write(l.replace("\n", " ") + "\n")
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/loki/api/v1/push":
            doc = json.loads(body)
            save("loki.txt", [v[1] for s in doc["streams"] for v in s["values"]])
            self.send_response(204); self.end_headers()
        elif self.path == "/_bulk":
            rows = body.decode().splitlines()
            save("es.txt", rows[1::2])
            reply = b'{"took":1,"errors":false,"items":[]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers(); self.wfile.write(reply)
        else:
            self.send_response(404); self.end_headers()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", udp_port))
    while True:
        save("syslog.txt", [s.recv(65536).decode(errors="replace")])
threading.Thread(target=udp, daemon=True).start()
HTTPServer(("127.0.0.1", http_port), H).serve_forever()
"#;

struct Receiver {
    child: Option<Child>,
    dir: PathBuf,
    http: u16,
    udp: u16,
}

impl Receiver {
    fn new(dir: &Path) -> Receiver {
        let mut r = Receiver {
            child: None,
            dir: dir.to_path_buf(),
            http: free_port(),
            udp: free_port(),
        };
        r.start();
        r
    }

    fn start(&mut self) {
        let child = Command::new("python3")
            .args(["-c", RECEIVER])
            .arg(&self.dir)
            .arg(self.http.to_string())
            .arg(self.udp.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start python3 (the test receiver)");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.http)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "receiver did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The `seq N` numbers the receiver got in `file`.
    fn seqs(&self, file: &str) -> BTreeSet<u64> {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let at = l.find("seq ")? + 4;
                l[at..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A unit printing `seq N` every 20 ms.
const TALKER: &str = "[instance.units.talker]\ncommand = \"sh\"\n\
    args = [\"-c\", \"i=0; while true; do i=$((i+1)); echo \\\"seq $i\\\"; sleep 0.02; done\"]\n";

fn metric(port: u16, series: &str) -> f64 {
    let text = common::http::curl(&[&format!("http://127.0.0.1:{port}/metrics")]).text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn wait_for(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn lines_reach_loki_elasticsearch_and_syslog_and_an_outage_loses_none_of_them() {
    require_programs(&["sh", "python3", "curl"]);
    let dir = tempfile::tempdir().unwrap();
    let mut rx = Receiver::new(dir.path());
    let admin = free_port();
    let cfg = format!(
        "[admin]\nlisten = [\"127.0.0.1:{admin}\"]\n\
         [[log.ship]]\nkind = \"loki\"\nurl = \"http://127.0.0.1:{h}/loki/api/v1/push\"\n\
         [[log.ship]]\nkind = \"elasticsearch\"\nurl = \"http://127.0.0.1:{h}/_bulk\"\nindex = \"app-logs\"\n\
         [[log.ship]]\nkind = \"syslog\"\naddress = \"udp://127.0.0.1:{u}\"\n\
         [[instance]]\nname = \"t\"\n{NO_DEFAULT_UNITS}{TALKER}",
        h = rx.http,
        u = rx.udp,
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    a.wait_unit("t", "talker", Duration::from_secs(20), |s| {
        s["ready"] == true
    });
    let long = Duration::from_secs(30);
    wait_for("lines at Loki and Elasticsearch", long, || {
        rx.seqs("loki.txt").len() > 20 && rx.seqs("es.txt").len() > 20
    });
    // The receiver goes away for 3 s (about 150 lines), then comes back.
    rx.stop();
    std::thread::sleep(Duration::from_secs(3));
    let during = a.cli(&["logs", "-n", "1", "t/talker"]).stdout;
    let during = String::from_utf8_lossy(&during).to_string();
    let last_during: u64 = during
        .rsplit("seq ")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no seq in {during}"));
    rx.start();
    let target = last_during + 50;
    wait_for("lines after the outage", Duration::from_secs(60), || {
        rx.seqs("loki.txt").last().is_some_and(|&m| m >= target)
            && rx.seqs("es.txt").last().is_some_and(|&m| m >= target)
    });
    for file in ["loki.txt", "es.txt"] {
        let got = rx.seqs(file);
        let (first, last) = (*got.first().unwrap(), *got.last().unwrap());
        let missing: Vec<u64> = (first..=last).filter(|n| !got.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "{file}: lines {missing:?} never arrived"
        );
        assert!(first <= 5 && last >= target, "{file}: {first}..{last}");
    }
    // The lines shipped are the stored JSON lines.
    let loki = std::fs::read_to_string(dir.path().join("loki.txt")).unwrap();
    let one: serde_json::Value = loki
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["unit"] == "talker" && v["stream"] == "stdout")
        .expect("a talker line at Loki");
    assert_eq!(one["instance"], "t");
    assert_eq!(one["stream"], "stdout");
    assert!(one["msg"].as_str().unwrap().starts_with("seq "), "{one}");
    // applianced's own events are shipped too.
    assert!(
        loki.contains("\"stream\":\"event\""),
        "no applianced event at Loki"
    );
    // Syslog over UDP: RFC 5424, facility local0, severity info.
    let syslog = std::fs::read_to_string(dir.path().join("syslog.txt")).unwrap_or_default();
    assert!(
        syslog
            .lines()
            .any(|l| l.starts_with("<134>1 ") && l.contains(" applianced - t/talker - ")),
        "{}",
        syslog.lines().take(3).collect::<Vec<_>>().join("\n")
    );
    // Access log lines are shipped too (here a host nobody serves: 421).
    let url = format!("http://127.0.0.1:{}/probe-ship", a.http_port);
    assert_eq!(
        common::http::curl(&["-H", "Host: nobody.test", &url]).status,
        421
    );
    wait_for(
        "the access line at Elasticsearch",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(dir.path().join("es.txt"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("\"unit\":\"access\"") && l.contains("/probe-ship"))
        },
    );
    // The outage shows: failed sends, nothing dropped.
    assert!(metric(admin, "applianced_log_ship_failures_total{sink=\"loki\"}") >= 1.0);
    assert_eq!(
        metric(
            admin,
            "applianced_log_ship_dropped_lines_total{sink=\"loki\"}"
        ),
        0.0
    );
    assert!(
        metric(
            admin,
            "applianced_log_ship_sent_lines_total{sink=\"elasticsearch\"}"
        ) > 100.0
    );
    // A clean stop ships what is still queued: the shutdown's own lines.
    assert_eq!(a.terminate(Duration::from_secs(30)), 0);
    let loki = std::fs::read_to_string(dir.path().join("loki.txt")).unwrap();
    assert!(
        loki.lines().any(|l| l.contains("shutting down")),
        "the shutdown's lines did not reach Loki"
    );
}

#[test]
fn a_sink_that_stays_down_keeps_its_buffer_bounded_and_never_blocks_the_child() {
    require_programs(&["sh", "curl"]);
    let admin = free_port();
    let nobody = free_port();
    let cfg = format!(
        "[admin]\nlisten = [\"127.0.0.1:{admin}\"]\n\
         [[log.ship]]\nkind = \"loki\"\nurl = \"http://127.0.0.1:{nobody}/loki/api/v1/push\"\nbuffer_kib = 16\n\
         [[instance]]\nname = \"t\"\n{NO_DEFAULT_UNITS}{TALKER}"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    a.wait_unit("t", "talker", Duration::from_secs(20), |s| {
        s["ready"] == true
    });
    let last_seq = || -> u64 {
        let out =
            String::from_utf8_lossy(&a.cli(&["logs", "-n", "1", "t/talker"]).stdout).to_string();
        out.rsplit("seq ")
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    // 16 KiB holds about a hundred lines: at 50 lines a second it is full
    // within seconds, and the oldest are dropped from then on.
    wait_for("dropped lines", Duration::from_secs(30), || {
        metric(
            admin,
            "applianced_log_ship_dropped_lines_total{sink=\"loki\"}",
        ) > 0.0
    });
    let before = last_seq();
    std::thread::sleep(Duration::from_secs(2));
    let after = last_seq();
    assert!(
        after >= before + 50,
        "the child was held up: seq {before} -> {after}"
    );
    let buffered = metric(admin, "applianced_log_ship_buffered_bytes{sink=\"loki\"}");
    assert!(
        buffered > 0.0 && buffered <= 16.0 * 1024.0,
        "buffered {buffered} bytes"
    );
    assert_eq!(
        metric(admin, "applianced_log_ship_sent_lines_total{sink=\"loki\"}"),
        0.0
    );
}

#[test]
fn a_bad_sink_is_a_config_error_naming_its_key() {
    let err = config_error(
        "[[log.ship]]\nkind = \"syslog\"\naddress = \"10.0.0.1:514\"\n[[instance]]\nname = \"t\"\n",
    );
    assert!(err.contains("log.ship[0].address"), "{err}");
}
