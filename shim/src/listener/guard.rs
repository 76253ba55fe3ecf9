//! One accepted connection as ttrpc sees it: its reads pass through a [`Cursor`], and a
//! frame's header reaches ttrpc (which then allocates the announced payload at once) only
//! after the frame is admitted. Writes pass through untouched.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, Instant, Sleep};
use ttrpc::proto::MESSAGE_LENGTH_MAX;

use super::budget::{Budget, Reservation};
use super::frames::{Cursor, HEADER_LEN};
use super::idle::Conn;
use super::inflight::InFlight;
use super::quiesce::Pass;
use super::Limits;

/// What a frame of a given length needs before ttrpc may see its header.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    /// Nothing: small frames are bounded by the connection cap (one frame per connection
    /// is in flight), and ttrpc discards oversized ones page by page without allocating.
    Free,
    /// This many bytes of the budget.
    Reserve(usize),
    /// More than the whole budget: it could never be admitted.
    Never,
}

fn admission(len: usize, limits: &Limits, capacity: usize) -> Admission {
    if len <= limits.small_frame || len > MESSAGE_LENGTH_MAX {
        Admission::Free
    } else if len > capacity {
        Admission::Never
    } else {
        Admission::Reserve(len)
    }
}

/// A connection whose reads are metered against the shared frame budget.
pub struct Guarded<S> {
    inner: S,
    cursor: Cursor,
    budget: Arc<Budget>,
    limits: Limits,
    reservation: Option<Reservation>,
    /// Our place in the budget's queue while waiting for a reservation.
    ticket: Option<u64>,
    /// When the current frame last moved (began, got bytes, or was admitted).
    last_progress: Instant,
    stall: Option<Pin<Box<Sleep>>>,
    /// For log lines: who is on the other end.
    peer_pid: Option<i32>,
    /// Its entry among the connections that may give way at the cap.
    conn: Option<Arc<Conn>>,
    /// Its place at the upgrade gate: between frames, reads wait while it is closed.
    pass: Option<Pass>,
    /// Its unanswered requests, for a handover.
    inflight: Option<Arc<InFlight>>,
    /// Handed-over requests, read again before anything from the socket.
    replay: Replay,
    /// The connection's place under the cap, given back when ttrpc drops us.
    _slot: Option<OwnedSemaphorePermit>,
}

impl<S> Guarded<S> {
    /// Wraps `inner`, holding `slot` for as long as the connection lives; `conn` is how
    /// the accept loop can make it give way.
    pub(crate) fn new(
        inner: S,
        budget: Arc<Budget>,
        limits: Limits,
        slot: Option<OwnedSemaphorePermit>,
        peer_pid: Option<i32>,
        conn: Option<Arc<Conn>>,
    ) -> Self {
        Self {
            inner,
            cursor: Cursor::new(),
            budget,
            limits,
            reservation: None,
            ticket: None,
            last_progress: Instant::now(),
            stall: None,
            peer_pid,
            conn,
            pass: None,
            inflight: None,
            replay: Replay::default(),
            _slot: slot,
        }
    }

    /// Tracks the connection's unanswered requests in `inflight`.
    pub(crate) fn with_inflight(mut self, inflight: Arc<InFlight>) -> Self {
        self.inflight = Some(inflight);
        self
    }

    /// Reads `bytes` (whole request frames an earlier image left unanswered) before
    /// anything from the socket.
    pub(crate) fn with_replay(mut self, bytes: Vec<u8>) -> Self {
        self.replay = Replay { bytes, at: 0 };
        self
    }

    /// Puts the connection under a gate that can stop it between frames.
    pub(crate) fn with_gate(mut self, pass: Pass) -> Self {
        self.pass = Some(pass);
        self
    }

    fn progress(&mut self) {
        self.last_progress = Instant::now();
        if let Some(c) = &self.conn {
            c.active();
        }
    }

