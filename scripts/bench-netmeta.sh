#!/usr/bin/env bash
# Benchmark the sandbox network record: RunPodSandbox latency through sturdy with the record
# on and off (median and p90 of 30, interleaved, same containerd) and one pod's shim memory
# either way, with the production (release, static) shim. Arguments go to
# sturdy-netmeta-bench (e.g. `--iterations 10`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh >&2
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
shim="$(bash scripts/build-shim.sh | tail -n 1)"
cargo build --locked --release -p sturdy-integration --bin sturdy-netmeta-bench >&2
sync
STURDY_SHIM_BIN="$shim" exec target/release/sturdy-netmeta-bench "$@"
