//! Watching a container's memory cgroup for OOM kills, without ever blocking the runtime.
//!
//! cgroup v1: an eventfd registered on `memory.oom_control` through `cgroup.event_control`.
//! The kernel signals it when the cgroup runs out of memory, and once more when the
//! cgroup is removed, so a signal counts as an OOM only while the cgroup still exists.
//! cgroup v2: inotify on `memory.events`, whose `oom_kill` counter is compared with the
//! last value seen. Both fds are non-blocking and awaited through tokio's `AsyncFd`.
//!
//! The kernel signals the OOM (v1) before it picks and kills a victim, and counts the kill
//! (v2) right after sending SIGKILL, so by the time the shim has reaped a killed init the
//! OOM is pending here. [`OomMonitor::check`] takes it at once, without waiting for the
//! watch task to be scheduled: that is how exit handling publishes TaskOOM before TaskExit.
//!
//! Under systemd (runc's systemd driver) a container's cgroup is a scope that systemd
//! removes as soon as it is empty, which can be before the shim read the `oom_kill` that
//! killed its last process: the watch is woken, and the file is gone. What is left then is
//! the parent's `memory.events`, whose counters include its children's. The monitor samples
//! the parent's `oom_kill` before every read of its own file, and remembers when its last
//! read showed an OOM under way (`oom` rose, no kill counted yet) or the file vanished
//! under a change notification; [`OomMonitor::settle_gone`] then takes a rise of the parent's count as this
//! container's kill, only for an init that died of SIGKILL.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// An OOM happened since the last check; it has been reported.
    Oom,
    /// Nothing new.
    Quiet,
    /// The cgroup is gone: nothing more will come.
    Gone,
}

enum Kind {
    V1 {
        oom_control: PathBuf,
    },
    V2 {
        events: PathBuf,
        /// The parent's memory.events; none under the root (which has no such file).
        parent: Option<PathBuf>,
    },
}

/// What the checks have seen so far (v2; v1 uses none of it but `kills`).
#[derive(Debug, Default)]
struct Seen {
    /// The `oom_kill` count last reported.
    kills: u64,
    /// The `oom` count last read.
    ooms: u64,
    /// The parent's `oom_kill`, read right before the last read of our own file.
    parent_kills: Option<u64>,
    /// The last read of our cgroup showed a new OOM with no kill counted yet, or our cgroup
    /// vanished under a change notification: only the parent can still tell (see
    /// [`OomMonitor::settle_gone`]).
    suspect: bool,
}

/// One container's OOM watch.
pub struct OomMonitor {
    fd: AsyncFd<OwnedFd>,
    kind: Kind,
    /// Makes a check and its report one step, whoever checks (the watch task or exit
    /// handling).
    seen: Mutex<Seen>,
    /// Checks that took a notification from the kernel, counted once the check (and its
    /// report) is over: lets a test wait for the watch to have looked before it asserts
    /// that nothing was reported.
    passes: AtomicU64,
}

