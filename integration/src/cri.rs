//! CRI (k8s `runtime.v1`) helpers over the same socket as the containerd API.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode, NamespaceOption, PodSandbox,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatus, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::Channel;

use crate::containerd::Containerd;
use crate::ctr::Output;
use crate::error::{rpc, Error, Result};
use crate::image::BUSYBOX_IMAGE;
use crate::Handler;

/// CRI runtime service client over an existing channel.
pub fn runtime_client(channel: Channel) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(channel)
}

/// A container config running `command` in the busybox image.
pub fn container_config(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX_IMAGE.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// Both CRI services of one containerd instance.
#[derive(Debug, Clone)]
pub struct Cri {
    /// RuntimeService (pods, containers, exec).
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub images: ImageServiceClient<Channel>,
    netns: Arc<Mutex<BTreeSet<PathBuf>>>,
}

impl Containerd {
    /// CRI clients for this instance.
    pub async fn cri(&self) -> Result<Cri> {
        let channel = self.channel().await?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            netns: self.netns_registry(),
        })
    }

    /// A pod config whose cgroups and logs stay inside this instance's name space and dir.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let log_dir = self.dir().join("pod-logs").join(name);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("{name}-{}", self.suffix()),
                namespace: "sturdy".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// [`Self::pod_config`] in the host's network namespace: no CNI, so no limit from the
    /// fixture's /28 of addresses.
    pub fn host_network_pod_config(&self, name: &str) -> PodSandboxConfig {
        let mut cfg = self.pod_config(name);
        // The host's UTS namespace too: runc refuses a hostname without a private one.
        cfg.hostname.clear();
        if let Some(linux) = cfg.linux.as_mut() {
            linux.security_context = Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        cfg
    }
}

impl Cri {
    /// RunPodSandbox through `handler`; records the pod's netns for cleanup.
    pub async fn run_pod(&mut self, handler: Handler, config: &PodSandboxConfig) -> Result<String> {
        self.run_pod_with(handler.name(), config).await
    }

    /// RunPodSandbox through a runtime handler given by name (e.g. an extra runtime of the
    /// fixture); records the pod's netns for cleanup.
    pub async fn run_pod_with(
        &mut self,
        handler: &str,
        config: &PodSandboxConfig,
    ) -> Result<String> {
        let id = self
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            })
            .await
            .map_err(rpc("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id;
        if let Ok(Some(ns)) = self.pod_netns(&id).await {
            self.netns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(ns);
        }
        Ok(id)
    }

    /// The pod's network namespace path, from the verbose status' runtime spec.
    pub async fn pod_netns(&mut self, pod_id: &str) -> Result<Option<PathBuf>> {
        let resp = self
            .runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.into(),
                verbose: true,
            })
            .await
            .map_err(rpc("PodSandboxStatus"))?
            .into_inner();
        let Some(info) = resp.info.get("info") else {
            return Ok(None);
        };
        let info: serde_json::Value = serde_json::from_str(info)?;
        Ok(crate::cleanup::network_ns_path(&info["runtimeSpec"]))
    }

    /// PodSandboxStatus.
    pub async fn pod_status(&mut self, pod_id: &str) -> Result<PodSandboxStatus> {
        self.runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.into(),
                verbose: false,
            })
            .await
            .map_err(rpc("PodSandboxStatus"))?
            .into_inner()
            .status
            .ok_or_else(|| Error::Unexpected("PodSandboxStatus without status".into()))
    }

    /// The pod's IPv4 address.
    pub async fn pod_ip(&mut self, pod_id: &str) -> Result<Ipv4Addr> {
        let status = self.pod_status(pod_id).await?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        ip.parse()
            .map_err(|_| Error::Unexpected(format!("pod {pod_id} has no IPv4 address: {ip:?}")))
    }

    /// ListPodSandbox (all pods).
    pub async fn list_pods(&mut self) -> Result<Vec<PodSandbox>> {
        Ok(self
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .map_err(rpc("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    /// CreateContainer in a pod.
    pub async fn create_container(
        &mut self,
        pod_id: &str,
        config: ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String> {
        Ok(self
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .map_err(rpc("CreateContainer"))?
            .into_inner()
            .container_id)
    }

    /// StartContainer.
    pub async fn start_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .map_err(rpc("StartContainer"))?;
        Ok(())
    }

    /// ExecSync with a timeout; a non-zero exit code is a normal [`Output`].
    ///
    /// The call itself is bounded too (the timeout plus a minute): containerd 1.6 waits
    /// for an exec's output EOF without a deadline, and a test must fail, not hang, when
    /// a shim never delivers it.
    pub async fn exec_sync(&mut self, id: &str, cmd: &[&str], timeout: Duration) -> Result<Output> {
        let limit = timeout + Duration::from_secs(60);
        let call = self.runtime.exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs() as i64,
        });
        let resp = tokio::time::timeout(limit, call)
            .await
            .map_err(|_| Error::Timeout {
                command: format!("CRI ExecSync {id} {}", cmd.join(" ")),
                secs: limit.as_secs(),
            })?
            .map_err(rpc("ExecSync"))?
            .into_inner();
        Ok(Output {
            stdout: String::from_utf8_lossy(&resp.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&resp.stderr).into_owned(),
            exit_code: resp.exit_code,
        })
    }

    /// ContainerStatus.
    pub async fn container_status(&mut self, id: &str) -> Result<ContainerStatus> {
        self.runtime
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(rpc("ContainerStatus"))?
            .into_inner()
            .status
            .ok_or_else(|| Error::Unexpected("ContainerStatus without status".into()))
    }

    /// StopContainer with a grace period in seconds.
    pub async fn stop_container(&mut self, id: &str, timeout_secs: i64) -> Result<()> {
        self.runtime
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: timeout_secs,
            })
            .await
            .map_err(rpc("StopContainer"))?;
        Ok(())
    }

    /// RemoveContainer.
    pub async fn remove_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .map_err(rpc("RemoveContainer"))?;
        Ok(())
    }

    /// StopPodSandbox.
    pub async fn stop_pod(&mut self, pod_id: &str) -> Result<()> {
        self.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await
            .map_err(rpc("StopPodSandbox"))?;
        Ok(())
    }

    /// RemovePodSandbox.
    pub async fn remove_pod(&mut self, pod_id: &str) -> Result<()> {
        self.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await
            .map_err(rpc("RemovePodSandbox"))?;
        Ok(())
    }
}
