//! Exec processes of a container: registered by Exec, run by Start with
//! `runc exec --detach`, signalled directly (runc has no notion of them) and forgotten by
//! Delete. Each call holds the exec's own lifecycle lock, as init's calls hold init's.
//!
//! `runc exec --detach` only sets a process up, so it is bounded like a setup step
//! ([`EXEC_START_LIMIT`]), and a Kill or Delete of the exec, or the end of its
//! container, ends a Start still in runc at once (incident 002's shape: every `runc exec`
//! hanging held its Start, and with it CRI's ExecSync and the pod's stop, for runc's
//! whole 60 s deadline).

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use runc_client::ExecOpts;

use crate::container::IO_DRAIN_LIMIT;
use crate::container::{finish_io, read_pid, report_exit, report_exit_locked, Container};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::io::{self, StdioPaths};
use crate::process::{Exited, Process, State, NEVER_RAN};
use crate::tasks::Shared;

/// Directory of the bundle holding exec pid files, apart from init's.
pub const EXEC_DIR: &str = "execs";

/// Longest `runc exec --detach` may take before it counts as hung: it is killed with what
/// it started and the Start fails. Not less: 100 ExecSyncs at once, all their `runc exec`s
/// competing for two cores, took up to 4.6 s in all on a loaded machine (load 7), and a
/// legitimate exec failed for being slow is worse than a hung one noticed 3 s later. Not
/// more: an ExecSync whose `runc exec` hangs must fail within 10 s.
pub const EXEC_START_LIMIT: Duration = Duration::from_secs(8);

/// How long a Delete that ended a Start waits for the exec it killed to be reaped (runc
/// had started it just before).
const ABORTED_EXIT_LIMIT: Duration = Duration::from_secs(2);

/// An exec process and the spec it runs.
pub struct Exec {
    /// Lifecycle and stdio of the exec.
    pub process: Arc<Process>,
    spec: oci_spec::runtime::Process,
}

impl Exec {
    /// Its process spec as JSON, for a handover.
    pub fn spec_json(&self) -> Result<String> {
        serde_json::to_string(&self.spec).map_err(|e| {
            Error::Internal(format!(
                "exec {}: encode its spec: {e}",
                self.process.name()
            ))
        })
    }
}

