//! Verifying a backup in every target that holds it, and fetching one to
//! read (the local copy, or a checked download of the S3 copy).

use super::manifest::{self, Manifest};
use super::spec::BackupSpec;
use super::{BackupError, Backups, Progress, TempDir, store};
use crate::state::BackupRecord;
use std::path::PathBuf;

impl Backups {
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
    pub(super) async fn fetch(
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
    pub(super) fn latest(&self, spec: &BackupSpec) -> Option<String> {
        store::local_backups(&spec.instance_dir()).pop()
    }
}
