//! One cron run: spawn through the launcher, capture its output (lines to the
//! `cron` log, a tail for the state database), enforce the timeout, and record
//! the start and the end.
//!
//! A timeout or a shutdown sends SIGTERM to the run's process group and
//! SIGKILL after [`KILL_GRACE`]. A run that exits on its own keeps whatever it
//! left in the background (Laravel's `runInBackground()` tasks outlive
//! `schedule:run` by design); applianced's shutdown stops those by their scope
//! marker. Touches processes only through the launcher and signals.

use super::{EntryRt, KILL_GRACE, TAIL_BYTES};
use crate::process::{self, ExitStatus};
use crate::state::{CronRun, RunOutcome, exit_columns, now_unix_ms};
use nix::sys::signal::Signal;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

/// Decrements the entry's in-flight count however the run ends.
struct InFlight(Arc<EntryRt>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn new_run(e: &EntryRt, id: i64, scheduled_ms: i64, trigger: &str, started: i64) -> CronRun {
    CronRun {
        id,
        instance: e.instance.clone(),
        entry: e.spec.name.clone(),
        trigger: trigger.into(),
        scheduled_unix_ms: scheduled_ms,
        started_unix_ms: started,
        drift_ms: started - scheduled_ms,
        ended_unix_ms: None,
        duration_ms: None,
        outcome: RunOutcome::Running,
        pid: None,
        exit_code: None,
        signal: None,
        output_tail: String::new(),
        detail: None,
    }
}

fn fields(entry: &str, run: i64) -> serde_json::Map<String, serde_json::Value> {
    let mut f = serde_json::Map::new();
    f.insert("entry".into(), entry.into());
    f.insert("run".into(), run.into());
    f
}

/// `overlap = skip` and the previous run still goes: record the skipped fire.
pub(super) fn record_skip(e: &EntryRt, id: i64, scheduled_ms: i64, trigger: &str, why: &str) {
    let now = now_unix_ms();
    let mut run = new_run(e, id, scheduled_ms, trigger, now);
    run.outcome = RunOutcome::Skipped;
    run.ended_unix_ms = Some(now);
    run.duration_ms = Some(0);
    run.detail = Some(why.to_string());
    tracing::info!(instance = %e.instance, entry = %e.spec.name, run = id, why, "cron run skipped");
    e.log.write_with_fields(
        None,
        "applianced",
        vec![format!("run {id} of {} skipped: {why}", e.spec.name)],
        &fields(&e.spec.name, id),
    );
    e.finish(run);
}

/// Run once and record it. `_alive` keeps the scheduler's stop waiting for us.
pub(super) async fn execute(
    e: Arc<EntryRt>,
    id: i64,
    scheduled_ms: i64,
    trigger: &'static str,
    mut stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let _guard = InFlight(e.clone());
    let name = e.spec.name.clone();
    let f = fields(&name, id);
    let note = |msg: String| e.log.write_with_fields(None, "applianced", vec![msg], &f);
    let mut command = match &e.command {
        Ok(c) => c.clone(),
        Err(why) => {
            fail_to_start(&e, id, scheduled_ms, trigger, why.clone());
            note(format!("run {id} of {name} cannot start: {why}"));
            return;
        }
    };
    command
        .env
        .insert("APPLIANCE_CRON_RUN".into(), id.to_string());
    let spawned = e.launcher.spawn(command.clone()).await;
    let started = now_unix_ms();
    let mut child = match spawned {
        Ok(c) => c,
        Err(err) => {
            let why = format!("cannot execute {}: {err}", command.program.display());
            fail_to_start(&e, id, scheduled_ms, trigger, why.clone());
            note(format!("run {id} of {name} cannot start: {why}"));
            return;
        }
    };
    let pid = child.pid;
    let mut run = new_run(&e, id, scheduled_ms, trigger, started);
    run.pid = Some(pid);
    e.state.record_run(run.clone());
    tracing::debug!(instance = %e.instance, entry = %name, run = id, pid, drift_ms = run.drift_ms, "cron run started");
    note(format!(
        "run {id} of {name} started (pid {pid}, {} ms after its fire time)",
        run.drift_ms
    ));
    let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut pipes = Vec::new();
    for (fd, stream) in [
        (child.stdout.take(), "stdout"),
        (child.stderr.take(), "stderr"),
    ] {
        if let Some(fd) = fd {
            pipes.push(capture(e.clone(), fd, stream, id, tail.clone()));
        }
    }
    let timeout = tokio::time::sleep(e.spec.timeout);
    tokio::pin!(timeout);
    let cut = tokio::select! {
        status = &mut child.exit => Err(status.ok()),
        _ = &mut timeout => Ok(RunOutcome::Timeout),
        _ = stop.wait_for(|s| *s) => Ok(RunOutcome::Stopped),
    };
    let (exit, outcome) = match cut {
        Err(exit) => (exit, None),
        Ok(why) => {
            note(if why == RunOutcome::Timeout {
                format!(
                    "run {id} of {name} still going after {}; stopping it",
                    humantime::format_duration(e.spec.timeout)
                )
            } else {
                format!("run {id} of {name} interrupted: applianced is shutting down")
            });
            (terminate(pid, &mut child.exit).await, Some(why))
        }
    };
    let ended = now_unix_ms();
    // Output already captured stays; a background child holding the pipes
    // must not hold up the record.
    for p in pipes {
        let _ = tokio::time::timeout(Duration::from_millis(200), p).await;
    }
    let outcome = outcome.unwrap_or(match exit {
        Some(s) if s.success() => RunOutcome::Ok,
        _ => RunOutcome::Failed,
    });
    let (code, signal) = exit_columns(exit);
    run.ended_unix_ms = Some(ended);
    run.duration_ms = Some(ended - started);
    run.outcome = outcome;
    run.exit_code = code;
    run.signal = signal;
    run.output_tail = tail_text(&tail.lock().unwrap_or_else(|p| p.into_inner()));
    let how = exit.map(|s| s.describe()).unwrap_or_else(|| "lost".into());
    note(format!(
        "run {id} of {name} {}: {how} after {} ms",
        outcome.as_str(),
        ended - started
    ));
    tracing::info!(instance = %e.instance, entry = %name, run = id, outcome = outcome.as_str(), exit = %how, duration_ms = ended - started, drift_ms = run.drift_ms, "cron run ended");
    e.finish(run);
}

fn fail_to_start(e: &EntryRt, id: i64, scheduled_ms: i64, trigger: &str, why: String) {
    let now = now_unix_ms();
    let mut run = new_run(e, id, scheduled_ms, trigger, now);
    run.outcome = RunOutcome::Failed;
    run.ended_unix_ms = Some(now);
    run.duration_ms = Some(0);
    tracing::warn!(instance = %e.instance, entry = %e.spec.name, run = id, error = %why, "cron run cannot start");
    run.detail = Some(why);
    e.finish(run);
}

/// SIGTERM to the group, SIGKILL after the grace, then wait for the exit.
async fn terminate(
    pid: i32,
    exit: &mut tokio::sync::oneshot::Receiver<ExitStatus>,
) -> Option<ExitStatus> {
    process::signal_group(pid, Signal::SIGTERM);
    let status = match tokio::time::timeout(KILL_GRACE, &mut *exit).await {
        Ok(s) => s.ok(),
        Err(_) => {
            process::signal_group(pid, Signal::SIGKILL);
            exit.await.ok()
        }
    };
    // The run is over: nothing it started in its group survives it.
    if process::group_alive(pid) {
        process::signal_group(pid, Signal::SIGKILL);
    }
    status
}

/// Drain one pipe: lines to the `cron` log, bytes to the shared tail.
fn capture(
    e: Arc<EntryRt>,
    fd: OwnedFd,
    stream: &'static str,
    id: i64,
    tail: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return;
        };
        let f = fields(&e.spec.name, id);
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = match rx.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            {
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                t.extend_from_slice(&chunk[..n]);
                if t.len() > TAIL_BYTES {
                    let cut = t.len() - TAIL_BYTES;
                    t.drain(..cut);
                }
            }
            buf.extend_from_slice(&chunk[..n]);
            let lines = crate::logs::split_lines(&mut buf);
            if !lines.is_empty() {
                e.log.write_with_fields(None, stream, lines, &f);
            }
        }
        if !buf.is_empty() {
            let last = String::from_utf8_lossy(&buf).into_owned();
            e.log.write_with_fields(None, stream, vec![last], &f);
        }
    })
}

/// The tail as text, starting at a character boundary.
fn tail_text(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|b| (*b as i8) >= -0x40) // not a UTF-8 continuation byte
        .unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_starts_at_a_character_boundary() {
        let s = "héllo".as_bytes();
        // Cut inside the two-byte é.
        assert_eq!(tail_text(&s[2..]), "llo");
        assert_eq!(tail_text(s), "héllo");
        assert_eq!(tail_text(b""), "");
    }
}
