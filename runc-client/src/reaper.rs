//! Process-wide child reaping with exit fan-out to subscribers.
//!
//! One thread owns `waitpid(-1)` for the whole process, so exits are never stolen by a
//! second waiter (tokio::process, a signal handler, std's `Child::wait`) and nothing is
//! left as a zombie. No SIGCHLD handler is involved, which keeps it usable under a
//! child subreaper and inside ordinary `#[tokio::test]`s with many runtimes.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::pidfd::Pidfd;

/// One reaped child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The reaped pid.
    pub pid: i32,
    /// Exit code, or 128 + signal number when the child was killed.
    pub status: i32,
    /// When the reaper collected it.
    pub at: SystemTime,
}

#[derive(Default)]
struct Shared {
    subscribers: HashMap<u64, UnboundedSender<Exit>>,
    next_id: u64,
    /// Bumped by every spawn so a reaper parked on ECHILD knows to look again.
    spawned: u64,
    /// Live [`ReapHold`]s; while non-zero, exits are noticed but not collected.
    holds: usize,
    /// An exit is being collected and delivered right now (see [`Reaper::hold_settled`]).
    collecting: bool,
}

struct Inner {
    shared: Mutex<Shared>,
    wake: Condvar,
}

/// Handle to the process-wide reaper.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Inner>,
}

static GLOBAL: OnceLock<Reaper> = OnceLock::new();

/// Safety net in case some spawner forgets `notify_spawned`: the reaper still looks again.
const PARK_LIMIT: Duration = Duration::from_secs(1);

impl Reaper {
    /// The process-wide reaper; starting it makes it own the reaping of ALL children of this process (waitpid(-1)).
    ///
    /// Panics if its thread cannot be started: a program that must report that as an
    /// error calls [`Reaper::start`] first.
    pub fn global() -> Reaper {
        Reaper::start().expect("cannot start the reaper thread")
    }

    /// [`Reaper::global`], reporting a reaper thread that cannot be started (no pids or
    /// memory left) as an error. Once it runs, later calls just return it.
    pub fn start() -> std::io::Result<Reaper> {
        Self::start_with(0)
    }

    /// [`Reaper::start`] with a hold taken before its thread can collect anything: for a
    /// process that begins life with children already exited (a shim that re-executed
    /// itself), whose exits must wait until someone subscribed and knows their pids.
    pub fn start_held() -> std::io::Result<(Reaper, ReapHold)> {
        let reaper = Self::start_with(1)?;
        let hold = ReapHold {
            inner: reaper.inner.clone(),
        };
        Ok((reaper, hold))
    }

    fn start_with(holds: usize) -> std::io::Result<Reaper> {
        static STARTING: Mutex<()> = Mutex::new(());
        if let Some(r) = GLOBAL.get() {
            r.inner.shared.lock().unwrap().holds += holds;
            return Ok(r.clone());
        }
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = GLOBAL.get() {
            r.inner.shared.lock().unwrap().holds += holds;
            return Ok(r.clone());
        }
        let reaper = Reaper {
            inner: Arc::new(Inner {
                shared: Mutex::new(Shared {
                    holds,
                    ..Shared::default()
                }),
                wake: Condvar::new(),
            }),
        };
        let inner = reaper.inner.clone();
        std::thread::Builder::new()
            .name("runc-client-reaper".into())
            .spawn(move || reap_forever(&inner))?;
        Ok(GLOBAL.get_or_init(|| reaper).clone())
    }

    /// Every exit reaped after this call is delivered to the subscription (subscribe BEFORE spawning, so no exit is lost).
    pub fn subscribe(&self) -> ExitSubscription {
        let (tx, rx) = unbounded_channel();
        let mut shared = self.inner.shared.lock().unwrap();
        let key = shared.next_id;
        shared.next_id += 1;
        shared.subscribers.insert(key, tx);
        ExitSubscription {
            key,
            rx,
            inner: self.inner.clone(),
        }
    }

