#!/usr/bin/env bash
# Benchmark sturdy against containerd's Go shim in one private containerd, same run, same
# machine: per-shim RSS/PSS/USS with 1, 20 and 50 pods and CRI create+start / stop+remove
# latency (median and p90 of 30). Prints a markdown report with sturdy/Go ratios.
# Arguments go to sturdy-bench (e.g. `--pods 1,20 --iterations 10`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh >&2
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
shim="$(bash scripts/build-shim.sh | tail -n 1)"
cargo build --locked --release -p sturdy-integration --bin sturdy-bench >&2
# Memory is read from smaps; flush freshly written binaries so page-cache dirtiness does
# not show up as private memory.
sync
STURDY_SHIM_BIN="$shim" exec target/release/sturdy-bench "$@"
