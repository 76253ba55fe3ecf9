//! Shim lifecycle parity (issue 4): every expectation holds for the Go shim (`runc`) and
//! for `sturdy` alike. Containers are started with ctr and then driven through
//! containerd's Tasks API, the way containerd clients and the CRI plugin drive a shim.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use containerd_client::services::v1::{
    DeleteTaskRequest, KillRequest, ListPidsRequest, WaitRequest,
};
use containerd_client::with_namespace;
use sturdy_integration::ctr::runtime_flags;
use sturdy_integration::k8s_cri::v1::{
    ContainerState, RemovePodSandboxRequest, StopPodSandboxRequest,
};
use sturdy_integration::{
    cleanup, container_config, parity_tests, until, Containerd, Generation, Handler, BUSYBOX_IMAGE,
};
use tonic::{Code, Request};

const T: Duration = Duration::from_secs(60);

/// `ctr run -d` a busybox container through `h`.
async fn run_detached(fx: &Containerd, h: Handler, id: &str, cmd: &[&str]) {
    let fifo = fx.fifo_dir().to_string_lossy().into_owned();
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--fifo-dir".into(), fifo];
    args.extend(runtime_flags(fx, h));
    args.push(BUSYBOX_IMAGE.into());
    args.push(id.into());
    args.extend(cmd.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fx.ctr_in(fx.namespace(), &args, T)
        .await
        .expect("ctr run -d");
}

async fn remove_container(fx: &Containerd, id: &str) {
    fx.ctr_in(fx.namespace(), &["containers", "rm", id], T)
        .await
        .expect("ctr containers rm");
}

/// Shim processes serving this containerd right now.
fn shim_pids(fx: &Containerd) -> Vec<i32> {
    fx.footprint()
        .shim_pids
        .into_iter()
        .filter(|p| cleanup::pid_alive(*p))
        .collect()
}

/// Reassembles the lines of a CRI log file: "<time> <stream> <P|F> <content>", where P
/// marks a partial line continued by the next entry.
fn cri_log_lines(log: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut partial = String::new();
    for raw in log.lines() {
        let mut parts = raw.splitn(4, ' ');
        let (_, stream, tag) = (parts.next(), parts.next(), parts.next());
        assert_eq!(stream, Some("stdout"), "{raw}");
        partial.push_str(parts.next().unwrap_or_default());
        if tag == Some("F") {
            lines.push(std::mem::take(&mut partial));
        }
    }
    lines
}

/// `/tasks/*` events for container `id` from `ctr events` output, as (topic, process id).
fn task_events(output: &str, id: &str) -> Vec<(String, String)> {
    let needle = format!("\"container_id\":\"{id}\"");
    output
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            let topic = l.split_whitespace().find(|t| t.starts_with("/tasks/"))?;
            let json = &l[l.find('{')?..];
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            let pid = v.get("id").and_then(|i| i.as_str()).unwrap_or_default();
            Some((topic.to_string(), pid.to_string()))
        })
        .collect()
}

