//! The state database: every unit start, readiness, exit, restart, stop and
//! failure, with timestamps, in SQLite under the data dir. It survives restarts
//! of applianced and is what an operator (or a test) reads to learn history.
//!
//! It also keeps every cron run ([`cron_runs`]): scheduled and actual start,
//! end, exit, outcome and the tail of its output; and every backup, verify,
//! restore and test restore ([`backup_runs`]): status, duration, size, error.
//!
//! Writes go through a channel to one thread that owns the connection, so the
//! supervisor and the scheduler never wait on disk. Readers (the control
//! server) open their own read-only connection; WAL lets them read while the
//! writer writes. Touches only `DATA/state.db`.

pub mod backup_runs;
pub mod cron_runs;

pub use backup_runs::{BackupQuery, BackupRecord};
pub use cron_runs::{CronRun, RunOutcome, RunQuery};

use crate::process::ExitStatus;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, mpsc};

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS unit_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts        TEXT    NOT NULL,
    unix_ms   INTEGER NOT NULL,
    instance  TEXT    NOT NULL,
    unit      TEXT    NOT NULL,
    replica   INTEGER NOT NULL,
    event     TEXT    NOT NULL,
    pid       INTEGER,
    exit_code INTEGER,
    signal    TEXT,
    detail    TEXT
);
CREATE INDEX IF NOT EXISTS unit_events_by_unit ON unit_events (instance, unit, id);
";

/// What the writer thread writes.
enum Write {
    Event(Event),
    /// A cron run, inserted or replaced whole (start, then end).
    Run(CronRun),
    /// A backup run, inserted or replaced whole.
    Backup(BackupRecord),
    /// Answered once everything sent before it is committed.
    Flush(mpsc::Sender<()>),
}

/// What happened to a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The process was spawned.
    Start,
    /// Its readiness probe passed.
    Ready,
    /// The process ended (code or signal in the row).
    Exit,
    /// A restart is scheduled after a delay (in `detail`).
    Restart,
    /// An operator or shutdown asked it to stop.
    Stop,
    /// It stopped because it was asked to.
    Stopped,
    /// It gave up: start limit hit, or a start step failed for good.
    Failed,
    /// A process left by a previous applianced was stopped.
    Cleanup,
    /// Not started: `condition_path_exists` is missing.
    Skipped,
}

impl EventKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Ready => "ready",
            EventKind::Exit => "exit",
            EventKind::Restart => "restart",
            EventKind::Stop => "stop",
            EventKind::Stopped => "stopped",
            EventKind::Failed => "failed",
            EventKind::Cleanup => "cleanup",
            EventKind::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub ts_unix_ms: i64,
    pub instance: String,
    pub unit: String,
    pub replica: u32,
    pub kind: EventKind,
    pub pid: Option<i32>,
    pub exit: Option<ExitStatus>,
    pub detail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("state database {path}: {source}")]
pub struct StateError {
    pub path: String,
    #[source]
    pub source: rusqlite::Error,
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct StateDb {
    tx: mpsc::Sender<Write>,
    path: PathBuf,
    /// The last cron run id handed out (runs are numbered by us, so a run's
    /// start and end rows need no round trip to the writer).
    last_run_id: Arc<AtomicI64>,
    /// The last backup run id handed out (same scheme as cron runs).
    last_backup_id: Arc<AtomicI64>,
}

impl StateDb {
    /// Open (creating and migrating) the database and start its writer thread.
    /// Cron runs a previous applianced left `running` are marked `lost`.
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        let err = |source| StateError {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.execute_batch(cron_runs::SCHEMA).map_err(err)?;
        conn.execute_batch(backup_runs::SCHEMA).map_err(err)?;
        let lost_backups = backup_runs::mark_lost(&conn).map_err(err)?;
        if lost_backups > 0 {
            tracing::warn!(
                runs = lost_backups,
                "backup runs left running by a previous applianced are marked failed"
            );
        }
        let last_backup_id = backup_runs::max_id(&conn).map_err(err)?;
        let lost = cron_runs::mark_lost(&conn).map_err(err)?;
        if lost > 0 {
            tracing::warn!(
                runs = lost,
                "cron runs left running by a previous applianced are marked lost"
            );
        }
        cron_runs::prune(&conn, cron_runs::KEEP_PER_ENTRY).map_err(err)?;
        let last_run_id = cron_runs::max_id(&conn).map_err(err)?;
        let (tx, rx) = mpsc::channel::<Write>();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("state-db".into())
            .spawn(move || {
                let mut run_writes = 0usize;
                while let Ok(first) = rx.recv() {
                    // Batch whatever queued up meanwhile into one transaction.
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    if let Err(e) = insert(&mut conn, &batch) {
                        tracing::error!(db = %shown, error = %e, "cannot record events");
                    }
                    for w in &batch {
                        if let Write::Flush(done) = w {
                            let _ = done.send(());
                        }
                    }
                    run_writes += batch.iter().filter(|w| matches!(w, Write::Run(_))).count();
                    if run_writes >= 1000 {
                        run_writes = 0;
                        if let Err(e) = cron_runs::prune(&conn, cron_runs::KEEP_PER_ENTRY) {
                            tracing::warn!(db = %shown, error = %e, "cannot prune old cron runs");
                        }
                    }
                }
            })
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        Ok(StateDb {
            tx,
            path: path.to_path_buf(),
            last_run_id: Arc::new(AtomicI64::new(last_run_id)),
            last_backup_id: Arc::new(AtomicI64::new(last_backup_id)),
        })
    }

