//! Where applianced keeps things on disk. One type, so every module agrees.
//!
//! ```text
//! DATA/state.db                 events (rusqlite)
//! DATA/applianced.log           applianced's own JSON log
//! DATA/run/control.sock         control API (dir 0700, socket 0600)
//! DATA/secrets/NAME.env         generated secrets (0600, root only)
//! DATA/secrets/backup.env       S3 keys, backup encryption key (backup/, 0600)
//! DATA/backups/NAME/ID/         local backups (backup/; `[backup] dir` moves them)
//! DATA/logs/NAME/UNIT.log       captured child output (root only; apps cannot rewrite it)
//! DATA/instances/NAME/          instance dir, owned by the instance user (0700)
//! DATA/instances/NAME/run/      sockets, pid files, rendered configs
//! DATA/instances/NAME/app/      the bundled demo app when no app_dir is configured
//! DATA/removed/NAME-TIME/       what `instance remove` kept of an instance: its
//!                               dir, secrets and logs (root only, 0700)
//! DATA/instances/system/        system units (sshd host keys, dhcp leases) and
//!                               what a NoCloud seed applied (config, hostname, keys)
//! ```

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    data_dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
        }
    }

    /// `/var/lib/applianced` for root, `~/.local/state/applianced` otherwise.
    pub fn default_data_dir() -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            PathBuf::from("/var/lib/applianced")
        } else {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            home.join(".local/state/applianced")
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn state_db(&self) -> PathBuf {
        self.data_dir.join("state.db")
    }
    pub fn own_log(&self) -> PathBuf {
        self.data_dir.join("applianced.log")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir().join("control.sock")
    }
    pub fn secrets_dir(&self) -> PathBuf {
        self.data_dir.join("secrets")
    }
    pub fn secrets_file(&self, instance: &str) -> PathBuf {
        self.secrets_dir().join(format!("{instance}.env"))
    }
    pub fn instance_dir(&self, instance: &str) -> PathBuf {
        self.data_dir.join("instances").join(instance)
    }
    pub fn instance_run_dir(&self, instance: &str) -> PathBuf {
        self.instance_dir(instance).join("run")
    }
    pub fn instance_log_dir(&self, instance: &str) -> PathBuf {
        self.data_dir.join("logs").join(instance)
    }
    pub fn unit_log(&self, instance: &str, unit: &str) -> PathBuf {
        self.instance_log_dir(instance).join(format!("{unit}.log"))
    }
    /// Where `instance remove` moves what an instance leaves (root only).
    pub fn removed_dir(&self) -> PathBuf {
        self.data_dir.join("removed")
    }
    pub fn default_app_dir(&self, instance: &str) -> PathBuf {
        self.instance_dir(instance).join("app")
    }
    /// State the disk image made at build time for the first instance that
    /// lacks it (`mariadb/`, `opcache/`): on the data partition, so claiming
    /// it is a rename, not a copy. Only the image's data partition has it.
    pub fn image_state_dir(&self) -> PathBuf {
        self.data_dir.join(".image").join("instance")
    }
    /// The `system` pseudo-instance's dir: SSH host keys, what a NoCloud seed
    /// applied. On the data partition, so it survives re-flashing root.
    pub fn system_dir(&self) -> PathBuf {
        self.instance_dir(crate::plan::system::SYSTEM_INSTANCE)
    }
    /// The config a NoCloud seed provided; in PID-1 mode it wins over
    /// `/etc/applianced/appliance.toml`.
    pub fn seeded_config(&self) -> PathBuf {
        self.system_dir().join("appliance.toml")
    }
    /// The `instance-id` of the last seed applied (applied once per id).
    pub fn seed_instance_id(&self) -> PathBuf {
        self.system_dir().join("seed-instance-id")
    }
    /// The hostname a seed set, kept for boots without the seed.
    pub fn saved_hostname(&self) -> PathBuf {
        self.system_dir().join("hostname")
    }
    /// `USER`'s SSH keys from the seed; sshd reads them (`AuthorizedKeysFile`).
    pub fn authorized_keys(&self, user: &str) -> PathBuf {
        self.system_dir()
            .join("ssh")
            .join(format!("authorized_keys.{user}"))
    }
}