parity_tests! {
    /// Events reach containerd in the order it requires: create, start, exec-added,
    /// exec-started, the exec's exit before init's exit, and delete for init only.
    async fn events_in_order(h: Handler) {
        if h == Handler::Runc && Generation::from_env().is_ok_and(|g| g.is_v2()) {
            test_skip::skip!("containerd 2.x's Go shim loses /tasks/delete now and then (2 of 12 runs on 2.1, seen on 2.2; the oracle's flaw; docs/testing.md)");
        }
        let fx = Containerd::start().await.expect("start containerd");
        let mut events = tokio::process::Command::new("ctr")
            .args(["-a", &fx.socket().to_string_lossy(), "events"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("ctr events");
        let mut stdout = events.stdout.take().unwrap();
        let collected = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        });
        tokio::time::sleep(Duration::from_millis(500)).await;

        run_detached(&fx, h, "evts", &["/bin/sleep", "300"]).await;
        let exec = {
            let args: Vec<String> = [
                "-a", &fx.socket().to_string_lossy(), "-n", fx.namespace(),
                "tasks", "exec", "--exec-id", "e1", "evts", "/bin/sleep", "300",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            tokio::spawn(async move { sturdy_integration::ctr::run_command("ctr", &args, T).await })
        };
        let mut tasks = fx.client().await.expect("client").tasks();
        let end = Instant::now() + T;
        loop {
            let req = ListPidsRequest { container_id: "evts".into() };
            let n = tasks
                .list_pids(with_namespace!(req, fx.namespace()))
                .await
                .expect("ListPids")
                .into_inner()
                .processes
                .len();
            if n >= 2 {
                break;
            }
            assert!(Instant::now() < end, "exec never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let req = KillRequest { container_id: "evts".into(), exec_id: String::new(), signal: 9, all: false };
        tasks.kill(with_namespace!(req, fx.namespace())).await.expect("Kill");
        let req = WaitRequest { container_id: "evts".into(), exec_id: String::new() };
        tasks.wait(with_namespace!(req, fx.namespace())).await.expect("Wait");
        let exec_out = exec.await.expect("join").expect("ctr tasks exec");
        assert_eq!(exec_out.exit_code, 137, "exec: {}", exec_out.stderr);
        let req = DeleteTaskRequest { container_id: "evts".into() };
        tasks.delete(with_namespace!(req, fx.namespace())).await.expect("Delete");
        remove_container(&fx, "evts").await;

        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = events.start_kill();
        let _ = events.wait().await;
        let output = collected.await.expect("events output");
        let got = task_events(&output, "evts");
        let want: Vec<(String, String)> = [
            ("/tasks/create", ""),
            ("/tasks/start", ""),
            ("/tasks/exec-added", ""),
            ("/tasks/exec-started", ""),
            ("/tasks/exit", "e1"),
            ("/tasks/exit", "evts"),
            ("/tasks/delete", ""),
        ]
        .iter()
        .map(|(t, i)| (t.to_string(), i.to_string()))
        .collect();
        assert_eq!(got, want, "events:\n{output}");
    }

    /// Kill with SIGTERM and SIGKILL, Wait for the status, list Pids, Delete the task; a
    /// second Kill of a finished process is NotFound.
    async fn kill_wait_pids_delete(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        for (id, signal, want) in [("term", 15u32, 143u32), ("kill", 9, 137)] {
            run_detached(&fx, h, id, &["/bin/sh", "-c", "trap 'exit 143' TERM; while :; do sleep 1; done"]).await;
            let pid = fx.task_process(fx.namespace(), id).await.expect("Tasks.Get").1;
            assert!(pid > 1, "init pid {pid}");

            let mut tasks = fx.client().await.expect("client").tasks();
            let req = ListPidsRequest { container_id: id.into() };
            let pids: BTreeSet<u32> = tasks
                .list_pids(with_namespace!(req, fx.namespace()))
                .await
                .expect("ListPids")
                .into_inner()
                .processes
                .iter()
                .map(|p| p.pid)
                .collect();
            assert!(pids.contains(&pid), "{pids:?} lacks init {pid}");

            let waiter = {
                let mut tasks = tasks.clone();
                let ns = fx.namespace().to_string();
                let req = WaitRequest { container_id: id.into(), exec_id: String::new() };
                tokio::spawn(async move { tasks.wait(with_namespace!(req, ns)).await })
            };
            let req = KillRequest { container_id: id.into(), exec_id: String::new(), signal, all: false };
            tasks.kill(with_namespace!(req, fx.namespace())).await.expect("Kill");
            let waited = tokio::time::timeout(T, waiter)
                .await
                .expect("Wait returned")
                .expect("join")
                .expect("Wait")
                .into_inner();
            assert_eq!(waited.exit_status, want, "{id}");

            let req = KillRequest { container_id: id.into(), exec_id: String::new(), signal: 9, all: false };
            let err = tasks
                .kill(with_namespace!(req, fx.namespace()))
                .await
                .expect_err("kill of a finished process");
            assert_eq!(err.code(), Code::NotFound, "{err}");

            let req = DeleteTaskRequest { container_id: id.into() };
            let deleted = tasks
                .delete(with_namespace!(req, fx.namespace()))
                .await
                .expect("Delete")
                .into_inner();
            assert_eq!(deleted.exit_status, want);
            assert_eq!(deleted.pid, pid);
            assert!(!cleanup::pid_alive(pid as i32), "init {pid} survived");
            remove_container(&fx, id).await;
        }
        assert!(until(Duration::from_secs(10), || shim_pids(&fx).is_empty()).await, "shims left: {:?}", shim_pids(&fx));
    }

    /// A process that exits before anyone waits still reports its status to a later Wait.
    async fn exits_immediately(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let out = fx.ctr_run(h, "quick", &["/bin/true"]).await.expect("ctr run");
        assert_eq!(out.exit_code, 0, "stderr: {}", out.stderr);

        run_detached(&fx, h, "gone", &["/bin/sh", "-c", "exit 9"]).await;
        let pid = fx.task_process(fx.namespace(), "gone").await.expect("Tasks.Get").1;
        assert!(until(T, || !cleanup::pid_alive(pid as i32)).await, "init {pid} never exited");
        let mut tasks = fx.client().await.expect("client").tasks();
        let req = WaitRequest { container_id: "gone".into(), exec_id: String::new() };
        let waited = tokio::time::timeout(T, tasks.wait(with_namespace!(req, fx.namespace())))
            .await
            .expect("Wait returned")
            .expect("Wait")
            .into_inner();
        assert_eq!(waited.exit_status, 9);
        let req = DeleteTaskRequest { container_id: "gone".into() };
        let deleted = tasks.delete(with_namespace!(req, fx.namespace())).await.expect("Delete").into_inner();
        assert_eq!(deleted.exit_status, 9);
        remove_container(&fx, "gone").await;
    }

    /// A missing entrypoint is a clear error and leaves no task, shim or mount behind.
    async fn missing_entrypoint(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let out = fx.ctr_run(h, "nope", &["/bin/does-not-exist"]).await.expect("ctr run");
        assert_ne!(out.exit_code, 0);
        assert!(
            out.stderr.contains("no such file or directory") || out.stderr.contains("not found"),
            "unclear error: {}",
            out.stderr
        );
        let tasks = fx.ctr_in(fx.namespace(), &["tasks", "ls", "-q"], T).await.expect("tasks ls");
        assert!(tasks.stdout.trim().is_empty(), "tasks left: {}", tasks.stdout);
        let _ = fx.ctr_raw(fx.namespace(), &["containers", "rm", "nope"], T).await;
        assert!(until(Duration::from_secs(10), || shim_pids(&fx).is_empty()).await, "shims left: {:?}", shim_pids(&fx));
        let fp = fx.footprint();
        let rootfs_mounts: Vec<_> = fp.mounts.iter().filter(|m| m.ends_with("rootfs")).collect();
        assert!(rootfs_mounts.is_empty(), "rootfs still mounted: {rootfs_mounts:?}");
    }

    /// The container's init holds only its stdio: no fd of the shim leaks into it.
    async fn init_inherits_only_stdio(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        run_detached(&fx, h, "fds", &["/bin/sleep", "300"]).await;
        let pid = fx.task_process(fx.namespace(), "fds").await.expect("Tasks.Get").1;
        // Until runc's init has exec'd the entrypoint it still holds its own fds.
        assert!(
            until(Duration::from_secs(10), || {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
            })
            .await,
            "init {pid} never became sleep"
        );
        let fds: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("read fds")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let want: BTreeSet<String> = ["0", "1", "2"].iter().map(|s| s.to_string()).collect();
        assert_eq!(fds, want);
        let mut tasks = fx.client().await.expect("client").tasks();
        let req = KillRequest { container_id: "fds".into(), exec_id: String::new(), signal: 9, all: false };
        tasks.kill(with_namespace!(req, fx.namespace())).await.expect("Kill");
        let req = WaitRequest { container_id: "fds".into(), exec_id: String::new() };
        tasks.wait(with_namespace!(req, fx.namespace())).await.expect("Wait");
        let req = DeleteTaskRequest { container_id: "fds".into() };
        tasks.delete(with_namespace!(req, fx.namespace())).await.expect("Delete");
        remove_container(&fx, "fds").await;
    }

    /// A pod's sandbox and both its containers share one shim process.
    async fn one_shim_per_pod(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let mut cri = fx.cri().await.expect("cri client");
        let pod_config = fx.pod_config("pair");
        let pod = cri.run_pod(h, &pod_config).await.expect("RunPodSandbox");
        for name in ["one", "two"] {
            let c = cri
                .create_container(&pod, container_config(name, &["/bin/sleep", "3600"]), &pod_config)
                .await
                .expect("CreateContainer");
            cri.start_container(&c).await.expect("StartContainer");
        }
        let shims = shim_pids(&fx);
        assert_eq!(shims.len(), 1, "expected one shim for the pod, found {shims:?}");
        let addresses: BTreeSet<String> = cleanup::bundles(&fx.state_dir())
            .into_iter()
            .filter_map(|b| b.address)
            .collect();
        assert_eq!(addresses.len(), 1, "{addresses:?}");
        cri.stop_pod(&pod).await.expect("StopPodSandbox");
        cri.remove_pod(&pod).await.expect("RemovePodSandbox");
        assert!(until(Duration::from_secs(10), || shim_pids(&fx).is_empty()).await, "shims left: {:?}", shim_pids(&fx));
    }

    /// Stop and Remove of a pod are idempotent; an unknown pod is NotFound.
    async fn stop_remove_idempotent(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let mut cri = fx.cri().await.expect("cri client");
        let pod_config = fx.pod_config("twice");
        let pod = cri.run_pod(h, &pod_config).await.expect("RunPodSandbox");
        let c = cri
            .create_container(&pod, container_config("main", &["/bin/sleep", "3600"]), &pod_config)
            .await
            .expect("CreateContainer");
        cri.start_container(&c).await.expect("StartContainer");
        cri.stop_pod(&pod).await.expect("StopPodSandbox");
        cri.stop_pod(&pod).await.expect("second StopPodSandbox");
        cri.remove_pod(&pod).await.expect("RemovePodSandbox");
        cri.remove_pod(&pod).await.expect("second RemovePodSandbox");
        let stop_unknown = cri
            .runtime
            .stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: "no-such-pod".into() })
            .await;
        // containerd 1.7 and later answer it with success (tests/generations.rs pins that).
        if fx.generation() == sturdy_integration::Generation::V1_6 {
            let err = stop_unknown.expect_err("StopPodSandbox of an unknown pod");
            assert_eq!(err.code(), Code::NotFound, "{err}");
        }
        // containerd treats removing an unknown sandbox as done; both shims agree.
        cri.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: "no-such-pod".into() })
            .await
            .expect("RemovePodSandbox of an unknown pod");
    }
}

