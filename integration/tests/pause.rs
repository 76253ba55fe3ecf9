//! Pause and Resume through containerd's Tasks API: the container's processes really stop
//! (its cgroup is frozen: v1's `freezer.state` FROZEN, v2's `cgroup.events` `frozen 1`) and
//! really continue, for both shims.

use std::time::Duration;

use containerd_client::services::v1::{PauseTaskRequest, ResumeTaskRequest};
use containerd_client::types::v1::Status;
use containerd_client::with_namespace;
use sturdy_integration::cgroup::{cgroup_of, freezer_state};
use sturdy_integration::ctr::runtime_flags;
use sturdy_integration::until;
use sturdy_integration::{parity_tests, Containerd, BUSYBOX_IMAGE};
use tonic::Request;

const T: Duration = Duration::from_secs(60);

/// The counter the container writes every 50 ms, read through its root.
fn counter(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/root/tmp/n"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

parity_tests! {
    async fn pause_and_resume(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        let fifo = fx.fifo_dir().to_string_lossy().into_owned();
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--fifo-dir".into(), fifo];
        args.extend(runtime_flags(&fx, h));
        args.extend(fx.ctr_cgroup_flags(h, "counter"));
        args.extend([BUSYBOX_IMAGE.to_string(), "counter".into()]);
        args.extend(["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fx.ctr_in(fx.namespace(), &args, T).await.expect("ctr run -d");
        let (_, pid) = fx.task_process(fx.namespace(), "counter").await.expect("Tasks.Get");
        assert!(until(T, || counter(pid).is_some()).await, "counter never written");
        let Some(freezer) = cgroup_of(pid, "freezer") else {
            test_skip::skip!("neither a cgroup v1 freezer nor cgroup v2's cgroup.freeze for pid {pid} here");
        };
        let state = || freezer_state(&freezer);
        assert_eq!(state().as_deref(), Some("THAWED"), "{freezer:?}");

        let mut tasks = fx.client().await.expect("client").tasks();
        let req = PauseTaskRequest { container_id: "counter".into() };
        tasks.pause(with_namespace!(req, fx.namespace())).await.expect("Pause");
        assert_eq!(state().as_deref(), Some("FROZEN"), "{freezer:?}");
        let frozen = counter(pid);
        assert!(!until(Duration::from_millis(500), || counter(pid) != frozen).await, "the counter went on while paused");
        assert_eq!(fx.task_process(fx.namespace(), "counter").await.expect("Tasks.Get").0, Status::Paused);

        let req = ResumeTaskRequest { container_id: "counter".into() };
        tasks.resume(with_namespace!(req, fx.namespace())).await.expect("Resume");
        assert_eq!(state().as_deref(), Some("THAWED"), "{freezer:?}");
        assert_eq!(fx.task_process(fx.namespace(), "counter").await.expect("Tasks.Get").0, Status::Running);
        let resumed = counter(pid).unwrap_or_default();
        assert!(until(T, || counter(pid).unwrap_or_default() > resumed + 2).await, "counter did not continue");

        fx.ctr_in(fx.namespace(), &["task", "kill", "-s", "9", "counter"], T).await.expect("kill");
        assert!(until(T, || !sturdy_integration::cleanup::pid_alive(pid as i32)).await);
        fx.ctr_in(fx.namespace(), &["task", "delete", "counter"], T).await.expect("task delete");
        fx.ctr_in(fx.namespace(), &["containers", "rm", "counter"], T).await.expect("containers rm");
    }
}
