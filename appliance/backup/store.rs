//! Where backups are kept: the local dir (always; written first) and an
//! optional S3-compatible bucket (uploaded from the local copy, multipart,
//! retried, then read back and hashed).
//!
//! Layout, the same in both: `INSTANCE/ID/manifest.json` (uploaded last),
//! `INSTANCE/ID/db/NAME.sql.zst`, `INSTANCE/ID/users.sql.zst`,
//! `INSTANCE/ID/storage.tar.zst`; in S3 under the configured prefix.

use super::BackupError;
use super::manifest::{self, Manifest};
use super::spec::S3Spec;
use super::stream::HashReader;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Local backups of one instance: complete ones (with a manifest), by id.
pub fn local_backups(instance_dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(instance_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(manifest::NAME).is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| manifest::parse_id(n).is_some())
        .collect();
    ids.sort();
    ids
}

pub fn read_local_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let p = dir.join(manifest::NAME);
    let bytes = std::fs::read(&p).map_err(|e| BackupError::Io(format!("{}: {e}", p.display())))?;
    Manifest::parse(&bytes, &p.display().to_string())
}

/// Hash every file of a local backup against its manifest. Blocking.
/// Returns the problems found (empty: intact).
pub fn verify_local(dir: &Path, m: &Manifest, only: Option<&[String]>) -> Vec<String> {
    let mut problems = Vec::new();
    for f in &m.files {
        if only.is_some_and(|o| !o.contains(&f.name)) {
            continue;
        }
        let p = dir.join(&f.name);
        match super::stream::hash_file(&p) {
            Ok((sha, size)) if sha == f.sha256 && size == f.size => {}
            Ok((sha, size)) => problems.push(format!(
                "{}: sha256 {sha} ({size} bytes), manifest says {} ({} bytes)",
                p.display(),
                f.sha256,
                f.size
            )),
            Err(e) => problems.push(format!("{}: {e}", p.display())),
        }
    }
    problems
}

/// An S3 bucket as a backup target.
pub struct S3Target {
    store: Arc<AmazonS3>,
    spec: S3Spec,
}

/// Credentials: the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`)
/// wins over `DATA/secrets/backup.env`.
pub fn credentials(
    secrets: &BTreeMap<String, String>,
    secrets_file: &Path,
) -> Result<(String, String), BackupError> {
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| secrets.get(k).cloned())
    };
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(a), Some(s)) => Ok((a, s)),
        _ => Err(BackupError::Config(format!(
            "S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in applianced's environment or in {}",
            secrets_file.display()
        ))),
    }
}

