//! `applianced jobs`: the cron run history as a table (or `--json`), and
//! `--run ENTRY` to start a run now. A client of the control socket only.

use super::ok;
use crate::control::Request;
use crate::control::client::Client;
use crate::scheduler::Fired;
use crate::state::CronRun;
use anyhow::{Context, Result, bail};
use std::path::Path;

pub struct JobsArgs<'a> {
    pub instance: Option<&'a str>,
    pub entry: Option<&'a str>,
    pub limit: usize,
    pub run: Option<&'a str>,
    pub json: bool,
}

pub fn jobs(sock: &Path, a: JobsArgs<'_>) -> Result<i32> {
    if let Some(entry) = a.run {
        let Some(instance) = a.instance else {
            bail!("--run needs the instance: applianced jobs INSTANCE --run ENTRY");
        };
        let reply = ok(Client::call(
            sock,
            &Request::JobsRun {
                instance: instance.into(),
                entry: entry.into(),
            },
        )?)?;
        let fired: Fired = serde_json::from_value(reply.clone()).context("jobs run reply")?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"ok": true, "instance": instance, "entry": entry, "fired": reply})
            );
        } else {
            match fired {
                Fired::Started { run } => println!("{instance}/{entry}: run {run} started"),
                Fired::Skipped { run } => println!(
                    "{instance}/{entry}: skipped (run {run}): the previous run is still going and overlap = skip"
                ),
            }
        }
        return Ok(0);
    }
    let reply = ok(Client::call(
        sock,
        &Request::Jobs {
            instance: a.instance.map(String::from),
            entry: a.entry.map(String::from),
            limit: a.limit,
        },
    )?)?;
    let runs: Vec<CronRun> = serde_json::from_value(reply).context("jobs reply")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    } else {
        print!("{}", jobs_table(&runs));
    }
    Ok(0)
}

fn rfc3339_ms(unix_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The `jobs` table: one row per run, oldest first.
pub fn jobs_table(runs: &[CronRun]) -> String {
    let head = [
        "INSTANCE",
        "ENTRY",
        "RUN",
        "SCHEDULED",
        "STARTED",
        "DRIFT",
        "DURATION",
        "OUTCOME",
        "EXIT",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.map(String::from).to_vec()];
    for r in runs {
        let exit = match (&r.exit_code, &r.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => s.clone(),
            _ => "-".into(),
        };
        let duration = match r.duration_ms {
            Some(ms) if ms >= 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
            Some(ms) => format!("{ms}ms"),
            None => "-".into(),
        };
        rows.push(vec![
            r.instance.clone(),
            r.entry.clone(),
            r.id.to_string(),
            rfc3339_ms(r.scheduled_unix_ms),
            rfc3339_ms(r.started_unix_ms),
            format!("{}ms", r.drift_ms),
            duration,
            r.outcome.as_str().to_string(),
            exit,
        ]);
    }
    if runs.is_empty() {
        return "no cron runs recorded\n".into();
    }
    super::render_table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RunOutcome;

    #[test]
    fn the_table_shows_drift_duration_outcome_and_exit() {
        let run = CronRun {
            id: 3,
            instance: "demo".into(),
            entry: "tick".into(),
            trigger: "schedule".into(),
            scheduled_unix_ms: 1_800_000_000_000,
            started_unix_ms: 1_800_000_000_004,
            drift_ms: 4,
            ended_unix_ms: Some(1_800_000_000_050),
            duration_ms: Some(46),
            outcome: RunOutcome::Timeout,
            pid: Some(9),
            exit_code: None,
            signal: Some("SIGTERM".into()),
            output_tail: String::new(),
            detail: None,
        };
        let t = jobs_table(&[run]);
        let cells: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "demo",
                "tick",
                "3",
                "2027-01-15T08:00:00.000Z",
                "2027-01-15T08:00:00.004Z",
                "4ms",
                "46ms",
                "timeout",
                "SIGTERM"
            ],
            "{t}"
        );
    }
}
