#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints,
# then runs every unit and integration test against the real MariaDB, Redis and
# php-fpm. The last lines are the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --quiet --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --profile ci
else
  cargo test -- --test-threads 2
fi
