//! Task events forwarded to containerd over its TTRPC address.
//!
//! The publisher queues events (bounded, retried) in the order they are handed in, so
//! the order in which the service calls these methods is the order containerd sees.

use std::time::SystemTime;

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim_protos::protobuf::{well_known_types::timestamp::Timestamp, MessageDyn};
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context::Context;

use crate::io::StdioPaths;

/// Converts a wall-clock time to a protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// Publishes task events for one namespace.
pub struct Events {
    publisher: Option<RemotePublisher>,
    namespace: String,
}

impl Events {
    /// Events sent through `publisher` (None drops them, for tests).
    pub fn new(publisher: Option<RemotePublisher>, namespace: &str) -> Self {
        Self {
            publisher,
            namespace: namespace.to_string(),
        }
    }

    async fn send(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        if let Err(e) = publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            log::error!("publish {topic}: {e}");
        }
    }

    /// `/tasks/create`.
    pub async fn created(&self, id: &str, bundle: &str, pid: i32, stdio: &StdioPaths) {
        let ev = TaskCreate {
            container_id: id.to_string(),
            bundle: bundle.to_string(),
            io: Some(TaskIO {
                stdin: stdio.stdin.clone(),
                stdout: stdio.stdout.clone(),
                stderr: stdio.stderr.clone(),
                terminal: stdio.terminal,
                ..Default::default()
            })
            .into(),
            pid: pid as u32,
            ..Default::default()
        };
        self.send(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await
    }

    /// `/tasks/start`.
    pub async fn started(&self, id: &str, pid: i32) {
        let ev = TaskStart {
            container_id: id.to_string(),
            pid: pid as u32,
            ..Default::default()
        };
        self.send(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
            .await
    }

    /// `/tasks/exit` for the process `exec_id` (the container id for init).
    pub async fn exited(&self, id: &str, exec_id: &str, pid: i32, status: u32, at: SystemTime) {
        let ev = TaskExit {
            container_id: id.to_string(),
            id: exec_id.to_string(),
            pid: pid as u32,
            exit_status: status,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        };
        self.send(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev)).await
    }

    /// `/tasks/delete`, for init only.
    pub async fn deleted(&self, id: &str, pid: i32, status: u32, at: SystemTime) {
        let ev = TaskDelete {
            container_id: id.to_string(),
            id: id.to_string(),
            pid: pid as u32,
            exit_status: status,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        };
        self.send(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await
    }

    /// `/tasks/exec-added`.
    pub async fn exec_added(&self, id: &str, exec_id: &str) {
        let ev = TaskExecAdded {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.send(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await
    }

    /// `/tasks/exec-started`.
    pub async fn exec_started(&self, id: &str, exec_id: &str, pid: i32) {
        let ev = TaskExecStarted {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            pid: pid as u32,
            ..Default::default()
        };
        self.send(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
            .await
    }
}
