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

/// How long a line begun and not ended waits for its end before it is written anyway (a
/// prompt, a progress bar): meanwhile the other stream's lines cannot cut into it.
const PARTIAL_LINE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies `from` into `to` until every writer of `from` is gone (the copy loop ended).
/// After a write error the rest is read and dropped, so the process never waits on a log
/// file that fails (the error is logged once).
///
/// Both streams append to one file, so each writes whole lines only: a read can end in
/// the middle of a line (more than a chunk waiting, or the loop's write into the pipe cut
/// short by a full pipe), and writing that half at once let the other stream's lines land
/// inside it. A line's beginning is held until its end comes, for at most
/// [`PARTIAL_LINE_WAIT`], or until it fills the buffer (a line longer than [`CHUNK`] is
/// written in pieces).
fn copy(from: OwnedFd, to: File, label: &str) {
    copy_holding(from, to, label, PARTIAL_LINE_WAIT)
}

/// [`copy`], holding a line's beginning for at most `wait`.
fn copy_holding(from: OwnedFd, mut to: File, label: &str, wait: std::time::Duration) {
    let mut from = File::from(from);
    let mut buf = vec![0u8; CHUNK];
    // Bytes of `buf` read and not yet written: at most one line's beginning.
    let mut held = 0;
    let mut dropped: Option<u64> = None;
    let mut write = |bytes: &[u8]| match &mut dropped {
        Some(count) => *count += bytes.len() as u64,
        None => {
            if let Err(e) = to.write_all(bytes) {
                log::warn!("{label}: write: {e}; further output is dropped");
                dropped = Some(bytes.len() as u64);
            }
        }
    };
    loop {
        if held > 0 && !readable_within(&from, wait) {
            write(&buf[..held]);
            held = 0;
        }
        let n = match from.read(&mut buf[held..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("{label}: read: {e}");
                break;
            }
        };
        let len = held + n;
        let whole = buf[..len]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        // A full buffer without a line's end is one long line: out in pieces.
        let cut = if whole == 0 && len == buf.len() {
            len
        } else {
            whole
        };
        write(&buf[..cut]);
        buf.copy_within(cut..len, 0);
        held = len - cut;
    }
    write(&buf[..held]);
    if let Some(count) = dropped {
        log::warn!("{label}: {count} bytes dropped");
    }
}

/// Whether `file` has something to read (or its end) within `wait`.
fn readable_within(file: &File, wait: std::time::Duration) -> bool {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        file.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    loop {
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(n) => return n > 0,
            Err(nix::errno::Errno::EINTR) => continue,
            // Reading tells what is wrong.
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests;
