//! The containers of one shim and the Task API's operations on them, independent of
//! ttrpc (the [`crate::service`] maps requests onto these calls; tests call them
//! directly).
//!
//! Lifecycle work runs in its own task, detached from the request: when containerd's
//! deadline drops a request mid-way, runc is never killed half-way through and the
//! state machine still completes its transition. A Create whose caller went away
//! counts as failed and is rolled back, because containerd will not know the container.

pub mod handover;
mod shutdown;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use runc_client::{Exit, Reaper};
use tokio::sync::{oneshot, Notify};

use crate::container::Container;
use crate::error::{Error, Result};
use crate::events::{Event, Events};
use crate::exits::{ExitRouter, Routed};
use crate::io::StdioPaths;
use crate::process::{Exited, Process, State};
use shutdown::{ShutdownState, Verdict, SHUTDOWN_GRACE};

/// What every container's lifecycle calls share.
pub struct Shared {
    /// Where task events go.
    pub events: Events,
    /// pid → live process, for exits.
    pub router: ExitRouter,
    namespace: String,
    reaper: Reaper,
}

/// A process's state as the State RPC reports it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Bundle of the container.
    pub bundle: String,
    /// Current pid (0 until known).
    pub pid: i32,
    /// Lifecycle state.
    pub state: State,
    /// Exit, once reaped.
    pub exited: Option<Exited>,
    /// Its stdio paths.
    pub stdio: StdioPaths,
}

/// The containers of this shim.
pub struct Tasks {
    shared: Arc<Shared>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Fired when the shim should exit (Shutdown with no containers left).
    pub shutdown: Arc<Notify>,
    /// Refused Shutdowns; only touched with `containers` locked, so a Shutdown and the
    /// removal of the last container cannot miss each other.
    shutdown_state: Mutex<ShutdownState>,
    /// [`SHUTDOWN_GRACE`] in ms (tests shorten it).
    shutdown_grace_ms: AtomicU64,
    /// Asks the exit dispatcher to dispatch every exit already delivered, then answer.
    flush: tokio::sync::mpsc::UnboundedSender<oneshot::Sender<()>>,
}

/// Runs lifecycle work to completion whatever happens to the request that asked for it.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| Error::Internal(format!("lifecycle task: {e}")))?
}

