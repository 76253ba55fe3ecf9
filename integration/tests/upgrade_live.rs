//! `sturdyctl upgrade-shims` moving a live sturdy pod's shim onto a new binary in place
//! (issue 20, docs/upgrade.md), against a private containerd (`STURDY_CONTAINERD` picks
//! the generation): the same shim process serves on, on the new build; a container that
//! prints a numbered line every 20 ms loses and repeats none of them; a container that
//! exits around the upgrade is reported exited once, with its code; exec works; containerd
//! never sees the shim disconnect; and back again. A new build that cannot resume (the
//! shim's test hook) rolls back onto the old one, and a binary that does not even start is
//! refused before the shim is touched.
//!
//! The "new build" is a copy of the shim with another build-id written into its note
//! (`shim_upgrade::another_build`): the same code, another build to every check.

#[path = "upgrade_support/live.rs"]
mod live;
mod upgrade_support;
mod watchdog_support;

use std::path::PathBuf;

use live::{assert_upgraded, printed, ResumeHook, Scene};
use sturdy_integration::Containerd;
use upgrade_support::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_pod_moves_onto_a_new_build_and_back() {
    let mut sc = Scene::start("live").await;
    let old_id = sc.old_id.clone();
    let (_, new_id) = sc.install_new_build("sturdy-next");
    sc.assert_shim_runs(&old_id, false, "the new build installed");
    let before = printed(&sc.printer_log).len() as u64;

    let exec = sc.exec_in_flight().await;
    let (ok, s) = sc.upgrade_shims(&[]);
    assert_upgraded(ok, &s, &sc.pod, &old_id, &new_id);
    sc.assert_shim_runs(&new_id, true, "the upgrade");
    sc.assert_exec_in_flight_whole(exec, "the upgrade").await;
    let lines = sc.assert_log_whole(before, "the upgrade").await;
    sc.assert_exited_once("the upgrade").await;
    sc.assert_exec("after the upgrade").await;
    sc.pod.check(&sc.fx, &mut sc.cri, "after the upgrade").await;
    sc.assert_no_disconnect("after the upgrade");

    // Nothing left to do: the shim is current.
    let (ok, s) = sc.upgrade_shims(&[]);
    assert!(ok, "{s:#}");
    assert_eq!(s["result"], "current", "{s:#}");

    // And back onto the old build, the same way.
    let old_bin = sc.old_bin.clone();
    sc.fx
        .replace_shim_bin(&old_bin)
        .expect("reinstall the old build");
    let (ok, s) = sc.upgrade_shims(&[]);
    assert_upgraded(ok, &s, &sc.pod, &new_id, &old_id);
    sc.assert_shim_runs(&old_id, true, "the way back");
    sc.assert_log_whole(lines, "the way back").await;
    sc.assert_exec("after the way back").await;
    sc.pod
        .check(&sc.fx, &mut sc.cri, "after the way back")
        .await;
    sc.assert_exited_once("the way back").await;

    // Another round trip with nothing else changing leaves the shim holding no more fds
    // than before (one fewer if its event connection, opened at the first event, was not
    // needed again yet) and no memfd or binary at all: a handover leaks none (document,
    // old binary, pending bytes' memfds).
    let fds_before = shim_fds(sc.pod.shim.pid);
    for (to, bin) in [
        (&new_id, sc.install_new_build("sturdy-next-2").0),
        (&old_id, old_bin),
    ] {
        sc.fx.replace_shim_bin(&bin).expect("install");
        let (ok, s) = sc.upgrade_shims(&[]);
        assert!(ok && s["result"] == "upgraded", "round trip to {to}: {s:#}");
    }
    wait_for(
        || {
            let now = shim_fds(sc.pod.shim.pid);
            let gone: Vec<_> = fds_before.iter().filter(|f| !now.contains(f)).collect();
            let new: Vec<_> = now.iter().filter(|f| !fds_before.contains(f)).collect();
            format!(
                "the shim's fds changed over a round trip: {} before, {} now; only before: \
                 {gone:?}; only now: {new:?}",
                fds_before.len(),
                now.len()
            )
        },
        || shim_fds(sc.pod.shim.pid).len() <= fds_before.len(),
    )
    .await;
    let held = shim_fds(sc.pod.shim.pid);
    assert!(
        !held
            .iter()
            .any(|f| f.contains("memfd:") || f.contains("containerd-shim-sturdy-v2")),
        "a handover's memfd or binary is still open: {held:?}"
    );
    sc.finish().await;
}

