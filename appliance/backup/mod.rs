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
//! - `run`: one backup, end to end; `verify`: checking and fetching one.
//! - [`store`]: local dir and S3; [`retention`]: what to keep.
//! - [`restore`]: restore and test restore; [`sql`]: the MariaDB clients.

pub mod archive;
pub mod dump;
pub mod manifest;
pub mod restore;
pub mod retention;
mod run;
pub mod spec;
pub mod sql;
pub mod store;
pub mod stream;
pub mod tab;
mod verify;
pub mod wire;

use crate::layout::Layout;
use crate::process::Launcher;
use crate::state::{BackupQuery, BackupRecord, StateDb, now_unix_ms};
use crate::supervisor::{Appliance, UnitState, UnitStatus};
use base64::Engine;
use spec::BackupSpec;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
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
    /// Per instance; changed by `instance add|remove`.
    specs: Mutex<BTreeMap<String, Arc<BackupSpec>>>,
    launcher: Launcher,
    state: StateDb,
    appliance: Arc<Appliance>,
    /// One backup/restore per instance at a time.
    locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Instances being restored: their cron fires are held.
    restoring: Mutex<BTreeSet<String>>,
    /// The last finished backup and test restore of each instance (for `status`).
    last: Mutex<BTreeMap<(String, String), BackupRecord>>,
    /// ... and the last that succeeded (for `/metrics`).
    last_ok: Mutex<BTreeMap<(String, String), BackupRecord>>,
    /// Ends every schedule (shutdown).
    stop: watch::Sender<bool>,
    /// Per instance: ends its schedules (`instance remove`).
    retire: Mutex<BTreeMap<String, watch::Sender<bool>>>,
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
        let mut last_ok = BTreeMap::new();
        let q = BackupQuery {
            limit: 1000,
            ..BackupQuery::default()
        };
        for r in state.backup_runs(&q).unwrap_or_default() {
            if r.status != "running" && (r.kind == "backup" || r.kind == "test-restore") {
                let key = (r.instance.clone(), r.kind.clone());
                if r.status == "ok" {
                    last_ok.entry(key.clone()).or_insert_with(|| r.clone());
                }
                last.entry(key).or_insert(r);
            }
        }
        Backups {
            layout: layout.clone(),
            specs: Mutex::new(specs),
            launcher: launcher.clone(),
            state: state.clone(),
            appliance,
            locks: Mutex::new(locks),
            restoring: Mutex::default(),
            last: Mutex::new(last),
            last_ok: Mutex::new(last_ok),
            stop: watch::channel(false).0,
            retire: Mutex::default(),
        }
    }

    /// Start each instance's backup and test-restore schedule.
    pub fn start(self: &Arc<Self>) {
        let specs: Vec<Arc<BackupSpec>> = lock(&self.specs).values().cloned().collect();
        for spec in specs {
            self.schedule(&spec);
        }
    }

    /// Back up one more instance (`instance add`): its settings and schedule.
    pub fn add_instance(self: &Arc<Self>, spec: &BackupSpec) {
        let spec = Arc::new(spec.clone());
        lock(&self.specs).insert(spec.instance.clone(), spec.clone());
        lock(&self.locks).entry(spec.instance.clone()).or_default();
        self.schedule(&spec);
    }

    /// Forget an instance (`instance remove`, after its final backup): its
    /// schedules end; its backups stay where they are.
    pub fn remove_instance(&self, instance: &str) {
        if let Some(stop) = lock(&self.retire).remove(instance) {
            let _ = stop.send(true);
        }
        lock(&self.specs).remove(instance);
        lock(&self.locks).remove(instance);
    }

    fn schedule(self: &Arc<Self>, spec: &Arc<BackupSpec>) {
        if !spec.enabled {
            return;
        }
        let (retire, _) = watch::channel(false);
        lock(&self.retire).insert(spec.instance.clone(), retire.clone());
        tracing::info!(instance = %spec.instance, schedule = %spec.schedule.as_str(), "backups scheduled");
        let (me, name, sched) = (self.clone(), spec.instance.clone(), spec.schedule.clone());
        let gone = retire.subscribe();
        tokio::spawn(async move {
            me.on_schedule(&sched, gone, || {
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
            let gone = retire.subscribe();
            tokio::spawn(async move {
                me.on_schedule(&t, gone, || {
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

    /// No more scheduled runs.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    async fn on_schedule<F, Fut>(
        &self,
        schedule: &crate::scheduler::schedule::Schedule,
        mut gone: watch::Receiver<bool>,
        fire: F,
    ) where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut stop = self.stop.subscribe();
        loop {
            let next = schedule.next_after(SystemTime::now());
            tokio::select! {
                _ = sleep_until_wall(next) => {}
                _ = stop.changed() => return,
                _ = gone.changed() => return,
            }
            if *stop.borrow() || *gone.borrow() {
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
        let specs = lock(&self.specs);
        specs
            .get(instance)
            .cloned()
            .ok_or_else(|| BackupError::UnknownInstance {
                name: instance.into(),
                known: specs.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    fn lock(&self, instance: &str) -> Result<tokio::sync::OwnedMutexGuard<()>, BackupError> {
        lock(&self.locks)
            .get(instance)
            .cloned()
            .ok_or_else(|| BackupError::UnknownInstance {
                name: instance.into(),
                known: lock(&self.specs)
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })?
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
            let key = (rec.instance.clone(), rec.kind.clone());
            if rec.status == "ok" {
                lock(&self.last_ok).insert(key.clone(), rec.clone());
            }
            lock(&self.last).insert(key, rec.clone());
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

    /// Backup records, newest first.
    pub async fn list(
        &self,
        instance: Option<String>,
        limit: usize,
    ) -> Result<Vec<BackupRecord>, BackupError> {
        // A removed instance's backups are still listed (its final one is
        // what a restore would start from); a name with no history is a typo.
        let check = instance.as_ref().and_then(|i| self.spec(i).err());
        let state = self.state.clone();
        let q = BackupQuery {
            instance,
            kind: None,
            backup_id: None,
            limit,
        };
        let runs = tokio::task::spawn_blocking(move || state.backup_runs(&q))
            .await
            .map_err(|e| BackupError::Io(e.to_string()))?
            .map_err(|e| BackupError::Io(e.to_string()))?;
        match check {
            Some(unknown) if runs.is_empty() => Err(unknown),
            _ => Ok(runs),
        }
    }

    /// Per instance and kind (`backup`, `test-restore`): the last finished
    /// run and the last that succeeded, for `/metrics`.
    pub fn last_runs(&self) -> Vec<(Option<BackupRecord>, Option<BackupRecord>)> {
        let last = lock(&self.last);
        let ok = lock(&self.last_ok);
        let keys: BTreeSet<&(String, String)> = last.keys().chain(ok.keys()).collect();
        keys.into_iter()
            .map(|k| (last.get(k).cloned(), ok.get(k).cloned()))
            .collect()
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
