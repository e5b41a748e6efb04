//! On-prem mode: the `.deb` built by `packaging/build-deb` (dpkg-deb only) and
//! the systemd unit's `Type=notify` contract, checked with Debian's own tools
//! and the real binary. Nothing is installed on the host.
mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (apt-get install dpkg binutils)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build_deb(out: &Path) -> PathBuf {
    let stdout = run(Command::new("bash")
        .arg(repo().join("packaging/build-deb"))
        .arg(out)
        .env("APPLIANCED", common::BIN)
        .env("DEB_COMPRESS", "gzip"));
    PathBuf::from(
        stdout
            .trim()
            .lines()
            .last()
            .expect("build-deb prints the .deb path"),
    )
}

#[test]
fn deb_installs_the_binary_the_notify_unit_and_a_sample_config() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    assert!(deb.exists(), "{deb:?}");

    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for want in [
        "Package: applianced",
        "Architecture: amd64",
        "mariadb-server",
        "redis-server",
        "php8.2-fpm",
    ] {
        assert!(info.contains(want), "control lacks {want:?}:\n{info}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(info.contains(&format!("Version: {version}")), "{info}");
    let conffiles = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Package"));
    assert_eq!(conffiles.trim(), "applianced");

    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/sbin/applianced",
        "./lib/systemd/system/applianced.service",
        "./etc/applianced/appliance.toml",
        "./usr/share/doc/applianced/README.md",
    ] {
        assert!(
            contents.contains(path),
            "{path} not in the .deb:\n{contents}"
        );
    }
    assert!(
        contents
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with("./usr/sbin/applianced")),
        "binary must be root-owned and executable:\n{contents}"
    );

    // The maintainer side: conffile and scripts.
    let ctrl = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctrl));
    assert_eq!(
        std::fs::read_to_string(ctrl.join("conffiles"))
            .unwrap()
            .trim(),
        "/etc/applianced/appliance.toml"
    );
    for s in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(ctrl.join(s)));
    }

    // The payload works: the packaged binary accepts the packaged sample config.
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let plan = run(Command::new(root.join("usr/sbin/applianced"))
        .arg("check-config")
        .arg("--config")
        .arg(root.join("etc/applianced/appliance.toml")));
    assert!(plan.contains("demo"), "check-config plan: {plan}");

    let unit = std::fs::read_to_string(root.join("lib/systemd/system/applianced.service")).unwrap();
    for want in [
        "Type=notify",
        "ExecStart=/usr/sbin/applianced run --config /etc/applianced/appliance.toml",
        "KillMode=mixed",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.contains(want), "unit lacks {want}:\n{unit}");
    }
}

#[test]
fn daemon_sends_ready_to_systemds_notify_socket_once_all_units_are_ready() {
    common::require_programs(&["sleep"]);
    let mut app = common::Appliance::new(Some(&format!(
        "[http]\nenabled = false\n[[instance]]\nname = \"n\"\n{}\n[instance.units.idle]\ncommand = \"sleep\"\nargs = [\"1000\"]\n[instance.units.idle.readiness]\nkind = \"exec\"\ncommand = \"sleep\"\nargs = [\"0.3\"]\n",
        common::NO_DEFAULT_UNITS
    )));
    let sock_path = app.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // SAFETY: tests in this binary do not read the environment concurrently
    // with this call apart from spawning, which copies it.
    unsafe { std::env::set_var("NOTIFY_SOCKET", &sock_path) };
    app.start();
    unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 on NOTIFY_SOCKET: {e}\n{}", app.diagnostics()));
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // It came when the units were ready, not before.
    let st = app.unit("n", "idle");
    assert_eq!(st["ready"], true, "{st}");
}
