//! Restoring a backup into its instance (everything, or one database), and
//! the test restore into a throwaway `mariadbd` that checks every table's
//! `CHECKSUM TABLE` against the manifest.
//!
//! A restore first checks every file it needs against the manifest (nothing
//! is touched if one is corrupt), then holds the instance's cron fires and
//! stops its units other than `mariadb` and `redis` (php-fpm, the queue
//! workers, custom units), loads, and starts those units again whatever
//! happened.

use super::manifest::{Database, Manifest};
use super::stream::{self, Key};
use super::{BackupError, Backups, Progress, TempDir, archive, dump, sql};
use crate::process::Launcher;
use crate::state::BackupRecord;
use crate::supervisor::UnitState;
use futures_util::StreamExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Units left running through a restore: the database being restored, and
/// Redis (queues and cache are not in backups).
const KEEP_RUNNING: &[&str] = &["mariadb", "redis"];

impl Backups {
    /// Restore backup `id` into `instance`: every database, users and grants,
    /// and `storage/`; or only database `db`.
    pub async fn restore(
        &self,
        instance: &str,
        id: &str,
        db: Option<&str>,
        progress: Progress,
    ) -> Result<BackupRecord, BackupError> {
        let spec = self.spec(instance)?;
        match super::manifest::parse_id(id) {
            Some((owner, _)) if owner == instance => {}
            Some((owner, _)) => {
                return Err(BackupError::Config(format!(
                    "backup {id} belongs to instance `{owner}`, not `{instance}`"
                )));
            }
            None => {
                return Err(BackupError::NotFound(format!(
                    "{id} (ids look like {instance}-YYYYMMDDTHHMMSSZ)"
                )));
            }
        }
        let _one = self.lock(instance)?;
        let mut rec = self.begin(instance, "restore", "manual", Some(id.into()));
        let result = self.restore_in(&spec, id, db, &mut rec, &progress).await;
        self.end(&mut rec, &result);
        result.map(|()| rec)
    }

