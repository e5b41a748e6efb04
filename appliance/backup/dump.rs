//! Dumping one instance's MariaDB: every database in its own file, several at
//! once, each consistent (`--single-transaction`), with routines, events and
//! triggers; then the users and grants.
//!
//! Checksums at the dump's snapshot: a session read-locks the database's base
//! tables (`FLUSH TABLES ... WITH READ LOCK`), a second one opens a
//! consistent-snapshot transaction, `mariadb-dump` starts, and the lock is
//! released once the dump's output shows it has its snapshot (its first table
//! section: the snapshot is taken before anything past the header is
//! written). Both snapshots are of the locked state; the second session then
//! runs `CHECKSUM TABLE` (which reads through its transaction's read view:
//! checked on MariaDB 10.11) while the dump streams and writers go on. Writes
//! to that one database wait only for the dump to start.

use super::BackupError;
use super::manifest::{Database, FileEntry};
use super::sql::{self, Session, ident, literal};
use super::stream::{Key, Writer};
use crate::process::Launcher;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What a dump reads.
#[derive(Clone)]
pub struct DumpCtx {
    pub launcher: Launcher,
    pub socket: PathBuf,
    pub level: i32,
    pub key: Option<Key>,
    pub checksums: bool,
    /// `mariadb` sessions between two databases' dumps: each database needs
    /// two (the lock holder and the checksummer), and a client process per
    /// use was ~150 process starts for 50 databases.
    pub sessions: Arc<Mutex<Vec<Session>>>,
}

impl DumpCtx {
    /// An idle session, or a new one.
    pub(super) async fn session(&self) -> Result<Session, BackupError> {
        let idle = self.sessions.lock().pop();
        match idle {
            Some(s) => Ok(s),
            None => Session::open(&self.launcher, &self.socket).await,
        }
    }

    /// A session whose last statements succeeded, for the next database.
    pub(super) fn give_back(&self, s: Session) {
        self.sessions.lock().push(s);
    }

    /// End the idle sessions (the dumps are over).
    pub async fn close_sessions(&self) {
        let idle = std::mem::take(&mut *self.sessions.lock());
        for s in idle {
            let _ = s.close().await;
        }
    }
}

/// Databases of the server that belong to the instance (not the system ones).
pub async fn databases(
    launcher: &Launcher,
    socket: &Path,
) -> Result<Vec<(String, String, String)>, BackupError> {
    let rows = sql::query(
        launcher,
        socket,
        "SELECT SCHEMA_NAME, DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME \
         FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN \
         ('mysql','information_schema','performance_schema','sys') ORDER BY SCHEMA_NAME",
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.len() == 3)
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect())
}

/// The query for the base tables of `db`, by name.
fn base_tables_sql(db: &str) -> String {
    format!(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} \
         AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME;",
        literal(db)
    )
}

/// `CHECKSUM TABLE` rows -> `table -> checksum`.
pub fn parse_checksums(db: &str, rows: &[Vec<String>]) -> BTreeMap<String, Option<String>> {
    rows.iter()
        .filter(|r| r.len() >= 2)
        .map(|r| {
            let table = r[0]
                .strip_prefix(&format!("{db}."))
                .unwrap_or(&r[0])
                .to_string();
            let sum = (r[1] != "NULL").then(|| r[1].clone());
            (table, sum)
        })
        .collect()
}

/// The checksum statement for `tables` of `db`.
pub fn checksum_sql(db: &str, tables: &[String]) -> String {
    let list: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{}", ident(db), ident(t)))
        .collect();
    format!("CHECKSUM TABLE {}", list.join(", "))
}

pub(super) fn dump_args(socket: &Path) -> Vec<String> {
    vec![
        "--no-defaults".into(),
        "--user=root".into(),
        format!("--socket={}", socket.display()),
        "--single-transaction".into(),
        "--routines".into(),
        "--events".into(),
        "--triggers".into(),
        "--hex-blob".into(),
        "--quick".into(),
        "--default-character-set=utf8mb4".into(),
        "--max-allowed-packet=1G".into(),
    ]
}

/// Lines that mariadb-dump writes only after its transaction has started.
fn past_snapshot(seen: &[u8]) -> bool {
    const MARKS: [&[u8]; 4] = [
        b"\n-- Table structure for",
        b"\n-- Dumping",
        b"\nDROP TABLE",
        b"\nCREATE TABLE",
    ];
    MARKS.iter().any(|m| seen.windows(m.len()).any(|w| w == *m))
}

