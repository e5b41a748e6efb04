//! Replicated units (the queue-worker pool's machinery) with plain processes:
//! `scale` at runtime, per-replica restarts, rolling restarts that keep
//! capacity, and the shipped queue-worker's condition on `artisan`.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A worker that exits cleanly on SIGTERM after finishing its "job" (0.3 s).
const WORKER: &str = "trap 'sleep 0.3; exit 0' TERM; while :; do sleep 0.05; done";

fn pool_config(replicas: u32) -> String {
    format!(
        "[[instance]]\nname = \"t\"\n{NO_DEFAULT_UNITS}\n\
         [instance.units.worker]\ncommand = \"sh\"\nargs = [\"-c\", \"{WORKER}\"]\n\
         replicas = {replicas}\ntimeout_stop_sec = 10\n"
    )
}

fn replicas(a: &Appliance) -> Vec<Value> {
    a.status()
        .into_iter()
        .filter(|s| s["unit"] == "worker")
        .collect()
}

/// Wait until exactly `n` replicas exist and all are running; returns them.
fn wait_pool(a: &Appliance, n: usize) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let r = replicas(a);
        if r.len() == n && r.iter().all(|s| s["state"] == "running") {
            return r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "pool never reached {n} running replicas: {r:?}\n{}",
            a.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn pids(r: &[Value]) -> Vec<i64> {
    r.iter().map(|s| s["pid"].as_i64().unwrap()).collect()
}

fn alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn scale_adds_and_removes_replicas_at_runtime_without_touching_the_others() {
    require_programs(&["sh", "sleep"]);
    let mut a = Appliance::new(Some(&pool_config(3)));
    a.start();
    let first = pids(&wait_pool(&a, 3));

    let out = a.cli(&["scale", "t/worker", "5"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t/worker: 3 -> 5 replicas"
    );
    let up = wait_pool(&a, 5);
    assert_eq!(
        &pids(&up)[..3],
        &first[..],
        "existing replicas were restarted"
    );
    let numbers: Vec<i64> = up.iter().map(|s| s["replica"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4]);

    let out = a.cli(&["--json", "scale", "t/worker", "2"]);
    assert!(out.status.success(), "{out:?}");
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["from"], 5);
    assert_eq!(reply["to"], 2);
    // The command returns once the surplus replicas have stopped.
    let down = wait_pool(&a, 2);
    assert_eq!(pids(&down), &first[..2]);
    for gone in &pids(&up)[2..] {
        assert!(!alive(*gone), "removed replica pid {gone} still runs");
    }
    let stops = a
        .events("worker")
        .iter()
        .filter(|(e, ..)| e == "stopped")
        .count();
    assert_eq!(stops, 3, "{:?}", a.events("worker"));
}

#[test]
fn scale_refuses_unknown_units_and_counts_out_of_range() {
    require_programs(&["sh", "sleep"]);
    let mut a = Appliance::new(Some(&pool_config(2)));
    a.start();
    wait_pool(&a, 2);

    let out = a.cli(&["scale", "t/nope", "3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no unit `nope`"), "{err}");

    for bad in ["0", "257", "many"] {
        let out = a.cli(&["scale", "t/worker", bad]);
        assert_eq!(out.status.code(), Some(2), "scale to {bad}: {out:?}");
    }
    assert_eq!(pids(&wait_pool(&a, 2)).len(), 2);
}

#[test]
fn a_killed_replica_is_restarted_alone() {
    require_programs(&["sh", "sleep"]);
    let mut a = Appliance::new(Some(&pool_config(4)));
    a.start();
    let before = pids(&wait_pool(&a, 4));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before[2] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t0 = Instant::now();
    let after = loop {
        let r = wait_pool(&a, 4);
        if pids(&r)[2] != before[2] {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(25));
    };
    let now = pids(&after);
    assert_eq!(
        [now[0], now[1], now[3]],
        [before[0], before[1], before[3]],
        "the other replicas were disturbed"
    );
    assert_eq!(after[2]["restarts"], 1);
    assert_eq!(after[2]["last_exit"], "signal SIGKILL");
}

#[test]
fn rolling_restart_replaces_every_replica_without_dropping_the_pool_to_zero() {
    require_programs(&["sh", "sleep"]);
    let mut a = Appliance::new(Some(&pool_config(3)));
    a.start();
    let before = pids(&wait_pool(&a, 3));

    let data = a.data.clone();
    let restart = std::thread::spawn(move || {
        std::process::Command::new(BIN)
            .args(["--data-dir"])
            .arg(&data)
            .args(["restart", "t/worker"])
            .output()
            .unwrap()
    });
    let mut fewest = usize::MAX;
    while !restart.is_finished() {
        let running = replicas(&a)
            .iter()
            .filter(|s| s["state"] == "running")
            .count();
        fewest = fewest.min(running);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(restart.join().unwrap().status.success());
    assert!(
        fewest >= 2,
        "capacity dropped to {fewest} of 3 during the restart"
    );
    let after = pids(&wait_pool(&a, 3));
    for (b, n) in before.iter().zip(&after) {
        assert_ne!(b, n, "a replica was not restarted");
    }
}

#[test]
fn the_shipped_queue_worker_is_skipped_for_an_app_without_artisan() {
    require_programs(&["sh", "sleep", "php"]);
    // Only the shipped queue-worker (MariaDB and Redis off: `after` tolerates that).
    let cfg = "[[instance]]\nname = \"t\"\napp_dir = \"@DIR@/app\"\n\
               [instance.units.mariadb]\nenabled = false\n\
               [instance.units.redis]\nenabled = false\n\
               [instance.units.php-fpm]\nenabled = false\n\
               [instance.units.queue-worker]\nreplicas = 2\n";
    let mut a = Appliance::new(Some(cfg));
    std::fs::create_dir_all(a.dir.path().join("app/public")).unwrap();
    a.start();
    let st = a.wait_unit("t", "queue-worker", Duration::from_secs(20), |s| {
        s["state"] == "skipped"
    });
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("app/artisan does not exist"),
        "{st}"
    );
    // Skipped counts as settled, and nothing was spawned.
    a.wait_all_ready(Duration::from_secs(10));
    assert!(
        a.events("queue-worker")
            .iter()
            .all(|(e, ..)| e == "skipped")
    );

    // Once the app has artisan, `start` runs the pool.
    std::fs::write(
        a.dir.path().join("app/artisan"),
        "<?php while (true) { sleep(1); }\n",
    )
    .unwrap();
    assert!(a.cli(&["start", "t/queue-worker"]).status.success());
    a.wait_unit("t", "queue-worker", Duration::from_secs(20), |s| {
        s["state"] == "running"
    });
}

/// Field 19 of /proc/PID/stat: the process's nice value.
/// `None` once the process is gone.
fn niceness(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(16)?.parse().ok()
}

#[test]
fn nice_lowers_the_priority_of_every_replica_and_the_processes_they_start() {
    require_programs(&["sh", "sleep"]);
    let config = pool_config(2).replace("replicas = 2", "replicas = 2\nnice = 7");
    let mut a = Appliance::new(Some(&config));
    a.start();
    let r = wait_pool(&a, 2);
    for pid in pids(&r) {
        assert_eq!(niceness(pid), Some(7), "replica {pid}");
        // The worker's own children (the `sleep` it forks) inherit it.
        let t0 = Instant::now();
        let kids = loop {
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if !kids.trim().is_empty() || t0.elapsed() > Duration::from_secs(5) {
                break kids;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let kids: Vec<i64> = kids
            .split_whitespace()
            .filter_map(|k| k.parse().ok())
            .collect();
        assert!(!kids.is_empty(), "replica {pid} started no child");
        for kid in kids {
            // A `sleep 0.05` may be gone by now; one that is still there must be niced.
            if let Some(n) = niceness(kid) {
                assert_eq!(n, 7, "child {kid} of replica {pid}");
            }
        }
    }
    // The supervisor itself keeps its own priority.
    assert_eq!(niceness(a.pid() as i64), Some(0));
}
