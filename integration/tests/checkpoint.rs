//! Checkpoint and restore through containerd's Tasks API, for both shims: a counter
//! checkpointed with `exit` and restored goes on from where it was, not from 0.
//!
//! CRIU must work on the host for that. Where `criu check` fails (Debian 12's CRIU 3.17
//! cannot parse the vDSO layout of kernels since 6.13, which split `[vvar]` from
//! `[vvar_vclock]`) the counter test says so and checks the failure instead: Checkpoint
//! fails with CRIU's reason and the container goes on. A missing CRIU is a
//! FailedPrecondition naming it, for sturdy (the Go shim lets runc fail: Unknown).

use std::time::Duration;

use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::{
    CheckpointTaskRequest, CreateRequest as CreateLease, CreateTaskRequest,
    DeleteRequest as DeleteLease, DeleteTaskRequest, GetContainerRequest, GetRequest, StartRequest,
    WaitRequest,
};
use containerd_client::types::v1::Status;
use sturdy_integration::ctr::runtime_flags;
use sturdy_integration::until;
use sturdy_integration::{parity_tests, Containerd, Handler, BUSYBOX_IMAGE};
use tonic::Request;

const T: Duration = Duration::from_secs(60);
/// Media type containerd gives the CRIU images it stores for a checkpoint.
const CRIU_TAR: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
/// Type name of the checkpoint options both shims take.
const CHECKPOINT_OPTIONS: &str = "containerd.runc.v1.CheckpointOptions";
/// Appends the next number to /tmp/log every 50 ms; the count lives in the shell.
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i >> /tmp/log; sleep 0.05; done";

/// Why CRIU cannot checkpoint here, or None when `criu check` passes.
fn criu_unusable() -> Option<String> {
    let out = match std::process::Command::new("criu").arg("check").output() {
        Ok(out) => out,
        Err(e) => return Some(format!("no criu on PATH ({e})")),
    };
    if out.status.success() {
        return None;
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = std::process::Command::new("criu")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).replace('\n', " "))
        .unwrap_or_default();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    Some(format!(
        "`criu check` fails ({}; kernel {}): {}",
        version.trim(),
        kernel.trim(),
        errors.join(" | ")
    ))
}

/// The lines of the counter's log, read through init's root.
fn log_of(pid: u32) -> Vec<u64> {
    numbers(&std::fs::read_to_string(format!("/proc/{pid}/root/tmp/log")).unwrap_or_default())
}

