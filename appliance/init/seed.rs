//! cloud-init NoCloud seeds: finding the `CIDATA` volume (vfat or iso9660)
//! with blkid, mounting it read-only just long enough to read `meta-data` and
//! `user-data`, and parsing them. Applying is [`super::seed_apply`].
//!
//! Supported: meta-data `instance-id`, `local-hostname`; `#cloud-config`
//! user-data `hostname`, `ssh_authorized_keys` (for root), and the appliance
//! config as `applianced: |` (TOML text) or a `write_files` entry for
//! `/etc/applianced/appliance.toml`. Other keys are ignored.
//! Touches the seed volume (read-only) and its temporary mount point. On a
//! kernel without vfat/iso9660 (some hosts) the files are copied out with
//! mtools or xorriso instead of mounting.

use super::console::say;
use super::tools;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde::Deserialize;
use std::path::Path;

/// Where the base image's config lives; a seed may replace it (see seed_apply).
pub const ETC_CONFIG: &str = "/etc/applianced/appliance.toml";

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("meta-data: {0}")]
    MetaData(String),
    #[error("user-data: {0}")]
    UserData(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a seed asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seed {
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    /// appliance.toml text.
    pub config: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct MetaData {
    instance_id: Option<String>,
    local_hostname: Option<String>,
}

#[derive(Deserialize, Default)]
struct CloudConfig {
    hostname: Option<String>,
    #[serde(default)]
    ssh_authorized_keys: Vec<String>,
    applianced: Option<String>,
    #[serde(default)]
    write_files: Vec<WriteFile>,
}

#[derive(Deserialize)]
struct WriteFile {
    path: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    encoding: Option<String>,
}

/// Parse `meta-data` and (optional) `user-data`. user-data that is not
/// `#cloud-config` (a shell script, MIME) is ignored with a report.
pub fn parse(meta: &str, user: Option<&str>) -> Result<Seed, SeedError> {
    let md: MetaData = if meta.trim().is_empty() {
        MetaData::default()
    } else {
        serde_norway::from_str(meta).map_err(|e| SeedError::MetaData(e.to_string()))?
    };
    let mut seed = Seed {
        instance_id: md.instance_id.filter(|s| !s.trim().is_empty()),
        hostname: md.local_hostname,
        ..Seed::default()
    };
    let Some(user) = user else { return Ok(seed) };
    if !user.trim_start().starts_with("#cloud-config") {
        if !user.trim().is_empty() {
            say("user-data is not #cloud-config; ignored");
        }
        return Ok(seed);
    }
    let cc: CloudConfig = serde_norway::from_str::<Option<CloudConfig>>(user)
        .map_err(|e| SeedError::UserData(e.to_string()))?
        .unwrap_or_default();
    if cc.hostname.is_some() {
        seed.hostname = cc.hostname;
    }
    for k in cc.ssh_authorized_keys {
        let k = k.trim().to_string();
        let known = ["ssh-", "ecdsa-", "sk-"].iter().any(|p| k.starts_with(p));
        if !known || k.contains('\n') {
            return Err(SeedError::UserData(format!(
                "ssh_authorized_keys: `{}` is not an OpenSSH public key line",
                k.chars().take(40).collect::<String>()
            )));
        }
        seed.ssh_authorized_keys.push(k);
    }
    let from_files = cc.write_files.into_iter().find(|f| f.path == ETC_CONFIG);
    seed.config = match (cc.applianced, from_files) {
        (Some(text), _) => Some(text),
        (None, Some(f)) => match f.encoding.as_deref() {
            None | Some("text/plain") => Some(f.content),
            Some(other) => {
                return Err(SeedError::UserData(format!(
                    "write_files {ETC_CONFIG}: encoding `{other}` is not supported; use plain text"
                )));
            }
        },
        (None, None) => None,
    };
    Ok(seed)
}

/// Read and parse a seed from a directory (a mounted seed volume).
pub fn read_dir(dir: &Path) -> Result<Seed, SeedError> {
    let meta = std::fs::read_to_string(dir.join("meta-data"))
        .map_err(|e| SeedError::MetaData(format!("{}: {e}", dir.join("meta-data").display())))?;
    let user = std::fs::read_to_string(dir.join("user-data")).ok();
    parse(&meta, user.as_deref())
}

/// Find a `CIDATA` (or `cidata`) volume, mount it read-only on
/// /run/applianced/seed, read it and unmount it. `None`: no seed attached.
pub fn find_and_read() -> Option<(String, Result<Seed, SeedError>)> {
    let found = ["LABEL=CIDATA", "LABEL=cidata"]
        .iter()
        .flat_map(|t| super::blkid::find(t))
        .next()?;
    let fstype = found.fstype().unwrap_or("vfat").to_string();
    let dev = found.device;
    let mnt = Path::new("/run/applianced/seed");
    if let Err(e) = std::fs::create_dir_all(mnt) {
        return Some((dev, Err(e.into())));
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(
        Some(dev.as_str()),
        mnt,
        Some(fstype.as_str()),
        flags,
        None::<&str>,
    ) {
        Ok(()) => {
            let seed = read_dir(mnt);
            let _ = umount2(mnt, MntFlags::MNT_DETACH);
            Some((dev, seed))
        }
        // A kernel without the filesystem: copy the two files out with mtools
        // or xorriso, which read the volume from user space.
        Err(nix::Error::ENODEV) => Some((dev.clone(), extract(&dev, &fstype))),
        Err(e) => Some((
            dev.clone(),
            Err(std::io::Error::other(format!("mount {dev} ({fstype}): {e}")).into()),
        )),
    }
}

/// Read the seed files off `dev` without mounting it.
fn extract(dev: &str, fstype: &str) -> Result<Seed, SeedError> {
    let dir = Path::new("/run/applianced/seed-copy");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let t = std::time::Duration::from_secs(30);
    for name in ["meta-data", "user-data"] {
        let to = dir.join(name).display().to_string();
        let r = match fstype {
            "vfat" => tools::check("mcopy", &["-n", "-i", dev, &format!("::{name}"), &to], t),
            "iso9660" => tools::check(
                "xorriso",
                &[
                    "-osirrox",
                    "on",
                    "-indev",
                    &format!("stdio:{dev}"),
                    "-extract",
                    &format!("/{name}"),
                    &to,
                ],
                t,
            ),
            other => {
                return Err(std::io::Error::other(format!(
                    "the kernel cannot mount {other} and there is no user-space reader for it"
                ))
                .into());
            }
        };
        // user-data is optional.
        if let Err(e) = r {
            if name == "meta-data" {
                return Err(std::io::Error::other(format!(
                    "the kernel cannot mount {fstype}, and {e}"
                ))
                .into());
            }
        }
    }
    let seed = read_dir(dir);
    let _ = std::fs::remove_dir_all(dir);
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "instance-id: iid-shop-1\nlocal-hostname: meta-name\n";
    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0x test@host";

    #[test]
    fn cloud_config_hostname_wins_over_local_hostname_and_keys_and_config_are_read() {
        let user = format!(
            "#cloud-config\nhostname: shop\nssh_authorized_keys:\n  - {KEY}\napplianced: |\n  [[instance]]\n  name = \"shop\"\n"
        );
        let s = parse(META, Some(&user)).unwrap();
        assert_eq!(s.instance_id.as_deref(), Some("iid-shop-1"));
        assert_eq!(s.hostname.as_deref(), Some("shop"));
        assert_eq!(s.ssh_authorized_keys, vec![KEY.to_string()]);
        assert_eq!(s.config.as_deref(), Some("[[instance]]\nname = \"shop\"\n"));
    }

    #[test]
    fn write_files_for_the_etc_config_is_the_config() {
        let user = format!(
            "#cloud-config\nwrite_files:\n  - path: /etc/motd\n    content: hi\n  - path: {ETC_CONFIG}\n    content: |\n      [[instance]]\n      name = \"x\"\n"
        );
        let s = parse(META, Some(&user)).unwrap();
        assert_eq!(s.config.as_deref(), Some("[[instance]]\nname = \"x\"\n"));
        assert_eq!(s.hostname.as_deref(), Some("meta-name"));
    }

    #[test]
    fn user_data_that_is_not_cloud_config_is_ignored() {
        let s = parse(META, Some("#!/bin/sh\necho hi\n")).unwrap();
        assert_eq!(s.hostname.as_deref(), Some("meta-name"));
        assert!(s.config.is_none());
        let s = parse(META, Some("#cloud-config\n")).unwrap();
        assert!(s.ssh_authorized_keys.is_empty());
    }

    #[test]
    fn malformed_yaml_and_bad_keys_are_errors_naming_the_file() {
        let e = parse("instance-id: [unclosed", None).unwrap_err();
        assert!(e.to_string().starts_with("meta-data:"), "{e}");
        let e = parse(
            META,
            Some("#cloud-config\nssh_authorized_keys:\n  - not a key\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not an OpenSSH public key"), "{e}");
        let e = parse(META, Some("#cloud-config\nhostname: [1, 2]\n")).unwrap_err();
        assert!(e.to_string().starts_with("user-data:"), "{e}");
    }
}