    async fn restore_in(
        &self,
        spec: &super::spec::BackupSpec,
        id: &str,
        only: Option<&str>,
        rec: &mut BackupRecord,
        progress: &Progress,
    ) -> Result<(), BackupError> {
        let (dir, m, _tmp) = self.fetch(spec, id, progress).await?;
        let dbs: Vec<Database> = match only {
            Some(name) => vec![m.database(name).cloned().ok_or_else(|| {
                BackupError::Config(format!(
                    "backup {id} has no database `{name}`; it has: {}",
                    m.databases
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?],
            None => m.databases.clone(),
        };
        let key = if m.encryption.is_some() {
            Some(self.key(false)?)
        } else {
            None
        };
        let socket = if dbs.is_empty() {
            None
        } else {
            Some(self.mariadb_socket(&spec.instance)?)
        };
        // Pause: cron first, then the units that use the database.
        self.restoring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.instance.clone());
        let stopped = self.pause_units(&spec.instance, progress).await;
        let result = self
            .load_all(
                spec,
                &dir,
                &m,
                &dbs,
                only.is_none(),
                socket.as_deref(),
                key.as_ref(),
                progress,
            )
            .await;
        for u in &stopped {
            let _ = self.appliance.start_unit(&spec.instance, u).await;
        }
        if !stopped.is_empty() {
            progress(format!("started again: {}", stopped.join(", ")));
        }
        self.restoring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&spec.instance);
        rec.detail = Some(match only {
            Some(d) => format!("database {d}"),
            None => format!("{} databases, users, storage", dbs.len()),
        });
        result
    }

    /// Stop every running unit of `instance` but [`KEEP_RUNNING`]; their names.
    async fn pause_units(&self, instance: &str, progress: &Progress) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for s in self.appliance.status() {
            let active = !matches!(
                s.state,
                UnitState::Inactive | UnitState::Failed | UnitState::Exited | UnitState::Skipped
            );
            if s.instance == instance
                && active
                && !KEEP_RUNNING.contains(&s.unit.as_str())
                && !names.contains(&s.unit)
            {
                names.push(s.unit);
            }
        }
        for u in names.iter().rev() {
            let _ = self.appliance.stop_unit(instance, u).await;
        }
        if !names.is_empty() {
            progress(format!(
                "paused (cron held, units stopped): {}",
                names.join(", ")
            ));
        } else {
            progress("paused (cron held)".into());
        }
        names
    }

    #[allow(clippy::too_many_arguments)]
    async fn load_all(
        &self,
        spec: &super::spec::BackupSpec,
        dir: &Path,
        m: &Manifest,
        dbs: &[Database],
        whole: bool,
        socket: Option<&Path>,
        key: Option<&Key>,
        progress: &Progress,
    ) -> Result<(), BackupError> {
        if let Some(socket) = socket {
            load_databases(
                &self.launcher,
                socket,
                dir,
                dbs,
                key,
                spec.parallel,
                progress,
            )
            .await?;
            if whole {
                if let Some(f) = m.file("users.sql.zst") {
                    let path = dir.join(&f.name);
                    let k = key.cloned();
                    sql::load(
                        &self.launcher,
                        socket,
                        None,
                        Box::new(move |w| {
                            let mut r = stream::reader(std::fs::File::open(&path)?, k.as_ref())?;
                            std::io::copy(&mut r, w)
                        }),
                    )
                    .await?;
                    // The app's own user keeps this machine's password.
                    let init = self
                        .layout
                        .instance_run_dir(&spec.instance)
                        .join("mariadb-init.sql");
                    if init.is_file() {
                        sql::load(
                            &self.launcher,
                            socket,
                            None,
                            Box::new(move |w| std::io::copy(&mut std::fs::File::open(&init)?, w)),
                        )
                        .await?;
                    }
                    sql::query(&self.launcher, socket, "FLUSH PRIVILEGES").await?;
                    progress("users and grants restored".into());
                }
            }
        }
        if whole {
            let storage = spec.app_dir.join("storage");
            let archive_path = dir.join(archive::FILE);
            let k = key.cloned();
            let n = tokio::task::spawn_blocking(move || {
                swap_storage(&archive_path, &storage, k.as_ref())
            })
            .await
            .map_err(|e| BackupError::Io(e.to_string()))??;
            progress(format!("storage/ restored ({n} entries)"));
        }
        Ok(())
    }

    /// Load backup `id` (default: the newest local one) into a throwaway
    /// mariadbd and compare every table's `CHECKSUM TABLE` with the manifest.
    pub async fn test_restore(
        &self,
        instance: &str,
        id: Option<&str>,
        trigger: &str,
        progress: Progress,
    ) -> Result<BackupRecord, BackupError> {
        let spec = self.spec(instance)?;
        let id = match id {
            Some(i) => i.to_string(),
            None => self
                .latest(&spec)
                .ok_or_else(|| BackupError::NotFound(format!("any backup of `{instance}`")))?,
        };
        let mut rec = self.begin(instance, "test-restore", trigger, Some(id.clone()));
        let result = self.test_restore_in(&spec, &id, &mut rec, &progress).await;
        self.end(&mut rec, &result);
        result.map(|()| rec)
    }

    async fn test_restore_in(
        &self,
        spec: &super::spec::BackupSpec,
        id: &str,
        rec: &mut BackupRecord,
        progress: &Progress,
    ) -> Result<(), BackupError> {
        let (dir, m, _tmp) = self.fetch(spec, id, progress).await?;
        let key = if m.encryption.is_some() {
            Some(self.key(false)?)
        } else {
            None
        };
        let scratch = TempDir(
            spec.instance_dir()
                .join(format!(".test-restore-{}", std::process::id())),
        );
        let _ = std::fs::remove_dir_all(&scratch.0);
        crate::provision::mkdir(&scratch.0, 0o700, None)
            .map_err(|e| BackupError::Io(format!("{}: {e}", scratch.0.display())))?;
        let server = Throwaway::start(&self.launcher, &scratch.0, progress).await?;
        let result = async {
            load_databases(
                &self.launcher,
                &server.socket,
                &dir,
                &m.databases,
                key.as_ref(),
                spec.parallel,
                progress,
            )
            .await?;
            let mut tables = 0usize;
            let mut mismatches = Vec::new();
            for d in &m.databases {
                if d.checksums.is_empty() {
                    continue;
                }
                let names: Vec<String> = d.checksums.keys().cloned().collect();
                let rows = sql::query(
                    &self.launcher,
                    &server.socket,
                    &dump::checksum_sql(&d.name, &names),
                )
                .await?;
                let got = dump::parse_checksums(&d.name, &rows);
                for (t, want) in &d.checksums {
                    tables += 1;
                    let have = got.get(t).cloned().flatten();
                    if &have != want {
                        mismatches.push(format!(
                            "{}.{t}: {} after restore, {} at dump time",
                            d.name,
                            have.as_deref().unwrap_or("missing"),
                            want.as_deref().unwrap_or("NULL")
                        ));
                    }
                }
            }
            rec.detail = Some(format!(
                "{} databases, {tables} tables checked, {} mismatches",
                m.databases.len(),
                mismatches.len()
            ));
            progress(rec.detail.clone().unwrap_or_default());
            if mismatches.is_empty() {
                Ok(())
            } else {
                Err(BackupError::Mismatch(mismatches.join("; ")))
            }
        }
        .await;
        server.stop().await;
        result
    }
}

/// Drop, create and load each database, `parallel` at a time.
async fn load_databases(
    launcher: &Launcher,
    socket: &Path,
    dir: &Path,
    dbs: &[Database],
    key: Option<&Key>,
    parallel: usize,
    progress: &Progress,
) -> Result<(), BackupError> {
    let total = dbs.len();
    let mut done = 0usize;
    let jobs = dbs.iter().cloned().map(|d| {
        let (launcher, socket, dir, key) = (
            launcher.clone(),
            socket.to_path_buf(),
            dir.to_path_buf(),
            key.cloned(),
        );
        async move { load_database(&launcher, &socket, &dir, &d, key.as_ref()).await }
    });
    let mut s = futures_util::stream::iter(jobs).buffer_unordered(parallel);
    while let Some(r) = s.next().await {
        let (name, bytes) = r?;
        done += 1;
        progress(format!(
            "[{done}/{total}] {name} restored ({bytes} bytes of SQL and rows)"
        ));
    }
    Ok(())
}

async fn load_database(
    launcher: &Launcher,
    socket: &Path,
    dir: &Path,
    d: &Database,
    key: Option<&Key>,
) -> Result<(String, u64), BackupError> {
    let name = sql::ident(&d.name);
    sql::query(
        launcher,
        socket,
        &format!(
            "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name} CHARACTER SET {} COLLATE {}",
            d.charset, d.collation
        ),
    )
    .await?;
    let path = dir.join(&d.file);
    let k = key.cloned();
    if d.format == super::tab::FORMAT {
        let (rt, launcher, socket, db) = (
            tokio::runtime::Handle::current(),
            launcher.clone(),
            socket.to_path_buf(),
            d.name.clone(),
        );
        let bytes = tokio::task::spawn_blocking(move || {
            super::tab::load(&rt, &launcher, &socket, &db, &path, k.as_ref())
        })
        .await
        .map_err(|e| BackupError::Io(format!("loading {}: {e}", d.name)))??;
        return Ok((d.name.clone(), bytes));
    }
    let bytes = sql::load(
        launcher,
        socket,
        Some(&d.name),
        Box::new(move |w| {
            let mut r = stream::reader(
                std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?),
                k.as_ref(),
            )?;
            std::io::copy(&mut r, w)
        }),
    )
    .await?;
    Ok((d.name.clone(), bytes))
}

