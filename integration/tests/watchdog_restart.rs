//! The watchdog killed in the middle of a recovery and started again: the next one finds
//! the incident started but not finished in the journal and completes it, once.
//!
//! The kill lands between `started` and `finished` for sure, at one of two points:
//! - containerd up: the test holds containerd's own delete of the dead shim's containers
//!   (SIGSTOP of its process group), so containerd cannot announce the exits and the
//!   watchdog waits for them (its grace), with its cgroup kill done; the watchdog is
//!   SIGKILLed there and containerd's delete resumed;
//! - containerd frozen (SIGSTOP) throughout: the watchdog runs the deletes itself; the
//!   test holds one of them, SIGKILLs the watchdog and the held delete (a service manager
//!   ends a dead unit's leftover processes too), and the second watchdog must finish the
//!   deletes while containerd is still frozen.

mod watchdog_support;

use std::time::Duration;

use nix::sys::signal::Signal;
use sturdy_integration::k8s_cri::v1::PodSandboxState;
use sturdy_integration::{Containerd, Handler};
use watchdog_support::*;

fn count(entries: &[serde_json::Value], phase: &str) -> usize {
    entries.iter().filter(|e| e["phase"] == phase).count()
}

async fn watchdog_killed_mid_recovery(frozen: bool) {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let args = ["--containerd-grace", "2s"];
    let mut first = Watchdog::start(&fx, &args);
    let pod = run_pod(&fx, &mut cri, Handler::Sturdy, "restart", 1).await;
    first.wait_watching(&pod.address, pod.shim).await;

    let mut down = frozen.then(|| ContainerdDown::new(fx.pid(), Down::Frozen));
    signal(pod.shim, Signal::SIGKILL);
    let mut held = if frozen {
        HeldDelete::catch(first.pid(), Duration::from_secs(20))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no shim delete of the watchdog's could be held; journal: {:#?}",
                    first.journal()
                )
            })
    } else {
        let held = HeldDelete::catch(fx.pid(), Duration::from_secs(20))
            .await
            .expect("containerd ran no delete of the dead shim's containers");
        first
            .wait_log(&["kill cgroups"], Duration::from_secs(10))
            .await;
        held
    };
    let at_kill = first.incident_entries(&pod.address);
    assert_eq!(count(&at_kill, "started"), 1, "{at_kill:#?}");
    assert_eq!(count(&at_kill, "finished"), 0, "{at_kill:#?}");
    first.kill();
    if frozen {
        held.kill();
    } else {
        held.resume();
    }
    println!(
        "watchdog killed mid-recovery (held: {}); its journal then:",
        held.args.join(" ")
    );
    for e in &at_kill {
        println!(
            "  {} {}",
            e["phase"].as_str().unwrap_or(""),
            e["step"].as_str().unwrap_or("")
        );
    }
    assert!(
        pod.pids.iter().all(|p| !running(*p)),
        "the first watchdog did not kill the pod's processes"
    );

    let second = Watchdog::start(&fx, &args);
    if let Some(down) = down.as_mut() {
        // Only the second watchdog can have finished the deletes.
        wait_runtime_cleaned(&fx, &pod, Duration::from_secs(20)).await;
        down.thaw();
    }
    let entries = second
        .wait_finished(&pod.address, Duration::from_secs(30))
        .await;
    let finished = only_finished(&entries);
    assert_eq!(finished["ok"], true, "{entries:#?}");
    assert_eq!(count(&entries, "started"), 1, "{entries:#?}");
    assert_eq!(
        finished["incident"], at_kill[0]["incident"],
        "a new incident was recovered instead of the interrupted one: {entries:#?}"
    );
    assert!(
        second.log().contains("started by an earlier watchdog"),
        "{}",
        second.log()
    );
    for id in &pod.all {
        assert!(
            delete_ok(&entries, id),
            "no successful delete of {id}: {entries:#?}"
        );
    }

    let state = wait_pod_state(
        &mut cri,
        &pod.id,
        PodSandboxState::SandboxNotready,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(state, Some(PodSandboxState::SandboxNotready as i32));
    remove_recovered_pod(&fx, &mut cri, &pod).await;
    // Its rescans since found nothing to redo.
    let entries = second.incident_entries(&pod.address);
    assert_eq!(count(&entries, "started"), 1, "{entries:#?}");
    assert_eq!(count(&entries, "finished"), 1, "{entries:#?}");
}

/// containerd up; the watchdog killed while it waits for containerd's own cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_killed_mid_recovery_finishes_it_once_on_restart() {
    watchdog_killed_mid_recovery(false).await;
}

/// containerd frozen; the watchdog killed during one of its own deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_killed_mid_recovery_while_containerd_is_frozen() {
    watchdog_killed_mid_recovery(true).await;
}
