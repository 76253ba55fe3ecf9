//! Opening a `file://` log without trusting what others could have put on its path.
//!
//! The container's output is content of the container's choosing, appended by root: if
//! someone other than root could swap the log or a directory above it for a symlink, a
//! FIFO or a hard link, root would append that content to a file of theirs, or hang on a
//! FIFO. So the file is opened relative to its parent directory's fd, never following a
//! symlink (`O_NOFOLLOW`), never waiting (`O_NONBLOCK`), and only if it is a regular file
//! with no other name; and that directory, and every directory above it, must be owned by
//! root and writable by nobody else. An ancestor writable by others is accepted only with
//! the sticky bit (like /tmp, where others cannot rename or remove what is ours); the
//! log's own directory not even then, since others could create the log's name first.
//!
//! A new file is 0640 and owned by IoUid/IoGid; missing directories are created 0750 with
//! IoGid as their group, so that group can reach the log and nobody else can.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, Gid, Uid};

/// Mode of a log file the shim creates.
pub(super) const FILE_MODE: u32 = 0o640;
/// Mode of a directory the shim creates on the way to a log file.
pub(super) const DIR_MODE: u32 = 0o750;
/// Most directories walked up from the log's directory to `/` (a loop guard only).
const MAX_DEPTH: usize = 4096;

/// Who owns what the shim creates (the runtime options' IoUid/IoGid).
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// Opens `path` for appending, creating it and its missing directories; refuses (with
/// the reason in the error) anything but a regular file of ours in directories only root
/// can change.
pub(super) fn open_log(path: &Path, owner: Owner) -> io::Result<File> {
    let (dir, name) = split(path)?;
    create_dirs(dir, owner)?;
    let dir_fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(e, format!("open directory {}", dir.display())))?;
    check_directories(&dir_fd, dir)?;
    if let Some(existing) = stat_at(&dir_fd, name)? {
        check_file(&existing, path, owner)?;
    }
    let flags = OFlag::O_WRONLY
        | OFlag::O_APPEND
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(FILE_MODE);
    let (fd, created) = match openat(&dir_fd, name, flags | OFlag::O_CREAT | OFlag::O_EXCL, mode) {
        Ok(fd) => (fd, true),
        Err(Errno::EEXIST) => (open_existing(&dir_fd, name, flags, path)?, false),
        Err(e) => return Err(errno(e, format!("create {}", path.display()))),
    };
    // Checked again on what was opened: the name may have changed since the look above.
    let st = fstat(&fd).map_err(|e| errno(e, format!("fstat {}", path.display())))?;
    check_file(&st, path, owner)?;
    if created && (owner.uid != 0 || owner.gid != 0) {
        fchown(
            &fd,
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
        )
        .map_err(|e| errno(e, format!("chown {}", path.display())))?;
    }
    Ok(File::from(fd))
}

/// The log's directory and file name; the path must name a file.
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.components().next_back()) {
        (Some(dir), Some(Component::Normal(name))) if !dir.as_os_str().is_empty() => {
            Ok((dir, name))
        }
        _ => Err(refused(format!("{} does not name a file", path.display()))),
    }
}

fn open_existing(dir: &OwnedFd, name: &OsStr, flags: OFlag, path: &Path) -> io::Result<OwnedFd> {
    openat(dir, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::ELOOP => refused(format!("{} is a symbolic link", path.display())),
        // A FIFO nobody reads: O_NONBLOCK makes the open fail instead of waiting for one.
        Errno::ENXIO => refused(format!("{} is not a regular file", path.display())),
        e => errno(e, format!("open {}", path.display())),
    })
}

