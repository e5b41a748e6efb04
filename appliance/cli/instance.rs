//! `applianced instance list|stop|start|add|remove`, and the per-instance
//! usage table `status` prints under its unit table.

use super::{InstanceAction, ok, render_table, streamed};
use crate::control::Request;
use crate::control::client::Client;
use crate::lifecycle::{Added, Removed};
use crate::supervisor::{InstanceSummary, UnitState, UnitStatus};
use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;
use std::time::{Duration, Instant};

pub fn run(sock: &Path, action: &InstanceAction, json: bool) -> Result<i32> {
    match action {
        InstanceAction::List => {
            let reply = ok(Client::call(sock, &Request::Instances)?)?;
            let list: Vec<InstanceSummary> =
                serde_json::from_value(reply).context("instances reply")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", list_table(&list));
                for i in &list {
                    for l in &i.limits_not_enforced {
                        println!("warning: {}: limit {l} is NOT enforced", i.name);
                    }
                }
            }
            Ok(0)
        }
        InstanceAction::Stop { name } | InstanceAction::Start { name } => {
            let (req, verb) = match action {
                InstanceAction::Stop { .. } => {
                    (Request::InstanceStop { name: name.clone() }, "stop")
                }
                _ => (Request::InstanceStart { name: name.clone() }, "start"),
            };
            let done = ok(Client::call(sock, &req)?)?;
            let done = done.as_str().unwrap_or(verb);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "instance": name, "result": done})
                );
            } else {
                println!("{name}: {done}");
            }
            Ok(0)
        }
        InstanceAction::Add {
            name,
            domains,
            app,
            no_wait,
            timeout,
        } => {
            // The daemon's working directory is not ours: send an absolute path.
            let app_dir = match app {
                Some(dir) => Some(
                    std::fs::canonicalize(dir)
                        .with_context(|| format!("--app {}", dir.display()))?,
                ),
                None => None,
            };
            let req = Request::InstanceAdd {
                name: name.clone(),
                domains: domains.clone(),
                app_dir,
            };
            let added: Added =
                serde_json::from_value(streamed(sock, &req)?).context("instance add reply")?;
            if !no_wait {
                wait_ready(sock, name, Duration::from_secs(*timeout))?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&added)?);
            } else {
                println!(
                    "{name}: added (user {}, app {}, domains {}; recorded in {})",
                    added.user,
                    added.app_dir.display(),
                    if added.domains.is_empty() {
                        "none".to_string()
                    } else {
                        added.domains.join(", ")
                    },
                    added.config.display()
                );
            }
            Ok(0)
        }
        InstanceAction::Remove { name, force } => {
            let req = Request::InstanceRemove {
                name: name.clone(),
                force: *force,
            };
            let removed: Removed =
                serde_json::from_value(streamed(sock, &req)?).context("instance remove reply")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&removed)?);
            } else {
                println!(
                    "{name}: removed; final backup {}; data kept in {}; user {}; taken out of {}",
                    removed.final_backup.as_deref().unwrap_or("NONE (--force)"),
                    removed
                        .retired
                        .kept_in
                        .as_ref()
                        .map_or("-".into(), |p| p.display().to_string()),
                    removed
                        .retired
                        .user_deleted
                        .as_deref()
                        .map_or("kept (not made by applianced)".into(), |u| format!(
                            "{u} deleted"
                        )),
                    removed.config.display()
                );
            }
            Ok(0)
        }
    }
}

/// Poll `status` until every unit of `name` is up, printing which ones are
/// still coming; a unit that fails ends the wait with an error.
fn wait_ready(sock: &Path, name: &str, timeout: Duration) -> Result<()> {
    let t0 = Instant::now();
    let mut shown = String::new();
    loop {
        let rows: Vec<UnitStatus> =
            serde_json::from_value(ok(Client::call(sock, &Request::Status)?)?)
                .context("status reply")?;
        let mine: Vec<&UnitStatus> = rows.iter().filter(|r| r.instance == name).collect();
        if let Some(f) = mine.iter().find(|r| r.state == UnitState::Failed) {
            bail!(
                "{name}/{} failed: {} (see `applianced logs {name}/{}`)",
                f.unit,
                f.message.as_deref().unwrap_or("no message"),
                f.unit
            );
        }
        let mut pending: Vec<&str> = mine
            .iter()
            .filter(|r| !r.state.is_settled_up())
            .map(|r| r.unit.as_str())
            .collect();
        pending.dedup();
        if !mine.is_empty() && pending.is_empty() {
            return Ok(());
        }
        let now = pending.join(", ");
        if now != shown {
            eprintln!("applianced: waiting for {now}");
            shown = now;
        }
        if t0.elapsed() > timeout {
            return Err(anyhow!(
                "{name}: units not ready after {}s: {shown} (still starting; see `applianced status`)",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn list_table(list: &[InstanceSummary]) -> String {
    let mut rows = vec![
        [
            "INSTANCE", "STATE", "UNITS UP", "USER", "CPU", "MEMORY", "PIDS", "DOMAINS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in list {
        let u = i.usage.as_ref();
        rows.push(vec![
            i.name.clone(),
            i.state.clone(),
            format!("{}/{}", i.units_up, i.units),
            i.user.clone(),
            u.map_or("-".into(), cpu),
            u.and_then(|u| u.memory_bytes).map_or("-".into(), bytes),
            u.map_or("-".into(), |u| u.pids.to_string()),
            if i.domains.is_empty() {
                "-".into()
            } else {
                i.domains.join(", ")
            },
        ]);
    }
    render_table(&rows)
}

/// CPU, memory, pids and I/O per instance, from its cgroup.
pub fn usage_table(list: &[InstanceSummary]) -> String {
    let mut rows = vec![
        [
            "INSTANCE", "CPU", "CPU TIME", "MEMORY", "PIDS", "IO READ", "IO WRITE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in list {
        let Some(u) = &i.usage else { continue };
        rows.push(vec![
            i.name.clone(),
            cpu(u),
            format!("{:.1}s", u.cpu_usec as f64 / 1e6),
            u.memory_bytes.map_or("-".into(), bytes),
            u.pids.to_string(),
            u.io_read_bytes.map_or("-".into(), bytes),
            u.io_write_bytes.map_or("-".into(), bytes),
        ]);
    }
    render_table(&rows)
}

fn cpu(u: &crate::cgroup::Usage) -> String {
    u.cpu_percent.map_or("-".into(), |p| format!("{p:.1}%"))
}

/// 1536 -> `1.5K`, powers of 1024 like the config's sizes.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Usage;

    fn summary(name: &str, usage: Option<Usage>) -> InstanceSummary {
        InstanceSummary {
            name: name.into(),
            system: false,
            domains: vec!["a.test".into(), "*.a.test".into()],
            app_dir: "/srv/a".into(),
            user: format!("app-{name}"),
            units: 4,
            units_up: 4,
            state: "running".into(),
            cgroup: None,
            limits_not_enforced: vec![],
            usage,
        }
    }

    #[test]
    fn sizes_read_in_powers_of_1024() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(3 << 30), "3.0G");
    }

    #[test]
    fn usage_table_shows_cpu_memory_pids_and_io_and_skips_instances_without_a_cgroup() {
        let u = Usage {
            cpu_usec: 2_500_000,
            cpu_percent: Some(12.34),
            memory_bytes: Some(256 << 20),
            pids: 17,
            io_read_bytes: None,
            io_write_bytes: Some(1 << 20),
        };
        let t = usage_table(&[summary("a", Some(u)), summary("b", None)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells, ["a", "12.3%", "2.5s", "256.0M", "17", "-", "1.0M"]);
    }
}