/// Extract the archive beside `storage`, then swap it in; the old dir is
/// removed only once the new one is in place.
fn swap_storage(
    archive_path: &Path,
    storage: &Path,
    key: Option<&Key>,
) -> Result<u64, BackupError> {
    let parent = storage
        .parent()
        .ok_or_else(|| BackupError::Io(format!("{} has no parent", storage.display())))?;
    let fresh = parent.join(".storage.restoring");
    let _ = std::fs::remove_dir_all(&fresh);
    let n = archive::extract(archive_path, &fresh, key)?;
    let old = parent.join(".storage.before-restore");
    let _ = std::fs::remove_dir_all(&old);
    let io = |e: std::io::Error| BackupError::Io(format!("replacing {}: {e}", storage.display()));
    if storage.exists() {
        std::fs::rename(storage, &old).map_err(io)?;
    }
    std::fs::rename(&fresh, storage).map_err(io)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(n)
}

/// A scratch mariadbd on a unix socket in a temp dir.
struct Throwaway {
    child: crate::process::Child,
    socket: PathBuf,
}

impl Throwaway {
    async fn start(
        launcher: &Launcher,
        dir: &Path,
        progress: &Progress,
    ) -> Result<Throwaway, BackupError> {
        let data = dir.join("data");
        let socket = dir.join("mariadb.sock");
        let mut install = sql::command(
            sql::program("mariadb-install-db")?,
            vec![
                "--no-defaults".into(),
                format!("--datadir={}", data.display()),
                // Its own tmpdir: bootstraps sharing /tmp collide on temp
                // table names (see units/mariadb.toml).
                format!("--tmpdir={}", dir.display()),
                "--user=root".into(),
                "--auth-root-authentication-method=socket".into(),
                "--skip-test-db".into(),
            ],
        );
        install.cwd = Some(dir.to_path_buf());
        let (status, out) = launcher
            .output(install, Duration::from_secs(300))
            .await
            .map_err(|e| BackupError::Tool(format!("mariadb-install-db: {e}")))?;
        if !status.success() {
            return Err(BackupError::Tool(format!(
                "mariadb-install-db: {}: {}",
                status.describe(),
                out.trim()
            )));
        }
        let cmd = sql::command(
            sql::program("mariadbd")?,
            vec![
                "--no-defaults".into(),
                format!("--datadir={}", data.display()),
                format!("--socket={}", socket.display()),
                format!("--tmpdir={}", dir.display()),
                format!("--pid-file={}", dir.join("mariadb.pid").display()),
                format!("--log-error={}", dir.join("error.log").display()),
                "--user=root".into(),
                "--skip-networking".into(),
                "--innodb-buffer-pool-size=128M".into(),
                "--innodb-flush-log-at-trx-commit=0".into(),
                "--innodb-doublewrite=0".into(),
                "--max-allowed-packet=1G".into(),
            ],
        );
        let child = launcher
            .spawn(cmd)
            .await
            .map_err(|e| BackupError::Tool(format!("mariadbd: {e}")))?;
        let me = Throwaway { child, socket };
        let t0 = std::time::Instant::now();
        loop {
            if crate::readiness::mariadb_greeting(&me.socket.display().to_string())
                .await
                .is_ok()
            {
                break;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                me.stop().await;
                return Err(BackupError::Tool(format!(
                    "the throwaway mariadbd did not come up in 120 s: {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        progress(format!(
            "throwaway mariadbd up in {} ms",
            t0.elapsed().as_millis()
        ));
        Ok(me)
    }

    async fn stop(mut self) {
        crate::process::signal_pid(self.child.pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(120), &mut self.child.exit)
            .await
            .is_err()
        {
            // A throwaway server holds nothing worth a clean stop.
            crate::process::signal_group(self.child.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = (&mut self.child.exit).await;
        }
    }
}
