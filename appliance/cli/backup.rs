//! `applianced backup run|list|verify|restore|test-restore`: clients of the
//! control socket. Progress goes to stderr, the result to stdout (`--json`:
//! the record).

use super::{ok, streamed};
use crate::control::Request;
use crate::control::client::Client;
use crate::state::BackupRecord;
use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::Path;

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Back an instance up now (databases, users, storage/, manifest), upload
    /// it and apply retention.
    Run { instance: String },
    /// Backups, verifies, restores and test restores, newest first.
    List {
        /// Only this instance's.
        instance: Option<String>,
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// Check a backup's files (local and S3) against its manifest's SHA-256s.
    Verify {
        /// e.g. demo-20261126T030000Z
        id: String,
    },
    /// Restore a backup into its instance: everything (databases, users and
    /// grants, storage/), or one database with --db. Units other than mariadb
    /// and redis are stopped and cron is held meanwhile.
    Restore {
        instance: String,
        id: String,
        /// Restore only this database (e.g. one tenant's `tenancy_acme`).
        #[arg(long, value_name = "NAME")]
        db: Option<String>,
    },
    /// Load a backup (default: the newest local one) into a throwaway mariadbd
    /// and compare every table's CHECKSUM TABLE with the dump's.
    TestRestore {
        instance: String,
        id: Option<String>,
    },
}

pub fn backup(sock: &Path, cmd: &BackupCmd, json: bool) -> Result<i32> {
    let req = match cmd {
        BackupCmd::List { instance, limit } => {
            let reply = ok(Client::call(
                sock,
                &Request::BackupList {
                    instance: instance.clone(),
                    limit: *limit,
                },
            )?)?;
            let recs: Vec<BackupRecord> =
                serde_json::from_value(reply).context("backup list reply")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&recs)?);
            } else {
                print!("{}", table(&recs));
            }
            return Ok(0);
        }
        BackupCmd::Run { instance } => Request::BackupRun {
            instance: instance.clone(),
        },
        BackupCmd::Verify { id } => Request::BackupVerify { id: id.clone() },
        BackupCmd::Restore { instance, id, db } => Request::BackupRestore {
            instance: instance.clone(),
            id: id.clone(),
            db: db.clone(),
        },
        BackupCmd::TestRestore { instance, id } => Request::BackupTestRestore {
            instance: instance.clone(),
            id: id.clone(),
        },
    };
    let rec: BackupRecord =
        serde_json::from_value(streamed(sock, &req)?).context("backup reply")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
    } else {
        println!(
            "{} {} {}: {} in {}{}",
            rec.kind,
            rec.instance,
            rec.backup_id.as_deref().unwrap_or("-"),
            rec.status,
            duration(rec.duration_ms),
            rec.size_bytes
                .map(|s| format!(", {}", size(s)))
                .unwrap_or_default()
        );
    }
    Ok(0)
}

fn duration(ms: Option<i64>) -> String {
    match ms {
        Some(ms) if ms >= 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{ms}ms"),
        None => "-".into(),
    }
}

fn size(bytes: i64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// The `backup list` table: one row per run, newest first.
pub fn table(recs: &[BackupRecord]) -> String {
    if recs.is_empty() {
        return "no backup runs recorded\n".into();
    }
    let head = [
        "INSTANCE",
        "KIND",
        "BACKUP",
        "STARTED",
        "DURATION",
        "STATUS",
        "SIZE",
        "LOCAL",
        "S3",
        "ERROR / DETAIL",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.map(String::from).to_vec()];
    for r in recs {
        let t = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(r.started_unix_ms.max(0) as u64);
        rows.push(vec![
            r.instance.clone(),
            r.kind.clone(),
            r.backup_id.clone().unwrap_or_else(|| "-".into()),
            humantime::format_rfc3339_seconds(t).to_string(),
            duration(r.duration_ms),
            r.status.clone(),
            r.size_bytes.map(size).unwrap_or_else(|| "-".into()),
            r.local.clone().unwrap_or_else(|| "-".into()),
            r.remote.clone().unwrap_or_else(|| "-".into()),
            r.error
                .clone()
                .or_else(|| r.detail.clone())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    super::render_table(&rows)
}
