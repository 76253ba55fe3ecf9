#!/usr/bin/env bash
# The VM tier (docs/testing.md, "VM tier"): the cgroup paths this host (cgroup v1, no
# systemd) cannot run, in a guest with systemd as PID 1 over the unified cgroup v2
# hierarchy (scripts/vm.sh), on containerd 2.3.4 + runc 1.4.3:
#   - the integration tests that touch cgroups, with the cgroupfs and the systemd driver;
#   - critest v1.36.0 through the Go shim and through sturdy with the systemd driver.
#
#   scripts/vm-tier.sh [--tests-only] [--critest-focus REGEX] [--guest-packages]
#
# --guest-packages runs the tests (no critest) on the guest's own containerd 1.7 and runc
# 1.1.15 from trixie instead: the second configuration, run by hand, not in CI.
#
# Exit status: 0 passed, 1 failed, 77 this machine cannot run the tier (QEMU cannot start,
# or ../shared/tools lacks containerd 2.3 / runc 1.4 / critest 1.36).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi

# What critest runs in the guest. Under TCG every spec costs 5-10x its host time and each
# run starts with a ~50 s image push, so within the tier's 20 minutes the guest runs the 12
# specs that go through the cgroup driver most directly: sandbox run/stop, container
# start/stop/remove, the stats list (v2 files), OOM, exec with a tty and in a second
# container (which join the container's cgroup), a privileged container (device rules).
# 27 specs took 290 s per shim on a loaded host (docs/testing.md, "VM tier"); the host's
# critest runs cover all 117. An empty focus runs all 117 here too.
focus=${STURDY_CRITEST_FOCUS-'Container OOM|listing container stats|listing stats for started containers|running PodSandbox|stopping PodSandbox|support starting container \[|support stopping container|removing running container|Privileged is true|exec with tty=true|in a pod should support container exec'}
tests_only=0
guest_env=()
while [ $# -gt 0 ]; do
    case "$1" in
        --tests-only) tests_only=1; shift ;;
        --critest-focus) focus=$2; shift 2 ;;
        --guest-packages) tests_only=1; guest_env=(STURDY_VM_CONFIG=guest-packages); shift ;;
        *) echo "usage: scripts/vm-tier.sh [--tests-only] [--critest-focus REGEX] [--guest-packages]" >&2; exit 2 ;;
    esac
done
[ "$tests_only" = 0 ] || focus=skip

start=$(date +%s)
step_name="" step_start=$start
step_done() { [ -z "$step_name" ] || echo "<== vm tier, ${step_name}: $(( $(date +%s) - step_start ))s"; }
step() { step_done; step_name=$*; step_start=$(date +%s); echo "==> vm tier, $*"; }

# The same build scripts/test.sh makes (one feature resolution for the whole workspace), so
# after it this is a no-op and the executables are the ones the host suite ran.
step "build"
cargo build --locked --workspace --all-targets
executables=$(cargo test --locked --workspace --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])')

# The test binaries the guest runs, each with the tests to run (all when no filter): the
# shim's OOM watch and runc-client's cgroup kill on real v2 cgroups, every integration test
# that reads or changes a container's cgroup, the shim's own cgroup, and the watchdog's
# recovery of a dead and a stopped shim.
tests=(
    "sturdy_shim:cgroups::oom::tests::v2_oom_of_a_real_cgroup_is_reported_once"
    "real_cgroup:"
    "stats:"
    "pause:"
    "metrics:"
    "shim_runtime:shim_cgroup_and_oom_score"
    "watchdog:killed_shim_pod_is_recovered|hung_sturdy_shim_is_recovered|hung_go_shim_is_recovered"
)
args=()
for t in "${tests[@]}"; do
    target=${t%%:*}
    exe=$(awk -v t="$target" '$1 == t { print $2 }' <<< "$executables" | tail -n 1)
    [ -x "$exe" ] || { echo "vm-tier.sh: no test executable for $target" >&2; exit 1; }
    args+=("$target:$exe:${t#*:}")
done

# The guest sees the checkout read-only: unpack its tools here, into the cache it reads.
step "tools"
rc=0
target/debug/sturdy-tools unpack containerd-2.3.4 runc-1.4.3 cri-tools-1.36.0 critest-images-1.36.0 >/dev/null || rc=$?
if [ "$rc" = 77 ]; then echo "vm-tier.sh: skipped: ../shared/tools lacks what the tier runs" >&2; exit 77; fi
[ "$rc" = 0 ] || exit 1

step "image"
bash scripts/vm.sh image

step "guest run"
rc=0
STURDY_CRITEST_FOCUS=$focus bash scripts/vm.sh run --timeout "${STURDY_VM_TIMEOUT:-2400}" -- \
    env "${guest_env[@]}" bash scripts/vm/tier.sh "${args[@]}" || rc=$?
step_done
echo "vm tier: $(( $(date +%s) - start ))s in all, exit $rc"
exit "$rc"
