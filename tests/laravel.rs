//! The Facturador workload end to end: the bundled Laravel demo app (Debian's
//! php-laravel-framework) behind the real front end, with real MariaDB, Redis,
//! php-fpm and the shipped pool of 8 `queue:work` workers.

mod common;
use common::http::{Resp, curl};
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(180);

/// The demo instance as the embedded default has it, plus `extra` (TOML
/// appended inside the instance: env, unit overrides).
fn config(extra: &str) -> String {
    format!(
        "[http]\ndefault_instance = \"demo\"\n\
         [[instance]]\nname = \"demo\"\ndomains = [\"localhost\", \"*.localhost\"]\n{extra}"
    )
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One of [`Demo::events`]: (unit, event, detail, unix ms).
type Event = (String, String, String, i64);

/// Where `unit`'s first `event` is in `order`; panics with the list if none.
fn first_event(order: &[Event], unit: &str, event: &str) -> usize {
    order
        .iter()
        .position(|(u, e, ..)| u == unit && e == event)
        .unwrap_or_else(|| panic!("no {unit} {event} event: {order:?}"))
}

struct Demo {
    a: Appliance,
}

impl Demo {
    fn start(extra: &str) -> Demo {
        require_programs(&["mariadbd", "redis-server", "php-fpm8.2", "php", "curl"]);
        assert!(
            std::path::Path::new("/usr/share/php/Illuminate/autoload.php").exists(),
            "Laravel is missing: apt-get install php-laravel-framework (scripts/setup.sh)"
        );
        let mut a = Appliance::new(Some(&config(extra)));
        a.start();
        a.wait_all_ready(READY);
        Demo { a }
    }

    /// [`Demo::start`] with a client that sends `GET /health` as soon as
    /// the front end accepts connections, while MariaDB and php-fpm are
    /// still starting: its answer, when it was sent and when it came (unix ms).
    fn start_with_an_early_client(extra: &str) -> (Demo, Resp, i64, i64) {
        require_programs(&["mariadbd", "redis-server", "php-fpm8.2", "php", "curl"]);
        let mut a = Appliance::new(Some(&config(extra)));
        a.start();
        let port = a.http_port;
        let early = std::thread::spawn(move || {
            let t0 = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(t0.elapsed() < READY, "the front end never listened");
                std::thread::sleep(Duration::from_millis(10));
            }
            let sent = unix_ms();
            let url = format!("http://127.0.0.1:{port}/health");
            (curl(&["-H", "Host: localhost", &url]), sent, unix_ms())
        });
        a.wait_all_ready(READY);
        let (r, sent, answered) = early.join().unwrap();
        (Demo { a }, r, sent, answered)
    }

    /// The instance's unit events in order: (unit, event, detail, unix ms).
    fn events(&self) -> Vec<Event> {
        let db = self.a.state_db();
        let mut q = db
            .prepare("SELECT unit, event, COALESCE(detail, ''), unix_ms FROM unit_events WHERE instance = 'demo' ORDER BY id")
            .unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    fn app(&self) -> PathBuf {
        self.a.data.join("instances/demo/app")
    }

    /// `applianced exec demo -- args...`; panics with the output on failure.
    fn exec(&self, args: &[&str]) -> String {
        let mut argv = vec!["exec", "demo", "--"];
        argv.extend_from_slice(args);
        let out = self.a.cli(&argv);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "exec {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn http(&self, host: &str, extra: &[&str], path: &str) -> Resp {
        let url = format!("http://127.0.0.1:{}{path}", self.a.http_port);
        let h = format!("Host: {host}");
        let mut args = vec!["-H", h.as_str()];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }

    /// POST /api/invoices on a tenant's subdomain; returns the new invoice.
    fn create_invoice(&self, tenant: &str, fields: &[&str]) -> Value {
        let host = format!("{tenant}.localhost");
        let mut extra = vec!["-H", "Accept: application/json"];
        for f in fields {
            extra.extend_from_slice(&["--data-urlencode", f]);
        }
        let r = self.http(&host, &extra, "/api/invoices");
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    }

    fn invoice(&self, tenant: &str, id: &Value) -> Value {
        let host = format!("{tenant}.localhost");
        let r = self.http(
            &host,
            &["-H", "Accept: application/json"],
            &format!("/api/invoices/{id}"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    fn wait_sent(&self, tenant: &str, id: &Value, within: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let inv = self.invoice(tenant, id);
            if inv["status"] == "sent" {
                return inv;
            }
            assert!(
                t0.elapsed() < within,
                "invoice {id} not sent after {within:?}: {inv}\nworker log:\n{}",
                self.a.log_lines("demo", "queue-worker").join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The worker log lines, with the replica that wrote each.
    fn worker_log(&self) -> Vec<(Option<u32>, String)> {
        let path = appliance::layout::Layout::new(&self.a.data).unit_log("demo", "queue-worker");
        appliance::logs::tail(&path, usize::MAX, 10)
            .into_iter()
            .map(|l| (l.replica, l.msg))
            .collect()
    }

    /// Wait until a worker logs that it started processing a job; its replica.
    fn wait_processing(&self, after_lines: usize) -> u32 {
        let t0 = Instant::now();
        loop {
            if let Some((Some(r), _)) = self
                .worker_log()
                .into_iter()
                .skip(after_lines)
                .find(|(_, m)| m.contains("Processing:"))
            {
                return r;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no worker picked up the job:\n{:?}",
                self.worker_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn workers(&self) -> Vec<Value> {
        self.a
            .status()
            .into_iter()
            .filter(|s| s["unit"] == "queue-worker")
            .collect()
    }

    /// `php artisan queue:work` processes of the instance user, from /proc.
    fn worker_processes(&self) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            if cmd.contains("artisan queue:work")
                && String::from_utf8_lossy(&env).contains(&self.a.data.display().to_string())
            {
                n += 1;
            }
        }
        n
    }

    /// Wait until every worker has installed Laravel's signal handlers
    /// (queue:work does it once Laravel has booted, which takes seconds on a
    /// loaded machine; a SIGTERM before that ends PHP by the default action).
    ///
    /// SigCgt's SIGTERM bit does not show it: PHP's own signal layer
    /// (zend_signal) catches SIGTERM in every PHP process from its start, and
    /// re-raises it with the default action while no handler is registered.
    /// SIGCONT is not one of zend_signal's, and Laravel's listenForSignals()
    /// registers it right after SIGTERM: its bit is the proof. (Checking the
    /// SIGTERM bit is what made this test flaky under load, 2026-12-02/03.)
    fn wait_workers_listening_for_sigterm(&self) {
        let t0 = Instant::now();
        const SIGCONT: u32 = 18;
        let catches_term = |pid: i64| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    let hex = s
                        .lines()
                        .find_map(|l| l.strip_prefix("SigCgt:"))?
                        .trim()
                        .to_string();
                    u64::from_str_radix(&hex, 16).ok()
                })
                .is_some_and(|mask| mask & (1 << (SIGCONT - 1)) != 0)
        };
        loop {
            let pids: Vec<i64> = self
                .workers()
                .iter()
                .filter_map(|s| s["pid"].as_i64())
                .collect();
            if !pids.is_empty() && pids.iter().all(|p| catches_term(*p)) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "workers without Laravel's signal handlers after 60 s: {pids:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_workers_running(&self, n: usize) {
        let t0 = Instant::now();
        while !(self.workers().len() == n
            && self.workers().iter().all(|s| s["state"] == "running")
            && self.worker_processes() == n)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "pool not at {n} running: {:?} ({} processes)",
                self.workers(),
                self.worker_processes()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_tenant_gets_its_own_database_and_its_invoices_are_signed_by_the_worker_pool_within_seconds() {
    // A seconds-level cron entry beside the shipped every-minute schedule-run.
    let (d, early, sent_at, early_at) = Demo::start_with_an_early_client(
        "[instance.cron.beat]\ncommand = \"php\"\nargs = [\"artisan\", \"facturador:heartbeat\"]\n\
         schedule = \"*/2 * * * * *\"\n",
    );
    d.wait_workers_running(8);

    // php-fpm started beside MariaDB (start_early), became ready only after
    // it and Redis, and warmed the app (GET / through public/index.php)
    // then; the queue workers started only after that.
    let order = d.events();
    let at = |unit: &str, event: &str| first_event(&order, unit, event);
    let fpm_ready = at("php-fpm", "ready");
    assert!(
        at("php-fpm", "start") < at("mariadb", "ready"),
        "php-fpm waited for MariaDB before it started: {order:?}"
    );
    assert!(fpm_ready > at("mariadb", "ready") && fpm_ready > at("redis", "ready"));
    assert!(
        order[fpm_ready].2.contains("warmed the app: GET / -> 200"),
        "php-fpm's ready line: {:?}",
        order[fpm_ready].2
    );
    // The client that came during the boot was held, not given a 502 or
    // the app's database error, and answered once php-fpm was ready.
    assert!(
        sent_at < order[fpm_ready].3,
        "the early client came after php-fpm was ready: the hold was not tested"
    );
    assert_eq!(early.status, 200, "{}", early.text());
    assert!(
        early_at >= order[fpm_ready].3,
        "answered at {early_at}, php-fpm ready at {}",
        order[fpm_ready].3
    );
    let first_worker = at("queue-worker", "start");
    assert!(
        first_worker > fpm_ready,
        "a worker started before php-fpm was ready: {order:?}"
    );

    // Operators' artisan commands run as the instance, with its environment.
    d.exec(&["php", "artisan", "migrate", "--force"]);
    let out = d.exec(&["php", "artisan", "tenant:create", "acme"]);
    assert!(out.contains("tenancy_acme"), "{out}");
    let dbs = d.exec(&[
        "sh",
        "-c",
        "mariadb -S \"$DB_SOCKET\" -u \"$DB_USERNAME\" -p\"$DB_PASSWORD\" -N -e 'SHOW DATABASES'",
    ]);
    assert!(dbs.lines().any(|l| l == "tenancy_acme"), "{dbs}");

    // The tenant is chosen by subdomain (the `*.localhost` vhost).
    let page = d.http("acme.localhost", &[], "/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Invoices of acme"), "{}", page.text());
    assert_eq!(d.http("nobody.localhost", &[], "/").status, 404);
    let central = d.http("localhost", &[], "/");
    assert!(central.text().contains("acme"), "{}", central.text());
    // Sessions live in Redis (db 2 in the app's config).
    let cookies = page.all("set-cookie");
    assert!(
        cookies.iter().any(|c| c.contains("_session=")),
        "{cookies:?}"
    );
    let sessions = d.exec(&[
        "sh",
        "-c",
        "redis-cli -s \"$REDIS_HOST\" --no-auth-warning -a \"$REDIS_PASSWORD\" -n 2 DBSIZE",
    ]);
    assert!(sessions.trim().parse::<u32>().unwrap() >= 1, "{sessions}");

    // An invoice is queued on Redis and signed by a worker.
    let t0 = Instant::now();
    let inv = d.create_invoice("acme", &["customer=Ñandú SAC", "amount=118.00"]);
    assert_eq!(inv["status"], "pending");
    let sent = d.wait_sent("acme", &inv["id"], Duration::from_secs(15));
    eprintln!("invoice signed {:?} after the POST", t0.elapsed());
    let hash = sent["hash"].as_str().unwrap();
    assert_eq!(hash.len(), 64, "{sent}");
    let xml = std::fs::read_to_string(d.app().join(sent["xml_path"].as_str().unwrap())).unwrap();
    assert!(xml.contains(hash) && xml.contains("Ñandú SAC"), "{xml}");

    // `scale` changes how many workers run, and back.
    assert!(
        d.a.cli(&["scale", "demo/queue-worker", "3"])
            .status
            .success()
    );
    d.wait_workers_running(3);
    assert!(
        d.a.cli(&["scale", "demo/queue-worker", "8"])
            .status
            .success()
    );
    d.wait_workers_running(8);
    let inv = d.create_invoice("acme", &["customer=After scaling", "amount=1"]);
    d.wait_sent("acme", &inv["id"], Duration::from_secs(15));

    // The scheduler ran the app's heartbeat as the instance: rows in MariaDB,
    // runs on record.
    let out = d.a.cli(&["--json", "jobs", "demo", "--entry", "beat"]);
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ok: Vec<&Value> = runs.iter().filter(|r| r["outcome"] == "ok").collect();
    assert!(!ok.is_empty(), "{runs:?}");
    assert!(
        ok.iter()
            .all(|r| r["output_tail"].as_str().unwrap().contains("heartbeat"))
    );
    // The shipped every-minute `schedule-run` is there for the bundled app.
    assert!(
        d.a.cli(&["jobs", "demo", "--entry", "schedule-run"])
            .status
            .success()
    );
    let health = d.http("localhost", &[], "/health").json();
    assert!(
        health["heartbeats"].as_u64().unwrap() >= ok.len() as u64,
        "{health}"
    );
}

#[test]
fn an_early_warm_up_runs_before_redis_is_ready_and_the_backend_warm_up_after_it() {
    // Redis held back 6 s by an extra start step (its own repair step kept):
    // php-fpm answers its ping long before, so an early warm-up of /up (which
    // reads neither MariaDB nor Redis) runs while Redis is still starting,
    // and the warm-up of /health (which reads both) once it is ready.
    let (d, early, _, early_at) = Demo::start_with_an_early_client(
        "[instance.web]\nwarm_up_early = \"/up\"\nwarm_up = \"/health\"\n\
         [[instance.units.redis.exec_start_pre]]\ncommand = \"{{ applianced }}\"\n\
         args = [\"repair-aof\", \"{{ instance_dir }}/redis/appendonlydir\"]\n\
         [[instance.units.redis.exec_start_pre]]\ncommand = \"sleep\"\nargs = [\"6\"]\n",
    );
    let order = d.events();
    let at = |unit: &str, event: &str| first_event(&order, unit, event);
    let fpm_ready = &order[at("php-fpm", "ready")];
    let note = &fpm_ready.2;
    let warmed = note
        .find("warmed the app: GET /up -> 200")
        .unwrap_or_else(|| panic!("php-fpm's ready line has no /up warm-up: {note}"));
    let waited = note
        .find("then waited for ")
        .filter(|&i| note[i..].contains("redis"))
        .unwrap_or_else(|| panic!("php-fpm did not wait for the held-back Redis: {note}"));
    assert!(
        note.contains("(up after") && warmed < waited,
        "the warm-up did not run before the wait for Redis: {note}"
    );
    let health = note
        .find("warmed the app: GET /health -> 200")
        .unwrap_or_else(|| panic!("php-fpm's ready line has no /health warm-up: {note}"));
    assert!(
        waited < health,
        "/health was warmed before Redis was ready: {note}"
    );
    // Still ready only after Redis, and the client held until then read both.
    assert!(fpm_ready.3 >= order[at("redis", "ready")].3, "{order:?}");
    assert_eq!(early.status, 200, "{}", early.text());
    assert_eq!(early.json()["redis"], "ok", "{}", early.text());
    assert!(early_at >= fpm_ready.3);
    // /up answers on any host without a tenant or a backend.
    let up = d.http("nosuch.localhost", &[], "/up");
    assert_eq!((up.status, up.text().trim()), (200, "ok"));
}

#[test]
fn a_worker_killed_mid_job_has_the_job_retried_and_the_pool_back_to_eight() {
    // A killed worker's job is retried once `retry_after` passes (Laravel's
    // default is 90 s; the app reads QUEUE_RETRY_AFTER).
    let d = Demo::start("[instance.env]\nQUEUE_RETRY_AFTER = \"6\"\n");
    d.wait_workers_running(8);
    d.exec(&["php", "artisan", "tenant:create", "beta"]);

    let seen = d.worker_log().len();
    let inv = d.create_invoice("beta", &["customer=Slow", "amount=5", "sleep=4"]);
    let replica = d.wait_processing(seen);
    let victim = d
        .workers()
        .into_iter()
        .find(|s| s["replica"] == replica)
        .unwrap();
    let pid = victim["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // The pool is whole again at once; the job comes back under --tries.
    d.wait_workers_running(8);
    let restarted = d
        .workers()
        .into_iter()
        .find(|s| s["replica"] == replica)
        .unwrap();
    assert_ne!(restarted["pid"], victim["pid"]);
    assert_eq!(restarted["last_exit"], "signal SIGKILL");
    assert_eq!(d.invoice("beta", &inv["id"])["status"], "pending");
    d.wait_sent("beta", &inv["id"], Duration::from_secs(30));
    let log = d.worker_log();
    assert!(
        log.iter()
            .any(|(_, m)| m.contains("SignInvoice: sent") && m.contains("\"attempt\":2")),
        "no second attempt logged: {log:?}"
    );
}

#[test]
fn stopping_the_pool_waits_for_the_job_in_flight_up_to_timeout_stop_sec() {
    let d = Demo::start("[instance.units.queue-worker]\ntimeout_stop_sec = 5\n");
    d.wait_workers_running(8);
    d.exec(&["php", "artisan", "tenant:create", "gamma"]);
    d.wait_workers_listening_for_sigterm();

    // A 2 s job in flight: the stop waits for it, and it completes.
    let seen = d.worker_log().len();
    let inv = d.create_invoice("gamma", &["customer=Short", "amount=1", "sleep=2"]);
    d.wait_processing(seen);
    // Again: a worker restarted since the first check would die by the
    // default action (the assertion below prints every event if so).
    d.wait_workers_listening_for_sigterm();
    let t0 = Instant::now();
    assert!(d.a.cli(&["stop", "demo/queue-worker"]).status.success());
    let waited = t0.elapsed();
    assert_eq!(d.invoice("gamma", &inv["id"])["status"], "sent");
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(5),
        "stop took {waited:?}"
    );
    assert!(d.workers().iter().all(|s| s["state"] == "inactive"));
    let stopped: Vec<_> =
        d.a.events("queue-worker")
            .into_iter()
            .filter(|(e, ..)| e == "stopped")
            .collect();
    assert_eq!(stopped.len(), 8);
    assert!(
        stopped.iter().all(|(_, _, code, ..)| *code == Some(0)),
        "a worker did not exit cleanly on SIGTERM: {stopped:?}; all events: {:?}",
        d.a.events("queue-worker")
    );

    // A job longer than timeout_stop_sec: SIGKILL after 5 s, the job stays
    // pending (it is retried after the next start).
    assert!(d.a.cli(&["start", "demo/queue-worker"]).status.success());
    d.wait_workers_running(8);
    let seen = d.worker_log().len();
    let inv = d.create_invoice("gamma", &["customer=Long", "amount=1", "sleep=30"]);
    d.wait_processing(seen);
    // Again: a worker restarted since the first check would die by the
    // default action (the assertion below prints every event if so).
    d.wait_workers_listening_for_sigterm();
    let t0 = Instant::now();
    assert!(d.a.cli(&["stop", "demo/queue-worker"]).status.success());
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(10),
        "stop took {waited:?}"
    );
    assert_eq!(d.invoice("gamma", &inv["id"])["status"], "pending");
    let log = d.a.log_lines("demo", "queue-worker");
    assert!(
        log.iter()
            .any(|m| m.contains("SIGKILL to the process group")),
        "{log:?}"
    );
}
