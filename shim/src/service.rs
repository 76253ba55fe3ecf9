//! The ttrpc Task service: maps containerd's Task API requests onto [`Tasks`] calls and
//! their results and errors back onto responses and ttrpc codes.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::{self, Empty};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::ProcessDetails;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::{self, r#async::TtrpcContext};
use containerd_shim_protos::types::task::{ProcessInfo, Status as TaskStatus};
use runc_client::Reaper;
use tokio::sync::Notify;

use crate::error::Error;
use crate::events::{timestamp, Events};
use crate::io::StdioPaths;
use crate::process::State;
use crate::tasks::Tasks;

type TtrpcResult<T> = ttrpc::Result<T>;

/// Type URL of the exec details on a Pids entry, as containerd's typeurl names them.
const PROCESS_DETAILS_TYPE: &str = "containerd.runc.v1.ProcessDetails";

/// The Task service registered with the ttrpc server.
#[derive(Clone)]
pub struct TaskService {
    tasks: Arc<Tasks>,
}

impl TaskService {
    /// A service for `namespace`, publishing through `events`, learning exits from `reaper`.
    pub fn new(namespace: &str, events: Events, reaper: Reaper, shutdown: Arc<Notify>) -> Self {
        Self {
            tasks: Tasks::new(namespace, events, reaper, shutdown),
        }
    }

    /// The containers behind the service.
    pub fn tasks(&self) -> &Arc<Tasks> {
        &self.tasks
    }
}

/// containerd's view of a state; the in-between states show what they come from.
fn status_of(s: State) -> TaskStatus {
    match s {
        State::Creating => TaskStatus::UNKNOWN,
        State::Created | State::Starting => TaskStatus::CREATED,
        State::Running => TaskStatus::RUNNING,
        State::Pausing => TaskStatus::PAUSING,
        State::Paused | State::Resuming => TaskStatus::PAUSED,
        State::Stopped | State::Deleting | State::Deleted => TaskStatus::STOPPED,
    }
}

fn logged<T>(op: &str, id: &str, r: crate::error::Result<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        log::warn!("{op} {id}: {e}");
        e.into()
    })
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {} bundle {}", req.id, req.bundle);
        let id = req.id.clone();
        let pid = logged("create", &id, self.tasks.create(req).await)?;
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
        let pid = logged(
            "start",
            &req.id,
            self.tasks.start(&req.id, &req.exec_id).await,
        )?;
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
        let (pid, exited) = logged(
            "delete",
            &req.id,
            self.tasks.delete(&req.id, &req.exec_id).await,
        )?;
        Ok(api::DeleteResponse {
            pid: pid as u32,
            exit_status: exited.status,
            exited_at: Some(timestamp(exited.at)).into(),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let s = self.tasks.state(&req.id, &req.exec_id)?;
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: s.bundle,
            pid: s.pid as u32,
            status: status_of(s.state).into(),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            terminal: s.stdio.terminal,
            exit_status: s.exited.map(|e| e.status).unwrap_or_default(),
            exited_at: s.exited.map(|e| timestamp(e.at)).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        self.tasks
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let e = self.tasks.wait(&req.id, &req.exec_id).await?;
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
        let pids = self.tasks.pids(&req.id).await?;
        let mut processes = Vec::with_capacity(pids.len());
        for (pid, exec_id) in pids {
            let mut info = ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            };
            if let Some(exec_id) = exec_id {
                // What containerd's Go shim attaches to an exec's pid (`ctr task ps` shows it).
                let details = ProcessDetails {
                    exec_id,
                    ..Default::default()
                };
                let value = details.write_to_bytes().map_err(|e| {
                    Error::Internal(format!("{}: encode ProcessDetails: {e}", req.id))
                })?;
                info.info = Some(Any {
                    type_url: PROCESS_DETAILS_TYPE.to_string(),
                    value,
                    ..Default::default()
                })
                .into();
            }
            processes.push(info);
        }
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            self.tasks.close_stdin(&req.id, &req.exec_id).await?;
        }
        Ok(Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.tasks.init_pid(&req.id) as u32,
            version: crate::VERSION.to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<Empty> {
        // Exits (after this reply has been written) only when no container is left.
        self.tasks.request_shutdown();
        Ok(Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        logged("pause", &req.id, self.tasks.pause(&req.id).await)?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        logged("resume", &req.id, self.tasks.resume(&req.id).await)?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        let r = self
            .tasks
            .checkpoint(&req.id, &req.path, req.options.as_ref())
            .await;
        logged("checkpoint", &req.id, r)?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or_default();
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        logged(
            "exec",
            &req.id,
            self.tasks.exec(&req.id, &req.exec_id, spec, stdio),
        )?;
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        self.tasks
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)
            .await?;
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let r = self
            .tasks
            .update(&req.id, req.resources.as_ref(), &req.annotations)
            .await;
        logged("update", &req.id, r)?;
        Ok(Empty::new())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        // Not logged: kubelet asks every few seconds, and NotFound for a container that
        // just went is normal.
        let stats = self.tasks.stats(&req.id)?;
        Ok(api::StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }
}
