//! The cron scheduler, end to end: real runs of real commands under the real
//! daemon, read back through `applianced jobs --json` and the state database.
//! No MariaDB/Redis/php-fpm: the instances run cron entries only.

mod common;
use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// An appliance with one instance `t` and these `[instance.cron.X]` tables.
/// `@DIR@/shared` is a directory every user may write (for lock files).
/// The bundled demo app is Laravel, so the shipped `schedule-run` would be on;
/// these tests want only their own entries (and have no database for it).
const NO_SCHEDULE_RUN: &str = "[instance.cron.schedule-run]\nenabled = false\n";

fn cron_appliance(cron: &str) -> Appliance {
    require_programs(&["sh", "sleep", "id"]);
    let cfg = format!(
        "[http]\nenabled = false\n[[instance]]\nname = \"t\"\nenv = {{ GREETING = \"hola\" }}\n\
         {NO_DEFAULT_UNITS}{NO_SCHEDULE_RUN}{cron}"
    );
    let mut a = Appliance::new(Some(&cfg));
    let shared = a.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    a.start();
    a
}

/// `applianced jobs --json ARGS...`
fn jobs(a: &Appliance, args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["jobs", "--json", "-n", "1000"];
    argv.extend_from_slice(args);
    let out = a.cli(&argv);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Poll `jobs` until `pred` holds for the runs, or fail with what was seen.
fn wait_runs(a: &Appliance, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let runs = jobs(a, &[]);
        if pred(&runs) {
            return runs;
        }
        assert!(
            t0.elapsed() < timeout,
            "runs did not reach the expected state in {timeout:?}: {}\n{}",
            serde_json::to_string_pretty(&runs).unwrap(),
            a.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn of<'a>(runs: &'a [Value], entry: &str, outcome: &str) -> Vec<&'a Value> {
    runs.iter()
        .filter(|r| r["entry"] == entry && r["outcome"] == outcome)
        .collect()
}

fn ms(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Start a run now; returns its id.
fn trigger(a: &Appliance, entry: &str) -> i64 {
    let out = a.cli(&["jobs", "t", "--run", entry, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fired"]["result"], "started", "{v}");
    ms(&v["fired"]["run"])
}

/// Wait for the control socket to answer.
fn wait_up(a: &Appliance) {
    let t0 = Instant::now();
    while !a.cli(&["jobs"]).status.success() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "applianced never answered\n{}",
            a.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

const NEVER: &str = "schedule = \"0 0 1 1 *\"\n";

#[test]
fn a_seconds_schedule_fires_on_each_second_boundary_and_records_every_run() {
    let a = cron_appliance(
        "[instance.cron.tick]\ncommand = \"sh\"\n\
         args = [\"-c\", \"echo tick-$APPLIANCE_CRON_RUN; echo to-stderr >&2\"]\n\
         schedule = \"* * * * * *\"\n",
    );
    let runs = wait_runs(&a, Duration::from_secs(15), |r| {
        of(r, "tick", "ok").len() >= 5
    });
    let ok = of(&runs, "tick", "ok");
    let mut drifts = Vec::new();
    for r in &ok {
        let scheduled = ms(&r["scheduled_unix_ms"]);
        let started = ms(&r["started_unix_ms"]);
        assert_eq!(scheduled % 1000, 0, "fires on a second boundary: {r}");
        assert_eq!(ms(&r["drift_ms"]), started - scheduled, "{r}");
        assert!(
            (0..500).contains(&(started - scheduled)),
            "started within 500 ms of its fire time, never early: {r}"
        );
        drifts.push(started - scheduled);
        assert_eq!(r["exit_code"], 0, "{r}");
        assert_eq!(r["trigger"], "schedule", "{r}");
        assert!(ms(&r["ended_unix_ms"]) >= started, "{r}");
        let tail = r["output_tail"].as_str().unwrap();
        assert!(tail.contains(&format!("tick-{}", r["id"])), "{r}");
        assert!(tail.contains("to-stderr"), "stderr is kept too: {r}");
    }
    // One run per second, none missed and none doubled.
    for w in ok.windows(2) {
        assert_eq!(
            ms(&w[1]["scheduled_unix_ms"]) - ms(&w[0]["scheduled_unix_ms"]),
            1000,
            "{} then {}",
            w[0],
            w[1]
        );
    }
    drifts.sort();
    eprintln!(
        "fire drift over {} runs (ms): min {} median {} max {}",
        drifts.len(),
        drifts[0],
        drifts[drifts.len() / 2],
        drifts[drifts.len() - 1]
    );
    // The output is also in the instance's `cron` log, and the table reads.
    let lines = a.log_lines("t", "cron");
    assert!(lines.iter().any(|l| l == "tick-1"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("run 1 of tick ok")),
        "{lines:?}"
    );
    let table = a.cli(&["jobs", "t", "--entry", "tick", "-n", "2"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.starts_with("INSTANCE  ENTRY"), "{text}");
    assert!(text.lines().nth(1).unwrap().contains(" ok "), "{text}");
}

#[test]
fn overlap_skip_never_runs_two_at_once_and_records_the_skipped_fires() {
    let a = cron_appliance(
        "[instance.cron.slow]\ncommand = \"sh\"\nschedule = \"* * * * * *\"\n\
         environment = { S = \"@DIR@/shared\" }\n\
         args = [\"-c\", \"if mkdir $S/lock; then sleep 2.2; rmdir $S/lock; else touch $S/overlapped; fi\"]\n\
         [instance.cron.pile]\ncommand = \"sh\"\nschedule = \"* * * * * *\"\noverlap = \"allow\"\n\
         environment = { S = \"@DIR@/shared\" }\n\
         args = [\"-c\", \"touch $S/p.$APPLIANCE_CRON_RUN; sleep 2.2; echo together=$(ls $S | grep -c '^p[.]'); rm $S/p.$APPLIANCE_CRON_RUN\"]\n",
    );
    let runs = wait_runs(&a, Duration::from_secs(20), |r| {
        of(r, "slow", "ok").len() >= 2 && of(r, "slow", "skipped").len() >= 3
    });
    let shared = a.dir.path().join("shared");
    assert!(
        !shared.join("overlapped").exists(),
        "two runs of `slow` held the lock at once"
    );
    // Started runs never overlap in time; the fires in between were skipped.
    let started: Vec<&Value> = runs
        .iter()
        .filter(|r| r["entry"] == "slow" && r["outcome"] != "skipped")
        .collect();
    for w in started.windows(2) {
        if let Some(end) = w[0]["ended_unix_ms"].as_i64() {
            assert!(
                ms(&w[1]["started_unix_ms"]) >= end,
                "{} overlaps {}",
                w[1],
                w[0]
            );
        }
    }
    for s in of(&runs, "slow", "skipped") {
        assert!(s["pid"].is_null(), "{s}");
        assert!(s["detail"].as_str().unwrap().contains("still going"), "{s}");
    }
    // overlap = allow did run several at once (so the check above can fail).
    let piled = of(&runs, "pile", "ok");
    assert!(
        piled.iter().any(|r| {
            let t = r["output_tail"].as_str().unwrap();
            t.trim()
                .strip_prefix("together=")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= 2)
        }),
        "{piled:?}"
    );
    assert!(of(&runs, "pile", "skipped").is_empty());
}

#[test]
fn a_run_past_its_timeout_is_terminated_with_its_process_group_and_recorded_as_timeout() {
    let a = cron_appliance(&format!(
        "[instance.cron.hang]\ncommand = \"sh\"\nargs = [\"-c\", \"echo started; sleep 30; echo never\"]\n\
         timeout = \"1s\"\n{NEVER}"
    ));
    wait_up(&a);
    let id = trigger(&a, "hang");
    let runs = wait_runs(&a, Duration::from_secs(15), |r| {
        !of(r, "hang", "timeout").is_empty()
    });
    let r = of(&runs, "hang", "timeout")[0];
    assert_eq!(ms(&r["id"]), id);
    assert_eq!(r["trigger"], "manual");
    assert_eq!(r["signal"], "SIGTERM", "{r}");
    assert!(r["exit_code"].is_null(), "{r}");
    let took = ms(&r["duration_ms"]);
    assert!((950..4000).contains(&took), "stopped after ~1 s: {r}");
    let tail = r["output_tail"].as_str().unwrap();
    assert!(tail.contains("started") && !tail.contains("never"), "{r}");
    // The `sleep` in its process group went with it.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(a.leftover_processes(), Vec::<i32>::new());
}

#[test]
fn runs_are_the_instance_users_with_its_env_in_the_app_dir_unless_the_entry_says_otherwise() {
    let a = cron_appliance(&format!(
        "[instance.cron.whoami]\ncommand = \"sh\"\n\
         args = [\"-c\", \"echo $(id -un) $GREETING $(pwd) $APPLIANCE_CRON_ENTRY\"]\n{NEVER}\
         [instance.cron.as-nobody]\ncommand = \"sh\"\nuser = \"nobody\"\nworking_directory = \"/\"\n\
         args = [\"-c\", \"echo $(id -un) $GREETING $(pwd) $APPLIANCE_CRON_ENTRY\"]\n{NEVER}"
    ));
    wait_up(&a);
    let first = trigger(&a, "whoami");
    let second = trigger(&a, "as-nobody");
    assert!(second > first);
    let runs = wait_runs(&a, Duration::from_secs(10), |r| {
        of(r, "whoami", "ok").len() == 1 && of(r, "as-nobody", "ok").len() == 1
    });
    let app = a.data.join("instances/t/app");
    assert_eq!(
        of(&runs, "whoami", "ok")[0]["output_tail"],
        format!("app-t hola {} whoami\n", app.display())
    );
    assert_eq!(
        of(&runs, "as-nobody", "ok")[0]["output_tail"],
        "nobody hola / as-nobody\n"
    );
    // Names that do not exist are refused clearly.
    let out = a.cli(&["jobs", "t", "--run", "nope"]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("instance `t` has no cron entry `nope`; entries: as-nobody, whoami"),
        "{err}"
    );
    let out = a.cli(&["jobs", "zzz"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown instance `zzz`; instances: t"));
}

#[test]
fn after_a_crash_the_cut_off_run_is_lost_and_missed_fires_are_not_replayed() {
    let mut a = cron_appliance(
        "[instance.cron.tick]\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 30\"]\nschedule = \"* * * * * *\"\n",
    );
    let runs = wait_runs(&a, Duration::from_secs(10), |r| {
        !of(r, "tick", "running").is_empty() && !of(r, "tick", "skipped").is_empty()
    });
    let cut_off = ms(&of(&runs, "tick", "running")[0]["id"]);
    // A power cut, as far as applianced is concerned.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    a.wait_exit(Duration::from_secs(10));
    let crashed = appliance::state::now_unix_ms();
    std::thread::sleep(Duration::from_millis(2500));
    let restarted = appliance::state::now_unix_ms();
    a.start();
    let runs = wait_runs(&a, Duration::from_secs(10), |r| {
        r.iter()
            .any(|x| ms(&x["scheduled_unix_ms"]) > restarted + 1000)
    });
    let lost = runs.iter().find(|r| ms(&r["id"]) == cut_off).unwrap();
    assert_eq!(lost["outcome"], "lost", "{lost}");
    // Nothing was fired for the seconds applianced was down.
    let replayed: Vec<&Value> = runs
        .iter()
        .filter(|r| {
            let s = ms(&r["scheduled_unix_ms"]);
            s > crashed && s < restarted
        })
        .collect();
    assert!(replayed.is_empty(), "replayed: {replayed:?}");
    // After the restart: one fire per second, on the schedule.
    let after: Vec<&Value> = runs
        .iter()
        .filter(|r| ms(&r["scheduled_unix_ms"]) >= restarted)
        .collect();
    assert!(after.len() <= 3, "a burst after restart: {after:?}");
    assert!(after.iter().all(|r| r["trigger"] == "schedule"));
}

#[test]
fn shutdown_interrupts_an_in_flight_run_at_once_and_records_it_stopped() {
    let mut a = cron_appliance(&format!(
        "[instance.cron.long]\ncommand = \"sh\"\nargs = [\"-c\", \"echo begun; sleep 30\"]\n{NEVER}"
    ));
    wait_up(&a);
    let id = trigger(&a, "long");
    wait_runs(&a, Duration::from_secs(10), |r| {
        of(r, "long", "running").len() == 1
    });
    let t0 = Instant::now();
    assert_eq!(a.terminate(Duration::from_secs(20)), 0);
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        t0.elapsed()
    );
    let (outcome, signal, tail): (String, Option<String>, String) = a
        .state_db()
        .query_row(
            "SELECT outcome, signal, output_tail FROM cron_runs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(outcome, "stopped");
    assert_eq!(signal.as_deref(), Some("SIGTERM"));
    assert_eq!(tail, "begun\n");
    assert_eq!(a.leftover_processes(), Vec::<i32>::new());
}
