//! The shim-wide budget for spilled output: every spill file of every process this shim
//! serves draws from it, so the bytes a lagging reader leaves in the bundle (tmpfs, RAM
//! outside any pod's limit) are bounded per shim, not only per stream.
//!
//! A stream that finds the budget used up takes nothing more from its pipe (the
//! container's writer waits on the full pipe, nothing is lost) until bytes are given back;
//! a release wakes every stream that waits, and the first to ask gets them. Waiting is
//! per stream: the streams whose readers read carry on, which is what gives the budget
//! back, so nothing waits on anything that waits on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use tokio::sync::Notify;

use super::OUTPUT_SPILL_BUDGET;

/// Bytes of spill file space shared by a set of output streams.
#[derive(Debug)]
pub struct SpillBudget {
    limit: u64,
    used: AtomicU64,
    /// Most bytes ever held at once (for tests and measurements).
    peak: AtomicU64,
    /// Bumped on every release, so a waiter that looked before a release sees it.
    generation: AtomicU64,
    freed: Notify,
}

static SHIM: LazyLock<Arc<SpillBudget>> =
    LazyLock::new(|| Arc::new(SpillBudget::new(OUTPUT_SPILL_BUDGET)));

impl SpillBudget {
    /// A budget of `limit` bytes, none of them in use.
    pub fn new(limit: u64) -> SpillBudget {
        SpillBudget {
            limit,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            freed: Notify::new(),
        }
    }

    /// The budget of this shim ([`OUTPUT_SPILL_BUDGET`]).
    pub fn shim() -> Arc<SpillBudget> {
        SHIM.clone()
    }

    /// Bytes in use now.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Most bytes in use at once so far.
    #[cfg(test)]
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The budget's size.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes up to `want` bytes and returns how many it got (0 when used up).
    pub(super) fn reserve(&self, want: u64) -> u64 {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let grant = want.min(self.limit.saturating_sub(used));
            if grant == 0 {
                return 0;
            }
            match self.used.compare_exchange_weak(
                used,
                used + grant,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.peak.fetch_max(used + grant, Ordering::Relaxed);
                    return grant;
                }
                Err(now) => used = now,
            }
        }
    }

    /// Gives `n` reserved bytes back and wakes the streams waiting for room.
    pub(super) fn release(&self, n: u64) {
        if n == 0 {
            return;
        }
        let before = self.used.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "released {n} of {before} bytes");
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.freed.notify_waiters();
    }

    /// A mark to pass to [`SpillBudget::freed_since`]; take it before looking for room.
    pub(super) fn mark(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Returns once bytes were released after `mark` was taken (at once if they were).
    pub(super) async fn freed_since(&self, mark: u64) {
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            // Registered before the check: a release right after it still wakes us.
            notified.as_mut().enable();
            if self.generation.load(Ordering::Acquire) != mark {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grants_never_exceed_the_limit() {
        let b = SpillBudget::new(100);
        assert_eq!(b.reserve(60), 60);
        assert_eq!(b.reserve(60), 40);
        assert_eq!(b.reserve(1), 0);
        b.release(30);
        assert_eq!(b.reserve(50), 30);
        assert_eq!((b.used(), b.peak()), (100, 100));
        b.release(100);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn a_release_after_the_mark_is_never_missed() {
        let b = Arc::new(SpillBudget::new(10));
        assert_eq!(b.reserve(10), 10);
        let mark = b.mark();
        // Released before anyone waits: the wait returns at once.
        b.release(1);
        tokio::time::timeout(Duration::from_secs(5), b.freed_since(mark))
            .await
            .expect("missed a release that came before the wait");
        // Released while waiting.
        let mark = b.mark();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.freed_since(mark).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        b.release(1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a waiter was not woken")
            .unwrap();
    }
}
