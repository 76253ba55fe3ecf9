//! The shim-wide allowance for request bytes that ttrpc may hold at once.
//!
//! ttrpc allocates a frame's whole payload as soon as it has read the frame's header, so
//! what a connection may make the shim allocate is decided when its header is let through.
//! Reservations are granted first come, first served: a large frame is never passed over
//! forever by a stream of smaller ones.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// Bytes of frame payload the shim lets ttrpc allocate at once, and who waits for them.
#[derive(Debug)]
pub(crate) struct Budget {
    capacity: usize,
    state: Mutex<State>,
    released: Notify,
}

#[derive(Debug)]
struct State {
    available: usize,
    /// Waiting reservations in arrival order, by ticket.
    queue: VecDeque<(u64, Waker)>,
    next_ticket: u64,
}

/// Bytes held for one frame; handed back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    amount: usize,
}

impl Budget {
    /// A budget of `capacity` bytes, all available.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            state: Mutex::new(State {
                available: capacity,
                queue: VecDeque::new(),
                next_ticket: 0,
            }),
            released: Notify::new(),
        })
    }

    /// The most one frame can ever reserve.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes not reserved right now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.lock().available
    }

    /// Signalled whenever a reservation is handed back, so freed memory can be trimmed.
    pub(crate) fn released(&self) -> &Notify {
        &self.released
    }

    /// Reserves `amount` bytes, or queues the caller (keeping its place in `ticket`) and
    /// arranges for `cx` to be woken when it may try again. `amount` must not exceed the
    /// capacity, or the caller would wait forever and block everyone queued behind it.
    pub(crate) fn poll_reserve(
        self: &Arc<Self>,
        amount: usize,
        ticket: &mut Option<u64>,
        cx: &mut Context<'_>,
    ) -> Poll<Reservation> {
        debug_assert!(amount <= self.capacity);
        let mut state = self.lock();
        let first = match *ticket {
            Some(t) => state.queue.front().is_some_and(|(head, _)| *head == t),
            None => state.queue.is_empty(),
        };
        if first && state.available >= amount {
            state.available -= amount;
            if ticket.take().is_some() {
                state.queue.pop_front();
            }
            // What is left may already suit the next in line.
            if state.available > 0 {
                if let Some((_, next)) = state.queue.front() {
                    next.wake_by_ref();
                }
            }
            return Poll::Ready(Reservation {
                budget: self.clone(),
                amount,
            });
        }
        match *ticket {
            Some(t) => {
                if let Some(entry) = state.queue.iter_mut().find(|(w, _)| *w == t) {
                    entry.1.clone_from(cx.waker());
                }
            }
            None => {
                let t = state.next_ticket;
                state.next_ticket += 1;
                state.queue.push_back((t, cx.waker().clone()));
                *ticket = Some(t);
            }
        }
        Poll::Pending
    }

    /// Gives up a place in the queue (its connection is gone).
    pub(crate) fn cancel(&self, ticket: u64) {
        let mut state = self.lock();
        let was_head = state.queue.front().is_some_and(|(t, _)| *t == ticket);
        state.queue.retain(|(t, _)| *t != ticket);
        if was_head {
            if let Some((_, next)) = state.queue.front() {
                next.wake_by_ref();
            }
        }
    }

    fn release(&self, amount: usize) {
        let mut state = self.lock();
        state.available += amount;
        if let Some((_, head)) = state.queue.front() {
            head.wake_by_ref();
        }
        drop(state);
        self.released.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across every early return, so a poisoned lock (a
        // panic elsewhere while holding it) leaves nothing half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reservation {
    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn amount(&self) -> usize {
        self.amount
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    fn reserve(b: &Arc<Budget>, n: usize, t: &mut Option<u64>, w: &Waker) -> Option<Reservation> {
        match b.poll_reserve(n, t, &mut Context::from_waker(w)) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    #[test]
    fn waits_when_exhausted_and_is_woken_by_a_release() {
        let b = Budget::new(10);
        let (_, w1) = waker();
        let (c2, w2) = waker();
        let mut t1 = None;
        let r1 = reserve(&b, 8, &mut t1, &w1).expect("fits");
        assert_eq!((r1.amount(), b.available()), (8, 2));
        let mut t2 = None;
        assert!(reserve(&b, 5, &mut t2, &w2).is_none());
        assert!(t2.is_some(), "queued");
        assert_eq!(c2.0.load(Ordering::SeqCst), 0);
        drop(r1);
        assert_eq!(c2.0.load(Ordering::SeqCst), 1, "release wakes the waiter");
        let r2 = reserve(&b, 5, &mut t2, &w2).expect("fits after release");
        assert!(t2.is_none());
        assert_eq!(b.available(), 5);
        drop(r2);
        assert_eq!(b.available(), 10);
    }

    #[test]
    fn first_come_first_served() {
        let b = Budget::new(10);
        let (_, w) = waker();
        let held = reserve(&b, 6, &mut None, &w).unwrap();
        let (mut big, mut small) = (None, None);
        assert!(reserve(&b, 8, &mut big, &w).is_none());
        // 4 bytes are free, but the 8-byte frame came first.
        assert!(reserve(&b, 2, &mut small, &w).is_none());
        drop(held);
        assert!(reserve(&b, 2, &mut small, &w).is_none(), "jumped the queue");
        let r_big = reserve(&b, 8, &mut big, &w).expect("head fits");
        let r_small = reserve(&b, 2, &mut small, &w).expect("next fits");
        assert_eq!(b.available(), 0);
        drop((r_big, r_small));
    }

    #[test]
    fn a_cancelled_head_lets_the_next_in() {
        let b = Budget::new(10);
        let (_, w) = waker();
        let (c2, w2) = waker();
        let held = reserve(&b, 5, &mut None, &w).unwrap();
        let (mut gone, mut next) = (None, None);
        assert!(reserve(&b, 10, &mut gone, &w).is_none());
        assert!(reserve(&b, 5, &mut next, &w2).is_none());
        b.cancel(gone.unwrap());
        assert_eq!(c2.0.load(Ordering::SeqCst), 1, "new head woken");
        let r = reserve(&b, 5, &mut next, &w2).expect("fits now");
        drop((held, r));
        assert_eq!(b.available(), 10);
    }
}
