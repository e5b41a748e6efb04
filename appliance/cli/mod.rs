//! The command line: `applianced run` starts the daemon; every other
//! subcommand is a client of its control socket. Output is a table for people,
//! or JSON with `--json`.

use crate::config;
use crate::control::client::Client;
use crate::control::{Reply, Request};
use crate::layout::Layout;
use crate::logs::LogLine;
use crate::plan;
use crate::supervisor::{ExecSpec, InstanceSummary, UnitStatus};
use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

mod backup;
mod instance;
mod jobs;
pub use backup::BackupCmd;
pub use instance::usage_table;
pub use jobs::jobs_table;

/// Exit code for a config that cannot be used (and for usage errors).
pub const EXIT_CONFIG: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "applianced",
    version,
    about = "Runs a complete PHP application stack (MariaDB, Redis, php-fpm, ...) as one supervised appliance",
    after_help = "Start with `applianced run` (no config: a demo instance). Then `applianced status`."
)]
pub struct Cli {
    /// Data directory (default /var/lib/applianced as root, ~/.local/state/applianced otherwise).
    #[arg(long, global = true, env = "APPLIANCE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Control socket (default DATA_DIR/run/control.sock).
    #[arg(long, global = true, env = "APPLIANCE_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance in the foreground (the daemon).
    Run {
        /// appliance.toml; without it the embedded default (one `demo` instance)
        /// runs (in PID-1 mode: /etc/applianced/appliance.toml when it exists).
        #[arg(long, short, env = "APPLIANCE_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// PID-1 mode: be the machine's init (mounts, network, data partition,
        /// NoCloud seed, system units, reboot/poweroff). Implied when the pid is 1.
        #[arg(long)]
        init: bool,
        /// With --init, for tests inside namespaces (`unshare --pid --fork
        /// --mount-proc --net`): no mounts, module loading, hostname, resolv.conf
        /// or data partition.
        #[arg(long, requires = "init", hide = true)]
        sandbox: bool,
    },
    /// Check a config and print the plan, starting nothing.
    CheckConfig {
        #[arg(long, short, env = "APPLIANCE_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Instances and units: state, pid, uptime, restarts, readiness.
    Status,
    /// Show (and follow) a unit's captured output.
    Logs {
        /// INSTANCE/UNIT, or INSTANCE for all of its units.
        target: String,
        /// Keep printing new lines as they arrive.
        #[arg(short, long)]
        follow: bool,
        /// How many past lines to show (the last N that match the filters).
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Only lines from this time on: RFC 3339 (`2026-12-03T08:00:00Z`)
        /// or an age (`10m`, `2h`, `1d`).
        #[arg(long, value_parser = parse_when)]
        since: Option<String>,
        /// Only lines before this time (same forms as --since).
        #[arg(long, value_parser = parse_when)]
        until: Option<String>,
        /// Only lines at this level or worse: debug, info, warn, error.
        /// Lines that state no level are left out.
        #[arg(long)]
        level: Option<crate::logs::Level>,
        /// Only lines whose message or fields contain TEXT (any case).
        #[arg(long, value_name = "TEXT")]
        grep: Option<String>,
    },
    /// Start a unit (also retries a failed one).
    Start { target: String },
    /// Stop a unit, after the units that require it.
    Stop { target: String },
    /// Restart a unit, one replica at a time.
    Restart { target: String },
    /// Change how many replicas of a unit run (e.g. queue workers), until the
    /// next restart of applianced; set `replicas` in the config to keep it.
    Scale {
        /// INSTANCE/UNIT, e.g. demo/queue-worker.
        target: String,
        /// The new number of replicas.
        #[arg(value_parser = clap::value_parser!(u32).range(1..=crate::supervisor::MAX_REPLICAS as i64))]
        replicas: u32,
    },
    /// Run a command as the instance's user, with its environment, in its app dir.
    Exec {
        instance: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Cron runs: scheduled and actual start, drift, duration, outcome, exit.
    Jobs {
        /// Only this instance's runs.
        instance: Option<String>,
        /// Only this entry's runs.
        #[arg(long, value_name = "NAME")]
        entry: Option<String>,
        /// How many of the most recent runs to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        /// Start a run of ENTRY now instead (needs INSTANCE; overlap policy holds).
        #[arg(long, value_name = "ENTRY", conflicts_with = "entry")]
        run: Option<String>,
    },
    /// Instances: list them, stop or start one whole.
    Instance {
        #[command(subcommand)]
        action: InstanceAction,
    },
    /// Backups: run one now, list, verify, restore, test-restore.
    Backup {
        #[command(subcommand)]
        cmd: BackupCmd,
    },
    /// Stop every unit in reverse order and exit.
    Shutdown,
    /// PID-1 mode: stop every unit, then power the machine off.
    Poweroff,
    /// PID-1 mode: stop every unit, then reboot the machine.
    Reboot,
    /// Internal (the redis unit's exec_start_pre): cut the NUL tail a power
    /// cut leaves on Redis's append-only files in DIR.
    #[command(hide = true)]
    RepairAof { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum InstanceAction {
    /// Every instance: state, units up, domains, CPU, memory, pids, I/O.
    List,
    /// Stop every unit of an instance (reverse dependency order, each with
    /// its stop timeout), then kill whatever is left in its cgroup. The other
    /// instances keep running. Lasts until `instance start` or a restart of
    /// applianced.
    Stop { name: String },
    /// Start every unit of a stopped instance.
    Start { name: String },
    /// Add an instance while applianced runs: it is written to the config
    /// file (atomically), its user, dirs, secrets and databases are made, and
    /// its units started; then this waits until they are ready. Nothing else
    /// restarts. Example: `applianced instance add smart3 --domain
    /// smart3.example.com --domain '*.smart3.example.com' --app /srv/smart3`
    Add {
        /// Lowercase letters, digits and `-`, starting with a letter (at most 20).
        name: String,
        /// A virtual host name, exact or `*.wildcard`; repeat for more.
        #[arg(long = "domain", value_name = "NAME")]
        domains: Vec<String>,
        /// The PHP application (its `public/` is the web root). Default: the
        /// bundled demo app.
        #[arg(long, value_name = "DIR")]
        app: Option<PathBuf>,
        /// Return once the units were started, without waiting for them.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for its units to be ready, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Remove an instance while applianced runs: a final backup first
    /// (refused if it fails, unless --force), then its units stop, its cgroup
    /// is killed, its sockets and Unix user are deleted, its data is moved to
    /// DATA/removed/ (root only), and it is taken out of the config file.
    Remove {
        name: String,
        /// Remove it even if the final backup fails.
        #[arg(long)]
        force: bool,
    },
}

impl Cli {
    fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| {
            Layout::new(
                self.data_dir
                    .clone()
                    .unwrap_or_else(Layout::default_data_dir),
            )
            .control_socket()
        })
    }
}

/// Load and plan a config; errors are printed by the caller with exit code 2.
pub fn load_plan(cli: &Cli, path: Option<&PathBuf>) -> Result<plan::Plan, config::ConfigError> {
    let loaded = config::load(path.map(|p| p.as_path()))?;
    plan::build(&loaded, cli.data_dir.as_deref())
}

/// Run a client subcommand; returns the process exit code.
pub fn client(cli: &Cli) -> Result<i32> {
    if let Command::RepairAof { dir } = &cli.command {
        let done = crate::aof::repair_dir(dir)
            .with_context(|| format!("repairing the append-only files in {}", dir.display()))?;
        for t in done {
            println!(
                "{}: cut {} NUL bytes from its end (left by an unclean shutdown; the last writes before it are lost)",
                t.file.display(),
                t.nul_bytes
            );
        }
        return Ok(0);
    }
    let sock = cli.socket();
    match &cli.command {
        Command::Status => {
            let reply = ok(Client::call(&sock, &Request::Status)?)?;
            let rows: Vec<UnitStatus> = serde_json::from_value(reply).context("status reply")?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", status_table(&rows));
                // Resource use per instance, when the daemon has cgroups.
                let inst = ok(Client::call(&sock, &Request::Instances)?)?;
                let inst: Vec<InstanceSummary> =
                    serde_json::from_value(inst).context("instances reply")?;
                if inst.iter().any(|i| i.usage.is_some()) {
                    println!();
                    print!("{}", usage_table(&inst));
                }
            }
            Ok(0)
        }
        Command::Start { target } | Command::Stop { target } | Command::Restart { target } => {
            let req = match &cli.command {
                Command::Start { .. } => Request::Start {
                    target: target.clone(),
                },
                Command::Stop { .. } => Request::Stop {
                    target: target.clone(),
                },
                _ => Request::Restart {
                    target: target.clone(),
                },
            };
            let reply = ok(Client::call(&sock, &req)?)?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "target": target, "result": reply})
                );
            } else {
                println!("{target}: {}", reply.as_str().unwrap_or("done"));
            }
            Ok(0)
        }
        Command::Scale { target, replicas } => {
            let req = Request::Scale {
                target: target.clone(),
                replicas: *replicas,
            };
            let before = ok(Client::call(&sock, &req)?)?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "target": target, "from": before, "to": replicas})
                );
            } else {
                println!("{target}: {before} -> {replicas} replicas");
            }
            Ok(0)
        }
        Command::Logs {
            target,
            follow,
            lines,
            since,
            until,
            level,
            grep,
        } => {
            let mut c = Client::request(
                &sock,
                &Request::Logs {
                    target: target.clone(),
                    lines: *lines,
                    follow: *follow,
                    query: crate::logs::LogQuery {
                        since: since.clone(),
                        until: until.clone(),
                        level: *level,
                        grep: grep.clone(),
                    },
                },
            )?;
            while let Some(reply) = c.next_reply()? {
                let data = ok(reply)?;
                if cli.json {
                    println!("{data}");
                } else {
                    let l: LogLine = serde_json::from_value(data)?;
                    let who = match l.replica {
                        Some(r) => format!("{}/{}@{r}", l.instance, l.unit),
                        None => format!("{}/{}", l.instance, l.unit),
                    };
                    let level = crate::logs::query::effective_level(&l)
                        .map(|lv| format!(" [{}]", lv.as_str()))
                        .unwrap_or_default();
                    println!("{} {who} {}{level}: {}", l.ts, l.stream, l.msg);
                }
            }
            Ok(0)
        }
        Command::Exec { instance, command } => {
            let reply = ok(Client::call(
                &sock,
                &Request::ExecSpec {
                    instance: instance.clone(),
                },
            )?)?;
            let spec: ExecSpec = serde_json::from_value(reply)?;
            exec(&spec, command)
        }
        Command::Jobs {
            instance,
            entry,
            limit,
            run,
        } => jobs::jobs(
            &sock,
            jobs::JobsArgs {
                instance: instance.as_deref(),
                entry: entry.as_deref(),
                limit: *limit,
                run: run.as_deref(),
                json: cli.json,
            },
        ),
        Command::Instance { action } => instance::run(&sock, action, cli.json),
        Command::Backup { cmd } => backup::backup(&sock, cmd, cli.json),
        Command::Shutdown | Command::Poweroff | Command::Reboot => {
            let (req, done) = match &cli.command {
                Command::Poweroff => (Request::Poweroff, "powering off"),
                Command::Reboot => (Request::Reboot, "rebooting"),
                _ => (Request::Shutdown, "stopped"),
            };
            let mut c = Client::request(&sock, &req)?;
            let first = c
                .next_reply()?
                .ok_or_else(|| anyhow!("applianced closed the connection"))?;
            ok(first)?;
            if !cli.json {
                eprintln!("applianced: stopping units...");
            }
            // The daemon closes the connection when it exits.
            while c.next_reply()?.is_some() {}
            if cli.json {
                println!("{}", serde_json::json!({"ok": true, "result": done}));
            } else {
                println!("applianced {done}");
            }
            Ok(0)
        }
        Command::Run { .. } | Command::CheckConfig { .. } | Command::RepairAof { .. } => {
            unreachable!("handled by main or above")
        }
    }
}

