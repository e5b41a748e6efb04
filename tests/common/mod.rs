//! Test harness: runs the real `applianced` binary on a private data dir and
//! drives it through its CLI, the way an operator would.
//!
//! Nothing is mocked: units are the real mariadbd, redis-server and php-fpm8.2
//! from Debian. A missing program fails the test with the install command.
#![allow(dead_code)]

pub mod front;
pub mod http;
pub mod qemu;

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `(event, pid, exit_code, signal, detail)` of one state-db row.
pub type EventRow = (
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

pub const BIN: &str = env!("CARGO_BIN_EXE_applianced");

/// Config fragment that disables the shipped units, for tests that only
/// need custom units (fast, no database).
pub const NO_DEFAULT_UNITS: &str = "
[instance.units.mariadb]
enabled = false
[instance.units.redis]
enabled = false
[instance.units.php-fpm]
enabled = false
[instance.units.queue-worker]
enabled = false
";

/// Config fragment for an instance that runs MariaDB alone.
pub const MARIADB_ONLY: &str = "
[instance.units.redis]
enabled = false
[instance.units.php-fpm]
enabled = false
[instance.units.queue-worker]
enabled = false
";

/// Config fragment for an instance that runs php-fpm alone (no MariaDB or
/// Redis): enough for front-end tests, and fast.
pub const PHP_FPM_ONLY: &str = "
[instance.units.mariadb]
enabled = false
[instance.units.redis]
enabled = false
[instance.units.php-fpm]
requires = []
[instance.units.queue-worker]
enabled = false
";

/// `applianced check-config` on `config` must fail; its stderr.
pub fn config_error(config: &str) -> String {
    let a = Appliance::new(Some(config));
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(a.config.as_ref().unwrap())
        .output()
        .expect("run applianced check-config");
    assert!(!out.status.success(), "the config was accepted:\n{config}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fail (never skip) when a real component is missing.
pub fn require_programs(progs: &[&str]) {
    let missing: Vec<&str> = progs
        .iter()
        .copied()
        .filter(|p| appliance::plan::find_program(p).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "missing programs {missing:?}: install them with `bash scripts/test.sh` (it apt-installs mariadb-server redis-server php8.2-fpm php8.2-mysql php8.2-redis libfcgi-bin)"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run applianced as root (user switching); run them as root"
    );
}

pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub config: Option<PathBuf>,
    child: Option<Child>,
    pub stderr: PathBuf,
    /// The front end's loopback ports, chosen free per appliance so tests run
    /// in parallel (set through `APPLIANCE_HTTP__LISTEN` / `__TLS_LISTEN`).
    pub http_port: u16,
    pub https_port: u16,
}

impl Appliance {
    /// A fresh temp dir (0711 so instance users can traverse it) with `config`
    /// written to `appliance.toml` (`None`: the embedded default).
    pub fn new(config: Option<&str>) -> Appliance {
        let dir = tempfile::Builder::new()
            .prefix("ad-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let config = config.map(|c| {
            let p = dir.path().join("appliance.toml");
            std::fs::write(&p, c.replace("@DIR@", &dir.path().display().to_string())).unwrap();
            p
        });
        let data = dir.path().join("data");
        let stderr = dir.path().join("applianced.stderr");
        Appliance {
            dir,
            data,
            config,
            child: None,
            stderr,
            http_port: free_port(),
            https_port: free_port(),
        }
    }

    /// Copy `tests/fixtures/NAME` into the temp dir (readable by instance users)
    /// and return its path, for `app_dir`.
    pub fn fixture_app(&self, name: &str) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let dst = self.dir.path().join(name);
        copy_tree(&src, &dst);
        dst
    }

    pub fn start(&mut self) -> &mut Self {
        let log = std::fs::File::create(&self.stderr).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("--data-dir")
            .arg(&self.data)
            .env("APPLIANCE_LOG_LEVEL", "info")
            .env(
                "APPLIANCE_HTTP__LISTEN",
                format!("[\"127.0.0.1:{}\"]", self.http_port),
            )
            .env(
                "APPLIANCE_HTTP__TLS_LISTEN",
                format!("[\"127.0.0.1:{}\"]", self.https_port),
            )
            .stdout(Stdio::null())
            .stderr(log);
        cmd.env_remove("APPLIANCE_CONFIG");
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        } else {
            // The embedded default's admin listener (127.0.0.1:9180), moved
            // to a free port so appliances run in parallel.
            cmd.env(
                "APPLIANCE_ADMIN__LISTEN",
                format!("[\"127.0.0.1:{}\"]", free_port()),
            );
        }
        self.child = Some(cmd.spawn().expect("spawn applianced"));
        self
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("not started").id() as i32
    }

    /// Run a CLI subcommand against this appliance.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .output()
            .expect("run applianced CLI")
    }

    pub fn status(&self) -> Vec<Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    pub fn unit(&self, instance: &str, unit: &str) -> Value {
        self.status()
            .into_iter()
            .find(|s| s["instance"] == instance && s["unit"] == unit)
            .unwrap_or(Value::Null)
    }

    /// Poll until `pred` holds for the unit's status, or fail with the last status
    /// and the daemon's stderr.
    pub fn wait_unit(
        &self,
        instance: &str,
        unit: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let t0 = Instant::now();
        loop {
            let st = self.unit(instance, unit);
            if pred(&st) {
                return st;
            }
            if t0.elapsed() > timeout {
                panic!(
                    "{instance}/{unit} did not reach the expected state in {timeout:?}; last: {st}\n{}",
                    self.diagnostics()
                );
            }
            self.assert_alive();
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn wait_all_ready(&self, timeout: Duration) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let st = self.status();
            // `skipped`: a unit whose condition does not hold (the queue
            // workers of an app without artisan) is settled, not pending.
            if !st.is_empty()
                && st
                    .iter()
                    .all(|s| s["ready"] == true || s["state"] == "skipped")
            {
                return st;
            }
            // `failed` means the start limit was hit: waiting on is pointless.
            let gave_up = st.iter().any(|s| s["state"] == "failed");
            if gave_up || t0.elapsed() > timeout {
                panic!(
                    "not all units ready after {:?}: {}\n{}",
                    t0.elapsed(),
                    serde_json::to_string_pretty(&st).unwrap(),
                    self.diagnostics()
                );
            }
            self.assert_alive();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_alive(&self) {
        // An exited, not yet reaped child is a zombie: state 'Z' in /proc.
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or("Z");
        if state == "Z" {
            panic!("applianced exited early\n{}", self.diagnostics());
        }
    }

    /// The daemon's stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let mut out = format!(
            "--- applianced stderr (last 40 lines) ---\n{}",
            last_lines(&err, 40)
        );
        // The captured output of every unit that is not ready says why.
        for s in self.status() {
            if s["ready"] == true || s["state"] == "skipped" {
                continue;
            }
            let (Some(i), Some(u)) = (s["instance"].as_str(), s["unit"].as_str()) else {
                continue;
            };
            let log = self.data.join("logs").join(i).join(format!("{u}.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            out.push_str(&format!(
                "\n--- {} (last 30 lines) ---\n{}",
                log.display(),
                last_lines(&text, 30)
            ));
        }
        out
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> i32 {
        let mut child = self.child.take().expect("not started");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if t0.elapsed() > timeout {
                let _ = child.kill();
                panic!(
                    "applianced did not exit within {timeout:?} of SIGTERM\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the daemon to exit by itself (after `applianced shutdown`).
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let mut child = self.child.take().expect("not started");
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                t0.elapsed() < timeout,
                "applianced did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn state_db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data.join("state.db")).unwrap()
    }

    /// `(event, pid, exit_code, signal, detail)` rows of one unit, oldest first.
    pub fn events(&self, unit: &str) -> Vec<EventRow> {
        let db = self.state_db();
        let mut stmt = db
            .prepare("SELECT event, pid, exit_code, signal, detail FROM unit_events WHERE unit = ?1 ORDER BY id")
            .unwrap();
        stmt.query_map([unit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
    }

    /// Processes (not zombies) still carrying this data dir's scope marker.
    pub fn leftover_processes(&self) -> Vec<i32> {
        appliance::process::scan::find(&self.data)
            .into_iter()
            .map(|l| l.pid)
            .collect()
    }

    /// The unit's captured log lines (messages only), read from disk so it works
    /// while the daemon is down.
    pub fn log_lines(&self, instance: &str, unit: &str) -> Vec<String> {
        let path = appliance::layout::Layout::new(&self.data).unit_log(instance, unit);
        appliance::logs::tail(&path, usize::MAX, 10)
            .into_iter()
            .map(|l| l.msg)
            .collect()
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Run a shell command, returning (exit code, stdout).
pub fn sh(cmd: &str) -> (i32, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Send one FastCGI GET to php-fpm with the real `cgi-fcgi` client.
pub fn fastcgi_get(socket: &Path, script: &Path, query: &str) -> String {
    let out = Command::new("cgi-fcgi")
        .args(["-bind", "-connect"])
        .arg(socket)
        .env_clear()
        .env("SCRIPT_FILENAME", script)
        .env(
            "SCRIPT_NAME",
            format!("/{}", script.file_name().unwrap().to_string_lossy()),
        )
        .env("REQUEST_METHOD", "GET")
        .env("QUERY_STRING", query)
        .output()
        .expect("run cgi-fcgi (apt-get install libfcgi-bin)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let tail: Vec<&str> = text.lines().rev().take(n).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
