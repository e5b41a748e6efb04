//! Prometheus metrics: what `/metrics` on the admin listener serves.
//!
//! Each scrape gathers a fresh [`Families`]: from the modules that own the
//! facts (the supervisor's unit status and cgroup usage, the front end's
//! request counters, the scheduler's run counters, the backups' last runs,
//! the data partition), and from the children themselves: php-fpm's status
//! page, MariaDB's `SHOW GLOBAL STATUS`, Redis's `INFO` and queue lengths.
//! Nothing is sampled between scrapes, so an idle appliance does no work
//! for metrics, and a scrape costs one status read per child.
//!
//! It only reads: it never changes a unit or a child. Children are asked
//! concurrently with [`SOURCE_TIMEOUT`] each, so one stuck child costs a
//! scrape at most that long, and shows as `phpfpm_up`, `mysql_up` or
//! `redis_up` 0; a child whose unit is not running and ready is not asked.
//!
//! Labels: `app` is the applianced instance (`[[instance]] name`). It is not
//! `instance`, because Prometheus sets that label to the scrape target.

pub mod encode;
pub mod history;
mod host;
mod mariadb;
mod phpfpm;
mod redis;

pub use encode::Families;

use crate::backup::Backups;
use crate::front::FrontEnd;
use crate::layout::Layout;
use crate::scheduler::Scheduler;
use crate::supervisor::{Appliance, UnitState};
use encode::labels;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long one child may take to answer a scrape.
pub const SOURCE_TIMEOUT: Duration = Duration::from_secs(2);

/// Every state a unit can be in, for `applianced_unit_state`.
const STATES: [UnitState; 9] = [
    UnitState::Inactive,
    UnitState::Waiting,
    UnitState::Starting,
    UnitState::Running,
    UnitState::Stopping,
    UnitState::Backoff,
    UnitState::Failed,
    UnitState::Exited,
    UnitState::Skipped,
];

/// What a scrape reads from.
pub struct Metrics {
    pub appliance: Arc<Appliance>,
    pub scheduler: Arc<Scheduler>,
    pub backups: Arc<Backups>,
    pub front: Option<Arc<FrontEnd>>,
    pub layout: Layout,
    pub logs: Arc<crate::logs::LogHub>,
    /// For the dashboard's recent unit trouble (read-only queries).
    pub state: crate::state::StateDb,
    /// The dashboard's history, when the admin listener runs.
    pub history: Option<Arc<history::History>>,
}

/// Where a child of an instance is.
enum Target<T> {
    /// The instance has no such unit: no series.
    Absent,
    /// Its unit is not running and ready: `*_up 0`, nothing asked.
    Down(String),
    Up(T),
}

/// The children of one instance.
struct Children {
    app: String,
    php: Target<PathBuf>,
    mariadb: Target<PathBuf>,
    redis: Target<(PathBuf, Option<String>)>,
}

impl<T> Target<T> {
    /// Ask an up child with `read`; a down one is an error without asking.
    async fn ask<'a, R, F>(&'a self, read: impl FnOnce(&'a T) -> F) -> Option<Result<R, String>>
    where
        F: std::future::Future<Output = Result<R, String>>,
    {
        match self {
            Target::Absent => None,
            Target::Down(why) => Some(Err(why.clone())),
            // Each reader applies the timeout per step; this bounds the whole.
            Target::Up(t) => Some(
                tokio::time::timeout(SOURCE_TIMEOUT * 2, read(t))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {:?}", SOURCE_TIMEOUT * 2))),
            ),
        }
    }
}

impl Metrics {
    /// One scrape.
    pub async fn gather(&self) -> Families {
        let mut f = Families::new();
        // One status read serves the unit series and which children to ask.
        let status = self.appliance.status();
        self.units(&mut f, &status);
        self.usage(&mut f);
        self.http(&mut f);
        self.tls(&mut f);
        self.children(&mut f, &status).await;
        self.cron(&mut f);
        self.backups(&mut f);
        self.shipping(&mut f);
        host::add_filesystem(&mut f, self.layout.data_dir());
        host::add_process(&mut f);
        f
    }

    /// One history sample's readings per instance: requests, 5xx and
    /// latency from the front end, CPU and memory from the cgroups.
    pub fn readings(&self) -> Vec<(String, history::Reading)> {
        let mut out: std::collections::BTreeMap<String, history::Reading> = Default::default();
        if let Some(front) = &self.front {
            for (app, s) in front.http_stats() {
                if app.is_empty() {
                    continue;
                }
                let r = out.entry(app).or_default();
                r.requests = s.count;
                r.errors = s
                    .by_class
                    .iter()
                    .find(|(c, _)| *c == "5xx")
                    .map_or(0, |(_, n)| *n);
                r.latency_sum_s = s.sum_seconds;
            }
        }
        for u in self.appliance.usage_tree() {
            let r = out.entry(u.instance).or_default();
            r.cpu_usec = Some(u.total.cpu_usec);
            r.memory_bytes = u.total.memory_bytes;
        }
        out.into_iter().collect()
    }

