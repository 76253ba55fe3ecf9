//! The Task API socket's accept loop: who may connect, how many at once, and how many
//! request bytes may be in flight.
//!
//! ttrpc allocates a frame's announced payload (up to 4 MiB) as soon as it has read the
//! frame's header. Unchecked, a client that announces large frames and never finishes them
//! makes the shim hold that memory for as long as it likes, on as many connections as it
//! likes; and glibc keeps those pages after they are freed. So:
//!
//! - at most [`MAX_CONNECTIONS`] connections are served at once; one more is accepted and
//!   held unserved, the rest wait in the kernel's backlog, until one closes or, for the
//!   held one, an idle connection of anyone but containerd gives way ([`idle`]);
//! - a frame's header reaches ttrpc only once the frame is admitted: frames up to
//!   [`SMALL_FRAME`] at once (the cap bounds them), larger ones when they fit in the
//!   shim-wide [`FRAME_BUDGET`], first come first served;
//! - a frame that makes no progress for [`STALL_LIMIT`] (its peer sends nothing, or it
//!   waits for budget) has its connection closed, which hands its budget back;
//! - once budget is handed back, the freed heap is returned to the kernel;
//! - while the [`Gate`] is closed (a live upgrade), connections stop at their next frame
//!   boundary and nothing new is accepted ([`quiesce`]).
//!
//! Worst case, ttrpc holds FRAME_BUDGET + MAX_CONNECTIONS × SMALL_FRAME = 12 MiB of request
//! payloads at once. Only processes of the shim's own uid get in ([`SameUser`]).

mod budget;
mod frames;
mod guard;
mod idle;
pub mod inflight;
pub mod quiesce;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use futures::stream::{self, Stream};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::peer::SameUser;
use budget::Budget;
pub use guard::Guarded;
use idle::Registry;
pub use idle::{Keep, IDLE_LIMIT};
use inflight::InFlight;
pub use quiesce::Gate;

/// Connections served at once. containerd opens one connection per task it runs in this
/// shim (a pod's containers share one shim), and tools add the odd short-lived one; 64
/// leaves room for pods far larger than Kubernetes users run, while keeping what idle or
/// misbehaving connections can pin small.
pub const MAX_CONNECTIONS: usize = 64;
/// Request payload bytes ttrpc may hold at once for frames above [`SMALL_FRAME`]: two of
/// ttrpc's largest (4 MiB) frames. containerd's requests to a shim are a few KiB, so the
/// budget only matters for unusual large requests and for clients that misbehave.
pub const FRAME_BUDGET: usize = 8 << 20;
/// Frames up to this size need no budget: with one frame in flight per connection they
/// hold at most MAX_CONNECTIONS × SMALL_FRAME (4 MiB), and every request containerd makes
/// of a shim fits, so containerd is never made to wait behind a misbehaving client.
pub const SMALL_FRAME: usize = 64 << 10;
/// How long a frame may go without progress. A local client writes a frame at memory
/// speed; waiting this long means it stopped, or the budget is held by ones that did.
/// Short enough that a client stuck behind misbehaving ones is served within seconds.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);
/// Pause after budget is handed back before trimming the heap: lets ttrpc drop the
/// payload first and folds a burst of closing connections into one trim.
const TRIM_DELAY: Duration = Duration::from_millis(100);
/// Pause after a failed accept (e.g. out of fds) so the loop does not spin on it.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The limits a listener enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Shim-wide bytes for frames above `small_frame`.
    pub budget: usize,
    /// Largest frame admitted without budget.
    pub small_frame: usize,
    /// Longest a frame may go without progress.
    pub stall: Duration,
    /// How long a connection must have been idle to give way at the cap.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            budget: FRAME_BUDGET,
            small_frame: SMALL_FRAME,
            stall: STALL_LIMIT,
            idle: IDLE_LIMIT,
        }
    }
}

/// Turns the bound socket into ttrpc's listener under `limits`; `keep`'s connections
/// never give way at the cap; `gate` stops them all at a frame boundary when closed. Must
/// run inside the runtime: it registers the socket and starts the task that trims the heap.
pub fn listen(
    listener: StdUnixListener,
    limits: Limits,
    keep: Keep,
    gate: Arc<Gate>,
) -> io::Result<Listener> {
    resume(listener, Vec::new(), limits, keep, gate)
}

/// A connection handed over by an earlier image of this process.
#[derive(Debug)]
pub struct Handed {
    /// Its socket.
    pub fd: OwnedFd,
    /// Its unanswered requests' frames, read again before anything from the socket.
    pub replay: Vec<u8>,
}

/// As [`listen`], serving first `connections`: ones an earlier image of this process
/// accepted and handed over across an exec, each stopped at a frame boundary, so the next
/// request is read whole (its unanswered ones first, then the socket's). Each must be a
/// Unix stream socket whose peer passes the same check as a new one; the rest are refused
/// (closed) and logged.
pub fn resume(
    listener: StdUnixListener,
    connections: Vec<Handed>,
    limits: Limits,
    keep: Keep,
    gate: Arc<Gate>,
) -> io::Result<Listener> {
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let mut adopted = VecDeque::new();
    for c in connections {
        match adopt(c.fd) {
            Ok(stream) => adopted.push_back((stream, c.replay)),
            Err(e) => log::error!("refused a handed-over connection: {e}"),
        }
    }
    let budget = Budget::new(limits.budget);
    tokio::spawn(trim_after_release(budget.clone()));
    Ok(Listener::new(accepted(
        listener,
        adopted,
        limits,
        budget,
        SameUser::current(),
        keep,
        gate,
    )))
}

