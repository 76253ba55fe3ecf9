//! `sturdyctl watchdog` against real containerd 1.6 (incident 003, containerd issue 3199):
//! a SIGKILLed or hung (SIGSTOPped) shim's pod is killed, cleaned up and reported to
//! containerd by the watchdog, while a shim that is merely slow is left alone.
//!
//! The watchdog binary is `target/debug/sturdyctl` (built by `cargo build --workspace`), run
//! as a child with this fixture's socket and state dir and killed by PID when the test ends.

mod watchdog_support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sturdy_integration::k8s_cri::v1::PodSandboxState;
use sturdy_integration::{cleanup, Containerd, Handler};
use watchdog_support::*;
/// Incident 003: `kill -9` of a pod's shim. The watchdog kills the pod's processes within
/// a second (7 to 38 ms measured here, docs/watchdog.md), runs the shim's delete, and
/// containerd and CRI see the pod exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_shim_pod_is_recovered() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let mut wd = Watchdog::start(&fx, &[]);
    let pod = run_pod(&fx, &mut cri, Handler::Sturdy, "killed", 1).await;
    wd.wait_watching(&pod.address, pod.shim).await;
    let exits = follow_exits(&fx).await;

    signal(pod.shim, Signal::SIGKILL);
    let t0 = Instant::now();
    let gone = measure("watchdog, sturdy shim SIGKILLed", &pod.pids, t0).await;
    assert!(
        gone < Duration::from_millis(1000),
        "pod processes ran {} ms after the shim's death",
        gone.as_millis()
    );
    assert_pod_cleaned(&fx, &mut cri, &pod, &exits).await;
    let entries = wd
        .wait_finished(&pod.address, Duration::from_secs(20))
        .await;
    assert!(
        entries
            .iter()
            .any(|e| e["phase"] == "started" && e["reason"] == "dead"),
        "{entries:#?}"
    );
    for id in &pod.all {
        assert!(
            delete_ok(&entries, id),
            "no successful delete of {id}: {entries:#?}"
        );
    }
    // The operator's view: the incident, finished, with its steps.
    let status = wd.status_json(&fx, &[]);
    let incident = status["incidents"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["address"] == pod.address.as_str()))
        .unwrap_or_else(|| panic!("status lists no incident for the pod: {status:#}"));
    assert_eq!(incident["finished"], true, "{incident:#}");
    assert_eq!(incident["reason"], "dead", "{incident:#}");
    let status = wd.stop().expect("watchdog exit status");
    assert!(
        status.success(),
        "the watchdog ended with {status} on SIGTERM"
    );
    assert!(wd.log().contains("SIGTERM"), "{}", wd.log());
}

/// The comparison docs/watchdog.md makes: containerd alone (no watchdog) notices a
/// SIGKILLed shim's closed connection, runs the shim's `delete` and announces the exit, so
/// the pod's processes stop about as fast as with the watchdog; sturdy's `delete` removes
/// its socket, while the Go shim's stays behind on 1.6, 1.7 and 2.1 (the stale socket the
/// watchdog removes, docs/watchdog.md step 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_watchdog_containerd_stops_a_killed_shims_pod() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let exits = follow_exits(&fx).await;
    for handler in [Handler::Runc, Handler::Sturdy] {
        let name = format!("alone-{}", handler.name());
        let pod = run_pod(&fx, &mut cri, handler, &name, 1).await;
        signal(pod.shim, Signal::SIGKILL);
        let t0 = Instant::now();
        let label = format!("containerd alone, {} shim SIGKILLed", handler.name());
        // Fails unless the pod's processes stop within 30 s.
        measure(&label, &pod.pids, t0).await;
        assert!(
            until(Duration::from_secs(10), || saw_exit(&exits, &pod.id)).await,
            "{label}: containerd never announced the sandbox's exit"
        );
        let socket = socket_file(&pod.address);
        let removed = until(Duration::from_secs(5), || !socket.exists()).await;
        match handler {
            Handler::Sturdy => assert!(
                removed,
                "{label}: its socket {} is left behind",
                socket.display()
            ),
            Handler::Runc => assert!(
                !removed,
                "{label}: its socket went: update docs/watchdog.md"
            ),
        }
        remove_stale_socket(&pod.address);
    }
}

/// A hung shim (SIGSTOP: alive, socket open, silent) is killed and its pod recovered
/// within interval × misses + 2 s; containerd alone never recovers it.
async fn hung_shim_recovered(handler: Handler, extra: &[&str]) {
    let fx = Containerd::start().await.expect("start containerd");
    let wd = Watchdog::start(&fx, extra);
    hung_shim_recovered_by(
        &fx,
        &wd,
        handler,
        INTERVAL * MISSES + Duration::from_secs(2),
    )
    .await;
}

