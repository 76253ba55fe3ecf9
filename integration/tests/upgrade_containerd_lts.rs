//! containerd upgraded in place along the path containerd supports, LTS to LTS (1.7 → 2.3),
//! then 2.3 → 2.4, under live pods (as upgrade_containerd.rs does for 1.6 → 1.7 → 2.1).
//! sturdy pods started by 1.7 answered a bare address and have only an `address` file;
//! 2.3 migrates them to `bootstrap.json` version 2 and starts new containers in them with
//! `BootstrapParams`; pods started by 2.3 carry what sturdy announced (Task API 2) into 2.4
//! (docs/bootstrap.md).
//! Every pod keeps its sandbox, IP, processes and shim; exec and logs work; old pods take
//! new containers; nothing is left once the pods are removed. Go-shim pods run alongside,
//! for comparison.

mod upgrade_support;

use std::time::Instant;

use sturdy_integration::{Containerd, Generation, Handler, CRI_NAMESPACE};
use upgrade_support::{distinct_ips, start_pods, upgrade, Pod};

/// Skips (visibly) when a generation the chain needs is not on this host.
fn available(chain: &[Generation]) -> bool {
    for g in chain {
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

/// The Task API version sturdy announces in its `BootstrapResult`: 2, so that containerd
/// keeps running `start` and `delete` for each container (docs/bootstrap.md, "Why Task API
/// 2").
const TASK_API: u64 = 2;

/// The Task API version containerd recorded for a sturdy pod's shim.
fn recorded_version(fx: &Containerd, pod: &Pod) -> Option<u64> {
    let bundle = fx.bundle(CRI_NAMESPACE, &pod.id)?.dir;
    let raw = std::fs::read(bundle.join("bootstrap.json")).ok()?;
    serde_json::from_slice::<serde_json::Value>(&raw).ok()?["version"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_lts_upgrades_keep_pods() {
    let (v2_3, v2_4) = (Generation::V2_3, Generation::V2_4);
    if !available(&[Generation::V1_7, v2_3, v2_4]) {
        return;
    }
    let t0 = Instant::now();
    let mut fx = Containerd::builder()
        .generation(Generation::V1_7)
        .start()
        .await
        .expect("start containerd 1.7");
    let mut cri = fx.cri().await.expect("cri client");

    // On 1.7: `a` lives through the whole chain, `b` is removed by 2.3.
    let mut a = start_pods(&fx, &mut cri, "a").await;
    let b = start_pods(&fx, &mut cri, "b").await;
    for pod in a.iter().chain(&b) {
        pod.check(&fx, &mut cri, "start on 1.7").await;
    }

    // 1.7 → 2.3 (LTS to LTS).
    let live: Vec<Pod> = a.iter().chain(&b).cloned().collect();
    upgrade(&mut fx, v2_3, &live, "upgrade to 2.3").await;
    let mut cri = fx.cri().await.expect("cri client");
    for pod in a.iter().filter(|p| p.handler == Handler::Sturdy) {
        // Migrated from the `address` file that 1.7's sturdy pod has.
        assert_eq!(
            recorded_version(&fx, pod),
            Some(2),
            "{}: 1.7 pod after 2.3's restore",
            pod.name
        );
    }
    for pod in b {
        let mut pod = pod;
        pod.remove_container(&fx, &mut cri, "app").await;
        pod.remove(&fx, &mut cri).await;
    }
    for pod in &mut a {
        pod.add_container(&fx, &mut cri, "on-2-3").await;
    }
    let c = start_pods(&fx, &mut cri, "c").await;
    for pod in c.iter().filter(|p| p.handler == Handler::Sturdy) {
        assert_eq!(
            recorded_version(&fx, pod),
            Some(TASK_API),
            "{}: a pod 2.3 started",
            pod.name
        );
    }
    distinct_ips(a.iter().chain(&c));
    for pod in a.iter().chain(&c) {
        pod.check(&fx, &mut cri, "on 2.3").await;
    }

    // 2.3 → 2.4.
    let live: Vec<Pod> = a.iter().chain(&c).cloned().collect();
    upgrade(&mut fx, v2_4, &live, "upgrade to 2.4").await;
    let mut cri = fx.cri().await.expect("cri client");
    for pod in c.iter().filter(|p| p.handler == Handler::Sturdy) {
        assert_eq!(
            recorded_version(&fx, pod),
            Some(TASK_API),
            "{}: 2.3's record after 2.4's restore",
            pod.name
        );
    }
    let mut c = c;
    for pod in &mut a {
        pod.remove_container(&fx, &mut cri, "on-2-3").await;
    }
    for pod in a.iter_mut().chain(c.iter_mut()) {
        pod.add_container(&fx, &mut cri, "on-2-4").await;
    }
    let d = start_pods(&fx, &mut cri, "d").await;
    distinct_ips(a.iter().chain(&c).chain(&d));
    for pod in a.iter().chain(&c).chain(&d) {
        pod.check(&fx, &mut cri, "on 2.4").await;
    }

    // Each removal waits for the pod's processes and its shim to be gone.
    for pod in a.into_iter().chain(c).chain(d) {
        pod.remove(&fx, &mut cri).await;
    }
    let left = fx.stop();
    assert!(left.is_empty(), "leaked: {left:?}");
    eprintln!(
        "containerd_lts_upgrades_keep_pods: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
