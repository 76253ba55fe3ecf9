//! The console path with a pty pair made here standing in for runc's: the master travels
//! over the console socket as runc sends it, the slave plays the process.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::pty::openpty;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, LocalFlags, SetArg};

use super::*;

const T: Duration = Duration::from_secs(20);

/// containerd's output FIFOs of `paths`, opened.
fn fifos(paths: &StdioPaths) -> Outputs {
    super::super::outputs::open_fifos("c", paths).unwrap()
}

fn fifo(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

/// What runc does: connect to the console socket and send the master with SCM_RIGHTS.
fn send_like_runc(socket: &Path, master: OwnedFd) {
    let s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let fds = [master.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"/dev/pts/0")];
    sendmsg::<()>(
        s.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

/// A started console over a fresh pty; the slave, its stdin FIFO path, and the copiers.
struct Rig {
    _dir: tempfile::TempDir,
    stdin: String,
    stdout: String,
    slave: Option<OwnedFd>,
    copiers: Copiers,
}

async fn rig(with_stdin: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let paths = StdioPaths {
        stdin: if with_stdin {
            fifo(dir.path(), "in")
        } else {
            String::new()
        },
        stdout: fifo(dir.path(), "out"),
        stderr: String::new(),
        terminal: true,
    };
    let pending = Pending::new("c", &paths, fifos(&paths), dir.path()).unwrap();
    let pty = openpty(None, None).unwrap();
    let socket = pending.socket_path().to_path_buf();
    let sent = std::thread::spawn(move || send_like_runc(&socket, pty.master));
    let copiers = tokio::time::timeout(T, pending.start())
        .await
        .expect("master never arrived")
        .unwrap();
    sent.join().unwrap();
    Rig {
        _dir: dir,
        stdin: paths.stdin,
        stdout: paths.stdout,
        slave: Some(pty.slave),
        copiers,
    }
}

impl Rig {
    fn slave(&self) -> &OwnedFd {
        self.slave.as_ref().unwrap()
    }

    /// Sets the slave's modes like a process would (`f` edits them).
    fn modes(&self, f: impl FnOnce(&mut nix::sys::termios::Termios)) {
        let mut t = tcgetattr(self.slave()).unwrap();
        f(&mut t);
        tcsetattr(self.slave(), SetArg::TCSANOW, &t).unwrap();
    }

    /// Reads the slave as the process does until EOF (a read of 0), on a thread of its own
    /// so a missing EOF fails the test instead of hanging it.
    fn read_slave_to_eof(&self) -> mpsc::Receiver<Vec<Vec<u8>>> {
        let slave = self.slave().try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut f = File::from(slave);
            let mut reads = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => reads.push(buf[..n].to_vec()),
                }
            }
            let _ = tx.send(reads);
        });
        rx
    }
}

/// Reads the stdout FIFO until `want` bytes arrived (or the deadline passed).
fn read_fifo(path: String, want: usize) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut f = File::open(&path).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while got.len() < want {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(got);
    });
    rx
}

