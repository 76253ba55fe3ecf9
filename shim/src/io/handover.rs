//! Handing a process's stdio copy loops to another image of the shim (an in-place upgrade
//! `execve`s a new binary, docs/upgrade.md), or back to this one when that exec failed.
//!
//! Each loop is told to stop and answers with what it holds, so no byte is lost or copied
//! twice: a loop looks at the signal only while it waits (for its pipe, its FIFO, or spill
//! budget), never between taking bytes and handing them on, and never inside a write; a
//! partial write is simply done, the rest stays pending. What it held comes back as plain
//! fds and bytes ([`HandedIo`]), which [`Copiers::resume`] turns into loops again.
//!
//! Refused, before any loop is told anything: a terminal (the pty master is shared by the
//! loops and the [`super::console::Console`]), a logging binary (`binary://`: a child the
//! image watches through a pidfd and stops on Delete) and a log file (`file://`: its
//! bytes reach the file through threads of this image, which an exec ends).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::fifo_eof::FifoNode;
use super::output::OutputParts;
use super::outputs::Sink;
use super::stdin::StdinParts;
use super::Copiers;
use crate::error::{Error, Result};

/// Every stdio stream a process's copy loops held when they were stopped.
#[derive(Debug, Default)]
pub struct HandedIo {
    /// None: no stdin, or its loop already ended (CloseIO done).
    pub stdin: Option<HandedStdin>,
    /// None: no stdout, or its loop already wrote everything and ended.
    pub stdout: Option<HandedStream>,
    /// See `stdout`.
    pub stderr: Option<HandedStream>,
}

/// One output stream: the process's pipe → containerd's FIFO.
#[derive(Debug)]
pub struct HandedStream {
    /// Read end of the process's pipe; None once it reached EOF.
    pub source: Option<OwnedFd>,
    /// The pipe reached EOF: only `pending` is left to write.
    pub eof: bool,
    /// Write end of the FIFO (or pipe) the output goes to.
    pub sink: OwnedFd,
    /// Bytes read from `source` and not yet written to `sink`, oldest first.
    pub pending: Vec<u8>,
}

/// The stdin stream: containerd's FIFO → the process's pipe.
#[derive(Debug)]
pub struct HandedStdin {
    /// Read end of containerd's stdin FIFO (opened read-write, see `open_stdin_fifo`).
    pub fifo: OwnedFd,
    /// Write end of the process's stdin pipe.
    pub to: OwnedFd,
    /// Bytes taken from `fifo` and not yet written to `to`, oldest first.
    pub pending: Vec<u8>,
    /// CloseIO came and the loop was still forwarding: after `pending` and what `fifo`
    /// holds now, `to` is to be closed.
    pub closing: bool,
}

/// Why a process's stdio cannot be handed over; nothing was stopped.
#[derive(Debug, thiserror::Error)]
#[error("stdio copy loops cannot be handed over: {why}")]
pub struct NotHandable {
    /// What the process's stdio has that a handover does not carry.
    pub why: &'static str,
}

impl HandedIo {
    /// Every fd held, each once.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = Vec::new();
        if let Some(s) = &self.stdin {
            fds.extend([s.fifo.as_raw_fd(), s.to.as_raw_fd()]);
        }
        for s in [&self.stdout, &self.stderr].into_iter().flatten() {
            fds.extend(s.source.as_ref().map(AsRawFd::as_raw_fd));
            fds.push(s.sink.as_raw_fd());
        }
        fds
    }
}

/// Which output stream a loop copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Stdout,
    Stderr,
}

/// A copy loop's side of the stop signal.
pub(super) struct Stop(Option<oneshot::Receiver<()>>);

impl Stop {
    /// A signal that never fires.
    #[cfg(test)]
    pub(super) fn never() -> Stop {
        Stop(None)
    }

    /// Returns once a stop was asked for; never if the asking side is gone (that is
    /// [`Copiers::abort`] or Drop, which end the loop themselves). Cancel-safe.
    pub(super) async fn requested(&mut self) {
        if let Some(rx) = self.0.as_mut() {
            let asked = rx.await.is_ok();
            // A finished oneshot must not be polled again.
            self.0 = None;
            if asked {
                return;
            }
        }
        std::future::pending().await
    }
}

/// A spawned copy loop and the sender of its stop signal.
pub(super) struct Running<T> {
    handle: JoinHandle<Option<T>>,
    stop: oneshot::Sender<()>,
}

impl<T: Send + 'static> Running<T> {
    /// Spawns the loop `start` returns for its stop signal.
    pub(super) fn spawn<F>(start: impl FnOnce(Stop) -> F) -> Running<T>
    where
        F: Future<Output = Option<T>> + Send + 'static,
    {
        let (stop, rx) = oneshot::channel();
        Running {
            handle: tokio::spawn(start(Stop(Some(rx)))),
            stop,
        }
    }

    pub(super) fn abort(self) {
        self.handle.abort();
    }

    /// Asks the loop to stop; its handle then yields what it held (None if it had ended).
    fn signal(self) -> JoinHandle<Option<T>> {
        // Fails only if the loop already ended, which its handle tells as well.
        let _ = self.stop.send(());
        self.handle
    }
}

async fn collect<T>(handle: JoinHandle<Option<T>>) -> Option<T> {
    handle
        .await
        .map_err(|e| log::error!("stdio handover: a copy loop failed: {e}"))
        .ok()
        .flatten()
}

/// Why stdio set up this way cannot be handed over, if it cannot.
pub(super) fn refusal(terminal: bool, sink: Sink) -> Option<&'static str> {
    if terminal {
        return Some("the process has a terminal");
    }
    match sink {
        Sink::Fifo => None,
        Sink::Logger => Some("its output goes to a logging binary (binary://)"),
        Sink::File => Some("its output goes to a log file (file://) through threads"),
    }
}

