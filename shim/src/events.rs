//! Task events forwarded to containerd over its TTRPC address.
//!
//! Events go through a bounded queue to one forwarding task, so the order in which the
//! service calls these methods is the order containerd sees, a slow or restarting
//! containerd never blocks an RPC handler, and a lost connection is re-established and
//! the event retried with backoff. Envelopes are built with fixed type names instead of
//! protobuf reflection, which would build descriptor tables on the heap of every shim.

use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim_protos::protobuf::{
    well_known_types::any::Any, well_known_types::timestamp::Timestamp, Message,
};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context::Context;
use tokio::sync::mpsc;

use crate::io::StdioPaths;

/// Events waiting to be forwarded; beyond this the newest are dropped (and logged).
const QUEUE: usize = 1024;
/// Tries per event before it is given up.
const ATTEMPTS: u32 = 10;
/// Longest pause between tries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Deadline of one Forward call.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

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
    tx: Option<mpsc::Sender<Envelope>>,
    namespace: String,
}

impl Events {
    /// Events forwarded to containerd's TTRPC socket at `address`.
    pub fn connect(address: &str, namespace: &str) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(forward_loop(address.to_string(), rx));
        Self {
            tx: Some(tx),
            namespace: namespace.to_string(),
        }
    }

    /// Events that go nowhere (unit tests).
    pub fn disabled(namespace: &str) -> Self {
        Self {
            tx: None,
            namespace: namespace.to_string(),
        }
    }

    async fn send(&self, topic: &str, type_name: &str, event: &dyn EncodeEvent) {
        let Some(tx) = &self.tx else { return };
        let value = match event.encode() {
            Ok(v) => v,
            Err(e) => {
                log::error!("encode {topic}: {e}");
                return;
            }
        };
        let envelope = Envelope {
            timestamp: Some(timestamp(SystemTime::now())).into(),
            namespace: self.namespace.clone(),
            topic: topic.to_string(),
            event: Some(Any {
                type_url: type_name.to_string(),
                value,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        if let Err(e) = tx.try_send(envelope) {
            log::error!("event queue: dropping {topic}: {e}");
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
        self.send(
            topics::TASK_CREATE_EVENT_TOPIC,
            "containerd.events.TaskCreate",
            &ev,
        )
        .await
    }

    /// `/tasks/start`.
    pub async fn started(&self, id: &str, pid: i32) {
        let ev = TaskStart {
            container_id: id.to_string(),
            pid: pid as u32,
            ..Default::default()
        };
        self.send(
            topics::TASK_START_EVENT_TOPIC,
            "containerd.events.TaskStart",
            &ev,
        )
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
        self.send(
            topics::TASK_EXIT_EVENT_TOPIC,
            "containerd.events.TaskExit",
            &ev,
        )
        .await
    }

    /// `/tasks/delete`, for init only.
    pub async fn deleted(&self, id: &str, pid: i32, status: u32, at: SystemTime) {
        // The exec id stays empty for init, as containerd's Go shim sends it.
        let ev = TaskDelete {
            container_id: id.to_string(),
            pid: pid as u32,
            exit_status: status,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        };
        self.send(
            topics::TASK_DELETE_EVENT_TOPIC,
            "containerd.events.TaskDelete",
            &ev,
        )
        .await
    }

    /// `/tasks/exec-added`.
    pub async fn exec_added(&self, id: &str, exec_id: &str) {
        let ev = TaskExecAdded {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.send(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            "containerd.events.TaskExecAdded",
            &ev,
        )
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
        self.send(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            "containerd.events.TaskExecStarted",
            &ev,
        )
        .await
    }
}

/// A message that can be put into an envelope (object-safe `write_to_bytes`).
trait EncodeEvent: Send + Sync {
    fn encode(&self) -> Result<Vec<u8>, String>;
}

impl<M: Message> EncodeEvent for M {
    fn encode(&self) -> Result<Vec<u8>, String> {
        self.write_to_bytes().map_err(|e| e.to_string())
    }
}

async fn connect(address: &str) -> Result<EventsClient, String> {
    let addr = if address.contains("://") {
        address.to_string()
    } else {
        format!("unix://{address}")
    };
    Client::connect(&addr)
        .await
        .map(EventsClient::new)
        .map_err(|e| e.to_string())
}

/// Forwards envelopes one by one, in order, reconnecting and retrying with backoff.
async fn forward_loop(address: String, mut rx: mpsc::Receiver<Envelope>) {
    let mut client: Option<EventsClient> = None;
    while let Some(envelope) = rx.recv().await {
        let topic = envelope.topic.clone();
        let req = ForwardRequest {
            envelope: Some(envelope).into(),
            ..Default::default()
        };
        let mut backoff = Duration::from_millis(50);
        let mut sent = false;
        for attempt in 1..=ATTEMPTS {
            if client.is_none() {
                match connect(&address).await {
                    Ok(c) => client = Some(c),
                    Err(e) => log::warn!("connect to containerd {address}: {e}"),
                }
            }
            if let Some(c) = &client {
                let ctx = Context {
                    timeout_nano: FORWARD_TIMEOUT.as_nanos() as i64,
                    ..Default::default()
                };
                match c.forward(ctx, &req).await {
                    Ok(_) => {
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        log::warn!("forward {topic} (attempt {attempt}): {e}");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if !sent {
            log::error!("gave up forwarding {topic} after {ATTEMPTS} attempts");
        }
    }
}
