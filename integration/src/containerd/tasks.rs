//! What containerd runs for a task, looked up: its OCI spec, its init process, its bundle
//! and the shim serving it.

use std::path::PathBuf;

use super::Containerd;
use crate::cleanup;
use crate::error::{Error, Result};
use crate::Handler;

impl Containerd {
    /// What containerd's introspection API reports for the runtime `runtime_path` (a type
    /// like `io.containerd.sturdy.v2`, or a path) given `options`: the shim's `-info`.
    pub async fn runtime_info(
        &self,
        runtime_path: &str,
        options: Option<prost_types::Any>,
    ) -> Result<containerd_client::types::RuntimeInfo> {
        use containerd_client::services::v1::introspection_client::IntrospectionClient;
        use prost::Message;
        let request = containerd_client::types::RuntimeRequest {
            runtime_path: runtime_path.into(),
            options,
        };
        let req = containerd_client::services::v1::PluginInfoRequest {
            r#type: "io.containerd.runtime.v2".into(),
            id: "task".into(),
            options: Some(prost_types::Any {
                type_url: "containerd.types.RuntimeRequest".into(),
                value: request.encode_to_vec(),
            }),
        };
        let extra = IntrospectionClient::new(self.channel().await?)
            .plugin_info(req)
            .await
            .map_err(crate::error::rpc("PluginInfo"))?
            .into_inner()
            .extra
            .ok_or_else(|| Error::Unexpected(format!("{runtime_path}: no RuntimeInfo")))?;
        if !extra.type_url.ends_with("containerd.types.RuntimeInfo") {
            return Err(Error::Unexpected(format!(
                "{runtime_path}: PluginInfo answered {}",
                extra.type_url
            )));
        }
        containerd_client::types::RuntimeInfo::decode(extra.value.as_slice())
            .map_err(|e| Error::Unexpected(format!("{runtime_path}: RuntimeInfo: {e}")))
    }

    /// The OCI spec containerd keeps for container `id` in namespace `ns`.
    pub async fn container_spec(&self, ns: &str, id: &str) -> Result<serde_json::Value> {
        let req = containerd_client::services::v1::GetContainerRequest { id: id.into() };
        let spec = self
            .client()
            .await?
            .containers()
            .get(in_namespace(ns, req)?)
            .await
            .map_err(crate::error::rpc("Containers.Get"))?
            .into_inner()
            .container
            .and_then(|c| c.spec)
            .ok_or_else(|| Error::Unexpected(format!("Containers.Get {id}: no spec")))?;
        Ok(serde_json::from_slice(&spec.value)?)
    }

    /// Status and pid of the init process of task `id` in containerd namespace `ns`.
    pub async fn task_process(
        &self,
        ns: &str,
        id: &str,
    ) -> Result<(containerd_client::types::v1::Status, u32)> {
        let req = containerd_client::services::v1::GetRequest {
            container_id: id.into(),
            ..Default::default()
        };
        let p = self
            .client()
            .await?
            .tasks()
            .get(in_namespace(ns, req)?)
            .await
            .map_err(crate::error::rpc("Tasks.Get"))?
            .into_inner()
            .process
            .ok_or_else(|| Error::Unexpected(format!("Tasks.Get {id}: no process")))?;
        Ok((p.status(), p.pid))
    }

    /// The task bundle of container `id` in namespace `ns`, if containerd has one.
    pub fn bundle(&self, ns: &str, id: &str) -> Option<cleanup::Bundle> {
        let mut b = cleanup::bundles(&self.state_dir())
            .into_iter()
            .find(|b| b.namespace == ns && b.id == id)?;
        if b.shim_pid.is_none() {
            b.shim_pid = self.shim_pid(ns, id);
        }
        Some(b)
    }

    /// The binary a task of `handler` must be served by (resolved through symlinks).
    pub fn expected_shim_exe(&self, handler: Handler) -> PathBuf {
        let bin = match handler {
            Handler::Runc if self.sturdy_as_runc_v2 => self.shim_bin.clone(),
            Handler::Runc => self.bins.go_shim.clone(),
            Handler::Sturdy => self.shim_bin.clone(),
        };
        std::fs::canonicalize(&bin).unwrap_or(bin)
    }

    /// The executable of the shim serving task `id` in `ns`, if one is running.
    pub fn shim_exe(&self, ns: &str, id: &str) -> Option<PathBuf> {
        let pid = self.bundle(ns, id)?.shim_pid?;
        std::fs::read_link(format!("/proc/{pid}/exe")).ok()
    }

    /// PID of the shim started for task `id` in `ns`, found by its command line (the Go
    /// shim keeps no `shim.pid` in the bundle). Grouped CRI containers share their sandbox's
    /// shim, so pass the sandbox id for those.
    pub fn shim_pid(&self, ns: &str, id: &str) -> Option<i32> {
        cleanup::pids_referencing(&self.socket)
            .into_iter()
            .filter(|p| *p != self.pid)
            .find(|p| {
                let raw = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
                let has = |flag: &str, value: &str| {
                    args.windows(2)
                        .any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes())
                };
                has("-namespace", ns) && has("-id", id)
            })
    }
}

/// `msg` as a request to containerd namespace `ns`.
fn in_namespace<T>(ns: &str, msg: T) -> Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    let ns_value = ns
        .parse()
        .map_err(|_| Error::Unexpected(format!("namespace {ns}")))?;
    req.metadata_mut().insert("containerd-namespace", ns_value);
    Ok(req)
}
