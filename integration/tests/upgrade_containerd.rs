//! containerd upgraded in place under live pods, 1.6 → 1.7 → 2.1, then downgraded 2.1 → 1.7:
//! the old daemon is stopped and the new one started on the same root and state with a
//! config in its own schema (`Containerd::restart_as`). Pods run through sturdy and, for
//! comparison, through the Go shim; each generation brings its own Go shim binary.
//!
//! After every step every pod keeps its sandbox id, IP, pause and container processes
//! and its shim; exec and logs work, containers and pods created by an older containerd
//! are stopped and removed by the newer one, and new containers (in old and new pods) and
//! new pods start. Nothing is rebuilt, and nothing is left once the pods are removed. The
//! exception is the downgrade: Go-shim work started by 2.1 is lost there, and so are the
//! Go shims it orphans (pinned by `lost_on_downgrade` and the end of the test). sturdy
//! loses nothing.

mod upgrade_support;

use std::collections::BTreeSet;
use std::time::Instant;

use sturdy_integration::k8s_cri::v1::{ContainerState, PodSandboxState};
use sturdy_integration::{cleanup, Containerd, Generation, Handler};
use upgrade_support::{distinct_ips, start_pods, upgrade, Pod};

/// Skips (visibly) when a generation the chain needs is not on this host.
fn generations_available() -> bool {
    for g in [Generation::V1_7, Generation::V2_1] {
        if !g.available() {
            test_skip::skip(format!(
                "the upgrade chain needs containerd {g}: {} has no {}.tar.xz",
                sturdy_integration::tools::tools_dir().display(),
                g.archive().unwrap_or_default()
            ));
            return false;
        }
    }
    true
}

