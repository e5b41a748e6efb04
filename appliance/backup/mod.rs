//! Backups of each instance: its MariaDB databases (one consistent dump per
//! database, users and grants), its app's `storage/`, and a manifest, all
//! zstd-compressed and SHA-256-hashed while they stream, optionally
//! encrypted; kept in a local dir and optionally an S3-compatible bucket;
//! pruned by keep-daily/weekly/monthly only after a newer backup was read
//! back; verified, restored (whole or one database) and test-restored into
//! a throwaway mariadbd.
//!
//! Runs inside the daemon: on each instance's schedule, and when the control
//! socket asks (`applianced backup ...`, and [`Backups::run_now`] for other
//! modules, e.g. a final backup before an instance is removed).
//!
//! What it may touch: the instance's MariaDB through its socket (as root,
//! through `mariadb`/`mariadb-dump`/`mariadbd` started by the [`Launcher`]),
//! the app's `storage/` dir (read; replaced on restore), the backup dirs
//! (`[backup] dir`, default `DATA/backups/`), `DATA/secrets/backup.env`, the
//! S3 bucket, the state writer (`backup_runs`), and the instance's units only
//! through [`Appliance`] (stopped and started again around a restore).
//!
//! - [`spec`]: config -> checked settings per instance.
//! - [`stream`]: zstd, encryption, hashing.
//! - [`dump`], [`archive`]: what goes in; [`manifest`]: what describes it.
//! - [`store`]: local dir and S3; [`retention`]: what to keep.
//! - [`restore`]: restore and test restore.

pub mod archive;
pub mod dump;
pub mod manifest;
pub mod restore;
pub mod retention;
pub mod spec;
pub mod sql;
pub mod store;
pub mod stream;

use crate::layout::Layout;
use crate::process::Launcher;
use crate::state::{BackupQuery, BackupRecord, StateDb, now_unix_ms};
use crate::supervisor::{Appliance, UnitState, UnitStatus};
use base64::Engine;
use futures_util::StreamExt;
use manifest::Manifest;
use spec::BackupSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use stream::Key;
use tokio::sync::watch;

/// Why a backup, verify or restore failed. Every message names what it was
/// working on (file, object, database).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackupError {
    #[error("unknown instance `{name}`; instances: {known}")]
    UnknownInstance { name: String, known: String },
    #[error("a backup or restore of instance `{0}` is already running")]
    Busy(String),
    #[error("backup `{0}` not found (looked in the local dir and S3)")]
    NotFound(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Tool(String),
    #[error("SQL: {0}")]
    Sql(String),
    #[error("dump: {0}")]
    Dump(String),
    #[error("{0}")]
    Io(String),
    #[error("S3 upload: {0}")]
    Upload(String),
    #[error("S3: {0}")]
    Remote(String),
    #[error("corrupt backup: {0}")]
    Corrupt(String),
    #[error("instance `{0}`: mariadb is not running and ready")]
    DatabaseDown(String),
    #[error("test restore: {0}")]
    Mismatch(String),
}

/// Where a run's progress lines go (the CLI, via the control socket).
pub type Progress = Arc<dyn Fn(String) + Send + Sync>;

/// A progress sink that only logs.
pub fn quiet() -> Progress {
    Arc::new(|line: String| tracing::debug!(%line, "backup progress"))
}

/// rustls needs a process-wide crypto provider for object_store's client;
/// the front end's is ring, so install that one (once; a second call is a no-op).
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The backup service of the daemon.
pub struct Backups {
    layout: Layout,
    specs: BTreeMap<String, Arc<BackupSpec>>,
    launcher: Launcher,
    state: StateDb,
    appliance: Arc<Appliance>,
    /// One backup/restore per instance at a time.
    locks: BTreeMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Instances being restored: their cron fires are held.
    restoring: Mutex<BTreeSet<String>>,
    /// The last finished backup and test restore of each instance (for `status`).
    last: Mutex<BTreeMap<(String, String), BackupRecord>>,
    stop: watch::Sender<bool>,
}