/// 10 MiB written to stdout reaches the CRI log file complete and in order.
async fn logs_complete_10mib(h: Handler) {
    const LAST: u64 = 1_500_000; // `seq 1 1500000` prints 10.4 MiB
    let fx = Containerd::start().await.expect("start containerd");
    let mut cri = fx.cri().await.expect("cri client");
    let pod_config = fx.pod_config("logs");
    let pod = cri.run_pod(h, &pod_config).await.expect("RunPodSandbox");
    let last = LAST.to_string();
    let c = cri
        .create_container(
            &pod,
            container_config("seq", &["/bin/seq", "1", &last]),
            &pod_config,
        )
        .await
        .expect("CreateContainer");
    cri.start_container(&c).await.expect("StartContainer");
    let end = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let s = cri.container_status(&c).await.expect("ContainerStatus");
        if s.state == ContainerState::ContainerExited as i32 || Instant::now() > end {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.state, ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 0);
    // CRI's log writer may still be catching up when the status says Exited: wait
    // (bounded) until the last line arrived, then check that nothing is missing.
    let end = Instant::now() + Duration::from_secs(60);
    let lines = loop {
        let log = std::fs::read_to_string(&status.log_path).expect("read container log");
        let lines = cri_log_lines(&log);
        if lines.last().map(String::as_str) == Some(last.as_str()) || Instant::now() > end {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let first_wrong = lines
        .iter()
        .enumerate()
        .find(|(i, l)| **l != (*i as u64 + 1).to_string())
        .map(|(i, _)| i);
    assert_eq!(
        lines.len() as u64,
        LAST,
        "lines lost through {h}; first line out of sequence at index {first_wrong:?}"
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &(i as u64 + 1).to_string(), "line {i} out of order");
    }
    cri.stop_pod(&pod).await.expect("StopPodSandbox");
    cri.remove_pod(&pod).await.expect("RemovePodSandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_complete_10mib_sturdy() {
    logs_complete_10mib(Handler::Sturdy).await
}

/// The same expectation against containerd 1.6's Go shim. It passes on an idle machine but
/// loses the tail of the log when the machine is busy (seen with two CPU hogs: 1,240 to
/// 11,992 of 1,500,000 lines, always the last ones, in every run). It answers Wait while
/// output is still in its pipes and in the FIFO, and the CRI plugin tears the task's IO
/// down right after Wait. sturdy answers Wait only once containerd has read everything
/// (or its reader stopped), and passed every run under the same load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "oracle flaw: containerd 1.6's Go shim drops the log tail under load"]
async fn logs_complete_10mib_runc() {
    logs_complete_10mib(Handler::Runc).await
}
