//! The real stack under applianced: MariaDB, Redis and php-fpm from Debian.

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

fn stack_config(app: &std::path::Path) -> String {
    format!(
        "[[instance]]\nname = \"shop\"\napp_dir = \"{}\"\n",
        app.display()
    )
}

/// Instance `shop` with the stack-app fixture, started and all ready.
fn start_shop(programs: &[&str]) -> (Appliance, std::path::PathBuf) {
    require_programs(programs);
    let mut a = Appliance::new(None);
    let app = a.fixture_app("stack-app");
    std::fs::write(a.dir.path().join("appliance.toml"), stack_config(&app)).unwrap();
    a.config = Some(a.dir.path().join("appliance.toml"));
    a.start();
    a.wait_all_ready(Duration::from_secs(120));
    (a, app)
}

#[test]
fn cold_start_brings_every_unit_ready_and_php_reads_mariadb_and_redis_with_provisioned_secrets() {
    let (a, app) = start_shop(&["mariadbd", "redis-server", "php-fpm8.2", "cgi-fcgi"]);
    let st = a.status();
    let units: Vec<&str> = st
        .iter()
        .filter(|s| s["ready"] == true)
        .map(|s| s["unit"].as_str().unwrap())
        .collect();
    assert_eq!(units, ["mariadb", "redis", "php-fpm"]);
    // The shipped pool of 8 queue workers is skipped: this app has no artisan.
    let workers: Vec<&Value> = st.iter().filter(|s| s["unit"] == "queue-worker").collect();
    assert_eq!(workers.len(), 8);
    assert!(
        workers.iter().all(|s| s["state"] == "skipped"),
        "{workers:?}"
    );

    // Write through `exec`, which runs as the instance user with the app's env.
    let out = a.cli(&[
        "exec", "shop", "--", "sh", "-c",
        "mariadb -S \"$DB_SOCKET\" -u \"$DB_USERNAME\" -p\"$DB_PASSWORD\" \"$DB_DATABASE\" \
         -e \"CREATE TABLE probe (id INT PRIMARY KEY, note TEXT); INSERT INTO probe VALUES (1, 'from-mariadb-42')\" && \
         redis-cli -s \"$REDIS_HOST\" --no-auth-warning -a \"$REDIS_PASSWORD\" SET probe:key from-redis-17",
    ]);
    assert!(
        out.status.success(),
        "exec failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let run = a.data.join("instances/shop/run");
    let body = fastcgi_get(&run.join("php-fpm.sock"), &app.join("public/check.php"), "");
    assert!(body.contains("row=from-mariadb-42"), "{body}");
    assert!(body.contains("key=from-redis-17"), "{body}");
    assert!(
        body.contains("user=app-shop"),
        "php-fpm must run as the instance user: {body}"
    );

    // Unix sockets only: MariaDB skips networking, Redis has port 0.
    let out = a.cli(&["exec", "shop", "--", "sh", "-c",
        "mariadb -S \"$DB_SOCKET\" -u \"$DB_USERNAME\" -p\"$DB_PASSWORD\" -N -e \"SELECT @@skip_networking\"; \
         redis-cli -s \"$REDIS_HOST\" --no-auth-warning -a \"$REDIS_PASSWORD\" CONFIG GET port"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["1", "port", "0"],
        "{text}"
    );

    // Secrets: one 0600 file, not readable by the app user.
    use std::os::unix::fs::PermissionsExt;
    let secrets = a.data.join("secrets/shop.env");
    assert_eq!(
        std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&secrets).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("DB_PASSWORD=") && l.len() > 20),
        "{text}"
    );
}

#[test]
fn kill_9_of_each_daemon_is_detected_restarted_and_ready_again() {
    require_programs(&["mariadbd", "redis-server", "php-fpm8.2"]);
    let mut a = Appliance::new(None);
    a.start();
    a.wait_all_ready(Duration::from_secs(120));
    for unit in ["mariadb", "redis", "php-fpm"] {
        let before = a.unit("demo", unit);
        let pid = before["pid"].as_i64().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let after = a.wait_unit("demo", unit, Duration::from_secs(60), |s| {
            s["ready"] == true && s["pid"].as_i64().is_some_and(|p| p != pid)
        });
        assert_eq!(after["restarts"], 1, "{after}");
        assert_eq!(after["last_exit"], "signal SIGKILL", "{after}");
        let ev = a.events(unit);
        assert!(
            ev.iter().any(|(e, p, _, sig, _)| e == "exit"
                && *p == Some(pid)
                && sig.as_deref() == Some("SIGKILL")),
            "state db must record the SIGKILL exit of {unit}: {ev:?}"
        );
        assert!(ev.iter().any(|(e, ..)| e == "restart"), "{ev:?}");
        assert_eq!(
            ev.iter().filter(|(e, ..)| e == "ready").count(),
            2,
            "{ev:?}"
        );
    }
    // The killed php-fpm master's orphaned workers must not outlive it: every
    // php-fpm process left belongs to the new master's process group.
    let master = a.unit("demo", "php-fpm")["pid"].as_i64().unwrap() as i32;
    let fpm: Vec<_> = appliance::process::scan::find(&a.data)
        .into_iter()
        .filter(|l| l.unit == "demo/php-fpm")
        .collect();
    assert!(fpm.len() > 1, "master and workers expected: {fpm:?}");
    assert!(
        fpm.iter().all(|l| l.pgid == master),
        "a php-fpm process of the killed group survived: {fpm:?}"
    );
}