impl S3Target {
    pub fn new(spec: &S3Spec, key_id: &str, secret: &str) -> Result<S3Target, BackupError> {
        super::install_crypto_provider();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&spec.bucket)
            .with_region(&spec.region)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(!spec.path_style)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(600)),
            )
            // Few, quick retries inside object_store; ours (per object) are
            // what the operator configures and what the record reports.
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(e) = &spec.endpoint {
            b = b.with_endpoint(e);
        }
        let store = b
            .build()
            .map_err(|e| BackupError::Config(format!("S3 target: {e}")))?;
        Ok(S3Target {
            store: Arc::new(store),
            spec: spec.clone(),
        })
    }

    /// `s3://bucket/prefix/INSTANCE/ID`
    pub fn url(&self, instance: &str, id: &str) -> String {
        format!(
            "s3://{}/{}",
            self.spec.bucket,
            self.key(instance, id, "").trim_end_matches('/')
        )
    }

    fn key(&self, instance: &str, id: &str, name: &str) -> String {
        let mut k = String::new();
        if !self.spec.prefix.is_empty() {
            k.push_str(&self.spec.prefix);
            k.push('/');
        }
        k.push_str(instance);
        k.push('/');
        if !id.is_empty() {
            k.push_str(id);
            k.push('/');
        }
        k.push_str(name);
        k
    }

    fn path(&self, instance: &str, id: &str, name: &str) -> ObjPath {
        ObjPath::from(self.key(instance, id, name))
    }

    /// Upload every file of the local backup `dir` (manifest last), each
    /// retried, then read back and compared with the manifest's hash.
    pub async fn upload(
        &self,
        dir: &Path,
        m: &Manifest,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<(), BackupError> {
        for f in &m.files {
            let path = self.path(&m.instance, &m.id, &f.name);
            let local = dir.join(&f.name);
            self.retrying(&f.name, progress, || {
                self.put_and_check(&local, &path, &f.sha256)
            })
            .await?;
            progress(format!(
                "uploaded {} ({} bytes), read back: sha256 ok",
                f.name, f.size
            ));
        }
        let local = dir.join(manifest::NAME);
        let sha = super::stream::hash_file(&local)
            .map_err(|e| BackupError::Io(format!("{}: {e}", local.display())))?
            .0;
        let path = self.path(&m.instance, &m.id, manifest::NAME);
        self.retrying(manifest::NAME, progress, || {
            self.put_and_check(&local, &path, &sha)
        })
        .await
    }

    async fn retrying<F, Fut>(
        &self,
        what: &str,
        progress: &(dyn Fn(String) + Sync),
        mut op: F,
    ) -> Result<(), BackupError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), BackupError>>,
    {
        let attempts = self.spec.retries + 1;
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=attempts {
            match op().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < attempts => {
                    tracing::warn!(object = what, attempt, attempts, error = %e, "S3 upload failed; retrying");
                    progress(format!(
                        "upload of {what} failed (attempt {attempt}/{attempts}): {e}; retrying in {}s",
                        delay.as_secs()
                    ));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    return Err(BackupError::Upload(format!(
                        "{what}: failed after {attempts} attempts: {e}"
                    )));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn put_and_check(
        &self,
        local: &Path,
        path: &ObjPath,
        sha: &str,
    ) -> Result<(), BackupError> {
        let size = std::fs::metadata(local)
            .map_err(|e| BackupError::Io(format!("{}: {e}", local.display())))?
            .len() as usize;
        let s3 = |e: object_store::Error| BackupError::Upload(format!("{path}: {e}"));
        if size <= self.spec.part_size {
            let bytes = tokio::fs::read(local)
                .await
                .map_err(|e| BackupError::Io(format!("{}: {e}", local.display())))?;
            self.store
                .put(path, PutPayload::from(bytes))
                .await
                .map_err(s3)?;
        } else {
            let upload = self.store.put_multipart(path).await.map_err(s3)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, self.spec.part_size);
            let mut file = std::fs::File::open(local)
                .map_err(|e| BackupError::Io(format!("{}: {e}", local.display())))?;
            let mut buf = vec![0u8; self.spec.part_size];
            loop {
                let n = read_full(&mut file, &mut buf)
                    .map_err(|e| BackupError::Io(format!("{}: {e}", local.display())))?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(2).await.map_err(s3)?;
                w.write(&buf[..n]);
            }
            w.finish().await.map_err(s3)?;
        }
        let got = self.hash_object(path).await?;
        if got.0 != sha || got.1 as usize != size {
            return Err(BackupError::Upload(format!(
                "{path}: read back sha256 {} ({} bytes), expected {sha} ({size} bytes)",
                got.0, got.1
            )));
        }
        Ok(())
    }

    /// `(sha256 hex, bytes)` of an object, streamed.
    pub async fn hash_object(&self, path: &ObjPath) -> Result<(String, u64), BackupError> {
        let r = self
            .store
            .get(path)
            .await
            .map_err(|e| BackupError::Remote(format!("{path}: {e}")))?;
        let mut stream = r.into_stream();
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BackupError::Remote(format!("{path}: {e}")))?;
            h.update(&chunk);
            n += chunk.len() as u64;
        }
        Ok((hex::encode(h.finalize()), n))
    }

    pub async fn manifest(&self, instance: &str, id: &str) -> Result<Manifest, BackupError> {
        let path = self.path(instance, id, manifest::NAME);
        let bytes = self
            .store
            .get(&path)
            .await
            .map_err(|e| BackupError::Remote(format!("{path}: {e}")))?
            .bytes()
            .await
            .map_err(|e| BackupError::Remote(format!("{path}: {e}")))?;
        Manifest::parse(&bytes, &format!("s3://{}/{path}", self.spec.bucket))
    }

    /// Hash every object of a backup against its manifest; the problems found.
    pub async fn verify(&self, m: &Manifest) -> Vec<String> {
        let mut problems = Vec::new();
        for f in &m.files {
            let path = self.path(&m.instance, &m.id, &f.name);
            match self.hash_object(&path).await {
                Ok((sha, size)) if sha == f.sha256 && size == f.size => {}
                Ok((sha, size)) => problems.push(format!(
                    "s3://{}/{path}: sha256 {sha} ({size} bytes), manifest says {} ({} bytes)",
                    self.spec.bucket, f.sha256, f.size
                )),
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems
    }

    /// Download a backup into `dest` (created), checking each file's hash.
    pub async fn download(
        &self,
        instance: &str,
        id: &str,
        dest: &Path,
    ) -> Result<Manifest, BackupError> {
        let m = self.manifest(instance, id).await?;
        for f in &m.files {
            let path = self.path(instance, id, &f.name);
            let to = dest.join(&f.name);
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p)
                    .map_err(|e| BackupError::Io(format!("{}: {e}", p.display())))?;
            }
            let r = self
                .store
                .get(&path)
                .await
                .map_err(|e| BackupError::Remote(format!("{path}: {e}")))?;
            let mut stream = r.into_stream();
            let mut file = std::fs::File::create(&to)
                .map_err(|e| BackupError::Io(format!("{}: {e}", to.display())))?;
            let mut h = Sha256::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| BackupError::Remote(format!("{path}: {e}")))?;
                h.update(&chunk);
                std::io::Write::write_all(&mut file, &chunk)
                    .map_err(|e| BackupError::Io(format!("{}: {e}", to.display())))?;
            }
            let sha = hex::encode(h.finalize());
            if sha != f.sha256 {
                return Err(BackupError::Corrupt(format!(
                    "s3://{}/{path}: sha256 {sha}, manifest says {}",
                    self.spec.bucket, f.sha256
                )));
            }
        }
        let bytes = serde_json::to_vec_pretty(&m).map_err(|e| BackupError::Io(e.to_string()))?;
        std::fs::write(dest.join(manifest::NAME), bytes)
            .map_err(|e| BackupError::Io(format!("{}: {e}", dest.display())))?;
        Ok(m)
    }

    /// Backup ids of `instance` in the bucket that have a manifest.
    pub async fn list(&self, instance: &str) -> Result<Vec<String>, BackupError> {
        let prefix = ObjPath::from(self.key(instance, "", ""));
        let mut ids = Vec::new();
        let mut s = self.store.list(Some(&prefix));
        while let Some(o) = s.next().await {
            let o = o.map_err(|e| BackupError::Remote(format!("listing {prefix}: {e}")))?;
            let parts: Vec<_> = o.location.parts().collect();
            let n = parts.len();
            if n >= 2 && parts[n - 1].as_ref() == manifest::NAME {
                ids.push(parts[n - 2].as_ref().to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Delete every object of a backup, the manifest first (so a half-deleted
    /// backup is never taken for a complete one).
    pub async fn delete(&self, instance: &str, id: &str) -> Result<(), BackupError> {
        let prefix = ObjPath::from(self.key(instance, id, ""));
        let manifest = self.path(instance, id, manifest::NAME);
        let rm = |e: object_store::Error| BackupError::Remote(format!("deleting {prefix}: {e}"));
        self.store.delete(&manifest).await.map_err(rm)?;
        let mut objs = Vec::new();
        let mut s = self.store.list(Some(&prefix));
        while let Some(o) = s.next().await {
            objs.push(o.map_err(rm)?.location);
        }
        for o in objs {
            self.store.delete(&o).await.map_err(rm)?;
        }
        Ok(())
    }
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A local backup dir's path.
pub fn local_dir(instance_dir: &Path, id: &str) -> PathBuf {
    instance_dir.join(id)
}

/// Hash a local file while reading it (for restore streams).
pub fn open_hashed(path: &Path) -> std::io::Result<HashReader<std::io::BufReader<std::fs::File>>> {
    Ok(HashReader::new(std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path)?,
    )))
}
