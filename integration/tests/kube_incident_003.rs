//! Incident 003 at the kubelet level: a pod's shim SIGKILLed, and separately SIGSTOPped,
//! with and without `sturdyctl watchdog`, through RuntimeClass `runc` (containerd's Go
//! shim) and `sturdy`. Measured: when the API server shows the pod's containers not ready,
//! when the kubelet has restarted them, and whether the old shim and container processes
//! are gone. Asserted for sturdy only: a dead shim's pod is restarted (with or without the
//! watchdog), a hung one's with the watchdog, and nothing of the old pod is left running.
//! The Go shim's figures are printed beside them.
//!
//! A hung shim without the watchdog is watched for `STURDY_KUBE_WINDOW` seconds (default
//! 10: nothing changes in it, see docs/testing.md for a longer run).
//! Needs `../shared/tools/kubernetes-node-1.32.13.tar.xz`; skips visibly without it.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sturdy_integration::cleanup::{self, pid_alive};
use sturdy_integration::kube::watch::{pod_after_fault, secs, PodTimeline};
use sturdy_integration::kube::{pod, KubeBinaries, KubeNode};
use sturdy_integration::watchdog::Watchdog;
use sturdy_integration::{until, CRI_NAMESPACE};

/// How long a pod with a dead or hung shim may take to be restarted where it must be.
const RECOVERY_WINDOW: Duration = Duration::from_secs(60);

fn quiet_window() -> Duration {
    let secs = std::env::var("STURDY_KUBE_WINDOW")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(secs)
}

struct Row {
    name: String,
    class: &'static str,
    signal: Signal,
    watchdog: bool,
    timeline: PodTimeline,
    /// Seconds after the fault until the old shim and container processes were all gone.
    gone: Option<f64>,
    /// What was still running of them 10 s after the pod was restarted (or the window ended).
    left: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "brings up a whole cluster: scripts/test.sh's kubernetes node step runs it"]
