//! Task events forwarded to containerd over its TTRPC address.
//!
//! Events go through one bounded outbox to one forwarding task, so the order in which
//! the shim publishes is the order containerd sees, and publishing never blocks or
//! awaits. The forwarder connects without blocking (a wedged containerd whose listen
//! backlog is full must not freeze the shim's only runtime thread), with a deadline on
//! every connect and Forward. While containerd is unreachable the head event is retried
//! with backoff for as long as it takes; when the outbox is full, exit events push out
//! the oldest other event instead of being dropped, because an exit containerd never
//! learns about leaves a task that can never be cleaned up. An OOM is kept before other
//! events (CRI gives the exit that follows it its reason) but never at an exit's cost,
//! and at most one waits per container: a container OOM-killed again and again while
//! containerd is away cannot fill the outbox. Envelopes are built with
//! fixed type names instead of protobuf reflection, which would build descriptor tables
//! on the heap of every shim.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::{
    well_known_types::any::Any, well_known_types::timestamp::Timestamp, Message,
};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context::Context;
use containerd_shim_protos::ttrpc::r#async::transport::Socket;
use tokio::sync::Notify;

use crate::io::StdioPaths;

/// Events waiting to be forwarded.
pub const OUTBOX: usize = 1024;

/// Timing of the forwarder.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Deadline of one connect.
    pub connect_timeout: Duration,
    /// Deadline of one Forward call.
    pub forward_timeout: Duration,
    /// Longest pause between tries.
    pub max_backoff: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            forward_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(2),
        }
    }
}
/// Tries of an event that containerd answered with an error (a transport failure is
/// retried without limit).
const REFUSED_ATTEMPTS: u32 = 5;

/// Converts a wall-clock time to a protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// One task event, as the shim publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `/tasks/create`.
    Create {
        id: String,
        bundle: String,
        pid: i32,
        stdio: StdioPaths,
        /// The checkpoint a restore starts from ("" for a plain create).
        checkpoint: String,
    },
    /// `/tasks/start`.
    Start { id: String, pid: i32 },
    /// `/tasks/exit`; `exec_id` is the container id for init, as containerd expects.
    Exit {
        id: String,
        exec_id: String,
        pid: i32,
        status: u32,
        at: SystemTime,
    },
    /// `/tasks/delete`, for init only.
    Delete {
        id: String,
        pid: i32,
        status: u32,
        at: SystemTime,
    },
    /// `/tasks/exec-added`.
    ExecAdded { id: String, exec_id: String },
    /// `/tasks/exec-started`.
    ExecStarted {
        id: String,
        exec_id: String,
        pid: i32,
    },
    /// `/tasks/paused`.
    Paused { id: String },
    /// `/tasks/resumed`.
    Resumed { id: String },
    /// `/tasks/oom`: the container's cgroup ran out of memory and the kernel killed in it.
    Oom { id: String },
}

