//! The `backup_runs` table: one row per backup, verify, restore or test
//! restore, written by the state writer thread at its start and again at its
//! end (and once more when retention prunes the backup), read by
//! `applianced backup list` and `status` through a read-only connection.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS backup_runs (
    id              INTEGER PRIMARY KEY,
    instance        TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    trigger         TEXT    NOT NULL,
    backup_id       TEXT,
    started_unix_ms INTEGER NOT NULL,
    ended_unix_ms   INTEGER,
    duration_ms     INTEGER,
    status          TEXT    NOT NULL,
    size_bytes      INTEGER,
    local           TEXT,
    remote          TEXT,
    error           TEXT,
    detail          TEXT
);
CREATE INDEX IF NOT EXISTS backup_runs_by_instance ON backup_runs (instance, kind, id);
";

/// One backup-related run, as stored and as `applianced backup list --json`
/// shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub id: i64,
    pub instance: String,
    /// `backup`, `verify`, `restore` or `test-restore`.
    pub kind: String,
    /// `schedule`, `manual` or `final` (the last backup before an instance is removed).
    pub trigger: String,
    /// The backup this run made or read, e.g. `demo-20261126T030000Z`.
    pub backup_id: Option<String>,
    pub started_unix_ms: i64,
    pub ended_unix_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    /// `running`, `ok` or `failed`.
    pub status: String,
    /// Bytes stored (compressed, encrypted) for a backup.
    pub size_bytes: Option<i64>,
    /// The local copy: `ok` (written and read back), `failed`, `pruned`.
    pub local: Option<String>,
    /// The S3 copy: `ok` (uploaded and read back), `failed`, `pruned`; none without S3.
    pub remote: Option<String>,
    pub error: Option<String>,
    /// What was done (databases, tables checked, where).
    pub detail: Option<String>,
}

/// Which records `backup list` wants.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackupQuery {
    pub instance: Option<String>,
    pub kind: Option<String>,
    pub backup_id: Option<String>,
    /// The most recent `limit` records.
    pub limit: usize,
}

pub(super) fn upsert(conn: &Connection, r: &BackupRecord) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO backup_runs (id, instance, kind, trigger, backup_id,
            started_unix_ms, ended_unix_ms, duration_ms, status, size_bytes, local, remote,
            error, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    stmt.execute(params![
        r.id,
        r.instance,
        r.kind,
        r.trigger,
        r.backup_id,
        r.started_unix_ms,
        r.ended_unix_ms,
        r.duration_ms,
        r.status,
        r.size_bytes,
        r.local,
        r.remote,
        r.error,
        r.detail,
    ])?;
    Ok(())
}

/// Runs still `running` belong to an applianced that died: mark them failed.
pub(super) fn mark_lost(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE backup_runs SET status = 'failed',
            error = 'applianced stopped before this run ended'
         WHERE status = 'running'",
        [],
    )
}

pub(super) fn max_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT MAX(id) FROM backup_runs", [], |r| {
        r.get::<_, Option<i64>>(0)
    })
    .optional()
    .map(|v| v.flatten().unwrap_or(0))
}

/// Newest first.
pub(super) fn query(conn: &Connection, q: &BackupQuery) -> rusqlite::Result<Vec<BackupRecord>> {
    let mut stmt = conn.prepare(
        "SELECT id, instance, kind, trigger, backup_id, started_unix_ms, ended_unix_ms,
                duration_ms, status, size_bytes, local, remote, error, detail
         FROM backup_runs
         WHERE (?1 IS NULL OR instance = ?1) AND (?2 IS NULL OR kind = ?2)
           AND (?3 IS NULL OR backup_id = ?3)
         ORDER BY id DESC LIMIT ?4",
    )?;
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    stmt.query_map(params![q.instance, q.kind, q.backup_id, limit], row)?
        .collect()
}

fn row(r: &Row<'_>) -> rusqlite::Result<BackupRecord> {
    Ok(BackupRecord {
        id: r.get(0)?,
        instance: r.get(1)?,
        kind: r.get(2)?,
        trigger: r.get(3)?,
        backup_id: r.get(4)?,
        started_unix_ms: r.get(5)?,
        ended_unix_ms: r.get(6)?,
        duration_ms: r.get(7)?,
        status: r.get(8)?,
        size_bytes: r.get(9)?,
        local: r.get(10)?,
        remote: r.get(11)?,
        error: r.get(12)?,
        detail: r.get(13)?,
    })
}
