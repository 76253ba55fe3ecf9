//! The ttrpc Task service: maps containerd's Task API onto containers and processes.
//!
//! No lock is held across a runc call: the container map is a short-lived std mutex,
//! each container's work happens on its own `Arc`, so a slow Create of one container
//! never delays State of another.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::api::{self, Empty};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::{self, r#async::TtrpcContext};
use containerd_shim_protos::types::task::{ProcessInfo, Status as TaskStatus};
use runc_client::Reaper;
use tokio::sync::Notify;

use crate::container::{Container, IO_DRAIN_LIMIT};
use crate::error::{Error, Result};
use crate::events::{timestamp, Events};
use crate::io::StdioPaths;
use crate::process::{Process, Status};

/// How many exits nobody claimed are remembered for a process registered just after it died.
const UNCLAIMED_EXITS: usize = 128;
/// How long an exit event waits for the start event of the same process to go out first.
const ANNOUNCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long init's exit event waits for its execs' exits.
const EXEC_EXIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

type TtrpcResult<T> = ttrpc::Result<T>;

/// State shared by the RPC handlers and the exit loop.
pub struct Shared {
    namespace: String,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids whose Create is under way: a second Create of the same id must fail before it
    /// reaches runc (whose cleanup would otherwise delete the first one's container).
    creating: Mutex<std::collections::HashSet<String>>,
    unclaimed: Mutex<VecDeque<runc_client::Exit>>,
    events: Events,
    reaper: Reaper,
    /// Fired when the shim should exit (Shutdown with no containers left).
    pub shutdown: Arc<Notify>,
}

/// The Task service registered with the ttrpc server.
#[derive(Clone)]
pub struct TaskService {
    shared: Arc<Shared>,
}

impl TaskService {
    /// A service for `namespace`, publishing through `events`, learning exits from `reaper`.
    pub fn new(namespace: &str, events: Events, reaper: Reaper, shutdown: Arc<Notify>) -> Self {
        let shared = Arc::new(Shared {
            namespace: namespace.to_string(),
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(std::collections::HashSet::new()),
            unclaimed: Mutex::new(VecDeque::new()),
            events,
            reaper,
            shutdown,
        });
        // Subscribed before any container exists, so no init exit can be missed.
        let mut exits = shared.reaper.subscribe();
        let loop_shared = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while let Some(exit) = exits.recv().await {
                let Some(shared) = loop_shared.upgrade() else {
                    break;
                };
                Shared::dispatch_exit(&shared, exit);
            }
        });
        Self { shared }
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.shared
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "container",
                id: id.to_string(),
            })
    }
}

