//! What sturdyctl may execute and which processes it may take for containerd or a shim.
//!
//! sturdyctl runs as root. Anything it executes, and any process it signals or asks
//! questions on behalf of, must be beyond the reach of other local users: a binary is
//! trusted only if it and every directory on the way to it (symlinks followed, each
//! checked where it lies) belong to root and are writable by nobody else; a process is
//! trusted only if it runs as root from such a binary. A command line, a process's
//! environment or `/proc/PID/exe` can be set by any user (`exec -a`), so none of them is
//! ever a source of a path to execute (security review 2026-12, H1 and H2).

mod walk;

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub(crate) use walk::{walk, WalkError};

/// Why a path or a process is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// The path is not absolute.
    #[error("{0}: not an absolute path")]
    Relative(PathBuf),
    /// A component could not be examined.
    #[error("{path}: {error}")]
    Unreadable {
        /// The component.
        path: PathBuf,
        /// The error text.
        error: String,
    },
    /// A component is owned by another user than root.
    #[error("{path}: owned by uid {uid}, not root")]
    Owner {
        /// The component.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// A component can be written by others than its owner.
    #[error("{path}: mode {mode:04o} lets group or others write it")]
    Writable {
        /// The component.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path is not what it must be (a regular executable file, a directory).
    #[error("{path}: {why}")]
    Kind {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Too many symlinks on the way.
    #[error("{0}: too many levels of symbolic links")]
    Loop(PathBuf),
    /// The process does not run as root.
    #[error("pid {pid} runs as uid {uid}, not root")]
    NotRoot {
        /// The process.
        pid: i32,
        /// Its real or effective uid.
        uid: u32,
    },
    /// The process is gone or its details cannot be read.
    #[error("pid {pid}: {error}")]
    Process {
        /// The process.
        pid: i32,
        /// What failed.
        error: String,
    },
}

/// Checks that `path` is a regular file, executable, that only root can change, reached
/// through directories only root can change; returns the path it resolves to.
pub fn executable(path: &Path) -> Result<PathBuf, Untrusted> {
    let (resolved, meta) = resolve(path)?;
    if !meta.is_file() {
        return Err(Untrusted::Kind {
            path: resolved,
            why: "not a regular file",
        });
    }
    if meta.mode() & 0o111 == 0 {
        return Err(Untrusted::Kind {
            path: resolved,
            why: "not executable",
        });
    }
    Ok(resolved)
}

/// Checks that `path` is a directory only root can change, reached through directories
/// only root can change; returns the path it resolves to.
pub fn directory(path: &Path) -> Result<PathBuf, Untrusted> {
    let (resolved, meta) = resolve(path)?;
    if !meta.is_dir() {
        return Err(Untrusted::Kind {
            path: resolved,
            why: "not a directory",
        });
    }
    Ok(resolved)
}

/// `name` in the first directory of `dirs` that has it as a trusted executable.
/// Directories that are not trusted are skipped, so a `PATH` naming a user's directory
/// can never lead to that user's binary.
pub fn find_executable<I, P>(dirs: I, name: &str) -> Option<PathBuf>
where
    I: IntoIterator<Item = P>,
    P: AsRef<Path>,
{
    dirs.into_iter()
        .filter(|d| d.as_ref().is_absolute() && directory(d.as_ref()).is_ok())
        .map(|d| d.as_ref().join(name))
        .find(|p| p.is_file() && executable(p).is_ok())
}

/// Walks `path` from `/`, following symlinks, checking every directory, symlink and the
/// final file on the way: owned by root, and (symlinks aside, whose mode means nothing)
/// not writable by group or others.
fn resolve(path: &Path) -> Result<(PathBuf, Metadata), Untrusted> {
    if !path.is_absolute() {
        return Err(Untrusted::Relative(path.to_path_buf()));
    }
    walk(Path::new("/"), path, owned_by_root).map_err(|e| match e {
        WalkError::Io(at, e) => unreadable(&at, e),
        WalkError::NotADirectory(at) => Untrusted::Kind {
            path: at,
            why: "not a directory",
        },
        WalkError::Loop => Untrusted::Loop(path.to_path_buf()),
        WalkError::Refused(why) => why,
    })
}

/// Owner root and, unless a symlink, no write bit for group or others.
fn owned_by_root(path: &Path, meta: &Metadata) -> Result<(), Untrusted> {
    if meta.uid() != 0 {
        return Err(Untrusted::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    if !meta.file_type().is_symlink() && meta.mode() & 0o022 != 0 {
        return Err(Untrusted::Writable {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

fn unreadable(path: &Path, e: std::io::Error) -> Untrusted {
    Untrusted::Unreadable {
        path: path.to_path_buf(),
        error: e.to_string(),
    }
}

/// Real and effective uid of `pid` (the `Uid:` line of /proc/PID/status).
pub fn process_uids(pid: i32) -> Result<(u32, u32), Untrusted> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| Untrusted::Process {
            pid,
            error: format!("status: {e}"),
        })?;
    parse_uids(&status).ok_or_else(|| Untrusted::Process {
        pid,
        error: "status: no Uid line".into(),
    })
}

/// Real and effective uid from the text of /proc/PID/status.
pub fn parse_uids(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|f| f.parse::<u32>());
    let real = ids.next()?.ok()?;
    let effective = ids.next()?.ok()?;
    Some((real, effective))
}

/// Checks that `pid` runs as root (real and effective uid) from an executable only root
/// can change: the running image itself (opened through /proc/PID/exe, so a file that was
/// replaced since counts as what runs), and, while its path still names that same file,
/// the directories on the way to it.
pub fn process(pid: i32) -> Result<(), Untrusted> {
    let (real, effective) = process_uids(pid)?;
    if real != 0 || effective != 0 {
        return Err(Untrusted::NotRoot {
            pid,
            uid: if real != 0 { real } else { effective },
        });
    }
    let link = PathBuf::from(format!("/proc/{pid}/exe"));
    let image = std::fs::metadata(&link).map_err(|e| Untrusted::Process {
        pid,
        error: format!("exe: {e}"),
    })?;
    let shown = std::fs::read_link(&link).map_err(|e| Untrusted::Process {
        pid,
        error: format!("exe: {e}"),
    })?;
    owned_by_root(&shown, &image)?;
    if !image.is_file() {
        return Err(Untrusted::Kind {
            path: shown,
            why: "executable is not a regular file",
        });
    }
    if shown.to_string_lossy().ends_with(" (deleted)") {
        // Replaced or removed since it started (an upgrade): the image is all there is.
        return Ok(());
    }
    let (resolved, meta) = resolve(&shown)?;
    if (meta.dev(), meta.ino()) != (image.dev(), image.ino()) {
        // Another mount namespace (a container) or a path reused since: not ours to trust.
        return Err(Untrusted::Kind {
            path: resolved,
            why: "is not the file the process runs (another mount namespace?)",
        });
    }
    Ok(())
}

/// Whether `meta` is a Unix socket (what a shim or containerd listens on).
pub fn is_socket(meta: &Metadata) -> bool {
    meta.file_type().is_socket()
}

#[cfg(test)]
mod tests;
