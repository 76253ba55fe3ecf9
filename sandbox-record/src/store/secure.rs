//! Who may change the record directories, and reading a record file with a bound.
//!
//! Records name pods, their IPs, MACs and routes, and the watchdog acts on them: the
//! directories are 0700 and their files 0600, both ours, and a directory another user
//! could write to (or that is not ours) is refused, so nobody else can plant, swap or
//! link a record. Files are opened with `O_NOFOLLOW` and read up to
//! [`MAX_RECORD_BYTES`](crate::limits::MAX_RECORD_BYTES).

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::RecordError;
use crate::limits::MAX_RECORD_BYTES;

use super::io;

/// Mode of the directories the store makes (and narrows its own to).
pub(super) const DIR_MODE: u32 = 0o700;
/// Mode of record files.
pub(super) const FILE_MODE: u32 = 0o600;

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

fn insecure(dir: &Path, reason: String) -> RecordError {
    RecordError::Insecure {
        path: dir.to_path_buf(),
        reason,
    }
}

/// Checks that `dir` is a directory owned by this process's user that no other user can
/// write to; `Ok(None)` if it does not exist, else its mode. `follow`: whether `dir` itself
/// may be a symbolic link (the configured store directory may; a namespace directory in it
/// may not).
pub(super) fn check_dir(dir: &Path, follow: bool) -> Result<Option<u32>, RecordError> {
    let meta = if follow {
        fs::metadata(dir)
    } else {
        fs::symlink_metadata(dir)
    };
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(dir, "stat directory")(e)),
    };
    if !meta.is_dir() {
        return Err(insecure(dir, "not a directory".into()));
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != euid() {
        return Err(insecure(
            dir,
            format!("owned by uid {}, not by uid {}", meta.uid(), euid()),
        ));
    }
    if mode & 0o022 != 0 {
        return Err(insecure(
            dir,
            format!("writable by other users (mode {mode:04o})"),
        ));
    }
    Ok(Some(mode))
}

/// Makes `dir` (and missing parents) 0700 if it does not exist, checks it, and narrows a
/// directory of ours that others may read (records written before 0700) to 0700.
pub(super) fn private_dir(dir: &Path, follow: bool) -> Result<(), RecordError> {
    let mode = match check_dir(dir, follow)? {
        Some(mode) => mode,
        None => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(io(dir, "create directory"))?;
            check_dir(dir, follow)?.unwrap_or(DIR_MODE)
        }
    };
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(io(dir, "narrow to 0700"))?;
    }
    Ok(())
}

/// Opens a new file (never an existing one, never through a link) with the record mode.
pub(super) fn create_file(path: &Path) -> Result<File, RecordError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path, "create temp file"))
}

/// The bytes of the record file at `path`, `Ok(None)` if there is none. A symbolic link,
/// a non-regular file or a file larger than a record may be is corrupt (not read).
pub(super) fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, RecordError> {
    let corrupt = |reason: String| RecordError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file = OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO in the directory must not hang the reader.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(corrupt("a symbolic link, not a record".into()))
        }
        Err(e) => return Err(io(path, "open")(e)),
    };
    let meta = file.metadata().map_err(io(path, "stat"))?;
    if !meta.is_file() {
        return Err(corrupt("not a regular file".into()));
    }
    if meta.len() > MAX_RECORD_BYTES as u64 {
        return Err(corrupt(format!(
            "{} bytes, more than the {MAX_RECORD_BYTES} a record may have",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // One byte more than allowed: a file that grew since the fstat is caught by decode.
    file.take(MAX_RECORD_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path, "read"))?;
    Ok(Some(bytes))
}
