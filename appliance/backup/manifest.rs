//! `manifest.json`: what a backup holds and how to check it. Written last
//! (its presence marks a complete backup), plaintext even when the files are
//! encrypted, so `verify` needs no key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// 2: databases may be `tab` dumps (`Database::format`). 1 is still read.
pub const FORMAT: u32 = 2;
pub const NAME: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub instance: String,
    /// `INSTANCE-YYYYMMDDTHHMMSSZ`.
    pub id: String,
    pub created_unix_ms: i64,
    pub created: String,
    pub applianced_version: String,
    /// `APP_VERSION` of the instance env, else the app dir's `VERSION` file.
    pub app_version: Option<String>,
    /// `SELECT VERSION()` of the instance's MariaDB.
    pub server_version: Option<String>,
    pub compression: String,
    /// `xchacha20poly1305-stream` or none.
    pub encryption: Option<String>,
    pub files: Vec<FileEntry>,
    pub databases: Vec<Database>,
    /// How long the backup took to write (before uploads).
    pub duration_ms: i64,
}

/// One stored file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the backup, e.g. `db/tenancy_acme.sql.zst`.
    pub name: String,
    /// `database`, `users` or `storage`.
    pub kind: String,
    /// Stored bytes (compressed, and encrypted if so).
    pub size: u64,
    /// SHA-256 of the stored bytes.
    pub sha256: String,
    /// Bytes before compression.
    pub raw_size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Database {
    pub name: String,
    pub file: String,
    pub charset: String,
    pub collation: String,
    /// `CHECKSUM TABLE` per base table at the dump's snapshot (empty when
    /// checksums are off). `None`: the engine gave no checksum.
    pub checksums: BTreeMap<String, Option<String>>,
    /// How `file` is made: `sql` (a `mariadb-dump` script, `.sql.zst`) or
    /// `tab` (schema and rows from the server, `.tar.zst`; see
    /// `backup::tab`). Manifests of format 1 have only `sql`.
    #[serde(default = "sql_format")]
    pub format: String,
}

fn sql_format() -> String {
    super::dump::FORMAT.into()
}

impl Manifest {
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn file(&self, name: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.name == name)
    }

    pub fn database(&self, name: &str) -> Option<&Database> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// Parse, naming the source in errors.
    pub fn parse(bytes: &[u8], source: &str) -> Result<Manifest, super::BackupError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            super::BackupError::Corrupt(format!("{source}: not a backup manifest: {e}"))
        })?;
        if !(1..=FORMAT).contains(&m.format) {
            return Err(super::BackupError::Corrupt(format!(
                "{source}: manifest format {} is not supported (this applianced reads 1 to {FORMAT})",
                m.format
            )));
        }
        Ok(m)
    }
}

/// `demo-20261126T030000Z` for an instance and a unix time.
pub fn backup_id(instance: &str, unix_ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(unix_ms).unwrap_or_default();
    format!("{instance}-{}", t.format("%Y%m%dT%H%M%SZ"))
}

/// Split `demo-20261126T030000Z` into the instance and its time (unix ms).
pub fn parse_id(id: &str) -> Option<(&str, i64)> {
    if id.len() < 18 || !id.is_char_boundary(id.len() - 16) {
        return None;
    }
    let (head, stamp) = id.split_at(id.len() - 16);
    let instance = head.strip_suffix('-')?;
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    (!instance.is_empty()).then(|| (instance, t.and_utc().timestamp_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_instance_and_the_utc_time() {
        let id = backup_id("shop-2", 1_795_000_000_000);
        assert!(id.starts_with("shop-2-2026") && id.ends_with('Z'), "{id}");
        let (inst, ms) = parse_id(&id).unwrap();
        assert_eq!(inst, "shop-2");
        assert_eq!(ms, 1_795_000_000_000);
        assert!(parse_id("nonsense").is_none());
        assert!(parse_id("-20261126T030000Z").is_none());
    }
}