/// Run a dump program with `args`, streaming its stdout into `out` through the
/// pipeline. `snapshot` fires once the output shows the snapshot is taken
/// (or the dump ended). Returns `(sha, stored, raw)`.
async fn run_dump(
    ctx: &DumpCtx,
    args: Vec<String>,
    out: &Path,
    snapshot: Option<tokio::sync::oneshot::Sender<()>>,
    what: &str,
) -> Result<(String, u64, u64), BackupError> {
    let mut child = ctx
        .launcher
        .spawn(sql::command(sql::program("mariadb-dump")?, args))
        .await
        .map_err(|e| BackupError::Tool(format!("mariadb-dump: {e}")))?;
    let stdout = child.stdout.take().expect("captured");
    let stderr = tokio::spawn(sql::read_tail(child.stderr.take(), 8192));
    let (level, key, path) = (ctx.level, ctx.key.clone(), out.to_path_buf());
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64, u64)> {
        let mut snapshot = snapshot;
        let mut src = std::fs::File::from(stdout);
        let file = std::fs::File::create(&path)?;
        let mut w = Writer::new(
            std::io::BufWriter::with_capacity(1 << 20, file),
            level,
            key.as_ref(),
        )?;
        let mut buf = vec![0u8; 1 << 20];
        let mut head: Vec<u8> = Vec::new();
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if snapshot.is_some() {
                head.extend_from_slice(&buf[..n]);
                if past_snapshot(&head) {
                    let _ = snapshot.take().map(|s| s.send(()));
                    head = Vec::new();
                }
            }
            w.write_all(&buf[..n])?;
        }
        drop(snapshot);
        let (sha, stored, raw, file) = w.finish()?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((sha, stored, raw))
    });
    let written = writer
        .await
        .map_err(|e| BackupError::Tool(format!("{what}: writer: {e}")))?;
    let status = sql::wait(&mut child, Duration::from_secs(24 * 3600), what).await;
    let err = stderr.await.unwrap_or_default();
    status
        .map_err(|e| BackupError::Dump(format!("{e}: {}", String::from_utf8_lossy(&err).trim())))?;
    written.map_err(|e| BackupError::Io(format!("{what}: writing {}: {e}", out.display())))
}

/// The manifest's `format` of a database dumped here.
pub const FORMAT: &str = "sql";

/// Run `mariadb-dump` with `args` and return its (small) output: the schema
/// or the triggers and routines of a [`super::tab`] dump.
pub(super) async fn capture_dump(
    ctx: &DumpCtx,
    args: Vec<String>,
    what: &str,
) -> Result<Vec<u8>, BackupError> {
    let mut child = ctx
        .launcher
        .spawn(sql::command(sql::program("mariadb-dump")?, args))
        .await
        .map_err(|e| BackupError::Tool(format!("mariadb-dump: {e}")))?;
    let (out, err) = tokio::join!(
        sql::read_pipe(child.stdout.take()),
        sql::read_tail(child.stderr.take(), 8192)
    );
    let status = sql::wait(&mut child, Duration::from_secs(3600), what).await;
    status
        .map_err(|e| BackupError::Dump(format!("{e}: {}", String::from_utf8_lossy(&err).trim())))?;
    out.map_err(|e| BackupError::Dump(format!("{what}: reading its output: {e}")))
}

/// Dump one database into `dir/db/NAME.sql.zst`.
pub async fn dump_database(
    ctx: &DumpCtx,
    dir: &Path,
    db: &(String, String, String),
) -> Result<(FileEntry, Database), BackupError> {
    let name = &db.0;
    let file = format!("db/{name}.sql.zst");
    let out = dir.join(&file);
    let mut args = dump_args(&ctx.socket);
    args.push(name.clone());
    let what = format!("mariadb-dump {name}");
    let mut checksums = BTreeMap::new();
    // The session that sums the tables in a snapshot taken under the same
    // lock as the dump's; it lists them first.
    let (mut summer, tables) = if ctx.checksums {
        let mut summer = ctx.session().await?;
        let tables: Vec<String> = summer
            .run(&base_tables_sql(name))
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect();
        (Some(summer), tables)
    } else {
        (None, Vec::new())
    };
    let (sha, size, raw_size) = if tables.is_empty() {
        if let Some(summer) = summer.take() {
            ctx.give_back(summer);
        }
        run_dump(ctx, args, &out, None, &what).await?
    } else {
        let mut summer = summer.take().expect("taken when there are tables");
        // The lock holder.
        let mut locker = ctx.session().await?;
        let locked: Vec<String> = tables
            .iter()
            .map(|t| format!("{}.{}", ident(name), ident(t)))
            .collect();
        locker
            .run(&format!(
                "SET SESSION lock_wait_timeout = 300;\nFLUSH TABLES {} WITH READ LOCK;",
                locked.join(", ")
            ))
            .await?;
        summer
            .run(
                "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;\n\
                 START TRANSACTION WITH CONSISTENT SNAPSHOT;",
            )
            .await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let dump = run_dump(ctx, args, &out, Some(tx), &what);
        tokio::pin!(dump);
        // Unlock as soon as the dump has its snapshot (or has ended).
        let result = tokio::select! {
            r = &mut dump => { Some(r) }
            _ = rx => None,
        };
        let unlocked = locker.run("UNLOCK TABLES;").await;
        if unlocked.is_ok() {
            ctx.give_back(locker);
        }
        // CHECKSUM TABLE reads through the open transaction's read view, so
        // it sums the locked state while writers go on and the dump streams.
        let sum_sql = format!("{};\nCOMMIT;", checksum_sql(name, &tables));
        let sums = summer.run(&sum_sql);
        let (r, sums) = match result {
            Some(r) => (r, sums.await),
            None => tokio::join!(dump, sums),
        };
        let sums = sums?;
        ctx.give_back(summer);
        let r = r?;
        unlocked?;
        checksums = parse_checksums(name, &sums);
        r
    };
    Ok(records(db, file, FORMAT, (sha, size, raw_size), checksums))
}

