//! Issue #6 acceptance in the VM, where applianced is PID 1 and owns a full
//! cgroup v2 tree (this host is a hybrid v1/v2 machine without v2
//! controllers): two instances of the bundled Facturador app on one
//! appliance, isolated from each other, with A's fork bomb and memory hog
//! contained by its `pids.max` and `memory.max` while B keeps answering.
//!
//! One boot serves every check (TCG boots are slow); nextest runs it in the
//! `vm` group, one VM at a time.
mod common;

use common::qemu::{Firmware, Vm, boot, http_once};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const DATA: &str = "/var/lib/applianced";
const CG: &str = "/sys/fs/cgroup/applianced";
const PIDS_MAX: u64 = 300;

const CONFIG: &str = r#"data_dir = "/var/lib/applianced"
[http]
listen = ["0.0.0.0:80"]
tls_listen = ["0.0.0.0:443"]

[[instance]]
name = "a"
domains = ["a.test", "*.a.test"]
[instance.limits]
pids_max = 300
memory_max = "700M"
cpu_weight = 100
[instance.units.queue-worker]
replicas = 1

[[instance]]
name = "b"
domains = ["b.test", "*.b.test"]
[instance.units.queue-worker]
replicas = 1
"#;

/// PHP run in instance A (`applianced exec a -- php`): what it can reach of
/// its own instance and of B's. Signal 0 checks permission without harm.
const PROBE: &str = r#"<?php
$b_pid = (int) $argv[1];
$out = [];
$out['own_file'] = @file_get_contents('/var/lib/applianced/instances/a/app/public/index.php') !== false;
$out['b_file'] = @file_get_contents('/var/lib/applianced/instances/b/app/public/index.php') !== false;
$out['b_secrets'] = @file_get_contents('/var/lib/applianced/secrets/b.env') !== false;
$db = function ($sock) {
    try {
        new PDO("mysql:unix_socket=$sock;dbname=" . getenv('DB_DATABASE'), getenv('DB_USERNAME'), getenv('DB_PASSWORD'));
        return 'connected';
    } catch (Throwable $e) {
        return $e->getMessage();
    }
};
$out['own_db'] = $db(getenv('DB_SOCKET'));
$out['b_db'] = $db('/var/lib/applianced/instances/b/run/mariadb.sock');
$redis = function ($sock) {
    $s = @stream_socket_client("unix://$sock", $errno, $errstr, 2);
    return $s ? 'connected' : "$errstr ($errno)";
};
$out['own_redis'] = $redis(getenv('REDIS_HOST'));
$out['b_redis'] = $redis('/var/lib/applianced/instances/b/run/redis.sock');
$out['signal_b'] = posix_kill($b_pid, 0);
$out['signal_b_errno'] = posix_get_last_error();
echo json_encode($out), "\n";
"#;

/// Forks (exec'ing `sleep 60`) until 1000 children or 20 failures: a fork
/// bomb with a brake, so a broken limit fails the test instead of the host.
const FORK_BOMB: &str = r#"<?php
$n = 0; $fail = 0;
for ($i = 0; $i < 1000 && $fail < 20; $i++) {
    $p = @pcntl_fork();
    if ($p === 0) { pcntl_exec('/bin/sleep', ['60']); exit(1); }
    if ($p < 0) { $fail++; usleep(20000); continue; }
    $n++;
}
echo json_encode(['forked' => $n, 'failed' => $fail]), "\n";
"#;

const MEMORY_HOG: &str = r#"<?php
$a = [];
while (true) { $a[] = str_repeat('x', 1 << 20); }
"#;