/// What each fd of process `pid` is (`/proc/PID/fd/N` link targets), sorted.
fn shim_fds(pid: i32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_does_not_start_is_refused_and_one_that_cannot_resume_rolls_back() {
    let mut sc = Scene::start("rollback").await;
    let old_id = sc.old_id.clone();

    // A "shim" that exits 1 whatever it is asked, installed as the shim is: refused
    // before the shim is touched (the Upgrade call is never made).
    let broken_dir = sc.fx.dir().join("sturdy-broken");
    std::fs::create_dir_all(&broken_dir).unwrap();
    let broken = broken_dir.join("containerd-shim-sturdy-v2");
    std::fs::copy("/bin/false", &broken).expect("copy /bin/false");
    let (ok, s) = sc.upgrade_shims(&["--binary", broken.to_str().unwrap()]);
    assert!(!ok, "a broken binary accepted: {s:#}");
    assert_eq!(s["result"], "refused", "{s:#}");
    assert!(
        s["detail"].as_str().unwrap().contains("-v: exit status: 1"),
        "{s:#}"
    );
    assert!(s["upgrade"].is_null() && s["error"].is_null(), "{s:#}");
    assert_eq!(s["pid"], sc.pod.shim.pid, "{s:#}");
    sc.assert_shim_runs(&old_id, true, "a broken binary refused");

    // A new build whose image refuses to resume: the shim goes back to the old one.
    let (_, new_id) = sc.install_new_build("sturdy-next");
    let hook = ResumeHook::arm(&sc.fx, &sc.pod, ".sturdy-test-fail-resume", &new_id);
    let before = printed(&sc.printer_log).len() as u64;
    let (ok, s) = sc.upgrade_shims(&[]);
    assert!(!ok, "a rolled back upgrade succeeded: {s:#}");
    assert_eq!(s["result"], "rolled_back", "{s:#}");
    assert!(
        s["detail"].as_str().unwrap().starts_with("rolled back:"),
        "{s:#}"
    );
    assert_eq!(s["error"], s["detail"], "{s:#}");
    assert_eq!(s["pid"], sc.pod.shim.pid, "{s:#}");
    assert_eq!(s["running_build"], old_id.as_str(), "{s:#}");
    assert!(s["upgrade"].is_null(), "{s:#}");
    drop(hook);
    sc.assert_shim_runs(&old_id, false, "the rollback");
    sc.assert_log_whole(before, "the rollback").await;
    sc.assert_exited_once("the rollback").await;
    sc.assert_exec("after the rollback").await;
    sc.pod
        .check(&sc.fx, &mut sc.cri, "after the rollback")
        .await;
    sc.assert_no_disconnect("after the rollback");
    sc.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_a_terminal_is_refused_at_once_and_left_as_it_was() {
    let mut sc = Scene::start("tty").await;
    let old_id = sc.old_id.clone();
    let mut config = sturdy_integration::container_config(
        "tty",
        &["/bin/sh", "-c", "while :; do sleep 1; done"],
    );
    config.tty = true;
    let tty = sc
        .cri
        .create_container(&sc.pod.id, config, &sc.pod.config)
        .await
        .expect("CreateContainer tty");
    sc.cri
        .start_container(&tty)
        .await
        .expect("StartContainer tty");
    let (_, new_id) = sc.install_new_build("sturdy-next");
    let before = printed(&sc.printer_log).len() as u64;

    let started = std::time::Instant::now();
    let (ok, s) = sc.upgrade_shims(&[]);
    let took = started.elapsed();
    assert!(!ok, "a pod with a terminal was moved: {s:#}");
    assert_eq!(s["result"], "refused", "{s:#}");
    let detail = s["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("refused:") && detail.contains("terminal"),
        "{s:#}"
    );
    assert_eq!(s["running_build"], old_id.as_str(), "{s:#}");
    assert_ne!(old_id, new_id);
    eprintln!("refused in {took:?}");
    sc.assert_shim_runs(&old_id, false, "a terminal refused");
    sc.assert_log_whole(before, "a terminal refused").await;
    sc.assert_exec("after a terminal refused").await;
    sc.finish().await;
}

/// containerd's stdin FIFO of CRI container `id` (CRI holds its writer; a test may be
/// another).
fn stdin_fifo(fx: &Containerd, id: &str) -> PathBuf {
    let io = fx
        .state_dir()
        .join("io.containerd.grpc.v1.cri/containers")
        .join(id)
        .join("io");
    std::fs::read_dir(&io)
        .unwrap_or_else(|e| panic!("{}: {e}", io.display()))
        .flatten()
        .map(|d| d.path().join(format!("{id}-stdin")))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no stdin FIFO of {id} under {}", io.display()))
}

/// The numbers of the `got N` lines in a CRI log, in order.
fn echoed(log: &std::path::Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            l.split_once(" got ")
                .map(|(_, n)| n.trim().parse().unwrap_or(u64::MAX))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_flows_into_a_container_across_the_upgrade() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut sc = Scene::start("stdin").await;
    let mut config = sturdy_integration::container_config(
        "reader",
        &["/bin/sh", "-c", "while read l; do echo \"got $l\"; done"],
    );
    config.stdin = true;
    let reader = sc
        .cri
        .create_container(&sc.pod.id, config, &sc.pod.config)
        .await
        .expect("CreateContainer reader");
    sc.cri
        .start_container(&reader)
        .await
        .expect("StartContainer reader");
    let log = PathBuf::from(
        sc.cri
            .container_status(&reader)
            .await
            .expect("ContainerStatus reader")
            .log_path,
    );
    let mut stdin = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(stdin_fifo(&sc.fx, &reader))
        .expect("open the stdin FIFO");
    let mut send = |range: std::ops::Range<u64>| {
        for i in range {
            stdin
                .write_all(format!("{i}\n").as_bytes())
                .expect("write stdin");
        }
    };
    let whole = |n: u64| {
        let log = log.clone();
        move || echoed(&log) == (0..n).collect::<Vec<_>>()
    };
    send(0..20);
    wait_for(|| format!("before: {:?}", echoed(&log)), whole(20)).await;

    let (_, new_id) = sc.install_new_build("sturdy-next");
    let (ok, s) = sc.upgrade_shims(&[]);
    assert_upgraded(ok, &s, &sc.pod, &sc.old_id.clone(), &new_id);
    send(20..40);
    wait_for(
        || format!("after the upgrade: {:?}", echoed(&log)),
        whole(40),
    )
    .await;
    drop(stdin);
    sc.finish().await;
}