/// Send a request whose replies are progress lines (printed to stderr) and
/// then `{"record": ...}`; returns the record.
fn streamed(sock: &std::path::Path, req: &Request) -> Result<serde_json::Value> {
    let mut c = Client::request(sock, req)?;
    while let Some(reply) = c.next_reply()? {
        let mut data = ok(reply)?;
        if let Some(line) = data.get("progress").and_then(|v| v.as_str()) {
            eprintln!("applianced: {line}");
            continue;
        }
        return Ok(data["record"].take());
    }
    Err(anyhow!("applianced closed the connection before the end"))
}

fn ok(reply: Reply) -> Result<serde_json::Value> {
    if reply.ok {
        Ok(reply.data)
    } else {
        Err(anyhow!(
            reply.error.unwrap_or_else(|| "request failed".into())
        ))
    }
}

/// Run `argv` like the app: its user, env and directory. The exit code passes through.
fn exec(spec: &ExecSpec, argv: &[String]) -> Result<i32> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let me = nix::unistd::geteuid().as_raw();
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd);
    let switch = spec.uid != me;
    if switch && me != 0 {
        bail!(
            "exec: must be root to run commands as `{}` (uid {})",
            spec.user,
            spec.uid
        );
    }
    // Only root may join the instance's cgroup and private /tmp; a user
    // running `exec` for their own instance (applianced not root) gets
    // neither, like the units then.
    let setup = crate::process::isolate::ChildSetup::prepare(
        spec.cgroup.as_deref().filter(|_| me == 0),
        spec.private_tmp.as_deref().filter(|_| me == 0),
        switch.then_some((spec.uid, spec.gid)),
    )
    .context("exec: preparing the instance's cgroup")?;
    // SAFETY: runs in the forked child before exec; `apply` makes only
    // async-signal-safe calls on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || setup.apply());
    }
    let status = cmd
        .status()
        .with_context(|| format!("exec: cannot run `{}`", argv[0]))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The `status` table.
