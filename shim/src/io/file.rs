//! `file://` stdio: a process's stdout and stderr appended to one file, as the Go shim
//! does it (parent directories created 0755, the file 0644, opened `O_APPEND`).
//!
//! The output loops write into a pipe per stream, exactly as they write into a FIFO (same
//! spool, same drain at exit), and a small thread per stream copies that pipe into the
//! file. Writes to a file can block (a slow or remote disk); on a thread of their own they
//! never stall the shim's single runtime thread, and the spool keeps the container's own
//! writes from waiting on them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use tokio::net::unix::pipe;

use crate::error::{Error, Result};

/// Stack of a copy thread: it only holds a few frames; its buffer is on the heap.
const THREAD_STACK: usize = 64 * 1024;
/// Bytes copied at a time.
const CHUNK: usize = 16 * 1024;

/// Opens (creating it) the log file at `path` and returns, for each stream wanted, the
/// write end of a pipe whose content ends up appended to it.
pub(super) async fn open(
    id: &str,
    path: &Path,
    stdout: bool,
    stderr: bool,
) -> Result<(Option<pipe::Sender>, Option<pipe::Sender>)> {
    let ctx = |step: &str| format!("file stdio {}: {step}", path.display());
    let owned = path.to_path_buf();
    // mkdir and open may block on a slow file system: off the runtime thread.
    let file = runc_client::blocking::run("open-log", move || open_log(&owned))
        .await
        .and_then(|opened| opened)
        .map_err(|e| Error::io(id, ctx("open"), e))?;
    let mut ends = [None, None];
    for (wanted, (slot, name)) in [stdout, stderr]
        .into_iter()
        .zip(ends.iter_mut().zip(["stdout", "stderr"]))
    {
        if !wanted {
            continue;
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Error::io(id, ctx("pipe"), e.into()))?;
        let file = file.try_clone().map_err(|e| Error::io(id, ctx("dup"), e))?;
        let label = format!("{id} {name} -> {}", path.display());
        std::thread::Builder::new()
            .name("stdio-file".into())
            .stack_size(THREAD_STACK)
            .spawn(move || copy(read, file, &label))
            .map_err(|e| Error::io(id, ctx("start the copy thread"), e))?;
        *slot =
            Some(pipe::Sender::from_owned_fd(write).map_err(|e| Error::io(id, ctx("pipe"), e))?);
    }
    let [out, err] = ends;
    Ok((out, err))
}

fn open_log(path: &PathBuf) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Copies `from` into `to` until every writer of `from` is gone (the copy loop ended).
/// After a write error the rest is read and dropped, so the process never waits on a log
/// file that fails (the error is logged once).
fn copy(from: OwnedFd, mut to: File, label: &str) {
    let mut from = File::from(from);
    let mut buf = vec![0u8; CHUNK];
    let mut dropped: Option<u64> = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("{label}: read: {e}");
                break;
            }
        };
        match &mut dropped {
            Some(count) => *count += n as u64,
            None => {
                if let Err(e) = to.write_all(&buf[..n]) {
                    log::warn!("{label}: write: {e}; further output is dropped");
                    dropped = Some(n as u64);
                }
            }
        }
    }
    if let Some(count) = dropped {
        log::warn!("{label}: {count} bytes dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;

    async fn wait_for_content(path: &Path, want: usize) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.len() >= want || Instant::now() > end {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Parent directories are created (0755), the file too (0644), and both streams land
    /// in it.
    #[tokio::test]
    async fn both_streams_land_in_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.log");
        let (out, err) = open("c", &path, true, true).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("a")), 0o755);
        assert_eq!(mode(&path), 0o644);
        let (mut out, mut err) = (out.unwrap(), err.unwrap());
        out.write_all(b"out\n").await.unwrap();
        assert_eq!(wait_for_content(&path, 4).await, "out\n");
        err.write_all(b"err\n").await.unwrap();
        assert_eq!(wait_for_content(&path, 8).await, "out\nerr\n");
    }

    /// An existing log is appended to, never truncated; a stream not asked for gets no pipe.
    #[tokio::test]
    async fn an_existing_file_is_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        std::fs::write(&path, "old\n").unwrap();
        let (out, err) = open("c", &path, true, false).await.unwrap();
        assert!(err.is_none());
        out.unwrap().write_all(b"new\n").await.unwrap();
        assert_eq!(wait_for_content(&path, 8).await, "old\nnew\n");
    }

    use std::os::unix::fs::PermissionsExt;

    /// A path that cannot be a file fails the request with the path in the error.
    #[tokio::test]
    async fn an_unusable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = open("c", dir.path(), true, true).await.err().unwrap();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
