//! One backup: dumps and the storage archive into `ID.partial/`, the
//! manifest once every file is read back, the rename that makes it a backup,
//! local retention, the upload (read back too) and S3 retention.

use super::manifest::{self, Manifest};
use super::spec::BackupSpec;
use super::{BackupError, Backups, Progress, archive, dump, retention, sql, store};
use crate::state::{BackupQuery, BackupRecord, now_unix_ms};
use futures_util::StreamExt;
use std::path::Path;

impl Backups {
    pub(super) async fn backup(
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
        // What a crash left mid-backup (one backup per instance runs at a time).
        for e in std::fs::read_dir(&inst_dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let partial = inst_dir.join(format!("{id}.partial"));
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
        // storage/ is archived beside the dumps (its own blocking thread).
        let storage = spec.app_dir.join("storage");
        let (out, level, k) = (dir.join(archive::FILE), spec.zstd_level, key.clone());
        let archiving =
            tokio::task::spawn_blocking(move || archive::write(&storage, &out, level, k.as_ref()));
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
                sessions: Default::default(),
            };
            let total = dbs.len();
            let mut done = 0usize;
            let jobs = dbs.into_iter().map(|db| {
                let (ctx, dir) = (ctx.clone(), dir.to_path_buf());
                async move { dump::dump(&ctx, &dir, &db).await }
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
            ctx.close_sessions().await;
            files.push(dump::dump_users(&ctx, dir).await?);
            say("users and grants dumped".into());
        }
        let entry = archiving
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
}
