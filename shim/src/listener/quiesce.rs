//! Stopping every connection at a frame boundary, for a live upgrade (docs/upgrade.md).
//!
//! While the gate is closed, a connection between two frames reads nothing more: the next
//! request stays in the socket's buffer, where the image after the exec will find it. A
//! frame already begun is read to its end, so ttrpc never holds half a request (that
//! request is then in flight, and the upgrade waits for it like for any other). New
//! connections are not accepted meanwhile; they wait in the listen backlog. [`Gate::close`]
//! returns once every open connection is parked between frames; a connection whose frame
//! stops making progress is closed by the stall limit, which also ends its wait.
//! [`Gate::open`] lets everything read again (an upgrade that was called off).

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

use super::inflight::{InFlight, Unreplayable};

/// Whether connections may read their next frame, shared by a listener's connections.
#[derive(Debug, Default)]
pub struct Gate {
    inner: Mutex<Inner>,
    /// Signalled when the last connection parks (or goes) while closed.
    parked: Notify,
    /// Signalled when the gate opens.
    opened: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    closed: bool,
    next_id: u64,
    members: HashMap<u64, Member>,
}

#[derive(Debug, Default)]
struct Member {
    parked: bool,
    waker: Option<Waker>,
    fd: RawFd,
    peer_pid: Option<i32>,
    inflight: Option<Arc<InFlight>>,
}

/// A connection parked at the closed gate: what a handover names it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// Its socket, as this image has it open.
    pub fd: RawFd,
    /// Its peer when it was accepted.
    pub peer_pid: Option<i32>,
    /// Its unanswered requests' frames, in arrival order.
    pub pending: Result<Vec<Vec<u8>>, Unreplayable>,
}

/// One connection's place at the gate; leaves it when dropped.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
    id: u64,
}

impl Gate {
    /// An open gate.
    pub fn new() -> Arc<Gate> {
        Arc::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned state is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the connection on socket `fd` from `peer_pid`, whose unanswered requests
    /// `inflight` tracks.
    pub fn join(
        self: &Arc<Self>,
        fd: RawFd,
        peer_pid: Option<i32>,
        inflight: Option<Arc<InFlight>>,
    ) -> Pass {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.members.insert(
            id,
            Member {
                fd,
                peer_pid,
                inflight,
                ..Member::default()
            },
        );
        Pass {
            gate: self.clone(),
            id,
        }
    }

    /// Closes the gate; returns once every connection is parked between frames.
    pub async fn close(&self) {
        let wakers: Vec<Waker> = {
            let mut inner = self.lock();
            inner.closed = true;
            inner
                .members
                .values_mut()
                .filter_map(|m| m.waker.take())
                .collect()
        };
        // Each connection's reader looks at the gate again and parks if between frames.
        wakers.into_iter().for_each(Waker::wake);
        loop {
            let parked = self.parked.notified();
            if self.all_parked() {
                return;
            }
            parked.await;
        }
    }

    /// Opens the gate: parked connections read again, new ones are accepted.
    pub fn open(&self) {
        let wakers: Vec<Waker> = {
            let mut inner = self.lock();
            inner.closed = false;
            inner
                .members
                .values_mut()
                .filter_map(|m| {
                    m.parked = false;
                    m.waker.take()
                })
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
        self.opened.notify_waiters();
    }

    /// Whether the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Connections registered now.
    pub fn connections(&self) -> usize {
        self.lock().members.len()
    }

    /// Returns when the gate is open (at once if it is).
    pub async fn wait_open(&self) {
        loop {
            let opened = self.opened.notified();
            if !self.is_closed() {
                return;
            }
            opened.await;
        }
    }

    /// The connections to hand over: every one, once all are parked at the closed gate;
    /// `None` before that.
    pub fn parked(&self) -> Option<Vec<Parked>> {
        let inner = self.lock();
        if !inner.closed || !inner.members.values().all(|m| m.parked) {
            return None;
        }
        let mut all: Vec<Parked> = inner
            .members
            .values()
            .map(|m| Parked {
                fd: m.fd,
                peer_pid: m.peer_pid,
                pending: m.inflight.as_ref().map_or(Ok(Vec::new()), |f| f.pending()),
            })
            .collect();
        all.sort_by_key(|p| p.fd);
        Some(all)
    }

    /// As [`Gate::parked`], once moreover every unanswered request is one `may_wait`
    /// accepts (requests that can be served again by the next image, such as
    /// [`super::inflight::replay_safe`] ones, and the upgrade's own request): the moment
    /// to hand over. Until then calls are in flight; their answers go out while the gate
    /// stays closed, so a caller asks again after a moment (bounded by its own deadline).
    pub fn settled(&self, may_wait: impl Fn(&[u8]) -> bool) -> Option<Vec<Parked>> {
        let parked = self.parked()?;
        parked
            .iter()
            .all(|p| settled(p, &may_wait))
            .then_some(parked)
    }

    /// How many connections keep [`Gate::settled`] from returning: not parked, or with an
    /// unanswered request `may_wait` refuses.
    pub fn unsettled(&self, may_wait: impl Fn(&[u8]) -> bool) -> usize {
        let inner = self.lock();
        inner
            .members
            .values()
            .filter(|m| {
                !m.parked
                    || !m.inflight.as_ref().is_none_or(|f| {
                        f.pending()
                            .is_ok_and(|frames| frames.iter().all(|fr| may_wait(fr)))
                    })
            })
            .count()
    }

    fn all_parked(&self) -> bool {
        let inner = self.lock();
        inner.closed && inner.members.values().all(|m| m.parked)
    }
}

fn settled(p: &Parked, may_wait: &impl Fn(&[u8]) -> bool) -> bool {
    p.pending
        .as_ref()
        .is_ok_and(|frames| frames.iter().all(|f| may_wait(f)))
}

impl Pass {
    /// Asked between frames: ready while the gate is open; while it is closed the
    /// connection parks, and is woken when the gate opens.
    pub fn poll_pass(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.gate.lock();
        let closed = inner.closed;
        let Some(me) = inner.members.get_mut(&self.id) else {
            return Poll::Ready(());
        };
        // Kept open or closed: the gate wakes this reader when it changes.
        match &me.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => me.waker = Some(cx.waker().clone()),
        }
        if !closed {
            me.parked = false;
            return Poll::Ready(());
        }
        if !me.parked {
            me.parked = true;
            let all = inner.members.values().all(|m| m.parked);
            drop(inner);
            if all {
                self.gate.parked.notify_waiters();
            }
        }
        Poll::Pending
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut inner = self.gate.lock();
        inner.members.remove(&self.id);
        let done = inner.closed && inner.members.values().all(|m| m.parked);
        drop(inner);
        if done {
            self.gate.parked.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests;
