//! Restart policy, backoff and give-up; `start_early` against plain `requires`;
//! `start_idle_sec`; orphan reaping; output that nobody reads.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn a_unit_that_crashes_at_once_backs_off_with_growing_delays_then_fails_while_others_keep_running()
{
    require_programs(&["sh", "sleep"]);
    let cfg = format!(
        "[[instance]]\nname = \"t\"\n{NO_DEFAULT_UNITS}\n\
         [instance.units.steady]\ncommand = \"sleep\"\nargs = [\"1000\"]\n\
         [instance.units.crasher]\ncommand = \"sh\"\nargs = [\"-c\", \"echo boom; exit 3\"]\n\
         restart_sec = 0.1\nstart_limit_burst = 5\nstart_limit_interval_sec = 30\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    let steady = a.wait_unit("t", "steady", Duration::from_secs(20), |s| {
        s["ready"] == true
    });
    let st = a.wait_unit("t", "crasher", Duration::from_secs(30), |s| {
        s["state"] == "failed"
    });
    assert_eq!(st["restarts"], 4, "{st}");
    assert_eq!(st["last_exit"], "exit code 3");
    assert!(
        st["message"].as_str().unwrap().contains("start limit"),
        "{st}"
    );

    let ev = a.events("crasher");
    let delays: Vec<String> = ev
        .iter()
        .filter(|(e, ..)| e == "restart")
        .map(|(.., d)| d.clone().unwrap())
        .collect();
    let secs: Vec<&str> = delays
        .iter()
        .map(|d| d.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(secs, ["0.1s", "0.2s", "0.4s", "0.8s"], "{delays:?}");
    assert_eq!(ev.iter().filter(|(e, ..)| e == "start").count(), 5);
    assert_eq!(ev.iter().filter(|(e, ..)| e == "exit").count(), 5);
    assert!(
        ev.iter()
            .any(|(e, _, code, ..)| e == "exit" && *code == Some(3))
    );
    assert_eq!(ev.last().unwrap().0, "failed");

    // The failure stayed contained.
    let now = a.unit("t", "steady");
    assert_eq!(now["pid"], steady["pid"]);
    assert_eq!(now["state"], "running");
    let table = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.contains("crasher") && l.contains("failed")),
        "{table}"
    );

    // A failed unit can be retried later by the operator.
    let out = a.cli(&["start", "t/crasher"]);
    assert!(out.status.success());
    a.wait_unit("t", "crasher", Duration::from_secs(10), |s| {
        s["state"] != "failed"
    });
    a.wait_unit("t", "crasher", Duration::from_secs(30), |s| {
        s["state"] == "failed"
    });
    assert_eq!(
        a.events("crasher")
            .iter()
            .filter(|(e, ..)| e == "start")
            .count(),
        10
    );
}

#[test]
fn a_start_early_unit_runs_beside_what_it_requires_but_is_ready_only_after_it() {
    require_programs(&["sh", "sleep", "test", "touch"]);
    // `db` takes 3 s to come up; `web` starts early, `api` the plain way.
    let cfg = format!(
        "[[instance]]\nname = \"t\"\n{NO_DEFAULT_UNITS}\n\
         [instance.units.db]\ncommand = \"sh\"\n\
         args = [\"-c\", \"sleep 3; touch {{{{ instance_dir }}}}/db-up; exec sleep 1000\"]\n\
         [instance.units.db.readiness]\nkind = \"exec\"\ncommand = \"test\"\n\
         args = [\"-e\", \"{{{{ instance_dir }}}}/db-up\"]\n\
         [instance.units.web]\ncommand = \"sleep\"\nargs = [\"1000\"]\n\
         requires = [\"db\"]\nstart_early = true\n\
         [instance.units.api]\ncommand = \"sleep\"\nargs = [\"1000\"]\nrequires = [\"db\"]\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    let web = a.wait_unit("t", "web", Duration::from_secs(20), |s| {
        s["pid"].is_number()
    });
    // Spawned while db is still on its way up, and not ready before it.
    assert_eq!(a.unit("t", "db")["state"], "starting");
    assert_eq!(web["state"], "starting", "{web}");
    assert_eq!(web["ready"], false, "{web}");
    let web = a.wait_unit("t", "web", Duration::from_secs(5), |s| {
        s["message"].is_string()
    });
    assert_eq!(web["message"], "up; ready once db is", "{web}");
    let api = a.unit("t", "api");
    assert_eq!(api["state"], "waiting", "{api}");
    assert!(api["pid"].is_null(), "{api}");

    // Once db is ready, both are: `web` without a new process.
    a.wait_unit("t", "db", Duration::from_secs(20), |s| s["ready"] == true);
    let ready = a.wait_unit("t", "web", Duration::from_secs(10), |s| s["ready"] == true);
    assert_eq!(ready["pid"], web["pid"]);
    assert!(ready["message"].is_null(), "{ready}");
    a.wait_unit("t", "api", Duration::from_secs(10), |s| s["ready"] == true);
    let detail = a
        .events("web")
        .into_iter()
        .find(|(e, ..)| e == "ready")
        .and_then(|(.., d)| d)
        .expect("web's ready event");
    assert!(detail.contains("then waited for db"), "{detail}");

    // The stop order is still `requires`': stopping db stops web first.
    assert!(a.cli(&["stop", "t/db"]).status.success());
    let web_stop = a.wait_unit("t", "web", Duration::from_secs(10), |s| {
        s["state"] == "inactive"
    });
    assert!(web_stop["pid"].is_null());
}

