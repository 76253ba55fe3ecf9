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
                Ok(Some(fd)) => {
                    check_pty_master(&fd).map_err(|e| Error::io("console socket", e))?;
                    return Ok(fd);
                }
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

/// Major and minor of /dev/ptmx (and of each devpts instance's `ptmx`): what a master
/// opened through it reports.
const PTMX: (u64, u64) = (5, 2);
/// Majors of Unix98 pty masters opened by number (the kernel's UNIX98_PTY_MASTER_MAJOR and
/// the 7 after it).
const PTY_MASTER_MAJORS: std::ops::RangeInclusive<u64> = 128..=135;

/// Refuses anything but a pty master: the fd is what the peer on the console socket sent,
/// and the shim will read, write and ioctl it as the container's terminal.
fn check_pty_master(fd: &OwnedFd) -> std::io::Result<()> {
    let refuse = |what: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the runtime sent {what}, not a pty master"),
        ))
    };
    let st = nix::sys::stat::fstat(fd)?;
    let kind =
        nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT;
    if kind != nix::sys::stat::SFlag::S_IFCHR {
        return refuse(format!("a file of type {:o}", kind.bits()));
    }
    let dev = (
        nix::sys::stat::major(st.st_rdev),
        nix::sys::stat::minor(st.st_rdev),
    );
    if dev != PTMX && !PTY_MASTER_MAJORS.contains(&dev.0) {
        return refuse(format!("character device {}:{}", dev.0, dev.1));
    }
    // Only a master has a pty number: this also refuses ptmx opened as something else.
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int through the pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut n) } != 0 {
        let e = std::io::Error::last_os_error();
        return refuse(format!(
            "character device {}:{} without a pty number ({e})",
            dev.0, dev.1
        ));
    }
    Ok(())
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

    /// Connects to `path` and sends `fd` the way runc does (the pty name as payload).
    fn send_like_runc(path: &Path, fd: RawFd) {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let s = std::os::unix::net::UnixStream::connect(path).unwrap();
        let fds = [fd];
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

    #[tokio::test]
    async fn console_socket_receives_fd_and_cleans_up() {
        let sock = ConsoleSocket::new().unwrap();
        let path = sock.path().to_path_buf();
        let dir = path.parent().unwrap().to_path_buf();
        let pty = nix::pty::openpty(None, None).unwrap();
        let sender = std::thread::spawn({
            let path = path.clone();
            let master = pty.master.as_raw_fd();
            move || send_like_runc(&path, master)
        });
        let fd = sock.receive_master().await.unwrap();
        sender.join().unwrap();
        // What the master writes, the slave reads: it is the same terminal.
        nix::unistd::write(&fd, b"x\n").unwrap();
        let mut b = [0u8; 2];
        assert_eq!(nix::unistd::read(&pty.slave, &mut b).unwrap(), 2);
        assert_eq!(&b, b"x\n");
        let flags = fcntl(&fd, FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "received fd must be close-on-exec"
        );
        drop(sock);
        assert!(!path.exists() && !dir.exists());
    }

    /// A pipe, a character device that is no pty master (/dev/null) or a pty's slave end
    /// sent on the console socket is refused, never used as the container's terminal.
    #[tokio::test]
    async fn console_socket_refuses_what_is_not_a_pty_master() {
        let pipe = Pipe::new().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        for (what, fd, says) in [
            ("a pipe", pipe.read.as_raw_fd(), "a file of type"),
            ("/dev/null", null.as_raw_fd(), "character device 1:3"),
            (
                "a pty slave",
                pty.slave.as_raw_fd(),
                "character device 136:",
            ),
        ] {
            let sock = ConsoleSocket::new().unwrap();
            let path = sock.path().to_path_buf();
            let sender = std::thread::spawn(move || send_like_runc(&path, fd));
            let err = sock
                .receive_master_within(Duration::from_secs(10))
                .await
                .expect_err(what);
            sender.join().unwrap();
            let text = err.to_string();
            assert!(
                text.contains("not a pty master") && text.contains(says),
                "{what}: {text}"
            );
        }
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
