#!/usr/bin/env bash
# The whole check, exactly as CI runs it: deps, format, lints, build, every test, leak check.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
bash scripts/deps.sh
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi

# Snapshot the host first so only what this run leaves behind can fail the leak check.
work=$(mktemp -d "${TMPDIR:-/tmp}/sturdy-leakcheck.XXXXXX")
trap 'rm -rf "$work"' EXIT
bash scripts/leak-check.sh selftest
bash scripts/leak-check.sh snapshot "$work/before"

step() { echo; echo "==> $*"; }

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

# Builds target/debug/containerd-shim-sturdy-v2, which the fixture puts on containerd's PATH.
# --all-targets builds the tests too, with the same (dev-dependency-unified) features
# `cargo test` uses; plain `cargo build` would resolve tokio & co. without dev features and
# `cargo test` would then compile the whole dependency graph a second time.
step "cargo build --workspace --all-targets"
cargo build --locked --workspace --all-targets

# Two threads for two cores: each integration test runs a whole containerd, and the CRI
# tests are I/O-bound, so two at a time keeps the machine busy without starving containerd.
step "cargo test --workspace"
test_status=0
cargo test --locked --workspace -- --test-threads=2 || test_status=$?

# Runs even after failed tests: a failing test must not leak either.
step "leak check"
leak_status=0
bash scripts/leak-check.sh check "$work/before" || leak_status=$?

echo
echo "==> scripts/test.sh finished in $(( $(date +%s) - start ))s (tests: exit $test_status, leak check: exit $leak_status)"
if [ "$test_status" -ne 0 ] || [ "$leak_status" -ne 0 ]; then
    exit 1
fi
