//! Issue 11, test 1: ten sturdy pods while containerd restarts again and again: every pod
//! keeps its sandbox id and IP in PodSandboxStatus, no pod or container is recreated, and
//! the shims' records stay byte for byte what they were.
//!
//! `STURDY_NETMETA_RESTARTS` sets the number of restarts (default 20; docs/netmeta.md has
//! what a run costs on this machine).

mod netmeta_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use netmeta_support::*;
use sturdy_integration::k8s_cri::v1::{ContainerState, PodSandboxState};
use sturdy_integration::{container_config, Containerd, Handler};

const PODS: usize = 10;

fn restarts() -> usize {
    std::env::var("STURDY_NETMETA_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_keep_their_ids_ips_and_records_across_containerd_restarts() {
    let mut fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    // sandbox id → (pod IP, container id, container started_at, record bytes)
    let mut pods = BTreeMap::new();
    for i in 0..PODS {
        let cfg = fx.pod_config(&format!("keep{i}"));
        let id = cri
            .run_pod(Handler::Sturdy, &cfg)
            .await
            .expect("RunPodSandbox");
        let c = cri
            .create_container(&id, container_config("main", &["/bin/sleep", "3600"]), &cfg)
            .await
            .expect("CreateContainer");
        cri.start_container(&c).await.expect("StartContainer");
        let ip = cri.pod_ip(&id).await.expect("pod IP").to_string();
        let rec = wait_record(&fx, &id, Duration::from_secs(10), |r| {
            r.pod_ips() == vec![ip.clone()]
        })
        .await;
        assert_eq!(rec.pod.name, format!("keep{i}"));
        let started = cri.container_status(&c).await.expect("status").started_at;
        pods.insert(id, (ip, c, started));
    }
    // Let the container starts' snapshots land, then take the records as they stand.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records: BTreeMap<String, Vec<u8>> = pods
        .keys()
        .map(|id| (id.clone(), std::fs::read(record_path(&fx, id)).unwrap()))
        .collect();

    let n = restarts();
    let t0 = Instant::now();
    for round in 1..=n {
        fx.restart().await.expect("restart containerd");
        let mut cri = cri_ready(&fx).await;
        let listed = cri.list_pods().await.expect("ListPodSandbox");
        assert_eq!(listed.len(), PODS, "round {round}: pods were added or lost");
        for (id, (ip, c, started)) in &pods {
            let st = cri.pod_status(id).await.expect("PodSandboxStatus");
            assert_eq!(&st.id, id);
            assert_eq!(
                st.state,
                PodSandboxState::SandboxReady as i32,
                "round {round}: {id}"
            );
            let got = st.network.map(|n| n.ip).unwrap_or_default();
            assert_eq!(&got, ip, "round {round}: pod {id} lost its IP");
            let cs = cri.container_status(c).await.expect("ContainerStatus");
            assert_eq!(
                cs.state,
                ContainerState::ContainerRunning as i32,
                "round {round}: {c}"
            );
            assert_eq!(&cs.started_at, started, "round {round}: {c} was restarted");
        }
    }
    let per = t0.elapsed() / n.max(1) as u32;
    println!("{n} containerd restarts under {PODS} pods: {per:?} per restart and check");
    let mut cri = fx.cri().await.expect("cri client");
    let listed = cri.list_pods().await.expect("ListPodSandbox");
    assert!(
        listed.iter().all(|p| pods.contains_key(&p.id)),
        "a pod was recreated"
    );
    for (id, bytes) in &records {
        let now = std::fs::read(record_path(&fx, id)).unwrap();
        assert_eq!(&now, bytes, "the record of {id} changed");
        assert_eq!(state_of(&fx, id), "agree");
        assert_eq!(stored_ips(&fx, id).await, vec![pods[id].0.clone()]);
    }
    for id in pods.keys() {
        cri.stop_pod(id).await.expect("StopPodSandbox");
        cri.remove_pod(id).await.expect("RemovePodSandbox");
        assert!(!record_path(&fx, id).exists());
    }
}
