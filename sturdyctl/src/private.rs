//! Files only root may read or write: the watchdog's journal and its lock.
//!
//! The journal is trusted input (a restarted watchdog redoes what it names), and its lock
//! decides whether a watchdog may run at all, so both live in a directory only root can
//! enter (0700), are created 0600 and are never opened through a symlink. A lock file that
//! others could open once (an older layout made it 0644) is replaced by a fresh one: a
//! shared lock someone holds on the old inode then blocks nobody (security review
//! 2026-12, M1 and L10).

use std::fs::{File, OpenOptions};
use std::io::{Error, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

fn refuse(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        format!("{}: {why}", path.display()),
    )
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (0700) if missing, or tightens an existing one of ours to 0700, and
/// checks that no one else can replace it: every directory above it belongs to root and
/// is writable by no one else, or is sticky (like /tmp: nobody may rename root's entries).
pub fn directory(dir: &Path) -> std::io::Result<()> {
    if !dir.is_absolute() {
        return Err(refuse(dir, "not an absolute path"));
    }
    // Above first, so nothing is created below a directory someone else controls.
    for above in dir.ancestors().skip(1) {
        match std::fs::symlink_metadata(above) {
            Ok(m) => replaceable_only_by_root(above, &m)?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(refuse(dir, "not a directory (a symlink?)"));
    }
    if meta.uid() != euid() {
        return Err(refuse(dir, format!("owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        log::info!(
            "{}: mode {:04o} tightened to 0700",
            dir.display(),
            meta.mode() & 0o7777
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    for above in dir.ancestors().skip(1) {
        replaceable_only_by_root(above, &std::fs::symlink_metadata(above)?)?;
    }
    Ok(())
}

/// Root's (or ours), and writable by no one else unless sticky.
fn replaceable_only_by_root(path: &Path, m: &std::fs::Metadata) -> std::io::Result<()> {
    if m.uid() != 0 && m.uid() != euid() {
        return Err(refuse(path, format!("owned by uid {}", m.uid())));
    }
    let sticky = m.mode() & 0o1000 != 0;
    if m.mode() & 0o022 != 0 && !sticky {
        return Err(refuse(
            path,
            format!(
                "mode {:04o} lets others replace what is in it",
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Opens `path` (created 0600 if `create`) without following a symlink; refuses anything
/// but a regular file of ours, and tightens a wider mode to 0600.
pub fn open(path: &Path, opts: &mut OpenOptions, create: bool) -> std::io::Result<File> {
    let file = opts
        .create(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refuse(path, "is a symlink"),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse(path, "not a regular file"));
    }
    if meta.uid() != euid() {
        return Err(refuse(path, format!("owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Opens the lock file at `path` for locking. One that others could have opened (not
/// ours, or readable by others) is removed first, so that a lock held on it by someone
/// else stays on an inode nobody looks at any more.
pub fn lock_file(path: &Path) -> std::io::Result<File> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() || m.uid() != euid() || m.mode() & 0o077 != 0 => {
            log::warn!(
                "{}: others could open it (uid {}, mode {:04o}); replaced by a private one",
                path.display(),
                m.uid(),
                m.mode() & 0o7777
            );
            std::fs::remove_file(path)?;
        }
        _ => {}
    }
    open(path, OpenOptions::new().write(true).truncate(false), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_links_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("sturdy");
        directory(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        directory(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);

        let path = dir.join("journal");
        let f = open(&path, OpenOptions::new().append(true), true).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        open(&path, OpenOptions::new().read(true), false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);

        let link = dir.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = open(&link, OpenOptions::new().read(true), false).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        let linked_dir = base.path().join("linked");
        std::os::unix::fs::symlink(&dir, &linked_dir).unwrap();
        assert!(directory(&linked_dir).is_err());
    }

    #[test]
    fn a_directory_others_may_change_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let open_dir = base.path().join("open");
        std::fs::create_dir(&open_dir).unwrap();
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = directory(&open_dir.join("sturdy")).unwrap_err();
        assert!(err.to_string().contains("lets others replace"), "{err}");
        std::os::unix::fs::chown(&open_dir, Some(65534), None).unwrap();
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = directory(&open_dir.join("sturdy2")).unwrap_err();
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
}
