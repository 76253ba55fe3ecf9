//! The runtimes' command line as the client uses it, against the real runc and crun:
//! not-found classification for every command, and signals that reach the container.
//!
//! Needs root, runc and busybox; skipped (with a message) otherwise.

mod common;

use std::time::{Duration, Instant};

use common::{
    create_and_start, process, read_to_string, require_runc, unique_id, wait_status, Bundle,
    ContainerGuard, Root,
};
use runc_client::{ExecOpts, Runc};

/// Every command on an id the runtime has no state for, each expected to be `NotFound`.
async fn assert_every_command_not_found(runtime: &Runc, label: &str, has_events: bool) {
    let id = "no-such-container";
    let resources = oci_spec::runtime::LinuxResources::default();
    let attached = ExecOpts::default();
    let detached = ExecOpts {
        detach: true,
        ..Default::default()
    };
    let results: Vec<(&str, runc_client::Result<()>)> = vec![
        ("state", runtime.state(id).await.map(drop)),
        ("delete", runtime.delete(id, false).await),
        ("kill", runtime.kill(id, 9, false).await),
        ("kill --all", runtime.kill(id, 9, true).await),
        ("start", runtime.start(id).await),
        ("ps", runtime.ps(id).await.map(drop)),
        ("pause", runtime.pause(id).await),
        ("resume", runtime.resume(id).await),
        ("update", runtime.update(id, &resources).await),
        (
            "exec",
            runtime.exec(id, &process(&["true"]), &attached).await,
        ),
        (
            "exec --detach",
            runtime.exec(id, &process(&["true"]), &detached).await,
        ),
    ];
    let mut results = results;
    if has_events {
        results.push(("events --stats", runtime.stats(id).await.map(drop)));
        let mut stream = runtime.events(id, Duration::from_secs(1)).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("events stream stalled");
        results.push((
            "events",
            match first {
                Some(r) => r.map(drop),
                None => Ok(()),
            },
        ));
    }
    for (what, result) in results {
        match result {
            Err(e) => {
                assert!(e.is_not_found(), "{label}: {what}: {e:?}");
                assert_eq!(e.id(), Some(id), "{label}: {what}");
            }
            Ok(()) => panic!("{label}: {what} succeeded on a missing container"),
        }
    }
    // Forced deletes of nothing succeed in both runtimes (runc 1.1.5, crun 1.8.1).
    runtime.delete(id, true).await.unwrap();
}

#[tokio::test]
async fn runc_not_found_for_every_command_with_and_without_log() {
    require_runc!();
    let root = Root::new();
    assert_every_command_not_found(&root.client(), "runc, log on stderr", true).await;
    let log = root.path().join("shared-log.json");
    let logged = root.client_with(|c| c.log = Some(log.clone()));
    assert_every_command_not_found(&logged, "runc, --log file", true).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("container does not exist"), "{text}");
}

#[tokio::test]
async fn crun_not_found_for_every_command() {
    require_runc!();
    let root = Root::new();
    let Some(crun) = root.crun() else {
        return;
    };
    // crun 1.8.1 has no `events` command.
    assert_every_command_not_found(&crun, "crun", false).await;
}

/// runc 1.1.5 takes `kill <id> 0` as "is init alive" and delivers real-time signals 34..=64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_passes_signal_zero_and_realtime_signals() {
    require_runc!();
    let root = Root::new();
    let runc = root.client();
    let id = unique_id("sig");
    let script = "trap 'echo got34 >> /tmp/sig' 34; trap 'echo got64 >> /tmp/sig' 64; \
                  echo > /tmp/ready; while true; do sleep 0.05; done";
    let bundle = Bundle::new(&id, &["sh", "-c", script], |_| {});
    let _guard = ContainerGuard::new(&runc, &id);
    create_and_start(&runc, &id, &bundle).await;
    let tmp = bundle.rootfs().join("tmp");
    let wait_file = |name: &'static str, want: &'static str| {
        let path = tmp.join(name);
        async move {
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.contains(want) || Instant::now() > end {
                    return text;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // The traps are set once the script got that far.
    wait_file("ready", "\n").await;
    runc.kill(&id, 0, false).await.unwrap();
    runc.kill(&id, 0, true).await.unwrap();
    runc.kill(&id, 34, false).await.unwrap();
    assert!(wait_file("sig", "got34").await.contains("got34"));
    runc.kill(&id, 64, false).await.unwrap();
    assert!(wait_file("sig", "got64").await.contains("got64"));
    assert_eq!(runc.state(&id).await.unwrap().status, "running");

    runc.kill(&id, libc::SIGKILL, true).await.unwrap();
    assert_eq!(wait_status(&runc, &id, "stopped").await, "stopped");
    // Signal 0 to a stopped container is an error, and it is not "not found".
    let err = runc.kill(&id, 0, false).await.unwrap_err();
    assert!(!err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains("container not running"), "{err}");
    runc.delete(&id, false).await.unwrap();
}

/// The real runc reads the spec from the private directory in the bundle, which is gone after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_spec_in_the_bundle_leaves_nothing_behind() {
    require_runc!();
    let root = Root::new();
    let runc = root.client();
    let id = unique_id("spec");
    let bundle = Bundle::new(&id, &["sleep", "1000"], |_| {});
    let _guard = ContainerGuard::new(&runc, &id);
    create_and_start(&runc, &id, &bundle).await;
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(bundle.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    let mut spec = serde_json::to_value(process(&["sh", "-c", "echo \"$TOKEN\""])).unwrap();
    spec["env"] = serde_json::json!(["PATH=/bin", "TOKEN=s3cret-token"]);
    let spec: oci_spec::runtime::Process = serde_json::from_value(spec).unwrap();
    let out = runc_client::Pipe::new().unwrap();
    let opts = ExecOpts {
        io: runc_client::ProcessIo {
            stdout: Some(out.write.try_clone().unwrap()),
            ..Default::default()
        },
        spec_dir: Some(bundle.path().to_path_buf()),
        ..Default::default()
    };
    runc.exec(&id, &spec, &opts).await.unwrap();
    drop(opts);
    drop(out.write);
    assert_eq!(read_to_string(out.read), "s3cret-token\n");
    assert_eq!(listing(), before, "the exec left files in the bundle");
    runc.delete(&id, true).await.unwrap();
}
