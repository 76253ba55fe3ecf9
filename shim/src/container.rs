//! A container: its bundle, the runc client configured for it, its init process and the
//! lifecycle calls on init (create, start, pause, resume, kill, delete) and its exit.
//! Checkpoint and restore are in [`checkpoint`].
//!
//! Every lifecycle call holds init's lifecycle lock from its state check to its event, so
//! calls on one container are serialised and an exit is never published between a
//! start and its TaskStart. Execs live in [`crate::exec`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::types::mount::Mount;
use runc_client::{CreateOpts, Deadlines, Reaper, Runc, RuncConfig};

use crate::error::{Error, Result};
use crate::events::Event;
use crate::exec::Exec;
use crate::io::{self, StdioPaths};
use crate::netmeta::{self, Recorder};
use crate::options::RuntimeOptions;
use crate::process::{Exited, Process, State};
use crate::record::Record;
use crate::tasks::Shared;

pub mod checkpoint;
mod exit;
mod oom;
mod resources;

pub use exit::{finish_io, report_exit, report_exit_locked};

/// Longest exit handling waits for the last output to reach containerd's FIFOs while the
/// copy still makes progress (a silent pipe is given up on much sooner).
pub const IO_DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// How long Delete lets output that is still moving drain before it stops the copy loops.
/// CRI gives its exit handling (which calls Delete) 10 s, so Delete must answer before.
pub const DELETE_DRAIN_LIMIT: Duration = Duration::from_secs(8);
/// How long init's exit event waits for its execs' exits.
const EXEC_EXIT_LIMIT: Duration = Duration::from_secs(10);
/// How long Delete of a created container waits for `runc delete --force` to reap init.
const CREATED_KILL_LIMIT: Duration = Duration::from_secs(2);
/// How long init's TaskExit waits for a Kill still in runc to answer.
const KILL_ANSWER_LIMIT: Duration = Duration::from_secs(5);
/// Status reported for a process whose exit was never seen (killed by a forced delete).
pub const KILLED: u32 = 137;

/// A container managed by this shim.
pub struct Container {
    /// Container id.
    pub id: String,
    /// Bundle directory (containerd's state dir for the task).
    pub bundle: PathBuf,
    /// runc client configured with this container's options.
    pub runc: Runc,
    /// The init process.
    pub init: Arc<Process>,
    /// Runtime options it was created with.
    pub options: RuntimeOptions,
    /// Whether init has its own PID namespace (if not, its exit must kill the rest).
    pub own_pid_namespace: bool,
    namespace: String,
    rootfs: Vec<Mount>,
    /// Create's options as containerd encoded them (a handover carries them).
    create_options: Option<Any>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
    cgroups: resources::CgroupState,
    oom: oom::OomState,
    /// Set when Create carried a checkpoint: Start restores from it.
    restore: Option<checkpoint::RestoreFrom>,
    parked: checkpoint::ParkedSlot,
    /// For a pod sandbox: how to record its network (docs/netmeta.md).
    netmeta: Option<netmeta::Plan>,
    recorder: std::sync::OnceLock<Recorder>,
    /// For an app container of a pod: the sandbox's id.
    pub pod_sandbox: Option<String>,
}

/// What a create had done when it failed, so that only that is undone.
#[derive(Default)]
struct Progress {
    record: bool,
    mounted: bool,
    runc_called: bool,
}