impl Copiers {
    /// Why these loops cannot be handed over, if they cannot (see [`refusal`]); touches
    /// nothing.
    pub fn handover_refusal(&self) -> Option<&'static str> {
        refusal(self.console.is_some(), self.sink)
    }

    /// Stops every copy loop at a write boundary and returns what they held; afterwards
    /// `self` holds no loops (dropping it closes none of the handed fds). Refuses, with
    /// every loop left running, what [`refusal`] names.
    ///
    /// Not cancel-safe: once it started waiting for the loops, dropping it loses what they
    /// hand back.
    pub async fn hand_over(&mut self) -> std::result::Result<HandedIo, NotHandable> {
        if let Some(why) = refusal(self.console.is_some(), self.sink) {
            return Err(NotHandable { why });
        }
        // All are told before any is waited for, so the pause is the longest stop, not
        // the sum of them.
        let stdin = self.stdin.take().map(Running::signal);
        let outputs: Vec<_> = self
            .outputs
            .drain(..)
            .map(|(which, loop_)| (which, loop_.signal()))
            .collect();
        let mut handed = HandedIo::default();
        if let Some(h) = stdin {
            handed.stdin = collect(h).await.and_then(HandedStdin::from_parts);
        }
        // Only now that its loop returned: to a running loop, dropping it reads as CloseIO.
        self.stdin_close = None;
        for (which, h) in outputs {
            let stream = collect(h).await.and_then(HandedStream::from_parts);
            match which {
                Which::Stdout => handed.stdout = stream,
                Which::Stderr => handed.stderr = stream,
            }
        }
        Ok(handed)
    }

    /// Starts copy loops again from what [`Copiers::hand_over`] returned (in this image or,
    /// after an exec, the next): each writes its pending bytes first, in order, then goes
    /// on from its source. Spill files are created in `spill_dir` (the bundle) as by
    /// `prepare`. Every fd is checked and made non-blocking before any loop starts, so a
    /// bad one fails the whole call with nothing running.
    pub fn resume(id: &str, handed: HandedIo, spill_dir: &Path) -> Result<Copiers> {
        let stdin = match handed.stdin {
            Some(s) => Some((
                receiver(id, s.fifo)?,
                sender(id, s.to)?,
                s.pending,
                s.closing,
            )),
            None => None,
        };
        let mut outputs = Vec::new();
        for (which, stream) in [
            (Which::Stdout, handed.stdout),
            (Which::Stderr, handed.stderr),
        ] {
            let Some(s) = stream else { continue };
            let source = match s.source {
                Some(fd) if !s.eof => Some(receiver(id, fd)?),
                _ => None,
            };
            let named = is_named_fifo(&s.sink);
            let sink = sender(id, s.sink)?;
            // As `open_output_fifo`: without it only a late reader's EOF is at stake.
            let node = if named {
                FifoNode::of(&sink)
                    .map_err(|e| log::warn!("{id}: resumed output fifo: no O_PATH fd: {e}"))
                    .ok()
            } else {
                None
            };
            outputs.push((which, source, sink, node, s.pending));
        }
        let mut copiers = Copiers::default();
        if let Some((fifo, to, pending, closing)) = stdin {
            copiers.spawn_stdin(fifo, to, None, pending, closing);
        }
        for (which, source, sink, node, pending) in outputs {
            copiers.start_output(id, which, source, sink, node, spill_dir, pending);
        }
        Ok(copiers)
    }
}

impl HandedStream {
    fn from_parts(p: OutputParts) -> Option<HandedStream> {
        let sink = into_fd("output sink", p.fifo.into_nonblocking_fd())?;
        let source = p
            .from
            .and_then(|from| into_fd("output source", from.into_nonblocking_fd()));
        Some(HandedStream {
            eof: source.is_none(),
            source,
            sink,
            pending: p.pending,
        })
    }
}

impl HandedStdin {
    fn from_parts(p: StdinParts) -> Option<HandedStdin> {
        let fifo = into_fd("stdin fifo", p.fifo.into_nonblocking_fd());
        let to = into_fd("stdin pipe", p.to.into_nonblocking_fd())?;
        Some(HandedStdin {
            fifo: fifo?,
            to,
            pending: p.pending,
            closing: p.closing,
        })
    }
}

/// Takes a loop's fd out of the runtime. That only fails if epoll refuses to forget it,
/// which leaves nothing to hand: the stream is lost, loudly.
fn into_fd(what: &str, fd: io::Result<OwnedFd>) -> Option<OwnedFd> {
    fd.map_err(|e| log::error!("stdio handover: {what} lost: {e}"))
        .ok()
}

/// Registers a handed read end; `from_owned_fd` also sets the O_NONBLOCK an exec may
/// have lost (it belongs to the open file, and the other image may have cleared it).
fn receiver(id: &str, fd: OwnedFd) -> Result<pipe::Receiver> {
    pipe::Receiver::from_owned_fd(fd).map_err(|e| Error::io(id, "resume stdio: read end", e))
}

/// See [`receiver`].
fn sender(id: &str, fd: OwnedFd) -> Result<pipe::Sender> {
    pipe::Sender::from_owned_fd(fd).map_err(|e| Error::io(id, "resume stdio: write end", e))
}

/// Whether `fd` is a FIFO in the file system (containerd's), not an anonymous pipe: only
/// such a FIFO can have a reader that opens it late.
fn is_named_fifo(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).is_ok_and(|p| p.is_absolute())
}

#[cfg(test)]
mod tests;
