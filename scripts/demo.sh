#!/usr/bin/env bash
# Build sturdy in release mode and run one real container through it in a private containerd.
# Arguments go to sturdy-demo (e.g. `--runtime runc`). With --vm first, the demo runs inside a
# guest with systemd over cgroup v2 (scripts/vm.sh), on containerd 2.3 + runc 1.4 with the
# systemd cgroup driver: the machine most Kubernetes nodes are.
set -euo pipefail
cd "$(dirname "$0")/.."
vm=0
if [ "${1:-}" = --vm ]; then vm=1; shift; fi

bash scripts/deps.sh
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi

echo "==> cargo build --release --workspace"
cargo build --locked --release --workspace
# The shim as nodes get it (static, panic = abort), not the workspace's release build.
echo "==> scripts/build-shim.sh"
shim="$(bash scripts/build-shim.sh | tail -n 1)"

if [ "$vm" = 1 ]; then
    echo "==> the demo in a cgroup v2 + systemd guest: containerd 2.3, runc 1.4, SystemdCgroup = true"
    # The guest sees the checkout read-only: the tools it runs are unpacked here first.
    target/release/sturdy-tools unpack containerd-2.3.4 runc-1.4.3 >/dev/null
    STURDY_CONTAINERD=2.3 STURDY_RUNC=1.4 STURDY_CGROUP_DRIVER=systemd \
        exec bash scripts/vm.sh run --timeout 1800 -- target/release/sturdy-demo --shim "$shim" "$@"
fi
exec target/release/sturdy-demo --shim "$shim" "$@"
