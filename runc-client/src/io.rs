//! File descriptors around runc: pipes, the console socket, FIFOs and the stdio handed to containers.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::net::UnixListener;

use crate::error::{Error, Result};

/// Stdio handed to runc create/exec: these fds become the container process's 0/1/2 (runc passes its own stdio to the container), so they are NOT drained by the client; runc's errors then come from its --log file.
#[derive(Debug, Default)]
pub struct ProcessIo {
    /// The container process's stdin; None is /dev/null.
    pub stdin: Option<OwnedFd>,
    /// The container process's stdout; None is /dev/null.
    pub stdout: Option<OwnedFd>,
    /// The container process's stderr; None is /dev/null.
    pub stderr: Option<OwnedFd>,
}

/// An anonymous pipe, both ends close-on-exec.
#[derive(Debug)]
pub struct Pipe {
    /// The read end.
    pub read: OwnedFd,
    /// The write end.
    pub write: OwnedFd,
}

impl Pipe {
    /// A new pipe with O_CLOEXEC on both ends.
    pub fn new() -> Result<Pipe> {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io("pipe2", e))?;
        Ok(Pipe { read, write })
    }

    /// Ask the kernel for `bytes` of buffer (F_SETPIPE_SZ); returns the size granted.
    pub fn set_capacity(&self, bytes: usize) -> Result<usize> {
        set_pipe_capacity(&self.write, bytes)
    }

    /// Current buffer size (F_GETPIPE_SZ).
    pub fn capacity(&self) -> Result<usize> {
        let n =
            fcntl(&self.write, FcntlArg::F_GETPIPE_SZ).map_err(|e| Error::io("F_GETPIPE_SZ", e))?;
        Ok(n as usize)
    }
}

pub(crate) fn set_pipe_capacity<Fd: AsFd>(fd: Fd, bytes: usize) -> Result<usize> {
    let n = fcntl(fd, FcntlArg::F_SETPIPE_SZ(bytes as libc::c_int))
        .map_err(|e| Error::io(format!("F_SETPIPE_SZ {bytes}"), e))?;
    Ok(n as usize)
}

pub(crate) fn set_nonblocking<Fd: AsFd>(fd: Fd) -> Result<()> {
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|e| Error::io("F_GETFL", e))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(|e| Error::io("F_SETFL", e))?;
    Ok(())
}

/// A unix socket runc connects to (--console-socket) to hand over the pty master.
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Binds a socket in a fresh private directory of the temp dir; must be called inside
    /// a tokio runtime.
    pub fn new() -> Result<ConsoleSocket> {
        ConsoleSocket::new_in(&std::env::temp_dir())
    }

    /// Binds a socket in a fresh private directory under `parent`.
    ///
    /// The directory comes from mkdtemp (an unguessable name, mode 0700): nobody can take
    /// its name first, or connect and hand us a pty of theirs. A unix socket path holds at
    /// most 107 bytes, so `parent` must be short (a bundle path often is not).
    pub fn new_in(parent: &Path) -> Result<ConsoleSocket> {
        let dir = nix::unistd::mkdtemp(&parent.join("runc-console-XXXXXX"))
            .map_err(|e| Error::io(format!("mkdtemp in {}", parent.display()), e))?;
        let path = dir.join("pty.sock");
        match UnixListener::bind(&path) {
            Ok(listener) => Ok(ConsoleSocket {
                dir,
                path,
                listener,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(Error::io(format!("bind {}", path.display()), e))
            }
        }
    }

    /// Path to pass as --console-socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept runc's connection and receive the pty master it sends with SCM_RIGHTS.
    pub async fn receive_master(&self) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|e| Error::io("accept on console socket", e))?;
        loop {
            stream
                .readable()
                .await
                .map_err(|e| Error::io("console socket", e))?;
            match stream.try_io(tokio::io::Interest::READABLE, || {
                receive_fd(stream.as_raw_fd()).map_err(std::io::Error::from)
            }) {
                Ok(Some(fd)) => return Ok(fd),
                Ok(None) => {
                    return Err(Error::io(
                        "console socket",
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "peer sent no file descriptor",
                        ),
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(Error::io("recvmsg on console socket", e)),
            }
        }
    }

    /// [`ConsoleSocket::receive_master`], giving up after `deadline`.
    ///
    /// runc sends the master before `runc create` (or `runc exec --detach`) returns, so a
    /// caller that saw runc succeed waits here only for a runtime that connected and then
    /// sent nothing, or never connected at all.
    pub async fn receive_master_within(&self, deadline: Duration) -> Result<OwnedFd> {
        match tokio::time::timeout(deadline, self.receive_master()).await {
            Ok(r) => r,
            Err(_) => Err(Error::io(
                format!("console socket {}", self.path.display()),
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no pty master received within {deadline:?}"),
                ),
            )),
        }
    }
}