    fn units(&self, f: &mut Families, status: &[crate::supervisor::UnitStatus]) {
        for s in status {
            let l = || {
                labels(&[
                    ("app", &s.instance),
                    ("unit", &s.unit),
                    ("replica", &s.replica.to_string()),
                ])
            };
            f.gauge(
                "applianced_unit_up",
                "1 when the unit's process is running (ready or not yet).",
                l(),
                f64::from(u8::from(matches!(
                    s.state,
                    UnitState::Running | UnitState::Starting
                ))),
            );
            f.gauge(
                "applianced_unit_ready",
                "1 when the unit passed its readiness check.",
                l(),
                f64::from(u8::from(s.ready)),
            );
            for state in STATES {
                let mut sl = l();
                sl.push(("state".into(), state.as_str().into()));
                f.gauge(
                    "applianced_unit_state",
                    "1 for the unit's current state, 0 for the others.",
                    sl,
                    f64::from(u8::from(s.state == state)),
                );
            }
            f.counter(
                "applianced_unit_restarts",
                "Automatic restarts since applianced started.",
                l(),
                f64::from(s.restarts),
            );
            if let Some(ms) = s.started_ms {
                f.gauge(
                    "applianced_unit_start_time_seconds",
                    "When the unit's current process started, unix time.",
                    l(),
                    ms as f64 / 1000.0,
                );
            }
        }
    }

    fn usage(&self, f: &mut Families) {
        for crate::supervisor::InstanceUsage {
            instance: app,
            total,
            units,
        } in self.appliance.usage_tree()
        {
            let l = || labels(&[("app", &app)]);
            f.counter(
                "applianced_instance_cpu_seconds",
                "CPU time of every process of the instance (its cgroup).",
                l(),
                total.cpu_usec as f64 / 1e6,
            );
            if let Some(m) = total.memory_bytes {
                f.gauge(
                    "applianced_instance_memory_bytes",
                    "Memory of the instance (memory.current; without the memory controller, its processes' RSS summed).",
                    l(),
                    m as f64,
                );
            }
            f.gauge(
                "applianced_instance_pids",
                "Processes and threads in the instance's cgroup.",
                l(),
                total.pids as f64,
            );
            for (unit, u) in units {
                let ul = || labels(&[("app", &app), ("unit", &unit)]);
                f.counter(
                    "applianced_unit_cpu_seconds",
                    "CPU time of the unit's processes, every replica together.",
                    ul(),
                    u.cpu_usec as f64 / 1e6,
                );
                if let Some(m) = u.memory_bytes {
                    f.gauge(
                        "applianced_unit_memory_bytes",
                        "Memory of the unit's processes, every replica together.",
                        ul(),
                        m as f64,
                    );
                }
            }
        }
    }

    fn http(&self, f: &mut Families) {
        let Some(front) = &self.front else { return };
        for (app, s) in front.http_stats() {
            // Requests for no known host (421) are app "".
            for (class, n) in &s.by_class {
                f.counter(
                    "applianced_http_requests",
                    "Requests answered, by status class (0xx: no response).",
                    labels(&[("app", &app), ("code", class)]),
                    *n as f64,
                );
            }
            f.histogram(
                "applianced_http_request_duration_seconds",
                "Time from the request head to the end of the response.",
                labels(&[("app", &app)]),
                s.sum_seconds,
                s.count,
                s.buckets.clone(),
            );
            f.counter(
                "applianced_http_response_bytes",
                "Response body bytes sent.",
                labels(&[("app", &app)]),
                s.bytes as f64,
            );
            for (kind, n) in &s.upstream_errors {
                f.counter(
                    "applianced_http_upstream_errors",
                    "PHP requests answered with our error page: php-fpm failed (502) or timed out (504).",
                    labels(&[("app", &app), ("kind", kind)]),
                    *n as f64,
                );
            }
        }
    }

    fn tls(&self, f: &mut Families) {
        let Some(front) = &self.front else { return };
        for (app, file, not_after) in front.cert_expiries() {
            if let Some(t) = not_after {
                f.gauge(
                    "applianced_tls_certificate_expiry_timestamp_seconds",
                    "When the certificate expires (notAfter), unix time.",
                    labels(&[("app", &app), ("file", &file.display().to_string())]),
                    t as f64,
                );
            }
        }
    }

    /// Each instance's children, and whether their units are up.
    fn targets(&self, status: &[crate::supervisor::UnitStatus]) -> Vec<Children> {
        let php_sockets = self
            .front
            .as_ref()
            .map(|f| f.php_sockets())
            .unwrap_or_default();
        self.appliance
            .instance_names()
            .into_iter()
            .map(|app| {
                let target = |unit: &str, path: PathBuf| {
                    let mut replicas = status
                        .iter()
                        .filter(|s| s.instance == app && s.unit == unit)
                        .peekable();
                    if replicas.peek().is_none() {
                        return Target::Absent;
                    }
                    match replicas.find(|s| !(s.state == UnitState::Running && s.ready)) {
                        Some(s) => Target::Down(format!("unit {unit} is {}", s.state.as_str())),
                        None => Target::Up(path),
                    }
                };
                let run = self.layout.instance_run_dir(&app);
                let php_socket = php_sockets
                    .iter()
                    .find(|(a, _)| *a == app)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_else(|| run.join("php-fpm.sock"));
                let redis = match target("redis", run.join("redis.sock")) {
                    Target::Up(socket) => {
                        let password = self
                            .appliance
                            .provisioned(&app)
                            .and_then(|p| p.secrets.get("REDIS_PASSWORD").cloned());
                        Target::Up((socket, password))
                    }
                    Target::Down(why) => Target::Down(why),
                    Target::Absent => Target::Absent,
                };
                Children {
                    php: target("php-fpm", php_socket),
                    mariadb: target("mariadb", run.join("mariadb.sock")),
                    redis,
                    app,
                }
            })
            .collect()
    }

