//! The fixture must leave nothing behind, however a test ends.

use std::sync::{Arc, Mutex};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sturdy_integration::{container_config, Containerd, Footprint, Handler};

/// Start a pod with a container plus a detached ctr container, so every kind of resource the
/// fixture can cause exists: shims, container processes, overlay and shm mounts, a netns, the
/// bridge, cgroups and shim sockets.
async fn populate(fx: &Containerd) -> Footprint {
    let mut cri = fx.cri().await.expect("cri client");
    let pod_config = fx.pod_config("doomed");
    let pod = cri
        .run_pod(Handler::Runc, &pod_config)
        .await
        .expect("RunPodSandbox");
    let ctr = cri
        .create_container(
            &pod,
            container_config("sleeper", &["/bin/sleep", "3600"]),
            &pod_config,
        )
        .await
        .expect("CreateContainer");
    cri.start_container(&ctr).await.expect("StartContainer");

    fx.ctr_run_detached(Handler::Runc, "detached", &["/bin/sleep", "3600"])
        .await
        .expect("ctr run -d");

    let fp = fx.footprint();
    // Guard against a vacuous pass: the footprint must actually contain things to clean.
    assert!(fp.shim_pids.len() >= 2, "shims: {:?}", fp.shim_pids);
    assert!(
        fp.container_pids.len() >= 3,
        "containers: {:?}",
        fp.container_pids
    );
    assert!(!fp.netns.is_empty(), "no netns recorded");
    assert!(fp.mounts.len() >= 3, "mounts: {:?}", fp.mounts);
    assert!(!fp.cgroups.is_empty(), "no cgroups found");
    assert!(!fp.shim_sockets.is_empty(), "no shim sockets found");
    // CRI's loopback network is shared by every fixture: its results must still be ours.
    assert!(
        fp.cni_results.iter().any(|f| f
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("cni-loopback-"))),
        "no cni-loopback result found: {:?}",
        fp.cni_results
    );
    assert!(
        fp.leftovers().len() > 5,
        "footprint should be alive: {:?}",
        fp.leftovers()
    );
    fp
}

/// A test that panics mid-way still gets everything torn down by the fixture's Drop.
#[test]
fn drop_cleans_up_after_panic() {
    let seen: Arc<Mutex<Option<Footprint>>> = Arc::default();
    let seen2 = seen.clone();
    let result = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let fx = Containerd::start().await.expect("start containerd");
            *seen2.lock().unwrap() = Some(populate(&fx).await);
            panic!("deliberate panic with a live pod");
        })
    })
    .join();
    assert!(result.is_err(), "the child thread should have panicked");
    let fp = seen
        .lock()
        .unwrap()
        .take()
        .expect("footprint recorded before the panic");
    assert_eq!(fp.leftovers(), Vec::<String>::new());
}

/// Even with containerd SIGKILLed (no CRI to ask), Drop finds and removes what it caused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_cleans_up_after_containerd_was_killed() {
    let fx = Containerd::start().await.expect("start containerd");
    let fp = populate(&fx).await;
    kill(Pid::from_raw(fx.pid()), Signal::SIGKILL).expect("kill containerd");
    drop(fx);
    assert_eq!(fp.leftovers(), Vec::<String>::new());
}

/// Marks the re-executed test binary as the doomed fixture owner.
const CHILD_ENV: &str = "STURDY_TEST_DOOMED_CHILD";

/// Not a test of its own: the body of the child process `stale_fixture_is_reaped` kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for stale_fixture_of_a_killed_process_is_reaped"]
async fn doomed_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let fx = Containerd::start().await.expect("start containerd");
    let fp = populate(&fx).await;
    println!("FOOTPRINT {}", serde_json::to_string(&fp).unwrap());
    tokio::time::sleep(std::time::Duration::from_secs(300)).await;
}

/// A test process SIGKILLed mid-test (no Drop at all) leaves a fixture behind; the next
/// fixture start reaps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fixture_of_a_killed_process_is_reaped() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "doomed_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("re-exec test binary");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("FOOTPRINT ").map(String::from))
    })
    .await
    .unwrap();
    // Kill our own child before asserting, so a failed assertion cannot leave it running.
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    let fp: Footprint = serde_json::from_str(&line.expect("child printed its footprint")).unwrap();
    assert!(
        !fp.leftovers().is_empty(),
        "the killed child should have leaked"
    );

    let fx = Containerd::builder()
        .without_images()
        .start()
        .await
        .expect("start containerd");
    // A fixture started concurrently by another test may be the one reaping (it then holds
    // the dead fixture's lock and ours skips it), so allow that reaper time to finish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !fp.leftovers().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(fp.leftovers(), Vec::<String>::new());
    drop(fx);
}

/// Drop needs no runtime: a fixture outliving the runtime that started it still cleans up,
/// and so does one dropped inside a current-thread runtime (plain `#[tokio::test]`).
#[test]
fn drop_works_outside_and_inside_a_current_thread_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (outside, fp_outside) = rt.block_on(async {
        let fx = Containerd::start().await.expect("start containerd");
        let fp = populate(&fx).await;
        (fx, fp)
    });
    drop(rt);
    drop(outside);
    assert_eq!(fp_outside.leftovers(), Vec::<String>::new());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fp_inside = rt.block_on(async {
        let fx = Containerd::start().await.expect("start containerd");
        populate(&fx).await
        // fx drops here, on the runtime's only thread.
    });
    assert_eq!(fp_inside.leftovers(), Vec::<String>::new());
}