impl Tasks {
    /// Containers in `namespace`, publishing through `events`, learning exits from `reaper`.
    pub fn new(
        namespace: &str,
        events: Events,
        reaper: Reaper,
        shutdown: Arc<Notify>,
    ) -> Arc<Self> {
        let (flush, mut flushes) = tokio::sync::mpsc::unbounded_channel::<oneshot::Sender<()>>();
        let tasks = Arc::new(Self {
            shared: Arc::new(Shared {
                events,
                router: ExitRouter::default(),
                namespace: namespace.to_string(),
                reaper,
            }),
            containers: Mutex::new(HashMap::new()),
            shutdown,
            shutdown_state: Mutex::new(ShutdownState::default()),
            shutdown_grace_ms: AtomicU64::new(SHUTDOWN_GRACE.as_millis() as u64),
            flush,
        });
        // Subscribed before any container exists, so no exit can be missed.
        let mut exits = tasks.shared.reaper.subscribe();
        let weak = Arc::downgrade(&tasks);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    exit = exits.recv() => {
                        let Some(exit) = exit else { break };
                        let Some(tasks) = weak.upgrade() else { break };
                        tasks.dispatch(exit);
                    }
                    Some(done) = flushes.recv() => {
                        let Some(tasks) = weak.upgrade() else { break };
                        while let Some(exit) = exits.try_recv() {
                            tasks.dispatch(exit);
                        }
                        let _ = done.send(());
                    }
                }
            }
        });
        tasks
    }

    /// Returns once every exit the reaper delivered so far has been dispatched (recorded
    /// on its process, its handling begun).
    async fn flush_exits(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.flush
            .send(tx)
            .map_err(|_| Error::Internal("the exit dispatcher is gone".into()))?;
        rx.await
            .map_err(|_| Error::Internal("the exit dispatcher is gone".into()))
    }

    /// The shared handles (events, exit router).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The container `id`.
    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.lock().get(id).cloned().ok_or_else(|| Error::NotFound {
            kind: "container",
            id: id.to_string(),
        })
    }

    /// Whether no container is left.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every process (inits and execs) with its name "container/exec", sorted by name.
    fn processes(&self) -> Vec<(String, Arc<Process>)> {
        let containers: Vec<Arc<Container>> = self.lock().values().cloned().collect();
        let mut procs = Vec::new();
        for c in containers {
            procs.push((format!("{}/", c.id), c.init.clone()));
            procs.extend(
                c.execs()
                    .iter()
                    .map(|(id, e)| (format!("{}/{id}", c.id), e.process.clone())),
            );
        }
        procs.sort_by(|a, b| a.0.cmp(&b.0));
        procs
    }

    /// Processes whose lifecycle call (or exit publication) is under way right now, as
    /// "container/exec": a live upgrade hands over only when there are none, so nothing
    /// is half-way through a transition (docs/upgrade.md).
    pub fn lifecycle_busy(&self) -> Vec<String> {
        self.processes()
            .into_iter()
            .filter(|(_, p)| p.lifecycle.try_lock().is_err())
            .map(|(name, _)| name)
            .collect()
    }

    /// Takes every process's lifecycle lock at once, or none. While the [`LifecycleHold`]
    /// lives no lifecycle call and no exit publication can begin, so the state a handover
    /// writes cannot change under it; an exit reaped meanwhile waits, decided and not
    /// published. It never waits for a lock (a call holding one may be waiting for
    /// another): `Err` names the processes with a call under way, and the caller retries.
    pub fn try_hold_lifecycles(&self) -> std::result::Result<LifecycleHold, Vec<String>> {
        let mut hold = LifecycleHold::default();
        let mut busy = Vec::new();
        for (name, p) in self.processes() {
            match p.lifecycle.clone().try_lock_owned() {
                Ok(guard) => {
                    hold.guards.push(guard);
                    hold.held.push(name);
                }
                Err(_) => busy.push(name),
            }
        }
        if busy.is_empty() {
            Ok(hold)
        } else {
            Err(busy)
        }
    }

    /// Init's pid of container `id`, 0 if unknown.
    pub fn init_pid(&self, id: &str) -> i32 {
        self.lock()
            .get(id)
            .map(|c| c.init.pid())
            .unwrap_or_default()
    }

    fn remove(self: &Arc<Self>, c: &Arc<Container>) {
        let mut map = self.lock();
        if map.get(&c.id).is_some_and(|m| Arc::ptr_eq(m, c)) {
            map.remove(&c.id);
            if map.is_empty() && self.shutdown_state().on_emptied() == Verdict::ExitAfterGrace {
                drop(map);
                self.exit_after_grace();
            }
        }
    }

    fn shutdown_state(&self) -> std::sync::MutexGuard<'_, ShutdownState> {
        self.shutdown_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// containerd's Shutdown: true, and the shim exits, when no container is left. With
    /// containers it is only answered, but remembered (see the `shutdown` module).
    pub fn request_shutdown(&self) -> bool {
        let map = self.lock();
        let verdict = self.shutdown_state().on_request(map.is_empty());
        drop(map);
        if verdict == Verdict::ExitNow {
            self.shutdown.notify_one();
            return true;
        }
        false
    }

    /// Ends the shim after the grace unless a container came meanwhile (a Shutdown in
    /// between ends it at once anyway).
    fn exit_after_grace(self: &Arc<Self>) {
        let grace = Duration::from_millis(self.shutdown_grace_ms.load(Ordering::Relaxed));
        log::info!(
            "last container gone after a refused Shutdown: exiting in {grace:?} unless \
             containerd sends Shutdown or a container first"
        );
        let tasks = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let Some(tasks) = tasks.upgrade() else { return };
            if tasks.is_empty() {
                log::info!("no Shutdown came for the last container: exiting");
                tasks.shutdown.notify_one();
            }
        });
    }

    /// Test-only: another grace than [`SHUTDOWN_GRACE`].
    #[cfg(test)]
    pub fn set_shutdown_grace(&self, grace: Duration) {
        self.shutdown_grace_ms
            .store(grace.as_millis() as u64, Ordering::Relaxed);
    }

    /// Routes one reaped exit; its handling (which may wait for output to drain) runs in
    /// its own task, so one slow exit never holds up another.
    fn dispatch(self: &Arc<Self>, exit: Exit) {
        let Routed::Process(p) = self.shared.router.route(exit) else {
            return;
        };
        if let Err(e) = p.reaped(exit.status as u32, exit.at) {
            log::warn!("exit of pid {}: {e}", exit.pid);
            return;
        }
        self.handle_exit(p);
    }

    pub(crate) fn handle_exit(self: &Arc<Self>, p: Arc<Process>) {
        let Ok(c) = self.container(&p.container) else {
            log::warn!("exit of {}: its container is gone", p.name());
            return;
        };
        if p.is_init() {
            // An OOM that killed init is pending by now (the kernel signals it before the
            // kill): out before anything can publish this exit (exit handler or Delete).
            c.flush_oom(&self.shared);
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if p.is_init() {
                c.init_exited(&shared).await
            } else {
                c.exec_exited(&shared, &p).await
            }
        });
    }

    /// Creates container `req.id` (Creating → Created) and publishes TaskCreate.
    pub async fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<i32> {
        let c = Arc::new(Container::new(
            &req,
            &self.shared.namespace,
            self.shared.reaper.clone(),
        )?);
        // Taken before the container is visible, so a Start or Delete racing this Create
        // waits for it instead of seeing a half-made container.
        let guard = c
            .init
            .lifecycle
            .clone()
            .try_lock_owned()
            .map_err(|_| Error::Internal("fresh lifecycle lock taken".into()))?;
        {
            let mut map = self.lock();
            if map.contains_key(&c.id) {
                return Err(Error::AlreadyExists {
                    kind: "container",
                    id: c.id.clone(),
                });
            }
            map.insert(c.id.clone(), c.clone());
        }
        let (tx, rx) = oneshot::channel();
        let tasks = self.clone();
        let req_checkpoint = req.checkpoint.clone();
        tokio::spawn(async move {
            let _lifecycle = guard;
            let (pid, early) = match c.create(&tasks.shared).await {
                Ok(v) => v,
                Err(e) => {
                    tasks.remove(&c);
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            if tx.send(Ok(pid)).is_err() {
                log::warn!(
                    "create {}: containerd gave up on the request; rolling back",
                    c.id
                );
                c.abandon(&tasks.shared).await;
                tasks.remove(&c);
                return;
            }
            tasks.shared.events.publish(Event::Create {
                id: c.id.clone(),
                bundle: c.bundle.display().to_string(),
                pid,
                stdio: c.init.stdio.clone(),
                checkpoint: req_checkpoint,
            });
            // A container to be restored has no cgroup before its Start.
            if !c.restores() {
                c.watch_oom(&tasks.shared);
            }
            if early {
                tasks.handle_exit(c.init.clone());
            }
        });
        rx.await
            .map_err(|_| Error::Internal("create ended without a result".into()))?
    }

    /// Starts init (empty `exec_id`) or an exec.
    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<i32> {
        let c = self.container(id)?;
        let tasks = self.clone();
        let exec_id = exec_id.to_string();
        detached(async move {
            if exec_id.is_empty() {
                let (pid, early) = c.start(&tasks.shared).await?;
                if c.restores() {
                    c.watch_oom(&tasks.shared);
                }
                // A container starting in a pod is a moment its network may have changed.
                if let Some(sandbox) = c
                    .pod_sandbox
                    .as_deref()
                    .and_then(|s| tasks.container(s).ok())
                {
                    sandbox.record_network("container start");
                }
                if early {
                    tasks.handle_exit(c.init.clone());
                }
                return Ok(pid);
            }
            let (pid, early) = c.start_exec(&tasks.shared, &exec_id).await?;
            if early {
                tasks.handle_exit(c.process(&exec_id)?);
            }
            Ok(pid)
        })
        .await
    }

    /// Deletes an exec, or the container with its init; returns pid and exit.
    pub async fn delete(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<(i32, Exited)> {
        let c = self.container(id)?;
        let tasks = self.clone();
        let exec_id = exec_id.to_string();
        detached(async move {
            if !exec_id.is_empty() {
                return c.delete_exec(&tasks.shared, &exec_id).await;
            }
            let result = c.delete(&tasks.shared).await;
            if result.is_ok() || c.init.state() == State::Deleted {
                c.stop_oom_watch();
                tasks.remove(&c);
            }
            result.map(|e| (c.init.pid(), e))
        })
        .await
    }

    /// Registers exec `exec_id` with its JSON process spec.
    pub fn exec(&self, id: &str, exec_id: &str, spec: &[u8], stdio: StdioPaths) -> Result<()> {
        let c = self.container(id)?;
        let spec: oci_spec::runtime::Process = serde_json::from_slice(spec).map_err(|e| {
            Error::InvalidArgument(format!("exec {id}/{exec_id}: bad process spec: {e}"))
        })?;
        c.add_exec(&self.shared, exec_id, spec, stdio)
    }

    /// Signals init (all processes with `all`) or an exec.
    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            c.kill(signal, all).await
        } else {
            c.kill_exec(exec_id, signal)
        }
    }

    /// Checkpoints the container into `path` (CRIU images) with containerd's options (a
    /// `containerd.runc.v1.CheckpointOptions`); with their `exit` the container stops.
    pub async fn checkpoint(
        self: &Arc<Self>,
        id: &str,
        path: &str,
        options: Option<&Any>,
    ) -> Result<()> {
        let c = self.container(id)?;
        let decoded = crate::container::checkpoint::checkpoint_options(id, options)?;
        let opts = crate::container::checkpoint::checkpoint_opts(id, path, &decoded)?;
        detached(async move { c.checkpoint(opts).await }).await
    }

    /// Freezes the container.
    pub async fn pause(self: &Arc<Self>, id: &str) -> Result<()> {
        let c = self.container(id)?;
        let tasks = self.clone();
        detached(async move { c.pause(&tasks.shared).await }).await
    }

    /// Thaws the container.
    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<()> {
        let c = self.container(id)?;
        let tasks = self.clone();
        detached(async move { c.resume(&tasks.shared).await }).await
    }

    /// The state of init or an exec; never waits for a lifecycle call.
    pub fn state(&self, id: &str, exec_id: &str) -> Result<Snapshot> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        Ok(Snapshot {
            bundle: c.bundle.display().to_string(),
            pid: p.pid(),
            state: p.state(),
            exited: p.exited(),
            stdio: p.stdio.clone(),
        })
    }

    /// Waits until the process's exit has been reported.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exited> {
        let p = self.container(id)?.process(exec_id)?;
        Ok(p.wait_reported().await)
    }

    /// Pids of every process in the container.
    pub async fn pids(&self, id: &str) -> Result<Vec<(i32, Option<String>)>> {
        self.container(id)?.pids().await
    }

    /// Applies new resources (`resources`: an OCI `LinuxResources` as JSON, the way
    /// containerd marshals it) to the container with `runc update`.
    ///
    /// `annotations` carry nothing runc can apply (containerd's Go shim ignores them too);
    /// they are logged.
    pub async fn update(
        self: &Arc<Self>,
        id: &str,
        resources: Option<&Any>,
        annotations: &HashMap<String, String>,
    ) -> Result<()> {
        let c = self.container(id)?;
        let any = resources.ok_or_else(|| {
            Error::InvalidArgument(format!("update {id}: the request carries no resources"))
        })?;
        // runc reads the resources itself; only what is not even a JSON object stops here.
        let object = any.value.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if !object || serde_json::from_slice::<serde::de::IgnoredAny>(&any.value).is_err() {
            return Err(Error::InvalidArgument(format!(
                "update {id}: resources ({}) are not an OCI LinuxResources in JSON",
                any.type_url
            )));
        }
        if !annotations.is_empty() {
            log::debug!("update {id}: annotations not applied: {annotations:?}");
        }
        let resources = any.value.clone();
        detached(async move { c.update(&resources).await }).await
    }

    /// The container's cgroup statistics, as the Any containerd expects.
    pub fn stats(&self, id: &str) -> Result<Any> {
        self.container(id)?.stats()
    }

    /// Ends feeding stdin of init or an exec (with a terminal: sends its EOF character).
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let p = self.container(id)?.process(exec_id)?;
        p.copiers.lock().await.close_stdin();
        Ok(())
    }

    /// Sets the terminal size of init or an exec; FailedPrecondition when it has none.
    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let p = self.container(id)?.process(exec_id)?;
        let resized = p.copiers.lock().await.resize(width, height);
        match resized {
            Some(r) => {
                r.map_err(|e| Error::io(id, format!("resize the terminal of {}", p.name()), e))
            }
            None => Err(Error::FailedPrecondition {
                id: p.name(),
                op: "resize a terminal",
                state: if p.stdio.terminal {
                    // Asked for, but runc has not handed it over yet, or it is closed.
                    format!("{} with its terminal not open", p.state())
                } else {
                    format!("{} without a terminal", p.state())
                },
            }),
        }
    }
}

/// Every process's lifecycle lock, held (see [`Tasks::try_hold_lifecycles`]); released
/// on drop.
#[derive(Default)]
pub struct LifecycleHold {
    guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
    /// The processes held, as "container/exec", sorted.
    pub held: Vec<String>,
}

#[cfg(test)]
mod tests;
