#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up (libtorch + the Python parity env), formatting,
# clippy with warnings as errors, then every test of the workspace.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
start=$SECONDS
scripts/setup.sh --python
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "[test] cargo test"
cargo test --workspace
echo "[test] all checks passed in $((SECONDS - start)) s"
