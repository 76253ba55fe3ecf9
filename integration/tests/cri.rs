//! CRI-level parity tests: the kubelet's view of pods and containers through each handler.

use std::time::Duration;

use sturdy_integration::k8s_cri::v1::{ContainerState, PodSandboxState};
use sturdy_integration::{container_config, parity_tests, Containerd, CRI_NAMESPACE};

parity_tests! {
    /// The whole pod lifecycle a kubelet drives, with exec output and exit codes checked.
    async fn pod_lifecycle(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let mut cri = fx.cri().await.expect("cri client");
        let pod_config = fx.pod_config("lifecycle");
        let pod = cri.run_pod(h, &pod_config).await.expect("RunPodSandbox");

        let status = cri.pod_status(&pod).await.expect("PodSandboxStatus");
        assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
        assert_eq!(status.runtime_handler, h.name());
        let exe = fx.shim_exe(CRI_NAMESPACE, &pod).expect("sandbox shim process");
        assert_eq!(exe, fx.expected_shim_exe(h), "sandbox served by the wrong shim");
        let ip = cri.pod_ip(&pod).await.expect("pod ip");
        assert_eq!(ip.octets()[..3], [198, 18, 0], "pod ip {ip}");
        assert!(fx.subnet().contains(ip), "{ip} outside {}", fx.subnet().cidr());
        let netns = cri.pod_netns(&pod).await.expect("pod netns").expect("pod has a netns");
        assert!(netns.exists(), "{}", netns.display());

        let ctr_config = container_config("main", &["/bin/sleep", "3600"]);
        let ctr = cri
            .create_container(&pod, ctr_config, &pod_config)
            .await
            .expect("CreateContainer");
        cri.start_container(&ctr).await.expect("StartContainer");

        let out = cri
            .exec_sync(&ctr, &["/bin/sh", "-c", "echo out; echo err >&2; hostname"], Duration::from_secs(10))
            .await
            .expect("ExecSync");
        assert_eq!(out.exit_code, 0, "stderr: {}", out.stderr);
        assert_eq!(out.stdout, "out\nlifecycle\n");
        assert_eq!(out.stderr, "err\n");
        let out = cri
            .exec_sync(&ctr, &["/bin/sh", "-c", "exit 7"], Duration::from_secs(10))
            .await
            .expect("ExecSync");
        assert_eq!(out.exit_code, 7);
        // The container sees the pod's address on its eth0.
        let out = cri
            .exec_sync(&ctr, &["/bin/ip", "-4", "-o", "addr", "show", "eth0"], Duration::from_secs(10))
            .await
            .expect("ExecSync");
        assert!(out.stdout.contains(&format!("inet {ip}/28")), "{}", out.stdout);

        let status = cri.container_status(&ctr).await.expect("ContainerStatus");
        assert_eq!(status.state, ContainerState::ContainerRunning as i32);
        assert!(status.started_at > 0);

        cri.stop_pod(&pod).await.expect("StopPodSandbox");
        let status = cri.container_status(&ctr).await.expect("ContainerStatus");
        assert_eq!(status.state, ContainerState::ContainerExited as i32);
        assert_eq!(cri.pod_status(&pod).await.expect("status").state, PodSandboxState::SandboxNotready as i32);
        assert!(!netns.exists(), "netns {} survived StopPodSandbox", netns.display());
        cri.remove_pod(&pod).await.expect("RemovePodSandbox");
        assert!(cri.list_pods().await.expect("list").is_empty());
    }

    /// A container's exit code is reported by ContainerStatus once it exits on its own.
    async fn container_exit_code(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let mut cri = fx.cri().await.expect("cri client");
        let pod_config = fx.pod_config("exit");
        let pod = cri.run_pod(h, &pod_config).await.expect("RunPodSandbox");
        let ctr = cri
            .create_container(&pod, container_config("quits", &["/bin/sh", "-c", "exit 3"]), &pod_config)
            .await
            .expect("CreateContainer");
        cri.start_container(&ctr).await.expect("StartContainer");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            let s = cri.container_status(&ctr).await.expect("ContainerStatus");
            if s.state == ContainerState::ContainerExited as i32 || std::time::Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status.state, ContainerState::ContainerExited as i32);
        assert_eq!(status.exit_code, 3);
        // No explicit teardown: the fixture's Drop removes the pod.
    }
}
