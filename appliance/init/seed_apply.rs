//! Applying a NoCloud seed, cloud-init style: the config once per
//! `instance-id` (validated first; a bad one is reported and the previous
//! config kept), the hostname and root's SSH keys on every boot the seed is
//! attached. Everything is written under `DATA/instances/system/` on the data
//! partition, so re-flashing the root partition keeps it.
//! Touches only that directory.

use super::console::say;
use super::seed::Seed;
use crate::layout::Layout;
use crate::plan::system::valid_hostname;
use crate::secrets::write_atomic_mode;

/// What applying did, for the boot to use and tests to check.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub hostname: Option<String>,
    pub keys: usize,
    /// The seed's config was validated and installed (first boot of this
    /// instance-id).
    pub config_installed: bool,
    /// The seed's config was refused; the message says why.
    pub config_rejected: Option<String>,
}

/// Apply `seed`. `validate` checks appliance.toml text as a full plan.
pub fn apply(
    seed: &Seed,
    layout: &Layout,
    validate: &dyn Fn(&str) -> Result<(), String>,
) -> std::io::Result<Applied> {
    let dir = layout.system_dir();
    crate::provision::mkdir(&dir, 0o700, None)?;
    crate::provision::mkdir(&dir.join("ssh"), 0o700, None)?;
    let mut out = Applied::default();
    match &seed.hostname {
        Some(h) if valid_hostname(h) => {
            write_atomic_mode(&layout.saved_hostname(), format!("{h}\n").as_bytes(), 0o644)?;
            out.hostname = Some(h.clone());
        }
        Some(h) => say(format!(
            "seed hostname `{h}` is not a valid hostname; ignored"
        )),
        None => {}
    }
    if !seed.ssh_authorized_keys.is_empty() {
        let text: String = seed
            .ssh_authorized_keys
            .iter()
            .map(|k| format!("{k}\n"))
            .collect();
        write_atomic_mode(&layout.authorized_keys("root"), text.as_bytes(), 0o600)?;
        out.keys = seed.ssh_authorized_keys.len();
    }
    let iid = seed.instance_id.clone().unwrap_or_default();
    let previous = std::fs::read_to_string(layout.seed_instance_id()).ok();
    if previous.as_deref().map(str::trim) == Some(iid.as_str()) {
        say(format!(
            "seed instance-id `{iid}` already applied: its config is not applied again"
        ));
        return Ok(out);
    }
    if let Some(text) = &seed.config {
        match validate(text) {
            Ok(()) => {
                write_atomic_mode(&layout.seeded_config(), text.as_bytes(), 0o600)?;
                out.config_installed = true;
                say(format!(
                    "seed config installed at {}",
                    layout.seeded_config().display()
                ));
            }
            Err(e) => {
                say(format!(
                    "seed config REJECTED, keeping the previous config: {e}"
                ));
                out.config_rejected = Some(e);
            }
        }
    }
    write_atomic_mode(
        &layout.seed_instance_id(),
        format!("{iid}\n").as_bytes(),
        0o600,
    )?;
    Ok(out)
}

/// The hostname to set at boot: a seed's (kept from an earlier boot too),
/// else the config's `system.hostname`, else `appliance`.
pub fn boot_hostname(layout: &Layout, configured: Option<&str>) -> String {
    std::fs::read_to_string(layout.saved_hostname())
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| valid_hostname(h))
        .or_else(|| configured.map(str::to_string))
        .unwrap_or_else(|| "appliance".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(iid: &str, config: Option<&str>) -> Seed {
        Seed {
            instance_id: Some(iid.into()),
            hostname: Some("shop".into()),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA k1".into()],
            config: config.map(str::to_string),
        }
    }

    fn ok(_: &str) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn config_is_applied_once_per_instance_id_but_keys_and_hostname_every_time() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(d.path());
        let a = apply(&seed("iid-1", Some("first")), &layout, &ok).unwrap();
        assert!(a.config_installed);
        assert_eq!(
            std::fs::read_to_string(layout.seeded_config()).unwrap(),
            "first"
        );
        // Same instance-id: the config is not re-applied, even if it changed.
        let mut s = seed("iid-1", Some("second"));
        s.ssh_authorized_keys = vec!["ssh-ed25519 AAAA k2".into()];
        let a = apply(&s, &layout, &ok).unwrap();
        assert!(!a.config_installed);
        assert_eq!(
            std::fs::read_to_string(layout.seeded_config()).unwrap(),
            "first"
        );
        assert_eq!(
            std::fs::read_to_string(layout.authorized_keys("root")).unwrap(),
            "ssh-ed25519 AAAA k2\n"
        );
        // A new instance-id applies the config again.
        assert!(
            apply(&seed("iid-2", Some("third")), &layout, &ok)
                .unwrap()
                .config_installed
        );
        assert_eq!(boot_hostname(&layout, Some("cfg")), "shop");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(layout.authorized_keys("root"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_rejected_config_keeps_the_previous_one() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(d.path());
        apply(&seed("iid-1", Some("good")), &layout, &ok).unwrap();
        let a = apply(&seed("iid-2", Some("bad")), &layout, &|_: &str| {
            Err("key `x`: nope".to_string())
        })
        .unwrap();
        assert_eq!(a.config_rejected.as_deref(), Some("key `x`: nope"));
        assert_eq!(
            std::fs::read_to_string(layout.seeded_config()).unwrap(),
            "good"
        );
    }

    #[test]
    fn hostname_falls_back_to_config_then_appliance() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(d.path());
        assert_eq!(boot_hostname(&layout, Some("cfg")), "cfg");
        assert_eq!(boot_hostname(&layout, None), "appliance");
    }
}
