//! Durable sandbox network records (issue 11, docs/netmeta.md) against a real containerd
//! with CRI handler `sturdy`: incident 000 emulated and repaired by the watchdog (and, as
//! the control, not repaired with `--no-repair`), host-network and multi-address pods,
//! flipped bytes, a full disk, and the collection of records of unknown sandboxes.

mod netmeta_support;
mod watchdog_support;

use std::time::Duration;

use netmeta_support::*;
use sandbox_record::{Network, Pod as PodId, Record};
use sturdy_integration::k8s_cri::v1::PodSandboxState;
use sturdy_integration::{container_config, Containerd, Handler, CRI_NAMESPACE};
use watchdog_support::{until, wait_pod_state, Watchdog, WatchdogExt, INTERVAL};

fn watchdog(fx: &Containerd, extra: &[&str]) -> Watchdog {
    let dir = fx.sandbox_record_dir();
    let mut args = vec!["--record-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Watchdog::start(fx, &args)
}

/// Incident 000 on a running pod: containerd's stored record loses the IP; with the
/// watchdog repairing, the IP is back within an interval and survives a restart; with
/// `--no-repair`, the restart shows `"ip": ""`, as on containerd 1.6.9–1.6.14.
async fn incident_000(repair: bool) {
    let mut fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let wd = watchdog(&fx, if repair { &[] } else { &["--no-repair"] });
    let cfg = fx.pod_config(if repair { "inc0" } else { "inc0-control" });
    let id = cri
        .run_pod(Handler::Sturdy, &cfg)
        .await
        .expect("RunPodSandbox");
    let ip = cri.pod_ip(&id).await.expect("pod IP").to_string();
    let rec = wait_record(&fx, &id, RECORDED, |r| !r.pod_ips().is_empty()).await;
    assert_eq!(rec.pod_ips(), vec![ip.clone()]);
    assert_eq!(rec.pod.name, cfg.metadata.as_ref().unwrap().name);
    assert_eq!(rec.pod.uid, cfg.metadata.as_ref().unwrap().uid);
    assert_eq!(state_of(&fx, &id), "agree");

    // A record of a sandbox this containerd never had: the watchdog collects it.
    let stray = Record {
        sandbox_id: "0000stray".into(),
        namespace: CRI_NAMESPACE.into(),
        containerd: format!("{}.ttrpc", fx.socket().display()),
        pod: PodId::default(),
        network: Network::Host,
        taken_at_ms: 0,
        trigger: "create".into(),
        truncated: None,
    };
    store(&fx).write(&stray).unwrap();
    // A corrupt record nobody rewrote for long, of a sandbox containerd does not know.
    let corrupt = store(&fx).path(CRI_NAMESPACE, "0000corrupt").unwrap();
    std::fs::write(&corrupt, b"{\"format\":\"sturdy-sandbox-record\",\"vers").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&corrupt)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();

    let before = container(&fx, &id).await;
    strip_ips(&fx, &id).await;
    println!("stripped the IP {ip} from containerd's record of {id}");
    // Within one interval of the watchdog's, plus the time its pass takes.
    let limit = INTERVAL * 3;
    let mut restored = false;
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if !stored_ips(&fx, &id).await.is_empty() {
            restored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if repair {
        assert!(
            restored,
            "not repaired within {limit:?}; log:\n{}",
            wd.log()
        );
        assert_eq!(stored_ips(&fx, &id).await, vec![ip.clone()]);
        let after = container(&fx, &id).await;
        // Every other field as it was, byte for byte.
        assert_eq!(after.labels, before.labels);
        assert_eq!(after.image, before.image);
        assert_eq!(after.runtime, before.runtime);
        assert_eq!(after.spec, before.spec);
        assert_eq!(after.snapshotter, before.snapshotter);
        assert_eq!(after.snapshot_key, before.snapshot_key);
        assert_eq!(after.created_at, before.created_at);
        assert_eq!(after.sandbox, before.sandbox);
        let others = |c: &containerd_client::services::v1::Container| {
            let mut e = c.extensions.clone();
            e.remove(EXTENSION);
            e
        };
        assert_eq!(others(&after), others(&before));
        let was: serde_json::Value =
            serde_json::from_slice(&before.extensions[EXTENSION].value).unwrap();
        let now: serde_json::Value =
            serde_json::from_slice(&after.extensions[EXTENSION].value).unwrap();
        assert_eq!(now, was, "the extension is not what CRI had stored");
        assert_eq!(
            after.extensions[EXTENSION].type_url,
            before.extensions[EXTENSION].type_url
        );
        wd.wait_log(&["REPAIRED", &id, &ip], Duration::from_secs(1))
            .await;
        let journal = wd.journal();
        assert!(
            journal.iter().any(|e| e["phase"] == "step"
                && e["ok"] == true
                && e["step"] == format!("repair sandbox IP {id}")),
            "{journal:#?}"
        );
    } else {
        assert!(!restored, "--no-repair repaired: {}", wd.log());
        wd.wait_log(&["NOT repaired (--no-repair)", &id], Duration::from_secs(1))
            .await;
        assert_eq!(state_of(&fx, &id), "lost");
    }
    let stray_gone = until(INTERVAL * 5, || {
        !store(&fx)
            .path(CRI_NAMESPACE, "0000stray")
            .unwrap()
            .exists()
            && !corrupt.exists()
    })
    .await;
    assert!(
        stray_gone,
        "the stray record was not collected: {:#}\n{}",
        sturdyctl_json(&fx, &["sandboxes"]),
        wd.log()
    );
    assert!(
        record_path(&fx, &id).exists(),
        "a live sandbox's record went"
    );

    fx.restart().await.expect("restart containerd");
    let mut cri = cri_ready(&fx).await;
    let status = cri.pod_status(&id).await.expect("PodSandboxStatus");
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    let after_restart = status.network.map(|n| n.ip).unwrap_or_default();
    println!("after the restart PodSandboxStatus shows ip {after_restart:?}");
    if repair {
        assert_eq!(
            after_restart, ip,
            "the repaired IP did not survive the restart"
        );
    } else {
        assert_eq!(after_restart, "", "control: the stripped IP must be lost");
    }

    cri.stop_pod(&id).await.expect("StopPodSandbox");
    assert!(
        !record_path(&fx, &id).exists(),
        "the record outlived the sandbox's task"
    );
    cri.remove_pod(&id).await.expect("RemovePodSandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_000_is_repaired_by_the_watchdog() {
    incident_000(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_000_without_repair_loses_the_ip() {
    incident_000(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_is_recorded_as_such() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let cfg = fx.host_network_pod_config("hostnet");
    let id = cri
        .run_pod(Handler::Sturdy, &cfg)
        .await
        .expect("RunPodSandbox");
    let rec = wait_record(&fx, &id, RECORDED, |_| true).await;
    assert!(rec.host_network(), "{rec:?}");
    assert!(rec.pod_ips().is_empty());
    let v = sturdyctl_json(&fx, &["sandbox", &id]);
    assert_eq!(v["state"], "host_network", "{v:#}");
    assert_eq!(v["host_network"], true);
    cri.stop_pod(&id).await.expect("StopPodSandbox");
    cri.remove_pod(&id).await.expect("RemovePodSandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_address_is_recorded_and_flipped_bytes_are_replaced() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let pod = recorded_pod(&fx, &mut cri, "twoaddr").await;
    let rec = add_address(&fx, &mut cri, &pod, "192.0.2.77").await;
    let RecordedPod {
        id,
        config: cfg,
        ip,
        netns,
    } = pod;
    assert_eq!(rec.pod_ips(), vec![ip.clone(), "192.0.2.77".to_string()]);
    assert_eq!(rec.trigger, "container start");
    let Network::Namespace {
        interfaces,
        routes,
        path,
    } = &rec.network
    else {
        panic!("{rec:?}")
    };
    // CRI says /var/run/netns/…, the verbose status the resolved /run/netns/….
    assert_eq!(
        std::path::Path::new(path).file_name(),
        netns.file_name(),
        "{path} vs {}",
        netns.display()
    );
    let eth0 = interfaces.iter().find(|i| i.name == "eth0").expect("eth0");
    assert!(eth0.mtu > 0 && eth0.mac.len() == 17, "{eth0:?}");
    assert!(
        routes
            .iter()
            .any(|r| r.interface.as_deref() == Some("eth0")
                && r.source.as_deref() == Some(ip.as_str())),
        "no route of the pod's subnet recorded: {routes:?}"
    );
    assert_eq!(state_of(&fx, &id), "agree");

    flip_a_byte(&record_path(&fx, &id));
    assert_eq!(state_of(&fx, &id), "corrupt");
    let c2 = cri
        .create_container(&id, container_config("c2", &["/bin/sleep", "3600"]), &cfg)
        .await
        .expect("CreateContainer");
    cri.start_container(&c2).await.expect("StartContainer");
    let fresh = wait_record(&fx, &id, RECORDED, |_| true).await;
    assert!(fresh.same_network(&rec), "{fresh:?}");
    assert_eq!(state_of(&fx, &id), "agree");
    let log = fx.log_tail(400);
    assert!(
        log.contains("is corrupt"),
        "the corruption was not logged:\n{log}"
    );

    cri.stop_pod(&id).await.expect("StopPodSandbox");
    cri.remove_pod(&id).await.expect("RemovePodSandbox");
}

/// A tmpfs mounted over the fixture's record dir, unmounted (lazily) on drop.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_fails_the_pod_and_the_next_snapshot_succeeds() {
    let fx = Containerd::start().await.expect("start containerd");
    let dir = fx.sandbox_record_dir();
    std::fs::create_dir_all(&dir).unwrap();
    if let Err(e) = nix::mount::mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k,mode=0700"),
    ) {
        test_skip::skip!("cannot mount a tmpfs over {} ({e})", dir.display());
    }
    let _tmpfs = Tmpfs(dir.clone());
    let filler = dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 1024]).is_ok() {}
    }
    let mut cri = fx.cri().await.expect("cri client");
    let cfg = fx.pod_config("fulldisk");
    let id = cri
        .run_pod(Handler::Sturdy, &cfg)
        .await
        .expect("RunPodSandbox on a full disk");
    let c1 = cri
        .create_container(&id, container_config("c1", &["/bin/sleep", "3600"]), &cfg)
        .await
        .expect("CreateContainer");
    cri.start_container(&c1).await.expect("StartContainer");
    let state = wait_pod_state(
        &mut cri,
        &id,
        PodSandboxState::SandboxReady,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(state, Some(PodSandboxState::SandboxReady as i32));
    let logged = until(Duration::from_secs(10), || {
        let log = fx.log_tail(400);
        log.contains("No space left on device") && log.contains("the pod is not affected")
    })
    .await;
    assert!(logged, "ENOSPC was not logged:\n{}", fx.log_tail(100));
    assert!(!record_path(&fx, &id).exists());
    std::fs::remove_file(&filler).unwrap();
    let c2 = cri
        .create_container(&id, container_config("c2", &["/bin/sleep", "3600"]), &cfg)
        .await
        .expect("CreateContainer");
    cri.start_container(&c2).await.expect("StartContainer");
    let rec = wait_record(&fx, &id, RECORDED, |r| !r.pod_ips().is_empty()).await;
    assert_eq!(
        rec.pod_ips(),
        vec![cri.pod_ip(&id).await.unwrap().to_string()]
    );
    cri.stop_pod(&id).await.expect("StopPodSandbox");
    cri.remove_pod(&id).await.expect("RemovePodSandbox");
}
