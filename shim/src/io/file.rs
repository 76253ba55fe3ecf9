//! `file://` stdio: a process's stdout and stderr appended to one file (`O_APPEND`), as
//! the Go shim does it, but opened the way [`open`] describes: never through a symlink,
//! never a FIFO or device, only in directories nobody but root can change, and owned by
//! IoUid/IoGid (docs/shim.md, binary:// and file://).
//!
//! The output loops write into a pipe per stream, exactly as they write into a FIFO (same
//! spool, same drain at exit), and a small thread per stream copies that pipe into the
//! file. Writes to a file can block (a slow or remote disk); on a thread of their own they
//! never stall the shim's single runtime thread, and the spool keeps the container's own
//! writes from waiting on them.

mod open;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::OFlag;
use tokio::net::unix::pipe;

use crate::error::{Error, Result};

/// Stack of a copy thread: it only holds a few frames; its buffer is on the heap.
const THREAD_STACK: usize = 64 * 1024;
/// Bytes copied at a time.
const CHUNK: usize = 16 * 1024;

/// Opens (creating it) the log file at `path` and returns, for each stream wanted, the
/// write end of a pipe whose content ends up appended to it. A file it creates belongs to
/// `uid`:`gid` (IoUid/IoGid).
pub(super) async fn open(
    id: &str,
    path: &Path,
    stdout: bool,
    stderr: bool,
    uid: u32,
    gid: u32,
) -> Result<(Option<pipe::Sender>, Option<pipe::Sender>)> {
    let ctx = |step: &str| format!("file stdio {}: {step}", path.display());
    let owned = path.to_path_buf();
    let owner = open::Owner { uid, gid };
    // mkdir and open may block on a slow file system: off the runtime thread.
    let file = runc_client::blocking::run("open-log", move || open::open_log(&owned, owner))
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
mod tests;
