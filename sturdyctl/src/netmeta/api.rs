//! The containerd calls the sandbox checks make: CRI's sandbox containers with their
//! extensions, and the one update the repair does.

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::{
    Container, GetContainerRequest, ListContainersRequest, UpdateContainerRequest,
};
use prost_types::{Any, FieldMask};
use tonic::Code;

use crate::containerd::{with_ns, Api, ApiError};

/// CRI's label marking its containers' kind.
pub const KIND_LABEL: &str = "io.cri-containerd.kind";

/// A CRI sandbox container as containerd stores it.
#[derive(Debug, Clone)]
pub struct SandboxContainer {
    /// Namespace.
    pub namespace: String,
    /// Container (sandbox) id.
    pub id: String,
    /// Its runtime name.
    pub runtime: String,
    /// CRI's metadata extension, if present.
    pub extension: Option<Any>,
}

impl SandboxContainer {
    fn from(namespace: &str, c: Container) -> Self {
        let mut c = c;
        Self {
            namespace: namespace.to_string(),
            runtime: c
                .runtime
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            extension: c.extensions.remove(super::cri::EXTENSION),
            id: c.id,
        }
    }
}

impl Api {
    /// Every CRI sandbox container in every namespace.
    pub async fn sandbox_containers(&self) -> Result<Vec<SandboxContainer>, ApiError> {
        let mut out = Vec::new();
        for ns in self.namespaces().await? {
            let req = ListContainersRequest {
                filters: vec![format!("labels.\"{KIND_LABEL}\"==sandbox")],
            };
            let list = self
                .call("ListContainers", &ns, "", |c| {
                    let req = with_ns(req, &ns);
                    async move { ContainersClient::new(c).list(req).await }
                })
                .await?;
            out.extend(
                list.containers
                    .into_iter()
                    .map(|c| SandboxContainer::from(&ns, c)),
            );
        }
        Ok(out)
    }

    /// Container `id`, `None` if containerd does not know it.
    pub async fn sandbox_container(
        &self,
        ns: &str,
        id: &str,
    ) -> Result<Option<SandboxContainer>, ApiError> {
        let req = GetContainerRequest { id: id.into() };
        match self
            .call("GetContainer", ns, id, |c| {
                let req = with_ns(req, ns);
                async move { ContainersClient::new(c).get(req).await }
            })
            .await
        {
            Ok(resp) => Ok(resp.container.map(|c| SandboxContainer::from(ns, c))),
            Err(ApiError::Status { status, .. }) if status.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces extension `key` of container `id` and nothing else: the update mask names
    /// that one extension, so containerd keeps every other field as stored.
    pub async fn update_extension(
        &self,
        ns: &str,
        id: &str,
        key: &str,
        value: Any,
    ) -> Result<(), ApiError> {
        let req = UpdateContainerRequest {
            container: Some(Container {
                id: id.into(),
                extensions: [(key.to_string(), value)].into_iter().collect(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec![format!("extensions.{key}")],
            }),
        };
        self.call("UpdateContainer", ns, id, |c| {
            let req = with_ns(req, ns);
            async move { ContainersClient::new(c).update(req).await }
        })
        .await
        .map(|_| ())
    }
}