/// Creates the missing directories of `dir`, top down, 0750 with IoGid as group.
fn create_dirs(dir: &Path, owner: Owner) -> io::Result<()> {
    let mut at = std::path::PathBuf::new();
    for part in dir.components() {
        at.push(part);
        match nix::unistd::mkdir(&at, Mode::from_bits_truncate(DIR_MODE)) {
            Ok(()) => {
                if owner.gid != 0 {
                    let fd = nix::fcntl::open(
                        &at,
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| errno(e, format!("open new directory {}", at.display())))?;
                    fchown(&fd, None, Some(Gid::from_raw(owner.gid)))
                        .map_err(|e| errno(e, format!("chown {}", at.display())))?;
                }
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(errno(e, format!("create directory {}", at.display()))),
        }
    }
    Ok(())
}

/// Refuses `dir` (open as `fd`) unless it and every directory above it, as the kernel
/// reaches them from the open fd, are root's and writable only by root.
fn check_directories(fd: &OwnedFd, dir: &Path) -> io::Result<()> {
    let st = fstat(fd).map_err(|e| errno(e, format!("fstat {}", dir.display())))?;
    check_dir(&st, dir, false)?;
    let mut below = (st.st_dev, st.st_ino);
    let mut cur = openat(
        fd,
        "..",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(e, format!("open the parent of {}", dir.display())))?;
    for _ in 0..MAX_DEPTH {
        let st = fstat(&cur).map_err(|e| errno(e, format!("fstat above {}", dir.display())))?;
        if (st.st_dev, st.st_ino) == below {
            // `..` of `/` is `/` itself.
            return Ok(());
        }
        check_dir(&st, dir, true)?;
        below = (st.st_dev, st.st_ino);
        cur = openat(
            &cur,
            "..",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno(e, format!("walk up from {}", dir.display())))?;
    }
    Err(refused(format!("{} is nested too deep", dir.display())))
}

/// One directory of the chain: root's, and writable by nobody else (an ancestor may be
/// world-writable if it is sticky).
fn check_dir(st: &FileStat, dir: &Path, ancestor: bool) -> io::Result<()> {
    let which = if ancestor { "a directory above " } else { "" };
    if st.st_uid != 0 && st.st_uid != Uid::effective().as_raw() {
        return Err(refused(format!(
            "{which}{} is owned by uid {}, not root: the log file would be in reach of that user",
            dir.display(),
            st.st_uid
        )));
    }
    let writable_by_others = st.st_mode & 0o022 != 0;
    let sticky = st.st_mode & 0o1000 != 0;
    if writable_by_others && !(ancestor && sticky) {
        return Err(refused(format!(
            "{which}{} is writable by group or others (mode {:o}): they could replace the log file",
            dir.display(),
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}

/// The entry `name` in `dir`, not following a symlink; None if it does not exist.
fn stat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno(
            e,
            format!("stat {}", String::from_utf8_lossy(name.as_bytes())),
        )),
    }
}

/// A log file must be a regular file with this one name, root's or IoUid's.
fn check_file(st: &FileStat, path: &Path, owner: Owner) -> io::Result<()> {
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    let what = match kind {
        SFlag::S_IFREG => None,
        SFlag::S_IFLNK => Some("a symbolic link"),
        SFlag::S_IFIFO => Some("a FIFO"),
        SFlag::S_IFCHR | SFlag::S_IFBLK => Some("a device"),
        SFlag::S_IFSOCK => Some("a socket"),
        SFlag::S_IFDIR => Some("a directory"),
        _ => Some("not a regular file"),
    };
    if let Some(what) = what {
        return Err(refused(format!(
            "{} is {what}; a log must be a regular file",
            path.display()
        )));
    }
    if st.st_nlink > 1 {
        return Err(refused(format!(
            "{} has {} hard links; a log must have no other name",
            path.display(),
            st.st_nlink
        )));
    }
    if st.st_uid != 0 && st.st_uid != owner.uid && st.st_uid != Uid::effective().as_raw() {
        return Err(refused(format!(
            "{} is owned by uid {}, neither root nor IoUid {}",
            path.display(),
            st.st_uid,
            owner.uid
        )));
    }
    Ok(())
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

fn errno(e: Errno, context: String) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{context}: {e}"))
}