impl Backups {
    pub fn new(
        specs: &[BackupSpec],
        layout: &Layout,
        launcher: &Launcher,
        state: &StateDb,
        appliance: Arc<Appliance>,
    ) -> Backups {
        let specs: BTreeMap<String, Arc<BackupSpec>> = specs
            .iter()
            .map(|s| (s.instance.clone(), Arc::new(s.clone())))
            .collect();
        let locks = specs.keys().map(|k| (k.clone(), Arc::default())).collect();
        let mut last = BTreeMap::new();
        let q = BackupQuery {
            limit: 1000,
            ..BackupQuery::default()
        };
        for r in state.backup_runs(&q).unwrap_or_default() {
            if r.status != "running" && (r.kind == "backup" || r.kind == "test-restore") {
                last.entry((r.instance.clone(), r.kind.clone()))
                    .or_insert(r);
            }
        }
        Backups {
            layout: layout.clone(),
            specs,
            launcher: launcher.clone(),
            state: state.clone(),
            appliance,
            locks,
            restoring: Mutex::default(),
            last: Mutex::new(last),
            stop: watch::channel(false).0,
        }
    }

    /// Start each instance's backup and test-restore schedule.
    pub fn start(self: &Arc<Self>) {
        for spec in self.specs.values() {
            if !spec.enabled {
                continue;
            }
            tracing::info!(instance = %spec.instance, schedule = %spec.schedule.as_str(), "backups scheduled");
            let (me, name, sched) = (self.clone(), spec.instance.clone(), spec.schedule.clone());
            tokio::spawn(async move {
                me.on_schedule(&sched, || {
                    let (me, name) = (me.clone(), name.clone());
                    async move {
                        if let Err(e) = me.run(&name, "schedule", quiet()).await {
                            tracing::error!(instance = %name, error = %e, "scheduled backup failed");
                        }
                    }
                })
                .await
            });
            if let Some(t) = spec.test_restore.clone() {
                let (me, name) = (self.clone(), spec.instance.clone());
                tokio::spawn(async move {
                    me.on_schedule(&t, || {
                        let (me, name) = (me.clone(), name.clone());
                        async move {
                            if let Err(e) = me.test_restore(&name, None, "schedule", quiet()).await {
                                tracing::error!(instance = %name, error = %e, "scheduled test restore failed");
                            }
                        }
                    })
                    .await
                });
            }
        }
    }

    /// No more scheduled runs.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    async fn on_schedule<F, Fut>(&self, schedule: &crate::scheduler::schedule::Schedule, fire: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut stop = self.stop.subscribe();
        loop {
            let next = schedule.next_after(SystemTime::now());
            tokio::select! {
                _ = sleep_until_wall(next) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            fire().await;
        }
    }

    /// True while `instance` is being restored: its cron fires are held.
    pub fn paused(&self, instance: &str) -> bool {
        self.restoring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(instance)
    }

