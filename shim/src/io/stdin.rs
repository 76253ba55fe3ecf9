//! The stdin copy loop: containerd's FIFO → the process's stdin pipe or pty master, until
//! CloseIO.
//!
//! Our end of the FIFO is read-write, so the FIFO itself never reports EOF; the end of
//! input comes from CloseIO, which forwards what the FIFO still holds and then ends the
//! process's input: a pipe is closed, a terminal gets its EOF character (see
//! [`super::console`]).

use std::io;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::console::Console;
use super::handover::Stop;

/// Bytes moved from the FIFO at a time.
const CHUNK: usize = 32 * 1024;

/// What the stdin loop held when it was stopped for a handover ([`super::handover`]).
pub(super) struct StdinParts {
    pub(super) fifo: pipe::Receiver,
    pub(super) to: pipe::Sender,
    /// Bytes taken from the FIFO and not yet written to `to`, oldest first.
    pub(super) pending: Vec<u8>,
    /// CloseIO came: after `pending` and what the FIFO holds now, the input ends.
    pub(super) closing: bool,
}

/// Copies `fifo` into `to` until `close` fires (or its sender is dropped), then forwards
/// what is already buffered and ends the input: dropping `to` closes a pipe; a terminal
/// (`console`) is sent its EOF character, since other copies of the master stay open.
/// `carry` (bytes a previous loop took from the FIFO and did not write) goes first.
///
/// When `stop` fires while the loop waits it returns what it holds instead; a write in
/// progress is never cut short: what it wrote is gone from `pending`, the rest stays.
pub(super) async fn copy_stdin(
    mut fifo: pipe::Receiver,
    to: pipe::Sender,
    mut close: oneshot::Receiver<()>,
    console: Option<Arc<Console>>,
    mut stop: Stop,
    carry: Vec<u8>,
) -> Option<StdinParts> {
    let mut buf = vec![0u8; CHUNK];
    let mut pending = carry;
    let mut closing = false;
    // The last byte the process was given: whether a terminal's line is still open.
    let mut last = None;
    loop {
        if !pending.is_empty() {
            // Bytes taken from the FIFO are always delivered: the close signal is not
            // raced against them, only a handover (which carries them on).
            tokio::select! {
                r = to.writable() => {
                    let written = r.and_then(|()| to.try_write(&pending));
                    match written {
                        Ok(n) => {
                            if n > 0 {
                                last = Some(pending[n - 1]);
                            }
                            pending.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            log::debug!("stdin copy ended: {e}");
                            return None;
                        }
                    }
                }
                () = stop.requested() => break,
            }
        } else if closing {
            // CloseIO: forward what is already buffered in the FIFO without waiting for
            // more. A plain non-blocking read(2), not `try_read`: tokio's readiness can lag
            // bytes that were written just before CloseIO, and `try_read` then says
            // WouldBlock without reading.
            match nix::unistd::read(&fifo, &mut buf) {
                Ok(0) => return end_input(to, console, last).await,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    if e != nix::errno::Errno::EAGAIN {
                        log::debug!("stdin fifo read at CloseIO: {e}");
                    }
                    return end_input(to, console, last).await;
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        } else {
            tokio::select! {
                r = fifo.read(&mut buf) => match r {
                    Ok(0) => closing = true,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(e) => {
                        log::debug!("stdin fifo read ended: {e}");
                        return None;
                    }
                },
                _ = &mut close => closing = true,
                () = stop.requested() => break,
            }
        }
    }
    // CloseIO may have come while the loop was writing, which does not look at it.
    let closing = closing || !matches!(close.try_recv(), Err(oneshot::error::TryRecvError::Empty));
    Some(StdinParts {
        fifo,
        to,
        pending,
        closing,
    })
}

/// Ends the process's input: a terminal is sent its EOF character, and dropping `to`
/// closes a pipe (the container reads EOF).
async fn end_input(
    mut to: pipe::Sender,
    console: Option<Arc<Console>>,
    last: Option<u8>,
) -> Option<StdinParts> {
    if let Some(console) = console {
        console.end_input(&mut to, last).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::super::{prepare, unread, StdioPaths};

    /// CloseIO while the process is not reading: bytes already taken from the FIFO but not
    /// yet written to the full pipe still reach it, in order, before EOF. (The loop used to
    /// race its whole copy against the close signal and drop what the copy held.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_io_loses_nothing_taken_from_the_fifo() {
        const SIZE: usize = 100 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let paths = StdioPaths {
            stdin: path.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let (io, mut copiers) = prepare("c", &paths, 0, 0, dir.path()).unwrap();
        let process_stdin = io.stdin.unwrap();
        let pattern: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        let (tx, rx) = mpsc::channel();
        {
            let (path, pattern) = (path.clone(), pattern.clone());
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                let _ = tx.send(f.write_all(&pattern));
            });
        }
        tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
            .await
            .unwrap()
            .expect("the FIFO never took the input")
            .unwrap();
        // The process reads nothing: the loop ends up holding bytes for a full pipe.
        let end = Instant::now() + Duration::from_secs(20);
        while unread(process_stdin.as_raw_fd()) != Some(64 * 1024) {
            assert!(Instant::now() < end, "the stdin pipe never filled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        copiers.close_stdin();
        let got = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            File::from(process_stdin).read_to_end(&mut got).unwrap();
            got
        });
        let got = tokio::time::timeout(Duration::from_secs(20), got)
            .await
            .expect("no EOF after CloseIO")
            .unwrap();
        assert_eq!(got.len(), SIZE);
        assert!(got == pattern, "stdin reordered or corrupted");
    }
}