    /// The read cannot go on now. Between frames that is just an idle connection; inside a
    /// frame (waiting for the peer or for budget) it may last only `limits.stall` from the
    /// frame's last progress, after which the connection is failed, and ttrpc drops it
    /// together with its reservation.
    fn hold_on(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.cursor.mid_frame() {
            return Poll::Pending;
        }
        let deadline = self.last_progress + self.limits.stall;
        let sleep = self
            .stall
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let waiting_for = match self.cursor.awaiting_admission() {
            Some(len) => format!("budget for its {len}-byte frame"),
            None if self.cursor.payload_left() > 0 => {
                format!("{} more payload bytes", self.cursor.payload_left())
            }
            None => "the rest of a frame header".to_string(),
        };
        log::warn!(
            "closing ttrpc connection from pid {}: no progress for {:?} waiting for {waiting_for}",
            self.peer_pid.unwrap_or(0),
            self.limits.stall
        );
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "ttrpc frame made no progress",
        )))
    }

    /// Decides on the whole header waiting in the cursor.
    fn admit(&mut self, len: usize, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match admission(len, &self.limits, self.budget.capacity()) {
            Admission::Free => {}
            Admission::Never => {
                log::error!(
                    "closing ttrpc connection from pid {}: its {len}-byte frame exceeds the \
                     {}-byte request budget",
                    self.peer_pid.unwrap_or(0),
                    self.budget.capacity()
                );
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{len}-byte ttrpc frame exceeds the request budget"),
                )));
            }
            Admission::Reserve(n) => match self.budget.poll_reserve(n, &mut self.ticket, cx) {
                Poll::Ready(r) => self.reservation = Some(r),
                Poll::Pending => return Poll::Pending,
            },
        }
        self.cursor.admit();
        if let Some(f) = &self.inflight {
            f.frame_started(self.cursor.header());
        }
        self.progress();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.as_ref().is_some_and(|c| c.poll_evicted(cx)) {
            // Logged by the accept loop, which chose it.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "idle ttrpc connection gave way to a new one",
            )));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.cursor.mid_frame() {
                // Between frames: the one place a connection may stop for an upgrade, with
                // the next request left whole in the socket.
                if let Some(pass) = &this.pass {
                    if pass.poll_pass(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
            if let Some(room) = this.cursor.header_room() {
                let mut hb = ReadBuf::new(room);
                match this.replay.poll_read(&mut this.inner, cx, &mut hb) {
                    Poll::Pending => return this.hold_on(cx),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    // End of stream; mid-header ttrpc takes it for a broken frame.
                    Poll::Ready(Ok(())) if hb.filled().is_empty() => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => {
                        let n = hb.filled().len();
                        this.progress();
                        this.cursor.header_read(n);
                    }
                }
            } else if let Some(len) = this.cursor.awaiting_admission() {
                match this.admit(len, cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return this.hold_on(cx),
                }
            } else if this.cursor.payload_left() == 0 {
                // Admitted, so the header itself goes on now.
                let n = this
                    .cursor
                    .hand_on(buf.initialize_unfilled_to(buf.remaining().min(HEADER_LEN)));
                buf.advance(n);
                return Poll::Ready(Ok(()));
            } else {
                let want = this.cursor.payload_left().min(buf.remaining());
                let mut pb = ReadBuf::new(buf.initialize_unfilled_to(want));
                match this.replay.poll_read(&mut this.inner, cx, &mut pb) {
                    Poll::Pending => return this.hold_on(cx),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = pb.filled().len();
                        if let Some(f) = &this.inflight {
                            f.payload(pb.filled());
                        }
                        buf.advance(n);
                        if n > 0 {
                            this.progress();
                            if this.cursor.payload_read(n) {
                                // The frame is all in ttrpc's hands now.
                                this.reservation = None;
                                if let Some(f) = &this.inflight {
                                    f.frame_done();
                                }
                            }
                        }
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl<S> Guarded<S> {
    /// An answer going out is activity too (a reply to a long Wait, say), and answers its
    /// request.
    fn wrote<'a>(&self, written: &Poll<io::Result<usize>>, bufs: impl Iterator<Item = &'a [u8]>) {
        let Poll::Ready(Ok(n)) = written else {
            return;
        };
        if *n == 0 {
            return;
        }
        if let Some(c) = &self.conn {
            c.active();
        }
        if let Some(f) = &self.inflight {
            let mut left = *n;
            for b in bufs {
                let take = left.min(b.len());
                f.written(&b[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
        }
    }
}

/// Bytes to read before the socket's: the requests a handover replays.
#[derive(Debug, Default)]
struct Replay {
    bytes: Vec<u8>,
    at: usize,
}

impl Replay {
    /// Fills `buf` from the replayed bytes while any are left, then from `inner`.
    fn poll_read<S: AsyncRead + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.bytes.len() {
            let n = buf.remaining().min(self.bytes.len() - self.at);
            buf.put_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            if self.at == self.bytes.len() {
                self.bytes = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&written, std::iter::once(buf));
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&written, bufs.iter().map(|b| &b[..]));
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.budget.cancel(t);
        }
    }
}
