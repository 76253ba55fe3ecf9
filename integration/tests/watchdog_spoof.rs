//! The review's H1 scenario end to end (security review 2026-12): a pod's shim died while
//! no watchdog ran and containerd was frozen, and a local user started a look-alike under
//! the shim's command line. The watchdog that starts then recovers the pod with containerd's
//! own shim binary, never takes the look-alike for the shim, never kills it, and never runs
//! its binary.

mod watchdog_support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{chown, Gid, Uid};
use sturdy_integration::{Containerd, Handler};
use watchdog_support::*;

const NOBODY: u32 = 65534;

/// The look-alike, copied into a directory `nobody` owns; it leaves `<path>.ran` if run.
fn lookalike(home: &Path) -> PathBuf {
    let bin = home.join("evil");
    std::fs::copy(env!("CARGO_BIN_EXE_sturdy-lookalike"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = (Some(Uid::from_raw(NOBODY)), Some(Gid::from_raw(NOBODY)));
    chown(&bin, nobody.0, nobody.1).unwrap();
    chown(home, nobody.0, nobody.1).unwrap();
    bin
}

/// `evil` as `nobody` under the shim's command line for pod `id`; killed on drop.
struct Spoof(Child);

impl Spoof {
    fn start(evil: &Path, argv0: &Path, fx: &Containerd, id: &str) -> Spoof {
        let child = Command::new(evil)
            .arg0(argv0)
            .args(["-namespace", "k8s.io", "-id", id])
            .arg("-address")
            .arg(fx.socket())
            .env("LOOKALIKE_SERVE", "1")
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Spoof(child)
    }

    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Spoof {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spoofed_dead_shim(handler: Handler, argv0: &str, watchdog_args: &[&str]) {
    let mut fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let pod = run_pod(&fx, &mut cri, handler, "spoofed", 1).await;
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let evil = lookalike(home.path());
    let marker = PathBuf::from(format!("{}.ran", evil.display()));

    let mut down = ContainerdDown::new(fx.pid(), Down::Frozen);
    signal(pod.shim, Signal::SIGKILL);
    let mut spoof = Spoof::start(&evil, Path::new(argv0), &fx, &pod.id);
    // The look-alike has its command line once it runs its own image.
    until(Duration::from_secs(10), || {
        std::fs::read_link(format!("/proc/{}/exe", spoof.0.id())).ok() == Some(evil.clone())
    })
    .await;

    let mut args = vec!["--containerd-grace", "1s"];
    args.extend(watchdog_args);
    let wd = Watchdog::start(&fx, &args);
    let ran = |entries: &[serde_json::Value], id: &str| {
        entries.iter().any(|e| {
            e["step"] == format!("delete {id}")
                && e["ok"] == true
                && e["detail"].as_str().is_some_and(|d| d.starts_with("ran:"))
        })
    };
    until(Duration::from_secs(30), || {
        let entries = wd.incident_entries(&pod.address);
        pod.all.iter().all(|id| ran(&entries, id))
    })
    .await;
    let entries = wd.incident_entries(&pod.address);
    for id in &pod.all {
        assert!(ran(&entries, id), "{id} was not deleted: {entries:#?}");
    }
    assert!(
        !marker.exists(),
        "the look-alike's binary was run: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    assert!(spoof.alive(), "the look-alike was killed for the shim");
    let started = entries
        .iter()
        .find(|e| e["phase"] == "started")
        .unwrap_or_else(|| panic!("no incident started: {entries:#?}"));
    assert!(
        started["shim"]["process"].is_null(),
        "the look-alike was taken for the shim: {started:#}"
    );
    wait_runtime_cleaned(&fx, &pod, Duration::from_secs(20)).await;

    down.thaw();
    let mut cri = fx.cri().await.expect("cri client after the thaw");
    wd.wait_finished(&pod.address, Duration::from_secs(30))
        .await;
    remove_recovered_pod(&fx, &mut cri, &pod).await;
    drop(spoof);
    let left = fx.stop();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// sturdy's `shim.pid` names the dead shim; the look-alike is found by its command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_alike_of_a_dead_sturdy_shim_is_never_run_nor_killed() {
    spoofed_dead_shim(
        Handler::Sturdy,
        "/usr/local/bin/containerd-shim-sturdy-v2",
        &[],
    )
    .await;
}

/// The Go shim leaves no `shim.pid`: discovery goes by command lines alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_alike_of_a_dead_go_shim_is_never_run_nor_killed() {
    spoofed_dead_shim(
        Handler::Runc,
        "/usr/bin/containerd-shim-runc-v2",
        &["--runtime", "io.containerd.runc.v2"],
    )
    .await;
}