impl Container {
    /// Checks the request and builds the container in state Creating; touches nothing.
    pub fn new(req: &CreateTaskRequest, namespace: &str, reaper: Reaper) -> Result<Self> {
        let id = req.id.as_str();
        crate::ids::validate("container", id)?;
        let restore = restore_from(req)?;
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "container {id}: bundle {:?} is not an absolute path",
                req.bundle
            )));
        }
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).map_err(|e| {
            Error::InvalidArgument(format!(
                "container {id}: bundle {}: cannot load config.json: {e}",
                bundle.display()
            ))
        })?;
        let options =
            RuntimeOptions::from_any(req.options.as_ref()).map_err(|source| Error::Options {
                id: id.to_string(),
                source,
            })?;
        let own_pid_namespace = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .map(|ns| {
                ns.iter().any(|n| {
                    n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && n.path().is_none()
                })
            })
            .unwrap_or(false);
        let runc = Runc::new(
            RuncConfig {
                binary: PathBuf::from(options.binary()),
                root: Some(Record::runc_root(&options.root, namespace)),
                systemd_cgroup: options.systemd_cgroup,
                log: Some(bundle.join("log.json")),
                criu: (!options.criu_path.is_empty()).then(|| PathBuf::from(&options.criu_path)),
                deadlines: Deadlines {
                    // Always `--detach`: runc only sets the process up.
                    exec: crate::exec::EXEC_START_LIMIT,
                    ..Deadlines::default()
                },
                ..RuncConfig::default()
            },
            reaper,
        );
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let netmeta = netmeta::Plan::for_container(&spec, id, namespace, &options);
        let pod_sandbox = netmeta::sandbox_of(&spec, id);
        Ok(Self {
            id: id.to_string(),
            bundle,
            runc,
            init: Arc::new(Process::creating(id, stdio)),
            options,
            own_pid_namespace,
            namespace: namespace.to_string(),
            rootfs: req.rootfs.to_vec(),
            create_options: req.options.as_ref().cloned(),
            execs: Mutex::new(HashMap::new()),
            cgroups: Default::default(),
            oom: Default::default(),
            restore,
            parked: Default::default(),
            netmeta,
            recorder: std::sync::OnceLock::new(),
            pod_sandbox,
        })
    }

    /// Asks for a snapshot of the sandbox's network (first call: starts recording it).
    /// Never waits and never fails: see [`crate::netmeta`].
    pub fn record_network(&self, why: &'static str) {
        let Some(plan) = &self.netmeta else { return };
        let mut started = false;
        let rec = self.recorder.get_or_init(|| {
            started = true;
            Recorder::start(plan.clone(), self.init.pid(), why)
        });
        if !started {
            rec.trigger(why);
        }
    }

    fn record(&self) -> Record {
        Record {
            version: crate::record::RECORD_VERSION,
            id: self.id.clone(),
            namespace: self.namespace.clone(),
            runtime: self.options.binary().to_string(),
            root: Record::runc_root(&self.options.root, &self.namespace),
            systemd_cgroup: self.options.systemd_cgroup,
            mounted_rootfs: !self.rootfs.is_empty(),
        }
    }

    fn runc_error(&self, e: runc_client::Error) -> Error {
        Error::runc(&self.id, self.options.binary(), e)
    }

    /// Records what a later cleanup needs, mounts the rootfs and runs `runc create`;
    /// Creating → Created. The caller holds init's lifecycle lock. On failure it undoes
    /// exactly what it did (never a same-id container it did not create) and leaves init
    /// Deleted. Returns init's pid, and whether init already died (its exit is recorded
    /// and still needs handling).
    pub async fn create(&self, shared: &Shared) -> Result<(i32, bool)> {
        let mut done = Progress::default();
        // Held until init's pid is registered: its early exit must stay claimable.
        let expected = shared.router.expect_pid();
        let since = expected.since();
        let result = self.try_create(&mut done).await;
        let pid = match result {
            Ok(pid) => pid,
            Err(e) => {
                self.undo_create(done, &e).await;
                self.init.create_failed();
                return Err(e);
            }
        };
        self.init.created(pid)?;
        self.record_network("create");
        if self.restores() {
            // Nothing runs before the restore.
            return Ok((pid, false));
        }
        let early = match shared.router.register(pid, &self.init, since) {
            Some(exit) => self.init.reaped(exit.status as u32, exit.at).is_ok(),
            None => false,
        };
        Ok((pid, early))
    }

    async fn try_create(&self, done: &mut Progress) -> Result<i32> {
        // fsync can take long on a busy disk: off the runtime thread.
        self.record()
            .save_async(&self.bundle)
            .await
            .map_err(|e| Error::io(&self.id, "write sturdy.json into the bundle", e))?;
        done.record = true;
        let rootfs = self.bundle.join("rootfs");
        if !self.rootfs.is_empty() {
            mount_all(&self.id, &self.rootfs, &rootfs).await?;
            done.mounted = true;
        }
        let owner = io::Owner {
            container: &self.id,
            process: &self.id,
            namespace: &self.namespace,
        };
        let stdio = io::prepare_stdio(
            &owner,
            &self.init.stdio,
            self.options.io_uid,
            self.options.io_gid,
            &self.bundle,
        )
        .await?;
        *self.init.copiers.lock().await = stdio.copiers;
        if self.restores() {
            // runc restore, at Start, hands these to CRIU; until then init has no pid.
            self.park(stdio.io, stdio.console);
            return Ok(0);
        }
        let pid_file = self.bundle.join("init.pid");
        let opts = CreateOpts {
            pid_file: pid_file.clone(),
            console_socket: stdio.console.as_ref().map(|c| c.socket_path().to_owned()),
            no_pivot: self.options.no_pivot_root,
            no_new_keyring: self.options.no_new_keyring,
            detach: true,
            io: stdio.io,
            extra_files: Vec::new(),
        };
        done.runc_called = true;
        self.runc
            .create(&self.id, &self.bundle, &opts)
            .await
            .map_err(|e| self.runc_error(e))?;
        drop(opts);
        if let Some(console) = stdio.console {
            // A failure here is undone like a failed `runc create`: init is deleted.
            *self.init.copiers.lock().await = console.start().await?;
        }
        read_pid(&self.id, &pid_file).await
    }

    async fn undo_create(&self, done: Progress, cause: &Error) {
        self.init.copiers.lock().await.abort();
        // runc refuses an id it already has; that container is not ours to delete.
        let foreign = matches!(cause, Error::Runc { source, .. } if source.is_already_exists());
        if done.runc_called && !foreign {
            if let Err(e) = self.runc.delete(&self.id, true).await {
                if !e.is_not_found() {
                    log::warn!("container {}: cleanup after failed create: {e}", self.id);
                }
            }
        }
        if done.mounted {
            unmount(&self.bundle.join("rootfs"));
        }
        if done.record {
            if let Err(e) = std::fs::remove_file(self.bundle.join(crate::record::RECORD_FILE)) {
                log::warn!(
                    "container {}: remove record after failed create: {e}",
                    self.id
                );
            }
        }
    }

    /// Undoes a create containerd does not know about (its request was given up on).
    /// The caller still holds init's lifecycle lock from the create.
    pub async fn abandon(&self, shared: &Shared) {
        let done = Progress {
            record: true,
            mounted: !self.rootfs.is_empty(),
            runc_called: true,
        };
        shared.router.forget(self.init.pid(), &self.init);
        self.undo_create(done, &Error::Internal("create abandoned".into()))
            .await;
        if let Some(rec) = self.recorder.get() {
            rec.remove().await;
        }
        if self.init.begin_delete().is_ok() {
            self.init.delete_done(Exited {
                status: KILLED,
                at: SystemTime::now(),
            });
        }
    }

    /// `runc start` (`runc restore` for a container created from a checkpoint);
    /// Created → Starting → Running, then TaskStart. Returns init's pid, and whether a
    /// restored init already exited (its exit is recorded and still needs handling).
    pub async fn start(&self, shared: &Shared) -> Result<(i32, bool)> {
        let _lifecycle = self.init.lifecycle.lock().await;
        self.init.begin_start()?;
        let started = if self.restores() {
            self.restore(shared).await
        } else {
            match self.runc.start(&self.id).await {
                Ok(()) => Ok((self.init.pid(), false)),
                Err(e) => Err(self.runc_error(e)),
            }
        };
        let (pid, early) = match started {
            Ok(v) => v,
            Err(e) => {
                self.init.start_failed();
                return Err(e);
            }
        };
        self.init.start_succeeded(pid)?;
        self.record_network("start");
        self.publish_start(shared, pid);
        crate::memory::trim_heap();
        Ok((pid, early))
    }

    /// `runc pause`; Running → Pausing → Paused, then TaskPaused.
    pub async fn pause(&self, shared: &Shared) -> Result<()> {
        let _lifecycle = self.init.lifecycle.lock().await;
        self.init.begin_pause()?;
        let r = self.runc.pause(&self.id).await;
        self.init.pause_done(r.is_ok());
        r.map_err(|e| self.runc_error(e))?;
        shared.events.publish(Event::Paused {
            id: self.id.clone(),
        });
        Ok(())
    }

    /// `runc resume`; Paused → Resuming → Running, then TaskResumed.
    pub async fn resume(&self, shared: &Shared) -> Result<()> {
        let _lifecycle = self.init.lifecycle.lock().await;
        self.init.begin_resume()?;
        let r = self.runc.resume(&self.id).await;
        self.init.resume_done(r.is_ok());
        r.map_err(|e| self.runc_error(e))?;
        shared.events.publish(Event::Resumed {
            id: self.id.clone(),
        });
        Ok(())
    }

    /// Signals init (or, with `all`, every process of the container). Takes no lock, so
    /// it can stop a container whose Start or Pause is stuck in runc.
    pub async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        let signal = crate::ids::signal(signal)?;
        let gone = || Error::NotFound {
            kind: "process (already finished)",
            id: self.id.clone(),
        };
        match self.init.state() {
            State::Creating => {
                return Err(Error::FailedPrecondition {
                    id: self.id.clone(),
                    op: "kill",
                    state: State::Creating.to_string(),
                })
            }
            State::Stopped | State::Deleting | State::Deleted if !all => return Err(gone()),
            _ => {}
        }
        let _killing = self.init.kills.read().await;
        match self.runc.kill(&self.id, signal, all).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() || !self.init.state().is_live() => Err(gone()),
            Err(e) => Err(self.runc_error(e)),
        }
    }

    /// Removes the container from runc, stops its stdio and unmounts its rootfs;
    /// Created | Stopped → Deleting → Deleted, then TaskExit (if not yet out) and
    /// TaskDelete. A created init is killed by `runc delete --force`.
    pub async fn delete(&self, shared: &Shared) -> Result<Exited> {
        let _lifecycle = self.init.lifecycle.lock().await;
        let was = self.init.begin_delete()?;
        if let Err(e) = self.runc.delete(&self.id, was == State::Created).await {
            if !e.is_not_found() {
                self.init.delete_failed(was);
                return Err(self.runc_error(e));
            }
        }
        // A container waiting for its restore has no process to wait for.
        if was == State::Created && self.init.pid() != 0 {
            let _ = tokio::time::timeout(CREATED_KILL_LIMIT, self.init.wait_reaped()).await;
        }
        finish_io(&self.init).await;
        let execs: Vec<Arc<Exec>> = self.execs().drain().map(|(_, e)| e).collect();
        for exec in execs {
            exec.process.copiers.lock().await.abort();
            // Nothing can ask about these execs any more; release whoever still waits.
            shared.router.forget(exec.process.pid(), &exec.process);
            exec.process.delete_done(Exited {
                status: KILLED,
                at: SystemTime::now(),
            });
        }
        if !self.rootfs.is_empty() {
            unmount(&self.bundle.join("rootfs"));
        }
        if let Some(rec) = self.recorder.get() {
            rec.remove().await;
        }
        self.report_init_exit_locked(shared);
        let pid = self.init.pid();
        let exited = self.init.delete_done(Exited {
            status: KILLED,
            at: SystemTime::now(),
        });
        shared.router.forget(pid, &self.init);
        shared.events.publish(Event::Delete {
            id: self.id.clone(),
            pid,
            status: exited.status,
            at: exited.at,
        });
        crate::memory::trim_heap();
        Ok(exited)
    }

    /// Pids of every process in the container, each with the id of the running exec it
    /// is, if it is one.
    pub async fn pids(&self) -> Result<Vec<(i32, Option<String>)>> {
        let pids = self
            .runc
            .ps(&self.id)
            .await
            .map_err(|e| self.runc_error(e))?;
        // Only live execs: a finished one's pid may already belong to another process.
        let execs: HashMap<i32, String> = self
            .execs()
            .iter()
            .filter(|(_, e)| e.process.state().is_live() && e.process.pid() > 0)
            .map(|(id, e)| (e.process.pid(), id.clone()))
            .collect();
        Ok(pids
            .into_iter()
            .map(|pid| (pid, execs.get(&pid).cloned()))
            .collect())
    }

    /// The containerd namespace of this container.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// What Create carried that a handover must carry again: its options and rootfs.
    pub fn create_parts(&self) -> (Option<&Any>, &[Mount]) {
        (self.create_options.as_ref(), &self.rootfs)
    }

    /// The execs of this container.
    pub(crate) fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Exec>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The process `exec_id` names: init for an empty id, else an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs()
            .get(exec_id)
            .map(|e| e.process.clone())
            .ok_or_else(|| Error::NotFound {
                kind: "exec",
                id: format!("{}/{exec_id}", self.id),
            })
    }
}

