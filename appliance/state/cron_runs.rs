//! The `cron_runs` table: one row per cron run (or skipped fire), written by
//! the state writer thread at the run's start and again at its end, read by
//! `applianced jobs` through a read-only connection.
//!
//! Times are unix milliseconds: `scheduled_unix_ms` is the fire time the
//! schedule asked for, `started_unix_ms` when the process existed, so
//! `drift_ms` is the scheduler's lateness (what the fire-time benchmark reads).

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cron_runs (
    id                INTEGER PRIMARY KEY,
    instance          TEXT    NOT NULL,
    entry             TEXT    NOT NULL,
    trigger           TEXT    NOT NULL,
    scheduled_unix_ms INTEGER NOT NULL,
    started_unix_ms   INTEGER NOT NULL,
    drift_ms          INTEGER NOT NULL,
    ended_unix_ms     INTEGER,
    duration_ms       INTEGER,
    outcome           TEXT    NOT NULL,
    pid               INTEGER,
    exit_code         INTEGER,
    signal            TEXT,
    output_tail       TEXT    NOT NULL DEFAULT '',
    detail            TEXT
);
CREATE INDEX IF NOT EXISTS cron_runs_by_entry ON cron_runs (instance, entry, id);
";

/// How a run ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// Still going.
    Running,
    /// Exited 0.
    Ok,
    /// Exited non-zero, was killed by a signal, or could not be started.
    Failed,
    /// Still going at its timeout: SIGTERM, then SIGKILL.
    Timeout,
    /// Not started: the previous run of the entry was still going (overlap = skip).
    Skipped,
    /// Interrupted because applianced shut down.
    Stopped,
    /// Was running when a previous applianced died; its end is unknown.
    Lost,
}

impl RunOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
            RunOutcome::Timeout => "timeout",
            RunOutcome::Skipped => "skipped",
            RunOutcome::Stopped => "stopped",
            RunOutcome::Lost => "lost",
        }
    }

    fn parse(s: &str) -> RunOutcome {
        match s {
            "running" => RunOutcome::Running,
            "ok" => RunOutcome::Ok,
            "timeout" => RunOutcome::Timeout,
            "skipped" => RunOutcome::Skipped,
            "stopped" => RunOutcome::Stopped,
            "lost" => RunOutcome::Lost,
            _ => RunOutcome::Failed,
        }
    }
}

/// One run, as stored and as `applianced jobs --json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CronRun {
    pub id: i64,
    pub instance: String,
    pub entry: String,
    /// `schedule` or `manual` (`applianced jobs INSTANCE --run ENTRY`).
    pub trigger: String,
    pub scheduled_unix_ms: i64,
    pub started_unix_ms: i64,
    /// `started - scheduled`: how late the run started.
    pub drift_ms: i64,
    pub ended_unix_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub outcome: RunOutcome,
    pub pid: Option<i32>,
    pub exit_code: Option<i32>,
    /// e.g. `SIGKILL`, when the process was killed by a signal.
    pub signal: Option<String>,
    /// The last few KiB of stdout and stderr together.
    pub output_tail: String,
    /// Why it was skipped, failed to start, or was stopped.
    pub detail: Option<String>,
}

/// Which runs `applianced jobs` wants.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunQuery {
    pub instance: Option<String>,
    pub entry: Option<String>,
    /// The most recent `limit` runs.
    pub limit: usize,
}

pub(super) fn upsert(conn: &Connection, r: &CronRun) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO cron_runs (id, instance, entry, trigger, scheduled_unix_ms,
            started_unix_ms, drift_ms, ended_unix_ms, duration_ms, outcome, pid, exit_code,
            signal, output_tail, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    stmt.execute(params![
        r.id,
        r.instance,
        r.entry,
        r.trigger,
        r.scheduled_unix_ms,
        r.started_unix_ms,
        r.drift_ms,
        r.ended_unix_ms,
        r.duration_ms,
        r.outcome.as_str(),
        r.pid,
        r.exit_code,
        r.signal,
        r.output_tail,
        r.detail,
    ])?;
    Ok(())
}

/// Runs still `running` belong to an applianced that died: mark them `lost`.
pub(super) fn mark_lost(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE cron_runs SET outcome = 'lost',
            detail = 'applianced stopped without recording the end of this run'
         WHERE outcome = 'running'",
        [],
    )
}

/// Runs kept per entry; older ones are pruned (an every-second entry writes
/// 86,400 rows a day).
pub const KEEP_PER_ENTRY: usize = 10_000;

/// Delete all but the newest `keep` runs of each entry.
pub(super) fn prune(conn: &Connection, keep: usize) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM cron_runs WHERE id IN (
            SELECT id FROM (
                SELECT id, ROW_NUMBER() OVER (PARTITION BY instance, entry ORDER BY id DESC) AS n
                FROM cron_runs)
            WHERE n > ?1)",
        [i64::try_from(keep).unwrap_or(i64::MAX)],
    )
}

