#!/usr/bin/env bash
# A single-node Kubernetes cluster (v1.32.13) on one of our private containerds, by hand.
#   kube-node.sh up [--generation G] [--dir DIR]   start it; the last line printed is
#                                                  KUBECTL=<wrapper that works from the host>
#   kube-node.sh down [--dir DIR]                  stop it and remove everything it made
# The node has the RuntimeClasses `sturdy` and `runc` and the image sturdy.test/busybox:latest
# (pods need imagePullPolicy: Never). Everything runs in the node's own mount and network
# namespaces (docs/testing.md, "Kubernetes node"). Needs
# ../shared/tools/kubernetes-node-1.32.13.tar.xz (exit 77 without it).
set -euo pipefail
cd "$(dirname "$0")/.."

cmd=${1:-}
[ $# -eq 0 ] || shift
dir=/var/lib/sturdy-test/sturdy-kube-node
generation=${STURDY_CONTAINERD:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir=$2; shift 2 ;;
        --generation) generation=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$dir" in /*) ;; *) dir=$PWD/$dir ;; esac
dir=${dir%/}
pidfile=$dir.pid ready=$dir.ready log=$dir.log
target=${CARGO_TARGET_DIR:-$PWD/target}

# The holder's PID, if it is alive and really ours for this dir.
holder() {
    local pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "sturdy-kube-node serve --dir $dir " || return 1
    echo "$pid"
}

case "$cmd" in
up)
    tools=${STURDY_TOOLS:-$(dirname "$PWD")/shared/tools}
    if [ ! -f "$tools/kubernetes-node-1.32.13.tar.xz" ]; then
        echo "kube-node: no $tools/kubernetes-node-1.32.13.tar.xz; cannot start a node" >&2
        exit 77
    fi
    if pid=$(holder); then
        echo "kube-node: a node already runs in $dir (pid $pid); run: $0 down --dir $dir" >&2
        exit 1
    fi
    if [ -e "$dir" ]; then
        echo "kube-node: $dir exists; remove it or run: $0 down --dir $dir" >&2
        exit 1
    fi
    if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
    nice -n 10 cargo build --quiet -p sturdy-shim -p sturdyctl -p sturdy-integration --bin sturdy-kube-node
    mkdir -p "$(dirname "$dir")"
    rm -f "$ready"
    args=(serve --dir "$dir" --ready "$ready")
    [ -z "$generation" ] || args+=(--generation "$generation")
    t0=$(date +%s)
    setsid "$target/debug/sturdy-kube-node" "${args[@]}" >"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pidfile"
    while [ ! -s "$ready" ]; do
        # Our own child: kill -0 works before it has even exec'd (holder would not).
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "kube-node: the node did not come up; its log ($log):" >&2
            tail -n 40 "$log" >&2
            rm -f "$pidfile"
            exit 1
        fi
        if [ $(( $(date +%s) - t0 )) -gt 300 ]; then
            echo "kube-node: no node after 300 s; stopping it" >&2
            "$0" down --dir "$dir" || true
            exit 1
        fi
        sleep 0.2
    done
    cat "$log"
    cat "$ready"
    ;;
down)
    if pid=$(holder); then
        kill -TERM "$pid"
        for _ in $(seq 1 600); do
            [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null || break
            sleep 0.2
        done
        if [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
            echo "kube-node: $pid did not stop in 120 s; killing it" >&2
            kill -KILL "$pid" || true
        fi
        tail -n 5 "$log" 2>/dev/null || true
    fi
    # A holder that died without cleaning up: its components died with it (parent death
    # signal); its containerd fixture is reaped by the next test fixture; what is left here:
    if [ -f "$dir/node.json" ]; then
        root=$(sed -n 's/.*"cgroup_root": "\/\([^"]*\)".*/\1/p' "$dir/node.json")
        if [ -n "$root" ]; then
            for h in /sys/fs/cgroup/*/"$root"; do
                [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} + 2>/dev/null || true
            done
        fi
    fi
    if [ -e "$dir" ]; then
        if findmnt -rn -o TARGET | grep -q "^$dir/"; then
            echo "kube-node: mounts left under $dir; not removing it" >&2
            exit 1
        fi
        rm -rf "$dir"
    fi
    rm -f "$pidfile" "$ready" "$log"
    echo "kube-node: down"
    ;;
*)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
