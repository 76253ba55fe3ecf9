//! Pods of the node tests: one busybox container through a RuntimeClass, and waiting for
//! what the API server reports of them.

use std::time::Duration;

use serde_json::{json, Value};

use super::{condition, Kubectl, POD_IMAGE};
use crate::error::{Error, Result};
use crate::{cleanup, until_some, Containerd};

/// A pod `name` of one busybox container `c` running `sh -c script` through RuntimeClass
/// `class`, bound to the node (no scheduling wait), no service-account token.
pub fn busybox_pod(name: &str, class: &str, script: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "runtimeClassName": class,
            "nodeName": super::NODE_NAME,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "c",
                "image": POD_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
            }],
        },
    })
}

/// The pod object, if the API server has it.
pub async fn get(kubectl: &Kubectl, name: &str) -> Option<Value> {
    kubectl.get_json(&["pod", name]).await.ok()
}

/// Whether the pod is Running with its Ready condition true.
pub fn running_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && condition(pod, "Ready").is_some_and(|(s, _, _)| s == "True")
}

/// Waits up to `limit` until `f` holds for the pod object; the object then.
pub async fn wait_for(
    kubectl: &Kubectl,
    name: &str,
    limit: Duration,
    f: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let f = &f;
    until_some(limit, move || async move {
        let pod = get(kubectl, name).await?;
        f(&pod).then_some(pod)
    })
    .await
}

/// Waits up to `limit` until the API server no longer has the pod.
pub async fn wait_gone(kubectl: &Kubectl, name: &str, limit: Duration) -> bool {
    until_some(limit, move || async move {
        let out = kubectl
            .raw(&["get", "pod", name, "-o", "name"])
            .await
            .ok()?;
        (out.exit_code != 0 && out.stderr.contains("NotFound")).then_some(())
    })
    .await
    .is_some()
}

/// `restartCount` of the pod's first container.
pub fn restart_count(pod: &Value) -> u64 {
    pod["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

/// The CRI sandbox id of the pod with `uid` on `containerd`.
pub async fn sandbox_of(containerd: &Containerd, uid: &str) -> Result<String> {
    use k8s_cri::v1::{ListPodSandboxRequest, PodSandboxFilter};
    let mut cri = containerd.cri().await?;
    let filter = PodSandboxFilter {
        label_selector: [("io.kubernetes.pod.uid".to_string(), uid.to_string())].into(),
        ..Default::default()
    };
    let items = cri
        .runtime
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await
        .map_err(crate::error::rpc("ListPodSandbox"))?
        .into_inner()
        .items;
    items
        .into_iter()
        .find(|s| s.state == k8s_cri::v1::PodSandboxState::SandboxReady as i32)
        .map(|s| s.id)
        .ok_or_else(|| Error::Kube(format!("no ready sandbox for pod {uid}")))
}

/// The shim serving sandbox `id`: its PID and binary name. Shims name containerd's socket
/// and their id on their command line.
pub fn shim_of(containerd: &Containerd, id: &str) -> Option<(i32, String)> {
    cleanup::pids_referencing(containerd.socket())
        .into_iter()
        .filter(|pid| *pid != containerd.pid())
        .find_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let named = args
                .windows(2)
                .any(|w| w[0] == b"-id" && w[1] == id.as_bytes());
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            let exe = exe.file_name()?.to_string_lossy().into_owned();
            (named && exe.starts_with("containerd-shim")).then_some((pid, exe))
        })
}
