//! Every `runc exec` hanging (incident 002's shape) through CRI: ExecSync fails on its own
//! within 10 s, and StopPodSandbox of the pod does not wait for the hung exec.
//!
//! Measured before the fix: the ExecSync (5 s timeout) came back only when the pod was
//! stopped, 15.5 s later, and StopPodSandbox then took 10.2 s waiting for the exec.
//! Sturdy-only: the Go shim has no deadline on `runc exec` at all.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sturdy_integration::cleanup::pid_alive;
use sturdy_integration::{container_config, runc_wrapper, until, Containerd, ExtraRuntime};

/// ExecSync must fail on its own within this.
const EXEC_FAILS_WITHIN: Duration = Duration::from_secs(10);
/// StopPodSandbox with an exec stuck in `runc exec` must finish within this.
const STOP_WITHIN: Duration = Duration::from_secs(2);
/// What the wrapper's hung `runc exec` sleeps (a number nothing else here uses, so that
/// the cleanup below can recognise its processes).
const HANG: &str = "3597";

/// A runc wrapper next to the real runc: `exec` hangs (recording its pids) while a switch
/// file exists; everything else is the real runc.
struct HangingExec {
    wrapper: PathBuf,
    switch: PathBuf,
    pids: PathBuf,
}

impl HangingExec {
    fn new(dir: &Path) -> HangingExec {
        let switch = dir.join("hang.on");
        let pids = dir.join("hung.pids");
        let wrapper = dir.join("hanging-runc");
        let hang = format!(
            "echo $$ >> '{pids}'; sleep {HANG} & echo $! >> '{pids}'; wait; exit 1",
            pids = pids.display()
        );
        runc_wrapper::write(&wrapper, &switch, &[("exec", hang)]).unwrap();
        HangingExec {
            wrapper,
            switch,
            pids,
        }
    }

    fn on(&self) {
        std::fs::write(&self.switch, b"").unwrap();
    }

    /// Pids of the hung `runc exec`s so far and what they started.
    fn hung(&self) -> Vec<i32> {
        std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for HangingExec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.switch);
        // Whatever a failing run left hanging: only the wrapper's own processes.
        for pid in self.hung() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let ours = cmdline.contains("hanging-runc") || cmdline.contains(HANG);
            if ours && pid_alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A fixture whose "hanging" runtime's `runc exec` hangs, with a pod of that runtime and
/// a running container in it (the hang switched on afterwards).
struct Pod {
    hanging: HangingExec,
    cri: sturdy_integration::Cri,
    pod: String,
    container: String,
    // Dropped last: its teardown is the leak check.
    fx: Containerd,
    _dir: tempfile::TempDir,
}

async fn pod_with_hanging_exec() -> Pod {
    let dir = tempfile::tempdir().expect("tempdir");
    let hanging = HangingExec::new(dir.path());
    let fx = Containerd::builder()
        .runtime(
            ExtraRuntime::sturdy_with_runc(
                "hanging",
                &dir.path().join("hanging.toml"),
                &hanging.wrapper,
                &dir.path().join("roots"),
            )
            .unwrap(),
        )
        .start()
        .await
        .expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let pod_config = fx.pod_config("hanging");
    let pod = cri
        .run_pod_with("hanging", &pod_config)
        .await
        .expect("RunPodSandbox");
    let container = cri
        .create_container(
            &pod,
            container_config("sleeper", &["/bin/sleep", "3600"]),
            &pod_config,
        )
        .await
        .expect("CreateContainer");
    cri.start_container(&container)
        .await
        .expect("StartContainer");
    hanging.on();
    Pod {
        hanging,
        cri,
        pod,
        container,
        fx,
        _dir: dir,
    }
}

/// Nobody stops anything: ExecSync fails on its own at the shim's setup deadline, and the
/// hung runc is killed with what it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_fails_on_its_own_when_runc_exec_hangs() {
    let mut p = pod_with_hanging_exec().await;
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        p.cri
            .exec_sync(&p.container, &["true"], Duration::from_secs(5)),
    )
    .await
    .expect("ExecSync never came back");
    let took = t.elapsed();
    let hung = p.hanging.hung();
    assert_eq!(hung.len(), 2, "the wrapper's exec never hung: {hung:?}");
    let err = r.expect_err("ExecSync of a hung runc exec succeeded");
    eprintln!("ExecSync failed after {took:?}: {err}");
    assert!(
        took < EXEC_FAILS_WITHIN,
        "ExecSync came back after {took:?}: {err}"
    );
    assert!(
        until(Duration::from_secs(5), || !hung
            .iter()
            .any(|p| pid_alive(*p)))
        .await,
        "the hung runc exec or what it started survived: {hung:?}"
    );
    p.cri.stop_pod(&p.pod).await.expect("StopPodSandbox");
    p.cri.remove_pod(&p.pod).await.expect("RemovePodSandbox");
}

/// StopPodSandbox while an ExecSync's `runc exec` hangs: the pod stops at once, and the
/// ExecSync fails (its exec never ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_stops_at_once_while_runc_exec_hangs() {
    let mut p = pod_with_hanging_exec().await;
    let exec = {
        let mut cri = p.fx.cri().await.expect("cri client");
        let c = p.container.clone();
        tokio::spawn(async move { cri.exec_sync(&c, &["true"], Duration::from_secs(5)).await })
    };
    assert!(
        until(Duration::from_secs(30), || p.hanging.hung().len() == 2).await,
        "the exec never reached runc: {:?}",
        p.hanging.hung()
    );
    let t = Instant::now();
    p.cri.stop_pod(&p.pod).await.expect("StopPodSandbox");
    let took = t.elapsed();
    eprintln!("StopPodSandbox with an exec hung in runc took {took:?}");
    let r = tokio::time::timeout(Duration::from_secs(60), exec)
        .await
        .expect("the ExecSync never came back")
        .expect("join");
    eprintln!("the ExecSync came back with {r:?}");
    assert!(r.is_err(), "an exec that never ran succeeded: {r:?}");
    assert!(
        took < STOP_WITHIN,
        "StopPodSandbox took {took:?} with an exec hung in runc"
    );
    p.cri.remove_pod(&p.pod).await.expect("RemovePodSandbox");
}
