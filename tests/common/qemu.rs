//! QEMU harness: boots the real disk image (`image/build`) the way a VPS
//! would, with the proxy and SSH ports forwarded to free host ports, and
//! drives it from outside: serial console, HTTP, SSH, power cut.
//!
//! - The image is built (or reused) by `image/build` with the test binary
//!   (stripped) as `/sbin/init`, when missing or older than the binary or the
//!   image recipe. One build at a time (a lock file), whatever the test count.
//! - Each VM boots its own qcow2 overlay over the raw image, so tests never
//!   write to the image and a "re-flash" is a new overlay.
//! - KVM is used only when `/dev/kvm` opens *and* `APPLIANCE_VM_KVM=1` (here a
//!   nested kvm_pvm device hangs a stock kernel); otherwise TCG with long
//!   timeouts.
//! - A missing tool fails the test naming the Debian package. QEMU is killed
//!   on drop, so a failing test leaves no VM spinning.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

pub const READY_LINE: &str = "applianced: READY: all units ready in";

/// Guest boots under TCG take 20-60 s on a shared 2-core machine; be generous.
pub fn boot_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("APPLIANCE_VM_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if kvm_enabled() { 120 } else { 420 }),
    )
}

fn kvm_enabled() -> bool {
    std::env::var("APPLIANCE_VM_KVM").as_deref() == Ok("1")
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fail (never skip) when a host tool is missing, naming its package.
pub fn require_tools() {
    let tools = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("mmdebstrap", "mmdebstrap"),
        ("grub-mkimage", "grub-common"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("sfdisk", "fdisk"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("curl", "curl"),
        ("strip", "binutils"),
    ];
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(t, _)| appliance::plan::find_program(t).is_none())
        .map(|(_, p)| *p)
        .collect();
    for (f, p) in [
        ("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin"),
        ("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin"),
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ] {
        if !Path::new(f).exists() {
            missing.push(p);
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "VM tests need the Debian packages {missing:?}: run `bash scripts/setup.sh` (as root)"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "VM tests build the image as root (mmdebstrap --mode=root); run them as root"
    );
}

fn mtime(p: &Path) -> SystemTime {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The binary that runs as PID 1 in the guest: the test binary, or
/// `APPLIANCE_VM_BINARY` (a release build, or another branch's binary).
pub fn guest_binary() -> PathBuf {
    std::env::var_os("APPLIANCE_VM_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(super::BIN))
}

/// The raw disk image with the test binary as PID 1: built when missing or
/// stale, under a lock so parallel tests build it once.
pub fn image() -> PathBuf {
    require_tools();
    let out = repo().join("target/image-test");
    fs::create_dir_all(&out).unwrap();
    let lock = fs::File::create(out.join(".harness.lock")).unwrap();
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .expect("lock target/image-test");
    let raw = out.join("appliance.raw");
    let guest_bin = guest_binary();
    let inputs = [
        guest_bin.clone(),
        repo().join("image/build"),
        repo().join("image/appliance.toml"),
        repo().join("image/initramfs/init"),
    ];
    let newest_input = inputs.iter().map(|p| mtime(p)).max().unwrap();
    if raw.exists() && mtime(&raw) > newest_input {
        return raw;
    }
    eprintln!(
        "vm: building the disk image (image/build; the first build runs mmdebstrap: minutes)"
    );
    let t0 = Instant::now();
    let st = Command::new("bash")
        .arg(repo().join("image/build"))
        .env("APPLIANCED", &guest_bin)
        .env("IMAGE_OUT", &out)
        .env("IMAGE_NO_QCOW2", "1")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .expect("run image/build");
    assert!(st.success(), "image/build failed ({st})");
    eprintln!("vm: image built in {:.0?}", t0.elapsed());
    raw
}

/// An SSH key pair for root logins, made once per test.
pub struct SshKey {
    pub private: PathBuf,
    pub public: String,
}

pub fn ssh_key(dir: &Path) -> SshKey {
    let private = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vm-test", "-f"])
        .arg(&private)
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(st.success());
    let public = fs::read_to_string(dir.join("id_ed25519.pub"))
        .unwrap()
        .trim()
        .to_string();
    SshKey { private, public }
}

/// A cloud-init NoCloud seed: a vfat volume labelled CIDATA with `meta-data`
/// and `user-data`, made without loop devices (mkfs.vfat -C + mcopy).
pub fn nocloud_seed(dir: &Path, meta_data: &str, user_data: &str) -> PathBuf {
    let img = dir.join("seed.vfat");
    let _ = fs::remove_file(&img);
    let md = dir.join("meta-data");
    let ud = dir.join("user-data");
    fs::write(&md, meta_data).unwrap();
    fs::write(&ud, user_data).unwrap();
    let ok = Command::new("mkfs.vfat")
        .args(["-n", "CIDATA", "-C"])
        .arg(&img)
        .arg("2048")
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.vfat (apt-get install dosfstools)")
        .success();
    assert!(ok, "mkfs.vfat -C failed");
    let ok = Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg(&md)
        .arg(&ud)
        .arg("::/")
        .status()
        .expect("mcopy (apt-get install mtools)")
        .success();
    assert!(ok, "mcopy into the seed failed");
    img
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Firmware {
    Bios,
    Uefi,
}

pub struct VmOpts {
    pub firmware: Firmware,
    /// Virtual disk size of the overlay (the data partition grows into it).
    pub disk_size: &'static str,
    pub seed: Option<PathBuf>,
    pub memory_mb: u32,
    /// Boot the image's kernel and initrd directly (`-kernel`, no firmware
    /// boot loader) with this command line, to drive the initramfs.
    pub kernel_cmdline: Option<String>,
}

impl Default for VmOpts {
    fn default() -> Self {
        VmOpts {
            firmware: Firmware::Bios,
            disk_size: "4G",
            seed: None,
            memory_mb: 2048,
            kernel_cmdline: None,
        }
    }
}

pub struct Vm {
    pub dir: tempfile::TempDir,
    pub disk: PathBuf,
    pub serial: PathBuf,
    pub http_port: u16,
    pub https_port: u16,
    pub ssh_port: u16,
    pub opts: VmOpts,
    qemu: Option<Child>,
    boots: usize,
    /// When the current boot was powered on.
    powered_on: Instant,
    /// Serial bytes before the current boot (the file is appended to).
    serial_mark: usize,
    pub key: Option<SshKey>,
}

impl Vm {
    /// A fresh overlay over the image; not yet powered on.
    pub fn new(opts: VmOpts) -> Vm {
        let raw = image();
        let dir = tempfile::Builder::new()
            .prefix("vm-")
            .tempdir_in(repo().join("target"))
            .unwrap();
        let disk = dir.path().join("disk.qcow2");
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&raw)
            .arg(&disk)
            .arg(opts.disk_size)
            .output()
            .expect("qemu-img (apt-get install qemu-utils)");
        assert!(
            out.status.success(),
            "qemu-img create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let serial = dir.path().join("serial.log");
        Vm {
            disk,
            serial,
            http_port: super::free_port(),
            https_port: super::free_port(),
            ssh_port: super::free_port(),
            opts,
            qemu: None,
            boots: 0,
            powered_on: Instant::now(),
            serial_mark: 0,
            key: None,
            dir,
        }
    }

    /// Power on (the disk as it is now).
    pub fn power_on(&mut self) -> &mut Self {
        assert!(self.qemu.is_none(), "already running");
        let mut cmd = Command::new("qemu-system-x86_64");
        if kvm_enabled() {
            cmd.args(["-machine", "q35,accel=kvm", "-cpu", "host"]);
        } else {
            cmd.args(["-machine", "q35,accel=tcg", "-cpu", "max"]);
        }
        cmd.args(["-m", &self.opts.memory_mb.to_string(), "-smp", "2"])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", self.serial.display()));
        if self.opts.firmware == Firmware::Uefi {
            let vars = self.dir.path().join("OVMF_VARS.fd");
            if !vars.exists() {
                fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                    .expect("OVMF_VARS_4M.fd (apt-get install ovmf)");
            }
            cmd.arg("-drive").arg(
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            );
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        }
        if let Some(cmdline) = &self.opts.kernel_cmdline {
            // image/build writes them beside the raw image.
            let raw = image();
            cmd.arg("-kernel").arg(raw.with_extension("vmlinuz"));
            cmd.arg("-initrd").arg(raw.with_extension("initrd"));
            cmd.arg("-append").arg(cmdline);
        }
        cmd.arg("-drive").arg(format!(
            "if=none,id=disk,format=qcow2,cache=writeback,file={}",
            self.disk.display()
        ));
        // A direct kernel boot takes boot index 0 itself.
        cmd.args([
            "-device",
            match self.opts.kernel_cmdline {
                None => "virtio-blk-pci,drive=disk,bootindex=0",
                Some(_) => "virtio-blk-pci,drive=disk",
            },
        ]);
        if let Some(seed) = &self.opts.seed {
            cmd.arg("-drive").arg(format!(
                "if=none,id=seed,format=raw,readonly=on,file={}",
                seed.display()
            ));
            cmd.args(["-device", "virtio-blk-pci,drive=seed"]);
        }
        cmd.arg("-netdev").arg(format!(
            "user,id=net0,hostfwd=tcp:127.0.0.1:{}-:80,hostfwd=tcp:127.0.0.1:{}-:443,hostfwd=tcp:127.0.0.1:{}-:22",
            self.http_port, self.https_port, self.ssh_port
        ));
        cmd.args(["-device", "virtio-net-pci,netdev=net0,romfile="]);
        cmd.stdin(Stdio::null());
        cmd.stdout(Stdio::null());
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("qemu.stderr"))
            .unwrap();
        cmd.stderr(err);
        self.serial_mark = fs::metadata(&self.serial)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        // -serial file: truncates; keep earlier boots' output for diagnostics.
        if self.serial_mark > 0 {
            let prev = self
                .dir
                .path()
                .join(format!("serial.boot{}.log", self.boots));
            fs::rename(&self.serial, prev).unwrap();
            self.serial_mark = 0;
        }
        self.powered_on = Instant::now();
        self.qemu = Some(
            cmd.spawn()
                .expect("qemu-system-x86_64 (apt-get install qemu-system-x86)"),
        );
        self.boots += 1;
        self
    }

    /// The serial console of the current boot.
    pub fn console(&self) -> String {
        let b = fs::read(&self.serial).unwrap_or_default();
        String::from_utf8_lossy(&b[self.serial_mark.min(b.len())..]).into_owned()
    }

    pub fn diagnostics(&self) -> String {
        let c = self.console();
        let tail: Vec<&str> = c.lines().rev().take(60).collect();
        let qerr = fs::read_to_string(self.dir.path().join("qemu.stderr")).unwrap_or_default();
        format!(
            "--- serial console, boot {} (last 60 lines) ---\n{}\n--- qemu stderr ---\n{qerr}",
            self.boots,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    fn qemu_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.qemu.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait for `text` on this boot's console; returns the console then.
    pub fn wait_console(&mut self, text: &str) -> String {
        self.wait_for(&format!("`{text}`"), |c| {
            c.contains(text).then(|| c.to_string())
        })
    }

    /// Wait for applianced's READY line on this boot's console; returns the
    /// power-on-to-ready time and prints it.
    pub fn wait_ready(&mut self) -> Duration {
        let line = self.wait_for(&format!("`{READY_LINE}`"), |c| {
            c.lines()
                .find(|l| l.contains(READY_LINE))
                .map(|l| l.trim().to_string())
        });
        let t = self.powered_on.elapsed();
        eprintln!(
            "vm: boot {} ({:?}, {}): power-on to READY {:.1} s; guest says `{}`",
            self.boots,
            self.opts.firmware,
            if kvm_enabled() { "kvm" } else { "tcg" },
            t.as_secs_f64(),
            line
        );
        t
    }

    /// Poll this boot's console until `found` returns something; fail on a
    /// kernel panic, QEMU's exit, or [`boot_timeout`] after power-on.
    fn wait_for<T>(&mut self, what: &str, found: impl Fn(&str) -> Option<T>) -> T {
        let timeout = boot_timeout();
        loop {
            let c = self.console();
            if let Some(v) = found(&c) {
                return v;
            }
            for fatal in ["Kernel panic", "end Kernel panic", "Attempted to kill init"] {
                assert!(
                    !c.contains(fatal),
                    "guest panicked during boot {}\n{}",
                    self.boots,
                    self.diagnostics()
                );
            }
            if let Some(st) = self.qemu_exited() {
                panic!("QEMU exited ({st}) before {what}\n{}", self.diagnostics());
            }
            assert!(
                self.powered_on.elapsed() < timeout,
                "no {what} within {timeout:?} of power-on (boot {})\n{}",
                self.boots,
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A reboot was just asked of the guest: the next READY line belongs to
    /// the next boot, timed from now (QEMU resets in place, same serial file).
    pub fn rebooting(&mut self) {
        self.serial_mark = fs::metadata(&self.serial)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        self.powered_on = Instant::now();
        self.boots += 1;
    }

    /// Wait until the guest powers itself off (QEMU exits).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.qemu_exited() {
                self.qemu = None;
                return st;
            }
            assert!(
                t0.elapsed() < timeout,
                "the guest did not shut down within {timeout:?}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Power cut: SIGKILL QEMU, no flush, no shutdown.
    pub fn power_cut(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            let _ = q.kill();
            let _ = q.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// `ssh root@guest CMD` with the test key: (exit code, stdout+stderr).
    pub fn ssh(&self, cmd: &str) -> (i32, String) {
        let key = self
            .key
            .as_ref()
            .expect("no SSH key for this VM (seed one)");
        let out = Command::new("ssh")
            .arg("-i")
            .arg(&key.private)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "LogLevel=ERROR",
                "-p",
            ])
            .arg(self.ssh_port.to_string())
            .arg("root@127.0.0.1")
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("ssh (apt-get install openssh-client)");
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), s)
    }

    /// Retry until SSH answers (sshd may come up a moment after READY).
    pub fn ssh_ok(&self, cmd: &str) -> String {
        let t0 = Instant::now();
        loop {
            let (code, out) = self.ssh(cmd);
            if code == 0 {
                return out;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "ssh `{cmd}` failed (exit {code}): {out}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Retry an HTTP GET with `Host: host` until it answers 200 (the guest's
    /// network may come up just after READY); returns the body.
    pub fn get_200(&self, host: &str, path: &str) -> String {
        let t0 = Instant::now();
        loop {
            let r = http_once("GET", host, &self.url(path), &[]);
            if r.0 == 200 {
                return r.1;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "GET {path} (Host: {host}) did not answer 200: {} {}\n{}",
                r.0,
                r.1,
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.power_cut();
        if std::thread::panicking() {
            // Keep the serial logs of a failed test for inspection.
            let keep = self.dir.path().to_path_buf();
            eprintln!("vm: keeping {} for inspection", keep.display());
            let _ = fs::remove_file(&self.disk);
            let d = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            let _ = d.keep();
        }
    }
}

/// One request with curl: (status, body); status 0 when nothing answered.
pub fn http_once(method: &str, host: &str, url: &str, form: &[(&str, &str)]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-X", method, "-H"])
        .arg(format!("Host: {host}"))
        .args(["-H", "Accept: application/json", "-w", "\n%{http_code}"]);
    for (k, v) in form {
        cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
    }
    let out = cmd.arg(url).output().expect("curl (apt-get install curl)");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", &s));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Write a file with mode 0600 (keys, seeds).
pub fn write_private(path: &Path, contents: &str) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// `#cloud-config` user-data as PID-1 mode reads it (docs/image.md): the
/// hostname, root's SSH keys and, optionally, the whole appliance config.
pub fn user_data(hostname: &str, key: &str, config: Option<&str>) -> String {
    let mut s = format!("#cloud-config\nhostname: {hostname}\nssh_authorized_keys:\n  - {key}\n");
    if let Some(c) = config {
        s.push_str("applianced: |\n");
        for l in c.lines() {
            s.push_str("  ");
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// A VM with a fresh overlay and a seed carrying a test SSH key, powered on
/// and READY.
pub fn boot(firmware: Firmware, hostname: &str, config: Option<&str>) -> Vm {
    let mut vm = Vm::new(VmOpts {
        firmware,
        ..VmOpts::default()
    });
    let seed_dir = vm.dir.path().join("seed");
    std::fs::create_dir(&seed_dir).unwrap();
    let key = ssh_key(&seed_dir);
    vm.opts.seed = Some(nocloud_seed(
        &seed_dir,
        &format!("instance-id: iid-{hostname}\nlocal-hostname: {hostname}\n"),
        &user_data(hostname, &key.public, config),
    ));
    vm.key = Some(key);
    vm.power_on();
    vm.wait_ready();
    vm
}