/// The manifest's records of database `db` dumped into `file` in `format`:
/// `stored` is `(sha256, size, raw_size)` of the file.
pub(super) fn records(
    db: &(String, String, String),
    file: String,
    format: &str,
    stored: (String, u64, u64),
    checksums: BTreeMap<String, Option<String>>,
) -> (FileEntry, Database) {
    let (name, charset, collation) = db;
    let (sha256, size, raw_size) = stored;
    (
        FileEntry {
            name: file.clone(),
            kind: "database".into(),
            size,
            sha256,
            raw_size,
        },
        Database {
            name: name.clone(),
            file,
            charset: charset.clone(),
            collation: collation.clone(),
            checksums,
            format: format.into(),
        },
    )
}

/// Dump one database: its rows read off the wire ([`super::tab`]) when its
/// column types allow it, else with `mariadb-dump`.
pub async fn dump(
    ctx: &DumpCtx,
    dir: &Path,
    db: &(String, String, String),
) -> Result<(FileEntry, Database), BackupError> {
    if let Some(tables) = super::tab::tables(ctx, &db.0).await? {
        return super::tab::dump_database(ctx, dir, db, tables).await;
    }
    dump_database(ctx, dir, db).await
}

/// Users and grants (`--system=users`) into `dir/users.sql.zst`.
pub async fn dump_users(ctx: &DumpCtx, dir: &Path) -> Result<FileEntry, BackupError> {
    let file = "users.sql.zst".to_string();
    let mut args = dump_args(&ctx.socket);
    // No database named: only users, roles and grants. `--insert-ignore`
    // writes `CREATE USER IF NOT EXISTS`, so a restore never replaces the
    // accounts that exist (root's socket login, the app user's password).
    // `binary`: with a utf8mb4 connection, mariadb-dump's own query fails
    // with "Illegal mix of collations" on a server whose mysql.user view was
    // made under utf8mb4_unicode_ci (ours: collation-server); binary passes
    // the names' bytes through unchanged.
    args.retain(|a| !a.starts_with("--default-character-set"));
    args.extend([
        "--default-character-set=binary".into(),
        "--system=users".into(),
        "--insert-ignore".into(),
    ]);
    let (sha, size, raw_size) = run_dump(
        ctx,
        args,
        &dir.join(&file),
        None,
        "mariadb-dump --system=users",
    )
    .await?;
    Ok(FileEntry {
        name: file,
        kind: "users".into(),
        size,
        sha256: sha,
        raw_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_is_known_taken_only_past_the_dump_header() {
        let header = b"-- MariaDB dump 10.19  Distrib 10.11.6-MariaDB\n--\n-- Host: localhost    Database: t\n/*!40101 SET NAMES utf8mb4 */;\n";
        assert!(!past_snapshot(header));
        let mut more = header.to_vec();
        more.extend_from_slice(b"\n--\n-- Table structure for table `x`\n");
        assert!(past_snapshot(&more));
    }

    #[test]
    fn checksum_rows_map_to_tables_and_null_means_none() {
        let rows = vec![
            vec!["tenancy_a.invoices".to_string(), "123".to_string()],
            vec!["tenancy_a.items".to_string(), "NULL".to_string()],
        ];
        let m = parse_checksums("tenancy_a", &rows);
        assert_eq!(m["invoices"], Some("123".into()));
        assert_eq!(m["items"], None);
    }
}
