//! One process of a container (its init or an exec) and its lifecycle state machine.
//!
//! Every state, including the in-between ones while runc works, is a variant of
//! [`State`]; transitions are methods that check the current state and return a
//! `Result`, so a check and its transition can never be split by an `await`. Calls that
//! change the lifecycle (Create, Start, Pause, Resume, Delete) and the publication of
//! the exit hold the process's [`Process::lifecycle`] lock for their whole duration,
//! which serialises them; State, Wait, Pids and Kill never take it, so a slow runc call
//! never delays them.
//!
//! A Start in flight can be asked to end ([`Process::abort_start`]): a Kill or Delete of
//! an exec whose `runc exec` hangs, or its container's end, must not wait for runc's
//! deadline, and cannot take the lifecycle lock the Start holds.
//!
//! ```text
//!  Creating ─► Created ─► Starting ─► Running ⇄ Pausing/Paused/Resuming
//!                 │          │           │
//!                 │          └─(failed,──┤ (exec: Stopped; init: back to Created)
//!                 │            aborted)  ▼
//!                 └──────► Deleting ◄─ Stopped ◄─ (reaped exit, from any live state)
//!                              │
//!                              ▼
//!                           Deleted
//! ```

use std::sync::Mutex;
use std::time::SystemTime;

use runc_client::Pidfd;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::io::{Copiers, StdioPaths};

/// Exit status reported for an exec whose start failed (it never ran).
pub const NEVER_RAN: u32 = 255;

/// Lifecycle state of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `runc create` under way (init only).
    Creating,
    /// Set up by runc (init) or registered by Exec (exec); not started.
    Created,
    /// `runc start` / `runc exec` under way.
    Starting,
    /// Started and not yet reaped.
    Running,
    /// `runc pause` under way.
    Pausing,
    /// Frozen by `runc pause`.
    Paused,
    /// `runc resume` under way.
    Resuming,
    /// Reaped (or never ran); the exit status is known.
    Stopped,
    /// `runc delete` / cleanup under way.
    Deleting,
    /// Removed; only the exit status remains.
    Deleted,
}

impl State {
    /// Whether the process may still run code (reaping is what ends it).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            State::Created
                | State::Starting
                | State::Running
                | State::Pausing
                | State::Paused
                | State::Resuming
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            State::Creating => "creating",
            State::Created => "created",
            State::Starting => "starting",
            State::Running => "running",
            State::Pausing => "pausing",
            State::Paused => "paused",
            State::Resuming => "resuming",
            State::Stopped => "stopped",
            State::Deleting => "deleting",
            State::Deleted => "deleted",
        };
        f.write_str(s)
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    /// Exit code, or 128 + signal number.
    pub status: u32,
    /// When the reaper collected it.
    pub at: SystemTime,
}

/// How far the end of a process has got; Wait answers at `Reported`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Alive,
    /// The exit is known (State already says stopped).
    Reaped(Exited),
    /// Its output was drained and its TaskExit queued (or it never ran and none is due).
    Reported(Exited),
}

struct Inner {
    state: State,
    pid: i32,
    exited: Option<Exited>,
    /// How Kill reaches an exec: a pidfd opened when its pid was registered, or the
    /// errno that opening failed with. None until then.
    pidfd: Option<std::result::Result<Pidfd, i32>>,
    /// Who asked the Start in flight to end.
    abort: Option<&'static str>,
}

/// A container's init process or one of its execs.
pub struct Process {
    /// Container id this process belongs to.
    pub container: String,
    /// Exec id; empty for init.
    pub exec_id: String,
    /// Where containerd wants its stdio.
    pub stdio: StdioPaths,
    inner: Mutex<Inner>,
    stage: watch::Sender<Stage>,
    /// Wakes a Start waiting in [`Process::start_aborted`].
    aborts: tokio::sync::Notify,
    /// Serialises lifecycle calls (see the module docs).
    pub lifecycle: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Copy loops between the process's pipes and containerd's FIFOs.
    pub copiers: tokio::sync::Mutex<Copiers>,
    /// Held shared by each Kill while runc signals the process, and exclusively before its
    /// TaskExit goes out: a Kill answers before the exit it caused is announced (containerd
    /// deletes the task on that exit and closes the connection a late Kill answer needed).
    pub kills: tokio::sync::RwLock<()>,
}