fn json(body: &str) -> Value {
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Put a file into the guest (root-owned, world-readable).
fn put(vm: &Vm, path: &str, content: &str) {
    vm.ssh_ok(&format!(
        "cat > {path} <<'APPLIANCE_EOF'\n{content}\nAPPLIANCE_EOF\nchmod 644 {path}"
    ));
}

fn read_u64(vm: &Vm, path: &str) -> u64 {
    vm.ssh_ok(&format!("cat {path}"))
        .trim()
        .parse()
        .unwrap_or(0)
}

fn keyed(vm: &Vm, path: &str, key: &str) -> u64 {
    vm.ssh_ok(&format!("cat {path}"))
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or(0)
}

/// GETs of B's health page, one after another, while `busy` holds: every
/// status, and the latencies in ms.
fn load_b(vm: &Vm, busy: &AtomicBool) -> (Vec<u16>, Vec<f64>) {
    let (mut codes, mut ms) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    while busy.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(120) {
        let (code, t) = load_once(vm);
        codes.push(code);
        ms.push(t);
    }
    (codes, ms)
}

fn p99(ms: &[f64]) -> f64 {
    let mut v = ms.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Run `cmd` in the guest over SSH on a thread while B is loaded; returns
/// the command's (exit code, output) and B's statuses and latencies.
fn while_loading_b(vm: &Arc<Vm>, cmd: String) -> ((i32, String), Vec<u16>, Vec<f64>) {
    let busy = Arc::new(AtomicBool::new(true));
    let loader = {
        let (vm, busy) = (vm.clone(), busy.clone());
        std::thread::spawn(move || load_b(&vm, &busy))
    };
    // Let B's baseline requests start first.
    std::thread::sleep(Duration::from_millis(500));
    let out = vm.ssh(&cmd);
    // Keep measuring B a little after A's burst ends.
    std::thread::sleep(Duration::from_secs(2));
    busy.store(false, Ordering::SeqCst);
    let (codes, ms) = loader.join().unwrap();
    (out, codes, ms)
}

#[test]
fn vm_two_instances_are_isolated_and_a_fork_bomb_and_memory_hog_in_one_leave_the_other_serving() {
    let vm = Arc::new(boot(Firmware::Bios, "isolated", Some(CONFIG)));

    // Two instances, two domains, two databases: the same tenant name holds
    // different data in each.
    for inst in ["a", "b"] {
        let h = json(&vm.get_200(&format!("{inst}.test"), "/health"));
        assert_eq!(h["mariadb"], "ok", "{inst}: {h}");
        let out = vm.ssh_ok(&format!(
            "applianced exec {inst} -- php artisan tenant:create shop"
        ));
        assert!(out.contains("shop"), "{inst}: tenant:create: {out}");
    }
    let (code, body) = http_once(
        "POST",
        "shop.a.test",
        &vm.url("/api/invoices"),
        &[("customer", "only-in-a"), ("amount", "118")],
    );
    assert_eq!(code, 201, "{body}");
    let list_a = vm.get_200("shop.a.test", "/api/invoices");
    let list_b = vm.get_200("shop.b.test", "/api/invoices");
    assert!(list_a.contains("only-in-a"), "{list_a}");
    assert!(
        !list_b.contains("only-in-a"),
        "B sees A's invoice: {list_b}"
    );

    // Each instance has its own user, 0700 dirs and cgroup.
    let ls = vm.ssh_ok(&format!(
        "stat -c '%U %a' {DATA}/instances/a {DATA}/instances/b"
    ));
    assert_eq!(ls.trim(), "app-a 700\napp-b 700", "{ls}");
    assert_eq!(read_u64(&vm, &format!("{CG}/a/pids.max")), PIDS_MAX);
    assert_eq!(
        read_u64(&vm, &format!("{CG}/a/memory.max")),
        700 << 20,
        "memory.max"
    );
    // Within an instance, the shipped queue workers' leaf is weighted down
    // (units/queue-worker.toml, cpu_weight = 20) against php-fpm's default.
    assert_eq!(
        read_u64(&vm, &format!("{CG}/a/queue-worker/cpu.weight")),
        20
    );
    assert_eq!(read_u64(&vm, &format!("{CG}/a/php-fpm/cpu.weight")), 100);

    // The machine's own units are not an instance to stop whole (SSH would go).
    let (code, out) = vm.ssh("applianced instance stop system");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("machine's own units"), "{out}");

    // PHP in A cannot read B's files, reach B's sockets or signal B.
    let status: Vec<Value> = serde_json::from_str(&vm.ssh_ok("applianced status --json")).unwrap();
    let b_fpm = status
        .iter()
        .find(|s| s["instance"] == "b" && s["unit"] == "php-fpm")
        .and_then(|s| s["pid"].as_i64())
        .expect("b/php-fpm pid");
    put(&vm, "/probe.php", PROBE);
    let probe = json(&vm.ssh_ok(&format!("applianced exec a -- php /probe.php {b_fpm}")));
    assert_eq!(
        probe["own_file"], true,
        "control: A reads its own app: {probe}"
    );
    assert_eq!(
        probe["own_db"], "connected",
        "control: A's own MariaDB: {probe}"
    );
    assert_eq!(
        probe["own_redis"], "connected",
        "control: A's own Redis: {probe}"
    );
    assert_eq!(probe["b_file"], false, "A read B's app: {probe}");
    assert_eq!(probe["b_secrets"], false, "A read B's secrets: {probe}");
    assert!(
        probe["b_db"]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "A reached B's MariaDB: {probe}"
    );
    assert!(
        probe["b_redis"]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "A reached B's Redis: {probe}"
    );
    assert_eq!(probe["signal_b"], false, "A may signal B: {probe}");
    assert_eq!(probe["signal_b_errno"], 1, "EPERM expected: {probe}");

    // B's baseline latency, A idle.
    let (mut codes, mut base_ms) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        let (c, ms) = load_once(&vm);
        codes.push(c);
        base_ms.push(ms);
    }
    assert!(codes.iter().all(|c| *c == 200), "B idle: {codes:?}");

    // A fork bomb in A stops at pids.max; B keeps answering.
    put(&vm, "/bomb.php", FORK_BOMB);
    let ((code, out), codes, bomb_ms) =
        while_loading_b(&vm, "applianced exec a -- php /bomb.php".into());
    assert_eq!(code, 0, "fork bomb run: {out}");
    // stdout and stderr come back together; the JSON line is the result.
    let bomb = json(out.lines().find(|l| l.starts_with('{')).unwrap_or(&out));
    assert!(
        bomb["failed"].as_u64().unwrap() > 0,
        "forks never failed: {bomb}"
    );
    assert!(
        bomb["forked"].as_u64().unwrap() < PIDS_MAX,
        "more forks than pids.max: {bomb}"
    );
    let current = read_u64(&vm, &format!("{CG}/a/pids.current"));
    assert!(current <= PIDS_MAX, "pids.current {current}");
    // Linux 6.1 counts the refused forks in the forking task's own cgroup
    // (a/exec); later kernels also in the cgroup whose limit was hit (a).
    let refused = keyed(&vm, &format!("{CG}/a/pids.events"), "max ")
        + keyed(&vm, &format!("{CG}/a/exec/pids.events"), "max ");
    assert!(refused > 0, "no refused fork recorded in pids.events");
    assert!(
        codes.iter().all(|c| *c == 200),
        "B during A's fork bomb: {codes:?}"
    );
    vm.ssh_ok(&format!("echo 1 > {CG}/a/exec/cgroup.kill"));

    // A memory hog in A is OOM-killed inside A's memory.max; B keeps answering.
    put(&vm, "/hog.php", MEMORY_HOG);
    let ((code, out), codes, hog_ms) = while_loading_b(
        &vm,
        "applianced exec a -- php -d memory_limit=-1 /hog.php".into(),
    );
    assert_eq!(
        code, 137,
        "the hog must be SIGKILLed by the OOM killer: {out}"
    );
    assert!(
        keyed(&vm, &format!("{CG}/a/memory.events"), "oom_kill ") > 0,
        "no OOM kill recorded in A's memory.events"
    );
    assert!(
        codes.iter().all(|c| *c == 200),
        "B during A's memory hog: {codes:?}"
    );
    // B's own services were never touched.
    let h = json(&vm.get_200("b.test", "/health"));
    assert_eq!(h["mariadb"], "ok", "{h}");
    assert_eq!(h["redis"], "ok", "{h}");

    instance_add_and_remove_at_runtime(&vm);

    eprintln!(
        "vm_isolation: B's /health p99: idle {:.1} ms ({} requests), during A's fork bomb {:.1} ms ({}), during A's memory hog {:.1} ms ({})",
        p99(&base_ms),
        base_ms.len(),
        p99(&bomb_ms),
        bomb_ms.len(),
        p99(&hog_ms),
        hog_ms.len()
    );
}