    async fn children(&self, f: &mut Families, status: &[crate::supervisor::UnitStatus]) {
        let asks = self.targets(status).into_iter().map(|c| async move {
            let (php, db, redis) = tokio::join!(
                c.php.ask(|s| phpfpm::read(s, SOURCE_TIMEOUT)),
                c.mariadb.ask(|s| mariadb::read(s, SOURCE_TIMEOUT)),
                c.redis
                    .ask(|(s, p)| redis::read(s, p.as_deref(), SOURCE_TIMEOUT)),
            );
            (c.app, php, db, redis)
        });
        for (app, php, db, redis) in futures_util::future::join_all(asks).await {
            if let Some(r) = php {
                log_failure(&app, "php-fpm", &r);
                phpfpm::add(f, &app, &r);
            }
            if let Some(r) = db {
                log_failure(&app, "mariadb", &r);
                mariadb::add(f, &app, &r);
            }
            if let Some(r) = redis {
                log_failure(&app, "redis", &r);
                redis::add(f, &app, &r);
            }
        }
    }

    fn cron(&self, f: &mut Families) {
        for c in self.scheduler.entry_counts() {
            let l = || labels(&[("app", &c.instance), ("entry", &c.entry)]);
            f.counter(
                "applianced_cron_runs",
                "Runs of the cron entry that ended since applianced started.",
                l(),
                c.runs as f64,
            );
            f.counter(
                "applianced_cron_failures",
                "Runs that failed, timed out or were lost.",
                l(),
                c.failures as f64,
            );
            f.counter(
                "applianced_cron_skipped",
                "Fires skipped because the previous run was still going.",
                l(),
                c.skipped as f64,
            );
            f.gauge(
                "applianced_cron_running",
                "Runs of the entry going now.",
                l(),
                c.running as f64,
            );
            if let Some(ms) = c.last_success_unix_ms {
                f.gauge(
                    "applianced_cron_last_success_timestamp_seconds",
                    "When a run of the entry last succeeded, unix time.",
                    l(),
                    ms as f64 / 1000.0,
                );
            }
        }
    }

    fn shipping(&self, f: &mut Families) {
        for s in self.logs.ship_stats() {
            let l = || labels(&[("sink", &s.name)]);
            f.counter(
                "applianced_log_ship_sent_lines",
                "Log lines the sink accepted.",
                l(),
                s.sent as f64,
            );
            f.counter(
                "applianced_log_ship_dropped_lines",
                "Log lines dropped because the sink's buffer was full.",
                l(),
                s.dropped as f64,
            );
            f.counter(
                "applianced_log_ship_failures",
                "Failed sends (the lines stay queued and are retried).",
                l(),
                s.failures as f64,
            );
            f.gauge(
                "applianced_log_ship_buffered_bytes",
                "Bytes of lines waiting for the sink (bounded by its buffer_kib).",
                l(),
                s.buffered_bytes as f64,
            );
        }
    }

    fn backups(&self, f: &mut Families) {
        for (last, ok) in self.backups.last_runs() {
            let Some(any) = last.as_ref().or(ok.as_ref()) else {
                continue;
            };
            let l = || labels(&[("app", &any.instance), ("kind", &any.kind)]);
            if let Some(r) = &last {
                f.gauge(
                    "applianced_backup_last_run_ok",
                    "1 when the last backup (kind=backup) or test restore succeeded.",
                    l(),
                    f64::from(u8::from(r.status == "ok")),
                );
            }
            let Some(ok) = &ok else { continue };
            if let Some(ms) = ok.ended_unix_ms {
                f.gauge(
                    "applianced_backup_last_success_timestamp_seconds",
                    "When the last successful run ended, unix time.",
                    l(),
                    ms as f64 / 1000.0,
                );
            }
            if let Some(ms) = ok.duration_ms {
                f.gauge(
                    "applianced_backup_last_success_duration_seconds",
                    "How long the last successful run took.",
                    l(),
                    ms as f64 / 1000.0,
                );
            }
            if let Some(b) = ok.size_bytes {
                f.gauge(
                    "applianced_backup_last_success_size_bytes",
                    "Bytes stored by the last successful backup.",
                    l(),
                    b as f64,
                );
            }
        }
    }
}

fn log_failure<T>(app: &str, child: &str, r: &Result<T, String>) {
    if let Err(e) = r {
        tracing::debug!(instance = app, child, error = %e, "metrics: child did not answer");
    }
}
