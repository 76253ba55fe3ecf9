//! The few containerd API calls the watchdog makes, each under a deadline, over one
//! channel that is dropped and rebuilt after a transport failure (containerd restarts).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::events::TaskExit;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    containers_client::ContainersClient, DeleteTaskRequest, GetRequest, ListContainersRequest,
    ListNamespacesRequest, ListTasksRequest, PublishRequest, SubscribeRequest,
};
use containerd_client::types::v1::Status;
use containerd_client::types::Envelope;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

use crate::discovery::Runtimes;

/// Deadline of one API call.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// containerd's topic for task exits.
pub const TASK_EXIT_TOPIC: &str = "/tasks/exit";

/// A failed containerd API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be connected.
    #[error("containerd at {socket}: connect: {source}")]
    Connect {
        /// containerd's socket.
        socket: PathBuf,
        /// The error.
        source: tonic::transport::Error,
    },
    /// A call returned an error status.
    #[error("containerd {call} ({namespace}/{id}): {status}")]
    Status {
        /// The call.
        call: &'static str,
        /// Namespace.
        namespace: String,
        /// Container id, "" if none.
        id: String,
        /// The status.
        status: Box<tonic::Status>,
    },
    /// A call did not return in time.
    #[error("containerd {call} ({namespace}/{id}): no answer within {CALL_DEADLINE:?}")]
    Timeout {
        /// The call.
        call: &'static str,
        /// Namespace.
        namespace: String,
        /// Container id, "" if none.
        id: String,
    },
}

/// A task as containerd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// Namespace.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// Init pid.
    pub pid: u32,
    /// Status name (`RUNNING`, `STOPPED`, …).
    pub status: String,
}

/// containerd's runtime names and tasks, as of one listing.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Runtime name per container.
    pub runtimes: Runtimes,
    /// Tasks in every namespace.
    pub tasks: Vec<TaskInfo>,
}

/// Client of one containerd.
#[derive(Debug)]
pub struct Api {
    socket: PathBuf,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

pub(crate) fn with_ns<T>(msg: T, ns: &str) -> Request<T> {
    let mut req = Request::new(msg);
    if let Ok(v) = ns.parse() {
        req.metadata_mut().insert("containerd-namespace", v);
    }
    req
}

/// Name of a task status value.
pub fn status_name(status: i32) -> String {
    Status::try_from(status)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| format!("status {status}"))
}