async fn hung_shim_recovered_by(
    fx: &Containerd,
    wd: &Watchdog,
    handler: Handler,
    window: Duration,
) {
    let mut cri = fx.cri().await.expect("cri client");
    let pod = run_pod(fx, &mut cri, handler, "hung", 1).await;
    wd.wait_watching(&pod.address, pod.shim).await;
    let exits = follow_exits(fx).await;

    let _resume = Resume(pod.shim);
    signal(pod.shim, Signal::SIGSTOP);
    let t0 = Instant::now();
    println!(
        "SIGSTOP at {} ms",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let label = format!(
        "watchdog, {} shim SIGSTOPped (allowed {window:?})",
        handler.name()
    );
    let gone = measure(&label, &pod.pids, t0).await;
    assert!(
        gone <= window,
        "recovery took {} ms, more than {} ms",
        gone.as_millis(),
        window.as_millis()
    );
    assert!(
        !cleanup::pid_alive(pod.shim),
        "the hung shim is still alive"
    );
    assert_pod_cleaned(fx, &mut cri, &pod, &exits).await;
    let entries = wd
        .wait_finished(&pod.address, Duration::from_secs(20))
        .await;
    assert!(
        entries.iter().any(|e| e["phase"] == "started"
            && e["reason"].as_str().is_some_and(|r| r.starts_with("hung"))),
        "{entries:#?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["step"] == "kill shim" && e["ok"] == true),
        "{entries:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_sturdy_shim_is_recovered() {
    hung_shim_recovered(Handler::Sturdy, &[]).await;
}

/// With the default timing (probe every 2 s, 3 misses) a hung shim's pod is recovered
/// within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_shim_recovered_within_10s_by_default() {
    let fx = Containerd::start().await.expect("start containerd");
    let wd = Watchdog::start_with(&fx, &[]);
    hung_shim_recovered_by(&fx, &wd, Handler::Sturdy, Duration::from_secs(10)).await;
}

/// The same for containerd's Go shim, watched through `--runtime io.containerd.runc.v2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_go_shim_is_recovered() {
    hung_shim_recovered(Handler::Runc, &["--runtime", "io.containerd.runc.v2"]).await;
}

/// A shim stopped for less than the detection window and resumed is left alone, even
/// while two busy loops keep both cores busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn briefly_stopped_shim_is_left_alone_under_load() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let wd = Watchdog::start(&fx, &[]);
    let pod = run_pod(&fx, &mut cri, Handler::Sturdy, "slow", 1).await;
    wd.wait_watching(&pod.address, pod.shim).await;
    let _hogs = Hogs::start(2);
    let _resume = Resume(pod.shim);

    // Two intervals: at least one probe goes unanswered, never `MISSES` in a row.
    let stop = INTERVAL * (MISSES - 1);
    signal(pod.shim, Signal::SIGSTOP);
    let t0 = Instant::now();
    tokio::time::sleep(stop).await;
    signal(pod.shim, Signal::SIGCONT);
    println!("shim stopped for {} ms", t0.elapsed().as_millis());
    // The watchdog noticed the silence and saw the shim answer again.
    wd.wait_log(
        &[&pod.address, "answered again after"],
        Duration::from_secs(10),
    )
    .await;
    assert!(cleanup::pid_alive(pod.shim), "the resumed shim was killed");
    assert!(
        pod.pids.iter().all(|p| running(*p)),
        "pod processes were killed"
    );
    let st = cri.pod_status(&pod.id).await.expect("PodSandboxStatus");
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32);
    // The operator's view: the shim is watched and answers, no incident.
    let status = wd.status_json(&fx, &[]);
    let shim = status["shims"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["address"] == pod.address.as_str()))
        .unwrap_or_else(|| panic!("status does not list the pod's shim: {status:#}"));
    assert_eq!(shim["pid"], pod.shim, "{shim:#}");
    assert_eq!(shim["answering"], true, "{shim:#}");
    assert_eq!(shim["tasks"].as_array().map(Vec::len), Some(2), "{shim:#}");
    assert_eq!(status["incidents"], serde_json::json!([]), "{status:#}");
    assert!(
        wd.incident_entries(&pod.address).is_empty(),
        "an incident was journalled: {:#?}",
        wd.journal()
    );
    // Still answering containerd.
    let out = cri
        .exec_sync(
            &pod.containers[0],
            &["/bin/echo", "ok"],
            Duration::from_secs(10),
        )
        .await
        .expect("ExecSync after SIGCONT");
    assert_eq!(out.stdout, "ok\n");
}

