//! Stopping: reverse dependency order, nothing left behind, MariaDB always clean,
//! and a restarted applianced cleans up after a crashed one.

mod common;
use common::*;
use std::time::Duration;

fn event_id(a: &Appliance, unit: &str, event: &str) -> i64 {
    a.state_db()
        .query_row(
            "SELECT max(id) FROM unit_events WHERE unit = ?1 AND event = ?2",
            [unit, event],
            |r| r.get::<_, Option<i64>>(0),
        )
        .unwrap()
        .unwrap_or_else(|| panic!("no {event} event for {unit}"))
}

#[test]
fn sigterm_stops_units_in_reverse_order_and_mariadb_restarts_without_crash_recovery() {
    require_programs(&["mariadbd", "redis-server", "php-fpm8.2"]);
    let mut a = Appliance::new(None);
    a.start();
    a.wait_all_ready(Duration::from_secs(120));
    // Positive control: a SIGKILLed MariaDB does log crash recovery, so the
    // absence checked below means something.
    let out = a.cli(&["exec", "demo", "--", "sh", "-c",
        "mariadb -S \"$DB_SOCKET\" -u \"$DB_USERNAME\" -p\"$DB_PASSWORD\" \"$DB_DATABASE\" \
         -e \"CREATE TABLE w (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT); INSERT INTO w (v) VALUES ('a'),('b'),('c')\""]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = a.unit("demo", "mariadb")["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    a.wait_unit("demo", "mariadb", Duration::from_secs(60), |s| {
        s["ready"] == true && s["pid"].as_i64() != Some(pid as i64)
    });
    assert!(
        a.log_lines("demo", "mariadb")
            .iter()
            .any(|l| l.contains("InnoDB: Starting crash recovery")),
        "expected InnoDB crash recovery after SIGKILL (positive control)"
    );
    a.wait_all_ready(Duration::from_secs(60));
    let secrets_before = std::fs::read_to_string(a.data.join("secrets/demo.env")).unwrap();

    assert_eq!(
        a.terminate(Duration::from_secs(120)),
        0,
        "clean stop exits 0\n{}",
        a.diagnostics()
    );
    // Reverse of mariadb, redis -> php-fpm: php-fpm is stopped before either starts stopping.
    let fpm_stopped = event_id(&a, "php-fpm", "stopped");
    assert!(fpm_stopped < event_id(&a, "redis", "stop"));
    assert!(fpm_stopped < event_id(&a, "mariadb", "stop"));
    let db = a.state_db();
    let code: Option<i64> = db
        .query_row("SELECT exit_code FROM unit_events WHERE unit='mariadb' AND event='stopped' ORDER BY id DESC LIMIT 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(code, Some(0), "mariadbd must exit 0 on stop");
    assert!(
        a.leftover_processes().is_empty(),
        "processes left: {:?}",
        a.leftover_processes()
    );
    let (_, ps) = sh(&format!(
        "ps -eo args | grep -F '{}' | grep -v grep || true",
        a.data.display()
    ));
    assert!(
        ps.trim().is_empty(),
        "process table still shows the stack:\n{ps}"
    );

    // Next start: no crash recovery, same secrets, same data.
    let lines_before = a.log_lines("demo", "mariadb").len();
    a.start();
    a.wait_all_ready(Duration::from_secs(120));
    let new_lines = a.log_lines("demo", "mariadb").split_off(lines_before);
    assert!(
        new_lines
            .iter()
            .any(|l| l.contains("ready for connections")),
        "{new_lines:?}"
    );
    assert!(
        !new_lines
            .iter()
            .any(|l| l.contains("InnoDB: Starting crash recovery")),
        "clean stop must not need recovery: {new_lines:?}"
    );
    assert_eq!(
        std::fs::read_to_string(a.data.join("secrets/demo.env")).unwrap(),
        secrets_before,
        "secrets must never be regenerated"
    );
    // The state database kept the first run's history: first start, the restart
    // after SIGKILL, and this start.
    let starts = a
        .events("mariadb")
        .iter()
        .filter(|(e, ..)| e == "start")
        .count();
    assert_eq!(starts, 3, "{:?}", a.events("mariadb"));

    // `applianced shutdown` does the same on command and waits for the end.
    let out = a.cli(&["shutdown", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.wait_exit(Duration::from_secs(60)), 0);
    assert!(a.leftover_processes().is_empty());
}

#[test]
fn a_restarted_applianced_stops_what_a_crashed_one_left_running() {
    require_programs(&["sh", "sleep"]);
    // The unit ignores SIGTERM (so the parent-death signal does not end it) and
    // leaves a grandchild in its group: both survive a SIGKILLed applianced.
    let cfg = format!(
        "[[instance]]\nname = \"t\"\n{NO_DEFAULT_UNITS}\n[instance.units.stubborn]\ncommand = \"sh\"\n\
         args = [\"-c\", \"trap '' TERM; sleep 1000 & while true; do sleep 1; done\"]\ntimeout_stop_sec = 1\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    let st = a.wait_unit("t", "stubborn", Duration::from_secs(30), |s| {
        s["ready"] == true
    });
    let old_pid = st["pid"].as_i64().unwrap() as i32;
    std::thread::sleep(Duration::from_millis(300));
    let old: Vec<i32> = a.leftover_processes();
    assert!(old.len() >= 2, "unit and grandchild expected: {old:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    a.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        old.iter().all(|p| appliance::process::scan::alive(*p)),
        "the leftovers must still be running for this test to mean anything"
    );

    a.start();
    let st = a.wait_unit("t", "stubborn", Duration::from_secs(30), |s| {
        s["ready"] == true
    });
    assert_ne!(st["pid"].as_i64(), Some(old_pid as i64));
    for p in &old {
        assert!(
            !appliance::process::scan::alive(*p),
            "leftover {p} still alive"
        );
    }
    let ev = a.events("stubborn");
    assert!(
        ev.iter().any(|(e, ..)| e == "cleanup"),
        "cleanup must be recorded: {ev:?}"
    );
}

#[test]
fn children_die_when_applianced_dies() {
    require_programs(&["sleep"]);
    let cfg = format!(
        "[[instance]]\nname = \"t\"\n{NO_DEFAULT_UNITS}[instance.units.s]\ncommand = \"sleep\"\nargs = [\"1000\"]\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    let pid = a.wait_unit("t", "s", Duration::from_secs(20), |s| s["ready"] == true)["pid"]
        .as_i64()
        .unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    a.wait_exit(Duration::from_secs(10));
    let t0 = std::time::Instant::now();
    while appliance::process::scan::alive(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "unit {pid} outlived applianced"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
