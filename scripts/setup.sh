#!/usr/bin/env bash
# Installs what applianced and its tests need on Debian 12, idempotently.
# `apt-get update` runs only when something is missing. Sourced by demo.sh and
# test.sh; safe to run on its own.
set -euo pipefail

PACKAGES=(
  # the stack applianced supervises
  mariadb-server mariadb-client redis-server
  php8.2-fpm php8.2-cli php8.2-mysql php8.2-redis
  # the bundled demo app (assets/demo, "Facturador"): Debian's packaged Laravel 8
  # (Packagist is unreachable, so no composer vendor/) and the extensions it uses
  php-laravel-framework php8.2-xml php8.2-mbstring php8.2-intl
  # build: pingora (later) needs cmake and a C compiler
  build-essential cmake pkg-config
  # tests and benchmarks: real clients (FastCGI, curl with HTTP/2, openssl for
  # test certificates), sqlite3 for poking at state, supervisord as the
  # benchmark peer, python3 for test services
  libfcgi-bin curl openssl ca-certificates sqlite3 supervisor python3 procps psmisc passwd
  # metrics (tests/metrics.rs): a real Prometheus server scrapes applianced,
  # and promtool checks the exposition; the dashboard's test renders it in
  # headless Chromium (tests/dashboard.rs)
  prometheus chromium
  # backups (tests/backup.rs, bench/backup): zstd for the bench's peer check,
  # python3-venv for the S3 server below
  zstd python3-venv
  # PID-1 mode (appliance/init) and its tests: the system units (sshd, dhclient),
  # the tools init runs (blkid, mount, sfdisk, partx, resize2fs, ip, modprobe), and
  # NoCloud seed images (mkfs.vfat + mtools, xorriso) on loop devices
  openssh-server isc-dhcp-client util-linux fdisk e2fsprogs iproute2 kmod
  dosfstools mtools xorriso
  # the disk image (image/build) and the VM tests (tests/vm.rs, bench/boot):
  # mmdebstrap, GRUB for BIOS and UEFI, no-loop-device disk assembly, QEMU with
  # SeaBIOS and OVMF, SSH into the guest; the .deb (packaging/build-deb); the
  # image's own initramfs (a static busybox, cpio)
  qemu-system-x86 qemu-utils ovmf mmdebstrap grub-pc-bin grub-efi-amd64-bin grub-common
  busybox-static cpio
  cloud-image-utils openssh-client binutils dpkg
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (it installs Debian packages and applianced switches users): sudo $0" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages' own services from starting: applianced runs them.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  extra=()
  # qemu-system-x86 and qemu-utils must come from the same release: a newer
  # qemu-utils (backports) makes apt refuse qemu-system-x86, so take both from
  # bookworm together (installing qemu-system-x86 alone would drop qemu-img).
  if printf '%s\n' "${missing[@]}" | grep -qx qemu-system-x86; then
    missing=("${missing[@]/qemu-utils}")
    extra=(--allow-downgrades "qemu-utils/$(. /etc/os-release && echo "$VERSION_CODENAME")")
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" "${extra[@]}" >/dev/null
fi

# The backup tests' S3-compatible server: moto's, in its own venv (Debian's
# python refuses system-wide pip installs). tests/backup.rs looks here first.
MOTO_VENV=/opt/applianced-test/moto
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  echo "setup: installing moto[server] (S3 server for the backup tests) into $MOTO_VENV"
  /usr/bin/python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q 'moto[server]'
fi

# The distro services must not hold the default sockets or ports.
for svc in mariadb redis-server php8.2-fpm supervisor prometheus; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: Rust is missing; installing it with rustup (https://rustup.rs)"
    apt-get install -y -qq curl >/dev/null
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
echo "setup: dependencies OK ($(cargo --version))"
