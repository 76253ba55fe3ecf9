//! Pids through containerd's Tasks API (issue 9): every process of the container, and an
//! exec's entry carries its exec id (`containerd.runc.v1.ProcessDetails`), as `ctr task ps`
//! shows it; for both shims.

use std::time::Duration;

use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetRequest, KillRequest, ListPidsRequest,
    StartRequest, WaitRequest,
};
use containerd_client::with_namespace;
use prost::Message;
use sturdy_integration::cleanup::pid_alive;
use sturdy_integration::until;
use sturdy_integration::{parity_tests, Containerd};
use tonic::Request;

const T: Duration = Duration::from_secs(60);

/// `containerd.runc.v1.ProcessDetails`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProcessDetails {
    #[prost(string, tag = "1")]
    exec_id: String,
}

parity_tests! {
    /// Two execs run beside init: Pids lists all three, the execs with their ids, init
    /// without details. A finished exec is gone from the list.
    async fn pids_name_exec_ids(h: Handler) {
        let fx = Containerd::start().await.expect("start containerd");
        fx.ctr_run_detached(h, "box", &["/bin/sleep", "600"]).await.expect("ctr run -d");
        let ns = fx.namespace().to_string();
        let client = fx.client().await.expect("client");
        let mut tasks = client.tasks();
        let spec = fx.container_spec(&ns, "box").await.expect("the spec");

        let pid_of = |exec_id: &str| GetRequest { container_id: "box".into(), exec_id: exec_id.into() };
        let init = tasks.get(with_namespace!(pid_of(""), ns)).await.expect("Tasks.Get").into_inner().process.expect("process").pid;
        let mut execs = Vec::new();
        for exec_id in ["first", "second"] {
            let mut process = spec["process"].clone();
            process["args"] = serde_json::json!(["/bin/sleep", "600"]);
            process["terminal"] = serde_json::json!(false);
            let req = ExecProcessRequest {
                container_id: "box".into(),
                exec_id: exec_id.into(),
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&process).unwrap(),
                }),
                ..Default::default()
            };
            tasks.exec(with_namespace!(req, ns)).await.expect("Tasks.Exec");
            let req = StartRequest { container_id: "box".into(), exec_id: exec_id.into() };
            let pid = tasks.start(with_namespace!(req, ns)).await.expect("Tasks.Start").into_inner().pid;
            execs.push((exec_id, pid));
        }

        let req = ListPidsRequest { container_id: "box".into() };
        let listed = tasks.list_pids(with_namespace!(req, ns)).await.expect("Tasks.ListPids").into_inner().processes;
        eprintln!("{h}: {listed:?}");
        let mut seen: Vec<(u32, Option<String>)> = listed
            .iter()
            .map(|p| {
                let exec_id = p.info.as_ref().map(|a| {
                    assert_eq!(a.type_url, "containerd.runc.v1.ProcessDetails", "{h}");
                    ProcessDetails::decode(a.value.as_slice()).expect("ProcessDetails").exec_id
                });
                (p.pid, exec_id)
            })
            .collect();
        seen.sort();
        let mut want = vec![(init, None)];
        want.extend(execs.iter().map(|(id, pid)| (*pid, Some(id.to_string()))));
        want.sort();
        assert_eq!(seen, want, "{h}");

        // The first exec ends and is deleted: it leaves the list.
        let (first, first_pid) = execs[0];
        let req = KillRequest { container_id: "box".into(), exec_id: first.into(), signal: 9, all: false };
        tasks.kill(with_namespace!(req, ns)).await.expect("Tasks.Kill");
        let req = WaitRequest { container_id: "box".into(), exec_id: first.into() };
        tokio::time::timeout(T, tasks.wait(with_namespace!(req, ns))).await.expect("exec never ended").expect("Tasks.Wait");
        let req = DeleteProcessRequest { container_id: "box".into(), exec_id: first.into() };
        tasks.delete_process(with_namespace!(req, ns)).await.expect("Tasks.DeleteProcess");
        let req = ListPidsRequest { container_id: "box".into() };
        let listed = tasks.list_pids(with_namespace!(req, ns)).await.expect("Tasks.ListPids").into_inner().processes;
        assert!(listed.iter().all(|p| p.pid != first_pid), "{h}: {listed:?}");
        assert_eq!(listed.iter().filter(|p| p.info.is_some()).count(), 1, "{h}: {listed:?}");

        fx.ctr_in(&ns, &["task", "kill", "-a", "-s", "9", "box"], T).await.expect("kill");
        assert!(until(T, || !pid_alive(init as i32)).await);
        fx.ctr_in(&ns, &["task", "delete", "box"], T).await.expect("task delete");
        fx.ctr_in(&ns, &["containers", "rm", "box"], T).await.expect("containers rm");
    }
}