async fn incident_003_dead_and_hung_shims_under_kubelet() {
    if !KubeBinaries::available() {
        test_skip::skip!("no ../shared/tools/kubernetes-node-1.32.13.tar.xz");
    }
    let node = KubeNode::start().await.unwrap();
    eprintln!(
        "kubernetes node up in {:.1}s",
        node.startup_time().as_secs_f64()
    );
    let mut rows = Vec::new();
    for watchdog in [false, true] {
        let mut wd = watchdog.then(|| {
            let fx = node.containerd();
            let records = fx.sandbox_record_dir();
            let args = [
                "--runtime",
                "io.containerd.runc.v2",
                "--record-dir",
                records.to_str().unwrap(),
            ];
            let bin = sturdy_integration::containerd::sturdyctl_bin();
            Watchdog::spawn_in(&node.enter(), &bin, fx, &args, "debug").unwrap()
        });
        for class in ["runc", "sturdy"] {
            for signal in [Signal::SIGKILL, Signal::SIGSTOP] {
                rows.push(one(&node, class, signal, watchdog).await);
            }
        }
        if let Some(wd) = wd.as_mut() {
            wd.stop();
            eprintln!("--- watchdog log ---\n{}", tail(&wd.log(), 40));
        }
    }
    println!("\n| shim | fault | watchdog | API server shows it | restarted by kubelet | Ready again | old shim and container processes gone |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let w = r.timeline.window;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            if r.class == "sturdy" {
                "sturdy"
            } else {
                "Go shim"
            },
            r.signal.as_str().trim_start_matches("SIG"),
            if r.watchdog { "yes" } else { "no" },
            secs(r.timeline.noticed, w),
            secs(r.timeline.restarted, w),
            secs(r.timeline.ready_again, w),
            match r.gone {
                Some(t) => format!("{t:.1} s"),
                None => format!("no: {} (killed by the test)", r.left.join(", ")),
            },
        );
    }
    for r in &rows {
        assert!(
            pod::wait_gone(node.kubectl(), &r.name, Duration::from_secs(90)).await,
            "{}: not deleted",
            r.name
        );
    }
    for r in rows.iter().filter(|r| r.class == "sturdy") {
        let must_recover = r.signal == Signal::SIGKILL || r.watchdog;
        if must_recover {
            assert!(
                r.timeline.restarted.is_some() && r.timeline.ready_again.is_some(),
                "sturdy, {} shim, watchdog {}: pod not restarted within {RECOVERY_WINDOW:?}",
                r.signal,
                r.watchdog
            );
            assert!(
                r.gone.is_some(),
                "sturdy, {} shim, watchdog {}: old processes left running",
                r.signal,
                r.watchdog
            );
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn one(node: &KubeNode, class: &'static str, signal: Signal, watchdog: bool) -> Row {
    let k = node.kubectl();
    let fx = node.containerd();
    let sig = signal.as_str().trim_start_matches("SIG").to_lowercase();
    let name = format!(
        "i003-{class}-{sig}-{}",
        if watchdog { "wd" } else { "nowd" }
    );
    let mut m = pod::busybox_pod(&name, class, "exec sleep 3600");
    m["spec"]["terminationGracePeriodSeconds"] = 1.into();
    k.apply(&name, &m.to_string()).await.unwrap();
    let before = pod::wait_for(k, &name, Duration::from_secs(90), pod::running_ready)
        .await
        .unwrap_or_else(|| panic!("{name} not Running"));
    let uid = before["metadata"]["uid"].as_str().unwrap().to_string();
    let sandbox = pod::sandbox_of(fx, &uid).await.unwrap();
    let (shim, exe) = pod::shim_of(fx, &sandbox).expect("the pod's shim");
    let container = before["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_string();
    let runc_root = fx.runc_root().join(CRI_NAMESPACE);
    let mut old: Vec<i32> = cleanup::runc_states(&runc_root)
        .into_iter()
        .filter(|(id, _, _)| *id == sandbox || *id == container)
        .filter_map(|(_, pid, _)| pid)
        .collect();
    assert_eq!(
        old.len(),
        2,
        "{name}: sandbox and container pids from runc's state"
    );
    old.push(shim);

    let t0 = Instant::now();
    kill(Pid::from_raw(shim), signal).unwrap();
    let expect_recovery = signal == Signal::SIGKILL || watchdog;
    let window = if expect_recovery {
        RECOVERY_WINDOW
    } else {
        quiet_window()
    };
    let timeline = pod_after_fault(k, &name, &before, t0, window).await;
    // A stopped shim is not "gone", even though /proc has it.
    let all_gone = |pids: &[i32]| {
        pids.iter().all(|p| {
            !pid_alive(*p)
                || std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        })
    };
    let gone = if until(Duration::from_secs(10), || all_gone(&old)).await {
        Some(t0.elapsed().as_secs_f64())
    } else {
        None
    };
    let left: Vec<String> = old
        .iter()
        .filter(|p| !all_gone(&[**p]))
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let role = if *p == shim { "shim" } else { "container" };
            format!("{role} {p} {}", comm.trim())
        })
        .collect();
    eprintln!(
        "{name} ({exe}): noticed {:?}, restarted {:?}, ready again {:?}, old processes gone {gone:?} {left:?}",
        timeline.noticed, timeline.restarted, timeline.ready_again
    );
    if gone.is_none() {
        // The test's own cleanup: a stopped shim gets SIGKILL (containerd then cleans up
        // after a dead shim), what it served goes with it.
        for p in &old {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
    }
    // Deleted in the background; the test waits for all of them at its end.
    k.run(&["delete", "pod", &name, "--grace-period=1", "--wait=false"])
        .await
        .unwrap();
    Row {
        name: name.clone(),
        class,
        signal,
        watchdog,
        timeline,
        gone,
        left,
    }
}