fn last_os_error<T>(what: &str) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Reads from a non-blocking fd; `None` when there is nothing (EAGAIN).
fn read_nonblocking(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: reads into a buffer we own, from an fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Hands `fd` to the runtime's reactor, for reading.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the fd; nothing closes or replaces it while it lives.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}

impl OomMonitor {
    /// Registers an eventfd on the v1 memory cgroup `dir`.
    pub fn v1(dir: &Path) -> io::Result<Self> {
        let oom_control = dir.join("memory.oom_control");
        // SAFETY: eventfd returns a new fd or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return last_os_error("eventfd");
        }
        // SAFETY: raw is a fresh fd nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        // The kernel keeps the eventfd, not this file: it may be closed once registered.
        let control = File::open(&oom_control)?;
        std::fs::write(
            dir.join("cgroup.event_control"),
            format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
        )?;
        Ok(Self {
            fd: register(efd)?,
            kind: Kind::V1 { oom_control },
            seen: Mutex::default(),
            passes: AtomicU64::new(0),
        })
    }

    /// Watches `memory.events` of the v2 cgroup `dir`.
    pub fn v2(dir: &Path) -> io::Result<Self> {
        let events = dir.join("memory.events");
        // SAFETY: inotify_init1 returns a new fd or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if raw < 0 {
            return last_os_error("inotify_init1");
        }
        // SAFETY: raw is a fresh fd nothing else owns.
        let ifd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = std::ffi::CString::new(events.as_os_str().as_encoded_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a valid fd and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(ifd.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) } < 0 {
            return last_os_error(&format!("inotify_add_watch {}", events.display()));
        }
        let parent = dir
            .parent()
            .map(|p| p.join("memory.events"))
            .filter(|p| p.exists());
        let m = Self {
            fd: register(ifd)?,
            kind: Kind::V2 { events, parent },
            seen: Mutex::default(),
            passes: AtomicU64::new(0),
        };
        // The parent's count from before anything could happen here.
        m.lock().parent_kills = m.parent_kills();
        Ok(m)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The parent's `oom_kill` now; `None` without a readable parent file, which only
    /// takes the fallback away (logged: our own file still decides).
    fn parent_kills(&self) -> Option<u64> {
        let Kind::V2 {
            parent: Some(parent),
            ..
        } = &self.kind
        else {
            return None;
        };
        match read_events(parent) {
            Ok(counts) => counts.map(|c| c.oom_kill),
            Err(e) => {
                log::warn!("{}: {e}", parent.display());
                None
            }
        }
    }

    /// Takes whatever the kernel signalled, without blocking; calls `report` (while no
    /// other check can run) when that was an OOM not reported before.
    pub fn check(&self, report: impl FnOnce()) -> io::Result<Pending> {
        let mut seen = self.lock();
        let mut notified = false;
        let pending = self.take(&mut seen, &mut notified, report);
        if notified {
            self.passes.fetch_add(1, Ordering::SeqCst);
        }
        pending
    }

    /// Checks that took a notification from the kernel so far, each counted after its
    /// report.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::SeqCst)
    }

    fn take(
        &self,
        seen: &mut Seen,
        notified: &mut bool,
        report: impl FnOnce(),
    ) -> io::Result<Pending> {
        match &self.kind {
            Kind::V1 { oom_control } => {
                let mut buf = [0u8; 8];
                while read_nonblocking(self.fd.get_ref(), &mut buf)?.is_some() {
                    *notified = true;
                }
                if !*notified {
                    return Ok(Pending::Quiet);
                }
                if !oom_control.exists() {
                    return Ok(Pending::Gone);
                }
                report();
                Ok(Pending::Oom)
            }
            Kind::V2 { events, .. } => {
                let (mut modified, mut removed) = (false, false);
                // Room for a few events (a header is 16 bytes, and no name for a file watch).
                let mut buf = [0u8; 256];
                while let Some(n) = read_nonblocking(self.fd.get_ref(), &mut buf)? {
                    *notified = true;
                    let (m, r) = inotify_masks(&buf[..n]);
                    modified |= m;
                    removed |= r;
                }
                // The parent first: a kill counted after it is in our own file or a rise of
                // the parent's count later, never in neither.
                let parent_kills = self.parent_kills();
                let Some(counts) = read_events(events)? else {
                    // A change we can no longer read (the removal alone says nothing).
                    seen.suspect |= modified;
                    return Ok(Pending::Gone);
                };
                seen.parent_kills = parent_kills;
                // An OOM read before its kill was counted; the next read without a new one
                // means it ended without a kill here.
                seen.suspect = counts.oom > seen.ooms;
                seen.ooms = counts.oom;
                if counts.oom_kill > seen.kills {
                    seen.kills = counts.oom_kill;
                    seen.suspect = false;
                    report();
                    return Ok(Pending::Oom);
                }
                Ok(if removed {
                    Pending::Gone
                } else {
                    Pending::Quiet
                })
            }
        }
    }

    /// For a cgroup found gone: when it went with an OOM under way or unread (see the module
    /// docs) and its init died of SIGKILL (`sigkilled`), a rise of the parent's `oom_kill`
    /// since our last read is taken as this container's kill and reported. Decides once;
    /// true when it reported.
    pub fn settle_gone(&self, sigkilled: bool, report: impl FnOnce()) -> bool {
        let mut seen = self.lock();
        if !std::mem::take(&mut seen.suspect) {
            return false;
        }
        let (Some(before), Some(now)) = (seen.parent_kills, self.parent_kills()) else {
            return false;
        };
        seen.parent_kills = Some(now);
        if !sigkilled || now <= before {
            return false;
        }
        report();
        true
    }

    /// Reports every OOM as it happens, until the cgroup is gone.
    pub async fn watch(&self, report: impl Fn()) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            // check() reads until EAGAIN, so clearing the readiness loses no signal.
            let pending = self.check(&report)?;
            ready.clear_ready();
            if pending == Pending::Gone {
                return Ok(());
            }
        }
    }
}

/// Whether the inotify events in `buf` say the file changed, and whether the watch ended
/// (file or cgroup removed).
fn inotify_masks(buf: &[u8]) -> (bool, bool) {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut at = 0;
    let (mut modified, mut removed) = (false, false);
    while at + HEADER <= buf.len() {
        // SAFETY: HEADER bytes are in the buffer; read_unaligned copes with alignment.
        let ev: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        modified |= ev.mask & libc::IN_MODIFY != 0;
        removed |= ev.mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF) != 0;
        at += HEADER + ev.len as usize;
    }
    (modified, removed)
}

/// The counters of a v2 memory.events that matter here.
#[derive(Debug, Default)]
struct Counts {
    oom: u64,
    oom_kill: u64,
}

/// Reads a v2 memory.events; `None` when the file is gone.
fn read_events(events: &Path) -> io::Result<Option<Counts>> {
    let mut counts = Counts::default();
    let present = super::files::flat_keyed(events, |k, v| match k {
        "oom" => counts.oom = v,
        "oom_kill" => counts.oom_kill = v,
        _ => {}
    })
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(present.then_some(counts))
}

#[cfg(test)]
mod tests;
