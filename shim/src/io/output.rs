//! The output copy loop: container pipe → (spool) → containerd's FIFO.
//!
//! The loop never stops reading the pipe because the FIFO is full: containerd may not read
//! yet (CRI opens an exec's FIFOs only after Start returned, and Start waits for
//! `runc exec`, whose stderr is this pipe). What the FIFO cannot take goes to the spool and
//! follows, in order, once the reader attaches. Only if the spool cannot spill does the loop
//! stop reading, and then the writer waits (back-pressure) instead of losing output. When it
//! cannot spill only because the shim's spill budget is used up, the loop also wakes when
//! another stream gives budget back, so it does not depend on its own reader alone.

use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::unix::pipe;

use super::fifo_eof::FifoNode;
use super::handover::Stop;
use super::spool::Spool;
use super::{wait_until_read, ActiveGuard, Progress};

/// Bytes read from the container's pipe at a time.
const READ_CHUNK: usize = 32 * 1024;

/// Marks the loop in [`Progress`] as holding data its FIFO's reader has not taken yet,
/// and unmarks it however the loop ends (including abort).
struct Waiting {
    progress: Arc<Progress>,
    on: bool,
}

impl Waiting {
    fn set(&mut self, on: bool) {
        if on != self.on {
            self.on = on;
            if on {
                self.progress.writing.fetch_add(1, Ordering::Relaxed);
            } else {
                self.progress.writing.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// What an output loop held when it was stopped for a handover ([`super::handover`]).
pub(super) struct OutputParts {
    /// The process's pipe; None once it reached EOF.
    pub(super) from: Option<pipe::Receiver>,
    pub(super) fifo: pipe::Sender,
    /// Bytes read from `from` and not yet written to `fifo`, oldest first.
    pub(super) pending: Vec<u8>,
}

/// Copies `from` into `fifo` until `from` reaches EOF and everything reached the FIFO,
/// then waits (bounded) until the FIFO's reader took it. `carry` (bytes a previous loop
/// read and did not write) goes first; `from` None is a pipe already at EOF.
///
/// When `stop` fires it returns what it holds instead: it is only looked at while the loop
/// waits, never between a read and its hand-on, nor during a write.
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_output(
    from: Option<pipe::Receiver>,
    fifo: pipe::Sender,
    node: Option<FifoNode>,
    mut spool: Spool,
    progress: Arc<Progress>,
    _active: ActiveGuard,
    mut stop: Stop,
    carry: Vec<u8>,
) -> Option<OutputParts> {
    // Bytes of `buf` read from the pipe and not yet handed on. A carry is used as the
    // buffer itself: pump then treats it like a read, spool limits included.
    let mut input: Range<usize> = 0..carry.len();
    let mut buf = carry;
    let mut eof = from.is_none();
    let mut waiting = Waiting {
        progress: progress.clone(),
        on: false,
    };
    let budget = spool.budget().clone();
    let stopped = loop {
        if input.is_empty() && buf.len() != READ_CHUNK {
            // Frees a large carry once it is handed on.
            buf = vec![0u8; READ_CHUNK];
            input = 0..0;
        }
        // Taken before pump asks for budget: a release after that ends the wait below.
        let mark = budget.mark();
        if let Err(e) = pump(&fifo, &mut spool, &buf, &mut input, &progress) {
            log::debug!("output copy ended: {e}");
            break false;
        }
        // After pump, anything left means the FIFO is full.
        let pending = !input.is_empty() || !spool.is_empty();
        waiting.set(pending);
        if eof && !pending {
            break false;
        }
        let wants_budget = !input.is_empty() && spool.waits_for_budget();
        tokio::select! {
            r = readable(&from), if !eof && input.is_empty() => {
                match r.and_then(|()| try_read(&from, &mut buf)) {
                    Ok(0) => eof = true,
                    Ok(n) => input = 0..n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        log::debug!("output pipe read ended: {e}");
                        eof = true;
                    }
                }
            }
            r = fifo.writable(), if pending => {
                if let Err(e) = r {
                    log::debug!("output copy ended: {e}");
                    break false;
                }
            }
            () = budget.freed_since(mark), if wants_budget => {}
            () = stop.requested() => break true,
            else => break false,
        }
    };
    waiting.set(false);
    let stopped = stopped
        || tokio::select! {
            () = wait_until_read(&fifo, &progress) => false,
            () = stop.requested() => true,
        };
    if stopped {
        let pending = leftover(&mut spool, &buf[input]);
        let from = if eof { None } else { from };
        return Some(OutputParts {
            from,
            fifo,
            pending,
        });
    }
    drop(fifo);
    if let Some(node) = node {
        // Apart from this loop: the exit waits for the loop, never for a late reader.
        tokio::spawn(node.hand_eof());
    }
    None
}

async fn readable(from: &Option<pipe::Receiver>) -> io::Result<()> {
    match from {
        Some(from) => from.readable().await,
        None => std::future::pending().await,
    }
}

fn try_read(from: &Option<pipe::Receiver>, buf: &mut [u8]) -> io::Result<usize> {
    from.as_ref().map_or(Ok(0), |from| from.try_read(buf))
}

/// Everything `spool` holds and then `input`, in that order: pump hands `input` on only
/// once the spool is empty, and pushes what the FIFO refused to the spool's tail, so
/// bytes still in `input` are newer than all of the spool.
///
/// The spill file is read back into memory rather than handed over as an fd: it is at
/// most [`super::OUTPUT_SPILL_LIMIT`] on a local file system (the bundle, usually tmpfs,
/// so this is a page-cache copy), and one run of bytes leaves no order to get wrong
/// between spool memory, file and `input` on either side of the exec.
pub(super) fn leftover(spool: &mut Spool, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let front = spool.front();
        if front.is_empty() {
            break;
        }
        let n = front.len();
        out.extend_from_slice(front);
        spool.consume(n);
    }
    out.extend_from_slice(input);
    out
}

/// Moves bytes, oldest first, until the FIFO is full or nothing is left: the spool's
/// backlog, then `input` (straight into the FIFO when there is no backlog). What the FIFO
/// does not take goes into the spool; what the spool refuses stays in `input`.
fn pump(
    fifo: &pipe::Sender,
    spool: &mut Spool,
    buf: &[u8],
    input: &mut Range<usize>,
    progress: &Progress,
) -> io::Result<()> {
    let mut fifo_full = false;
    while !fifo_full {
        let chunk = spool.front();
        if chunk.is_empty() {
            break;
        }
        match fifo.try_write(chunk) {
            Ok(n) => {
                spool.consume(n);
                progress.copied.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => fifo_full = true,
            Err(e) => return Err(e),
        }
    }
    while !fifo_full && spool.is_empty() && !Range::is_empty(input) {
        match fifo.try_write(&buf[input.clone()]) {
            Ok(n) => {
                input.start += n;
                progress.copied.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => fifo_full = true,
            Err(e) => return Err(e),
        }
    }
    if !Range::is_empty(input) {
        input.start += spool.push(&buf[input.clone()]);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