impl Process {
    /// An init process about to be created by runc.
    pub fn creating(container: &str, stdio: StdioPaths) -> Self {
        Self::new(container, "", stdio, State::Creating)
    }

    /// An exec registered by the Exec RPC (nothing runs until Start).
    pub fn exec(container: &str, exec_id: &str, stdio: StdioPaths) -> Self {
        Self::new(container, exec_id, stdio, State::Created)
    }

    fn new(container: &str, exec_id: &str, stdio: StdioPaths, state: State) -> Self {
        let (stage, _) = watch::channel(Stage::Alive);
        Self {
            container: container.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            inner: Mutex::new(Inner {
                state,
                pid: 0,
                exited: None,
                pidfd: None,
                abort: None,
            }),
            stage,
            aborts: tokio::sync::Notify::new(),
            lifecycle: Default::default(),
            copiers: tokio::sync::Mutex::new(Copiers::default()),
            kills: tokio::sync::RwLock::new(()),
        }
    }

    /// Whether this is the container's init process.
    pub fn is_init(&self) -> bool {
        self.exec_id.is_empty()
    }

    /// "container" or "container/exec", for messages.
    pub fn name(&self) -> String {
        if self.is_init() {
            self.container.clone()
        } else {
            format!("{}/{}", self.container, self.exec_id)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current pid (0 until runc reported one).
    pub fn pid(&self) -> i32 {
        self.lock().pid
    }

    /// Current lifecycle state.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Exit status, once known.
    pub fn exited(&self) -> Option<Exited> {
        self.lock().exited
    }

    fn refuse(&self, op: &'static str, state: State) -> Error {
        match state {
            State::Deleted => Error::NotFound {
                kind: if self.is_init() { "container" } else { "exec" },
                id: self.name(),
            },
            _ => Error::FailedPrecondition {
                id: self.name(),
                op,
                state: state.to_string(),
            },
        }
    }

    /// Runs `f` on the state if it is one of `from`, else refuses `op`.
    fn transition(
        &self,
        op: &'static str,
        from: &[State],
        f: impl FnOnce(&mut Inner),
    ) -> Result<()> {
        let mut inner = self.lock();
        if !from.contains(&inner.state) {
            return Err(self.refuse(op, inner.state));
        }
        f(&mut inner);
        Ok(())
    }

    /// Creating → Created, once runc created init as `pid`.
    pub fn created(&self, pid: i32) -> Result<()> {
        self.transition("finish create", &[State::Creating], |i| {
            i.state = State::Created;
            i.pid = pid;
        })
    }

    /// Creating → Deleted: the create failed and nothing of it is left.
    pub fn create_failed(&self) {
        let mut inner = self.lock();
        if inner.state == State::Creating {
            inner.state = State::Deleted;
        }
    }

    /// Created → Starting.
    pub fn begin_start(&self) -> Result<()> {
        self.transition("start", &[State::Created], |i| i.state = State::Starting)
    }

    /// Asks a Start in flight (state Starting) to end at once, on behalf of `by` ("a
    /// Kill", ...); the Start fails, or, if runc had already started the process, kills
    /// it right after. Returns the state found: only Starting means the request stands.
    pub fn abort_start(&self, by: &'static str) -> State {
        let state = {
            let mut inner = self.lock();
            if inner.state == State::Starting {
                inner.abort.get_or_insert(by);
            }
            inner.state
        };
        if state == State::Starting {
            self.aborts.notify_waiters();
        }
        state
    }

    /// Who asked the Start to end, if anyone did.
    pub fn abort_requested(&self) -> Option<&'static str> {
        self.lock().abort
    }

    /// Resolves once [`Process::abort_start`] asked the Start to end; names who asked.
    pub async fn start_aborted(&self) -> &'static str {
        loop {
            let notified = self.aborts.notified();
            tokio::pin!(notified);
            // Registered before the check, so a request between the two still wakes us.
            notified.as_mut().enable();
            if let Some(by) = self.abort_requested() {
                return by;
            }
            notified.await;
        }
    }

