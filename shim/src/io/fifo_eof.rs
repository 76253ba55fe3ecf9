//! The EOF of an output FIFO whose reader opens it only after the output ended.
//!
//! Our end of an output FIFO is read-write, so while we hold it a reader's open(2) returns
//! at once. When a process's output is done we close it, and a reader that had not opened
//! the FIFO yet then blocks in open(2) for a writer that never comes. containerd opens an
//! exec's FIFOs in the background, late on a loaded node, and 1.6's ExecSync waits for
//! both streams' EOF without a deadline: a quick `echo ok` with an empty stderr hung it
//! forever (the churn test, on a busy machine). The Go shim's blocking open for writing
//! pairs with the reader's, so it cannot hit this.
//!
//! So after closing, we stand in as a writer once more, for a bounded time: an open for
//! writing with O_NONBLOCK succeeds only while a reader is there (even one still blocked in
//! its own open), and closing it at once hands that reader its EOF. It runs apart from the
//! copy loop, so it never delays the exit. The FIFO is reopened through an `O_PATH` fd
//! taken from our own open one, never through its path again, so it is the same inode.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use tokio::time::Instant;

/// How long a late reader may take to show up.
const EOF_HANDOVER_LIMIT: Duration = Duration::from_secs(30);
/// First and longest pause between tries; they double in between.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_millis(500);

/// An output FIFO's inode, held as an `O_PATH` fd (neither reader nor writer).
#[derive(Debug)]
pub(super) struct FifoNode(OwnedFd);

impl FifoNode {
    /// The FIFO behind `open` (our open end of it).
    pub(super) fn of(open: &impl AsRawFd) -> io::Result<FifoNode> {
        let fd = nix::fcntl::open(
            format!("/proc/self/fd/{}", open.as_raw_fd()).as_str(),
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(FifoNode(fd))
    }

    /// Opens the FIFO for writing and closes it again as soon as a reader is there, or
    /// gives up after [`EOF_HANDOVER_LIMIT`]; whether a reader was found.
    pub(super) async fn hand_eof(self) -> bool {
        let end = Instant::now() + EOF_HANDOVER_LIMIT;
        let mut pause = FIRST_PAUSE;
        loop {
            match self.try_writer() {
                Ok(()) => return true,
                // ENXIO: no reader yet.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < end => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
                Err(e) => {
                    log::debug!("no reader took an output FIFO's EOF: {e}");
                    return false;
                }
            }
        }
    }

    fn try_writer(&self) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::sync::mpsc;

    /// A FIFO in `dir` that we opened read-write and closed again, and its node.
    fn closed_fifo(dir: &Path) -> (PathBuf, FifoNode) {
        let path = dir.join("out");
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap();
        let ours = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let node = FifoNode::of(&ours).unwrap();
        (path, node)
    }

    #[tokio::test]
    async fn a_reader_that_opens_late_gets_its_eof() {
        let dir = tempfile::tempdir().unwrap();
        let (path, node) = closed_fifo(dir.path());
        let handed = tokio::spawn(node.hand_eof());
        // The reader arrives after our end is gone; without a writer its open would block.
        let (tx, rx) = mpsc::channel();
        let reader_path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut f = std::fs::File::open(reader_path).unwrap();
            let mut buf = Vec::new();
            let n = f.read_to_end(&mut buf).unwrap();
            tx.send(n).unwrap();
        });
        let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap();
        if got.is_err() {
            // Release the reader stuck in open(2) before failing.
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path);
        }
        assert_eq!(got, Ok(0), "the late reader never got its EOF");
        assert!(handed.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_reader_it_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, node) = closed_fifo(dir.path());
        let t = Instant::now();
        assert!(!node.hand_eof().await);
        // Paused clock: the limit passes on tokio's clock without real waiting.
        assert!(t.elapsed() >= EOF_HANDOVER_LIMIT, "{:?}", t.elapsed());
    }
}
