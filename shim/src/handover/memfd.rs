//! The document's carrier: a memfd written once and sealed, so the image that reads it
//! (and the one that goes back to the old binary if that fails) reads exactly what was
//! written, and nothing that shares the fd can change it afterwards.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use super::{HandoverError, MAX_DOCUMENT};

/// Seals a handover memfd must carry: no write, no resize, no further change of seals.
pub const SEALS: i32 =
    libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Writes `bytes` to a new memfd (close-on-exec; the exec path clears that for the one fd
/// it hands down) and seals it.
pub fn write_sealed(bytes: &[u8]) -> Result<OwnedFd, HandoverError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| HandoverError::Io { what, source }
    };
    // SAFETY: a NUL-terminated name and flags; the returned fd is checked before use.
    let fd = unsafe {
        libc::memfd_create(
            c"sturdy-handover".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io("memfd_create")(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes).map_err(io("write memfd"))?;
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(io("seal memfd")(std::io::Error::last_os_error()));
    }
    Ok(file.into())
}

/// Reads a sealed handover memfd from its start; refuses one that could still change.
pub fn read_sealed(fd: &File) -> Result<Vec<u8>, HandoverError> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on an fd the caller holds open.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
    if seals < 0 || seals & SEALS != SEALS {
        return Err(HandoverError::Unsealed {
            fd: raw,
            seals,
            needed: SEALS,
        });
    }
    read_bounded(fd, "memfd")
}

/// Reads a whole file of at most [`MAX_DOCUMENT`] bytes from offset 0.
pub fn read_bounded(file: &File, what: &str) -> Result<Vec<u8>, HandoverError> {
    let len = file
        .metadata()
        .map_err(|source| HandoverError::Io {
            what: format!("stat {what}"),
            source,
        })?
        .len();
    if len > MAX_DOCUMENT as u64 {
        return Err(HandoverError::TooLarge { len });
    }
    let mut buf = vec![0u8; len as usize];
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(HandoverError::Io {
                    what: format!("read {what}"),
                    source,
                })
            }
        }
    }
    buf.truncate(done);
    Ok(buf)
}