    /// Starting → Running as `pid`. An exit reaped meanwhile keeps it Stopped.
    pub fn start_succeeded(&self, pid: i32) -> Result<()> {
        self.transition("finish start", &[State::Starting, State::Stopped], |i| {
            i.pid = pid;
            if i.state == State::Starting {
                i.state = State::Running;
            }
        })
    }

    /// Starting → Created for init (runc keeps the container; containerd deletes it), or
    /// Starting → Stopped for an exec, which never ran: its Wait returns [`NEVER_RAN`].
    pub fn start_failed(&self) {
        let never_ran = {
            let mut inner = self.lock();
            if inner.state != State::Starting {
                return;
            }
            if self.is_init() {
                inner.state = State::Created;
                return;
            }
            let e = Exited {
                status: NEVER_RAN,
                at: SystemTime::now(),
            };
            inner.state = State::Stopped;
            inner.exited = Some(e);
            e
        };
        self.stage.send_replace(Stage::Reported(never_ran));
    }

    /// Running → Pausing.
    pub fn begin_pause(&self) -> Result<()> {
        self.transition("pause", &[State::Running], |i| i.state = State::Pausing)
    }

    /// Pausing → Paused (or back to Running when runc failed); a reaped exit wins.
    pub fn pause_done(&self, ok: bool) {
        let mut inner = self.lock();
        if inner.state == State::Pausing {
            inner.state = if ok { State::Paused } else { State::Running };
        }
    }

    /// Paused → Resuming.
    pub fn begin_resume(&self) -> Result<()> {
        self.transition("resume", &[State::Paused], |i| i.state = State::Resuming)
    }

    /// Resuming → Running (or back to Paused when runc failed); a reaped exit wins.
    pub fn resume_done(&self, ok: bool) {
        let mut inner = self.lock();
        if inner.state == State::Resuming {
            inner.state = if ok { State::Running } else { State::Paused };
        }
    }

