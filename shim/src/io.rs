//! Container stdio: the shim owns the pipes runc hands to the container and copies
//! them to and from containerd's FIFOs.
//!
//! Owning the pipes (instead of passing containerd's FIFOs straight to runc) is what
//! keeps a containerd restart harmless: our FIFO ends are opened read-write, so the FIFO
//! always has a reader and a writer, the container never sees EPIPE, and a restarted
//! containerd simply reopens the FIFO and carries on reading. FIFOs are opened with
//! O_NONBLOCK from `tokio::net::unix::pipe`, never through `tokio::fs`, so no runtime
//! thread ever blocks in open(2) or read(2) on them.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::unistd::{fchown, Gid, Uid};
use runc_client::ProcessIo;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Where containerd wants a process's stdio.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// stdin FIFO path, empty for none.
    pub stdin: String,
    /// stdout FIFO path, empty for /dev/null.
    pub stdout: String,
    /// stderr FIFO path, empty for /dev/null.
    pub stderr: String,
    /// Whether a pty was requested.
    pub terminal: bool,
}

impl StdioPaths {
    /// True when no stdio was requested at all.
    pub fn is_null(&self) -> bool {
        self.stdin.is_empty() && self.stdout.is_empty() && self.stderr.is_empty()
    }
}

/// The running copy loops of one process.
#[derive(Default)]
pub struct Copiers {
    stdin_close: Option<oneshot::Sender<()>>,
    stdin: Option<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
}

impl Copiers {
    /// Stops feeding stdin; the container sees EOF once buffered data is written.
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.stdin_close.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until stdout and stderr were copied to the end, at most `limit`.
    ///
    /// A grandchild that inherited the pipe can keep it open forever; the limit makes
    /// sure that never holds back the exit event.
    pub async fn drain(&mut self, limit: Duration) {
        let outputs = std::mem::take(&mut self.outputs);
        let all = async {
            for handle in outputs {
                let _ = handle.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            log::warn!("stdio not drained within {limit:?}; leaving the copy loops behind");
        }
    }

    /// Aborts every copy loop (used when the process is deleted).
    pub fn abort(&mut self) {
        self.close_stdin();
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
        for h in self.outputs.drain(..) {
            h.abort();
        }
    }
}

impl Drop for Copiers {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Builds the pipes for a new process and starts the copy loops.
///
/// Returns the fds runc must give the container and the handle on the copiers.
pub fn prepare(id: &str, paths: &StdioPaths, uid: u32, gid: u32) -> Result<(ProcessIo, Copiers)> {
    if paths.terminal {
        return Err(Error::Unimplemented("terminal (tty) stdio"));
    }
    let mut io = ProcessIo::default();
    let mut copiers = Copiers::default();

    if !paths.stdin.is_empty() {
        check_scheme(&paths.stdin)?;
        let (read, write) = make_pipe(id, uid, gid)?;
        // Read-write so that the FIFO never reports EOF before the client opened it;
        // the end of stdin is signalled through CloseIO instead.
        let fifo = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&paths.stdin)
            .map_err(|e| Error::io(id, format!("open stdin fifo {}", paths.stdin), e))?;
        let sender = pipe::Sender::from_owned_fd(write)
            .map_err(|e| Error::io(id, "register stdin pipe", e))?;
        let (tx, rx) = oneshot::channel();
        copiers.stdin_close = Some(tx);
        copiers.stdin = Some(tokio::spawn(copy_stdin(fifo, sender, rx)));
        io.stdin = Some(read);
    }
    for (path, slot) in [
        (&paths.stdout, &mut io.stdout),
        (&paths.stderr, &mut io.stderr),
    ] {
        if path.is_empty() {
            continue;
        }
        check_scheme(path)?;
        let (read, write) = make_pipe(id, uid, gid)?;
        // Read-write keeps an extra reader on the FIFO: a containerd restart closes its
        // reader, and without ours the container would get EPIPE.
        let fifo = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(path)
            .map_err(|e| Error::io(id, format!("open output fifo {path}"), e))?;
        let receiver = pipe::Receiver::from_owned_fd(read)
            .map_err(|e| Error::io(id, "register output pipe", e))?;
        copiers
            .outputs
            .push(tokio::spawn(copy_output(receiver, fifo)));
        *slot = Some(write);
    }
    Ok((io, copiers))
}

fn check_scheme(path: &str) -> Result<()> {
    if path.contains("://") {
        return Err(Error::Unimplemented(
            "binary:// and file:// stdio (only FIFO paths for now)",
        ));
    }
    Ok(())
}

/// A close-on-exec pipe whose ends belong to the IO uid/gid.
fn make_pipe(id: &str, uid: u32, gid: u32) -> Result<(OwnedFd, OwnedFd)> {
    let (read, write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io(id, "pipe2", e.into()))?;
    if uid != 0 || gid != 0 {
        for fd in [&read, &write] {
            fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| Error::io(id, "chown stdio pipe", e.into()))?;
        }
    }
    debug_assert!(read.as_raw_fd() >= 0);
    Ok((read, write))
}

async fn copy_stdin(mut fifo: pipe::Receiver, mut to: pipe::Sender, close: oneshot::Receiver<()>) {
    tokio::select! {
        r = tokio::io::copy(&mut fifo, &mut to) => {
            if let Err(e) = r {
                log::debug!("stdin copy ended: {e}");
            }
        }
        _ = close => {
            // CloseIO: forward what is already buffered in the FIFO without waiting for more.
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match fifo.try_read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
    // Dropping `to` closes the pipe: the container reads EOF.
}

async fn copy_output(mut from: pipe::Receiver, mut fifo: pipe::Sender) {
    if let Err(e) = tokio::io::copy(&mut from, &mut fifo).await {
        log::debug!("output copy ended: {e}");
    }
    let _ = fifo.flush().await;
}
