#!/usr/bin/env bash
# Install what the sturdy build, demo and test suite need, and nothing that is already there.
# Idempotent, non-interactive, works as root on a fresh Debian 12 without systemd.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "deps.sh: needs root (or sudo) to install packages" >&2; exit 1
    fi
fi

# Runtime pieces the tests drive for real, plus the tools the harness and scripts call.
PACKAGES=(
    containerd                  # containerd, ctr, containerd-shim-runc-v2 (the oracle shim)
    runc                        # what both shims drive
    crun                        # alternative OCI runtime, for runtime-compatibility tests
    containernetworking-plugins # bridge, host-local, loopback under /usr/lib/cni
    busybox-static              # the only binary inside the locally built images
    iproute2                    # ip: deleting bridges, inspecting links
    protobuf-compiler           # protoc, for crates that generate protobuf code at build time
    procps                      # ps: leak check
    util-linux                  # findmnt, mount, nsenter
    ca-certificates curl        # fetching rustup on a machine without Rust
    gcc libc6-dev               # linker and crt files for cargo
    xz-utils                    # unpacking ../shared/tools archives (tar -J)
    docker-registry             # scripts/critest.sh: local registry serving critest's images
    skopeo                      # scripts/critest.sh: pushing the OCI archives into it
    criu                        # runc checkpoint/restore (Task API Checkpoint, restore on Create)
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "deps.sh: installing ${missing[*]}"
    # Keep package scripts from starting a system-wide containerd: the suite never uses one.
    policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    trap '[ "$policy_added" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    # docker-registry's package starts its daemon where it can; policy-rc.d forbids that,
    # and any registry that still appears during the install is stopped by its PID below.
    registries_before=" $( (pgrep -x docker-registry || true) | tr '\n' ' ') "
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    for pid in $(pgrep -x docker-registry || true); do
        case "$registries_before" in *" $pid "*) continue ;; esac
        echo "deps.sh: stopping the docker-registry (pid $pid) its package started"
        $SUDO kill "$pid" || true
    done
else
    echo "deps.sh: all system packages present"
fi

# Rust: rustup's toolchain (Debian 12's rustc is too old for this workspace).
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "deps.sh: installing Rust via rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
            echo "deps.sh: adding rustup component $c"
            rustup component add "$c"
        fi
    done
fi

# The overlayfs snapshotter needs the module; loading it is harmless if built in or absent.
if ! grep -qw overlay /proc/filesystems && command -v modprobe >/dev/null 2>&1; then
    $SUDO modprobe overlay 2>/dev/null || true
fi
echo "deps.sh: ok"
