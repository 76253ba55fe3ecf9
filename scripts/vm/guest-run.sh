#!/bin/sh
# Inside the VM (scripts/vm.sh): mount the shares the kernel command line names, run the
# command scripts/vm.sh wrote, leave its output and exit status in the output share, power off.
param() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -n 1; }
out=$(param sturdy.out)
mkdir -p "$out"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out "$out" || {
    echo "sturdy-vm-run: cannot mount the output share" >&2; systemctl poweroff -f; }
for tag in checkout tools; do
    dir=$(param "sturdy.$tag")
    [ -n "$dir" ] || continue
    mkdir -p "$dir"
    if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro "$tag" "$dir"; then
        echo "cannot mount the $tag share at $dir" > "$out/guest-error"
    fi
done
# Only a booted system is the one the tests are about: systemd running, dbus up.
state=$(systemctl is-system-running --wait 2>&1)
echo "$state" > "$out/system-state"
cut -d' ' -f1 /proc/uptime > "$out/uptime-at-run"
rc=0
if [ -e "$out/guest-error" ]; then rc=125; else
    bash "$out/cmd" > "$out/output" 2>&1 < /dev/null || rc=$?
fi
echo "$rc" > "$out/rc.tmp" && mv "$out/rc.tmp" "$out/rc"
sync
systemctl poweroff -f