impl Api {
    /// A client of the containerd listening on `socket` (connected on first use).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            channel: tokio::sync::Mutex::new(None),
        }
    }

    /// containerd's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn channel(&self) -> Result<Channel, ApiError> {
        let mut slot = self.channel.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let connect = containerd_client::connect(&self.socket);
        let channel = match tokio::time::timeout(CALL_DEADLINE, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => {
                return Err(ApiError::Connect {
                    socket: self.socket.clone(),
                    source,
                })
            }
            Err(_) => {
                return Err(ApiError::Timeout {
                    call: "connect",
                    namespace: String::new(),
                    id: String::new(),
                })
            }
        };
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Runs one call under the deadline; a transport failure drops the channel.
    pub(crate) async fn call<T, F>(
        &self,
        call: &'static str,
        ns: &str,
        id: &str,
        f: impl FnOnce(Channel) -> F,
    ) -> Result<T, ApiError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let channel = self.channel().await?;
        match tokio::time::timeout(CALL_DEADLINE, f(channel)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => {
                if matches!(status.code(), Code::Unavailable | Code::Unknown) {
                    *self.channel.lock().await = None;
                }
                Err(ApiError::Status {
                    call,
                    namespace: ns.into(),
                    id: id.into(),
                    status: Box::new(status),
                })
            }
            Err(_) => {
                *self.channel.lock().await = None;
                Err(ApiError::Timeout {
                    call,
                    namespace: ns.into(),
                    id: id.into(),
                })
            }
        }
    }

    /// Every container's runtime name. Unlike listing tasks, this never waits for a shim
    /// (containerd answers from its metadata store), so a hung shim cannot stall it.
    pub async fn runtimes(&self) -> Result<Runtimes, ApiError> {
        let mut runtimes = Runtimes::new();
        for ns in self.namespaces().await? {
            for (id, runtime) in self.containers(&ns).await? {
                runtimes.insert((ns.clone(), id), runtime);
            }
        }
        Ok(runtimes)
    }

    /// containerd's release and build revision (its Version service).
    pub async fn version(&self) -> Result<(String, String), ApiError> {
        let v = self
            .call("version", "", "", |c| async move {
                containerd_client::services::v1::version_client::VersionClient::new(c)
                    .version(())
                    .await
            })
            .await?;
        Ok((v.version, v.revision))
    }

    /// Whether containerd answers (it lists its namespaces within the call deadline).
    pub async fn ping(&self) -> Result<(), ApiError> {
        self.namespaces().await.map(|_| ())
    }

    pub(crate) async fn namespaces(&self) -> Result<Vec<String>, ApiError> {
        Ok(self
            .call("ListNamespaces", "", "", |c| async move {
                NamespacesClient::new(c)
                    .list(ListNamespacesRequest::default())
                    .await
            })
            .await?
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    async fn containers(&self, ns: &str) -> Result<Vec<(String, String)>, ApiError> {
        Ok(self
            .call("ListContainers", ns, "", |c| {
                let req = with_ns(ListContainersRequest::default(), ns);
                async move { ContainersClient::new(c).list(req).await }
            })
            .await?
            .containers
            .into_iter()
            .map(|c| (c.id, c.runtime.map(|r| r.name).unwrap_or_default()))
            .collect())
    }

    /// Every namespace's containers (runtime names) and tasks. Listing tasks asks every
    /// shim for its state, so a hung shim makes this take up to the call deadline.
    pub async fn list(&self) -> Result<Listing, ApiError> {
        let mut listing = Listing::default();
        for ns in self.namespaces().await? {
            for (id, runtime) in self.containers(&ns).await? {
                listing.runtimes.insert((ns.clone(), id), runtime);
            }
            let tasks = self
                .call("ListTasks", &ns, "", |c| {
                    let req = with_ns(ListTasksRequest::default(), &ns);
                    async move { TasksClient::new(c).list(req).await }
                })
                .await?
                .tasks;
            listing.tasks.extend(tasks.into_iter().map(|t| TaskInfo {
                namespace: ns.clone(),
                id: t.id,
                pid: t.pid,
                status: status_name(t.status),
            }));
        }
        Ok(listing)
    }

    /// The task's status, `None` if containerd does not know it (or cannot reach its shim).
    pub async fn task_status(&self, ns: &str, id: &str) -> Result<Option<String>, ApiError> {
        let req = GetRequest {
            container_id: id.into(),
            ..Default::default()
        };
        match self
            .call("GetTask", ns, id, |c| {
                let req = with_ns(req, ns);
                async move { TasksClient::new(c).get(req).await }
            })
            .await
        {
            Ok(resp) => Ok(resp.process.map(|p| status_name(p.status))),
            Err(ApiError::Status { status, .. }) if status.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Publishes a TaskExit for `id` in `ns`, as the shim would have.
    pub async fn publish_exit(
        &self,
        ns: &str,
        id: &str,
        pid: u32,
        exit_status: u32,
        exited_at: SystemTime,
    ) -> Result<(), ApiError> {
        let event = TaskExit {
            container_id: id.into(),
            id: id.into(),
            pid,
            exit_status,
            exited_at: Some(prost_types::Timestamp::from(exited_at)),
        };
        let req = PublishRequest {
            topic: TASK_EXIT_TOPIC.into(),
            event: Some(containerd_client::to_any(&event)),
        };
        self.call("Publish", ns, id, |c| {
            let req = with_ns(req, ns);
            async move { EventsClient::new(c).publish(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Deletes the task (containerd then forgets it); not found counts as done.
    pub async fn delete_task(&self, ns: &str, id: &str) -> Result<(), ApiError> {
        let req = DeleteTaskRequest {
            container_id: id.into(),
        };
        match self
            .call("DeleteTask", ns, id, |c| {
                let req = with_ns(req, ns);
                async move { TasksClient::new(c).delete(req).await }
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(ApiError::Status { status, .. }) if status.code() == Code::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// containerd's task events (`/tasks/…`) in every namespace, from now on.
    ///
    /// No deadline: containerd sends the response headers only with the first event, so
    /// this resolves when the first task event arrives (and the stream yields it).
    pub async fn subscribe_tasks(&self) -> Result<Streaming<Envelope>, ApiError> {
        let channel = self.channel().await?;
        let req = SubscribeRequest {
            filters: vec![r#"topic~="^/tasks/""#.into()],
        };
        match EventsClient::new(channel).subscribe(req).await {
            Ok(resp) => Ok(resp.into_inner()),
            Err(status) => {
                *self.channel.lock().await = None;
                Err(ApiError::Status {
                    call: "Subscribe",
                    namespace: String::new(),
                    id: String::new(),
                    status: Box::new(status),
                })
            }
        }
    }
}

/// The container id an envelope's task event is about (`container_id`, field 1 of every
/// containerd task event).
pub fn event_container_id(env: &Envelope) -> Option<String> {
    use prost::Message;
    #[derive(Clone, PartialEq, prost::Message)]
    struct ContainerIdOnly {
        #[prost(string, tag = "1")]
        container_id: String,
    }
    let any = env.event.as_ref()?;
    ContainerIdOnly::decode(any.value.as_slice())
        .ok()
        .map(|e| e.container_id)
        .filter(|s| !s.is_empty())
}
