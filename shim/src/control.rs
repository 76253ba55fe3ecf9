//! sturdy's own ttrpc service on the shim's socket, `sturdy.upgrade.v1.Upgrade`, used by
//! `sturdyctl upgrade-shims` (docs/upgrade.md). It shares the Task API's socket and its
//! checks (same uid only, bounded frames). Private to sturdy, so its payloads are small
//! JSON documents rather than protobuf messages: no codegen, and both ends are ours.
//!
//! - `Describe` (no input): version, build-id, handover formats, connections, gate;
//! - `Rehearse` (`{"deadline_ms": N}`): the pause of an upgrade without the exec: closes
//!   the listener's gate, waits until every connection is parked at a frame boundary, only
//!   `Wait`s are unanswered ([`Gate::settled`]) and it holds every process's lifecycle lock
//!   ([`Tasks::try_hold_lifecycles`]: no transition under way, none and no exit publication
//!   can begin), lets go of both, and reports how long requests were held.
//!   Proves the quiesce on a live shim and measures it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_shim_protos::ttrpc::r#async::{MethodHandler, Service, TtrpcContext};
use containerd_shim_protos::ttrpc::{self, Code, Request, Response};
use serde::{Deserialize, Serialize};

pub mod upgrade;

use crate::listener::inflight::{method_of, replay_safe};
use crate::listener::Gate;
use crate::tasks::{LifecycleHold, Tasks};

/// The service name.
pub const SERVICE: &str = "sturdy.upgrade.v1.Upgrade";
/// Longest a rehearsal may hold requests.
pub const MAX_DEADLINE: Duration = Duration::from_secs(10);
/// How often a rehearsal looks whether calls in flight were answered.
const SETTLE_POLL: Duration = Duration::from_millis(1);

/// Unanswered requests a handover does not wait for: `Wait`s, which the next image serves
/// again, and this service's own requests (the one driving the pause is unanswered while
/// it runs; across a real exec the next image answers it).
fn may_wait(frame: &[u8]) -> bool {
    replay_safe(frame)
        || method_of(frame).is_some_and(|m| {
            m.strip_prefix(SERVICE)
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// What `Describe` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// `-v`'s version.
    pub version: String,
    /// `-v`'s revision.
    pub revision: String,
    /// GNU build-id of the running image, hex.
    pub build_id: Option<String>,
    /// The handover format it writes.
    pub handover_writes: u32,
    /// The formats it reads.
    pub handover_reads: Vec<u32>,
    /// Connections served now.
    pub connections: usize,
    /// Whether requests are held now.
    pub paused: bool,
}

/// What `Rehearse` takes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RehearseRequest {
    /// Longest to wait for the shim to settle, at most [`MAX_DEADLINE`].
    pub deadline_ms: u64,
    /// Also capture the core during the pause and answer the handover document an
    /// upgrade to this build (hex) would write, then put everything back: what a dry run
    /// hands the new binary's `--check-handover`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_for: Option<String>,
}

/// What `Rehearse` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rehearsal {
    /// How long new requests were held, microseconds.
    pub paused_us: u64,
    /// Connections parked.
    pub connections: usize,
    /// Unanswered `Wait`s the handover would have replayed.
    pub waits: usize,
    /// Processes whose lifecycle lock the pause held (no call and no exit publication
    /// could begin meanwhile).
    pub held: usize,
    /// With `dump_for`: the document the upgrade would write (JSON), or why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<Result<String, String>>,
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request was not understood.
    #[error("{method}: bad request: {why}")]
    BadRequest {
        /// The method.
        method: String,
        /// Why.
        why: String,
    },
    /// An upgrade did not happen: "refused: …" (nothing was touched, or everything was
    /// put back), "rolled back: …" (the new image could not resume; the old one runs), or
    /// the pause did not settle.
    #[error("{0}")]
    Upgrade(String),
    /// Another rehearsal or upgrade is under way.
    #[error("an upgrade or rehearsal is already under way")]
    Busy,
    /// Calls in flight did not finish in time; requests were let through again.
    #[error(
        "not settled within {deadline:?}: {unsettled} connection(s) still had a call in \
         flight or a frame half read, lifecycle under way: {busy:?}; requests flow again"
    )]
    NotSettled {
        /// The deadline.
        deadline: Duration,
        /// Connections not parked or with a call other than Wait unanswered.
        unsettled: usize,
        /// Processes with a lifecycle transition under way.
        busy: Vec<String>,
    },
}

/// The service's state: the listener's gate, the pod's tasks, and one operation at a
/// time.
pub struct Control {
    gate: Arc<Gate>,
    tasks: Option<Arc<Tasks>>,
    busy: tokio::sync::Mutex<()>,
    /// What an upgrade's document says of the daemon; none where it cannot upgrade.
    identity: Option<upgrade::Identity>,
    /// How the handover this image started with ended, until the request that asked for
    /// it is answered.
    resumed: std::sync::Mutex<Option<upgrade::Resumed>>,
}

impl Control {
    /// Controls the listener behind `gate`, serving `tasks`.
    pub fn new(gate: Arc<Gate>, tasks: Option<Arc<Tasks>>) -> Arc<Control> {
        Self::upgradable(gate, tasks, None, None)
    }

    /// As [`Control::new`], for a daemon that can `Upgrade` (it knows its `identity`),
    /// and that may have been started by a handover that ended as `resumed`.
    pub fn upgradable(
        gate: Arc<Gate>,
        tasks: Option<Arc<Tasks>>,
        identity: Option<upgrade::Identity>,
        resumed: Option<upgrade::Resumed>,
    ) -> Arc<Control> {
        Arc::new(Control {
            gate,
            tasks,
            busy: tokio::sync::Mutex::new(()),
            identity,
            resumed: std::sync::Mutex::new(resumed),
        })
    }

