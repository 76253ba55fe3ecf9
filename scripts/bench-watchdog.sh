#!/usr/bin/env bash
# Benchmark the shim watchdog (`sturdyctl watchdog`) against one private containerd: its
# RSS and CPU share while it watches 100 pods (half sturdy, half the Go shim) at the default
# interval for a minute, and the medians of 10 recoveries each of a SIGKILLed (dead) and a
# SIGSTOPped (hung) shim, sturdy's and the Go shim's, beside containerd alone. Prints a
# markdown report. Arguments go to sturdy-watchdog-bench (e.g. `--pods 20 --recoveries 3`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh >&2
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
shim="$(bash scripts/build-shim.sh | tail -n 1)"
cargo build --locked --release -p sturdyctl -p sturdy-integration --bin sturdyctl \
  --bin sturdy-watchdog-bench >&2
# RSS is read from smaps: flush freshly written binaries so their page-cache pages do not
# show up as dirty private memory.
sync
STURDY_SHIM_BIN="$shim" STURDYCTL_BIN="$PWD/target/release/sturdyctl" \
  exec target/release/sturdy-watchdog-bench "$@"