/// A pod with two containers: every process of all three goes, and the watchdog ran the
/// shim's delete for each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_shim_with_two_containers() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let wd = Watchdog::start(&fx, &[]);
    let pod = run_pod(&fx, &mut cri, Handler::Sturdy, "two", 2).await;
    assert_eq!(pod.all.len(), 3);
    wd.wait_watching(&pod.address, pod.shim).await;

    signal(pod.shim, Signal::SIGKILL);
    let t0 = Instant::now();
    let gone = measure(
        "watchdog, sturdy shim of a 3-container pod SIGKILLed",
        &pod.pids,
        t0,
    )
    .await;
    assert!(
        gone < Duration::from_millis(1000),
        "{} ms",
        gone.as_millis()
    );
    let entries = wd
        .wait_finished(&pod.address, Duration::from_secs(20))
        .await;
    for id in &pod.all {
        assert!(
            delete_ok(&entries, id),
            "delete did not run for {id}: {entries:#?}"
        );
    }
    // containerd sees the connection close at the same moment and runs the same deletes
    // (removing each bundle after); the journal says who came first.
    let by_watchdog = entries
        .iter()
        .filter(|e| e["detail"].as_str().is_some_and(|d| d.starts_with("ran:")))
        .count();
    println!("deletes: {by_watchdog} of 3 run by the watchdog, the others by containerd first");
    assert!(
        !socket_file(&pod.address).exists(),
        "the dead shim's socket is left behind"
    );
}

/// With containerd up, its own dead-shim cleanup (the shim's delete, then removing the
/// bundle) runs first; the watchdog runs no delete of its own meanwhile. A delete of the
/// watchdog's racing containerd's removal of the bundle could recreate the delete lock in
/// the bundle being removed, and containerd then left the renamed bundle `.<id>` behind
/// (seen in the churn test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_cleanup_is_not_raced_by_the_watchdog() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let wd = Watchdog::start(&fx, &[]);
    let pod = run_pod(&fx, &mut cri, Handler::Sturdy, "race", 1).await;
    wd.wait_watching(&pod.address, pod.shim).await;

    signal(pod.shim, Signal::SIGKILL);
    let mut held = HeldDelete::catch(fx.pid(), Duration::from_secs(10))
        .await
        .expect("containerd ran no delete of the dead shim's containers");
    // Well within the grace containerd gets (5 s): the watchdog's cgroup kill is done,
    // its deletes must wait.
    let t0 = Instant::now();
    let mut raced = std::collections::BTreeSet::new();
    while t0.elapsed() < Duration::from_millis(1500) {
        for pid in children_of(wd.pid()) {
            let args = procfs_cmdline(pid);
            if args.iter().any(|a| a == "delete") {
                raced.insert(args.join(" "));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    held.resume();
    assert!(
        raced.is_empty(),
        "the watchdog ran deletes while containerd's was running: {raced:#?}"
    );
    assert!(
        pod.pids.iter().all(|p| !running(*p)),
        "the pod's processes run on"
    );
    let entries = wd
        .wait_finished(&pod.address, Duration::from_secs(20))
        .await;
    for id in &pod.all {
        assert!(
            delete_ok(&entries, id),
            "no delete step for {id}: {entries:#?}"
        );
    }
    wait_runtime_cleaned(&fx, &pod, Duration::from_secs(10)).await;
    remove_recovered_pod(&fx, &mut cri, &pod).await;
}

/// The watchdog keeps one probe connection open per shim. A pod removed the normal way
/// must still see its shim exit at once (a shim whose shutdown waited for that idle
/// connection would linger for ttrpc's connection timeout, 5 s), and no incident follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_shims_exit_promptly_when_their_pod_is_removed() {
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let wd = Watchdog::start(&fx, &["--runtime", "io.containerd.runc.v2"]);
    for handler in [Handler::Sturdy, Handler::Runc] {
        let pod = run_pod(
            &fx,
            &mut cri,
            handler,
            &format!("normal-{}", handler.name()),
            1,
        )
        .await;
        wd.wait_watching(&pod.address, pod.shim).await;
        // The idle connection the shim's exit must not wait for is really kept.
        wd.wait_log(
            &["a second probe answered on a kept connection", &pod.address],
            Duration::from_secs(10),
        )
        .await;
        cri.stop_pod(&pod.id).await.expect("StopPodSandbox");
        cri.remove_pod(&pod.id).await.expect("RemovePodSandbox");
        let t0 = Instant::now();
        let exited = until(Duration::from_secs(10), || !running(pod.shim)).await;
        let took = t0.elapsed();
        println!(
            "{} shim exited {} ms after RemovePodSandbox returned",
            handler.name(),
            took.as_millis()
        );
        assert!(exited, "the {} shim runs on", handler.name());
        assert!(
            took < Duration::from_secs(2),
            "the {} shim took {} ms to exit",
            handler.name(),
            took.as_millis()
        );
        wait_nothing_left("the pod", Duration::from_secs(10), || {
            pod_leftovers(&fx, &pod)
        })
        .await;
        assert!(
            wd.incident_entries(&pod.address).is_empty(),
            "a normal removal became an incident: {:#?}",
            wd.incident_entries(&pod.address)
        );
    }
    let log = wd.log();
    assert!(!log.contains("unanswered"), "{log}");
}