    pub fn record(&self, event: Event) {
        let _ = self.tx.send(Write::Event(event));
    }

    /// Wait (up to `timeout`) until everything recorded so far is committed:
    /// the last thing the daemon does, so the final stop events survive exit.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let (done, wait) = mpsc::channel();
        self.tx.send(Write::Flush(done)).is_ok() && wait.recv_timeout(timeout).is_ok()
    }

    /// A fresh cron run id.
    pub fn next_run_id(&self) -> i64 {
        self.last_run_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Record a cron run (again, with its end, under the same id).
    pub fn record_run(&self, run: CronRun) {
        let _ = self.tx.send(Write::Run(run));
    }

    /// A fresh backup run id.
    pub fn next_backup_id(&self) -> i64 {
        self.last_backup_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Record a backup run (again, with its end, under the same id).
    pub fn record_backup(&self, run: BackupRecord) {
        let _ = self.tx.send(Write::Backup(run));
    }

    /// Recent backup runs, newest first, through a read-only connection.
    /// Blocking: call it from a blocking thread.
    pub fn backup_runs(&self, q: &BackupQuery) -> Result<Vec<BackupRecord>, StateError> {
        self.read(|conn| backup_runs::query(conn, q))
    }

    /// The latest unit events that matter to an operator (exits, restarts,
    /// failures), newest first, through a read-only connection.
    /// Blocking: call it from a blocking thread.
    pub fn recent_trouble(&self, limit: usize) -> Result<Vec<TroubleEvent>, StateError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT ts, instance, unit, replica, event, exit_code, signal, detail
                 FROM unit_events WHERE event IN ('exit', 'restart', 'failed')
                 ORDER BY id DESC LIMIT ?1",
            )?;
            stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(TroubleEvent {
                    ts: r.get(0)?,
                    instance: r.get(1)?,
                    unit: r.get(2)?,
                    replica: r.get(3)?,
                    event: r.get(4)?,
                    exit_code: r.get(5)?,
                    signal: r.get(6)?,
                    detail: r.get(7)?,
                })
            })?
            .collect()
        })
    }

    /// Recent cron runs, oldest first, through a read-only connection.
    /// Blocking: call it from a blocking thread.
    pub fn cron_runs(&self, q: &RunQuery) -> Result<Vec<CronRun>, StateError> {
        self.read(|conn| cron_runs::query(conn, q))
    }

    /// Run `query` on a read-only connection of its own (the writer thread
    /// keeps the read-write one); errors name the database file.
    fn read<T>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| query(&conn))
        .map_err(|source| StateError {
            path: self.path.display().to_string(),
            source,
        })
    }
}

fn insert(conn: &mut Connection, batch: &[Write]) -> rusqlite::Result<()> {
    let txn = conn.transaction()?;
    {
        let mut stmt = txn.prepare_cached(
            "INSERT INTO unit_events (ts, unix_ms, instance, unit, replica, event, pid, exit_code, signal, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for w in batch {
            let e = match w {
                Write::Event(e) => e,
                Write::Run(run) => {
                    cron_runs::upsert(&txn, run)?;
                    continue;
                }
                Write::Backup(run) => {
                    backup_runs::upsert(&txn, run)?;
                    continue;
                }
                Write::Flush(_) => continue,
            };
            let ts = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.ts_unix_ms as u64);
            let (code, signal) = exit_columns(e.exit);
            stmt.execute(params![
                humantime::format_rfc3339_millis(ts).to_string(),
                e.ts_unix_ms,
                e.instance,
                e.unit,
                e.replica,
                e.kind.as_str(),
                e.pid,
                code,
                signal,
                e.detail,
            ])?;
        }
    }
    txn.commit()
}

/// `(exit_code, signal name)` columns of an exit status.
pub(crate) fn exit_columns(exit: Option<ExitStatus>) -> (Option<i32>, Option<String>) {
    match exit {
        Some(ExitStatus::Exited { code }) => (Some(code), None),
        Some(s @ ExitStatus::Signaled { .. }) => (
            None,
            Some(s.describe().trim_start_matches("signal ").to_string()),
        ),
        None => (None, None),
    }
}

/// A unit event an operator wants to see on the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TroubleEvent {
    pub ts: String,
    pub instance: String,
    pub unit: String,
    pub replica: i64,
    /// `exit`, `restart` or `failed`.
    pub event: String,
    pub exit_code: Option<i64>,
    pub signal: Option<String>,
    pub detail: Option<String>,
}

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_recorded_with_exit_details() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        let db = StateDb::open(&p).unwrap();
        db.record(Event {
            ts_unix_ms: now_unix_ms(),
            instance: "demo".into(),
            unit: "redis".into(),
            replica: 0,
            kind: EventKind::Exit,
            pid: Some(42),
            exit: Some(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false,
            }),
            detail: None,
        });
        // Once flushed, the row is committed: no polling needed.
        assert!(db.flush(std::time::Duration::from_secs(10)));
        let conn = Connection::open(&p).unwrap();
        let got = conn
            .query_row("SELECT event, pid, signal FROM unit_events", [], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i32>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .ok();
        assert_eq!(got, Some(("exit".into(), 42, "SIGKILL".into())));
    }
}
