//! First-start provisioning, re-checked on every start: the instance's Unix user,
//! its directories and modes, its secrets, the bundled demo app, and the
//! application environment handed to php-fpm, workers and `exec`.
//!
//! A new instance's opcache dir starts from the disk image's compiled
//! framework when there is one ([`OPCACHE_SEED`]).
//!
//! Idempotent by construction: users and files that exist are kept, secrets are
//! never regenerated, data is never overwritten. The MariaDB data dir and app
//! database are initialised by the mariadb unit itself (`exec_start_pre`
//! mariadb-install-db, then its idempotent init-file).
//! Touches `DATA/`, reads `/usr/share/applianced/opcache`, and, as root,
//! `/etc/passwd` through `useradd`.

use crate::assets;
use crate::layout::Layout;
use crate::plan::{CHILD_PATH, InstancePlan};
use crate::process::{Command, Identity, Launcher};
use crate::secrets;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("instance {instance}: {what}: {source}")]
    Io {
        instance: String,
        what: String,
        source: std::io::Error,
    },
    #[error("instance {instance}: {message}")]
    User { instance: String, message: String },
    #[error("instance {instance}: secrets: {source}")]
    Secrets {
        instance: String,
        source: secrets::SecretsError,
    },
}

/// Everything a running instance needs beyond its plan.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// `None` when applianced is not root: children run as applianced's user.
    pub identity: Option<Identity>,
    pub secrets: BTreeMap<String, String>,
    /// The application environment (DB_*, REDIS_*, APP_*, `[instance.env]`).
    pub app_env: BTreeMap<String, String>,
    /// The instance's cgroup; `None` where the machine has no usable cgroup v2.
    pub cgroup: Option<crate::cgroup::InstanceCgroup>,
    /// `private_tmp`: the dir bound over the children's `/tmp`.
    pub private_tmp: Option<std::path::PathBuf>,
}

impl Provisioned {
    /// The cgroup leaf for `name` (a unit, cron or exec), made if missing,
    /// with its CPU weight (see [`crate::cgroup::InstanceCgroup::leaf`]);
    /// `None` without cgroups. A leaf that cannot be made is an error: the
    /// child must not start outside its instance's limits and kill.
    pub fn cgroup_leaf(
        &self,
        name: &str,
        cpu_weight: Option<u32>,
    ) -> Result<Option<std::path::PathBuf>, String> {
        match &self.cgroup {
            None => Ok(None),
            Some(cg) => cg
                .leaf(name, cpu_weight)
                .map(Some)
                .map_err(|e| format!("cgroup {}/{name}: {e}", cg.dir().display())),
        }
    }

    /// The identity children actually run as (applianced's own when not root).
    pub fn effective_identity(&self) -> Identity {
        self.identity.clone().unwrap_or_else(Identity::current)
    }
}

