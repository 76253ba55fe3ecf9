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
    // CloseIO: forward what is already buffered in the FIFO without waiting for more.
    loop {
        match fifo.try_read(&mut buf) {
            Ok(0) | Err(_) => break,
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
