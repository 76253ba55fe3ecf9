//! The sturdy binary replaced by a newer build while pods run, as an operator installs one:
//! the file containerd runs as `containerd-shim-sturdy-v2` now is another binary (a copy
//! of the build at another path, reached through a wrapper that logs how containerd calls
//! it), with no containerd restart.
//!
//! Old shims keep serving their pods (same process, old executable); new pods get the new
//! binary; a new container in an old pod joins the old shim; an old pod is stopped and
//! removed through its old shim; and when an old shim dies, containerd's cleanup runs the
//! new binary's `delete`, which reads the old shim's `sturdy.json` and leaves nothing.

mod upgrade_support;

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sturdy_integration::{cleanup, Containerd, Handler, CRI_NAMESPACE};
use upgrade_support::Pod;

/// The "newer build": a copy of the shim at `<dir>/sturdy-next/`, and a wrapper in front
/// of it logging `<action> <id>` per call. Returns (wrapper, binary, log).
fn install_next(fx: &Containerd) -> (PathBuf, PathBuf, PathBuf) {
    let dir = fx.dir().join("sturdy-next");
    std::fs::create_dir_all(&dir).expect("sturdy-next dir");
    let bin = dir.join("containerd-shim-sturdy-v2");
    std::fs::copy(fx.shim_bin(), &bin).expect("copy the shim binary");
    let log = dir.join("calls.log");
    let wrapper = dir.join("logging-shim");
    // containerd passes `-id ID ... start|delete`; the daemon it spawns is `bin` itself.
    let script = format!(
        "#!/bin/sh\nid=; prev=\nfor a in \"$@\"; do [ \"$prev\" = -id ] && id=$a; prev=$a; done\n\
         echo \"$prev $id\" >> '{log}'\nexec '{bin}' \"$@\"\n",
        log = log.display(),
        bin = bin.display()
    );
    std::fs::write(&wrapper, script).expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (wrapper, bin, log)
}

/// The actions (`start`, `delete`) containerd ran the new binary with for `id`.
fn calls(log: &Path, id: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, i)| *i == id)
        .map(|(a, _)| a.to_string())
        .collect()
}

fn bundle(fx: &Containerd, id: &str) -> PathBuf {
    fx.state_dir()
        .join("io.containerd.runtime.v2.task")
        .join(CRI_NAMESPACE)
        .join(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_binary_replaced_under_live_pods() {
    let t0 = std::time::Instant::now();
    let mut fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let old_exe = std::fs::canonicalize(fx.shim_bin()).expect("old shim binary");
    let mut crashing = Pod::start(&fx, &mut cri, Handler::Sturdy, "crashing").await;
    let stopping = Pod::start(&fx, &mut cri, Handler::Sturdy, "stopping").await;
    for pod in [&crashing, &stopping] {
        assert_eq!(
            pod.shim_exe, old_exe,
            "{}: started by the old binary",
            pod.name
        );
    }

    let (wrapper, new_exe, log) = install_next(&fx);
    fx.replace_shim_bin(&wrapper)
        .expect("install the new binary");

    // Old pods: same shim process, old executable, everything works.
    for pod in [&crashing, &stopping] {
        pod.check(&fx, &mut cri, "binary replaced").await;
        let exe = std::fs::read_link(format!("/proc/{}/exe", pod.shim.pid)).expect("exe");
        assert_eq!(exe, old_exe, "{}: its shim changed executable", pod.name);
    }
    // A new pod gets the new binary.
    let fresh = Pod::start(&fx, &mut cri, Handler::Sturdy, "fresh").await;
    assert_eq!(fresh.shim_exe, new_exe, "new pod's shim");
    assert_eq!(
        calls(&log, &fresh.id),
        ["start"],
        "new pod started by the new binary"
    );
    fresh
        .check(&fx, &mut cri, "new pod on the new binary")
        .await;
    // A new container in an old pod: containerd runs the new binary's `start`, which
    // finds the pod's old shim alive on the group socket and hands its address back.
    let late = crashing.add_container(&fx, &mut cri, "late").await;
    assert_eq!(
        calls(&log, &late),
        ["start"],
        "late: start by the new binary"
    );
    assert_eq!(
        fx.shim_pid(CRI_NAMESPACE, &crashing.id),
        Some(crashing.shim.pid),
        "late joined another shim"
    );
    crashing
        .check(&fx, &mut cri, "new container in an old pod")
        .await;

    // An old pod stopped and removed the normal way: its old shim does it and exits.
    stopping.remove(&fx, &mut cri).await;

    // An old shim dies: containerd cleans up with the new binary's `delete`, which acts on
    // the record the old shim wrote.
    let ids = crashing.ids();
    for id in &ids {
        let raw = std::fs::read(bundle(&fx, id).join("sturdy.json")).expect("old sturdy.json");
        let rec: serde_json::Value = serde_json::from_slice(&raw).expect("json");
        assert_eq!(rec["version"], 1, "{id}: record format");
    }
    kill(Pid::from_raw(crashing.shim.pid), Signal::SIGKILL).expect("SIGKILL the old shim");
    crashing.wait_crashed(&mut cri).await;
    crashing.wait_runc_state_gone(&fx).await;
    // delete removes the record last, once everything else is done.
    let records = || -> Vec<PathBuf> {
        ids.iter()
            .map(|id| bundle(&fx, id).join("sturdy.json"))
            .filter(|p| p.exists())
            .collect()
    };
    upgrade_support::wait_for(
        || format!("records left: {:?}", records()),
        || records().is_empty(),
    )
    .await;
    for id in &ids {
        assert!(
            calls(&log, id).iter().any(|c| c == "delete"),
            "{id}: containerd never ran the new binary's delete: {:?}",
            calls(&log, id)
        );
        let mounted = cleanup::mounts_under(&bundle(&fx, id));
        assert!(mounted.is_empty(), "{id}: mounts left {mounted:?}");
    }
    cri.stop_pod(&crashing.id)
        .await
        .expect("StopPodSandbox of the crashed pod");
    cri.remove_pod(&crashing.id)
        .await
        .expect("RemovePodSandbox of the crashed pod");

    fresh.remove(&fx, &mut cri).await;
    let left = fx.stop();
    assert!(left.is_empty(), "leaked: {left:?}");
    eprintln!(
        "shim_binary_replaced_under_live_pods: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
