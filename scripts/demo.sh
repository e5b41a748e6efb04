#!/usr/bin/env bash
# Quick start: install what is needed, build applianced, and run its embedded
# default (one `demo` instance: MariaDB, Redis, php-fpm and the demo app) in the
# foreground. Ctrl-C stops everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "demo: building applianced (release; a few minutes the first time)"
cargo build --release --quiet
echo "demo: starting. In another terminal: sudo target/release/applianced status"
exec target/release/applianced run "$@"