    /// Pause collecting exits until the returned guard drops.
    ///
    /// Needed around a fork-based `std::process::Command::spawn` (one with `pre_exec`):
    /// when exec fails, std reaps the child itself and panics if someone else already did.
    pub fn hold(&self) -> ReapHold {
        self.inner.shared.lock().unwrap().holds += 1;
        ReapHold {
            inner: self.inner.clone(),
        }
    }

    /// [`Reaper::hold`], returning only once no exit is between its collection and its
    /// delivery: every exit collected before the call has reached the subscribers. What
    /// is still to be collected waits as a zombie until the hold is dropped.
    pub fn hold_settled(&self) -> ReapHold {
        let mut shared = self.inner.shared.lock().unwrap();
        shared.holds += 1;
        drop(
            self.inner
                .wake
                .wait_while(shared, |s| s.collecting)
                .unwrap(),
        );
        ReapHold {
            inner: self.inner.clone(),
        }
    }

    /// Spawns `cmd` as a child this reaper collects, with every signal at its default and
    /// none blocked (as runc is spawned), and returns its pid with a pidfd for it.
    ///
    /// The pidfd is opened before the child's exit can be collected, so it always names
    /// this child: signalling it (`pidfd_send_signal`) or polling it for the exit never
    /// reaches a process that reused the pid.
    pub fn spawn_with_pidfd(&self, cmd: std::process::Command) -> std::io::Result<(i32, Pidfd)> {
        let (child, hold) = crate::command::spawn_held(cmd, self)?;
        let pid = child.id() as i32;
        let pidfd = Pidfd::open(pid);
        drop(hold);
        match pidfd {
            Ok(fd) => Ok((pid, fd)),
            Err(e) => {
                // Unwatchable, so it must not run on; still our unreaped child: no reuse.
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                Err(e)
            }
        }
    }

    /// Opens a pidfd for `pid`, a child of this process that someone else started (runc
    /// starts a container's processes; they become ours as its subreaper).
    ///
    /// Exits are not collected meanwhile, so a child that is still alive or a zombie keeps
    /// its pid and the pidfd names it. For a child collected before this call the answer
    /// is ESRCH, or, if its pid was taken again in between, a pidfd of that other process:
    /// only the caller, which learns of the exit from its subscription, can tell.
    pub fn open_pidfd(&self, pid: i32) -> std::io::Result<Pidfd> {
        let _hold = self.hold();
        Pidfd::open(pid)
    }

    /// Tell the reaper a child was just spawned, so it stops idling on ECHILD.
    pub fn notify_spawned() {
        let reaper = Reaper::global();
        let mut shared = reaper.inner.shared.lock().unwrap();
        shared.spawned = shared.spawned.wrapping_add(1);
        reaper.inner.wake.notify_all();
    }
}

