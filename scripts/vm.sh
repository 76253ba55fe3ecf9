#!/usr/bin/env bash
# The VM tier: a Debian 13 guest with systemd as PID 1 and the unified cgroup v2 hierarchy,
# the machine most Kubernetes nodes are, for the cgroup paths this host (cgroup v1, no
# systemd) cannot run (docs/testing.md, "VM tier").
#
#   scripts/vm.sh run [--timeout SECONDS] [--smp N] [--memory MIB] [--out DIR] [--] CMD...
#       runs CMD as root inside a fresh guest, in the current directory, with this checkout
#       mounted read-only at the same path as here and ../shared/tools beside it; prints
#       CMD's output and exits with CMD's status. The environment variables CI, RUST_* and
#       STURDY_* are passed in. $STURDY_VM_OUT is a writable directory that is the same
#       path on the host (--out DIR keeps it; otherwise it is removed afterwards).
#   scripts/vm.sh image
#       only builds the guest image, or reuses the cached one.
#
# Exit status of `run`: CMD's, or 124 on timeout, 125 when the guest never ran CMD,
# 77 when QEMU cannot start here at all.
#
# The image is cached in $STURDY_VM_CACHE (default /var/cache/sturdy-vm), keyed by the
# files in scripts/vm/ (package list, customize hook, guest runner), and rebuilt when they
# change. Every run boots a copy-on-write snapshot of it, so each starts clean. QEMU uses
# KVM where the CPU has VT-x/AMD-V and /dev/kvm works, else TCG (emulation; this machine
# kind's /dev/kvm is a PVM that cannot run a stock kernel: ../shared/notes/vm-cgroup-v2.md);
# STURDY_VM_ACCEL=tcg|kvm overrides. QEMU is stopped by its pid on every path. Nothing here
# touches the host's cgroups or systemd: the guest's are its own kernel's.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd)
here=$checkout/scripts/vm
cache=${STURDY_VM_CACHE:-/var/cache/sturdy-vm}
tools=${STURDY_TOOLS:-$(cd .. && pwd)/shared/tools}
suite=trixie
mirror=${STURDY_VM_MIRROR:-http://deb.debian.org/debian}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }
log() { echo "vm.sh: $*" >&2; }
now() { date +%s; }

# Host packages: QEMU and mmdebstrap. This image kind ships qemu-utils from
# bookworm-backports, which bookworm's own qemu-system-x86 7.2 conflicts with, so QEMU
# comes from backports (pinned at 100 by default: it upgrades nothing else).
host_deps() {
    command -v qemu-system-x86_64 >/dev/null && command -v mmdebstrap >/dev/null && return 0
    local src=/etc/apt/sources.list.d/sturdy-bookworm-backports.sources
    if [ ! -e "$src" ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d; then
        log "adding $src for QEMU"
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$mirror" > "$src"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils >&2
    apt-get install -y -qq --no-install-recommends mmdebstrap >&2
}

image_key() {
    { cat "$here/packages" "$here/customize.sh" "$here/guest-run.sh"; echo "$suite $mirror"; } |
        sha256sum | cut -c1-16
}

# The uncompressed kernel inside a bzImage, for a PVH boot that skips the real-mode setup and
# the in-guest decompression (about 5 s under TCG). Empty output: boot the bzImage instead.
extract_vmlinux() {
    python3 - "$1" "$2" <<'PY'
import lzma, subprocess, sys
data = open(sys.argv[1], "rb").read()
def elf(b): return b[:4] == b"\x7fELF"
for magic, how in ((b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x1f\x8b\x08", "gzip")):
    at = data.find(magic)
    while at >= 0:
        try:
            if how == "xz":
                out = lzma.LZMADecompressor().decompress(data[at:])
            else:
                out = subprocess.run([how, "-dc"], input=data[at:], capture_output=True).stdout
            if elf(out):
                open(sys.argv[2], "wb").write(out)
                sys.exit(0)
        except Exception:
            pass
        at = data.find(magic, at + 1)
sys.exit(1)
PY
}

build_image() {
    local key dir t0 tmp
    key=$(image_key)
    dir=$cache/$key
    if [ -f "$dir/ready" ]; then echo "$dir"; return 0; fi
    mkdir -p "$cache"
    chmod 0700 "$cache"
    exec 9>"$cache/.lock"
    flock 9
    if [ -f "$dir/ready" ]; then echo "$dir"; return 0; fi
    if ! host_deps; then log "skipped: QEMU or mmdebstrap cannot be installed here"; exit 77; fi
    t0=$(now)
    log "building the $suite guest image $key (packages: scripts/vm/packages)"
    rm -rf "$dir"
    mkdir -p "$dir" "$cache/apt"
    tmp=$dir/rootfs
    # A private mount namespace: mmdebstrap mounts proc, sys and dev inside the target, and
    # none of that may show in (or leak into) the host's mount table.
    unshare --mount --propagation private -- mmdebstrap --mode=root --variant=minbase \
        --components=main --include="$(grep -v '^#' "$here/packages" | xargs | tr ' ' ,)" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"' \
        --essential-hook='printf "MODULES=list\n" > "$1/etc/initramfs-tools/conf.d/sturdy-vm"' \
        --essential-hook='printf "virtio_pci\nvirtio_blk\next4\n" > "$1/usr/share/initramfs-tools/modules.d/sturdy-vm"' \
        --setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
        --setup-hook="sync-in $cache/apt /var/cache/apt/archives" \
        --skip=download/empty \
        --customize-hook="sync-out /var/cache/apt/archives $cache/apt" \
        --customize-hook="$here/customize.sh \"\$1\"" \
        "$suite" "$tmp" "$mirror $suite $suite-updates" \
        "${mirror%/debian}/debian-security $suite-security" >&2
    log "rootfs built in $(( $(now) - t0 ))s"
    cp "$(ls "$tmp"/boot/initrd.img-* | tail -n 1)" "$dir/initrd.img"
    cp "$(ls "$tmp"/boot/vmlinuz-* | tail -n 1)" "$dir/vmlinuz"
    extract_vmlinux "$dir/vmlinuz" "$dir/vmlinux" || log "no uncompressed kernel found; booting the bzImage"
    mkfs.ext4 -q -F -L sturdy-vm -d "$tmp" "$dir/disk.raw" 8G
    rm -rf "$tmp"
    # Only the current image is kept.
    for old in "$cache"/*/; do
        [ "${old%/}" = "$dir" ] || [ "$(basename "$old")" = apt ] || rm -rf "${old:?}"
    done
    touch "$dir/ready"
    log "image $key ready in $(( $(now) - t0 ))s ($(du -sh --apparent-size "$dir/disk.raw" | cut -f1) sparse, $(du -sh "$dir/disk.raw" | cut -f1) used)"
    echo "$dir"
}

accel() {
    case "${STURDY_VM_ACCEL:-auto}" in
        tcg) echo tcg ;;
        kvm) echo kvm ;;
        *) if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then echo kvm; else echo tcg; fi ;;
    esac
}

run() {
    local timeout=1800 smp=2 memory=3072 out="" keep=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --timeout) timeout=$2; shift 2 ;;
            --smp) smp=$2; shift 2 ;;
            --memory) memory=$2; shift 2 ;;
            --out) out=$2; keep=1; shift 2 ;;
            --) shift; break ;;
            -*) usage ;;
            *) break ;;
        esac
    done
    [ $# -gt 0 ] || usage
    for p in "$checkout" "$tools" "$(pwd)"; do
        case "$p" in *[[:space:]]*) log "paths with white space cannot be shared: $p"; exit 2 ;; esac
    done
    if ! command -v qemu-system-x86_64 >/dev/null && ! host_deps; then
        log "skipped: QEMU cannot be installed here"; exit 77
    fi
    local image
    image=$(build_image)
    if [ -z "$out" ]; then out=$(mktemp -d /tmp/sturdy-vm.XXXXXX); else mkdir -p "$out"; fi
    out=$(cd "$out" && pwd)
    rm -f "$out/rc" "$out/output" "$out/guest-error"
    {
        echo "set -e"
        echo "export STURDY_VM_OUT=$(printf %q "$out") STURDY_VM=1"
        env | grep -E '^(CI|RUST_[A-Z_]*|STURDY_[A-Z0-9_]*)=' | grep -v '^STURDY_VM_OUT=' |
            while IFS='=' read -r k v; do echo "export $k=$(printf %q "$v")"; done
        echo "cd $(printf %q "$(pwd)")"
        printf 'exec'; printf ' %q' "$@"; echo
    } > "$out/cmd"

    local kernel=$image/vmlinux acc share_tools=()
    [ -f "$kernel" ] || kernel=$image/vmlinuz
    acc=$(accel)
    local cpu=(-accel tcg,thread=multi,tb-size=256 -cpu max)
    [ "$acc" = kvm ] && cpu=(-accel kvm -cpu host)
    local append="console=ttyS0 root=/dev/vda rw quiet panic=-1 systemd.unified_cgroup_hierarchy=1"
    append+=" sturdy.run=1 sturdy.out=$out sturdy.checkout=$checkout"
    if [ -d "$tools" ]; then
        share_tools=(-virtfs "local,path=$tools,mount_tag=tools,security_model=none,readonly=on")
        append+=" sturdy.tools=$tools"
    fi
    local t0 qemu
    t0=$(now)
    qemu-system-x86_64 "${cpu[@]}" -machine q35 -smp "$smp" -m "$memory" \
        -display none -serial "file:$out/console.log" -monitor none -no-reboot -nic none \
        -kernel "$kernel" -initrd "$image/initrd.img" -append "$append" \
        -drive "file=$image/disk.raw,format=raw,if=virtio,cache=unsafe,snapshot=on" \
        -virtfs "local,path=$checkout,mount_tag=checkout,security_model=none,readonly=on" \
        "${share_tools[@]}" \
        -virtfs "local,path=$out,mount_tag=out,security_model=none" \
        </dev/null >"$out/qemu.log" 2>&1 &
    qemu=$!
    # shellcheck disable=SC2064
    trap "kill -KILL $qemu 2>/dev/null || true; [ $keep = 1 ] || rm -rf '$out'" EXIT
    trap 'exit 130' INT TERM HUP
    log "guest booting ($acc, $smp vCPU, $memory MiB; output dir $out)"
    touch "$out/output"
    tail -n +1 -F --pid="$qemu" "$out/output" 2>/dev/null &
    local tailer=$! status=0 deadline=$(( $(now) + timeout ))
    while kill -0 "$qemu" 2>/dev/null; do
        if [ "$(now)" -ge "$deadline" ]; then
            log "timed out after ${timeout}s: stopping QEMU (pid $qemu)"
            kill -KILL "$qemu" 2>/dev/null || true
            status=124
            break
        fi
        sleep 1
    done
    wait "$qemu" 2>/dev/null || true
    wait "$tailer" 2>/dev/null || true
    if [ "$status" = 0 ]; then
        if [ -f "$out/rc" ]; then
            status=$(cat "$out/rc")
        else
            status=125
            log "the guest never reported CMD's status; its console and QEMU's log:"
            tail -n 40 "$out/console.log" "$out/qemu.log" >&2 || true
        fi
    fi
    [ ! -f "$out/guest-error" ] || log "guest: $(cat "$out/guest-error")"
    log "guest cycle $(( $(now) - t0 ))s (system $(cat "$out/system-state" 2>/dev/null || echo ?)," \
        "CMD started at guest uptime $(cat "$out/uptime-at-run" 2>/dev/null || echo ?)s), CMD exit $status"
    return "$status"
}

[ "$(id -u)" -eq 0 ] || { log "needs root"; exit 2; }
case "${1:-}" in
    image) shift; t0=$(now); build_image >/dev/null; log "image step: $(( $(now) - t0 ))s" ;;
    run) shift; run "$@" ;;
    *) usage ;;
esac