fn numbers(text: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The counter's log read through the task's rootfs mount (there until Tasks.Delete),
/// once init is gone.
fn log_in_rootfs(fx: &Containerd, id: &str) -> Vec<u64> {
    let path = fx
        .state_dir()
        .join("io.containerd.runtime.v2.task")
        .join(fx.namespace())
        .join(id)
        .join("rootfs/tmp/log");
    numbers(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A request in the fixture's namespace, under `lease` when given (so the checkpoint
/// content containerd stores is not collected before the restore uses it).
fn req<T>(fx: &Containerd, lease: Option<&str>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    let md = r.metadata_mut();
    md.insert("containerd-namespace", fx.namespace().parse().unwrap());
    if let Some(l) = lease {
        md.insert("containerd-lease", l.parse().unwrap());
    }
    r
}

async fn task(fx: &Containerd, id: &str) -> (Status, u32) {
    let mut tasks = fx.client().await.expect("client").tasks();
    let get = GetRequest {
        container_id: id.into(),
        ..Default::default()
    };
    let p = tasks
        .get(req(fx, None, get))
        .await
        .expect("Tasks.Get")
        .into_inner()
        .process
        .expect("process");
    (p.status(), p.pid)
}

/// containerd.runc.v1.CheckpointOptions with `exit` set (field 1, varint).
fn exit_options() -> prost_types::Any {
    prost_types::Any {
        type_url: CHECKPOINT_OPTIONS.into(),
        value: vec![0x08, 0x01],
    }
}

/// `ctr run -d` of the counter through `flags`, then its pid once it has counted.
async fn run_counter(fx: &Containerd, id: &str, flags: Vec<String>) -> u32 {
    let fifo = fx.fifo_dir().to_string_lossy().into_owned();
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--fifo-dir".into(), fifo];
    args.extend(flags);
    args.extend([BUSYBOX_IMAGE.to_string(), id.into()]);
    args.extend(["/bin/sh", "-c", COUNTER].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fx.ctr_in(fx.namespace(), &args, T)
        .await
        .expect("ctr run -d");
    let (_, pid) = task(fx, id).await;
    assert!(
        until(T, || log_of(pid).len() >= 3).await,
        "the counter never counted"
    );
    pid
}

async fn remove(fx: &Containerd, id: &str, pid: u32) {
    let ns = fx.namespace();
    fx.ctr_in(ns, &["task", "kill", "-s", "9", id], T)
        .await
        .expect("kill");
    assert!(until(T, || !sturdy_integration::cleanup::pid_alive(pid as i32)).await);
    fx.ctr_in(ns, &["task", "delete", id], T)
        .await
        .expect("task delete");
    fx.ctr_in(ns, &["containers", "rm", id], T)
        .await
        .expect("containers rm");
}

/// Where CRIU does not work: Checkpoint fails, saying why, and the counter goes on.
async fn checkpoint_fails_and_the_container_goes_on(fx: &Containerd, h: Handler, pid: u32) {
    let mut tasks = fx.client().await.expect("client").tasks();
    let cp = CheckpointTaskRequest {
        container_id: "counter".into(),
        options: Some(exit_options()),
        ..Default::default()
    };
    let err = tasks
        .checkpoint(req(fx, None, cp))
        .await
        .expect_err("Checkpoint succeeded although CRIU does not work here");
    eprintln!(
        "{h}: Checkpoint failed as it must: {:?} {}",
        err.code(),
        err.message()
    );
    assert_ne!(err.code(), tonic::Code::Unimplemented, "{err}");
    assert!(err.message().to_lowercase().contains("criu"), "{err}");
    let (status, still) = task(fx, "counter").await;
    assert_eq!((status, still), (Status::Running, pid));
    let seen = log_of(pid).len();
    assert!(
        until(T, || log_of(pid).len() > seen + 2).await,
        "the counter stopped"
    );
}

parity_tests! {
    async fn checkpoint_exit_and_restore_continue_the_count(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let pid = run_counter(&fx, "counter", runtime_flags(&fx, h)).await;
        if let Some(why) = criu_unusable() {
            test_skip::skip(format!("checkpoint/restore of a running counter: {why}; testing the failure instead"));
            checkpoint_fails_and_the_container_goes_on(&fx, h, pid).await;
            remove(&fx, "counter", pid).await;
            return;
        }
        let client = fx.client().await.expect("client");
        let mut tasks = client.tasks();
        let lease = format!("checkpoint-test-{}", std::process::id());
        client
            .leases()
            .create(req(&fx, None, CreateLease { id: lease.clone(), ..Default::default() }))
            .await
            .expect("create lease");
        assert!(until(T, || log_of(pid).len() >= 20).await, "the counter is too slow");

        let cp = CheckpointTaskRequest {
            container_id: "counter".into(),
            options: Some(exit_options()),
            ..Default::default()
        };
        let descriptors = tasks
            .checkpoint(req(&fx, Some(&lease), cp))
            .await
            .expect("Checkpoint")
            .into_inner()
            .descriptors;
        let images = descriptors
            .into_iter()
            .find(|d| d.media_type == CRIU_TAR)
            .expect("no CRIU images among the checkpoint's descriptors");
        // With `exit` CRIU ends the container after the dump, and the exit is reported.
        let wait = WaitRequest { container_id: "counter".into(), ..Default::default() };
        let exited = tokio::time::timeout(T, tasks.wait(req(&fx, None, wait)))
            .await
            .expect("Wait after the checkpoint never returned")
            .expect("Wait")
            .into_inner();
        let counted = log_in_rootfs(&fx, "counter");
        eprintln!("{h}: checkpointed at {} counts, exit status {}", counted.len(), exited.exit_status);
        assert_eq!(exited.exit_status, 137, "CRIU kills what it dumped");
        let del = DeleteTaskRequest { container_id: "counter".into() };
        tasks.delete(req(&fx, None, del)).await.expect("Tasks.Delete");

        let container = client
            .containers()
            .get(req(&fx, None, GetContainerRequest { id: "counter".into() }))
            .await
            .expect("Containers.Get")
            .into_inner()
            .container
            .expect("container");
        let mounts = client
            .snapshots()
            .mounts(req(&fx, None, MountsRequest {
                snapshotter: container.snapshotter.clone(),
                key: container.snapshot_key.clone(),
            }))
            .await
            .expect("Snapshots.Mounts")
            .into_inner()
            .mounts;
        let create = CreateTaskRequest {
            container_id: "counter".into(),
            rootfs: mounts,
            checkpoint: Some(images),
            ..Default::default()
        };
        let created = tasks.create(req(&fx, Some(&lease), create)).await.expect("Create from the checkpoint");
        eprintln!("{h}: Create from the checkpoint answered pid {}", created.into_inner().pid);
        let start = StartRequest { container_id: "counter".into(), ..Default::default() };
        let restored = tasks.start(req(&fx, None, start)).await.expect("Start (restore)").into_inner().pid;
        assert_ne!(restored, 0);
        assert_eq!(task(&fx, "counter").await, (Status::Running, restored));
        let last = *counted.last().expect("counted nothing");
        assert!(
            until(T, || log_of(restored).last().is_some_and(|n| *n > last + 5)).await,
            "the restored counter did not go on past {last}: {:?}",
            log_of(restored).last()
        );
        // One count after the other, from 1 and never again from 1.
        let log = log_of(restored);
        let expected: Vec<u64> = (1..=log.len() as u64).collect();
        assert_eq!(log, expected, "the count restarted or skipped");

        remove(&fx, "counter", restored).await;
        client
            .leases()
            .delete(req(&fx, None, DeleteLease { id: lease, sync: true }))
            .await
            .expect("delete lease");
    }
}

/// sturdy looks for CRIU before runc runs: a Checkpoint without it is a FailedPrecondition
/// that names what is missing, and the container goes on. (The Go shim runs runc, which
/// fails: Unknown; docs/shim.md lists the difference.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sturdy_checkpoint_without_criu_is_a_failed_precondition() {
    let fx = Containerd::start().await.expect("start containerd");
    let missing = fx.dir().join("no-criu-here").join("criu");
    let options = fx.dir().join("sturdy-no-criu.toml");
    let base = std::fs::read_to_string(fx.sturdy_options_path()).expect("sturdy options");
    std::fs::write(
        &options,
        format!("{base}CriuPath = {:?}\n", missing.display().to_string()),
    )
    .expect("write options");
    let flags = vec![
        "--runtime".to_string(),
        Handler::Sturdy.runtime_type().into(),
        "--runtime-config-path".into(),
        options.display().to_string(),
    ];
    let pid = run_counter(&fx, "counter", flags).await;
    let mut tasks = fx.client().await.expect("client").tasks();
    let cp = CheckpointTaskRequest {
        container_id: "counter".into(),
        options: Some(exit_options()),
        ..Default::default()
    };
    let err = tasks
        .checkpoint(req(&fx, None, cp))
        .await
        .expect_err("Checkpoint without CRIU succeeded");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("CRIU not found")
            && err.message().contains(&missing.display().to_string()),
        "{err}"
    );
    assert_eq!(task(&fx, "counter").await, (Status::Running, pid));
    remove(&fx, "counter", pid).await;
}
