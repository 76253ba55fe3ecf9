//! The stdin copy loop: containerd's FIFO → the process's stdin pipe or pty master, until
//! CloseIO.
//!
//! Our end of the FIFO is read-write, so the FIFO itself never reports EOF; the end of
//! input comes from CloseIO, which forwards what the FIFO still holds and then ends the
//! process's input: a pipe is closed, a terminal gets its EOF character (see
//! [`super::console`]).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::console::Console;

/// Bytes moved from the FIFO at a time.
const CHUNK: usize = 32 * 1024;

/// Copies `fifo` into `to` until `close` fires (or its sender is dropped), then forwards
/// what is already buffered and ends the input: dropping `to` closes a pipe; a terminal
/// (`console`) is sent its EOF character, since other copies of the master stay open.
pub(super) async fn copy_stdin(
    mut fifo: pipe::Receiver,
    mut to: pipe::Sender,
    mut close: oneshot::Receiver<()>,
    console: Option<Arc<Console>>,
) {
    let mut buf = vec![0u8; CHUNK];
    // The last byte the process was given: whether a terminal's line is still open.
    let mut last = None;
    loop {
        // Reading is raced with the close signal, writing is not: bytes taken from the
        // FIFO are always delivered.
        tokio::select! {
            r = fifo.read(&mut buf) => match r {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = to.write_all(&buf[..n]).await {
                        log::debug!("stdin copy ended: {e}");
                        return;
                    }
                    last = Some(buf[n - 1]);
                }
                Err(e) => {
                    log::debug!("stdin fifo read ended: {e}");
                    return;
                }
            },
            _ = &mut close => break,
        }
    }
    // CloseIO: forward what is already buffered in the FIFO without waiting for more. A
    // plain non-blocking read(2), not `try_read`: tokio's readiness can lag bytes that were
    // written just before CloseIO, and `try_read` then says WouldBlock without reading.
    loop {
        match nix::unistd::read(&fifo, &mut buf) {
            Ok(0) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                if e != nix::errno::Errno::EAGAIN {
                    log::debug!("stdin fifo read at CloseIO: {e}");
                }
                break;
            }
            Ok(n) => {
                if let Err(e) = to.write_all(&buf[..n]).await {
                    log::debug!("stdin copy ended: {e}");
                    return;
                }
                last = Some(buf[n - 1]);
            }
        }
    }
    if let Some(console) = console {
        console.end_input(&mut to, last).await;
    }
    // Dropping `to` closes the pipe: the container reads EOF.
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
