//! Incident 000 at the kubelet level: containerd restarted after its stored record of a
//! running pod lost the pod's IP (stripped as the lose-ip fault test does, the state
//! containerd 1.6.9–1.6.14 left), through RuntimeClass `runc` (the Go shim) and `sturdy`,
//! without and with `sturdyctl watchdog`. Watched: the pod's `status.podIP` in the API
//! server before and after, and what CRI reports. Asserted for sturdy with the watchdog:
//! the stored IP is repaired before the restart, and the API server's podIP never changes.
//! The rest is printed.
//!
//! Needs `../shared/tools/kubernetes-node-1.32.13.tar.xz`; skips visibly without it.

mod netmeta_support;

use std::time::{Duration, Instant};

use netmeta_support::{stored_ips, strip_ips};
use serde_json::Value;
use sturdy_integration::kube::{pod, KubeBinaries, KubeNode, Kubectl};
use sturdy_integration::watchdog::Watchdog;
use sturdy_integration::{until_some, Containerd};

/// How long the API server's podIP is watched after containerd is back.
const AFTER_RESTART: Duration = Duration::from_secs(10);

struct Case {
    name: String,
    class: &'static str,
    watchdog: bool,
    api_before: String,
    /// containerd's stored IP after the watchdog had its chance, before the restart.
    stored_before_restart: Vec<String>,
    cri_after: String,
    /// Every distinct podIP the API server showed after the restart, with when.
    api_after: Vec<(f64, String)>,
    /// The same after the kubelet was restarted too (its cached pod status gone).
    api_after_kubelet: Vec<(f64, String)>,
}

/// Every distinct `status.podIP` each pod in `names` shows for `limit`, with when.
async fn watch_ips(k: &Kubectl, names: &[String], limit: Duration) -> Vec<Vec<(f64, String)>> {
    let t0 = Instant::now();
    let watched = std::cell::RefCell::new(vec![Vec::<(f64, String)>::new(); names.len()]);
    let w = &watched;
    until_some(limit, move || async move {
        for (i, name) in names.iter().enumerate() {
            if let Some(p) = pod::get(k, name).await {
                let ip = pod_ip(&p);
                let mut w = w.borrow_mut();
                if w[i].last().is_none_or(|(_, last)| *last != ip) {
                    w[i].push((t0.elapsed().as_secs_f64(), ip));
                }
            }
        }
        None::<()>
    })
    .await;
    watched.into_inner()
}

