//! Making room at the connection cap: idle connections of anyone but containerd give way.
//!
//! containerd keeps one connection per task open for the task's whole life, idle for hours
//! between requests (or waiting on a Wait), and takes a closed one for a dead shim: it
//! publishes the task's exit and deletes it. So an idle connection is never closed for
//! being idle alone. Only when the cap is reached and a new connection is already waiting
//! does the connection idle longest give way, if it has been idle for [`IDLE_LIMIT`] and
//! its peer is not the process serving containerd's TTRPC socket (looked up at that
//! moment: containerd's pid changes when it restarts). When containerd cannot be looked up,
//! nothing is evicted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Context;
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::time::Instant;

/// How long a connection must have been idle (no byte read or written) before it gives way
/// to a waiting one at the cap. Far longer than any pause inside a client's exchange.
pub const IDLE_LIMIT: Duration = Duration::from_secs(5 * 60);
/// Longest containerd's socket may take to accept the connection that tells its pid.
const LOOKUP_LIMIT: Duration = Duration::from_secs(1);

/// Whose connections are never evicted.
#[derive(Debug, Clone)]
pub enum Keep {
    /// The process serving containerd's TTRPC socket at this path.
    PeerOf(PathBuf),
    /// This pid (tests).
    Pid(i32),
}

impl Keep {
    /// containerd's TTRPC address as the daemon got it (`unix://` optional).
    pub fn containerd(ttrpc_address: &str) -> Keep {
        Keep::PeerOf(ttrpc_address.trim_start_matches("unix://").into())
    }

    /// The pid whose connections stay, if it can be known now.
    pub async fn pid(&self) -> Option<i32> {
        match self {
            Keep::Pid(pid) => Some(*pid),
            Keep::PeerOf(path) => {
                let conn = tokio::net::UnixStream::connect(path);
                let conn = match tokio::time::timeout(LOOKUP_LIMIT, conn).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        log::warn!("cannot tell containerd's pid: {}: {e}", path.display());
                        return None;
                    }
                    Err(_) => {
                        log::warn!("cannot tell containerd's pid: {} hangs", path.display());
                        return None;
                    }
                };
                conn.peer_cred().ok()?.pid()
            }
        }
    }
}

/// What the listener knows of one served connection.
pub struct Conn {
    peer_pid: Option<i32>,
    last_active: Mutex<Instant>,
    evicted: AtomicBool,
    waker: AtomicWaker,
}

impl Conn {
    /// Something was read or written.
    pub fn active(&self) {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Whether the connection was evicted; wakes `cx` when it is later.
    pub fn poll_evicted(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.evicted.load(Ordering::Acquire)
    }

    fn idle_since(&self) -> Instant {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The served connections, for eviction.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<Vec<Weak<Conn>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection just accepted from `peer_pid`.
    pub fn add(&self, peer_pid: Option<i32>) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            peer_pid,
            last_active: Mutex::new(Instant::now()),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let mut conns = self.lock();
        // Closed ones go here, so the list never outgrows the connections served + 1.
        conns.retain(|c| c.strong_count() > 0);
        conns.push(Arc::downgrade(&conn));
        conn
    }

    /// Evicts the connection idle longest if it has been idle for `idle` and is not
    /// `keep`'s; returns its peer's pid (0 if unknown) when one was.
    pub fn evict_idle(&self, idle: Duration, keep: i32) -> Option<i32> {
        let now = Instant::now();
        let victim = self
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.peer_pid != Some(keep) && !c.evicted.load(Ordering::Acquire))
            .map(|c| (c.idle_since(), c))
            .filter(|(since, _)| now.duration_since(*since) >= idle)
            .min_by_key(|(since, _)| *since)?
            .1;
        victim.evicted.store(true, Ordering::Release);
        victim.waker.wake();
        Some(victim.peer_pid.unwrap_or(0))
    }
}
