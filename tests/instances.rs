//! Issue #6 on this host: instances in cgroup v2 subtrees. The host's cgroup2
//! (a hybrid v1/v2 machine here: no controllers in v2) is enough for
//! placement, the whole-instance kill, `exec` placement, usage and private
//! /tmp; the limits themselves (memory.max, pids.max...) are tested in the
//! VM (tests/vm_isolation.rs), where applianced owns a full cgroup2 tree.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A unit that leaves a grandchild in a session of its own (out of its
/// process group, as a daemonizing program does), then runs on.
const ESCAPER: &str = "setsid sleep 1000 & echo escaped=$!; exec sleep 1000";

/// Instances `a` and `b`, each with one unit `svc` running [`ESCAPER`].
fn two_instances() -> String {
    let unit = format!("[instance.units.svc]\ncommand = \"sh\"\nargs = [\"-c\", \"{ESCAPER}\"]\n");
    format!(
        "[[instance]]\nname = \"a\"\n{NO_DEFAULT_UNITS}{unit}\
         [[instance]]\nname = \"b\"\n{NO_DEFAULT_UNITS}{unit}"
    )
}

/// The cgroup v2 path of a process (`0::PATH` of /proc/PID/cgroup).
fn cgroup_of(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .unwrap_or_default()
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// The pid the unit logged as `escaped=PID` (its own stdout, captured).
fn escaped_pid(a: &Appliance, inst: &str) -> i64 {
    let t0 = Instant::now();
    loop {
        if let Some(pid) = a
            .log_lines(inst, "svc")
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("escaped=")?.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{inst}/svc never logged its grandchild"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pid: i64, within: Duration) -> bool {
    let t0 = Instant::now();
    while alive(pid) {
        if t0.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn instances(a: &Appliance) -> Vec<Value> {
    let out = a.cli(&["instance", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn units_run_in_their_instance_cgroup_and_instance_stop_kills_escaped_grandchildren_while_the_other_runs()
 {
    require_programs(&["sh", "sleep", "setsid"]);
    let mut a = Appliance::new(Some(&two_instances()));
    a.start();
    a.wait_all_ready(Duration::from_secs(20));
    let svc_a = a.unit("a", "svc")["pid"].as_i64().unwrap();
    let svc_b = a.unit("b", "svc")["pid"].as_i64().unwrap();
    let esc_a = escaped_pid(&a, "a");
    let esc_b = escaped_pid(&a, "b");

    // Each unit and its escaped grandchild sit in the unit's leaf of its instance.
    let cg_a = cgroup_of(svc_a);
    assert!(
        cg_a.ends_with("/a/svc") && cg_a.contains("/applianced-"),
        "{cg_a}"
    );
    assert_eq!(
        cgroup_of(esc_a),
        cg_a,
        "the setsid grandchild stays in the unit's cgroup"
    );
    assert!(cgroup_of(svc_b).ends_with("/b/svc"), "{}", cgroup_of(svc_b));
    assert_eq!(cgroup_of(esc_b), cgroup_of(svc_b));

    let list = instances(&a);
    let names: Vec<&str> = list.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(list.iter().all(|i| i["state"] == "running"), "{list:?}");
    assert!(
        list[0]["cgroup"].as_str().unwrap().ends_with("/a"),
        "{list:?}"
    );
    // The unit and its escaped grandchild are counted.
    assert!(list[0]["usage"]["pids"].as_u64().unwrap() >= 2, "{list:?}");

    // Stop A: its unit stops, the escaped grandchild (outside the unit's
    // process group, so no stop signal reached it) is killed with the
    // cgroup; B is untouched.
    let out = a.cli(&["instance", "stop", "a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "a: stopped");
    assert!(
        wait_gone(svc_a, Duration::from_secs(5)),
        "A's unit still running"
    );
    assert!(
        wait_gone(esc_a, Duration::from_secs(5)),
        "A's escaped grandchild survived the instance stop"
    );
    assert_eq!(a.unit("a", "svc")["state"], "inactive");
    assert!(alive(svc_b) && alive(esc_b), "B must keep running");
    assert_eq!(a.unit("b", "svc")["pid"].as_i64(), Some(svc_b));
    let list = instances(&a);
    assert_eq!(list[0]["state"], "stopped", "{list:?}");
    assert_eq!(list[1]["state"], "running", "{list:?}");

    // Start A again.
    let out = a.cli(&["instance", "start", "a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = a.wait_unit("a", "svc", Duration::from_secs(10), |s| {
        s["state"] == "running"
    });
    assert_ne!(st["pid"].as_i64(), Some(svc_a));

    // Unknown instance: a clear error, exit 1.
    let out = a.cli(&["instance", "stop", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown instance `nope`") && err.contains("a, b"),
        "{err}"
    );

    // `status` (for people) adds a usage table per instance.
    std::thread::sleep(Duration::from_millis(5500)); // two CPU samples
    let out = a.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let usage: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("INSTANCE  CPU"))
        .collect();
    assert!(usage.len() == 3, "usage table missing:\n{text}");
    assert!(
        usage[1].starts_with("a ") && usage[1].contains('%'),
        "{text}"
    );
    assert!(usage[2].starts_with("b "), "{text}");

    assert_eq!(a.terminate(Duration::from_secs(20)), 0);
    assert!(
        !alive(esc_b),
        "B's escaped grandchild must not outlive applianced"
    );
}

#[test]
fn exec_joins_the_instance_cgroup_and_its_private_tmp_shared_with_the_units() {
    require_programs(&["sh", "sleep", "cat"]);
    let marker = format!("applianced-private-tmp-{}", std::process::id());
    let cfg = format!(
        "[[instance]]\nname = \"a\"\nprivate_tmp = true\n{NO_DEFAULT_UNITS}\
         [instance.units.svc]\ncommand = \"sh\"\nargs = [\"-c\", \"echo from-unit > /tmp/{marker}; exec sleep 1000\"]\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    a.wait_all_ready(Duration::from_secs(20));
    let private = a.data.join("instances/a/tmp").join(&marker);
    let t0 = Instant::now();
    while !private.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "unit's /tmp file not in the instance's tmp dir"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !std::path::Path::new("/tmp").join(&marker).exists(),
        "the unit wrote to the host's /tmp"
    );
    let out = a.cli(&[
        "exec",
        "a",
        "--",
        "cat",
        &format!("/tmp/{marker}"),
        "/proc/self/cgroup",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("from-unit\n"),
        "exec sees the unit's /tmp: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("0::") && l.ends_with("/a/exec")),
        "{text}"
    );
    assert_eq!(a.terminate(Duration::from_secs(20)), 0);
}

#[test]
fn a_restart_after_a_crash_kills_what_the_crashed_applianced_left_in_its_cgroups() {
    require_programs(&["sh", "sleep", "setsid"]);
    let mut a = Appliance::new(Some(&two_instances()));
    a.start();
    a.wait_all_ready(Duration::from_secs(20));
    let esc_a = escaped_pid(&a, "a");
    // A crash: SIGKILL. The units die with it (parent-death signal); the
    // escaped grandchild does not.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    a.wait_exit(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(esc_a),
        "precondition: the grandchild outlives a crash"
    );
    a.start();
    a.wait_all_ready(Duration::from_secs(20));
    assert!(
        wait_gone(esc_a, Duration::from_secs(5)),
        "the leftover was not killed"
    );
    assert_eq!(a.terminate(Duration::from_secs(20)), 0);
}

/// Pids of processes running as `uid` (real uid, from /proc/PID/status).
fn processes_of(uid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
        if real == Some(uid) {
            out.push(pid);
        }
    }
    out
}

fn uid_of(user: &str) -> Option<u32> {
    let (code, out) = sh(&format!("id -u {user}"));
    (code == 0).then(|| out.trim().parse().ok()).flatten()
}

fn get(a: &Appliance, host: &str, path: &str) -> common::http::Resp {
    common::http::curl(&[
        "-H",
        &format!("Host: {host}"),
        &format!("http://127.0.0.1:{}{path}", a.http_port),
    ])
}

fn cli_ok(a: &Appliance, args: &[&str]) -> (String, String) {
    let out = a.cli(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "applianced {args:?}: {stdout}{stderr}\n{}",
        a.diagnostics()
    );
    (stdout, stderr)
}

#[test]
fn instance_add_and_remove_at_runtime_touch_nothing_else_and_leave_nothing_behind() {
    require_programs(&[
        "mariadbd",
        "mariadb-install-db",
        "mariadb-dump",
        "redis-server",
        "php-fpm8.2",
        "useradd",
        "userdel",
        "curl",
    ]);
    let cfg = format!(
        "# the operator's comment\n[[instance]]\nname = \"a\"\ndomains = [\"a.test\"]\n{NO_DEFAULT_UNITS}\
         [instance.units.svc]\ncommand = \"sleep\"\nargs = [\"1000\"]\n"
    );
    let mut a = Appliance::new(Some(&cfg));
    let config = a.config.clone().unwrap();
    // A user left over from an earlier, interrupted run of this test.
    let _ = sh("userdel app-rt-b");
    a.start();
    a.wait_all_ready(Duration::from_secs(20));
    let daemon = a.pid();
    let svc_a = a.unit("a", "svc")["pid"].as_i64().unwrap();
    assert_eq!(get(&a, "a.test", "/robots.txt").status, 200);
    assert_eq!(get(&a, "rt-b.test", "/health").status, 421);

    // Add: user, dirs, secrets, databases, units; recorded in the config
    // file; routed; nothing else restarted.
    let (stdout, stderr) = cli_ok(
        &a,
        &[
            "instance",
            "add",
            "rt-b",
            "--domain",
            "rt-b.test",
            "--domain",
            "*.rt-b.test",
        ],
    );
    assert!(stdout.contains("rt-b: added"), "{stdout}");
    assert!(stderr.contains("[1/3] provisioning"), "progress: {stderr}");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.starts_with(&cfg),
        "the operator's text is kept:\n{text}"
    );
    assert!(text.contains("name = \"rt-b\""), "{text}");
    let h = get(&a, "rt-b.test", "/health");
    assert_eq!(h.status, 200, "{}", h.text());
    let h = h.json();
    assert_eq!(h["instance"], "rt-b", "{h}");
    assert_eq!(h["mariadb"], "ok", "{h}");
    assert_eq!(h["redis"], "ok", "{h}");
    assert_ne!(get(&a, "x.rt-b.test", "/robots.txt").status, 421);
    let uid = uid_of("app-rt-b").expect("user app-rt-b made");
    assert!(!processes_of(uid).is_empty());
    assert_eq!(a.pid(), daemon);
    assert_eq!(
        a.unit("a", "svc")["pid"].as_i64().unwrap(),
        svc_a,
        "A untouched"
    );
    let names: Vec<String> = instances(&a)
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a", "rt-b"]);

    // The same name again, or an invalid one: refused, the file unchanged.
    let out = a.cli(&["instance", "add", "rt-b", "--domain", "other.test"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`rt-b` is already defined"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a.cli(&["instance", "add", "Bad_Name"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("instance[2].name"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);

    // A final backup that fails refuses the remove (MariaDB stopped: no dump).
    cli_ok(&a, &["stop", "rt-b/mariadb"]);
    let out = a.cli(&["instance", "remove", "rt-b"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("final backup") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    assert_eq!(
        get(&a, "rt-b.test", "/robots.txt").status,
        200,
        "still served"
    );
    cli_ok(&a, &["start", "rt-b/mariadb"]);
    a.wait_unit("rt-b", "mariadb", Duration::from_secs(60), |s| {
        s["ready"] == true
    });

    // Remove: final backup, then nothing left running, no user, no sockets.
    let (stdout, stderr) = cli_ok(&a, &["instance", "remove", "rt-b"]);
    assert!(stderr.contains("[2/4] final backup"), "{stderr}");
    assert!(stdout.contains("rt-b: removed"), "{stdout}");
    let (list, _) = cli_ok(&a, &["--json", "backup", "list", "rt-b"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|r| r["trigger"] == "final" && r["status"] == "ok"),
        "the final backup is listed after the remove: {list}"
    );
    let backups = std::fs::read_dir(a.data.join("backups/rt-b"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(backups >= 1, "the final backup is kept locally");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(!text.contains("rt-b"), "{text}");
    assert!(text.starts_with("# the operator's comment"), "{text}");
    assert_eq!(get(&a, "rt-b.test", "/robots.txt").status, 421);
    let t0 = std::time::Instant::now();
    while !processes_of(uid).is_empty() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(processes_of(uid), Vec::<i32>::new(), "processes left");
    assert_eq!(uid_of("app-rt-b"), None, "user deleted");
    assert!(
        !a.data.join("instances/rt-b").exists(),
        "no run dir, no sockets"
    );
    let kept: Vec<_> = std::fs::read_dir(a.data.join("removed"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].join("instance/mariadb/mysql").is_dir(), "data kept");
    let mode = std::fs::metadata(a.data.join("removed"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    let (code, socks) = sh(&format!("find {} -type s", a.data.display()));
    assert_eq!(code, 0);
    assert!(!socks.contains("rt-b"), "sockets left: {socks}");

    // A kept running all along; the appliance was never restarted.
    assert_eq!(a.pid(), daemon);
    assert_eq!(a.unit("a", "svc")["pid"].as_i64().unwrap(), svc_a);
    assert_eq!(get(&a, "a.test", "/robots.txt").status, 200);
    let out = a.cli(&["instance", "remove", "rt-b"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown instance `rt-b`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