/// Checks that socket `fd` has each option of `want` at its value, else says which is not.
pub fn check_sockopts(fd: RawFd, want: &[(libc::c_int, libc::c_int, &str)]) -> io::Result<()> {
    for &(opt, value, what) in want {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a c_int of the size given, on an fd the caller holds.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::other(format!(
                "fd {fd}: {}",
                io::Error::last_os_error()
            )));
        }
        if v != value {
            return Err(io::Error::other(format!("fd {fd}: {what}")));
        }
    }
    Ok(())
}

/// A handed-over fd as a connection, if it is a connected Unix stream socket.
fn adopt(fd: OwnedFd) -> io::Result<UnixStream> {
    check_sockopts(
        fd.as_raw_fd(),
        &[
            (libc::SO_DOMAIN, libc::AF_UNIX, "not a Unix socket"),
            (libc::SO_TYPE, libc::SOCK_STREAM, "not a stream socket"),
        ],
    )?;
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

/// Returns freed request memory to the kernel after budget comes back: glibc keeps freed
/// pages of a large allocation once it has raised its mmap threshold past it.
async fn trim_after_release(budget: Arc<Budget>) {
    loop {
        budget.released().notified().await;
        tokio::time::sleep(TRIM_DELAY).await;
        crate::memory::trim_heap();
    }
}

/// The connections to serve: handed-over ones first, then new ones; from our own uid, and
/// only while under the cap.
fn accepted(
    listener: UnixListener,
    adopted: VecDeque<(UnixStream, Vec<u8>)>,
    limits: Limits,
    budget: Arc<Budget>,
    owner: SameUser,
    keep: Keep,
    gate: Arc<Gate>,
) -> impl Stream<Item = io::Result<Guarded<UnixStream>>> + Send + 'static {
    let state = Accepting {
        listener,
        adopted,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        budget,
        owner,
        keep,
        registry: Arc::new(Registry::default()),
        gate,
    };
    stream::unfold(state, move |mut state| async move {
        let (stream, peer_pid, replay) = state.next_peer().await;
        let s = &state;
        let slot = match s.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                log::warn!(
                    "{} ttrpc connections open: a new one from pid {} waits until one closes",
                    limits.max_connections,
                    peer_pid.unwrap_or(0)
                );
                make_room(&s.slots, &s.registry, &limits, &s.keep).await?
            }
        };
        let conn = s.registry.add(peer_pid);
        let fd = stream.as_raw_fd();
        let inflight = InFlight::new();
        let guarded = Guarded::new(
            stream,
            s.budget.clone(),
            limits,
            Some(slot),
            peer_pid,
            Some(conn),
        )
        .with_inflight(inflight.clone())
        .with_replay(replay)
        .with_gate(s.gate.join(fd, peer_pid, Some(inflight)));
        Some((Ok(guarded), state))
    })
}

/// The accept loop's state.
struct Accepting {
    listener: UnixListener,
    /// Connections handed over by the previous image (with their unanswered requests),
    /// served before any new one.
    adopted: VecDeque<(UnixStream, Vec<u8>)>,
    slots: Arc<Semaphore>,
    budget: Arc<Budget>,
    owner: SameUser,
    keep: Keep,
    registry: Arc<Registry>,
    gate: Arc<Gate>,
}

impl Accepting {
    /// The next connection whose peer is of our uid, that peer's pid, and what it is to
    /// read first.
    async fn next_peer(&mut self) -> (UnixStream, Option<i32>, Vec<u8>) {
        loop {
            // A connection arriving while the gate is closed waits in the backlog.
            self.gate.wait_open().await;
            let (stream, replay) = match self.adopted.pop_front() {
                Some(handed) => handed,
                None => match self.listener.accept().await {
                    Ok((stream, _)) => (stream, Vec::new()),
                    Err(e) => {
                        log::error!("accepting a ttrpc connection: {e}");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                        continue;
                    }
                },
            };
            let peer = match stream.peer_cred() {
                Ok(peer) => peer,
                Err(e) => {
                    log::warn!("refused a ttrpc connection: SO_PEERCRED: {e}");
                    continue;
                }
            };
            match self.owner.check(peer.uid()) {
                Ok(()) => return (stream, peer.pid(), replay),
                Err(e) => log::warn!(
                    "refused a ttrpc connection from pid {}: {e}",
                    peer.pid().unwrap_or(0)
                ),
            }
        }
    }
}

/// A slot for a connection waiting at the cap: the next one to close, or one that gives way
/// for having been idle for `limits.idle` (checked a few times per such period).
async fn make_room(
    slots: &Arc<Semaphore>,
    registry: &Registry,
    limits: &Limits,
    keep: &Keep,
) -> Option<OwnedSemaphorePermit> {
    let freed = slots.clone().acquire_owned();
    tokio::pin!(freed);
    loop {
        if let Some(keep) = keep.pid().await {
            if let Some(pid) = registry.evict_idle(limits.idle, keep) {
                log::warn!(
                    "closing ttrpc connection from pid {pid}: idle for over {:?} while a new \
                     one waits at the cap of {}",
                    limits.idle,
                    limits.max_connections
                );
            }
        }
        tokio::select! {
            // The semaphore is never closed; should it be, the listener ends.
            slot = &mut freed => return slot.ok(),
            _ = tokio::time::sleep(limits.idle / 8) => {}
        }
    }
}

#[cfg(test)]
mod tests;