    fn hold_lifecycles(&self) -> Result<LifecycleHold, Vec<String>> {
        match &self.tasks {
            Some(t) => t.try_hold_lifecycles(),
            None => Ok(LifecycleHold::default()),
        }
    }

    fn lifecycle_busy(&self) -> Vec<String> {
        self.tasks
            .as_ref()
            .map(|t| t.lifecycle_busy())
            .unwrap_or_default()
    }

    /// `Describe`.
    pub fn describe(&self) -> Description {
        Description {
            version: crate::VERSION.to_string(),
            revision: crate::REVISION.to_string(),
            build_id: build_id::of_self().ok().flatten().map(|i| i.to_string()),
            handover_writes: crate::handover::WRITES,
            handover_reads: crate::handover::READS.to_vec(),
            connections: self.gate.connections(),
            paused: self.gate.is_closed(),
        }
    }

    /// `Rehearse`: pause at frame boundaries until settled or `deadline`, then resume.
    pub async fn rehearse(&self, deadline: Duration) -> Result<Rehearsal, ControlError> {
        self.rehearse_with(deadline, None).await
    }

    /// `Rehearse`, with the handover document for `dump_for` if asked.
    pub async fn rehearse_with(
        &self,
        deadline: Duration,
        dump_for: Option<&str>,
    ) -> Result<Rehearsal, ControlError> {
        let deadline = deadline.min(MAX_DEADLINE);
        let _one = self.busy.try_lock().map_err(|_| ControlError::Busy)?;
        let started = Instant::now();
        let settled = tokio::time::timeout(deadline, async {
            self.gate.close().await;
            loop {
                if let Some(parked) = self.gate.settled(may_wait) {
                    if let Ok(hold) = self.hold_lifecycles() {
                        return (parked, hold);
                    }
                }
                tokio::time::sleep(SETTLE_POLL).await;
            }
        })
        .await;
        let mut document = None;
        if let (Ok((parked, hold)), Some(target)) = (&settled, dump_for) {
            document = Some(self.dump(hold, parked, target).await);
        }
        let paused = started.elapsed();
        let (unsettled, busy) = match &settled {
            Ok(_) => (0, Vec::new()),
            Err(_) => (self.gate.unsettled(may_wait), self.lifecycle_busy()),
        };
        // Whatever happened, lifecycles and requests flow again: a rehearsal never leaves a
        // shim paused.
        let settled = settled.map(|(parked, hold)| (parked, hold.held.len()));
        self.gate.open();
        let (parked, held) = settled.map_err(|_| ControlError::NotSettled {
            deadline,
            unsettled,
            busy,
        })?;
        let waits = parked
            .iter()
            .flat_map(|p| p.pending.iter().flatten())
            .filter(|f| replay_safe(f))
            .count();
        log::info!(
            "upgrade rehearsal: {} connection(s) parked at frame boundaries and {held} \
             lifecycle(s) held in {} us, {waits} Wait(s) would be replayed",
            parked.len(),
            paused.as_micros()
        );
        Ok(Rehearsal {
            paused_us: paused.as_micros() as u64,
            connections: parked.len(),
            waits,
            held,
            document,
        })
    }

    /// The ttrpc service, for the server's registry.
    pub fn services(self: &Arc<Self>) -> HashMap<String, Service> {
        let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
        for method in [Method::Describe, Method::Rehearse, Method::Upgrade] {
            methods.insert(
                method.name().to_string(),
                Box::new(Handler {
                    control: self.clone(),
                    method,
                }),
            );
        }
        HashMap::from([(
            SERVICE.to_string(),
            Service {
                methods,
                streams: HashMap::new(),
            },
        )])
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Describe,
    Rehearse,
    Upgrade,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Describe => "Describe",
            Method::Rehearse => "Rehearse",
            Method::Upgrade => "Upgrade",
        }
    }
}

struct Handler {
    control: Arc<Control>,
    method: Method,
}

#[async_trait]
impl MethodHandler for Handler {
    async fn handler(&self, _ctx: TtrpcContext, req: Request) -> ttrpc::Result<Response> {
        let answer = match self.method {
            Method::Describe => {
                serde_json::to_vec(&self.control.describe()).map_err(|e| e.to_string())
            }
            Method::Rehearse => match serde_json::from_slice::<RehearseRequest>(&req.payload) {
                Err(e) => Err(ControlError::BadRequest {
                    method: self.method.name().into(),
                    why: e.to_string(),
                }
                .to_string()),
                Ok(r) => match self
                    .control
                    .rehearse_with(Duration::from_millis(r.deadline_ms), r.dump_for.as_deref())
                    .await
                {
                    Ok(done) => serde_json::to_vec(&done).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
            },
            Method::Upgrade => {
                match serde_json::from_slice::<upgrade::UpgradeRequest>(&req.payload) {
                    Err(e) => Err(ControlError::BadRequest {
                        method: self.method.name().into(),
                        why: e.to_string(),
                    }
                    .to_string()),
                    Ok(r) => match self.control.upgrade(r).await {
                        Ok(done) => serde_json::to_vec(&done).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                }
            }
        };
        let mut res = Response::new();
        match answer {
            Ok(payload) => {
                res.set_status(ttrpc::get_status(Code::OK, ""));
                res.payload = payload;
            }
            Err(why) => res.set_status(ttrpc::get_status(Code::FAILED_PRECONDITION, why)),
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests;