    fn spec(&self, instance: &str) -> Result<Arc<BackupSpec>, BackupError> {
        self.specs
            .get(instance)
            .cloned()
            .ok_or_else(|| BackupError::UnknownInstance {
                name: instance.into(),
                known: self.specs.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    fn lock(&self, instance: &str) -> Result<tokio::sync::OwnedMutexGuard<()>, BackupError> {
        self.locks[instance]
            .clone()
            .try_lock_owned()
            .map_err(|_| BackupError::Busy(instance.into()))
    }

    /// One full backup of `instance` now, as `applianced backup run` does:
    /// dumps, storage, manifest, local copy read back, upload and read back,
    /// retention. The record is in the state database either way. For other
    /// modules (e.g. a final backup before `instance remove`): `trigger` is
    /// recorded (`final`), progress lines go to `progress`.
    pub async fn run_now(
        &self,
        instance: &str,
        trigger: &str,
        progress: Progress,
    ) -> Result<BackupRecord, BackupError> {
        self.run(instance, trigger, progress).await
    }

    async fn run(
        &self,
        instance: &str,
        trigger: &str,
        progress: Progress,
    ) -> Result<BackupRecord, BackupError> {
        let spec = self.spec(instance)?;
        let _one = self.lock(instance)?;
        let mut rec = self.begin(instance, "backup", trigger, None);
        let result = self.backup(&spec, &mut rec, &progress).await;
        self.end(&mut rec, &result);
        match result {
            Ok(()) => Ok(rec),
            Err(e) => Err(e),
        }
    }

    fn begin(&self, instance: &str, kind: &str, trigger: &str, id: Option<String>) -> BackupRecord {
        let rec = BackupRecord {
            id: self.state.next_backup_id(),
            instance: instance.into(),
            kind: kind.into(),
            trigger: trigger.into(),
            backup_id: id,
            started_unix_ms: now_unix_ms(),
            ended_unix_ms: None,
            duration_ms: None,
            status: "running".into(),
            size_bytes: None,
            local: None,
            remote: None,
            error: None,
            detail: None,
        };
        self.state.record_backup(rec.clone());
        rec
    }

    fn end(&self, rec: &mut BackupRecord, result: &Result<(), BackupError>) {
        let now = now_unix_ms();
        rec.ended_unix_ms = Some(now);
        rec.duration_ms = Some(now - rec.started_unix_ms);
        match result {
            Ok(()) => rec.status = "ok".into(),
            Err(e) => {
                rec.status = "failed".into();
                rec.error = Some(e.to_string());
            }
        }
        tracing::info!(instance = %rec.instance, kind = %rec.kind, backup = rec.backup_id.as_deref().unwrap_or("-"),
            status = %rec.status, duration_ms = rec.duration_ms, size = rec.size_bytes, error = rec.error.as_deref().unwrap_or(""),
            "backup run ended");
        self.state.record_backup(rec.clone());
        if rec.kind == "backup" || rec.kind == "test-restore" {
            self.last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((rec.instance.clone(), rec.kind.clone()), rec.clone());
        }
    }

    fn mariadb_socket(&self, instance: &str) -> Result<PathBuf, BackupError> {
        let up = self.appliance.status().iter().any(|s| {
            s.instance == instance
                && s.unit == "mariadb"
                && s.state == UnitState::Running
                && s.ready
        });
        if !up {
            return Err(BackupError::DatabaseDown(instance.into()));
        }
        Ok(self.layout.instance_run_dir(instance).join("mariadb.sock"))
    }

    fn secrets_file(&self) -> PathBuf {
        self.layout.secrets_dir().join("backup.env")
    }

    fn backup_secrets(&self) -> BTreeMap<String, String> {
        let p = self.secrets_file();
        if p.exists() {
            match crate::secrets::read(&p) {
                Ok(v) => return v,
                Err(e) => tracing::warn!(error = %e, "cannot read backup secrets"),
            }
        }
        BTreeMap::new()
    }

    /// The encryption key: `BACKUP_ENCRYPTION_KEY` from the environment, else
    /// from `DATA/secrets/backup.env`; generated there when `create` and missing.
    fn key(&self, create: bool) -> Result<Key, BackupError> {
        let file = self.secrets_file();
        let text = std::env::var("BACKUP_ENCRYPTION_KEY")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.backup_secrets().get("BACKUP_ENCRYPTION_KEY").cloned());
        let text = match text {
            Some(t) => t,
            None if create => {
                let bytes: [u8; 32] = rand::random();
                let t = base64::engine::general_purpose::STANDARD.encode(bytes);
                let mut all = self.backup_secrets();
                all.insert("BACKUP_ENCRYPTION_KEY".into(), t.clone());
                let body: String = all.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                let _ = std::fs::create_dir_all(self.layout.secrets_dir());
                crate::secrets::write_atomic(
                    &file,
                    &format!("# Backup secrets (S3 keys, encryption key). Keep a copy of the key off this machine.\n{body}"),
                )
                .map_err(|e| BackupError::Io(format!("{}: {e}", file.display())))?;
                tracing::warn!(file = %file.display(), "generated a backup encryption key; keep a copy of it off this machine, or encrypted backups cannot be restored elsewhere");
                t
            }
            None => {
                return Err(BackupError::Config(format!(
                    "this backup is encrypted and no key is set: BACKUP_ENCRYPTION_KEY in the environment or in {}",
                    file.display()
                )));
            }
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| BackupError::Config(format!("BACKUP_ENCRYPTION_KEY: not base64: {e}")))?;
        let arr: [u8; 32] = raw.try_into().map_err(|_| {
            BackupError::Config("BACKUP_ENCRYPTION_KEY: must be 32 bytes, base64-encoded".into())
        })?;
        Ok(Key(arr))
    }

    fn s3(&self, spec: &BackupSpec) -> Result<Option<store::S3Target>, BackupError> {
        let Some(s3) = &spec.s3 else { return Ok(None) };
        let (id, secret) = store::credentials(&self.backup_secrets(), &self.secrets_file())?;
        store::S3Target::new(s3, &id, &secret).map(Some)
    }

    async fn backup(
        &self,
        spec: &BackupSpec,
        rec: &mut BackupRecord,
        progress: &Progress,
    ) -> Result<(), BackupError> {
        let t0 = now_unix_ms();
        let id = manifest::backup_id(&spec.instance, t0);
        rec.backup_id = Some(id.clone());
        self.state.record_backup(rec.clone());
        let say = |s: String| {
            tracing::info!(instance = %spec.instance, backup = %id, "{s}");
            progress(s)
        };
        say(format!("backup {id} started"));
        let inst_dir = spec.instance_dir();
        crate::provision::mkdir(&inst_dir, 0o700, None)
            .map_err(|e| BackupError::Io(format!("{}: {e}", inst_dir.display())))?;
        let partial = inst_dir.join(format!("{id}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(partial.join("db"))
            .map_err(|e| BackupError::Io(format!("{}: {e}", partial.display())))?;
        let result = self.write_backup(spec, &id, t0, &partial, &say).await;
        let m = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(e);
            }
        };
        let final_dir = store::local_dir(&inst_dir, &id);
        std::fs::rename(&partial, &final_dir)
            .map_err(|e| BackupError::Io(format!("{}: {e}", final_dir.display())))?;
        let _ = std::fs::File::open(&inst_dir).and_then(|d| d.sync_all());
        rec.size_bytes = Some(m.total_size() as i64);
        rec.local = Some("ok".into());
        rec.detail = Some(format!(
            "{} databases, storage {} bytes; local {}",
            m.databases.len(),
            m.file(archive::FILE).map(|f| f.raw_size).unwrap_or(0),
            final_dir.display()
        ));
        self.state.record_backup(rec.clone());
        say(format!(
            "written and read back: {} ({} bytes in {} files)",
            final_dir.display(),
            m.total_size(),
            m.files.len()
        ));
        // The local copy is verified: retention may prune older local ones.
        self.prune_local(spec, &id, &say).await;
        if let Some(target) = self
            .s3(spec)
            .inspect_err(|_| rec.remote = Some("failed".into()))?
        {
            let p = progress.clone();
            let up = target.upload(&final_dir, &m, &move |s| p(s)).await;
            match up {
                Ok(()) => {
                    rec.remote = Some("ok".into());
                    say(format!(
                        "uploaded and read back: {}",
                        target.url(&spec.instance, &id)
                    ));
                    self.prune_s3(spec, &target, &id, &say).await;
                }
                Err(e) => {
                    rec.remote = Some("failed".into());
                    return Err(BackupError::Upload(format!(
                        "{e} (the local copy is kept: {})",
                        final_dir.display()
                    )));
                }
            }
        }
        Ok(())
    }

    async fn write_backup(
        &self,
        spec: &BackupSpec,
        id: &str,
        t0: i64,
        dir: &Path,
        say: &(dyn Fn(String) + Sync),
    ) -> Result<Manifest, BackupError> {
        let key = if spec.encrypt {
            Some(self.key(true)?)
        } else {
            None
        };
        let mut files = Vec::new();
        let mut databases = Vec::new();
        let mut server_version = None;
        if spec.has_mariadb {
            let socket = self.mariadb_socket(&spec.instance)?;
            server_version = sql::query(&self.launcher, &socket, "SELECT VERSION()")
                .await?
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next());
            let dbs = dump::databases(&self.launcher, &socket).await?;
            say(format!(
                "dumping {} databases, {} at a time",
                dbs.len(),
                spec.parallel
            ));
            let ctx = dump::DumpCtx {
                launcher: self.launcher.clone(),
                socket: socket.clone(),
                level: spec.zstd_level,
                key: key.clone(),
                checksums: spec.checksums,
            };
            let total = dbs.len();
            let mut done = 0usize;
            let jobs = dbs.into_iter().map(|db| {
                let (ctx, dir) = (ctx.clone(), dir.to_path_buf());
                async move { dump::dump_database(&ctx, &dir, &db).await }
            });
            let mut s = futures_util::stream::iter(jobs).buffer_unordered(spec.parallel);
            while let Some(r) = s.next().await {
                let (f, d) = r?;
                done += 1;
                say(format!(
                    "[{done}/{total}] {} dumped ({} bytes stored)",
                    d.name, f.size
                ));
                files.push(f);
                databases.push(d);
            }
            drop(s);
            files.push(dump::dump_users(&ctx, dir).await?);
            say("users and grants dumped".into());
        }
        let storage = spec.app_dir.join("storage");
        let (out, level, k) = (dir.join(archive::FILE), spec.zstd_level, key.clone());
        let entry =
            tokio::task::spawn_blocking(move || archive::write(&storage, &out, level, k.as_ref()))
                .await
                .map_err(|e| BackupError::Io(format!("archiving storage: {e}")))??;
        say(format!(
            "storage archived ({} bytes, {} stored)",
            entry.raw_size, entry.size
        ));
        files.push(entry);
        files.sort_by(|a, b| a.name.cmp(&b.name));
        databases.sort_by(|a, b| a.name.cmp(&b.name));
        let created = chrono::DateTime::from_timestamp_millis(t0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let m = Manifest {
            format: manifest::FORMAT,
            instance: spec.instance.clone(),
            id: id.to_string(),
            created_unix_ms: t0,
            created,
            applianced_version: env!("CARGO_PKG_VERSION").into(),
            app_version: spec.app_version.clone().or_else(|| {
                std::fs::read_to_string(spec.app_dir.join("VERSION"))
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            }),
            server_version,
            compression: format!("zstd-{}", spec.zstd_level),
            encryption: key.as_ref().map(|_| "xchacha20poly1305-stream".into()),
            files,
            databases,
            duration_ms: now_unix_ms() - t0,
        };
        let bytes = serde_json::to_vec_pretty(&m).map_err(|e| BackupError::Io(e.to_string()))?;
        // Read back before the manifest marks the backup complete.
        let (d, m2) = (dir.to_path_buf(), m.clone());
        let problems = tokio::task::spawn_blocking(move || store::verify_local(&d, &m2, None))
            .await
            .map_err(|e| BackupError::Io(e.to_string()))?;
        if !problems.is_empty() {
            return Err(BackupError::Corrupt(problems.join("; ")));
        }
        crate::secrets::write_atomic_mode(&dir.join(manifest::NAME), &bytes, 0o600)
            .map_err(|e| BackupError::Io(format!("{}: {e}", dir.display())))?;
        Ok(m)
    }

    async fn prune_local(&self, spec: &BackupSpec, newest: &str, say: &(dyn Fn(String) + Sync)) {
        let inst_dir = spec.instance_dir();
        let present = store::local_backups(&inst_dir);
        for id in retention::to_prune(&present, newest, spec.keep) {
            let dir = store::local_dir(&inst_dir, &id);
            // The manifest first: a half-deleted dir is never a backup.
            let _ = std::fs::remove_file(dir.join(manifest::NAME));
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    say(format!("retention: pruned local {id}"));
                    self.mark(&spec.instance, &id, |r| r.local = Some("pruned".into()))
                        .await;
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot prune backup"),
            }
        }
    }

    async fn prune_s3(
        &self,
        spec: &BackupSpec,
        target: &store::S3Target,
        newest: &str,
        say: &(dyn Fn(String) + Sync),
    ) {
        let present = match target.list(&spec.instance).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot list S3 backups");
                return;
            }
        };
        for id in retention::to_prune(&present, newest, spec.keep) {
            match target.delete(&spec.instance, &id).await {
                Ok(()) => {
                    say(format!("retention: pruned S3 {id}"));
                    self.mark(&spec.instance, &id, |r| r.remote = Some("pruned".into()))
                        .await;
                }
                Err(e) => tracing::warn!(backup = %id, error = %e, "cannot prune S3 backup"),
            }
        }
    }

    /// Update the record of the backup that made `id`.
    async fn mark(&self, instance: &str, id: &str, f: impl FnOnce(&mut BackupRecord)) {
        let (state, q) = (
            self.state.clone(),
            BackupQuery {
                instance: Some(instance.into()),
                kind: Some("backup".into()),
                backup_id: Some(id.into()),
                limit: 1,
            },
        );
        if let Ok(Ok(mut v)) = tokio::task::spawn_blocking(move || state.backup_runs(&q)).await {
            if let Some(mut r) = v.pop() {
                f(&mut r);
                self.state.record_backup(r);
            }
        }
    }

    /// Backup records, newest first.
    pub async fn list(
        &self,
        instance: Option<String>,
        limit: usize,
    ) -> Result<Vec<BackupRecord>, BackupError> {
        if let Some(i) = &instance {
            self.spec(i)?;
        }
        let state = self.state.clone();
        let q = BackupQuery {
            instance,
            kind: None,
            backup_id: None,
            limit,
        };
        tokio::task::spawn_blocking(move || state.backup_runs(&q))
            .await
            .map_err(|e| BackupError::Io(e.to_string()))?
            .map_err(|e| BackupError::Io(e.to_string()))
    }

    /// Rows for `status`: instances whose last backup or test restore failed.
    pub fn status_rows(&self) -> Vec<UnitStatus> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.values()
            .filter(|r| r.status == "failed")
            .map(|r| UnitStatus {
                instance: r.instance.clone(),
                unit: r.kind.clone(),
                replica: 0,
                state: UnitState::Failed,
                pid: None,
                started_ms: None,
                since_ms: r.ended_unix_ms.unwrap_or(r.started_unix_ms),
                ready: false,
                restarts: 0,
                last_exit: None,
                message: Some(format!(
                    "{} {} failed: {}",
                    r.kind,
                    r.backup_id.as_deref().unwrap_or(""),
                    r.error.as_deref().unwrap_or("")
                )),
            })
            .collect()
    }

    /// Check a backup's files against its manifest, in every target that
    /// holds it. `Ok` with the report when intact; `Corrupt` naming each bad file.
    pub async fn verify(&self, id: &str, progress: Progress) -> Result<BackupRecord, BackupError> {
        let (instance, _) = manifest::parse_id(id).ok_or_else(|| {
            BackupError::NotFound(format!("{id} (ids look like INSTANCE-YYYYMMDDTHHMMSSZ)"))
        })?;
        let spec = self.spec(instance)?;
        let mut rec = self.begin(instance, "verify", "manual", Some(id.into()));
        let result = self.verify_in(&spec, id, &mut rec, &progress).await;
        self.end(&mut rec, &result);
        result.map(|()| rec)
    }

    async fn verify_in(
        &self,
        spec: &BackupSpec,
        id: &str,
        rec: &mut BackupRecord,
        progress: &Progress,
    ) -> Result<(), BackupError> {
        let mut problems = Vec::new();
        let mut found = false;
        let dir = store::local_dir(&spec.instance_dir(), id);
        if dir.join(manifest::NAME).is_file() {
            found = true;
            let m = store::read_local_manifest(&dir)?;
            let (d, m2) = (dir.clone(), m.clone());
            let p = tokio::task::spawn_blocking(move || store::verify_local(&d, &m2, None))
                .await
                .map_err(|e| BackupError::Io(e.to_string()))?;
            rec.local = Some(if p.is_empty() { "ok" } else { "failed" }.into());
            rec.size_bytes = Some(m.total_size() as i64);
            progress(format!(
                "local {}: {}",
                dir.display(),
                if p.is_empty() {
                    "ok".to_string()
                } else {
                    p.join("; ")
                }
            ));
            problems.extend(p);
        }
        if let Some(target) = self.s3(spec)? {
            match target.manifest(&spec.instance, id).await {
                Ok(m) => {
                    found = true;
                    let p = target.verify(&m).await;
                    rec.remote = Some(if p.is_empty() { "ok" } else { "failed" }.into());
                    progress(format!(
                        "{}: {}",
                        target.url(&spec.instance, id),
                        if p.is_empty() {
                            "ok".to_string()
                        } else {
                            p.join("; ")
                        }
                    ));
                    problems.extend(p);
                }
                Err(e) if found => {
                    rec.remote = Some("failed".into());
                    problems.push(e.to_string());
                }
                Err(_) => {}
            }
        }
        if !found {
            return Err(BackupError::NotFound(id.into()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BackupError::Corrupt(problems.join("; ")))
        }
    }

    /// Where a backup can be read from: the local copy, or a download of the
    /// S3 copy into a temp dir (removed by the returned guard).
    async fn fetch(
        &self,
        spec: &BackupSpec,
        id: &str,
        progress: &Progress,
    ) -> Result<(PathBuf, Manifest, Option<TempDir>), BackupError> {
        let dir = store::local_dir(&spec.instance_dir(), id);
        if dir.join(manifest::NAME).is_file() {
            let m = store::read_local_manifest(&dir)?;
            let (d, m2) = (dir.clone(), m.clone());
            let p = tokio::task::spawn_blocking(move || store::verify_local(&d, &m2, None))
                .await
                .map_err(|e| BackupError::Io(e.to_string()))?;
            if !p.is_empty() {
                return Err(BackupError::Corrupt(p.join("; ")));
            }
            progress(format!(
                "using the local copy {} (hashes checked)",
                dir.display()
            ));
            return Ok((dir, m, None));
        }
        let Some(target) = self.s3(spec)? else {
            return Err(BackupError::NotFound(id.into()));
        };
        let tmp = TempDir(spec.instance_dir().join(format!(".download-{id}")));
        let _ = std::fs::remove_dir_all(&tmp.0);
        crate::provision::mkdir(&tmp.0, 0o700, None)
            .map_err(|e| BackupError::Io(format!("{}: {e}", tmp.0.display())))?;
        progress(format!("downloading {}", target.url(&spec.instance, id)));
        let m = match target.download(&spec.instance, id, &tmp.0).await {
            Ok(m) => m,
            Err(BackupError::Remote(e)) if e.contains("manifest.json") => {
                return Err(BackupError::NotFound(id.into()));
            }
            Err(e) => return Err(e),
        };
        progress("downloaded (hashes checked)".into());
        Ok((tmp.0.clone(), m, Some(tmp)))
    }

    /// The newest local backup of `instance`.
    fn latest(&self, spec: &BackupSpec) -> Option<String> {
        store::local_backups(&spec.instance_dir()).pop()
    }
}

/// A directory removed when dropped.
pub(crate) struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sleep until the wall clock reaches `deadline`, re-aimed every 30 s (as the
/// cron scheduler's entries do).
async fn sleep_until_wall(deadline: Option<SystemTime>) {
    let Some(deadline) = deadline else {
        return std::future::pending().await;
    };
    loop {
        match deadline.duration_since(SystemTime::now()) {
            Ok(left) if !left.is_zero() => {
                tokio::time::sleep(left.min(Duration::from_secs(30))).await
            }
            _ => return,
        }
    }
}
