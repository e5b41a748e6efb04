//! Each readiness kind, against a real program. (The MariaDB, Redis PING and
//! FastCGI probes are exercised by the shipped units in `stack.rs`.)

mod common;
use common::*;
use std::time::Duration;

/// Milliseconds from a unit's first `start` event to its first `ready` event.
fn start_to_ready_ms(a: &Appliance, unit: &str) -> i64 {
    let db = a.state_db();
    let at = |ev: &str| -> i64 {
        db.query_row(
            "SELECT min(unix_ms) FROM unit_events WHERE unit = ?1 AND event = ?2",
            [unit, ev],
            |r| r.get(0),
        )
        .unwrap()
    };
    at("ready") - at("start")
}

#[test]
fn every_readiness_kind_waits_for_the_real_service() {
    require_programs(&["python3", "redis-server", "sh"]);
    let (p1, p2) = (free_port(), free_port());
    // Each service only starts listening after a delay, so a probe that passes
    // too early is caught by the start-to-ready time.
    let cfg = format!(
        r#"[[instance]]
name = "p"
{NO_DEFAULT_UNITS}
[instance.units.tcp]
command = "sh"
args = ["-c", "sleep 0.7; exec python3 -m http.server {p1} --bind 127.0.0.1"]
readiness = {{ kind = "tcp", address = "127.0.0.1:{p1}" }}

[instance.units.http]
command = "sh"
args = ["-c", "sleep 0.7; exec python3 -m http.server {p2} --bind 127.0.0.1"]
readiness = {{ kind = "http", url = "http://127.0.0.1:{p2}/" }}

[instance.units.unix]
command = "python3"
args = ["-c", "import socket,time; time.sleep(0.7); s=socket.socket(socket.AF_UNIX); s.bind('{{{{ run_dir }}}}/u.sock'); s.listen(); time.sleep(1000)"]
readiness = {{ kind = "unix", path = "{{{{ run_dir }}}}/u.sock" }}

[instance.units.exec]
command = "sh"
args = ["-c", "sleep 0.7; touch {{{{ run_dir }}}}/flag; exec sleep 1000"]
readiness = {{ kind = "exec", command = "test", args = ["-e", "{{{{ run_dir }}}}/flag"] }}

# Redis speaks sd_notify itself with `supervised systemd`.
[instance.units.notify]
command = "redis-server"
args = ["--port", "0", "--unixsocket", "{{{{ run_dir }}}}/n.sock", "--dir", "{{{{ instance_dir }}}}", "--supervised", "systemd", "--loglevel", "verbose"]
readiness = {{ kind = "notify" }}
"#
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    for unit in ["tcp", "http", "unix", "exec", "notify"] {
        a.wait_unit("p", unit, Duration::from_secs(30), |s| s["ready"] == true);
    }
    for unit in ["tcp", "http", "unix", "exec"] {
        let ms = start_to_ready_ms(&a, unit);
        assert!(
            ms >= 650,
            "{unit} was marked ready {ms} ms after start, before the service listened"
        );
    }
    // Redis itself reported readiness on our NOTIFY_SOCKET.
    let log = a.log_lines("p", "notify");
    assert!(log.iter().any(|l| l.contains("systemd")), "{log:?}");
}

#[test]
fn a_unit_that_never_becomes_ready_is_restarted_then_failed() {
    require_programs(&["sleep"]);
    let cfg = format!(
        "[[instance]]\nname = \"p\"\n{NO_DEFAULT_UNITS}\
         [instance.units.deaf]\ncommand = \"sleep\"\nargs = [\"1000\"]\n\
         readiness = {{ kind = \"unix\", path = \"{{{{ run_dir }}}}/never.sock\" }}\n\
         timeout_start_sec = 0.5\nstart_limit_burst = 3\nrestart_sec = 0.1\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    let st = a.wait_unit("p", "deaf", Duration::from_secs(30), |s| {
        s["state"] == "failed"
    });
    assert!(
        st["message"].as_str().unwrap().contains("not ready within"),
        "{st}"
    );
    let ev = a.events("deaf");
    assert_eq!(
        ev.iter().filter(|(e, ..)| e == "start").count(),
        3,
        "{ev:?}"
    );
    assert_eq!(ev.iter().filter(|(e, ..)| e == "ready").count(), 0);
}
