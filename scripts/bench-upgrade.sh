#!/usr/bin/env bash
# Benchmark a live shim upgrade (issue 20) against one private containerd: rounds of
# `sturdyctl upgrade-shims` (the real exec) over many sturdy pods, alternating between the
# release shim and another build of it, with the latency of containerd's requests to the
# shims during them; `--rehearse-only` measures the pause without the exec instead
# (`--dry-run --rehearse`), as before the exec existed. docs/upgrade.md says what is
# measured. Prints a markdown report; exits 1 if a shim was not upgraded in place or a
# request failed. Arguments go to sturdy-upgrade-bench (e.g. `--pods 20 --rounds 1`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh >&2
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
shim="$(bash scripts/build-shim.sh | tail -n 1)"
cargo build --locked --release -p sturdyctl -p sturdy-integration --bin sturdyctl \
  --bin sturdy-upgrade-bench >&2
STURDY_SHIM_BIN="$shim" STURDYCTL_BIN="$PWD/target/release/sturdyctl" \
  exec target/release/sturdy-upgrade-bench "$@"
