//! What of a pod, or of all of a fixture's pods, is still there: processes, cgroups, runc
//! state, bundles, mounts, shim sockets, network namespaces and pod IPs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sturdy_integration::{cleanup, until, Containerd, Cri, CRI_NAMESPACE};

use super::{
    bundle_dir, pids_in_cgroups, runc_state_dir, socket_file, wait_cri_containers_exited, Pod,
};

/// What the shim's delete, runc and the watchdog must remove of `pod` (containerd and CRI
/// play no part in it): its processes and its shim, its cgroups, runc's state, the rootfs
/// mounts and the shim's socket.
pub fn runtime_leftovers(fx: &Containerd, pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    let alive: Vec<i32> = pod
        .pids
        .iter()
        .chain(std::iter::once(&pod.shim))
        .copied()
        .filter(|p| cleanup::pid_alive(*p))
        .collect();
    if !alive.is_empty() {
        out.push(format!("processes {alive:?} alive"));
    }
    let in_cgroups = pids_in_cgroups(&pod.cgroups);
    if !in_cgroups.is_empty() {
        out.push(format!("processes {in_cgroups:?} in the pod's cgroups"));
    }
    for dir in &pod.cgroups {
        if dir.exists() {
            out.push(format!("cgroup {} exists", dir.display()));
        }
    }
    for id in &pod.all {
        let state = runc_state_dir(fx, id);
        if state.exists() {
            out.push(format!("runc state {} exists", state.display()));
        }
        let rootfs = bundle_dir(fx, id).join("rootfs");
        for m in cleanup::mounts_under(&rootfs) {
            out.push(format!("mount {} present", m.display()));
        }
    }
    let socket = socket_file(&pod.address);
    if socket.exists() {
        out.push(format!("shim socket {} exists", socket.display()));
    }
    out
}

/// Everything of `pod`: [`runtime_leftovers`], its bundles (containerd's), any mount naming
/// one of its ids (CRI's sandbox shm) and its network namespace (CRI's).
pub fn pod_leftovers(fx: &Containerd, pod: &Pod) -> Vec<String> {
    let mut out = runtime_leftovers(fx, pod);
    for id in &pod.all {
        let bundle = bundle_dir(fx, id);
        if bundle.exists() {
            out.push(format!("bundle {} exists", bundle.display()));
        }
    }
    for (m, _) in cleanup::mounts() {
        let s = m.to_string_lossy();
        if pod.all.iter().any(|id| s.contains(id.as_str())) || Some(&m) == pod.netns.as_ref() {
            out.push(format!("mount {} present", m.display()));
        }
    }
    if let Some(ns) = &pod.netns {
        if ns.exists() {
            out.push(format!("network namespace {} exists", ns.display()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Waits until `check` finds nothing, polling; panics with what is left at `limit`.
pub async fn wait_nothing_left(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Vec<String>,
) {
    if !until(limit, || check().is_empty()).await {
        panic!("{what}: still there after {limit:?}: {:#?}", check());
    }
}

/// Waits up to `limit` until [`runtime_leftovers`] of `pod` finds nothing.
pub async fn wait_runtime_cleaned(fx: &Containerd, pod: &Pod, limit: Duration) {
    wait_nothing_left(
        "the pod's processes, cgroups, runc state, rootfs mounts and socket",
        limit,
        || runtime_leftovers(fx, pod),
    )
    .await;
}

/// The kubelet's part after a recovery: once CRI saw the containers exit, StopPodSandbox
/// and RemovePodSandbox; then nothing of the pod may be left.
pub async fn remove_recovered_pod(fx: &Containerd, cri: &mut Cri, pod: &Pod) {
    wait_cri_containers_exited(cri, pod, Duration::from_secs(30)).await;
    cri.stop_pod(&pod.id).await.expect("StopPodSandbox");
    cri.remove_pod(&pod.id).await.expect("RemovePodSandbox");
    wait_nothing_left("the pod", Duration::from_secs(10), || {
        pod_leftovers(fx, pod)
    })
    .await;
}

/// What a fixture's pods left, fixture-wide. `known` are processes of the fixture's that
/// are no pod's (containerd, the watchdog), `baseline_mounts` the mounts under its dir
/// before any pod ran; `sockets` and `netns` are the pods' as recorded while they ran.
pub struct FixtureCheck<'a> {
    pub known: &'a [i32],
    pub baseline_mounts: &'a [PathBuf],
    pub sockets: &'a [PathBuf],
    pub netns: &'a [PathBuf],
}

impl FixtureCheck<'_> {
    pub fn leftovers(&self, fx: &Containerd) -> Vec<String> {
        let mut out = Vec::new();
        let tasks = fx
            .state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(CRI_NAMESPACE);
        for id in cleanup::read_dir_names(&tasks) {
            let mut files = cleanup::read_dir_names(&tasks.join(&id));
            files.sort();
            out.push(format!("bundle {id} holding {files:?}"));
        }
        for id in cleanup::read_dir_names(&fx.runc_root().join(CRI_NAMESPACE)) {
            out.push(format!("runc state {id}"));
        }
        for parent in cleanup::cgroup_dirs(&fx.cgroup_parent()) {
            for sub in cleanup::read_dir_names(&parent) {
                let dir = parent.join(&sub);
                if dir.is_dir() {
                    out.push(format!("cgroup {}", dir.display()));
                }
            }
            let pids = pids_in_cgroups(std::slice::from_ref(&parent));
            if !pids.is_empty() {
                out.push(format!("processes {pids:?} in {}", parent.display()));
            }
        }
        let strays: Vec<String> = cleanup::pids_referencing(fx.dir())
            .into_iter()
            .filter(|p| *p != fx.pid() && !self.known.contains(p))
            .map(|p| format!("{p} ({})", super::procfs_cmdline(p).join(" ")))
            .collect();
        if !strays.is_empty() {
            out.push(format!("processes {strays:?}"));
        }
        for m in cleanup::mounts_under(fx.dir()) {
            if !self.baseline_mounts.contains(&m) {
                out.push(format!("mount {}", m.display()));
            }
        }
        let mounts = cleanup::mounts();
        for ns in self.netns {
            if ns.exists() {
                out.push(format!("network namespace {}", ns.display()));
            }
            if mounts.iter().any(|(m, _)| m == ns) {
                out.push(format!("network namespace mount {}", ns.display()));
            }
        }
        for s in self.sockets {
            if s.exists() {
                out.push(format!("shim socket {}", s.display()));
            }
        }
        for ip in allocated_ips(&fx.dir().join("cni/ipam")) {
            out.push(format!("pod IP {ip} still allocated"));
        }
        out
    }
}

/// Addresses host-local IPAM holds under `dir` (one file per allocated address).
fn allocated_ips(dir: &Path) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for network in cleanup::read_dir_names(dir) {
        for name in cleanup::read_dir_names(&dir.join(&network)) {
            if let Ok(ip) = name.parse::<Ipv4Addr>() {
                out.push(ip);
            }
        }
    }
    out
}
