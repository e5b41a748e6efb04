"""What every bench/ script needs: logging, the applianced binary (built when
older than the sources), Debian packages installed on demand, a clean child
environment, waiting and medians. Imported by bench/workers; plain stdlib."""

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CHILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
T0 = time.monotonic()


class BenchError(Exception):
    pass


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def env_int(script, name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        sys.exit(f"{script}: {name} must be an integer")


def ensure_packages(programs, files=None):
    """`programs`: {program on PATH: Debian package}; `files`: {path: package}.
    Installs what is missing with apt-get, or raises naming the packages."""
    missing = {pkg for prog, pkg in programs.items() if not shutil.which(prog, path=CHILD_PATH)}
    missing |= {pkg for path, pkg in (files or {}).items() if not Path(path).exists()}
    if not missing:
        return
    missing = sorted(missing)
    log(f"installing {' '.join(missing)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
        try:
            subprocess.run(cmd, env=env, check=True, timeout=900, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as e:
            raise BenchError(f"`{' '.join(cmd)}` failed ({e}); install "
                             f"{' '.join(missing)} by hand and rerun") from e


def newest_source_mtime():
    newest = 0.0
    for top in ("appliance", "assets", "units", "build.rs", "Cargo.toml", "Cargo.lock"):
        p = REPO / top
        if not p.exists():
            continue
        for f in [p] if p.is_file() else p.rglob("*"):
            if f.is_file():
                newest = max(newest, f.stat().st_mtime)
    return newest


def ensure_applianced():
    """$APPLIANCED, or target/release/applianced rebuilt when stale."""
    if os.environ.get("APPLIANCED"):
        b = Path(os.environ["APPLIANCED"]).resolve()
        if not os.access(b, os.X_OK):
            raise BenchError(f"APPLIANCED={b} is not executable")
        return b
    b = REPO / "target/release/applianced"
    if b.exists() and b.stat().st_mtime >= newest_source_mtime():
        return b
    log("building applianced (cargo build --release; a few minutes)")
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo/bin/cargo")
    try:
        r = subprocess.run([cargo, "build", "--release", "--quiet"], cwd=REPO,
                           timeout=1800, capture_output=True, text=True)
        ok, why = r.returncode == 0, r.stderr.strip()[-2000:]
    except (OSError, subprocess.SubprocessError) as e:
        ok, why = False, str(e)
    if ok:
        return b
    raise BenchError(f"cargo build --release failed:\n{why}")


def clean_env(tmp, **extra):
    """Nothing from the caller's environment (APPLIANCE_*, ...) leaks in;
    BENCH_SCOPE marks every process started so cleanup can find it in /proc."""
    return {"PATH": CHILD_PATH, "LANG": "C.UTF-8", "BENCH_SCOPE": str(tmp), **extra}


def scoped_pids(tmp):
    """Every process whose environment carries BENCH_SCOPE=tmp."""
    needle = f"BENCH_SCOPE={tmp}".encode()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        out.append(int(d))
            except OSError:
                pass
    return out


def tail(path, n=25):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def wait_until(cond, timeout, poll=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return False


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]
