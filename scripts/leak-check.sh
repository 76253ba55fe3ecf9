#!/usr/bin/env bash
# Snapshot / compare everything the test suite could leak on the host.
#   leak-check.sh snapshot FILE   record the current state
#   leak-check.sh check FILE      fail (exit 1) if anything appeared since FILE was written
#   leak-check.sh selftest        show that `check` does fail on a planted leak
set -euo pipefail

state() {
    # Live (non-zombie) containerd, shim and OCI runtime processes. PID 1 here may never reap
    # orphaned shims, so zombies are dead processes, not leaks.
    # Also the Kubernetes node's components (comm is cut at 15 characters).
    ps -eo pid=,stat=,comm= | awk '$2 !~ /^Z/ && $3 ~ /^(containerd|containerd-shim.*|runc|crun|etcd|kubelet|kube-apiserver|kube-controller.*|kube-scheduler|sturdy-kube-nod.*)$/ { print "process " $1 " " $3 }'
    # Overlay mounts anywhere, and any mount inside a fixture dir or a named netns.
    findmnt -rn -o TARGET,FSTYPE | awk '$2 == "overlay" || $1 ~ /sturdy-test-/ || $1 ~ /sturdy-kube-/ || $1 ~ /^\/run\/netns\// { print "mount " $1 " " $2 }'
    # CNI network namespaces.
    if [ -d /run/netns ]; then
        find /run/netns -mindepth 1 -maxdepth 1 -name 'cni-*' -printf 'netns %p\n'
    fi
    # libcni's cached results (CRI's loopback network is shared by every fixture).
    if [ -d /var/lib/cni/results ]; then
        find /var/lib/cni/results -mindepth 1 -maxdepth 1 -printf 'cni-result %p\n'
    fi
    # Fixture temp dirs (fixtures live in STURDY_TEST_TMPDIR, see integration's
    # fixture_base; the selftest plants one in TMPDIR).
    for base in "${TMPDIR:-/tmp}" "${STURDY_TEST_TMPDIR:-/var/lib/sturdy-test}"; do
        if [ -d "$base" ]; then
            find "$base" -mindepth 1 -maxdepth 1 \( -name 'sturdy-test-*' -o -name 'sturdy-kube-*' \) -printf 'tempdir %p\n'
        fi
    done
    # Fixture bridges (stu<hex>) and their veths' peers would show up as links.
    ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | grep -E '^stu[0-9a-f]{8}$' | sed 's/^/link /' || true
    # Fixture cgroups (the Kubernetes node's kubelet root is sturdy-kube-<hex>) and shim sockets.
    find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -name 'sturdy-*' -printf 'cgroup %p\n' 2>/dev/null || true
    # The kernel tunables a kubelet sets unless told not to: a changed value shows as new.
    for f in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
        echo "sysctl $f $(cat "/proc/sys/$f" 2>/dev/null)"
    done
    if [ -d /run/containerd/s ]; then
        find /run/containerd/s -mindepth 1 -maxdepth 1 -printf 'shim-socket %p\n'
    fi
}

case "${1:-}" in
    snapshot)
        state | sort >"$2"
        ;;
    check)
        now=$(mktemp)
        state | sort >"$now"
        leaked=$(comm -13 "$2" "$now")
        rm -f "$now"
        if [ -n "$leaked" ]; then
            echo "leak check: FAILED, the suite left these behind:" >&2
            echo "$leaked" | sed 's/^/  /' >&2
            exit 1
        fi
        echo "leak check: ok (no new containerd/shim/runc/Kubernetes processes, overlay mounts, cni netns, CNI results, sturdy-test-* dirs, bridges, cgroups or shim sockets)"
        ;;
    selftest)
        # Prove the check can fail: plant a fake fixture dir and expect a complaint about it.
        dir=$(mktemp -d "${TMPDIR:-/tmp}/sturdy-leakcheck-self.XXXXXX")
        state | sort >"$dir/before"
        fake=$(mktemp -d "${TMPDIR:-/tmp}/sturdy-test-leakcheck-selftest.XXXXXX")
        if out=$(bash "$0" check "$dir/before" 2>&1); then status=0; else status=$?; fi
        rmdir "$fake"
        if [ "$status" -eq 0 ] || ! grep -q "tempdir $fake" <<<"$out"; then
            rm -rf "$dir"
            echo "leak check selftest: FAILED, a planted $fake went unnoticed" >&2
            exit 1
        fi
        rm -rf "$dir"
        echo "leak check selftest: ok"
        ;;
    *)
        echo "usage: $0 snapshot|check FILE | selftest" >&2
        exit 2
        ;;
esac
