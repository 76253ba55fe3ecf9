#!/bin/sh
# mmdebstrap customize hook of scripts/vm.sh: turns the guest root file system $1 into a
# machine that boots to one command. Runs on the host against $1 only: every path below
# is under "$root", never the host's /etc.
set -eu
root=$1
here=$(dirname "$0")
case "$root" in /|'') echo "customize.sh: refusing root '$root'" >&2; exit 1 ;; esac
[ -d "$root/etc/systemd" ] || { echo "customize.sh: $root is no guest root" >&2; exit 1; }

echo sturdy-vm > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 sturdy-vm\n::1 localhost\n' > "$root/etc/hosts"
printf '/dev/vda / ext4 rw,noatime 0 1\n' > "$root/etc/fstab"
# A fixed machine id: the disk is a snapshot, every boot is the first and the same.
echo 5e7a7d1e5e7a7d1e5e7a7d1e5e7a7d1e > "$root/etc/machine-id"

install -m 0755 "$here/guest-run.sh" "$root/usr/local/sbin/sturdy-vm-run"
cat > "$root/etc/systemd/system/sturdy-vm-run.service" <<'UNIT'
[Unit]
Description=Run the command scripts/vm.sh passed in, then power off
ConditionKernelCommandLine=sturdy.run=1
After=multi-user.target
[Service]
# exec, not oneshot: a oneshot's start job would keep is-system-running at "starting".
Type=exec
ExecStart=/usr/local/sbin/sturdy-vm-run
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/sturdy-vm-run.service \
    "$root/etc/systemd/system/multi-user.target.wants/sturdy-vm-run.service"

# The suite starts its own private containerds: the packaged daemon must not run. /tmp
# stays on the disk (the guest's RAM is small), and nothing waits for a network or a clock.
for unit in containerd.service docker-registry.service tmp.mount systemd-firstboot.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer dpkg-db-backup.timer \
    systemd-timesyncd.service getty@tty1.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

# A VM without sound, graphics, wifi or USB: those modules only cost disk and boot time.
for d in "$root"/usr/lib/modules/*/kernel; do
    for sub in sound drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet \
        drivers/infiniband drivers/usb drivers/bluetooth drivers/staging drivers/iio \
        drivers/input/touchscreen net/wireless net/bluetooth net/mac80211; do
        rm -rf "${d:?}/$sub"
    done
    chroot "$root" depmod "$(basename "$(dirname "$d")")"
done
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
    "$root"/usr/share/info/* "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