/// Make sure the instance can start. Safe to run on every start.
pub async fn provision(
    layout: &Layout,
    inst: &InstancePlan,
    launcher: &Launcher,
    cgroups: Option<&crate::cgroup::CgroupRoot>,
) -> Result<Provisioned, ProvisionError> {
    let name = inst.name.clone();
    let io = |what: &str| {
        let instance = name.clone();
        let what = what.to_string();
        move |source| ProvisionError::Io {
            instance,
            what,
            source,
        }
    };
    let identity =
        if inst.system {
            // System units run as root (sshd, dhclient); nothing to create.
            Identity::lookup("root", None)
                .ok()
                .filter(|_| nix::unistd::geteuid().is_root())
        } else if nix::unistd::geteuid().is_root() {
            Some(ensure_user(&inst.user, launcher).await.map_err(|message| {
                ProvisionError::User {
                    instance: name.clone(),
                    message,
                }
            })?)
        } else {
            None
        };
    let owner = identity.as_ref().map(|i| (i.uid, i.gid));
    let dir = layout.instance_dir(&inst.name);
    mkdir(&dir, 0o700, owner).map_err(io("instance dir"))?;
    let run = layout.instance_run_dir(&inst.name);
    mkdir(&run, 0o700, owner).map_err(io("run dir"))?;
    mkdir(&layout.instance_log_dir(&inst.name), 0o700, None).map_err(io("log dir"))?;
    if inst.bundled_app && !inst.app_dir.join("public").exists() {
        assets::install_tree("demo", &inst.app_dir).map_err(io("demo app"))?;
        chown_tree(&inst.app_dir, owner).map_err(io("demo app"))?;
    }
    if !inst.system {
        let used = |name: &str| {
            name == "opcache"
                || inst
                    .units
                    .iter()
                    .any(|u| u.state_directory.iter().any(|d| d == name))
        };
        claim_image_state(&layout.image_state_dir(), &dir, owner, &inst.name, used);
        // PHP's opcache.file_cache for php-fpm, the queue workers and cron's
        // `php artisan` runs: compiled scripts shared on disk, so a restart, a
        // boot or a once-a-minute `schedule:run` does not compile the app again.
        let opcache = dir.join("opcache");
        // New, or a copy cut short (a power cut mid-boot): seed it.
        let seed = !opcache.exists() || opcache.join(".seed").exists();
        mkdir(&opcache, 0o700, owner).map_err(io("opcache dir"))?;
        if seed {
            seed_opcache_in_background(Path::new(OPCACHE_SEED), &opcache, owner, &inst.name);
        }
    }
    let cgroup = match cgroups {
        Some(root) => {
            let cg = root
                .instance(&inst.name, &inst.limits)
                .map_err(|e| ProvisionError::Io {
                    instance: name.clone(),
                    what: "cgroup".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            for what in &cg.not_enforced {
                tracing::error!(instance = %inst.name, limit = %what, "limit NOT enforced: this machine's cgroup v2 lacks the controller");
            }
            Some(cg)
        }
        None => None,
    };
    let private_tmp = if inst.private_tmp {
        let tmp = dir.join("tmp");
        // Sticky and world-writable like /tmp: only this instance sees it.
        mkdir(&tmp, 0o1777, None).map_err(io("private tmp"))?;
        Some(tmp)
    } else {
        None
    };
    if inst.system {
        return Ok(Provisioned {
            identity,
            secrets: BTreeMap::new(),
            app_env: BTreeMap::new(),
            cgroup,
            private_tmp,
        });
    }
    let secrets = secrets::load_or_create(&layout.secrets_file(&inst.name), &inst.name).map_err(
        |source| ProvisionError::Secrets {
            instance: name.clone(),
            source,
        },
    )?;
    let app_env = app_env(layout, inst, &secrets);
    Ok(Provisioned {
        identity,
        secrets,
        app_env,
        cgroup,
        private_tmp,
    })
}

/// The environment a PHP app of this instance sees, like the `.env` operators
/// write by hand today. `[instance.env]` wins over the generated values.
pub fn app_env(
    layout: &Layout,
    inst: &InstancePlan,
    secrets: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let run = layout.instance_run_dir(&inst.name);
    let mut env: BTreeMap<String, String> = secrets.clone();
    let generated = [
        ("APP_NAME", inst.name.clone()),
        ("DB_CONNECTION", "mysql".into()),
        ("DB_HOST", "localhost".into()),
        ("DB_PORT", "3306".into()),
        ("DB_SOCKET", run.join("mariadb.sock").display().to_string()),
        ("REDIS_CLIENT", "phpredis".into()),
        ("REDIS_HOST", run.join("redis.sock").display().to_string()),
        ("REDIS_PORT", "0".into()),
    ];
    for (k, v) in generated {
        env.entry(k.to_string()).or_insert(v);
    }
    env.extend(inst.env.clone());
    env
}

/// The base environment of every child: nothing from applianced's own leaks in.
pub fn base_env(identity: &Identity, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("PATH".to_string(), CHILD_PATH.to_string()),
        ("HOME".to_string(), identity.home.clone()),
        ("USER".to_string(), identity.user.clone()),
        ("LOGNAME".to_string(), identity.user.clone()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("APPLIANCE_INSTANCE".to_string(), instance.to_string()),
    ])
}

/// Create the instance's system user if missing (no login, no home created).
///
/// Several applianced processes (one per data dir, e.g. in the test suite) may
/// add users at once. Concurrent `useradd`s were seen to lose one another's
/// entries (both picked the same free uid), so ours take turns on one lock file
/// and look again once they hold it.
async fn ensure_user(user: &str, launcher: &Launcher) -> Result<Identity, String> {
    if let Ok(id) = Identity::lookup(user, None) {
        return Ok(id);
    }
    let _turn = useradd_lock().await?;
    if let Ok(id) = Identity::lookup(user, None) {
        return Ok(id);
    }
    let args: Vec<String> = [
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([user.to_string()])
    .collect();
    passwd_tool("useradd", args, launcher, |out| {
        out.contains("already exists")
    })
    .await?;
    Identity::lookup(user, None)
}

/// Run `useradd`/`userdel` (the caller holds [`useradd_lock`]). They fail fast
/// while another tool holds /etc/passwd's lock, so a failure is retried for a
/// few seconds; `done_anyway(output)` accepts a failure that means the work is
/// already done (`already exists`).
pub(crate) async fn passwd_tool(
    tool: &str,
    args: Vec<String>,
    launcher: &Launcher,
    done_anyway: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let program = crate::plan::find_program(tool)
        .ok_or_else(|| format!("{tool} not found; install the `passwd` package"))?;
    let shown = format!("{tool} {}", args.join(" "));
    let cmd = Command {
        program,
        args,
        env: BTreeMap::from([("PATH".into(), CHILD_PATH.into())]),
        ..Command::default()
    };
    let mut last = String::new();
    for _ in 0..20 {
        match launcher.output(cmd.clone(), Duration::from_secs(30)).await {
            Ok((status, _)) if status.success() => return Ok(()),
            Ok((_, out)) if done_anyway(&out) => return Ok(()),
            Ok((status, out)) => last = format!("{shown}: {}: {}", status.describe(), out.trim()),
            Err(e) => last = format!("{shown}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last)
}

/// An exclusive lock shared by every applianced on this machine, held while
/// one of them runs `useradd`.
pub(crate) async fn useradd_lock() -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    let path = if Path::new("/run/lock").is_dir() {
        "/run/lock/applianced-useradd.lock"
    } else {
        "/tmp/applianced-useradd.lock"
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("{path}: cannot lock: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The disk image's opcache file cache of the PHP framework (image/build
/// compiles it with the image's own php): a new instance's opcache dir
/// starts as a copy, so the first boot's warm-up and queue workers load
/// Laravel's ~560 compiled files (13 MB) instead of compiling them (the
/// warm-up alone: 4.7 s under emulation).
/// Entries are keyed by PHP's build and the script's path and mtime, so a
/// PHP upgrade or another framework version just does not use them.
const OPCACHE_SEED: &str = "/usr/share/applianced/opcache";

/// What the image's data partition may hold for an instance, made at build
/// time: the MariaDB data dir (`mariadb-install-db`'s, as the mariadb unit
/// would copy from /usr/share/applianced/mariadb-datadir) and the opcache
/// file cache (as [`seed_opcache`] would copy from [`OPCACHE_SEED`]).
const IMAGE_STATE: &[&str] = &["mariadb", "opcache"];

/// Move what the image made at build time ([`Layout::image_state_dir`]) into
/// a new instance's dir: the first instance provisioned on a fresh image
/// claims it, each entry only where the instance has none yet and `used`
/// says it uses it (`mariadb/`: a unit keeps its state there).
///
/// Why: on a first boot the copy from the root fs was the critical path, 4-6
/// s under emulation (~300 files written while php-fpm, Redis and sshd
/// started beside it), where a rename on the same filesystem is instant. The
/// tree is given to the instance user before the rename, so a power cut
/// leaves it either unclaimed (and chowned again next time) or in place,
/// never half owned. Anything that fails leaves the entry to the usual copy.
fn claim_image_state(
    from: &Path,
    dir: &Path,
    owner: Option<(u32, u32)>,
    instance: &str,
    used: impl Fn(&str) -> bool,
) {
    for name in IMAGE_STATE {
        let (src, dst) = (from.join(name), dir.join(name));
        if !src.is_dir() || dst.exists() || !used(name) {
            continue;
        }
        let claimed = chown_tree(&src, owner)
            .and_then(|()| std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o700)))
            .and_then(|()| std::fs::rename(&src, &dst));
        match claimed {
            Ok(()) => {
                tracing::info!(instance, state = %name, from = %src.display(), "claimed what the image made at build time")
            }
            Err(e) => {
                tracing::warn!(instance, state = %name, error = %e, "cannot claim what the image made; copying instead")
            }
        }
    }
}

/// [`seed_opcache`] on a thread of its own: provisioning (and with it
/// MariaDB's start, a first boot's critical path) does not wait for the copy
/// (0.7 s under emulation); php-fpm reads the file cache only at its warm-up,
/// once MariaDB is ready.
fn seed_opcache_in_background(seed: &Path, dir: &Path, owner: Option<(u32, u32)>, instance: &str) {
    if !seed.is_dir() {
        return;
    }
    let (seed, dir, name) = (seed.to_path_buf(), dir.to_path_buf(), instance.to_string());
    let spawned = std::thread::Builder::new()
        .name("opcache-seed".into())
        .spawn(move || seed_opcache(&seed, &dir, owner, &name));
    if let Err(e) = spawned {
        tracing::warn!(instance, error = %e, "opcache file cache not seeded (no thread); the app compiles on first use");
    }
}

/// Copy `seed` (when there is one) into a new instance's opcache dir. Only
/// a speed-up: a failure is logged and the app compiles as it would have.
/// The copy is made aside (`DIR/.seed`) and each PHP build's directory is
/// then renamed into place unless one is already there
/// (`RENAME_NOREPLACE`): a php that started compiling meanwhile keeps its
/// own entries and never reads a half-copied file.
fn seed_opcache(seed: &Path, dir: &Path, owner: Option<(u32, u32)>, instance: &str) {
    if !seed.is_dir() {
        return;
    }
    let t0 = std::time::Instant::now();
    let aside = dir.join(".seed");
    let copied = (|| {
        if aside.exists() {
            std::fs::remove_dir_all(&aside)?;
        }
        let files = copy_tree(seed, &aside)?;
        chown_tree(&aside, owner)?;
        let mut placed = 0;
        for entry in std::fs::read_dir(&aside)? {
            let entry = entry?;
            let flags = nix::fcntl::RenameFlags::RENAME_NOREPLACE;
            let to = dir.join(entry.file_name());
            let cwd = nix::fcntl::AT_FDCWD;
            match nix::fcntl::renameat2(cwd, &entry.path(), cwd, &to, flags) {
                Ok(()) => placed += 1,
                Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(std::io::Error::from(e)),
            }
        }
        std::fs::remove_dir_all(&aside)?;
        Ok::<_, std::io::Error>((files, placed))
    })();
    match copied {
        Ok((files, placed)) => {
            let ms = t0.elapsed().as_millis() as u64;
            tracing::info!(instance, seed = %seed.display(), files, placed, ms, "opcache file cache seeded")
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&aside);
            tracing::warn!(instance, seed = %seed.display(), error = %e, "opcache file cache not seeded; the app compiles on first use")
        }
    }
}

/// Copy the files and directories under `from` into `to` (made if
/// missing); returns how many files. Symlinks and other kinds are skipped.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(to)?;
    let mut files = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            files += copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
            files += 1;
        }
    }
    Ok(files)
}

/// `mkdir -p` then set mode and owner on the last component.
pub fn mkdir(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), owner)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_opcache_dir_gets_a_copy_of_the_seed_and_a_missing_seed_is_no_error() {
        let tmp = tempfile::tempdir().unwrap();
        let seed = tmp.path().join("seed");
        let bin = seed.join("1204a070cd49210ca578dc8015bee891/usr/share/php/Illuminate");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("Container.php.bin"), b"compiled").unwrap();
        std::fs::write(seed.join("1204a070cd49210ca578dc8015bee891/x.bin"), b"x").unwrap();
        let dir = tmp.path().join("opcache");
        std::fs::create_dir(&dir).unwrap();
        seed_opcache(&seed, &dir, None, "t");
        let copied =
            dir.join("1204a070cd49210ca578dc8015bee891/usr/share/php/Illuminate/Container.php.bin");
        assert_eq!(std::fs::read(copied).unwrap(), b"compiled");
        assert!(!dir.join(".seed").exists(), "the copy aside is gone");
        assert_eq!(copy_tree(&seed, &tmp.path().join("again")).unwrap(), 2);

        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        seed_opcache(&tmp.path().join("no-seed"), &empty, None, "t");
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    }

    #[test]
    fn a_php_build_dir_php_made_first_is_kept_and_the_seed_for_it_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let seed = tmp.path().join("seed");
        std::fs::create_dir_all(seed.join("abc/usr")).unwrap();
        std::fs::write(seed.join("abc/usr/a.php.bin"), b"seeded").unwrap();
        std::fs::create_dir_all(seed.join("def/usr")).unwrap();
        std::fs::write(seed.join("def/usr/b.php.bin"), b"seeded").unwrap();
        let dir = tmp.path().join("opcache");
        // php-fpm compiled into `abc` before the seed got there.
        std::fs::create_dir_all(dir.join("abc/usr")).unwrap();
        std::fs::write(dir.join("abc/usr/a.php.bin"), b"php's own").unwrap();
        seed_opcache(&seed, &dir, None, "t");
        assert_eq!(
            std::fs::read(dir.join("abc/usr/a.php.bin")).unwrap(),
            b"php's own"
        );
        assert_eq!(
            std::fs::read(dir.join("def/usr/b.php.bin")).unwrap(),
            b"seeded"
        );
        assert!(!dir.join(".seed").exists());
    }

    #[test]
    fn a_new_instance_claims_what_the_image_made_once_and_only_what_it_uses() {
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join(".image/instance");
        std::fs::create_dir_all(from.join("mariadb/mysql")).unwrap();
        std::fs::write(from.join("mariadb/ibdata1"), b"innodb").unwrap();
        std::fs::create_dir_all(from.join("opcache/abc")).unwrap();
        std::fs::write(from.join("opcache/abc/a.php.bin"), b"compiled").unwrap();

        // An instance without MariaDB takes the opcache only.
        let web = tmp.path().join("web");
        std::fs::create_dir(&web).unwrap();
        claim_image_state(&from, &web, None, "web", |n| n != "mariadb");
        assert_eq!(
            std::fs::read(web.join("opcache/abc/a.php.bin")).unwrap(),
            b"compiled"
        );
        assert!(!web.join("mariadb").exists());
        assert!(from.join("mariadb/mysql").is_dir(), "left for the next one");

        // One that has its own mariadb/ already keeps it.
        let old = tmp.path().join("old");
        std::fs::create_dir_all(old.join("mariadb")).unwrap();
        claim_image_state(&from, &old, None, "old", |_| true);
        assert!(!old.join("mariadb/mysql").exists());
        assert!(from.join("mariadb").is_dir());

        let demo = tmp.path().join("demo");
        std::fs::create_dir(&demo).unwrap();
        claim_image_state(&from, &demo, None, "demo", |_| true);
        assert_eq!(
            std::fs::read(demo.join("mariadb/ibdata1")).unwrap(),
            b"innodb"
        );
        assert!(!from.join("mariadb").exists(), "moved, not copied");
        assert!(
            !demo.join("opcache").exists(),
            "the opcache went to the first"
        );

        // Nothing left: a later instance copies as before, and no error.
        let next = tmp.path().join("next");
        std::fs::create_dir(&next).unwrap();
        claim_image_state(&from, &next, None, "next", |_| true);
        assert_eq!(std::fs::read_dir(&next).unwrap().count(), 0);
    }
}