fn receive_fd(sock: RawFd) -> nix::Result<Option<OwnedFd>> {
    // runc sends the pty's name as payload next to the fd; it is not needed.
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed these fds in our table and nobody else owns them.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    Ok(received)
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Open a FIFO with O_NONBLOCK|O_CLOEXEC on a thread of its own ([`crate::blocking`]),
/// never on a runtime worker.
///
/// `read && write` opens O_RDWR, which never waits for a peer; write-only fails with ENXIO
/// while no reader exists, as the kernel defines for non-blocking FIFOs.
pub async fn open_fifo_nonblocking(path: &Path, read: bool, write: bool) -> Result<OwnedFd> {
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    crate::blocking::run("open-fifo", move || {
        std::fs::OpenOptions::new()
            .read(read)
            .write(write)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map(OwnedFd::from)
    })
    .await
    .and_then(|opened| opened)
    .map_err(|e| Error::io(format!("open fifo {shown}"), e))
}

/// Wrap a readable non-blocking pipe or FIFO fd for async reads.
pub fn async_reader(fd: OwnedFd) -> Result<tokio::net::unix::pipe::Receiver> {
    set_nonblocking(&fd)?;
    tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd)
        .map_err(|e| Error::io("register pipe with tokio", e))
}

/// Wrap a writable non-blocking pipe or FIFO fd for async writes.
pub fn async_writer(fd: OwnedFd) -> Result<tokio::net::unix::pipe::Sender> {
    set_nonblocking(&fd)?;
    tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(fd)
        .map_err(|e| Error::io("register pipe with tokio", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn pipe_capacity_roundtrip() {
        let p = Pipe::new().unwrap();
        assert_eq!(p.set_capacity(4096).unwrap(), 4096);
        assert_eq!(p.capacity().unwrap(), 4096);
        assert!(p.set_capacity(256 * 1024).unwrap() >= 256 * 1024);
        let flags = fcntl(&p.read, FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let flags = fcntl(&p.write, FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[tokio::test]
    async fn fifo_opens_without_peer_and_carries_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Opening read-only with no writer would block forever without O_NONBLOCK.
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            open_fifo_nonblocking(&path, true, false),
        )
        .await
        .expect("open must not block")
        .unwrap();
        let w = open_fifo_nonblocking(&path, false, true).await.unwrap();
        let mut r = async_reader(r).unwrap();
        let mut w = async_writer(w).unwrap();
        w.write_all(b"ping").await.unwrap();
        drop(w);
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
    }

    #[tokio::test]
    async fn write_only_fifo_without_reader_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = open_fifo_nonblocking(&path, false, true).await.unwrap_err();
        assert!(err.to_string().contains("open fifo"), "{err}");
    }

    #[tokio::test]
    async fn console_socket_receives_fd_and_cleans_up() {
        let sock = ConsoleSocket::new().unwrap();
        let path = sock.path().to_path_buf();
        let dir = path.parent().unwrap().to_path_buf();
        let sender = std::thread::spawn({
            let path = path.clone();
            move || {
                use nix::sys::socket::{sendmsg, ControlMessage};
                let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
                let p = Pipe::new().unwrap();
                nix::unistd::write(&p.write, b"x").unwrap();
                let fds = [p.read.as_raw_fd()];
                let iov = [std::io::IoSlice::new(b"/dev/pts/fake")];
                sendmsg::<()>(
                    s.as_raw_fd(),
                    &iov,
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )
                .unwrap();
            }
        });
        let fd = sock.receive_master().await.unwrap();
        sender.join().unwrap();
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(&fd, &mut b).unwrap(), 1);
        assert_eq!(&b, b"x");
        let flags = fcntl(&fd, FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "received fd must be close-on-exec"
        );
        drop(sock);
        assert!(!path.exists() && !dir.exists());
    }

    #[tokio::test]
    async fn console_socket_dirs_are_private_and_unguessable() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let a = ConsoleSocket::new_in(parent.path()).unwrap();
        let b = ConsoleSocket::new_in(parent.path()).unwrap();
        let (da, db) = (a.path().parent().unwrap(), b.path().parent().unwrap());
        assert_ne!(da, db);
        assert_eq!(da.parent(), Some(parent.path()));
        let mode = std::fs::metadata(da).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        // The old name was pid, counter and clock: a squatter could create it first. The
        // new one ends in mkdtemp's random part.
        let name = da.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("runc-console-"), "{name}");
        assert!(!name.contains(&std::process::id().to_string()), "{name}");
        drop((a, b));
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn receive_master_gives_up_at_its_deadline() {
        let sock = ConsoleSocket::new().unwrap();
        // A peer that connects and sends nothing, and no peer at all.
        let _peer = std::os::unix::net::UnixStream::connect(sock.path()).unwrap();
        let t = std::time::Instant::now();
        let err = sock
            .receive_master_within(Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("no pty master"), "{err}");
        let lonely = ConsoleSocket::new().unwrap();
        assert!(lonely
            .receive_master_within(Duration::from_millis(100))
            .await
            .is_err());
    }
}