pub(super) fn max_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT MAX(id) FROM cron_runs", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .optional()
    .map(|v| v.flatten().unwrap_or(0))
}

pub(super) fn query(conn: &Connection, q: &RunQuery) -> rusqlite::Result<Vec<CronRun>> {
    let mut stmt = conn.prepare(
        "SELECT id, instance, entry, trigger, scheduled_unix_ms, started_unix_ms, drift_ms,
                ended_unix_ms, duration_ms, outcome, pid, exit_code, signal, output_tail, detail
         FROM cron_runs
         WHERE (?1 IS NULL OR instance = ?1) AND (?2 IS NULL OR entry = ?2)
         ORDER BY id DESC LIMIT ?3",
    )?;
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let mut runs = stmt
        .query_map(params![q.instance, q.entry, limit], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    runs.reverse();
    Ok(runs)
}

fn row(r: &Row<'_>) -> rusqlite::Result<CronRun> {
    Ok(CronRun {
        id: r.get(0)?,
        instance: r.get(1)?,
        entry: r.get(2)?,
        trigger: r.get(3)?,
        scheduled_unix_ms: r.get(4)?,
        started_unix_ms: r.get(5)?,
        drift_ms: r.get(6)?,
        ended_unix_ms: r.get(7)?,
        duration_ms: r.get(8)?,
        outcome: RunOutcome::parse(&r.get::<_, String>(9)?),
        pid: r.get(10)?,
        exit_code: r.get(11)?,
        signal: r.get(12)?,
        output_tail: r.get(13)?,
        detail: r.get(14)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDb;

    fn run(db: &StateDb, outcome: RunOutcome) -> CronRun {
        CronRun {
            id: db.next_run_id(),
            instance: "demo".into(),
            entry: "tick".into(),
            trigger: "schedule".into(),
            scheduled_unix_ms: 1000,
            started_unix_ms: 1003,
            drift_ms: 3,
            ended_unix_ms: None,
            duration_ms: None,
            outcome,
            pid: Some(7),
            exit_code: None,
            signal: None,
            output_tail: String::new(),
            detail: None,
        }
    }

    fn wait_for(db: &StateDb, pred: impl Fn(&[CronRun]) -> bool) -> Vec<CronRun> {
        let q = RunQuery {
            limit: 100,
            ..RunQuery::default()
        };
        for _ in 0..200 {
            let runs = db.cron_runs(&q).unwrap();
            if pred(&runs) {
                return runs;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("runs never matched: {:?}", db.cron_runs(&q).unwrap());
    }

    #[test]
    fn a_run_is_written_at_start_and_replaced_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).unwrap();
        let mut r = run(&db, RunOutcome::Running);
        db.record_run(r.clone());
        wait_for(&db, |v| v.len() == 1 && v[0].outcome == RunOutcome::Running);
        r.outcome = RunOutcome::Ok;
        r.exit_code = Some(0);
        r.output_tail = "done\n".into();
        db.record_run(r.clone());
        let v = wait_for(&db, |v| v.len() == 1 && v[0].outcome == RunOutcome::Ok);
        assert_eq!(v[0], r);
    }

    #[test]
    fn pruning_keeps_the_newest_runs_of_each_entry() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        for id in 1..=5 {
            let mut r = CronRun {
                id,
                ..run_template()
            };
            if id == 1 {
                r.entry = "other".into();
            }
            upsert(&conn, &r).unwrap();
        }
        assert_eq!(prune(&conn, 2).unwrap(), 2);
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM cron_runs ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(ids, [1, 4, 5]);
    }

    fn run_template() -> CronRun {
        CronRun {
            id: 0,
            instance: "demo".into(),
            entry: "tick".into(),
            trigger: "schedule".into(),
            scheduled_unix_ms: 0,
            started_unix_ms: 0,
            drift_ms: 0,
            ended_unix_ms: None,
            duration_ms: None,
            outcome: RunOutcome::Ok,
            pid: None,
            exit_code: Some(0),
            signal: None,
            output_tail: String::new(),
            detail: None,
        }
    }

    #[test]
    fn runs_left_running_are_marked_lost_on_reopen_and_ids_continue() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        let db = StateDb::open(&p).unwrap();
        db.record_run(run(&db, RunOutcome::Running));
        db.record_run(run(&db, RunOutcome::Ok));
        wait_for(&db, |v| v.len() == 2);
        drop(db);
        let db = StateDb::open(&p).unwrap();
        let v = wait_for(&db, |v| v.len() == 2);
        assert_eq!(v[0].outcome, RunOutcome::Lost);
        assert_eq!(v[1].outcome, RunOutcome::Ok);
        assert_eq!(db.next_run_id(), 3);
    }
}