/// When the last event `kind` of `instance/unit` was recorded (unix ms).
fn event_ms(a: &Appliance, instance: &str, unit: &str, kind: &str) -> i64 {
    a.state_db()
        .query_row(
            "SELECT max(unix_ms) FROM unit_events WHERE instance = ?1 AND unit = ?2 AND event = ?3",
            [instance, unit, kind],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn a_start_idle_unit_waits_until_every_other_instances_units_have_come_up() {
    require_programs(&["sh", "sleep", "test", "touch"]);
    // Instance `app` takes 3 s to be ready; `ops`' `admin` is idle-started
    // with a cap it never reaches, its `other` starts at once.
    let cfg = format!(
        "[[instance]]\nname = \"app\"\n{NO_DEFAULT_UNITS}\n\
         [instance.units.db]\ncommand = \"sh\"\n\
         args = [\"-c\", \"sleep 3; touch {{{{ instance_dir }}}}/up; exec sleep 1000\"]\n\
         [instance.units.db.readiness]\nkind = \"exec\"\ncommand = \"test\"\n\
         args = [\"-e\", \"{{{{ instance_dir }}}}/up\"]\n\
         [[instance]]\nname = \"ops\"\n{NO_DEFAULT_UNITS}\n\
         [instance.units.admin]\ncommand = \"sleep\"\nargs = [\"1000\"]\nstart_idle_sec = 60\n\
         [instance.units.other]\ncommand = \"sleep\"\nargs = [\"1000\"]\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    a.wait_unit("ops", "other", Duration::from_secs(20), |s| {
        s["ready"] == true
    });
    let admin = a.unit("ops", "admin");
    assert_eq!(admin["state"], "waiting", "{admin}");
    assert!(admin["pid"].is_null(), "{admin}");
    assert_eq!(
        admin["message"],
        "waiting for the other units to come up (start_idle_sec)"
    );
    assert_eq!(a.unit("app", "db")["state"], "starting");

    a.wait_unit("ops", "admin", Duration::from_secs(30), |s| {
        s["ready"] == true
    });
    let db_ready = event_ms(&a, "app", "db", "ready");
    let admin_start = event_ms(&a, "ops", "admin", "start");
    assert!(
        admin_start >= db_ready,
        "admin started at {admin_start}, db ready at {db_ready}"
    );
    assert!(
        !a.log_lines("ops", "admin")
            .iter()
            .any(|l| l.contains("start_idle_sec =")),
        "the gate opened before the cap"
    );

    // The gate stays open: a restart of admin does not wait for anything.
    assert!(a.cli(&["restart", "ops/admin"]).status.success());
    let again = a.unit("ops", "admin");
    assert_eq!(again["state"], "running", "{again}");
}

#[test]
fn a_start_idle_unit_starts_at_its_cap_when_another_unit_never_comes_up() {
    require_programs(&["sleep", "false"]);
    // `stuck` never passes its probe (its timeout is far away).
    let cfg = format!(
        "[[instance]]\nname = \"t\"\n{NO_DEFAULT_UNITS}\n\
         [instance.units.stuck]\ncommand = \"sleep\"\nargs = [\"1000\"]\ntimeout_start_sec = 600\n\
         [instance.units.stuck.readiness]\nkind = \"exec\"\ncommand = \"false\"\n\
         [instance.units.admin]\ncommand = \"sleep\"\nargs = [\"1000\"]\nstart_idle_sec = 2\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    let admin = a.wait_unit("t", "admin", Duration::from_secs(20), |s| {
        s["ready"] == true
    });
    assert_eq!(a.unit("t", "stuck")["state"], "starting");
    let waited = event_ms(&a, "t", "admin", "start") - event_ms(&a, "t", "stuck", "start");
    assert!(
        (1500..10_000).contains(&waited),
        "admin started {waited} ms after stuck: {admin}"
    );
    let lines = a.log_lines("t", "admin");
    assert!(
        lines
            .iter()
            .any(|l| l == "starting after start_idle_sec = 2: other units are still coming up"),
        "{lines:?}"
    );
}