impl Container {
    fn exec_entry(&self, exec_id: &str) -> Result<Arc<Exec>> {
        self.execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "exec",
                id: format!("{}/{exec_id}", self.id),
            })
    }

    /// Registers an exec (nothing runs until [`Container::start_exec`]), then
    /// TaskExecAdded.
    pub fn add_exec(
        &self,
        shared: &Shared,
        exec_id: &str,
        mut spec: oci_spec::runtime::Process,
        stdio: StdioPaths,
    ) -> Result<()> {
        crate::ids::validate("exec", exec_id)?;
        // runc allocates a pty by the spec and we expect one by the request: they must
        // agree, or runc either never sends the master or refuses to run detached.
        spec.set_terminal(Some(stdio.terminal));
        match self.init.state() {
            State::Running | State::Paused | State::Pausing | State::Resuming => {}
            s => {
                return Err(Error::FailedPrecondition {
                    id: self.id.clone(),
                    op: "exec",
                    state: s.to_string(),
                })
            }
        }
        {
            let mut execs = self.execs();
            if execs.contains_key(exec_id) {
                return Err(Error::AlreadyExists {
                    kind: "exec",
                    id: format!("{}/{exec_id}", self.id),
                });
            }
            let process = Arc::new(Process::exec(&self.id, exec_id, stdio));
            execs.insert(exec_id.to_string(), Arc::new(Exec { process, spec }));
        }
        shared.events.publish(Event::ExecAdded {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
        });
        Ok(())
    }

    /// Registers an exec rebuilt from a handover: no event (containerd had it already)
    /// and no check of init's state (the old image made them).
    pub fn restore_exec(
        &self,
        exec_id: &str,
        spec: oci_spec::runtime::Process,
        stdio: StdioPaths,
    ) -> Result<Arc<Process>> {
        crate::ids::validate("exec", exec_id)?;
        let process = Arc::new(Process::exec(&self.id, exec_id, stdio));
        let mut execs = self.execs();
        if execs.contains_key(exec_id) {
            return Err(Error::AlreadyExists {
                kind: "exec",
                id: format!("{}/{exec_id}", self.id),
            });
        }
        execs.insert(
            exec_id.to_string(),
            Arc::new(Exec {
                process: process.clone(),
                spec,
            }),
        );
        Ok(process)
    }

    /// `runc exec --detach`; Created → Starting → Running, then TaskExecStarted. Returns
    /// the exec's pid, and whether it already died (its exit still needs handling).
    /// [`Process::abort_start`] ends it early: it fails, or, when runc had already started
    /// the process, the process is killed right after TaskExecStarted.
    pub async fn start_exec(&self, shared: &Shared, exec_id: &str) -> Result<(i32, bool)> {
        let exec = self.exec_entry(exec_id)?;
        let p = &exec.process;
        let _lifecycle = p.lifecycle.lock().await;
        p.begin_start()?;
        // Held until the pid is registered: an exec that ends before `runc exec` returns
        // leaves its exit among the unclaimed ones, which must keep it however many come.
        let _expected = shared.router.expect_pid();
        let started = self.run_exec(&exec).await;
        let (pid, since) = match started {
            Ok(v) => v,
            Err(e) => {
                p.copiers.lock().await.abort();
                // Releases Wait with NEVER_RAN: the exec cannot run any more.
                p.start_failed();
                return Err(e);
            }
        };
        p.start_succeeded(pid)?;
        let early = match shared.router.register(pid, p, since) {
            Some(exit) => p.reaped(exit.status as u32, exit.at).is_ok(),
            None => false,
        };
        shared.events.publish(Event::ExecStarted {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
            pid,
        });
        if let Some(by) = p.abort_requested() {
            log::info!(
                "{}: started just before {by} ended its start; killed",
                p.name()
            );
            if let Err(e) = p.signal(libc::SIGKILL) {
                log::info!("{}: {e}", p.name());
            }
        }
        Ok((pid, early))
    }

    async fn run_exec(&self, exec: &Exec) -> Result<(i32, SystemTime)> {
        let p = &exec.process;
        match self.init.state() {
            State::Running | State::Paused | State::Pausing | State::Resuming => {}
            s => {
                return Err(Error::FailedPrecondition {
                    id: self.id.clone(),
                    op: "start exec",
                    state: format!("container {s}"),
                })
            }
        }
        let owner = io::Owner {
            container: &self.id,
            process: &p.exec_id,
            namespace: self.namespace(),
        };
        let stdio = io::prepare_stdio(
            &owner,
            &p.stdio,
            self.options.io_uid,
            self.options.io_gid,
            &self.bundle,
        )
        .await?;
        *p.copiers.lock().await = stdio.copiers;
        let dir = self.bundle.join(EXEC_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(&self.id, format!("create {}", dir.display()), e))?;
        let pid_file = dir.join(format!("{}.pid", p.exec_id));
        let opts = ExecOpts {
            pid_file: pid_file.clone(),
            console_socket: stdio.console.as_ref().map(|c| c.socket_path().to_owned()),
            detach: true,
            io: stdio.io,
            // Its environment may hold secrets: keep it in the root-only bundle.
            spec_dir: Some(self.bundle.clone()),
        };
        let aborted = |by: &'static str| {
            log::warn!("{}: start ended by {by} while runc exec ran", p.name());
            Error::ExecAborted {
                id: self.id.clone(),
                exec_id: p.exec_id.clone(),
                by,
            }
        };
        if let Some(by) = p.abort_requested() {
            return Err(aborted(by));
        }
        let since = SystemTime::now();
        let run = self
            .runc
            .exec_until(&self.id, &exec.spec, &opts, async {
                p.start_aborted().await;
            })
            .await;
        // Our copies of the container-side pipe ends must go, or stdout never sees EOF.
        drop(opts);
        if let Err(e) = run {
            // A pid file left by a runc killed half-way names a process that died with it.
            let _ = std::fs::remove_file(&pid_file);
            if e.is_aborted() {
                return Err(aborted(p.abort_requested().unwrap_or("an abort")));
            }
            return Err(Error::Exec {
                id: self.id.clone(),
                exec_id: p.exec_id.clone(),
                runtime: self.options.binary().to_string(),
                source: Box::new(e),
            });
        }
        let pid = read_pid(&self.id, &pid_file).await;
        if let Err(e) = std::fs::remove_file(&pid_file) {
            log::warn!("{}: remove {}: {e}", p.name(), pid_file.display());
        }
        let pid = pid?;
        if let Some(console) = stdio.console {
            match console.start().await {
                Ok(copiers) => *p.copiers.lock().await = copiers,
                Err(e) => {
                    // Nobody would ever read its terminal: the exec must not run on.
                    // SAFETY: kill(2) on the pid runc just started; no memory is involved.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return Err(e);
                }
            }
        }
        Ok((pid, since))
    }

    /// Signals an exec process directly, through the pidfd opened when its pid was
    /// registered. Takes no lock (see [`Container::kill`]); a signal to an exec whose
    /// Start is still in runc ends that Start instead.
    pub fn kill_exec(&self, exec_id: &str, signal: u32) -> Result<()> {
        let signal = crate::ids::signal(signal)?;
        let p = self.process(exec_id)?;
        if signal != 0 && p.abort_start("a Kill") == State::Starting {
            return Ok(());
        }
        p.signal(signal)
    }

    /// Forgets a finished (or never started) exec; Created | Stopped → Deleted. Publishes
    /// its TaskExit first if that is still due.
    pub async fn delete_exec(&self, shared: &Shared, exec_id: &str) -> Result<(i32, Exited)> {
        let exec = self.exec_entry(exec_id)?;
        let p = &exec.process;
        // A Start still in runc would hold the lock below until runc's deadline.
        let ended_start = p.abort_start("a Delete") == State::Starting;
        let _lifecycle = p.lifecycle.lock().await;
        if ended_start && p.state().is_live() {
            // runc had started it: the Start killed it; its exit is due at once.
            let _ = tokio::time::timeout(ABORTED_EXIT_LIMIT, p.wait_reaped()).await;
        }
        p.begin_delete()?;
        finish_io(p).await;
        report_exit_locked(shared, p);
        let exited = p.delete_done(Exited {
            status: NEVER_RAN,
            at: SystemTime::now(),
        });
        shared.router.forget(p.pid(), p);
        self.execs().remove(exec_id);
        // Its buffers (runc's output, the spec, the stdio loops) are freed; trimming once
        // the burst it may belong to is over also returns what its neighbours freed.
        crate::memory::trim_heap_soon();
        Ok((p.pid(), exited))
    }

    /// Handles an exec's reaped exit: lets its output drain, then publishes TaskExit.
    pub async fn exec_exited(&self, shared: &Shared, p: &Process) {
        let progress = p.copiers.lock().await.progress();
        progress.drain(IO_DRAIN_LIMIT).await;
        report_exit(shared, p).await;
    }
}