/// The checkpoint `req` restores from, if any. runc restore has no `--parent-path`: CRIU
/// follows the `parent` link a pre-dump left in the images, so `parent_checkpoint` (which
/// containerd does not send) needs nothing more.
fn restore_from(req: &CreateTaskRequest) -> Result<Option<checkpoint::RestoreFrom>> {
    if req.checkpoint.is_empty() {
        return Ok(None);
    }
    if !req.checkpoint.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "container {}: checkpoint {:?} is not an absolute path",
            req.id, req.checkpoint
        )));
    }
    if !req.parent_checkpoint.is_empty() {
        log::info!(
            "container {}: parent checkpoint {} is found through the images' parent link",
            req.id,
            req.parent_checkpoint
        );
    }
    Ok(Some(checkpoint::RestoreFrom {
        image: PathBuf::from(&req.checkpoint),
    }))
}

/// Reads a pid file runc wrote.
pub async fn read_pid(id: &str, path: &Path) -> Result<i32> {
    let owned = path.to_path_buf();
    let text = runc_client::blocking::run("read-pid", move || std::fs::read_to_string(owned))
        .await
        .and_then(|read| read)
        .map_err(|e| Error::io(id, format!("read {}", path.display()), e))?;
    text.trim().parse::<i32>().map_err(|_| {
        Error::io(
            id,
            format!("parse {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{text:?}")),
        )
    })
}

async fn mount_all(id: &str, mounts: &[Mount], rootfs: &Path) -> Result<()> {
    std::fs::create_dir_all(rootfs).map_err(|e| Error::io(id, "create rootfs dir", e))?;
    crate::mount::mount_all(mounts, rootfs, &Reaper::global())
        .await
        .map_err(|e| Error::io(id, "mount rootfs", e.into()))
}

/// Unmounts everything at `target`, tolerating "not mounted"; failures are logged.
pub fn unmount(target: &Path) {
    if let Err(e) = crate::mount::unmount(target) {
        log::warn!("{e}");
    }
}
