#!/usr/bin/env bash
# Build sturdy in release mode and run one real container through it in a private containerd.
# Arguments go to sturdy-demo (e.g. `--runtime runc`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi

echo "==> cargo build --release --workspace"
cargo build --locked --release --workspace
# The shim as nodes get it (static, panic = abort), not the workspace's release build.
echo "==> scripts/build-shim.sh"
shim="$(bash scripts/build-shim.sh | tail -n 1)"

exec target/release/sturdy-demo --shim "$shim" "$@"
