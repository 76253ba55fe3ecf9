//! TaskOOM: the watch on a container's memory cgroup, and the gate that puts each OOM in
//! its place among the container's events.
//!
//! containerd and CRI expect a container's events in the order create, start, oom, exit,
//! delete: CRI takes a TaskOOM as the reason of the exit that follows it. The watch runs
//! on its own and may see an OOM at any moment, so it never publishes directly; it hands
//! the OOM to the container's [`OomGate`], which init's TaskStart and TaskExit pass
//! through too:
//!
//! ```text
//!   BeforeStart ──(TaskStart, then the held OOM)──► Open ──(TaskExit of init)──► Closed
//!        │                                                                        ▲
//!        └───────────────(TaskExit or TaskDelete without a start)─────────────────┘
//! ```
//!
//! - before TaskStart an OOM is held (one: TaskOOM says "ran out of memory", not how
//!   often) and published right after TaskStart, under the same lock;
//! - between them it is published at once;
//! - after init's TaskExit, or for a container that ends without a start, it is logged
//!   and not published: CRI would rewrite the reason of an exit it already recorded, or
//!   give a reason to the exit of a process that never ran. containerd's Go shim starts
//!   its watch at Start (so never reports a container that did not start) and publishes
//!   from the watch apart from its other events, with no order at all.
//!
//! The gate's lock is taken inside a check of the [`OomMonitor`] (the check reports
//! while it holds its own lock) and never the other way round, which is what makes a
//! check made right before TaskExit see, and publish, an OOM the watch task took first.

use std::sync::{Arc, Mutex, Weak};

use tokio::task::AbortHandle;

use super::Container;
use crate::cgroups::{OomMonitor, Pending};
use crate::error::Error;
use crate::events::{Event, Events};
use crate::tasks::Shared;

/// Where a container's TaskOOM may go, relative to init's TaskStart and TaskExit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// TaskStart is not out: an OOM waits for it.
    BeforeStart { held: bool },
    /// Between TaskStart and init's TaskExit: an OOM goes out at once.
    Open,
    /// init's TaskExit (or the TaskDelete of a container never started) is out.
    Closed,
}

/// Orders TaskOOM against init's TaskStart and TaskExit (see the module docs).
#[derive(Debug)]
pub struct OomGate {
    stage: Mutex<Stage>,
}

impl Default for OomGate {
    fn default() -> Self {
        Self {
            stage: Mutex::new(Stage::BeforeStart { held: false }),
        }
    }
}

impl OomGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Stage> {
        self.stage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An OOM of container `id`: published, held until TaskStart, or dropped after the
    /// exit, by the stage.
    pub fn report(&self, events: &Events, id: &str) {
        let mut stage = self.lock();
        match *stage {
            Stage::BeforeStart { held } => {
                if !held {
                    log::info!("container {id}: out of memory before its start; held");
                }
                *stage = Stage::BeforeStart { held: true };
            }
            Stage::Open => {
                log::info!("container {id}: out of memory");
                events.publish(Event::Oom { id: id.to_string() });
            }
            Stage::Closed => {
                log::info!(
                    "container {id}: out of memory after its exit was published; not published"
                );
            }
        }
    }

    /// Runs `first` (which publishes init's TaskStart), then publishes the OOM held
    /// until it.
    pub fn open(&self, events: &Events, id: &str, first: impl FnOnce()) {
        let mut stage = self.lock();
        first();
        if let Stage::BeforeStart { held } = *stage {
            if held {
                log::info!("container {id}: out of memory (held until its start)");
                events.publish(Event::Oom { id: id.to_string() });
            }
            *stage = Stage::Open;
        }
    }

    /// Runs `last` (which publishes init's TaskExit, or a TaskDelete) with no OOM after
    /// it; an OOM still held (the container never started) is dropped.
    pub fn close(&self, id: &str, last: impl FnOnce()) {
        let mut stage = self.lock();
        if *stage == (Stage::BeforeStart { held: true }) {
            log::info!("container {id}: never started; its OOM is not published");
        }
        last();
        *stage = Stage::Closed;
    }
}

impl OomGate {
    /// The stage a container rebuilt from a handover is in: open once started, closed once
    /// its exit (or a delete without a start) was published.
    pub fn restore(&self, started: bool, exit_published: bool) {
        *self.lock() = if exit_published {
            Stage::Closed
        } else if started {
            Stage::Open
        } else {
            Stage::BeforeStart { held: false }
        };
    }
}