/// `instance add c` then `instance remove c` while A and B run: C serves
/// its own stack; after the remove nothing of C runs, no user, cgroup or
/// socket is left, and B's units were never restarted.
fn instance_add_and_remove_at_runtime(vm: &Vm) {
    let b_units = || -> Vec<(String, i64)> {
        let st: Vec<Value> = serde_json::from_str(&vm.ssh_ok("applianced status --json")).unwrap();
        st.iter()
            .filter(|u| u["instance"] == "b")
            .map(|u| {
                (
                    u["unit"].as_str().unwrap_or("").to_string(),
                    u["pid"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    };
    let before = b_units();
    let out = vm.ssh_ok("applianced instance add c --domain c.test 2>&1");
    assert!(out.contains("c: added"), "{out}");
    let cfg = vm.ssh_ok(&format!("cat {DATA}/instances/system/appliance.toml"));
    assert!(
        cfg.contains("name = \"c\""),
        "recorded in the config: {cfg}"
    );
    let h = json(&vm.get_200("c.test", "/health"));
    assert_eq!(h["instance"], "c", "{h}");
    assert_eq!(h["mariadb"], "ok", "{h}");
    assert_eq!(h["redis"], "ok", "{h}");
    assert!(
        !vm.ssh_ok(&format!("cat {CG}/c/cgroup.procs {CG}/c/*/cgroup.procs"))
            .trim()
            .is_empty()
    );
    let uid = vm.ssh_ok("id -u app-c").trim().to_string();

    let out = vm.ssh_ok("applianced instance remove c 2>&1");
    assert!(
        out.contains("c: removed") && out.contains("final backup"),
        "{out}"
    );
    let (code, _) = http_once("GET", "c.test", &vm.url("/health"), &[]);
    assert_eq!(code, 421, "c.test is no longer routed");
    let (code, out) = vm.ssh("id app-c");
    assert_ne!(code, 0, "user app-c left: {out}");
    let (_, procs) = vm.ssh(&format!("ps -o pid=,comm= -u {uid}"));
    assert!(procs.trim().is_empty(), "processes of app-c left: {procs}");
    let (code, _) = vm.ssh(&format!("test -e {CG}/c"));
    assert_ne!(code, 0, "cgroup of c left");
    let socks = vm.ssh_ok(&format!("find {DATA} -type s"));
    assert!(
        !socks.contains("/instances/c/"),
        "sockets of c left: {socks}"
    );
    // The seed's config (the file this appliance runs on) lost c again.
    let cfg = vm.ssh_ok(&format!("cat {DATA}/instances/system/appliance.toml"));
    assert!(
        cfg.contains("name = \"b\"") && !cfg.contains("name = \"c\""),
        "{cfg}"
    );
    assert_eq!(b_units(), before, "B's units were not restarted");
    let h = json(&vm.get_200("b.test", "/health"));
    assert_eq!(h["mariadb"], "ok", "{h}");
}

fn load_once(vm: &Vm) -> (u16, f64) {
    let t = Instant::now();
    let (code, _) = http_once("GET", "b.test", &vm.url("/health"), &[]);
    (code, t.elapsed().as_secs_f64() * 1000.0)
}