/// What a power cut leaves on ext4 (seen in the VM power-cut test): Redis's
/// append-only file ending in NUL bytes, which Redis refuses to load. The
/// redis unit cuts that tail before starting, and the data before it stays.
#[test]
fn redis_starts_after_a_power_cut_left_its_append_only_file_ending_in_nul_bytes() {
    let (mut a, _app) = start_shop(&["mariadbd", "redis-server", "php-fpm8.2", "redis-cli"]);
    // redis-cli as the instance user with the app's environment.
    let redis = |a: &Appliance, cmd: &str| {
        let script =
            format!("redis-cli -s \"$REDIS_HOST\" --no-auth-warning -a \"$REDIS_PASSWORD\" {cmd}");
        a.cli(&["exec", "shop", "--", "sh", "-c", &script])
    };
    let out = redis(&a, "SET kept before-the-cut");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.terminate(Duration::from_secs(60)), 0);

    let aof_dir = a.data.join("instances/shop/redis/appendonlydir");
    let incr = std::fs::read_dir(&aof_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .expect("an .incr.aof file");
    let good = std::fs::read(&incr).unwrap();
    assert!(String::from_utf8_lossy(&good).contains("before-the-cut"));
    let mut damaged = good.clone();
    damaged.extend(std::iter::repeat_n(0u8, 3000));
    std::fs::write(&incr, &damaged).unwrap();
    // Without the repair this is exactly what Redis refuses.
    let (code, check) = sh(&format!(
        "redis-check-aof {} 2>&1 | tail -3",
        incr.display()
    ));
    assert_eq!(code, 0);
    assert!(
        !check.contains("is valid"),
        "redis-check-aof should reject it: {check}"
    );

    a.start();
    a.wait_all_ready(Duration::from_secs(120));
    assert_eq!(
        std::fs::read(&incr).unwrap(),
        good,
        "only the NUL tail goes"
    );
    let out = redis(&a, "GET kept");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "before-the-cut"
    );
    let log = a.log_lines("shop", "redis").join("\n");
    assert!(
        log.contains("cut 3000 NUL bytes"),
        "the repair is logged: {log}"
    );
    assert_eq!(
        a.unit("shop", "redis")["restarts"],
        0,
        "{}",
        a.diagnostics()
    );
}

#[test]
fn each_instances_mariadb_has_its_own_tmpdir_so_one_starting_never_deletes_anothers_temp_files() {
    // mariadbd deletes every `#sql*` file in its tmpdir as it starts. With a
    // shared /tmp, one instance's MariaDB starting (a first bootstrap, a
    // restart) pulled the temp tables from under another's running queries:
    // side-by-side first starts failed with `Unknown table
    // 'mysql.tmp_user_sys'` about one time in six.
    require_programs(&["mariadbd", "mariadb-install-db", "mariadb"]);
    let names = ["s1", "s2", "s3", "s4"];
    let cfg: String = names
        .iter()
        .map(|n| format!("[[instance]]\nname = \"{n}\"\n{MARIADB_ONLY}"))
        .collect();
    let mut a = Appliance::new(None);
    std::fs::write(a.dir.path().join("appliance.toml"), cfg).unwrap();
    a.config = Some(a.dir.path().join("appliance.toml"));
    a.start();
    let st = a.wait_all_ready(Duration::from_secs(180));
    assert_eq!(st.len(), names.len(), "{st:?}");
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        let sock = a.data.join(format!("instances/{n}/run/mariadb.sock"));
        let out = std::process::Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "-N", "-B"])
            .arg(format!("--socket={}", sock.display()))
            .arg("--execute=SELECT @@tmpdir")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tmpdir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let own = a.data.join(format!("instances/{n}/mariadb-tmp"));
        assert_eq!(std::path::Path::new(&tmpdir), own, "{n}'s tmpdir");
        assert!(own.is_dir(), "{}", own.display());
        seen.insert(tmpdir);
    }
    assert_eq!(seen.len(), names.len(), "one tmpdir each: {seen:?}");
}