#[test]
fn restart_never_and_on_failure_follow_the_exit_status() {
    require_programs(&["sh"]);
    let cfg = format!(
        "[[instance]]\nname = \"t\"\n{NO_DEFAULT_UNITS}\n\
         [instance.units.once]\ncommand = \"sh\"\nargs = [\"-c\", \"exit 0\"]\nrestart = \"on-failure\"\n\
         [instance.units.never]\ncommand = \"sh\"\nargs = [\"-c\", \"exit 1\"]\nrestart = \"never\"\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    a.wait_unit("t", "once", Duration::from_secs(20), |s| {
        s["state"] == "exited"
    });
    a.wait_unit("t", "never", Duration::from_secs(20), |s| {
        s["state"] == "failed"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        a.events("once")
            .iter()
            .filter(|(e, ..)| e == "start")
            .count(),
        1
    );
    assert_eq!(
        a.events("never")
            .iter()
            .filter(|(e, ..)| e == "start")
            .count(),
        1
    );
}

fn zombies_of(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for p in procfs::process::all_processes().unwrap().flatten() {
        if let Ok(st) = p.stat() {
            if st.ppid == pid && st.state == 'Z' {
                out.push(format!("{} {}", st.pid, st.comm));
            }
        }
    }
    out
}

#[test]
fn grandchildren_a_unit_abandons_are_reaped_and_leave_no_zombies() {
    require_programs(&["sh", "sleep"]);
    // Each loop double-forks: the intermediate shell exits at once, orphaning a
    // `sleep` that is reparented to applianced (the subreaper) and later exits.
    let cfg = format!(
        "[[instance]]\nname = \"t\"\n{NO_DEFAULT_UNITS}\n\
         [instance.units.spawner]\ncommand = \"sh\"\n\
         args = [\"-c\", \"for i in 1 2 3 4 5 6 7 8 9 10; do ( sleep 3 & ) ; done; sleep 1000\"]\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    a.wait_unit("t", "spawner", Duration::from_secs(20), |s| {
        s["ready"] == true
    });
    let me = a.pid();
    // While they live, the orphans are applianced's children (the subreaper works).
    let adopted = || {
        procfs::process::all_processes()
            .unwrap()
            .flatten()
            .filter(|p| {
                p.stat()
                    .map(|s| s.ppid == me && s.comm == "sleep")
                    .unwrap_or(false)
            })
            .count()
    };
    let t0 = std::time::Instant::now();
    while adopted() < 10 {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "orphans should be reparented to applianced, found {}",
            adopted()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        zombies_of(me).is_empty(),
        "zombies under applianced: {:?}",
        zombies_of(me)
    );
    // Same after a restart of the unit.
    assert!(a.cli(&["restart", "t/spawner"]).status.success());
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        zombies_of(me).is_empty(),
        "zombies under applianced: {:?}",
        zombies_of(me)
    );
}

#[test]
fn a_child_flooding_its_output_never_blocks_and_logs_rotate() {
    require_programs(&["sh", "seq"]);
    // ~21 MB of output (about 60 MB of JSON log) while the only follower is
    // stalled: it asked for `logs -f` and never reads. Then a marker line.
    let cfg = format!(
        "[log]\nmax_bytes = 1000000\nkeep = 2\n[[instance]]\nname = \"t\"\n{NO_DEFAULT_UNITS}\n\
         [instance.units.chatty]\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 0.5; seq 1 3000000; echo all-written; exec sleep 1000\"]\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    a.wait_unit("t", "chatty", Duration::from_secs(20), |s| {
        s["ready"] == true
    });
    let mut stalled =
        std::os::unix::net::UnixStream::connect(a.data.join("run/control.sock")).unwrap();
    use std::io::Write;
    stalled
        .write_all(b"{\"cmd\":\"logs\",\"target\":\"t/chatty\",\"lines\":10,\"follow\":true}\n")
        .unwrap();
    let t0 = std::time::Instant::now();
    let log = a.data.join("logs/t/chatty.log");
    loop {
        let tail = appliance::logs::tail(&log, 5, 2);
        if tail.iter().any(|l| l.msg == "all-written") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the child looks blocked on its output\n{}",
            a.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Rotation: the live file and exactly `keep` rotated files, each within the limit.
    for f in [
        log.clone(),
        appliance::logs::rotated(&log, 1),
        appliance::logs::rotated(&log, 2),
    ] {
        let len = std::fs::metadata(&f)
            .unwrap_or_else(|_| panic!("{} missing", f.display()))
            .len();
        assert!(len <= 1_000_000, "{} is {len} bytes", f.display());
    }
    assert!(!appliance::logs::rotated(&log, 3).exists());
    let last = appliance::logs::tail(&log, 3, 2);
    assert_eq!(last[0].msg, "2999999");
    assert_eq!(last[1].msg, "3000000");
    // The daemon stayed responsive throughout.
    assert!(a.cli(&["status"]).status.success());
    drop(stalled);
}