/// Holds an id reserved for a Create in progress; released on drop.
struct Reservation<'a> {
    shared: &'a Shared,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.shared
            .creating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Shared {
    /// Reserves `id` for a Create, unless it exists or is being created.
    fn reserve(&self, id: &str) -> Result<Reservation<'_>> {
        // Lock order: containers, then creating (the only place both are held).
        let map = self.lock();
        let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(id) || !creating.insert(id.to_string()) {
            return Err(Error::AlreadyExists {
                kind: "container",
                id: id.to_string(),
            });
        }
        Ok(Reservation {
            shared: self,
            id: id.to_string(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes one reaped exit to its process. Matching is synchronous (so a process
    /// registered later finds the exit among the unclaimed ones); the handling, which may
    /// wait for output to drain, runs in its own task so one slow exit never holds up
    /// another (init's handler waits for its execs' exits).
    fn dispatch_exit(shared: &Arc<Self>, exit: runc_client::Exit) {
        let containers: Vec<Arc<Container>> = shared.lock().values().cloned().collect();
        let status = exit.status as u32;
        for c in &containers {
            if let Some(p) = c.exec_processes().into_iter().find(|p| p.pid() == exit.pid) {
                let (shared, c) = (shared.clone(), c.clone());
                tokio::spawn(async move { shared.exec_exited(&c, &p, status, exit.at).await });
                return;
            }
        }
        if let Some(c) = containers.into_iter().find(|c| c.init.pid() == exit.pid) {
            let shared = shared.clone();
            tokio::spawn(async move { shared.init_exited(c, status, exit.at).await });
            return;
        }
        // Mostly runc's own children; kept briefly in case a process is registered late.
        let mut q = shared.unclaimed.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= UNCLAIMED_EXITS {
            q.pop_front();
        }
        q.push_back(exit);
    }

    async fn init_exited(&self, c: Arc<Container>, status: u32, at: SystemTime) {
        if !c.init.set_exited(status, at) {
            return;
        }
        if !c.own_pid_namespace {
            // Without its own PID namespace nothing reaps the container's other processes.
            if let Err(e) = c.runc.kill(&c.id, libc::SIGKILL, true).await {
                log::debug!("container {}: kill --all after init exit: {e}", c.id);
            }
        }
        // containerd requires init's exit to come after the exits of all its execs;
        // they die with the PID namespace, so this wait is short.
        let execs = c.exec_processes();
        let all_execs = async {
            for p in execs {
                if p.pid() > 0 {
                    // Reported, not just reaped: their exit events must be queued first.
                    p.wait_reported().await;
                }
            }
        };
        if tokio::time::timeout(EXEC_EXIT_LIMIT, all_execs)
            .await
            .is_err()
        {
            log::warn!("container {}: execs still alive after init exit", c.id);
        }
        let progress = c.init.copiers.lock().await.progress();
        progress.drain(IO_DRAIN_LIMIT).await;
        c.init.wait_announced(ANNOUNCE_LIMIT).await;
        // Queued before Wait answers, so TaskExit always precedes the TaskDelete that a
        // Delete following Wait publishes.
        self.events
            .exited(&c.id, &c.id, c.init.pid(), status, at)
            .await;
        c.init.set_reported();
        crate::memory::trim_heap();
    }

    async fn exec_exited(&self, c: &Container, p: &Process, status: u32, at: SystemTime) {
        if !p.set_exited(status, at) {
            return;
        }
        let progress = p.copiers.lock().await.progress();
        progress.drain(IO_DRAIN_LIMIT).await;
        p.wait_announced(ANNOUNCE_LIMIT).await;
        // Queued before Wait answers and before init's exit (which waits for this).
        self.events.exited(&c.id, &p.id, p.pid(), status, at).await;
        p.set_reported();
    }

    /// Claims an exit reaped before the pid was registered.
    fn take_unclaimed(&self, pid: i32) -> Option<runc_client::Exit> {
        let mut q = self.unclaimed.lock().unwrap_or_else(|p| p.into_inner());
        let pos = q.iter().position(|e| e.pid == pid)?;
        q.remove(pos)
    }
}

fn status_of(s: Status) -> TaskStatus {
    match s {
        Status::Created => TaskStatus::CREATED,
        Status::Running => TaskStatus::RUNNING,
        Status::Paused => TaskStatus::PAUSED,
        Status::Stopped | Status::Deleted => TaskStatus::STOPPED,
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} bundle {}", req.id, req.bundle);
        let _reservation = self.shared.reserve(&req.id)?;
        let c = Container::create(&req, &self.shared.namespace, self.shared.reaper.clone())
            .await
            .map_err(|e| {
                log::error!("create {}: {e}", req.id);
                e
            })?;
        let c = Arc::new(c);
        let pid = c.init.pid();
        self.shared.lock().insert(req.id.clone(), c.clone());
        self.shared
            .events
            .created(&req.id, &req.bundle, pid, &c.init.stdio)
            .await;
        if let Some(exit) = self.shared.take_unclaimed(pid) {
            let (shared, c) = (self.shared.clone(), c.clone());
            tokio::spawn(async move { shared.init_exited(c, exit.status as u32, exit.at).await });
        }
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let c = self.container(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            p.set_starting();
            let started = c.start_exec(&req.exec_id).await;
            let pid = match started {
                Ok(pid) => pid,
                Err(e) => {
                    p.set_announced();
                    return Err(e.into());
                }
            };
            self.shared
                .events
                .exec_started(&req.id, &req.exec_id, pid)
                .await;
            p.set_announced();
            if let Some(exit) = self.shared.take_unclaimed(pid) {
                let (shared, c) = (self.shared.clone(), c.clone());
                tokio::spawn(async move {
                    shared
                        .exec_exited(&c, &p, exit.status as u32, exit.at)
                        .await
                });
            }
            return Ok(api::StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }
        c.init.set_starting();
        let pid = match c.start().await {
            Ok(pid) => pid,
            Err(e) => {
                c.init.set_announced();
                return Err(e.into());
            }
        };
        self.shared.events.started(&req.id, pid).await;
        c.init.set_announced();
        crate::memory::trim_heap();
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let c = self.container(&req.id)?;
        if !req.exec_id.is_empty() {
            let (pid, status, at) = c.delete_exec(&req.exec_id).await?;
            return Ok(api::DeleteResponse {
                pid: pid as u32,
                exit_status: status,
                exited_at: Some(timestamp(at)).into(),
                ..Default::default()
            });
        }
        let (pid, status, at) = c.delete().await?;
        self.shared.lock().remove(&req.id);
        self.shared.events.deleted(&req.id, pid, status, at).await;
        crate::memory::trim_heap();
        Ok(api::DeleteResponse {
            pid: pid as u32,
            exit_status: status,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let exited = p.exited();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: p.pid() as u32,
            status: status_of(p.status()).into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exited.map(|e| e.status).unwrap_or_default(),
            exited_at: exited.map(|e| timestamp(e.at)).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let c = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            c.kill(req.signal, req.all).await?;
        } else {
            c.kill_exec(&req.exec_id, req.signal)?;
        }
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let c = self.container(&req.id)?;
        let e = c.process(&req.exec_id)?.wait_reported().await;
        Ok(api::WaitResponse {
            exit_status: e.status,
            exited_at: Some(timestamp(e.at)).into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let c = self.container(&req.id)?;
        let pids = c.pids().await?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        let c = self.container(&req.id)?;
        if req.stdin {
            c.process(&req.exec_id)?.copiers.lock().await.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .shared
            .lock()
            .get(&req.id)
            .map(|c| c.init.pid() as u32)
            .unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: crate::VERSION.to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<Empty> {
        if self.shared.lock().is_empty() {
            // Exit after this reply has been written.
            self.shared.shutdown.notify_one();
        }
        Ok(Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<Empty> {
        Err(Error::Unimplemented("Pause").into())
    }

    async fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<Empty> {
        Err(Error::Unimplemented("Resume").into())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(Error::Unimplemented("Checkpoint").into())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let c = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(Error::InvalidArgument("exec id must not be empty".into()).into());
        }
        let spec_bytes = req
            .spec
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or_default();
        let spec: oci_spec::runtime::Process = serde_json::from_slice(spec_bytes).map_err(|e| {
            Error::InvalidArgument(format!(
                "exec {}/{}: bad process spec: {e}",
                req.id, req.exec_id
            ))
        })?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        c.add_exec(&req.exec_id, spec, stdio)?;
        self.shared.events.exec_added(&req.id, &req.exec_id).await;
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        Err(Error::Unimplemented("ResizePty").into())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        _req: api::UpdateTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(Error::Unimplemented("Update").into())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        _req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Err(Error::Unimplemented("Stats").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_create_of_the_same_id_is_refused_while_the_first_runs() {
        let svc = TaskService::new(
            "test",
            Events::disabled("test"),
            Reaper::global(),
            Arc::new(Notify::new()),
        );
        let first = svc.shared.reserve("c1").expect("first reservation");
        let err = svc.shared.reserve("c1").err().expect("duplicate accepted");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert!(svc.shared.reserve("c2").is_ok());
        drop(first);
        assert!(svc.shared.reserve("c1").is_ok(), "reservation not released");
    }
}
