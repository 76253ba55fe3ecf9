//! The watchdog with only the capabilities deploy/daemonset.yaml grants it (security review
//! 2026-12, L17: not privileged). It runs under `setpriv` with its bounding set cut to
//! that list, so neither it nor what it runs (a shim's `delete`, runc) has any other, and
//! still recovers a pod whose shim was SIGKILLed.
//!
//! What this does not cover: the DaemonSet's seccomp and AppArmor/SELinux settings and the
//! `nsenter` into PID 1 (no Kubernetes here; docs/operations.md).

mod watchdog_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use sturdy_integration::containerd::workspace_dir;
use sturdy_integration::{Containerd, Handler};
use watchdog_support::*;

/// The `add:` list of the watchdog container in deploy/daemonset.yaml (a flow sequence).
fn granted() -> Vec<String> {
    let path = workspace_dir().join("deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (_, watchdog) = text
        .split_once("- name: watchdog")
        .expect("a watchdog container");
    let line = watchdog
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("add:"))
        .expect("the watchdog's capabilities.add");
    line.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

/// A wrapper running sturdyctl with only `caps` in its bounding set.
fn wrapper(dir: &Path, caps: &[String]) -> std::path::PathBuf {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.to_lowercase()))
        .collect();
    let path = dir.join("sturdyctl");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set -all{list} --inh-caps -all -- {} \"$@\"\n",
            sturdyctl_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The number of capabilities in `pid`'s bounding set.
fn bounding_set_size(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap().count_ones()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_recovers_a_pod_with_the_daemonsets_capabilities() {
    if !Path::new("/usr/bin/setpriv").exists() {
        test_skip::skip!("no setpriv (util-linux)");
    }
    let caps = granted();
    assert!(
        !caps.is_empty() && !caps.iter().any(|c| c == "ALL"),
        "{caps:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bin = wrapper(dir.path(), &caps);
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let interval = format!("{}ms", INTERVAL.as_millis());
    let misses = MISSES.to_string();
    let wd = Watchdog::spawn(
        &bin,
        &fx,
        &["--interval", &interval, "--misses", &misses],
        "debug",
    )
    .expect("start the watchdog");
    let pod = run_pod(&fx, &mut cri, Handler::Sturdy, "caps", 1).await;
    wd.wait_watching(&pod.address, pod.shim).await;
    assert_eq!(
        bounding_set_size(wd.pid()),
        caps.len() as u32,
        "the watchdog runs with more than {caps:?}"
    );
    let exits = follow_exits(&fx).await;
    signal(pod.shim, Signal::SIGKILL);
    assert_pod_cleaned(&fx, &mut cri, &pod, &exits).await;
    let entries = wd
        .wait_finished(&pod.address, Duration::from_secs(20))
        .await;
    for id in &pod.all {
        assert!(
            delete_ok(&entries, id),
            "no successful delete of {id} with {caps:?}: {entries:#?}\n{}",
            wd.log()
        );
    }
}
