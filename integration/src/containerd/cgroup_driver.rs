//! The cgroup driver both handlers use: runc's own cgroupfs manager, or systemd's
//! (`SystemdCgroup = true`, kubeadm's default), where every container is a transient
//! `.scope` unit and pods live in nested `.slice` units the way kubelet creates them
//! (`kubepods.slice/kubepods-<class>.slice/…`). This host kind has no systemd, so the
//! systemd driver runs only in the VM tier (scripts/vm.sh, docs/testing.md "VM tier").

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Environment variable choosing the driver (`cgroupfs`, the default, or `systemd`).
pub const CGROUP_DRIVER_ENV: &str = "STURDY_CGROUP_DRIVER";

/// A cgroup driver of runc (and so of both shims' `SystemdCgroup` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CgroupDriver {
    /// runc writes the cgroup file system itself (containerd's default).
    Cgroupfs,
    /// runc asks systemd over D-Bus for a transient scope per container.
    Systemd,
}

impl CgroupDriver {
    /// Short name as [`CGROUP_DRIVER_ENV`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        }
    }

    /// The driver [`CGROUP_DRIVER_ENV`] asks for (cgroupfs when unset).
    pub fn from_env() -> Result<CgroupDriver> {
        match std::env::var(CGROUP_DRIVER_ENV).as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("cgroupfs") => Ok(CgroupDriver::Cgroupfs),
            Ok("systemd") => Ok(CgroupDriver::Systemd),
            Ok(other) => Err(Error::Unexpected(format!(
                "{CGROUP_DRIVER_ENV}={other:?} names no cgroup driver (use cgroupfs or systemd)"
            ))),
        }
    }

    /// Why this host cannot use it (`None`: it can). systemd's driver needs systemd as
    /// PID 1 and its system bus, which runc talks to.
    pub fn unavailable(self) -> Option<String> {
        match self {
            CgroupDriver::Cgroupfs => None,
            CgroupDriver::Systemd if !Path::new("/run/systemd/system").is_dir() => {
                Some("the systemd cgroup driver needs systemd as init (scripts/vm.sh runs a guest that has it)".into())
            }
            CgroupDriver::Systemd if !Path::new("/run/dbus/system_bus_socket").exists() => {
                Some("the systemd cgroup driver needs the D-Bus system bus".into())
            }
            CgroupDriver::Systemd => None,
        }
    }

    /// The `SystemdCgroup` runtime option for it.
    pub fn systemd_cgroup(self) -> bool {
        self == CgroupDriver::Systemd
    }
}

impl fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The slice unit kubelet would make a pod's parent, one per fixture: `kubepods-<name>.slice`,
/// which systemd nests as `kubepods.slice/kubepods-<name>.slice`. `name` must not contain
/// `-` (a level separator in slice names).
pub fn pod_slice(name: &str) -> String {
    format!("kubepods-{name}.slice")
}

/// The cgroup directory (relative to the cgroup2 mount) of [`pod_slice`]`(name)`.
pub fn pod_slice_dir(name: &str) -> String {
    format!("kubepods.slice/{}", pod_slice(name))
}

/// Stops a slice unit and with it every scope (container) below it, the way kubelet removes
/// a pod's cgroup under the systemd driver. Errors are reported, not fatal: teardown goes on.
pub fn stop_slice(slice: &str) {
    let out = Command::new("systemctl")
        .args(["stop", slice])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "sturdy-integration: systemctl stop {slice}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("sturdy-integration: running systemctl stop {slice}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_slices_nest_under_kubepods() {
        assert_eq!(pod_slice("sturdy1a2b"), "kubepods-sturdy1a2b.slice");
        assert_eq!(
            pod_slice_dir("sturdy1a2b"),
            "kubepods.slice/kubepods-sturdy1a2b.slice"
        );
    }
}
