#!/usr/bin/env bash
# Run critest v1.26.1 (the Kubernetes CRI validation suite) serially through one runtime
# handler of a private containerd of one generation:
#
#   scripts/critest.sh HANDLER [GENERATION] [--results FILE] [--focus REGEX]
#
# HANDLER is sturdy or runc (containerd's Go shim of that generation); GENERATION is 1.6
# (Debian's, the default), 1.7 or 2.1 (from ../shared/tools). Every image critest pulls is
# served by a local docker-registry on 127.0.0.1, through a hosts.toml per upstream registry.
# Prints the failed specs with the first line of each failure, then `N passed, M failed`.
# Everything started (containerd, shims, pods, registry, critest) is stopped by PID, and the
# SysV shm segments the HostIpc specs leave are removed, also on Ctrl-C / TERM.
#
# Exit status: 0 every spec passed, 1 some failed, 2 usage, 3 could not run,
# 77 ../shared/tools (or $STURDY_TOOLS) lacks what the run needs, 130 interrupted.
#
#   scripts/critest.sh --check [GENERATION]   only says whether the tools for a run are
#                                             there (exit 0) or not (77)
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

# The same lookup the harness does (integration/src/tools.rs).
tools="${STURDY_TOOLS:-$(cd .. && pwd)/shared/tools}"
need=(cri-tools-1.26.1 critest-images-1.26.1)
case "$generation" in
    1.6) ;;
    1.7) need+=(containerd-1.7.29) ;;
    2.1) need+=(containerd-2.1.5) ;;
    *) echo "critest.sh: unknown generation $generation (1.6, 1.7 or 2.1)" >&2; exit 2 ;;
esac
for a in "${need[@]}"; do
    if [ ! -f "$tools/$a.tar.xz" ]; then
        echo "critest.sh: skipped: $tools/$a.tar.xz is absent (critest and containerd $generation come from ../shared/tools; set STURDY_TOOLS to use another dir)" >&2
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