/// A Go-shim pod started by containerd 2.1, after the downgrade to 1.7: its shim (2.1's
/// Go shim, Task API v3 in `bootstrap.json`, no `address` file) is one 1.7 cannot talk to,
/// so 1.7 declares it dead and runs its own Go shim's `delete`, which kills the pod's
/// processes, while the 2.1 shim process itself keeps running, orphaned. The pod is
/// NOTREADY (kubelet would rebuild it with a new IP); CRI can still stop and remove it.
async fn lost_on_downgrade(fx: &Containerd, cri: &mut sturdy_integration::Cri, pod: Pod) -> i32 {
    let p = format!("{} (Go shim, started by 2.1) after the downgrade", pod.name);
    let bootstrap = fx
        .state_dir()
        .join("io.containerd.runtime.v2.task")
        .join(sturdy_integration::CRI_NAMESPACE)
        .join(&pod.id);
    let status = cri.pod_status(&pod.id).await.expect("PodSandboxStatus");
    assert_eq!(
        status.state,
        PodSandboxState::SandboxNotready as i32,
        "{p}: expected containerd 1.7 to lose it"
    );
    assert!(!pod.pause.alive(), "{p}: pause survived");
    for c in &pod.containers {
        assert!(!c.init.alive(), "{p}: {} survived", c.name);
    }
    let orphan = pod.shim.alive();
    cri.stop_pod(&pod.id)
        .await
        .expect("StopPodSandbox of the lost pod");
    cri.remove_pod(&pod.id)
        .await
        .expect("RemovePodSandbox of the lost pod");
    eprintln!(
        "downgrade to 1.7: {p}: NOTREADY, pause and containers killed; its 2.1 Go shim {} \
         {} after the pod was removed; bundle {} {}",
        pod.shim.pid,
        if pod.shim.alive() {
            "still runs (orphaned)"
        } else {
            "is gone"
        },
        bootstrap.display(),
        if bootstrap.exists() {
            "left"
        } else {
            "removed"
        },
    );
    assert!(orphan, "{p}: its shim was expected to outlive the cleanup");
    pod.shim.pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_upgrade_and_downgrade_keep_pods() {
    if !generations_available() {
        return;
    }
    let t0 = Instant::now();
    let mut fx = Containerd::builder()
        .generation(Generation::V1_6)
        .start()
        .await
        .expect("start containerd 1.6");
    let mut cri = fx.cri().await.expect("cri client");

    // On 1.6: `a` lives through the whole chain, `b` is removed by 1.7.
    let mut a = start_pods(&fx, &mut cri, "a").await;
    let b = start_pods(&fx, &mut cri, "b").await;
    for pod in a.iter().chain(&b) {
        pod.check(&fx, &mut cri, "start on 1.6").await;
    }

    // 1.6 → 1.7.
    let live: Vec<Pod> = a.iter().chain(&b).cloned().collect();
    upgrade(&mut fx, Generation::V1_7, &live, "upgrade to 1.7").await;
    let mut cri = fx.cri().await.expect("cri client");
    for pod in b {
        let mut pod = pod;
        pod.remove_container(&fx, &mut cri, "app").await;
        pod.remove(&fx, &mut cri).await;
    }
    for pod in &mut a {
        pod.add_container(&fx, &mut cri, "on-1-7").await;
    }
    let c = start_pods(&fx, &mut cri, "c").await;
    distinct_ips(a.iter().chain(&c));

    // 1.7 → 2.1.
    let live: Vec<Pod> = a.iter().chain(&c).cloned().collect();
    upgrade(&mut fx, Generation::V2_1, &live, "upgrade to 2.1").await;
    let mut cri = fx.cri().await.expect("cri client");
    for pod in c {
        pod.remove(&fx, &mut cri).await;
    }
    for pod in &mut a {
        pod.remove_container(&fx, &mut cri, "on-1-7").await;
        pod.add_container(&fx, &mut cri, "on-2-1").await;
    }
    let d = start_pods(&fx, &mut cri, "d").await;
    distinct_ips(a.iter().chain(&d));

    // 2.1 → 1.7. containerd promises no downgrade (RELEASES.md covers upgrades only); what
    // happens is pinned here. containerd 2.1 records in `bootstrap.json` the Task API
    // version the shim binary's `start` announced: 2 for sturdy (a bare address), 3 for
    // 2.1's Go shim, also for a container that joined an older Go shim of its pod. 1.7
    // cannot use a version-3 record: it treats the shim as dead and kills those containers.
    // So every sturdy pod and container survives; of the Go shim's, only what 1.x started.
    let (lost, d): (Vec<Pod>, Vec<Pod>) = d.into_iter().partition(|p| p.handler == Handler::Runc);
    let mut lost_containers = Vec::new();
    for pod in a.iter_mut().filter(|p| p.handler == Handler::Runc) {
        lost_containers.push((pod.name.clone(), pod.take_container("on-2-1")));
        pod.shim_may_linger = true;
    }
    let live: Vec<Pod> = a.iter().chain(&d).cloned().collect();
    upgrade(&mut fx, Generation::V1_7, &live, "downgrade to 1.7").await;
    let mut cri = fx.cri().await.expect("cri client");
    for (pod, c) in lost_containers {
        let p = format!(
            "{pod}: container {} (Go shim, created by 2.1) after the downgrade",
            c.name
        );
        let s = cri.container_status(&c.id).await.expect("ContainerStatus");
        assert_eq!(
            s.state,
            ContainerState::ContainerExited as i32,
            "{p}: expected 1.7 to lose it"
        );
        assert!(!c.init.alive(), "{p}: its process survived");
        cri.remove_container(&c.id)
            .await
            .expect("RemoveContainer of the lost container");
        eprintln!("downgrade to 1.7: {p}: EXITED (code {}), process killed; the pod's other containers run on", s.exit_code);
    }
    let mut orphans = BTreeSet::new();
    for pod in lost {
        orphans.insert(lost_on_downgrade(&fx, &mut cri, pod).await);
    }
    orphans.extend(a.iter().filter(|p| p.shim_may_linger).map(|p| p.shim.pid));
    for pod in d {
        pod.remove(&fx, &mut cri).await;
    }
    for pod in &mut a {
        if pod.handler == Handler::Sturdy {
            pod.remove_container(&fx, &mut cri, "on-2-1").await;
        }
        pod.add_container(&fx, &mut cri, "on-1-7-again").await;
    }
    let e = start_pods(&fx, &mut cri, "e").await;
    distinct_ips(a.iter().chain(&e));
    for pod in a.iter().chain(&e) {
        pod.check(&fx, &mut cri, "after the downgrade").await;
    }
    for pod in a.into_iter().chain(e) {
        pod.remove(&fx, &mut cri).await;
    }
    // Every pod is gone through CRI. What still runs are the Go shims the downgrade
    // orphaned (the one whose container 1.7 deleted behind its back, and the 2.1 one 1.7
    // never talked to); sturdy leaves nothing. The teardown kills the orphans by pid.
    let running: BTreeSet<i32> = cleanup::pids_referencing(fx.socket())
        .into_iter()
        .filter(|p| *p != fx.pid())
        .collect();
    assert_eq!(
        running, orphans,
        "shims left running after every pod was removed"
    );
    eprintln!("after removing every pod: orphaned Go shims {orphans:?}, no sturdy shim");
    let left = fx.stop();
    assert!(left.is_empty(), "leaked: {left:?}");
    eprintln!(
        "containerd_upgrade_and_downgrade_keep_pods: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