fn show(seen: &[(f64, String)]) -> String {
    seen.iter()
        .map(|(t, ip)| format!("{} at {t:.1} s", if ip.is_empty() { "\"\"" } else { ip }))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn running_pod(k: &Kubectl, fx: &Containerd, name: &str, class: &str) -> (String, String) {
    let mut m = pod::busybox_pod(name, class, "exec sleep 3600");
    m["spec"]["terminationGracePeriodSeconds"] = 1.into();
    k.apply(name, &m.to_string()).await.unwrap();
    let p = pod::wait_for(k, name, Duration::from_secs(90), |p| {
        pod::running_ready(p) && p["status"]["podIP"].is_string()
    })
    .await
    .unwrap_or_else(|| panic!("{name} not Running"));
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let sandbox = pod::sandbox_of(fx, uid).await.unwrap();
    (sandbox, p["status"]["podIP"].as_str().unwrap().to_string())
}

fn pod_ip(p: &Value) -> String {
    p["status"]["podIP"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "brings up a whole cluster: scripts/test.sh's kubernetes node step runs it"]
async fn incident_000_containerd_restart_and_the_pod_ip() {
    if !KubeBinaries::available() {
        test_skip::skip!("no ../shared/tools/kubernetes-node-1.32.13.tar.xz");
    }
    let mut node = KubeNode::start().await.unwrap();
    eprintln!(
        "kubernetes node up in {:.1}s",
        node.startup_time().as_secs_f64()
    );
    let mut cases = Vec::new();
    for watchdog in [false, true] {
        let mut wd = watchdog.then(|| {
            let fx = node.containerd();
            let records = fx.sandbox_record_dir();
            let args = ["--record-dir", records.to_str().unwrap()];
            let bin = sturdy_integration::containerd::sturdyctl_bin();
            Watchdog::spawn_in(&node.enter(), &bin, fx, &args, "debug").unwrap()
        });
        let mut sandboxes = Vec::new();
        for class in ["runc", "sturdy"] {
            let name = format!("i000-{class}-{}", if watchdog { "wd" } else { "nowd" });
            let (sandbox, ip) = running_pod(node.kubectl(), node.containerd(), &name, class).await;
            sandboxes.push(sandbox);
            cases.push(Case {
                name,
                class,
                watchdog,
                api_before: ip,
                stored_before_restart: Vec::new(),
                cri_after: String::new(),
                api_after: Vec::new(),
                api_after_kubelet: Vec::new(),
            });
        }
        let first = cases.len() - 2;
        let cases = &mut cases[first..];
        for (c, sandbox) in cases.iter_mut().zip(&sandboxes) {
            strip_ips(node.containerd(), sandbox).await;
            if c.watchdog && c.class == "sturdy" {
                // The watchdog's pass runs every 2 s; it writes the IP back from its record.
                let repaired = until_some(Duration::from_secs(10), || async {
                    let ips = stored_ips(node.containerd(), sandbox).await;
                    (!ips.is_empty()).then_some(ips)
                })
                .await;
                c.stored_before_restart = repaired.unwrap_or_default();
            } else {
                c.stored_before_restart = stored_ips(node.containerd(), sandbox).await;
            }
        }
        node.containerd_mut().restart().await.unwrap();
        for (c, sandbox) in cases.iter_mut().zip(&sandboxes) {
            let mut cri = node.containerd().cri().await.unwrap();
            c.cri_after = cri
                .pod_status(sandbox)
                .await
                .ok()
                .and_then(|s| s.network.map(|n| n.ip))
                .unwrap_or_default();
        }
        // The API server's view for a while: the kubelet relists after the restart; then the
        // kubelet restarted too, so it no longer has the pod's status cached.
        let names: Vec<String> = cases.iter().map(|c| c.name.clone()).collect();
        let seen = watch_ips(node.kubectl(), &names, AFTER_RESTART).await;
        for (c, seen) in cases.iter_mut().zip(seen) {
            c.api_after = seen;
        }
        node.restart("kubelet").unwrap();
        let seen = watch_ips(node.kubectl(), &names, AFTER_RESTART).await;
        for (c, seen) in cases.iter_mut().zip(seen) {
            c.api_after_kubelet = seen;
        }
        if let Some(wd) = wd.as_mut() {
            wd.stop();
        }
        for c in cases.iter() {
            node.kubectl()
                .run(&["delete", "pod", &c.name, "--grace-period=1", "--wait=false"])
                .await
                .unwrap();
        }
    }
    println!("\n| shim | watchdog | podIP before | stored IP before the restart | CRI after | API server podIP after the containerd restart ({0}s) | … after a kubelet restart too ({0}s) |", AFTER_RESTART.as_secs());
    println!("|---|---|---|---|---|---|---|");
    for c in &cases {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            if c.class == "sturdy" {
                "sturdy"
            } else {
                "Go shim"
            },
            if c.watchdog { "yes" } else { "no" },
            c.api_before,
            if c.stored_before_restart.is_empty() {
                "\"\" (stripped)".into()
            } else {
                c.stored_before_restart.join(",")
            },
            if c.cri_after.is_empty() {
                "\"\""
            } else {
                &c.cri_after
            },
            show(&c.api_after),
            show(&c.api_after_kubelet),
        );
    }
    for c in cases.iter().filter(|c| c.class == "sturdy" && c.watchdog) {
        assert_eq!(
            c.stored_before_restart,
            vec![c.api_before.clone()],
            "{}: not repaired before the restart",
            c.name
        );
        assert_eq!(c.cri_after, c.api_before, "{}: CRI lost the IP", c.name);
        for seen in [&c.api_after, &c.api_after_kubelet] {
            assert!(
                !seen.is_empty() && seen.iter().all(|(_, ip)| *ip == c.api_before),
                "{}: the API server's podIP changed: {seen:?}",
                c.name,
            );
        }
    }
    for c in &cases {
        assert!(
            pod::wait_gone(node.kubectl(), &c.name, Duration::from_secs(90)).await,
            "{}: not deleted",
            c.name
        );
    }
}
