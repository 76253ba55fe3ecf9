//! sturdy's own policies, beyond parity with the Go shim (docs/shim.md, "Policies").

use std::time::Duration;

use sturdy_integration::k8s_cri::v1::ContainerState;
use sturdy_integration::until;
use sturdy_integration::{cleanup, container_config, Containerd, Handler, CRI_NAMESPACE};

/// SIGTERM never takes live pods down: the shim logs it and keeps serving; once its
/// containers are gone, Shutdown ends it as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_containers_run_is_refused() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let pod_config = fx.pod_config("sigterm");
    let pod = cri
        .run_pod(Handler::Sturdy, &pod_config)
        .await
        .expect("RunPodSandbox");
    let ctr = cri
        .create_container(
            &pod,
            container_config("main", &["/bin/sleep", "3600"]),
            &pod_config,
        )
        .await
        .expect("CreateContainer");
    cri.start_container(&ctr).await.expect("StartContainer");
    let shim = fx.shim_pid(CRI_NAMESPACE, &pod).expect("shim pid");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::SIGTERM)
        .expect("SIGTERM the shim");
    assert!(
        until(Duration::from_secs(10), || fx
            .log_tail(400)
            .contains("SIGTERM ignored"))
        .await,
        "the shim never reported the SIGTERM; containerd log:\n{}",
        fx.log_tail(40)
    );
    assert!(
        cleanup::pid_alive(shim),
        "the shim exited on SIGTERM with a live pod"
    );
    let out = cri
        .exec_sync(&ctr, &["/bin/echo", "still here"], Duration::from_secs(10))
        .await
        .expect("ExecSync after SIGTERM");
    assert_eq!(out.stdout, "still here\n");
    let status = cri.container_status(&ctr).await.expect("ContainerStatus");
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);

    cri.stop_pod(&pod).await.expect("StopPodSandbox");
    cri.remove_pod(&pod).await.expect("RemovePodSandbox");
    assert!(
        until(Duration::from_secs(20), || !cleanup::pid_alive(shim)).await,
        "the shim outlived its pod"
    );
}