async fn recv<T: Send + 'static>(rx: mpsc::Receiver<T>, what: &str) -> T {
    let what = what.to_string();
    tokio::task::spawn_blocking(move || rx.recv_timeout(T).unwrap_or_else(|_| panic!("{what}")))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_reaches_the_process_and_close_io_is_eof() {
    let mut rig = rig(true).await;
    rig.modes(|t| t.local_flags.remove(LocalFlags::ECHO));
    let reads = rig.read_slave_to_eof();
    let mut stdin = std::fs::OpenOptions::new()
        .write(true)
        .open(&rig.stdin)
        .unwrap();
    stdin.write_all(b"hello\nhalf a line").unwrap();
    drop(stdin);
    rig.copiers.close_stdin();
    let reads = recv(reads, "no EOF on the slave after CloseIO").await;
    // Canonical mode hands lines over one read at a time; the partial line is flushed by
    // the first EOF character and the second one reads as end of file.
    assert_eq!(reads, vec![b"hello\n".to_vec(), b"half a line".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_io_after_a_full_line_sends_a_single_eof() {
    let mut rig = rig(true).await;
    rig.modes(|t| t.local_flags.remove(LocalFlags::ECHO));
    let reads = rig.read_slave_to_eof();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&rig.stdin)
        .unwrap()
        .write_all(b"one\ntwo\n")
        .unwrap();
    rig.copiers.close_stdin();
    let reads = recv(reads, "no EOF on the slave after CloseIO").await;
    assert_eq!(reads.concat(), b"one\ntwo\n");
    // A second EOF character would still sit in the terminal for the next reader.
    let mut buf = [0u8; 16];
    nix::fcntl::fcntl(
        rig.slave(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut f = File::from(rig.slave().try_clone().unwrap());
    match f.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("left in the terminal: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_reaches_the_fifo_and_the_exit_drains_it() {
    const SIZE: usize = 600 * 1024;
    let mut rig = rig(false).await;
    // Raw output: no \n → \r\n, so the bytes arrive as written.
    rig.modes(cfmakeraw);
    let progress = rig.copiers.progress();
    let pattern: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let slave = rig.slave.take().unwrap();
    let written = {
        let pattern = pattern.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut f = File::from(slave);
            let _ = tx.send(f.write_all(&pattern));
            // Dropping the last slave fd is the process exiting: the master reads EIO.
        });
        rx
    };
    // Nobody reads the FIFO yet: the spool must take the output so the writer finishes.
    recv(written, "the process was held back").await.unwrap();
    let got = read_fifo(rig.stdout.clone(), SIZE);
    let t = Instant::now();
    progress.drain(Duration::from_secs(60)).await;
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(
        progress.active.load(Ordering::Relaxed),
        0,
        "EIO from the master did not end the output loop"
    );
    let got = recv(got, "stdout FIFO reader").await;
    assert_eq!(got.len(), SIZE);
    assert!(got == pattern, "output differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_output_share_the_one_stream() {
    let rig = rig(true).await;
    let got = read_fifo(rig.stdout.clone(), b"hi\r\nout\r\n".len());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&rig.stdin)
        .unwrap()
        .write_all(b"hi\n")
        .unwrap();
    // Wait for the line to reach the process before it answers.
    let mut f = File::from(rig.slave().try_clone().unwrap());
    let mut buf = [0u8; 16];
    let n = f.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hi\n");
    f.write_all(b"out\n").unwrap();
    assert_eq!(recv(got, "stdout FIFO reader").await, b"hi\r\nout\r\n");
}

#[tokio::test]
async fn resize_sets_the_window_size() {
    let rig = rig(false).await;
    rig.copiers
        .resize(132, 50)
        .expect("a console")
        .expect("TIOCSWINSZ");
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer.
    let rc = unsafe { libc::ioctl(rig.slave().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    assert_eq!(rc, 0);
    assert_eq!((ws.ws_row, ws.ws_col), (50, 132));
    // Absurd sizes are clamped, not wrapped.
    rig.copiers.resize(70_000, 1).unwrap().unwrap();
    let rc = unsafe { libc::ioctl(rig.slave().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    assert_eq!(rc, 0);
    assert_eq!((ws.ws_row, ws.ws_col), (1, u16::MAX));
}

#[tokio::test]
async fn pipes_have_no_console_to_resize() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StdioPaths {
        stdout: fifo(dir.path(), "out"),
        ..Default::default()
    };
    let (_io, copiers) = super::super::prepare("c", &paths, 0, 0, dir.path()).unwrap();
    assert!(copiers.resize(80, 24).is_none());
}

#[tokio::test]
async fn delete_hangs_the_terminal_up() {
    let mut rig = rig(true).await;
    let reads = rig.read_slave_to_eof();
    rig.copiers.abort();
    // With every copy of the master closed the slave reads EOF (hangup).
    recv(reads, "the terminal outlived Delete").await;
}

#[tokio::test]
async fn a_terminal_without_stdout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = StdioPaths {
        terminal: true,
        ..Default::default()
    };
    match Pending::new("c", &paths, fifos(&paths), dir.path()) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("stdout"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
}

#[tokio::test]
async fn no_master_from_the_runtime_is_an_error_not_a_hang() {
    tokio::time::pause();
    let dir = tempfile::tempdir().unwrap();
    let paths = StdioPaths {
        stdout: fifo(dir.path(), "out"),
        terminal: true,
        ..Default::default()
    };
    let pending = Pending::new("c", &paths, fifos(&paths), dir.path()).unwrap();
    let socket_dir = pending.socket_path().parent().unwrap().to_path_buf();
    let err = pending.start().await.err().expect("no master, yet started");
    assert!(err.to_string().contains("pty master"), "{err}");
    assert!(!socket_dir.exists(), "console socket left behind");
}

#[test]
fn eof_sequence_follows_the_terminal_modes() {
    let pty = openpty(None, None).unwrap();
    let mut t = tcgetattr(pty.slave.as_fd()).unwrap();
    let eof = t.control_chars[SpecialCharacterIndices::VEOF as usize];
    assert_eq!(eof, 4, "^D by default");
    assert_eq!(eof_sequence(&t, None), vec![eof]);
    assert_eq!(eof_sequence(&t, Some(b'\n')), vec![eof]);
    assert_eq!(
        eof_sequence(&t, Some(b'\r')),
        vec![eof],
        "ICRNL ends the line"
    );
    assert_eq!(eof_sequence(&t, Some(eof)), vec![eof]);
    assert_eq!(eof_sequence(&t, Some(b'x')), vec![eof, eof]);
    // A disabled VEOL (0) is no line end.
    assert_eq!(eof_sequence(&t, Some(0)), vec![eof, eof]);
    t.input_flags.remove(InputFlags::ICRNL);
    assert_eq!(eof_sequence(&t, Some(b'\r')), vec![eof, eof]);
    t.control_chars[SpecialCharacterIndices::VEOL as usize] = b';';
    assert_eq!(eof_sequence(&t, Some(b';')), vec![eof]);
    t.local_flags.remove(LocalFlags::ICANON);
    assert_eq!(
        eof_sequence(&t, Some(b'x')),
        vec![eof],
        "raw mode: one byte"
    );
    t.control_chars[SpecialCharacterIndices::VEOF as usize] = 0;
    assert!(eof_sequence(&t, Some(b'x')).is_empty());
}
