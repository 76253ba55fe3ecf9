//! A shim killed while containerd is down: the watchdog kills the pod's processes and runs
//! the shim's delete from the bundles alone (its gRPC calls fail or hang), and once
//! containerd is back it confirms containerd learned the exits; CRI then reports the pod
//! NotReady and, after the kubelet's StopPodSandbox and RemovePodSandbox, nothing of the
//! pod is left.
//!
//! Two ways down: frozen (SIGSTOP: sockets open, nothing answers, later SIGCONT) and stopped
//! (SIGTERM: gone, later started again by the fixture's `restart`).

mod watchdog_support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sturdy_integration::k8s_cri::v1::PodSandboxState;
use sturdy_integration::{Containerd, Handler};
use watchdog_support::*;

async fn shim_killed_while_containerd_is_down(how: Down) {
    let mut fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    // containerd's grace short, so the wait for its return starts soon.
    let wd = Watchdog::start(&fx, &["--containerd-grace", "1s"]);
    let pod = run_pod(&fx, &mut cri, Handler::Sturdy, "down", 1).await;
    wd.wait_watching(&pod.address, pod.shim).await;

    let mut down = ContainerdDown::new(fx.pid(), how);
    signal(pod.shim, Signal::SIGKILL);
    let t0 = Instant::now();
    let gone = measure(
        &format!("watchdog, containerd {how:?}, sturdy shim SIGKILLed"),
        &pod.pids,
        t0,
    )
    .await;
    assert!(
        gone < Duration::from_millis(1000),
        "pod processes ran {} ms after the shim's death",
        gone.as_millis()
    );
    // Everything the shim's delete does, done while containerd can do nothing.
    wait_runtime_cleaned(&fx, &pod, Duration::from_secs(20)).await;
    println!(
        "containerd {how:?}: runtime leftovers gone {} ms after the kill",
        t0.elapsed().as_millis()
    );
    // A delete's journal entry follows the delete's exit, which can come after everything
    // it removed is gone (it waits for init's exit, reaped by PID 1 here).
    let ran = |entries: &[serde_json::Value], id: &str| {
        entries.iter().any(|e| {
            e["step"] == format!("delete {id}")
                && e["ok"] == true
                && e["detail"].as_str().is_some_and(|d| d.starts_with("ran:"))
        })
    };
    until(Duration::from_secs(20), || {
        let entries = wd.incident_entries(&pod.address);
        pod.all.iter().all(|id| ran(&entries, id))
    })
    .await;
    let entries = wd.incident_entries(&pod.address);
    for id in &pod.all {
        assert!(
            ran(&entries, id),
            "the watchdog did not run the delete of {id} itself: {entries:#?}"
        );
    }
    // containerd can confirm nothing yet: past the grace it gives containerd, the watchdog
    // waits for containerd's return with the incident still open.
    let finished = || {
        wd.incident_entries(&pod.address)
            .iter()
            .any(|e| e["phase"] == "finished")
    };
    let waiting = || {
        wd.log()
            .contains("waiting for containerd to confirm the exits")
    };
    until(Duration::from_secs(30), || finished() || waiting()).await;
    assert!(
        !finished(),
        "the incident finished while containerd was {how:?}: {:#?}",
        wd.incident_entries(&pod.address)
    );
    assert!(waiting(), "the watchdog never said it waits for containerd");

    let back = now_ms();
    match how {
        Down::Frozen => down.thaw(),
        Down::Stopped => fx.restart().await.expect("start containerd again"),
    }
    let mut cri = fx
        .cri()
        .await
        .expect("cri client after containerd's return");
    let state = wait_pod_state(
        &mut cri,
        &pod.id,
        PodSandboxState::SandboxNotready,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        state,
        Some(PodSandboxState::SandboxNotready as i32),
        "CRI does not report the pod NotReady after containerd's return"
    );
    let entries = wd
        .wait_finished(&pod.address, Duration::from_secs(30))
        .await;
    assert!(
        only_finished(&entries)["at_ms"].as_u64().unwrap_or(0) >= back,
        "finished before containerd was back: {entries:#?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["step"] == "containerd" && e["ok"] == true),
        "containerd's view was not confirmed: {entries:#?}"
    );

    // The kubelet's part.
    remove_recovered_pod(&fx, &mut cri, &pod).await;
    assert!(
        wd.log().contains("incident"),
        "the watchdog logged no incident"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_killed_while_containerd_is_frozen() {
    shim_killed_while_containerd_is_down(Down::Frozen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_killed_while_containerd_is_stopped() {
    shim_killed_while_containerd_is_down(Down::Stopped).await;
}