    /// Keeps the pidfd opened for the pid just registered (see [`Process::signal`]).
    pub fn set_pidfd(&self, pidfd: std::io::Result<Pidfd>) {
        self.lock().pidfd = Some(pidfd.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)));
    }

    /// Sends `signal` to the running process through its pidfd, never by pid: once its
    /// exit is reaped the pid may belong to anyone, even before the exit reaches us.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let inner = self.lock();
        let gone = || Error::NotFound {
            kind: "process (already finished)",
            id: self.name(),
        };
        match inner.state {
            State::Running | State::Paused | State::Pausing | State::Resuming => {}
            State::Stopped | State::Deleting | State::Deleted => return Err(gone()),
            s => return Err(self.refuse("kill", s)),
        }
        let sent = match &inner.pidfd {
            // Its pid is being registered just now: as good as still starting.
            None => return Err(self.refuse("kill", State::Starting)),
            Some(Err(errno)) => Err(std::io::Error::from_raw_os_error(*errno)),
            // Under the lock, so the fd cannot be closed meanwhile.
            Some(Ok(pidfd)) => pidfd.signal(signal),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(gone()),
            Err(e) => Err(Error::io(
                &self.container,
                format!("kill {}", self.name()),
                e,
            )),
        }
    }

    /// Created | Stopped → Deleting; returns the state it left.
    pub fn begin_delete(&self) -> Result<State> {
        let mut inner = self.lock();
        match inner.state {
            State::Created | State::Stopped => {
                let was = inner.state;
                inner.state = State::Deleting;
                Ok(was)
            }
            s => Err(self.refuse("delete", s)),
        }
    }

    /// Deleting → Deleted. A never-started process that was never reaped still releases
    /// its waiters, with `fallback` as its status.
    pub fn delete_done(&self, fallback: Exited) -> Exited {
        let exited = {
            let mut inner = self.lock();
            inner.state = State::Deleted;
            *inner.exited.get_or_insert(fallback)
        };
        self.stage.send_if_modified(|s| match s {
            Stage::Reported(_) => false,
            _ => {
                *s = Stage::Reported(exited);
                true
            }
        });
        exited
    }

    /// Deleting → what it was (runc refused the delete); a reaped exit means Stopped.
    pub fn delete_failed(&self, was: State) {
        let mut inner = self.lock();
        if inner.state == State::Deleting {
            inner.state = if inner.exited.is_some() {
                State::Stopped
            } else {
                was
            };
        }
    }

    /// Records a reaped exit. Any live state (and Deleting, for a created process that
    /// `runc delete --force` killed) becomes Stopped, except Deleting which stays until
    /// the delete finishes. Refuses a second exit: the first one wins.
    pub fn reaped(&self, status: u32, at: SystemTime) -> Result<Exited> {
        let exited = Exited { status, at };
        {
            let mut inner = self.lock();
            if inner.exited.is_some() || matches!(inner.state, State::Creating | State::Deleted) {
                return Err(self.refuse("record an exit", inner.state));
            }
            inner.exited = Some(exited);
            // Nothing can be signalled any more; do not hold an fd per finished exec.
            inner.pidfd = None;
            if inner.state != State::Deleting {
                inner.state = State::Stopped;
            }
        }
        self.stage.send_replace(Stage::Reaped(exited));
        Ok(exited)
    }

    /// What a handover writes of this process: its state, pid, exit, and whether the
    /// exit was published. The caller holds the lifecycle lock, so no transition is under
    /// way, and has stopped the reaper, so no exit can arrive meanwhile.
    pub fn settled(&self) -> (State, i32, Option<Exited>, bool) {
        let inner = self.lock();
        (inner.state, inner.pid, inner.exited, self.is_reported())
    }

    /// Puts a process rebuilt from a handover into the state the old image left it in,
    /// before anyone else sees it. Its pidfd is opened again when its pid is registered.
    pub fn restore(&self, state: State, pid: i32, exited: Option<Exited>, reported: bool) {
        {
            let mut inner = self.lock();
            inner.state = state;
            inner.pid = pid;
            inner.exited = exited;
        }
        let stage = match (exited, reported) {
            (Some(e), true) => Stage::Reported(e),
            (Some(e), false) => Stage::Reaped(e),
            (None, _) => Stage::Alive,
        };
        self.stage.send_replace(stage);
    }

    /// Marks the exit as fully handled (output drained, TaskExit queued); returns false
    /// if it already was, so only one caller publishes it.
    pub fn mark_reported(&self) -> bool {
        let Some(exited) = self.exited() else {
            return false;
        };
        self.stage.send_if_modified(|s| match s {
            Stage::Reported(_) => false,
            _ => {
                *s = Stage::Reported(exited);
                true
            }
        })
    }

    /// Whether the exit has been reported (or none is due).
    pub fn is_reported(&self) -> bool {
        matches!(*self.stage.borrow(), Stage::Reported(_))
    }

    /// Resolves once the exit has been fully handled: what the Wait RPC answers with.
    ///
    /// containerd's CRI plugin tears the task's IO down as soon as Wait returns, so
    /// answering before the output reached containerd's FIFOs would cut off its tail.
    pub async fn wait_reported(&self) -> Exited {
        let mut rx = self.stage.subscribe();
        loop {
            if let Stage::Reported(e) = *rx.borrow_and_update() {
                return e;
            }
            // The sender lives in `self`, which the caller borrows: it cannot close.
            let _ = rx.changed().await;
        }
    }

    /// Resolves once the exit is known (reaped or never ran).
    pub async fn wait_reaped(&self) -> Exited {
        let mut rx = self.stage.subscribe();
        loop {
            match *rx.borrow_and_update() {
                Stage::Reaped(e) | Stage::Reported(e) => return e,
                Stage::Alive => {}
            }
            let _ = rx.changed().await;
        }
    }
}

#[cfg(test)]
mod tests;
