//! Routes reaped exits to the processes they belong to.
//!
//! Only live processes are in the map: a pid is registered when runc reports it
//! (create for init, exec start for an exec) and leaves the map with its exit. A stopped
//! process that is not deleted yet therefore cannot catch the exit of a new process that
//! reused its pid (pid_max is 32768 here, and pids wrap).
//!
//! An exit can be reaped before its pid is registered (a process that dies before
//! `runc exec --detach` returns); such exits wait among the unclaimed ones. A pid is only
//! matched with an unclaimed exit reaped after the runc call that produced it began and
//! while no live process holds that pid, so a stale exit of a reused pid is never taken.
//!
//! Unclaimed exits are kept in a bounded queue, and not dropped while a runc call that
//! could still claim them is in flight ([`ExitRouter::expect_pid`]): in an exec storm
//! (100 ExecSyncs at once) hundreds of exits (runc's own, and execs that ended before
//! their `runc exec` returned) arrive while registrations lag, and an exec whose early
//! exit was pushed out was never reported: its Wait, and CRI's ExecSync, hung for good.
//! That protection has a hard bound too, [`UNCLAIMED_EXITS_MAX`]: the shim also reaps the
//! orphans of containers without their own PID namespace, which can fork and exit as fast
//! as they like during a call that lasts up to a minute.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use runc_client::{Exit, Reaper};

use crate::process::Process;

/// How many exits nobody claimed are remembered (mostly runc's own children).
const UNCLAIMED_EXITS: usize = 128;
/// How many are remembered at most, even while calls in flight could claim them (24 bytes
/// each; the queue's buffer then stays under 1 MiB).
/// An exec storm leaves a few hundred; beyond this a container is churning processes, and
/// the oldest go, whoever could have claimed them.
pub const UNCLAIMED_EXITS_MAX: usize = 16 << 10;

#[derive(Default)]
struct Inner {
    live: HashMap<i32, Arc<Process>>,
    unclaimed: VecDeque<Exit>,
    /// Start times of the runc calls in flight that will register a pid (with counts).
    expecting: BTreeMap<SystemTime, usize>,
    /// Claimable exits were dropped since calls were last all done (logged once).
    overflowed: bool,
}

impl Inner {
    /// Drops the oldest unclaimed exits beyond the bound, as long as no call in flight
    /// began before them (such a call could still claim them); beyond the hard bound,
    /// the oldest anyway.
    fn trim(&mut self) {
        let oldest_call = self.expecting.keys().next().copied();
        let mut forced = 0;
        while self.unclaimed.len() > UNCLAIMED_EXITS {
            match (self.unclaimed.front(), oldest_call) {
                (Some(e), Some(since))
                    if e.at >= since && self.unclaimed.len() <= UNCLAIMED_EXITS_MAX =>
                {
                    break
                }
                (Some(e), Some(since)) if e.at >= since => forced += 1,
                _ => {}
            }
            self.unclaimed.pop_front();
        }
        if forced > 0 && !self.overflowed {
            self.overflowed = true;
            log::warn!(
                "over {UNCLAIMED_EXITS_MAX} exits nobody claimed while a create or exec was \
                 under way: dropping the oldest (an exec that ended among them would not be \
                 reported)"
            );
        }
        if self.expecting.is_empty() {
            self.overflowed = false;
        }
    }
}

/// A runc call in flight that will register a pid; see [`ExitRouter::expect_pid`].
pub struct PidExpected<'a> {
    router: &'a ExitRouter,
    since: SystemTime,
}

impl PidExpected<'_> {
    /// When the call began: the `since` to register its pid with.
    pub fn since(&self) -> SystemTime {
        self.since
    }
}

impl Drop for PidExpected<'_> {
    fn drop(&mut self) {
        let mut inner = self.router.lock();
        if let Some(n) = inner.expecting.get_mut(&self.since) {
            *n -= 1;
            if *n == 0 {
                inner.expecting.remove(&self.since);
            }
        }
        inner.trim();
    }
}

/// The pid → live process map.
#[derive(Default)]
pub struct ExitRouter {
    inner: Mutex<Inner>,
}

/// What became of a reaped exit.
pub enum Routed {
    /// It belongs to this live process (now removed from the map).
    Process(Arc<Process>),
    /// Nobody holds the pid yet; kept among the unclaimed exits.
    Unclaimed,
}