/// The running watch of one container.
struct OomWatch {
    monitor: Arc<OomMonitor>,
    task: AbortHandle,
}

impl Drop for OomWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A container's OOM watch and gate.
#[derive(Default)]
pub struct OomState {
    gate: Arc<OomGate>,
    watch: Mutex<Option<OomWatch>>,
}

impl OomState {
    fn watch(&self) -> std::sync::MutexGuard<'_, Option<OomWatch>> {
        self.watch.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Container {
    /// Starts watching for OOMs; once the container exists in runc. A cgroup that cannot
    /// be watched is logged: the container runs on without OOM events.
    pub fn watch_oom(&self, shared: &Arc<Shared>) {
        let mut slot = self.oom.watch();
        if slot.is_some() {
            return;
        }
        let monitor = match self.cgroup().and_then(|cg| {
            cg.oom_monitor()
                .map_err(|e| Error::io(&self.id, "watch the memory cgroup for OOM", e))
        }) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                log::warn!("container {}: no OOM events: {e}", self.id);
                return;
            }
        };
        let weak: Weak<Shared> = Arc::downgrade(shared);
        let gate = self.oom.gate.clone();
        let id = self.id.clone();
        let m = monitor.clone();
        let task = tokio::spawn(async move {
            let report = || {
                if let Some(shared) = weak.upgrade() {
                    gate.report(&shared.events, &id);
                }
            };
            if let Err(e) = m.watch(report).await {
                log::warn!("container {id}: OOM watch ended: {e}");
            }
        });
        *slot = Some(OomWatch {
            monitor,
            task: task.abort_handle(),
        });
    }

    /// Hands the gate an OOM the kernel already signalled but the watch task has not
    /// taken yet; returns once any OOM taken so far, by whoever, has passed the gate.
    pub fn flush_oom(&self, shared: &Shared) {
        self.check_oom(shared);
    }

    fn check_oom(&self, shared: &Shared) -> Option<(Arc<OomMonitor>, Pending)> {
        let monitor = self.oom.watch().as_ref().map(|w| w.monitor.clone())?;
        match monitor.check(|| self.oom.gate.report(&shared.events, &self.id)) {
            Ok(pending) => Some((monitor, pending)),
            Err(e) => {
                log::warn!("container {}: check for an OOM: {e}", self.id);
                None
            }
        }
    }

    /// [`Container::flush_oom`] at init's exit; when systemd removed the cgroup before its
    /// count could be read, the parent's count decides (see [`OomMonitor::settle_gone`]).
    fn flush_oom_at_exit(&self, shared: &Shared) {
        let Some((monitor, Pending::Gone)) = self.check_oom(shared) else {
            return;
        };
        let sigkilled = self
            .init
            .exited()
            .is_some_and(|e| e.status == 128 + libc::SIGKILL as u32);
        let report = || {
            log::info!(
                "container {}: its cgroup went before its OOM kill count could be read; \
                 taken from the parent's count",
                self.id
            );
            self.oom.gate.report(&shared.events, &self.id)
        };
        monitor.settle_gone(sigkilled, report);
    }

    /// Publishes init's TaskStart through the gate (an OOM held until then follows it).
    /// The caller holds init's lifecycle lock.
    pub(super) fn publish_start(&self, shared: &Shared, pid: i32) {
        self.oom.gate.open(&shared.events, &self.id, || {
            shared.events.publish(Event::Start {
                id: self.id.clone(),
                pid,
            })
        });
    }

    /// Publishes init's TaskExit, if due, after every OOM seen so far and with none after
    /// it. The caller holds init's lifecycle lock.
    pub(super) fn report_init_exit_locked(&self, shared: &Shared) {
        // The kernel counts an OOM kill before the killed init can be reaped.
        self.flush_oom_at_exit(shared);
        self.oom
            .gate
            .close(&self.id, || super::report_exit_locked(shared, &self.init));
    }

    /// Puts the OOM gate of a container rebuilt from a handover in its stage.
    pub fn restore_oom_gate(&self, started: bool, exit_published: bool) {
        self.oom.gate.restore(started, exit_published);
    }

    /// Ends the OOM watch (the container is gone).
    pub fn stop_oom_watch(&self) {
        self.oom.watch().take();
    }

    /// Passes the OOM watch has made (None before it watches): a test waits for one
    /// before it asserts that an OOM was not published.
    #[cfg(test)]
    pub fn oom_passes(&self) -> Option<u64> {
        self.oom.watch().as_ref().map(|w| w.monitor.passes())
    }
}
