#!/usr/bin/env bash
# Run critest (the Kubernetes CRI validation suite) serially through one runtime handler of
# a private containerd of one generation over one OCI runtime:
#
#   scripts/critest.sh HANDLER [GENERATION] [--critest VERSION] [--runc RUNTIME]
#                      [--results FILE] [--focus REGEX] [--sturdy-as-runc-type]
#
# HANDLER is sturdy or runc (containerd's Go shim of that generation); GENERATION is 1.6
# (Debian's, the default), 1.7, 2.1, 2.2, 2.3 or 2.4 (from ../shared/tools). VERSION is the
# critest release, 1.26.1 (the default, 80 specs) or 1.36.0 (117 specs), each with its own
# image archive. RUNTIME is the OCI runtime both handlers run as `runc`: 1.1 (Debian's),
# 1.3 or 1.4 (runc 1.3.6 / 1.4.3 from ../shared/tools) or crun; default $STURDY_RUNC, else
# 1.1. Every image critest pulls is served by a local docker-registry on 127.0.0.1, through
# a hosts.toml per upstream registry. Prints the failed specs with the first line of each
# failure, then `N passed, M failed`. Everything started (containerd, shims, pods, registry,
# critest) is stopped by PID, and the SysV shm segments the HostIpc specs leave are
# removed, also on Ctrl-C / TERM. --sturdy-as-runc-type registers the sturdy handler as
# io.containerd.runc.v2 with runtime_path (no ConfigPath), the registration containerd 2.x
# needs for user-namespaced pods (docs/operations.md, "User namespaces").
#
# Exit status: 0 every spec passed, 1 some failed, 2 usage, 3 could not run,
# 77 ../shared/tools (or $STURDY_TOOLS) lacks what the run needs, 130 interrupted.
#
#   scripts/critest.sh --check [GENERATION] [--critest VERSION] [--runc RUNTIME]
#       only says whether the tools for a run are there (exit 0) or not (77)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
check_only=0
case "$1" in
    sturdy|runc) ;;
    --check) check_only=1 ;;
    -h|--help) usage ;;
    *) echo "critest.sh: HANDLER must be sturdy or runc" >&2; usage ;;
esac
generation=1.6
if [ $# -ge 2 ] && [ "${2#-}" = "$2" ]; then generation=$2; fi
critest=1.26.1
runtime=${STURDY_RUNC:-1.1}
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --critest) critest=${args[i + 1]:-} ;;
        --runc) runtime=${args[i + 1]:-} ;;
    esac
done

# The same lookup the harness does (integration/src/tools.rs); the archive names are those
# of Generation::archive, OciRuntime::archive and CritestVersion (integration/src).
tools="${STURDY_TOOLS:-$(cd .. && pwd)/shared/tools}"
case "$critest" in
    1.26|1.26.1|v1.26.1) need=(cri-tools-1.26.1 critest-images-1.26.1) ;;
    1.36|1.36.0|v1.36.0) need=(cri-tools-1.36.0 critest-images-1.36.0) ;;
    *) echo "critest.sh: unknown critest version $critest (1.26.1 or 1.36.0)" >&2; exit 2 ;;
esac
case "$generation" in
    1.6) ;;
    1.7) need+=(containerd-1.7.29) ;;
    2.1) need+=(containerd-2.1.5) ;;
    2.2) need+=(containerd-2.2.7) ;;
    2.3) need+=(containerd-2.3.4) ;;
    2.4) need+=(containerd-2.4.0-beta.0) ;;
    *) echo "critest.sh: unknown generation $generation (1.6, 1.7, 2.1, 2.2, 2.3 or 2.4)" >&2; exit 2 ;;
esac
rt=${runtime#runc}; rt=${rt#-}; rt=${rt#v}
case "$rt" in
    1.1|1.1.5|crun) ;;
    1.3|1.3.6) need+=(runc-1.3.6) ;;
    1.4|1.4.3) need+=(runc-1.4.3) ;;
    *) echo "critest.sh: unknown OCI runtime $runtime (1.1, 1.3, 1.4 or crun)" >&2; exit 2 ;;
esac
for a in "${need[@]}"; do
    if [ ! -f "$tools/$a.tar.xz" ]; then
        echo "critest.sh: skipped: $tools/$a.tar.xz is absent (critest $critest, containerd $generation and OCI runtime $runtime come from ../shared/tools; set STURDY_TOOLS to use another dir)" >&2
        exit 77
    fi
done
if [ "$check_only" = 1 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
    echo "critest.sh: needs root (it runs containerd, runc and CNI)" >&2
    exit 3
fi

bash scripts/deps.sh >&2
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
# The fixture runs target/debug's shim; both builds are no-ops after scripts/test.sh's.
cargo build --locked -p sturdy-shim >&2
cargo build --locked -p sturdy-integration --bin sturdy-critest >&2
driver="${CARGO_TARGET_DIR:-target}/debug/sturdy-critest"

# The driver owns every process of the run and stops them itself on INT/TERM/HUP; this
# shell only passes the signal on (by PID) and waits for that cleanup to finish.
"$driver" "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM HUP
status=0
wait "$pid" || status=$?
# A trapped signal ends the first wait early: wait for the driver's own exit status.
while kill -0 "$pid" 2>/dev/null; do
    status=0
    wait "$pid" || status=$?
done
exit "$status"