fn reap_forever(inner: &Inner) {
    loop {
        let seen = inner.shared.lock().unwrap().spawned;
        // Peek first (WNOWAIT) so a hold can keep the zombie for its rightful waiter.
        match peek_exited() {
            Ok(pid) => {
                let mut shared = inner
                    .wake
                    .wait_while(inner.shared.lock().unwrap(), |s| s.holds > 0)
                    .unwrap();
                shared.collecting = true;
                drop(shared);
                // None here means a holder's spawn reaped it; that is fine.
                let status = collect(pid);
                deliver(inner, pid, status);
            }
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => {
                let shared = inner.shared.lock().unwrap();
                // A spawn between reading `seen` and waitid would have made waitid find it,
                // so only a spawn after ECHILD can change the counter; wait for exactly that.
                let _ = inner
                    .wake
                    .wait_timeout_while(shared, PARK_LIMIT, |s| s.spawned == seen)
                    .unwrap();
            }
            Err(e) => {
                log::error!("reaper: waitid failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

// Raw libc rather than nix's typed statuses: nix refuses to decode a death by a signal
// it has no name for (real-time signals 34..=64), which left the zombie in place and
// wedged the reaper on it forever.

/// Blocks until some child has exited and returns its pid, leaving it a zombie.
fn peek_exited() -> Result<i32, Errno> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a siginfo_t we own.
    let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
    if rc < 0 {
        return Err(Errno::last());
    }
    // SAFETY: waitid succeeded, so si_pid is set (0 only with WNOHANG, not used here).
    let pid = unsafe { info.si_pid() };
    if pid <= 0 {
        return Err(Errno::EINTR);
    }
    Ok(pid)
}

/// Reaps `pid` if it has exited; exit code, or 128 + the signal that killed it.
fn collect(pid: i32) -> Option<i32> {
    let mut raw = 0;
    // SAFETY: plain waitpid on one pid with a pointer to a local int.
    let rc = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
    if rc != pid {
        return None;
    }
    exit_status(raw)
}

/// Decodes a wait status the way shells and containerd report it.
pub(crate) fn exit_status(raw: i32) -> Option<i32> {
    if libc::WIFEXITED(raw) {
        Some(libc::WEXITSTATUS(raw))
    } else if libc::WIFSIGNALED(raw) {
        Some(128 + libc::WTERMSIG(raw))
    } else {
        None
    }
}

/// Keeps the reaper from collecting exits while alive; see [`Reaper::hold`].
pub struct ReapHold {
    inner: Arc<Inner>,
}

impl Drop for ReapHold {
    fn drop(&mut self) {
        let mut shared = self.inner.shared.lock().unwrap();
        shared.holds -= 1;
        self.inner.wake.notify_all();
    }
}

/// Hands a collected exit (if there was one) to every subscriber and ends the collection.
fn deliver(inner: &Inner, pid: i32, status: Option<i32>) {
    let mut shared = inner.shared.lock().unwrap();
    if let Some(status) = status {
        let exit = Exit {
            pid,
            status,
            at: SystemTime::now(),
        };
        for tx in shared.subscribers.values() {
            let _ = tx.send(exit);
        }
    }
    shared.collecting = false;
    inner.wake.notify_all();
}

/// A stream of exits; unsubscribes on drop.
pub struct ExitSubscription {
    key: u64,
    rx: UnboundedReceiver<Exit>,
    inner: Arc<Inner>,
}

impl ExitSubscription {
    /// Next exit reaped since the subscription was made.
    pub async fn recv(&mut self) -> Option<Exit> {
        self.rx.recv().await
    }

    /// Wait for the exit of one pid (exits of other pids seen meanwhile are dropped for THIS subscription only).
    pub async fn wait_for(&mut self, pid: i32) -> Exit {
        loop {
            match self.rx.recv().await {
                Some(exit) if exit.pid == pid => return exit,
                Some(_) => {}
                // The sender lives in the reaper's table until we drop, so this is unreachable;
                // never resolving is the honest answer if it ever happens.
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// An exit already delivered, without waiting.
    pub fn try_recv(&mut self) -> Option<Exit> {
        self.rx.try_recv().ok()
    }
}

impl Drop for ExitSubscription {
    fn drop(&mut self) {
        if let Ok(mut shared) = self.inner.shared.lock() {
            shared.subscribers.remove(&self.key);
        }
    }
}

#[cfg(test)]
// The reaper under test is what waits for these children.
#[allow(clippy::zombie_processes)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Instant;

    fn spawn(reaper: &Reaper, script: &str) -> (ExitSubscription, i32) {
        let sub = reaper.subscribe();
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .spawn()
            .unwrap();
        Reaper::notify_spawned();
        (sub, child.id() as i32)
    }

    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("exit not delivered")
    }

    #[tokio::test]
    async fn delivers_exit_codes_and_signals() {
        let reaper = Reaper::global();
        let (mut sub, pid) = spawn(&reaper, "exit 7");
        let exit = within(sub.wait_for(pid)).await;
        assert_eq!((exit.pid, exit.status), (pid, 7));

        let (mut sub, pid) = spawn(&reaper, "kill -9 $$");
        assert_eq!(within(sub.wait_for(pid)).await.status, 128 + 9);
    }

    /// The pidfd names the child: it polls readable once the child exited, even after the
    /// reaper collected it, and the exit is delivered as for any child.
    #[tokio::test]
    async fn spawn_with_pidfd_watches_the_child() {
        use std::os::fd::AsFd;
        let reaper = Reaper::global();
        let mut sub = reaper.subscribe();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg("read x; exit 5");
        // Close-on-exec, so the child holds no write end and sees EOF when we drop ours.
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        cmd.stdin(std::process::Stdio::from(r));
        let (pid, pidfd) = reaper.spawn_with_pidfd(cmd).unwrap();
        let polled = |timeout: u16| {
            let mut fds = [nix::poll::PollFd::new(
                pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(timeout)).unwrap()
        };
        assert_eq!(polled(0), 0, "readable while the child runs");
        drop(w);
        assert_eq!(within(sub.wait_for(pid)).await.status, 5);
        assert_eq!(polled(10_000), 1, "not readable after the exit");
    }

    /// A death by a real-time signal (no name in nix) used to wedge the reaper for good.
    #[tokio::test]
    async fn realtime_signal_deaths_are_delivered_and_reaping_goes_on() {
        let reaper = Reaper::global();
        for sig in [34, 40, 64] {
            let (mut sub, pid) = spawn(&reaper, &format!("kill -{sig} $$; sleep 5"));
            assert_eq!(within(sub.wait_for(pid)).await.status, 128 + sig);
        }
        let (mut sub, pid) = spawn(&reaper, "exit 3");
        assert_eq!(within(sub.wait_for(pid)).await.status, 3);
    }

    #[tokio::test]
    async fn every_subscriber_sees_every_exit() {
        let reaper = Reaper::global();
        let (mut a, p1) = spawn(&reaper, "exit 1");
        let mut b = reaper.subscribe();
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg("sleep 0.2; exit 2")
            .spawn()
            .unwrap();
        Reaper::notify_spawned();
        let p2 = child.id() as i32;
        // `a` skips p1 while waiting for p2; `b` still gets p2 (it subscribed after p1 spawned,
        // so p1 may or may not reach it).
        assert_eq!(within(a.wait_for(p2)).await.status, 2);
        assert_eq!(within(b.wait_for(p2)).await.status, 2);
        assert!(
            a.try_recv().is_none_or(|e| e.pid != p1),
            "p1 was consumed by wait_for"
        );
    }

    #[tokio::test]
    async fn wakes_promptly_after_idling_without_children() {
        let reaper = Reaper::global();
        let (mut sub, pid) = spawn(&reaper, "exit 0");
        within(sub.wait_for(pid)).await;
        // Let the reaper run out of children and park.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let (mut sub, pid) = spawn(&reaper, "exit 3");
        assert_eq!(within(sub.wait_for(pid)).await.status, 3);
        // Well under PARK_LIMIT: the spawn notification, not the safety timeout, woke it.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_hold_leaves_the_exit_to_its_own_waiter() {
        let reaper = Reaper::global();
        let mut sub = reaper.subscribe();
        let hold = reaper.hold();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg("exit 5")
            .spawn()
            .unwrap();
        Reaper::notify_spawned();
        let pid = child.id() as i32;
        // std's own wait works only because the reaper keeps its hands off.
        assert_eq!(child.wait().unwrap().code(), Some(5));
        drop(hold);
        let stolen = tokio::time::timeout(Duration::from_millis(300), sub.wait_for(pid)).await;
        assert!(
            stolen.is_err(),
            "the reaper delivered an exit it never collected"
        );
        // And it resumes collecting afterwards.
        let (mut sub, pid) = spawn(&reaper, "exit 6");
        assert_eq!(within(sub.wait_for(pid)).await.status, 6);
    }

    #[test]
    fn dropping_a_subscription_unsubscribes() {
        let reaper = Reaper::global();
        let sub = reaper.subscribe();
        let key = sub.key;
        let subscribed = |k| {
            reaper
                .inner
                .shared
                .lock()
                .unwrap()
                .subscribers
                .contains_key(&k)
        };
        assert!(subscribed(key));
        drop(sub);
        assert!(!subscribed(key));
    }
}
