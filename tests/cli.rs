//! The operator's CLI: exec, start/stop/restart, logs, and clear errors for
//! names that do not exist.

mod common;
use common::*;
use std::time::Duration;

fn small(extra: &str) -> Appliance {
    let cfg = format!(
        "[[instance]]\nname = \"t\"\nenv = {{ GREETING = \"hola\" }}\n{NO_DEFAULT_UNITS}\
         [instance.units.web]\ncommand = \"sleep\"\nargs = [\"1000\"]\n{extra}"
    );
    let mut a = Appliance::new(Some(&cfg));
    a.start();
    a.wait_unit("t", "web", Duration::from_secs(20), |s| s["ready"] == true);
    a
}

#[test]
fn exec_runs_as_the_instance_user_with_its_env_and_passes_the_exit_code_through() {
    require_programs(&["sh", "id"]);
    let a = small("");
    let out = a.cli(&[
        "exec",
        "t",
        "--",
        "sh",
        "-c",
        "echo \"$(id -un) $GREETING $DB_USERNAME $(pwd)\"; exit 7",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let app = a.data.join("instances/t/app");
    assert_eq!(text.trim(), format!("app-t hola t {}", app.display()));
    // A command killed by a signal reports 128 + N, like a shell.
    let out = a.cli(&["exec", "t", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(143));
}

#[test]
fn unknown_instances_and_units_give_a_clear_error_and_nonzero_exit() {
    let a = small("");
    let out = a.cli(&["exec", "nope", "--", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown instance `nope`; instances: t"));
    for verb in ["start", "stop", "restart", "logs"] {
        let out = a.cli(&[verb, "t/nope"]);
        assert_ne!(out.status.code(), Some(0), "{verb}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("instance `t` has no unit `nope`; units: web"),
            "{verb}: {err}"
        );
    }
    let out = a.cli(&["stop", "--json", "bogus"]);
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn stop_start_and_restart_drive_a_unit_and_status_json_shows_it() {
    let a = small(
        "[instance.units.api]\ncommand = \"sleep\"\nargs = [\"1000\"]\nrequires = [\"web\"]\n",
    );
    a.wait_unit("t", "api", Duration::from_secs(20), |s| s["ready"] == true);
    // Stopping `web` first stops `api`, which requires it.
    let out = a.cli(&["stop", "--json", "t/web"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(a.unit("t", "web")["state"], "inactive");
    assert_eq!(a.unit("t", "api")["state"], "inactive");
    assert!(a.events("api").iter().any(|(e, ..)| e == "stopped"));
    // Starting `api` brings up `web` first.
    assert!(a.cli(&["start", "t/api"]).status.success());
    a.wait_unit("t", "api", Duration::from_secs(20), |s| s["ready"] == true);
    assert_eq!(a.unit("t", "web")["ready"], true);
    let before = a.unit("t", "web")["pid"].clone();
    assert!(a.cli(&["restart", "t/web"]).status.success());
    let after = a.wait_unit("t", "web", Duration::from_secs(20), |s| s["ready"] == true);
    assert_ne!(after["pid"], before);
    // Operator restarts are not crash restarts.
    assert_eq!(after["restarts"], 0);
}

#[test]
fn logs_shows_the_last_lines_and_follow_streams_new_ones() {
    require_programs(&["sh"]);
    let a = small(
        "[instance.units.talker]\ncommand = \"sh\"\nargs = [\"-c\", \"i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.1; done\"]\n",
    );
    a.wait_unit("t", "talker", Duration::from_secs(20), |s| {
        s["ready"] == true
    });
    std::thread::sleep(Duration::from_millis(800));
    let out = a.cli(&["logs", "-n", "3", "t/talker"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines().all(|l| l.contains("t/talker stdout: tick-")),
        "{text}"
    );
    // -f: new lines keep arriving.
    let mut child = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&a.data)
        .args(["logs", "-f", "-n", "0", "--json", "t/talker"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    use std::io::BufRead;
    while seen.len() < 3 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.push(v["msg"].as_str().unwrap().to_string());
    }
    child.kill().unwrap();
    let _ = child.wait();
    let n: Vec<u64> = seen
        .iter()
        .map(|m| m.trim_start_matches("tick-").parse().unwrap())
        .collect();
    assert!(n[0] < n[1] && n[1] < n[2], "{seen:?}");
}

#[test]
fn logs_filter_by_level_text_and_time_and_follow_applies_the_filters() {
    require_programs(&["sh"]);
    // One line of each level every 0.1 s, in the forms real servers use.
    let a = small(
        "[instance.units.talker]\ncommand = \"sh\"\nargs = [\"-c\", \
         \"i=0; while true; do i=$((i+1)); echo \\\"[03-Dec-2026 08:00:00] NOTICE: fine $i\\\"; \
         echo \\\"2026-12-03  8:00:00 0 [Warning] careful $i\\\" >&2; \
         echo \\\"PHP Fatal error:  boom $i\\\" >&2; echo \\\"plain $i\\\"; sleep 0.1; done\"]\n",
    );
    a.wait_unit("t", "talker", Duration::from_secs(20), |s| {
        s["ready"] == true
    });
    std::thread::sleep(Duration::from_millis(800));
    let json_lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["--json", "logs"];
        all.extend_from_slice(args);
        let out = a.cli(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // The level is stored with each line.
    let warn_up = json_lines(&["-n", "6", "--level", "warn", "t/talker"]);
    assert_eq!(warn_up.len(), 6);
    assert!(
        warn_up
            .iter()
            .all(|l| l["level"] == "warn" || l["level"] == "error"),
        "{warn_up:?}"
    );
    assert!(warn_up.iter().any(|l| l["level"] == "error"));
    let errors = json_lines(&["-n", "3", "--level", "error", "t/talker"]);
    assert!(
        errors
            .iter()
            .all(|l| l["msg"].as_str().unwrap().contains("boom")),
        "{errors:?}"
    );
    // Text, any case.
    let careful = json_lines(&["-n", "4", "--grep", "CAREFUL", "t/talker"]);
    assert_eq!(careful.len(), 4);
    assert!(
        careful
            .iter()
            .all(|l| l["msg"].as_str().unwrap().contains("careful"))
    );
    // Time: nothing after a future --since, everything before a future --until.
    assert!(json_lines(&["--since", "2099-01-01T00:00:00Z", "t/talker"]).is_empty());
    assert_eq!(
        json_lines(&["-n", "5", "--until", "2099-01-01T00:00:00Z", "t/talker"]).len(),
        5
    );
    let recent = json_lines(&["-n", "1000", "--since", "1s", "t/talker"]);
    assert!(!recent.is_empty() && recent.len() < 100, "{}", recent.len());
    // A bad filter is a clear CLI error.
    let out = a.cli(&["logs", "--level", "loud", "t/talker"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("debug, info, warn or error"));
    let out = a.cli(&["logs", "--since", "yesterday-ish", "t/talker"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a time"));
    // -f with a filter: only matching lines arrive.
    let mut child = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(&a.data)
        .args([
            "logs", "-f", "-n", "0", "--json", "--level", "error", "t/talker",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    use std::io::BufRead;
    for _ in 0..3 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "error", "{v}");
    }
    child.kill().unwrap();
    let _ = child.wait();
}
