//! Pods to break: run through CRI, with what is needed to tell later that nothing of them
//! is left (their processes, cgroups, runc state, bundles, socket and network namespace).

use std::path::{Path, PathBuf};

use sturdy_integration::{cleanup, container_config, Containerd, Cri, Handler, CRI_NAMESPACE};

/// A running pod through `handler`: its sandbox and `n` containers running sleep.
pub struct Pod {
    pub id: String,
    pub containers: Vec<String>,
    /// Sandbox first.
    pub all: Vec<String>,
    pub shim: i32,
    pub address: String,
    pub pids: Vec<i32>,
    /// The containers' cgroup directories (every hierarchy), as they existed at start.
    pub cgroups: Vec<PathBuf>,
    /// The pod's network namespace (CRI's), if it has its own.
    pub netns: Option<PathBuf>,
}

pub async fn run_pod(
    fx: &Containerd,
    cri: &mut Cri,
    handler: Handler,
    name: &str,
    n: usize,
) -> Pod {
    let cfg = fx.pod_config(name);
    let id = cri.run_pod(handler, &cfg).await.expect("RunPodSandbox");
    let mut containers = Vec::new();
    for i in 0..n {
        let c = cri
            .create_container(
                &id,
                container_config(&format!("main{i}"), &["/bin/sleep", "3600"]),
                &cfg,
            )
            .await
            .expect("CreateContainer");
        cri.start_container(&c).await.expect("StartContainer");
        containers.push(c);
    }
    let mut all = vec![id.clone()];
    all.extend(containers.iter().cloned());
    let mut pod = describe_pod(fx, cri, &id, &all).await;
    pod.containers = containers;
    // sandbox: sh + sleep; each container: sleep.
    assert!(
        pod.pids.len() > n,
        "too few processes in the pod's cgroups: {:?}",
        pod.pids
    );
    assert!(pod.pids.iter().all(|p| super::running(*p)));
    pod
}

/// What a pod (sandbox `id`, tasks `all`) consists of right now.
pub async fn describe_pod(fx: &Containerd, cri: &mut Cri, id: &str, all: &[String]) -> Pod {
    let shim = fx.shim_pid(CRI_NAMESPACE, id).expect("the pod's shim pid");
    let address = fx
        .bundle(CRI_NAMESPACE, id)
        .and_then(|b| b.address)
        .expect("the pod's shim address");
    let cgroups = all
        .iter()
        .filter_map(|c| fx.bundle(CRI_NAMESPACE, c).and_then(|b| b.cgroups_path))
        .flat_map(|p| cleanup::cgroup_dirs(&p))
        .collect();
    Pod {
        id: id.to_string(),
        containers: all.iter().skip(1).cloned().collect(),
        all: all.to_vec(),
        shim,
        address,
        pids: cgroup_pids(fx, all),
        cgroups,
        netns: cri.pod_netns(id).await.ok().flatten(),
    }
}

/// Every pid in the cgroups of the given containers (their cgroupsPath in every hierarchy).
pub fn cgroup_pids(fx: &Containerd, ids: &[String]) -> Vec<i32> {
    let mut dirs = Vec::new();
    for id in ids {
        let Some(path) = fx
            .bundle(CRI_NAMESPACE, id)
            .and_then(|b| b.cgroups_path.clone())
        else {
            continue;
        };
        dirs.extend(cleanup::cgroup_dirs(&path));
    }
    pids_in_cgroups(&dirs)
}

/// Every pid in the given cgroup directories and their descendants.
pub fn pids_in_cgroups(dirs: &[PathBuf]) -> Vec<i32> {
    fn collect(dir: &Path, out: &mut Vec<i32>) {
        if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(t.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect(&e.path(), out);
            }
        }
    }
    let mut pids = Vec::new();
    for dir in dirs {
        collect(dir, &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// containerd's bundle directory of task `id` in CRI's namespace.
pub fn bundle_dir(fx: &Containerd, id: &str) -> PathBuf {
    fx.state_dir()
        .join("io.containerd.runtime.v2.task")
        .join(CRI_NAMESPACE)
        .join(id)
}

/// runc's state directory of container `id` in CRI's namespace (both handlers use the
/// fixture's runc root).
pub fn runc_state_dir(fx: &Containerd, id: &str) -> PathBuf {
    fx.runc_root().join(CRI_NAMESPACE).join(id)
}
