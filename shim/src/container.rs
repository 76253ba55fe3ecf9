//! A container: its bundle, the runc client configured for it, and its init process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::types::mount::Mount;
use runc_client::{CreateOpts, ExecOpts, Reaper, Runc, RuncConfig};

use crate::error::{Error, Result};
use crate::io::{self, StdioPaths};
use crate::options::RuntimeOptions;
use crate::process::{Process, Status};
use crate::record::Record;

/// Longest exit handling waits for the last output to reach containerd's FIFOs while the
/// copy still makes progress (a silent pipe is given up on much sooner).
pub const IO_DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// How long Delete lets output that is still moving drain before it stops the copy loops.
/// CRI gives its exit handling (which calls Delete) 10 s, so Delete must answer before.
pub const DELETE_DRAIN_LIMIT: Duration = Duration::from_secs(8);

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
    mounted_rootfs: bool,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
}

/// An exec process and the spec it runs.
pub struct Exec {
    /// Lifecycle and stdio of the exec.
    pub process: Arc<Process>,
    spec: oci_spec::runtime::Process,
}

impl Container {
    /// Validates the request, mounts the rootfs, runs `runc create` and records what a
    /// later cleanup needs. Leaves nothing behind when it fails.
    pub async fn create(req: &CreateTaskRequest, namespace: &str, reaper: Reaper) -> Result<Self> {
        let id = req.id.as_str();
        if id.is_empty() {
            return Err(Error::InvalidArgument(
                "container id must not be empty".into(),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented("create from checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec_path = bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&spec_path).map_err(|e| {
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

        let root = Record::runc_root(&options.root, namespace);
        let runc = Runc::new(
            RuncConfig {
                binary: PathBuf::from(options.binary()),
                root: Some(root.clone()),
                systemd_cgroup: options.systemd_cgroup,
                log: Some(bundle.join("log.json")),
                ..RuncConfig::default()
            },
            reaper,
        );

        let mounted_rootfs = !req.rootfs.is_empty();
        let record = Record {
            version: 1,
            id: id.to_string(),
            namespace: namespace.to_string(),
            runtime: options.binary().to_string(),
            root,
            systemd_cgroup: options.systemd_cgroup,
            mounted_rootfs,
        };
        record
            .save(&bundle)
            .map_err(|e| Error::io(id, "write sturdy.json into the bundle", e))?;

        let rootfs = bundle.join("rootfs");
        if mounted_rootfs {
            mount_all(id, &req.rootfs, &rootfs).await?;
        }

        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let created = async {
            let (pio, copiers) = io::prepare(id, &stdio, options.io_uid, options.io_gid, &bundle)?;
            let pid_file = bundle.join("init.pid");
            let opts = CreateOpts {
                pid_file: pid_file.clone(),
                console_socket: None,
                no_pivot: options.no_pivot_root,
                no_new_keyring: options.no_new_keyring,
                detach: true,
                io: pio,
                extra_files: Vec::new(),
            };
            runc.create(id, &bundle, &opts)
                .await
                .map_err(|e| Error::runc(id, options.binary(), e))?;
            let pid = read_pid(id, &pid_file).await?;
            Ok::<_, Error>(Process::created(id, pid, stdio.clone(), copiers))
        }
        .await;
        let init = match created {
            Ok(p) => p,
            Err(e) => {
                // Half-created containers must not outlive a failed Create, but a container
                // runc already had under this id is not ours to delete.
                let foreign = matches!(&e, Error::Runc { source, .. }
                    if source.to_string().contains("already exists"));
                if foreign {
                    if mounted_rootfs {
                        // Only our layer: the existing container's rootfs may lie beneath.
                        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
                    }
                    return Err(e);
                }
                if let Err(de) = runc.delete(id, true).await {
                    if !de.is_not_found() {
                        log::warn!("container {id}: cleanup after failed create: {de}");
                    }
                }
                if mounted_rootfs {
                    unmount(&rootfs);
                }
                return Err(e);
            }
        };
        Ok(Self {
            id: id.to_string(),
            bundle,
            runc,
            init: Arc::new(init),
            options,
            own_pid_namespace,
            mounted_rootfs,
            execs: Mutex::new(HashMap::new()),
        })
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Exec>>> {
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

    /// Every exec process, for exit routing.
    pub fn exec_processes(&self) -> Vec<Arc<Process>> {
        self.execs().values().map(|e| e.process.clone()).collect()
    }

    /// Registers an exec (nothing runs until [`Container::start_exec`]).
    pub fn add_exec(
        &self,
        exec_id: &str,
        spec: oci_spec::runtime::Process,
        stdio: StdioPaths,
    ) -> Result<()> {
        match self.init.status() {
            Status::Running | Status::Paused => {}
            s => {
                return Err(Error::FailedPrecondition {
                    id: self.id.clone(),
                    op: "exec",
                    state: s.to_string(),
                })
            }
        }
        let mut execs = self.execs();
        if execs.contains_key(exec_id) {
            return Err(Error::AlreadyExists {
                kind: "exec",
                id: format!("{}/{exec_id}", self.id),
            });
        }
        let process = Process::created(exec_id, 0, stdio, Default::default());
        execs.insert(
            exec_id.to_string(),
            Arc::new(Exec {
                process: Arc::new(process),
                spec,
            }),
        );
        Ok(())
    }

    /// `runc exec --detach`; returns the exec's pid.
    pub async fn start_exec(&self, exec_id: &str) -> Result<i32> {
        let exec = self
            .execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "exec",
                id: format!("{}/{exec_id}", self.id),
            })?;
        let p = &exec.process;
        if p.status() != Status::Created || p.pid() != 0 {
            return Err(Error::FailedPrecondition {
                id: self.id.clone(),
                op: "start exec",
                state: p.status().to_string(),
            });
        }
        let (pio, copiers) = io::prepare(
            &self.id,
            &p.stdio,
            self.options.io_uid,
            self.options.io_gid,
            &self.bundle,
        )?;
        *p.copiers.lock().await = copiers;
        let pid_file = self.bundle.join(format!("{exec_id}.pid"));
        let opts = ExecOpts {
            pid_file: pid_file.clone(),
            console_socket: None,
            detach: true,
            io: pio,
            spec_dir: Some(self.bundle.clone()),
        };
        let run = self.runc.exec(&self.id, &exec.spec, &opts).await;
        // Our copies of the container-side pipe ends must go, or stdout never sees EOF.
        drop(opts);
        if let Err(e) = run {
            p.copiers.lock().await.abort();
            return Err(Error::runc(&self.id, self.options.binary(), e));
        }
        let pid = read_pid(&self.id, &pid_file).await;
        let _ = std::fs::remove_file(&pid_file);
        let pid = pid?;
        p.set_pid(pid);
        p.set_running();
        Ok(pid)
    }

    /// Forgets a finished (or never started) exec.
    pub async fn delete_exec(&self, exec_id: &str) -> Result<(i32, u32, SystemTime)> {
        let p = self.process(exec_id)?;
        match p.status() {
            Status::Running | Status::Paused => {
                return Err(Error::FailedPrecondition {
                    id: self.id.clone(),
                    op: "delete exec",
                    state: p.status().to_string(),
                })
            }
            _ => {}
        }
        self.execs().remove(exec_id);
        finish_io(&p).await;
        p.set_deleted();
        let (code, at) = p
            .exited()
            .map(|e| (e.status, e.at))
            .unwrap_or((0, SystemTime::now()));
        Ok((p.pid(), code, at))
    }

    /// Signals an exec process directly, as runc has no notion of it.
    pub fn kill_exec(&self, exec_id: &str, signal: u32) -> Result<()> {
        let p = self.process(exec_id)?;
        let pid = p.pid();
        if pid <= 0 || matches!(p.status(), Status::Stopped | Status::Deleted) {
            return Err(Error::NotFound {
                kind: "process (already finished)",
                id: format!("{}/{exec_id}", self.id),
            });
        }
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("signal {signal}")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|e| {
            if e == nix::errno::Errno::ESRCH {
                Error::NotFound {
                    kind: "process (already finished)",
                    id: format!("{}/{exec_id}", self.id),
                }
            } else {
                Error::io(&self.id, format!("kill exec {exec_id}"), e.into())
            }
        })
    }

    /// `runc start`; returns init's pid.
    pub async fn start(&self) -> Result<i32> {
        match self.init.status() {
            Status::Created => {}
            s => {
                return Err(Error::FailedPrecondition {
                    id: self.id.clone(),
                    op: "start",
                    state: s.to_string(),
                })
            }
        }
        self.runc
            .start(&self.id)
            .await
            .map_err(|e| Error::runc(&self.id, self.options.binary(), e))?;
        // A false here means init already exited; its exit is handled elsewhere.
        self.init.set_running();
        Ok(self.init.pid())
    }

    /// Signals init (or, with `all`, every process of the container).
    pub async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        match self.init.status() {
            Status::Stopped | Status::Deleted if !all => {
                return Err(Error::NotFound {
                    kind: "process (already finished)",
                    id: self.id.clone(),
                })
            }
            _ => {}
        }
        match self.runc.kill(&self.id, signal as i32, all).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() || self.init.status() == Status::Stopped => {
                Err(Error::NotFound {
                    kind: "process (already finished)",
                    id: self.id.clone(),
                })
            }
            Err(e) => Err(Error::runc(&self.id, self.options.binary(), e)),
        }
    }

    /// Removes the container from runc and unmounts its rootfs.
    ///
    /// A created-but-never-started init is killed by `runc delete --force`; its exit is
    /// awaited briefly so the caller can report a real status.
    pub async fn delete(&self) -> Result<(i32, u32, SystemTime)> {
        let status = self.init.status();
        match status {
            Status::Running | Status::Paused => {
                return Err(Error::FailedPrecondition {
                    id: self.id.clone(),
                    op: "delete",
                    state: status.to_string(),
                })
            }
            Status::Deleted => {
                return Err(Error::NotFound {
                    kind: "container",
                    id: self.id.clone(),
                })
            }
            Status::Created | Status::Stopped => {}
        }
        if let Err(e) = self.runc.delete(&self.id, status == Status::Created).await {
            if !e.is_not_found() {
                return Err(Error::runc(&self.id, self.options.binary(), e));
            }
        }
        if status == Status::Created {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.init.wait()).await;
        }
        finish_io(&self.init).await;
        if self.mounted_rootfs {
            unmount(&self.bundle.join("rootfs"));
        }
        let exited = self.init.exited();
        self.init.set_deleted();
        let (code, at) = exited
            .map(|e| (e.status, e.at))
            .unwrap_or((137, SystemTime::now()));
        Ok((self.init.pid(), code, at))
    }

    /// Pids of every process in the container.
    pub async fn pids(&self) -> Result<Vec<i32>> {
        self.runc
            .ps(&self.id)
            .await
            .map_err(|e| Error::runc(&self.id, self.options.binary(), e))
    }
}

/// Lets the output of a finished process reach containerd, then stops its copy loops.
///
/// containerd (CRI's exit monitor) calls Delete as soon as Wait returns, which can be
/// before the exit handler finished draining; aborting then would cut off the tail.
async fn finish_io(p: &Process) {
    let progress = p.copiers.lock().await.progress();
    progress.drain_moving(DELETE_DRAIN_LIMIT).await;
    p.copiers.lock().await.abort();
}

async fn read_pid(id: &str, path: &Path) -> Result<i32> {
    let text = tokio::fs::read_to_string(path)
        .await
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