pub fn status_table(rows: &[UnitStatus]) -> String {
    let now = crate::state::now_unix_ms();
    let mut table = vec![
        [
            "INSTANCE",
            "UNIT",
            "STATE",
            "PID",
            "UPTIME",
            "RESTARTS",
            "READY",
            "LAST EXIT / NOTE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in rows {
        let unit = if rows
            .iter()
            .filter(|x| x.instance == r.instance && x.unit == r.unit)
            .count()
            > 1
        {
            format!("{}@{}", r.unit, r.replica)
        } else {
            r.unit.clone()
        };
        let uptime = match (r.pid, r.started_ms) {
            (Some(_), Some(t)) => human_duration((now - t).max(0) as u64 / 1000),
            _ => "-".into(),
        };
        let note = [r.last_exit.clone(), r.message.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
        table.push(vec![
            r.instance.clone(),
            unit,
            r.state.as_str().to_string(),
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            uptime,
            r.restarts.to_string(),
            if r.ready { "yes" } else { "no" }.to_string(),
            if note.is_empty() { "-".into() } else { note },
        ]);
    }
    render_table(&table)
}

/// Rows as aligned columns, two spaces apart; the last column is not padded
/// (free text), and trailing blanks are trimmed.
pub(crate) fn render_table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |x| x.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == cols {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `--since`/`--until`: an RFC 3339 time, or an age before now (`10m`),
/// as the RFC 3339 UTC text log lines carry (so they compare as text).
fn parse_when(s: &str) -> Result<String, String> {
    let at = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let age = humantime::parse_duration(s).map_err(|_| {
                format!("`{s}` is neither a time (2026-12-03T08:00:00Z) nor an age (10m, 2h, 1d)")
            })?;
            std::time::SystemTime::now()
                .checked_sub(age)
                .ok_or_else(|| format!("`{s}` is too long ago"))?
        }
    };
    Ok(humantime::format_rfc3339_millis(at).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_uptime() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(7300), "2h1m");
        assert_eq!(human_duration(90000), "1d1h");
    }
}
