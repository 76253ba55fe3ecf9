//! One process of a container (its init or an exec) and its lifecycle state machine.
//!
//! States follow containerd's Go shim (pkg/process): Created → Running ⇄ Paused →
//! Stopped → Deleted. Transitions are methods that refuse what the state forbids, so
//! a late exit can never be overwritten by a racing Start.

use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::io::{Copiers, StdioPaths};

/// Lifecycle state of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `runc create` / `runc exec` set it up; it has not been started.
    Created,
    /// Started and not yet reaped.
    Running,
    /// Frozen by `runc pause`.
    Paused,
    /// Reaped; the exit status is known.
    Stopped,
    /// Removed from runc; only the exit status remains.
    Deleted,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Deleted => "deleted",
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

struct Inner {
    status: Status,
    pid: i32,
    exited: Option<Exited>,
}

/// A container's init process or one of its execs.
pub struct Process {
    /// Exec id, or the container id for init.
    pub id: String,
    /// Where containerd wants its stdio.
    pub stdio: StdioPaths,
    inner: Mutex<Inner>,
    exit_tx: watch::Sender<Option<Exited>>,
    reported_tx: watch::Sender<bool>,
    /// None: never started; Some(false): start under way; Some(true): start announced.
    announced_tx: watch::Sender<Option<bool>>,
    /// Copy loops between the process's pipes and containerd's FIFOs.
    pub copiers: tokio::sync::Mutex<Copiers>,
}

impl Process {
    /// A process that runc has created with the given pid.
    pub fn created(id: &str, pid: i32, stdio: StdioPaths, copiers: Copiers) -> Self {
        let (exit_tx, _) = watch::channel(None);
        let (reported_tx, _) = watch::channel(false);
        let (announced_tx, _) = watch::channel(None);
        Self {
            id: id.to_string(),
            stdio,
            inner: Mutex::new(Inner {
                status: Status::Created,
                pid,
                exited: None,
            }),
            exit_tx,
            reported_tx,
            announced_tx,
            copiers: tokio::sync::Mutex::new(copiers),
        }
    }

    /// Current pid (0 if never started).
    pub fn pid(&self) -> i32 {
        self.lock().pid
    }

    /// Records the pid once runc reported it (execs learn theirs only at Start).
    pub fn set_pid(&self, pid: i32) {
        self.lock().pid = pid;
    }

    /// Current lifecycle state.
    pub fn status(&self) -> Status {
        self.lock().status
    }

    /// Exit status, once stopped.
    pub fn exited(&self) -> Option<Exited> {
        self.lock().exited
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Created → Running. Returns false if the process already left Created
    /// (e.g. it exited between `runc start` and here).
    pub fn set_running(&self) -> bool {
        let mut inner = self.lock();
        if inner.status == Status::Created {
            inner.status = Status::Running;
            true
        } else {
            false
        }
    }

    /// Running ⇄ Paused; returns false if the process is in neither.
    pub fn set_paused(&self, paused: bool) -> bool {
        let mut inner = self.lock();
        match (inner.status, paused) {
            (Status::Running, true) => inner.status = Status::Paused,
            (Status::Paused, false) => inner.status = Status::Running,
            _ => return false,
        }
        true
    }

    /// Any live state → Stopped with the reaped status. Returns false if it had already
    /// stopped (the first exit wins).
    pub fn set_exited(&self, status: u32, at: SystemTime) -> bool {
        let exited = Exited { status, at };
        {
            let mut inner = self.lock();
            if matches!(inner.status, Status::Stopped | Status::Deleted) {
                return false;
            }
            inner.status = Status::Stopped;
            inner.exited = Some(exited);
        }
        self.exit_tx.send_replace(Some(exited));
        true
    }

    /// Stopped (or Created) → Deleted.
    pub fn set_deleted(&self) {
        self.lock().status = Status::Deleted;
    }

    /// Records that a start (runc start / exec) is under way, so an early exit waits for
    /// the start event before its own.
    pub fn set_starting(&self) {
        self.announced_tx.send_replace(Some(false));
    }

    /// Records that the start event went out (or the start failed and none will).
    pub fn set_announced(&self) {
        self.announced_tx.send_replace(Some(true));
    }

    /// Waits (bounded) until a start under way has been announced; returns at once for a
    /// process that was never started.
    pub async fn wait_announced(&self, limit: std::time::Duration) {
        let mut rx = self.announced_tx.subscribe();
        let wait = async {
            while *rx.borrow_and_update() == Some(false) {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// Marks the exit as fully handled: output drained, event about to be published.
    pub fn set_reported(&self) {
        self.reported_tx.send_replace(true);
    }

    /// Resolves once the exit has been fully handled (see [`Process::set_reported`]).
    ///
    /// This is what the Wait RPC answers with: containerd's CRI plugin tears the task's IO
    /// down as soon as Wait returns, so returning before the output reached containerd's
    /// FIFOs would cut off its tail.
    pub async fn wait_reported(&self) -> Exited {
        let exited = self.wait().await;
        let mut rx = self.reported_tx.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.exited().unwrap_or(exited)
    }

    /// Resolves once the process has exited.
    pub async fn wait(&self) -> Exited {
        let mut rx = self.exit_tx.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`, so this cannot happen while we borrow it.
                unreachable!("exit channel closed while the process is alive");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Process {
        Process::created("c", 42, StdioPaths::default(), Copiers::default())
    }

    #[test]
    fn exit_wins_over_late_start() {
        let p = p();
        assert!(p.set_exited(3, SystemTime::now()));
        assert!(
            !p.set_running(),
            "a stopped process must not become running"
        );
        assert_eq!(p.status(), Status::Stopped);
        assert_eq!(p.exited().unwrap().status, 3);
    }

    #[test]
    fn first_exit_wins() {
        let p = p();
        assert!(p.set_running());
        assert!(p.set_exited(0, SystemTime::now()));
        assert!(!p.set_exited(137, SystemTime::now()));
        assert_eq!(p.exited().unwrap().status, 0);
    }

    #[test]
    fn pause_only_from_running() {
        let p = p();
        assert!(!p.set_paused(true));
        assert!(p.set_running());
        assert!(p.set_paused(true));
        assert_eq!(p.status(), Status::Paused);
        assert!(p.set_paused(false));
        assert_eq!(p.status(), Status::Running);
    }

    #[tokio::test]
    async fn wait_sees_exit_set_before_and_after() {
        let p = std::sync::Arc::new(p());
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait().await })
        };
        tokio::task::yield_now().await;
        p.set_exited(9, SystemTime::now());
        assert_eq!(waiter.await.unwrap().status, 9);
        assert_eq!(p.wait().await.status, 9);
    }

    #[tokio::test]
    async fn exit_waits_for_the_start_announcement_only_when_started() {
        let never = p();
        let t = std::time::Instant::now();
        never
            .wait_announced(std::time::Duration::from_secs(5))
            .await;
        assert!(t.elapsed() < std::time::Duration::from_millis(100));

        let started = std::sync::Arc::new(p());
        started.set_starting();
        let waiter = {
            let p = started.clone();
            tokio::spawn(async move { p.wait_announced(std::time::Duration::from_secs(5)).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "exit would be announced before the start"
        );
        started.set_announced();
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn wait_reported_waits_for_the_exit_handling() {
        let p = std::sync::Arc::new(p());
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait_reported().await })
        };
        p.set_exited(4, SystemTime::now());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "Wait answered before the exit was handled"
        );
        p.set_reported();
        assert_eq!(waiter.await.unwrap().status, 4);
    }
}
