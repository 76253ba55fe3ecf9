#!/usr/bin/env bash
# Build sturdy in release mode and run one real container through it in a private containerd.
# Arguments go to sturdy-demo (e.g. `--runtime runc`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi

echo "==> cargo build --release --workspace"
cargo build --locked --release --workspace

exec target/release/sturdy-demo "$@"
