//! A real single-node Kubernetes cluster (issue 19): the same busybox pod through the
//! RuntimeClasses `runc` (containerd's Go shim) and `sturdy` reaches Running, answers
//! `kubectl exec` and `kubectl logs`, and is deleted with its grace period honoured.
//!
//! Needs `../shared/tools/kubernetes-node-1.32.13.tar.xz`; skips visibly without it.

use std::time::{Duration, Instant};

use sturdy_integration::cleanup::pid_alive;
use sturdy_integration::kube::{pod, KubeBinaries, KubeNode};

/// A pod must be Running and Ready within this (measured: ~2 s on an idle machine).
const RUNNING_WITHIN: Duration = Duration::from_secs(90);

#[tokio::test]
#[ignore = "brings up a whole cluster: scripts/test.sh's kubernetes node step runs it"]
async fn pods_run_through_runtime_classes_runc_and_sturdy() {
    if !KubeBinaries::available() {
        test_skip::skip!("no ../shared/tools/kubernetes-node-1.32.13.tar.xz");
    }
    let node = KubeNode::start().await.unwrap();
    let k = node.kubectl();
    eprintln!(
        "kubernetes node up in {:.1}s on containerd {}",
        node.startup_time().as_secs_f64(),
        node.containerd().generation().name()
    );
    for class in ["runc", "sturdy"] {
        let name = format!("hello-{class}");
        // PID 1 ignores SIGTERM (no handler): deletion must wait out the grace period.
        let script = format!("echo hello-from-{class}; while :; do sleep 1; done");
        let mut manifest = pod::busybox_pod(&name, class, &script);
        manifest["spec"]["terminationGracePeriodSeconds"] = 4.into();
        let t0 = Instant::now();
        k.apply(&name, &manifest.to_string()).await.unwrap();
        let running = pod::wait_for(k, &name, RUNNING_WITHIN, pod::running_ready).await;
        let Some(p) = running else {
            let desc = k.run(&["describe", "pod", &name]).await.unwrap_or_default();
            panic!("{name} not Running within {RUNNING_WITHIN:?}:\n{desc}");
        };
        eprintln!(
            "{class}: pod Running/Ready in {:.1}s",
            t0.elapsed().as_secs_f64()
        );

        // The sandbox really runs on the shim the RuntimeClass names.
        let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
        let sandbox = pod::sandbox_of(node.containerd(), &uid).await.unwrap();
        let (shim_pid, shim) = pod::shim_of(node.containerd(), &sandbox)
            .unwrap_or_else(|| panic!("no shim found for sandbox {sandbox}"));
        let expected = if class == "sturdy" {
            "containerd-shim-sturdy-v2"
        } else {
            "containerd-shim-runc-v2"
        };
        assert_eq!(shim, expected, "{name}'s shim");

        let out = k
            .run(&["exec", &name, "--", "sh", "-c", "echo exec-ok; id -u"])
            .await
            .unwrap();
        assert_eq!(out, "exec-ok\n0\n", "kubectl exec through {class}");
        let logs = k.run(&["logs", &name]).await.unwrap();
        assert!(
            logs.contains(&format!("hello-from-{class}")),
            "logs: {logs:?}"
        );

        let t0 = Instant::now();
        k.run(&["delete", "pod", &name, "--wait=false"])
            .await
            .unwrap();
        assert!(
            pod::wait_gone(k, &name, Duration::from_secs(60)).await,
            "{name} still there a minute after delete"
        );
        let took = t0.elapsed();
        eprintln!(
            "{class}: delete with a 4 s grace period took {:.1}s",
            took.as_secs_f64()
        );
        assert!(
            took >= Duration::from_secs(4),
            "{name} was gone after {took:?}, before its 4 s grace period"
        );
        assert!(
            sturdy_integration::until(Duration::from_secs(30), || !pid_alive(shim_pid)).await,
            "{name}'s shim {shim_pid} outlived the pod"
        );
    }
}
