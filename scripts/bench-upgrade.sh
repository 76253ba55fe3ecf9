#!/usr/bin/env bash
# Benchmark the pause of a live shim upgrade (issue 20) against one private containerd:
# `sturdyctl upgrade-shims --dry-run --rehearse` onto another build of the shim, over many
# sturdy pods, with the latency of containerd's requests to the shims during it. The exec
# is not implemented yet, so this is the pause alone (docs/upgrade.md). Prints a markdown
# report. Arguments go to sturdy-upgrade-bench (e.g. `--pods 20 --rounds 1`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh >&2
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
shim="$(bash scripts/build-shim.sh | tail -n 1)"
cargo build --locked --release -p sturdyctl -p sturdy-integration --bin sturdyctl \
  --bin sturdy-upgrade-bench >&2
STURDY_SHIM_BIN="$shim" STURDYCTL_BIN="$PWD/target/release/sturdyctl" \
  exec target/release/sturdy-upgrade-bench "$@"
