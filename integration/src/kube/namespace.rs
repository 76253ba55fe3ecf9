//! The node's private mount and network namespaces, held open by one idle process.
//!
//! Everything of the node (etcd, the control plane, containerd and its shims, the kubelet)
//! is started into these namespaces with `nsenter`, so that their listeners, the kubelet's
//! volume mounts, CRI's network namespaces, `/run`, `/var/log`, `/var/lib/cni`,
//! `/var/lib/sturdy` and the kernel tunables the kubelet checks are the node's own and
//! vanish with it. The PID
//! namespace stays the host's: tests find and kill shims and containers by host PID, as
//! the containerd fixture does.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, IoContext, Result};

/// The node's address: non-loopback (the kubelet refuses loopback) and on `lo` inside the
/// namespace (this kernel has no `dummy` links); the API server dials it for exec and logs.
pub const NODE_IP: &str = "198.18.255.1";

/// What the kubelet's `protectKernelDefaults` demands of these sysctls. It only reads them
/// then, but the host's values differ, so the node sees read-only stand-in files instead
/// of ever being tempted to change the host's.
pub const KERNEL_TUNABLES: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// The process holding the namespaces; killing it (after everything else in them) frees
/// every mount made inside.
#[derive(Debug)]
pub struct NodeNamespace {
    child: Option<Child>,
    pid: i32,
}

/// Shell run as the holder, in the new namespaces: `$1` is the node dir.
const INIT: &str = r#"set -eu
d=$1
mount -t tmpfs -o mode=0755 sturdy-node-run /run
mkdir -p /run/netns
mount -t tmpfs -o mode=0755 sturdy-node-cni /var/lib/cni
mount -t tmpfs -o mode=0755 sturdy-node-state /var/lib/sturdy
mount --bind "$d/varlog" /var/log
for f in "$d"/sysctl/*; do
    t=/proc/sys/$(basename "$f" | tr . /)
    mount --bind "$f" "$t"
    mount -o remount,bind,ro "$t"
done
ip link set lo up
ip addr add "$2/32" dev lo
: > "$d/namespace.ready"
exec sleep infinity
"#;

impl NodeNamespace {
    /// Creates the namespaces with `dir`'s `varlog/` and `sysctl/` stand-ins and waits
    /// until they are set up.
    pub fn create(dir: &Path) -> Result<NodeNamespace> {
        let sysctl = dir.join("sysctl");
        for sub in [sysctl.clone(), dir.join("varlog")] {
            std::fs::create_dir_all(&sub).ctx(|| format!("creating {}", sub.display()))?;
        }
        for (name, value) in KERNEL_TUNABLES {
            let f = sysctl.join(name.replace('/', "."));
            std::fs::write(&f, format!("{value}\n")).ctx(|| format!("writing {}", f.display()))?;
        }
        // CNI's result cache, and sturdy's default state (a handler `sturdyctl install`
        // registers has no options: its shims keep records in /var/lib/sturdy, as the
        // DaemonSet's watchdog its journal): the node's own tmpfs over each. The mount points
        // are all the host gets; nothing is ever written into them.
        for dir in ["/var/lib/cni", "/var/lib/sturdy"] {
            if !Path::new(dir).is_dir() {
                std::fs::create_dir_all(dir).ctx(|| format!("creating {dir}"))?;
            }
        }
        let log = std::fs::File::create(dir.join("logs/namespace.log"))
            .ctx(|| "creating namespace log".into())?;
        let log2 = log.try_clone().ctx(|| "cloning log fd".into())?;
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--net", "--propagation", "private", "--"])
            .args(["/bin/sh", "-c", INIT, "sturdy-node-init"])
            .arg(dir)
            .arg(NODE_IP)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        super::daemon::die_with_parent(&mut cmd);
        let child = cmd.spawn().ctx(|| "spawning unshare".into())?;
        let mut ns = NodeNamespace {
            pid: child.id() as i32,
            child: Some(child),
        };
        let ready = dir.join("namespace.ready");
        let deadline = Instant::now() + Duration::from_secs(20);
        // A blocking wait for the shell (milliseconds), before any async runtime is involved.
        while !ready.exists() {
            let exited = ns.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(dir.join("logs/namespace.log")).unwrap_or_default();
                ns.stop();
                return Err(Error::Kube(format!(
                    "setting up the node namespaces failed ({exited:?}): {log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(ns)
    }

    /// PID of the holder.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// `nsenter` arguments that run a program in the node's mount and network namespaces;
    /// `nsenter` execs it in place, so the PID is the program's.
    pub fn enter(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--target={}", self.pid),
            "--mount".into(),
            "--net".into(),
            "--".into(),
        ]
    }

    /// The node's network namespace file, for a wrapper that only needs its listeners.
    pub fn net_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// Kills the holder (by PID, our own child) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for NodeNamespace {
    fn drop(&mut self) {
        self.stop();
    }
}