impl Event {
    /// The containerd topic.
    pub fn topic(&self) -> &'static str {
        match self {
            Event::Create { .. } => topics::TASK_CREATE_EVENT_TOPIC,
            Event::Start { .. } => topics::TASK_START_EVENT_TOPIC,
            Event::Exit { .. } => topics::TASK_EXIT_EVENT_TOPIC,
            Event::Delete { .. } => topics::TASK_DELETE_EVENT_TOPIC,
            Event::ExecAdded { .. } => topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Event::ExecStarted { .. } => topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Event::Paused { .. } => topics::TASK_PAUSED_EVENT_TOPIC,
            Event::Resumed { .. } => topics::TASK_RESUMED_EVENT_TOPIC,
            Event::Oom { .. } => topics::TASK_OOM_EVENT_TOPIC,
        }
    }

    /// What a full outbox keeps first.
    fn keep(&self) -> Keep {
        match self {
            Event::Exit { .. } => Keep::Exit,
            Event::Oom { .. } => Keep::Oom,
            _ => Keep::Other,
        }
    }

    /// The Any payload: fixed type name plus the encoded message.
    fn encode(&self) -> Result<Any, String> {
        let (type_url, value) = match self {
            Event::Create {
                id,
                bundle,
                pid,
                stdio,
                checkpoint,
            } => (
                "containerd.events.TaskCreate",
                TaskCreate {
                    container_id: id.clone(),
                    bundle: bundle.clone(),
                    io: Some(TaskIO {
                        stdin: stdio.stdin.clone(),
                        stdout: stdio.stdout.clone(),
                        stderr: stdio.stderr.clone(),
                        terminal: stdio.terminal,
                        ..Default::default()
                    })
                    .into(),
                    checkpoint: checkpoint.clone(),
                    pid: *pid as u32,
                    ..Default::default()
                }
                .write_to_bytes(),
            ),
            Event::Start { id, pid } => (
                "containerd.events.TaskStart",
                TaskStart {
                    container_id: id.clone(),
                    pid: *pid as u32,
                    ..Default::default()
                }
                .write_to_bytes(),
            ),
            Event::Exit {
                id,
                exec_id,
                pid,
                status,
                at,
            } => (
                "containerd.events.TaskExit",
                TaskExit {
                    container_id: id.clone(),
                    id: exec_id.clone(),
                    pid: *pid as u32,
                    exit_status: *status,
                    exited_at: Some(timestamp(*at)).into(),
                    ..Default::default()
                }
                .write_to_bytes(),
            ),
            // The exec id stays empty for init, as containerd's Go shim sends it.
            Event::Delete {
                id,
                pid,
                status,
                at,
            } => (
                "containerd.events.TaskDelete",
                TaskDelete {
                    container_id: id.clone(),
                    pid: *pid as u32,
                    exit_status: *status,
                    exited_at: Some(timestamp(*at)).into(),
                    ..Default::default()
                }
                .write_to_bytes(),
            ),
            Event::ExecAdded { id, exec_id } => (
                "containerd.events.TaskExecAdded",
                TaskExecAdded {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                    ..Default::default()
                }
                .write_to_bytes(),
            ),
            Event::ExecStarted { id, exec_id, pid } => (
                "containerd.events.TaskExecStarted",
                TaskExecStarted {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                    pid: *pid as u32,
                    ..Default::default()
                }
                .write_to_bytes(),
            ),
            Event::Paused { id } => (
                "containerd.events.TaskPaused",
                TaskPaused {
                    container_id: id.clone(),
                    ..Default::default()
                }
                .write_to_bytes(),
            ),
            Event::Resumed { id } => (
                "containerd.events.TaskResumed",
                TaskResumed {
                    container_id: id.clone(),
                    ..Default::default()
                }
                .write_to_bytes(),
            ),
            Event::Oom { id } => (
                "containerd.events.TaskOOM",
                TaskOOM {
                    container_id: id.clone(),
                    ..Default::default()
                }
                .write_to_bytes(),
            ),
        };
        Ok(Any {
            type_url: type_url.to_string(),
            value: value.map_err(|e| e.to_string())?,
            ..Default::default()
        })
    }
}

/// How hard a full outbox tries to keep an event, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Keep {
    /// Dropped first: containerd can do without it.
    Other,
    /// Decides the reason CRI gives the exit after it.
    Oom,
    /// Never dropped for anything else: without it the task can never be cleaned up.
    Exit,
}

