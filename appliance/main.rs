//! The `applianced` binary: argument parsing and exit codes only. Everything
//! else lives in the library (`appliance/lib.rs`).

use appliance::cli::{self, Cli, Command, EXIT_CONFIG};
use appliance::init::InitOptions;
use clap::Parser;

fn main() {
    // As the kernel's init, argv is whatever the kernel passed: PID-1 mode
    // whatever it says (appliance::init never returns).
    let pid1 = std::process::id() == 1;
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(_) if pid1 => appliance::init::run(InitOptions::default()),
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    match &cli.command {
        Command::Run {
            config,
            init,
            sandbox,
        } if pid1 || *init => appliance::init::run(InitOptions {
            config: config.clone(),
            data_dir: cli.data_dir.clone(),
            sandbox: *sandbox,
        }),
        _ if pid1 => appliance::init::run(InitOptions {
            data_dir: cli.data_dir.clone(),
            ..InitOptions::default()
        }),
        _ => {}
    }
    let code = match &cli.command {
        Command::Run { config, .. } | Command::CheckConfig { config } => {
            let plan = match cli::load_plan(&cli, config.as_ref()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("applianced: config error: {e}");
                    std::process::exit(EXIT_CONFIG);
                }
            };
            if matches!(cli.command, Command::CheckConfig { .. }) {
                print_plan(&plan, cli.json);
                0
            } else {
                run_daemon(plan)
            }
        }
        _ => match cli::client(&cli) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("applianced: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}

fn run_daemon(plan: appliance::plan::Plan) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("applianced")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("applianced: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(appliance::daemon::run(plan)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("applianced: {e}");
            1
        }
    }
}

fn print_plan(plan: &appliance::plan::Plan, json: bool) {
    let view: Vec<serde_json::Value> = plan
        .instances
        .iter()
        .map(|i| {
            serde_json::json!({
                "instance": i.name,
                "user": i.user,
                "app_dir": i.app_dir,
                "domains": i.domains,
                "tls_certificates": plan.front.sites.iter().find(|s| s.instance == i.name).map(|s| s.certs.len()).unwrap_or(0),
                "units": i.units.iter().map(|u| serde_json::json!({
                    "name": u.name, "command": u.command, "replicas": u.replicas,
                    "requires": u.requires, "after": u.after,
                })).collect::<Vec<_>>(),
                "cron": i.cron.iter().map(|c| serde_json::json!({
                    "name": c.name, "schedule": c.schedule.as_str(), "command": c.command,
                    "args": c.args, "timeout_sec": c.timeout.as_secs_f64(), "overlap": c.overlap,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": true, "source": plan.source, "data_dir": plan.layout.data_dir(),
                "http": {"enabled": plan.front.enabled, "listen": plan.front.listen, "tls_listen": plan.front.tls_listen},
                "instances": view})
        );
    } else {
        println!(
            "config OK: {} (data dir {})",
            plan.source,
            plan.layout.data_dir().display()
        );
        if plan.front.enabled {
            let tls = if plan.front.has_tls() {
                format!(", https on {:?}", plan.front.tls_listen)
            } else {
                String::new()
            };
            println!("  http on {:?}{tls}", plan.front.listen);
        } else {
            println!("  http front end disabled");
        }
        if let Some(s) = &plan.system {
            let units: Vec<&str> = s.units.iter().map(|u| u.name.as_str()).collect();
            println!("  system units (root): {}", units.join(", "));
        }
        for i in &plan.instances {
            let units: Vec<String> = i
                .units
                .iter()
                .map(|u| {
                    if u.replicas > 1 {
                        format!("{}x{}", u.name, u.replicas)
                    } else {
                        u.name.clone()
                    }
                })
                .collect();
            let domains = if i.domains.is_empty() {
                String::new()
            } else {
                format!(" [{}]", i.domains.join(", "))
            };
            println!(
                "  instance {}{domains} (user {}): {}",
                i.name,
                i.user,
                units.join(" -> ")
            );
            if let Some(b) = plan.backups.iter().find(|b| b.instance == i.name) {
                let s3 =
                    b.s3.as_ref()
                        .map(|s| format!(", s3://{}/{}", s.bucket, s.prefix))
                        .unwrap_or_default();
                println!(
                    "    backup: {} ({}), keep {}d/{}w/{}m, {}{s3}{}",
                    b.schedule.as_str(),
                    if b.enabled { "on" } else { "manual only" },
                    b.keep.daily,
                    b.keep.weekly,
                    b.keep.monthly,
                    b.instance_dir().display(),
                    if b.encrypt { ", encrypted" } else { "" }
                );
            }
            if !i.cron.is_empty() {
                let cron: Vec<String> = i
                    .cron
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.schedule.as_str()))
                    .collect();
                println!("    cron: {}", cron.join(", "));
            }
        }
    }
}

/// mimalloc: less CPU per proxied request than glibc's malloc (see Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
