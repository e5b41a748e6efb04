//! The backup schema: a top-level `[backup]` table (defaults for every
//! instance) and `[instance.backup]` (this instance's overrides, field by
//! field; an instance's `s3` table replaces the default's whole).
//!
//! Parsing and type checks only; ranges, schedules and S3 settings are checked
//! by [`crate::backup::spec`] at plan time. Secrets (S3 keys, the encryption
//! key) are never config keys: they come from `DATA/secrets/backup.env` or
//! the environment.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// `false`: no scheduled backups (`applianced backup run` still works).
    pub enabled: Option<bool>,
    /// Cron schedule of the backup, local time. Default `0 3 * * *`.
    pub schedule: Option<String>,
    /// Cron schedule of the test restore into a throwaway mariadbd, or `"off"`.
    /// Default `30 4 * * 0` (Sundays 04:30).
    pub test_restore_schedule: Option<String>,
    /// Keep the newest backup of each of the last N days (default 7).
    pub keep_daily: Option<u32>,
    /// ... of each of the last N ISO weeks (default 0).
    pub keep_weekly: Option<u32>,
    /// ... of each of the last N months (default 0).
    pub keep_monthly: Option<u32>,
    /// The local target, on the data partition. Default `DATA/backups`.
    pub dir: Option<PathBuf>,
    /// Databases dumped (and restored) at once. Default 3.
    pub parallel: Option<u32>,
    /// zstd level 1-19. Default 1 (see `backup::spec`).
    pub zstd_level: Option<i32>,
    /// Record `CHECKSUM TABLE` of every table at dump time, in the dump's
    /// snapshot (no lock; a short read lock for databases dumped with
    /// `mariadb-dump`). Default true.
    pub checksums: Option<bool>,
    /// Encrypt every file (XChaCha20-Poly1305) with the key
    /// `BACKUP_ENCRYPTION_KEY` (env, or `DATA/secrets/backup.env`). Default false.
    pub encrypt: Option<bool>,
    /// An S3-compatible target, besides the local dir.
    pub s3: Option<S3Config>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000`, ...
    /// Default: AWS for `region`.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Objects go under `PREFIX/INSTANCE/ID/`. Default none.
    pub prefix: Option<String>,
    /// Default `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), as most S3-compatible
    /// servers want. Default true.
    pub path_style: Option<bool>,
    /// Attempts per object after the first. Default 3.
    pub retries: Option<u32>,
    /// Multipart part size in MiB (5-512). Default 16.
    pub part_size_mb: Option<u32>,
}

impl BackupConfig {
    /// Field-by-field overlay: every field set in `over` wins.
    pub fn overlay(mut self, over: &BackupConfig) -> BackupConfig {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f.clone(); } )* };
        }
        take!(
            enabled,
            schedule,
            test_restore_schedule,
            keep_daily,
            keep_weekly,
            keep_monthly,
            dir,
            parallel,
            zstd_level,
            checksums,
            encrypt,
            s3
        );
        self
    }
}