/// Events queued for the forwarder, oldest first.
struct Outbox {
    queue: Mutex<VecDeque<(Event, SystemTime)>>,
    /// Held by the forwarder apart from the outbox, so that it does not keep the outbox
    /// alive while it sleeps.
    ready: Arc<Notify>,
    /// Failed tries so far (diagnostics and tests).
    failures: std::sync::atomic::AtomicU64,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Event, SystemTime)>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `event`. An OOM of a container that already has one waiting is the same
    /// news and is left out. A full outbox makes room by dropping its oldest event that
    /// is kept less hard than `event` (an OOM before an exit); without one, `event` is
    /// dropped, except an exit, which then pushes out the oldest exit.
    fn push(&self, event: Event) {
        let mut q = self.lock();
        if let Event::Oom { id } = &event {
            if q.iter()
                .any(|(e, _)| matches!(e, Event::Oom { id: waiting } if waiting == id))
            {
                log::info!("container {id}: an OOM is already waiting for containerd");
                return;
            }
        }
        if q.len() >= OUTBOX {
            let keep = event.keep();
            let victim = [Keep::Other, Keep::Oom]
                .into_iter()
                .filter(|k| *k < keep)
                .find_map(|k| q.iter().position(|(e, _)| e.keep() == k))
                .or((keep == Keep::Exit).then_some(0));
            let Some(pos) = victim else {
                log::error!("event outbox full: dropping {event:?}");
                return;
            };
            if let Some((old, _)) = q.remove(pos) {
                log::error!(
                    "event outbox full: dropping {old:?} to keep {}",
                    event.topic()
                );
            }
        }
        q.push_back((event, SystemTime::now()));
        drop(q);
        self.ready.notify_one();
    }
}

enum Sink {
    Disabled,
    Forward(Arc<Outbox>),
    Record(Arc<Mutex<Vec<Event>>>),
}

/// Publishes task events for one namespace.
pub struct Events {
    sink: Sink,
    namespace: String,
}

impl Drop for Events {
    fn drop(&mut self) {
        // Wakes an idle forwarder so it notices it is no longer needed.
        if let Sink::Forward(outbox) = &self.sink {
            outbox.ready.notify_one();
        }
    }
}

/// What a recording sink has seen (tests).
#[derive(Clone)]
pub struct Recorder(Arc<Mutex<Vec<Event>>>);

impl Recorder {
    /// Every event published so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `(topic, container id, exec id)` of every event, exec id empty where none applies
    /// and for init's exit.
    pub fn summary(&self) -> Vec<(&'static str, String, String)> {
        self.events()
            .iter()
            .map(|e| {
                let (id, exec) = match e {
                    Event::Create { id, .. }
                    | Event::Start { id, .. }
                    | Event::Delete { id, .. }
                    | Event::Paused { id }
                    | Event::Resumed { id }
                    | Event::Oom { id } => (id.clone(), String::new()),
                    Event::Exit { id, exec_id, .. } => {
                        let exec = if exec_id == id {
                            String::new()
                        } else {
                            exec_id.clone()
                        };
                        (id.clone(), exec)
                    }
                    Event::ExecAdded { id, exec_id } | Event::ExecStarted { id, exec_id, .. } => {
                        (id.clone(), exec_id.clone())
                    }
                };
                (e.topic(), id, exec)
            })
            .collect()
    }
}

impl Events {
    /// Events forwarded to containerd's TTRPC socket at `address`.
    pub fn connect(address: &str, namespace: &str) -> Self {
        Self::connect_with(address, namespace, Tuning::default())
    }

    /// Like [`Events::connect`] with explicit timing.
    pub fn connect_with(address: &str, namespace: &str, tuning: Tuning) -> Self {
        let outbox = Arc::new(Outbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Default::default(),
            failures: Default::default(),
        });
        tokio::spawn(forward_loop(
            address.to_string(),
            namespace.to_string(),
            Arc::downgrade(&outbox),
            outbox.ready.clone(),
            tuning,
        ));
        Self {
            sink: Sink::Forward(outbox),
            namespace: namespace.to_string(),
        }
    }

    /// Events that go nowhere.
    pub fn disabled(namespace: &str) -> Self {
        Self {
            sink: Sink::Disabled,
            namespace: namespace.to_string(),
        }
    }

    /// Events kept in memory for a test to inspect.
    pub fn recording(namespace: &str) -> (Self, Recorder) {
        let log = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                sink: Sink::Record(log.clone()),
                namespace: namespace.to_string(),
            },
            Recorder(log),
        )
    }

    /// The namespace events are published in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Queues `event` for containerd; never blocks.
    pub fn publish(&self, event: Event) {
        log::debug!("publish {event:?}");
        match &self.sink {
            Sink::Disabled => {}
            Sink::Forward(outbox) => outbox.push(event),
            Sink::Record(log) => log.lock().unwrap_or_else(|p| p.into_inner()).push(event),
        }
    }

    /// Events not yet taken by containerd.
    pub fn pending(&self) -> usize {
        match &self.sink {
            Sink::Forward(outbox) => outbox.lock().len(),
            _ => 0,
        }
    }

    /// Failed forwarding tries so far.
    pub fn failures(&self) -> u64 {
        match &self.sink {
            Sink::Forward(outbox) => outbox.failures.load(std::sync::atomic::Ordering::Relaxed),
            _ => 0,
        }
    }
}