impl ExitRouter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the exit for the live process holding its pid, or keeps it unclaimed.
    pub fn route(&self, exit: Exit) -> Routed {
        let mut inner = self.lock();
        if let Some(p) = inner.live.remove(&exit.pid) {
            return Routed::Process(p);
        }
        inner.unclaimed.push_back(exit);
        inner.trim();
        Routed::Unclaimed
    }

    /// Marks a runc call that will report a pid (create, exec) as in flight, from now
    /// until the guard is dropped (after [`ExitRouter::register`]): exits reaped
    /// meanwhile stay claimable however many arrive.
    pub fn expect_pid(&self) -> PidExpected<'_> {
        let since = SystemTime::now();
        *self.lock().expecting.entry(since).or_default() += 1;
        PidExpected {
            router: self,
            since,
        }
    }

    /// Registers `pid` for `process`, whose runc call began at `since`. Returns the exit
    /// if the process already died (reaped after `since` and before this call).
    ///
    /// An exec also gets its pidfd here, which every later Kill goes through. It is opened
    /// before the look for an early exit: if the exec had died and its pid were taken
    /// again before the open, its exit is found below and the pidfd is not kept. (Only an
    /// exit still on its way from the reaper is missed, which needs the whole pid space
    /// to wrap within that moment.) Init is signalled by runc, which needs none.
    pub fn register(&self, pid: i32, process: &Arc<Process>, since: SystemTime) -> Option<Exit> {
        let pidfd = (!process.is_init()).then(|| Reaper::global().open_pidfd(pid));
        let mut inner = self.lock();
        if let Some(pos) = inner
            .unclaimed
            .iter()
            .rposition(|e| e.pid == pid && e.at >= since)
        {
            return inner.unclaimed.remove(pos);
        }
        if let Some(pidfd) = pidfd {
            process.set_pidfd(pidfd);
        }
        if let Some(old) = inner.live.insert(pid, process.clone()) {
            // Two live processes cannot share a pid; the old one's exit was lost.
            log::warn!(
                "pid {pid}: {} replaces {} in the exit map",
                process.name(),
                old.name()
            );
        }
        None
    }

    /// Forgets `pid` if it still maps to `process` (it was deleted without an exit).
    pub fn forget(&self, pid: i32, process: &Arc<Process>) {
        let mut inner = self.lock();
        if inner
            .live
            .get(&pid)
            .is_some_and(|p| Arc::ptr_eq(p, process))
        {
            inner.live.remove(&pid);
        }
    }

    /// The exits nobody claimed, oldest first (for a handover).
    pub fn unclaimed(&self) -> Vec<Exit> {
        self.lock().unclaimed.iter().copied().collect()
    }

    /// Puts back the exits an earlier image of this process had not matched yet.
    pub fn restore_unclaimed(&self, exits: impl IntoIterator<Item = Exit>) {
        let mut inner = self.lock();
        inner.unclaimed.extend(exits);
        inner.trim();
    }

    /// Number of live registrations (tests and diagnostics).
    pub fn live(&self) -> usize {
        self.lock().live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdioPaths;
    use std::time::Duration;

    fn exit(pid: i32, at: SystemTime) -> Exit {
        Exit { pid, status: 0, at }
    }

    fn proc(id: &str) -> Arc<Process> {
        Arc::new(Process::exec("c", id, StdioPaths::default()))
    }

    #[test]
    fn a_stopped_process_does_not_catch_the_exit_of_its_pid_successor() {
        let router = ExitRouter::default();
        let (a, b) = (proc("a"), proc("b"));
        let t0 = SystemTime::now();
        assert!(router.register(100, &a, t0).is_none());
        // A exits: routed to A and out of the map.
        assert!(
            matches!(router.route(exit(100, SystemTime::now())), Routed::Process(p) if Arc::ptr_eq(&p, &a))
        );
        // B reuses pid 100 while A is stopped but not deleted.
        assert!(router.register(100, &b, SystemTime::now()).is_none());
        match router.route(exit(100, SystemTime::now())) {
            Routed::Process(p) => assert!(Arc::ptr_eq(&p, &b), "exit went to {}", p.name()),
            Routed::Unclaimed => panic!("B's exit was lost"),
        }
    }

    /// More exits than the bound arrive while an exec's `runc exec` is in flight; its own
    /// exit, among the first, is still claimed. Once no call is in flight the queue is
    /// cut back to the bound.
    #[test]
    fn a_flood_of_exits_does_not_push_out_a_claimable_one() {
        let router = ExitRouter::default();
        let expected = router.expect_pid();
        let since = expected.since();
        assert!(matches!(
            router.route(exit(7, SystemTime::now())),
            Routed::Unclaimed
        ));
        for pid in 1000..1000 + 3 * UNCLAIMED_EXITS as i32 {
            router.route(exit(pid, SystemTime::now()));
        }
        let p = proc("p");
        let got = router
            .register(7, &p, since)
            .expect("the early exit was pushed out");
        assert_eq!(got.pid, 7);
        drop(expected);
        assert_eq!(router.lock().unclaimed.len(), UNCLAIMED_EXITS);
        router.route(exit(9, SystemTime::now()));
        assert_eq!(router.lock().unclaimed.len(), UNCLAIMED_EXITS);
    }

    /// A container without its own PID namespace churns processes (the shim reaps its
    /// orphans) while a `runc create` takes its time: the queue stays within its hard
    /// bound, keeping the newest exits.
    #[test]
    fn exits_stay_bounded_however_long_a_call_is_in_flight() {
        let router = ExitRouter::default();
        let _expected = router.expect_pid();
        let n = 3 * UNCLAIMED_EXITS_MAX as i32;
        for pid in 0..n {
            router.route(exit(pid, SystemTime::now()));
        }
        let inner = router.lock();
        assert_eq!(inner.unclaimed.len(), UNCLAIMED_EXITS_MAX);
        assert_eq!(inner.unclaimed.back().unwrap().pid, n - 1);
        assert_eq!(std::mem::size_of::<Exit>(), 24);
        assert!(inner.unclaimed.capacity() * 24 < 1 << 20);
    }

    #[test]
    fn early_exit_is_claimed_but_a_stale_one_is_not() {
        let router = ExitRouter::default();
        let before = SystemTime::now() - Duration::from_secs(10);
        assert!(matches!(router.route(exit(7, before)), Routed::Unclaimed));
        let since = SystemTime::now();
        let p = proc("p");
        assert!(
            router.register(7, &p, since).is_none(),
            "an exit reaped before the runc call began belongs to an older pid 7"
        );
        router.forget(7, &p);
        assert_eq!(router.live(), 0);
        assert!(matches!(
            router.route(exit(8, SystemTime::now())),
            Routed::Unclaimed
        ));
        let got = router.register(8, &p, since).expect("early exit lost");
        assert_eq!(got.pid, 8);
        assert_eq!(router.live(), 0, "a dead process must not stay registered");
    }
}