/// Connects without ever blocking the runtime thread, within `limit`.
async fn connect(address: &str, limit: Duration) -> Result<EventsClient, String> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    // tokio's connect is non-blocking: a full listen backlog is an error (EAGAIN) here,
    // not a hang.
    let stream = tokio::time::timeout(limit, tokio::net::UnixStream::connect(path))
        .await
        .map_err(|_| format!("no connection within {limit:?}"))?
        .map_err(|e| e.to_string())?;
    Ok(EventsClient::new(Client::new(Socket::from(stream))))
}

/// Forwards the outbox in order, reconnecting and retrying with backoff; ends when the
/// [`Events`] handle is gone and the outbox is empty.
async fn forward_loop(
    address: String,
    namespace: String,
    outbox: std::sync::Weak<Outbox>,
    ready: Arc<Notify>,
    tuning: Tuning,
) {
    let mut client: Option<EventsClient> = None;
    let mut backoff = Duration::from_millis(50);
    let mut refused = 0;
    loop {
        let Some(ob) = outbox.upgrade() else { return };
        let head = ob.lock().front().cloned();
        let Some((event, queued_at)) = head else {
            drop(ob);
            ready.notified().await;
            continue;
        };
        drop(ob);
        let envelope = match event.encode() {
            Ok(any) => Envelope {
                timestamp: Some(timestamp(queued_at)).into(),
                namespace: namespace.clone(),
                topic: event.topic().to_string(),
                event: Some(any).into(),
                ..Default::default()
            },
            Err(e) => {
                log::error!("encode {}: {e}; dropped", event.topic());
                pop_if_head(&outbox, &event);
                continue;
            }
        };
        if client.is_none() {
            match connect(&address, tuning.connect_timeout).await {
                Ok(c) => client = Some(c),
                Err(e) => log::warn!("connect to containerd {address}: {e}"),
            }
        }
        let mut sent = false;
        if let Some(c) = &client {
            let req = ForwardRequest {
                envelope: Some(envelope).into(),
                ..Default::default()
            };
            let ctx = Context {
                timeout_nano: tuning.forward_timeout.as_nanos() as i64,
                ..Default::default()
            };
            match c.forward(ctx, &req).await {
                Ok(_) => sent = true,
                Err(containerd_shim_protos::ttrpc::Error::RpcStatus(s)) => {
                    refused += 1;
                    log::warn!(
                        "containerd refused {} ({refused}/{REFUSED_ATTEMPTS}): {}",
                        event.topic(),
                        s.message
                    );
                    if refused >= REFUSED_ATTEMPTS {
                        log::error!("giving up on {} containerd keeps refusing", event.topic());
                        sent = true;
                    }
                }
                Err(e) => {
                    log::warn!("forward {}: {e}", event.topic());
                    client = None;
                }
            }
        }
        if sent {
            pop_if_head(&outbox, &event);
            backoff = Duration::from_millis(50);
            refused = 0;
            continue;
        }
        if let Some(ob) = outbox.upgrade() {
            ob.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(tuning.max_backoff);
    }
}

fn pop_if_head(outbox: &std::sync::Weak<Outbox>, event: &Event) {
    if let Some(ob) = outbox.upgrade() {
        let mut q = ob.lock();
        if q.front().map(|(e, _)| e) == Some(event) {
            q.pop_front();
        }
    }
}

#[cfg(test)]
mod tests;
