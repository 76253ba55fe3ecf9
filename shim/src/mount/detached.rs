//! The new mount API calls an idmapped mount is made with: clone a tree into a detached
//! mount (`open_tree`), give it the user namespace's idmapping (`mount_setattr`, which
//! only accepts MOUNT_ATTR_IDMAP on a mount nobody can see yet), then attach it
//! (`move_mount`). Neither nix nor rustix wraps `mount_setattr`, so these are raw
//! syscalls on libc's numbers and structs; each wrapper owns the fd it returns.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The result of a syscall that returns an fd, owned.
fn fd_result(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

fn unit_result(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A detached copy of the mount tree at `path` (only the mount at `path` unless
/// `recursive`); it disappears when the fd is closed without being attached.
pub(super) fn clone_tree(path: &CStr, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: a NUL-terminated path; the flags ask for a new fd only.
    fd_result(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })
}

/// What [`set_attrs`] applies to a detached mount.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Attrs {
    /// MOUNT_ATTR_* flags to set (MOUNT_ATTR_IDMAP is added when `userns` is given).
    pub set: u64,
    /// MOUNT_ATTR_* flags to clear (MOUNT_ATTR__ATIME when an atime mode is set).
    pub clear: u64,
    /// Propagation type (MS_PRIVATE, MS_SLAVE, ...), or 0 to leave it.
    pub propagation: u64,
    /// Also every mount below it.
    pub recursive: bool,
}

/// mount_setattr(2) on the mount `fd` refers to, idmapped through `userns` if given.
pub(super) fn set_attrs(
    fd: BorrowedFd<'_>,
    attrs: Attrs,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut attr = libc::mount_attr {
        attr_set: attrs.set,
        attr_clr: attrs.clear,
        propagation: attrs.propagation,
        userns_fd: 0,
    };
    if let Some(ns) = userns {
        attr.attr_set |= libc::MOUNT_ATTR_IDMAP;
        attr.userns_fd = ns.as_raw_fd() as u64;
    }
    let mut flags = libc::AT_EMPTY_PATH;
    if attrs.recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: an empty path with AT_EMPTY_PATH names `fd` itself; `attr` is a live,
    // fully initialised mount_attr and its exact size is passed.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })
}

/// Attaches the detached mount `fd` on `name` inside the directory `dir` (never through a
/// symlink: move_mount follows none unless asked).
pub(super) fn attach(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: AT_EMPTY_PATH source names `fd`; `name` is NUL-terminated and relative to
    // the open directory `dir`.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
}

/// Attaches the detached mount `fd` on the absolute path `target`.
pub(super) fn attach_at(fd: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    // SAFETY: as in `attach`, with AT_FDCWD (ignored for an absolute path).
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
}

/// A detached, empty tmpfs that no mount table shows (for probing); gone when closed.
pub(super) fn detached_tmpfs() -> io::Result<OwnedFd> {
    // SAFETY: NUL-terminated name; returns a new fs context fd.
    let ctx = fd_result(unsafe {
        libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), libc::FSOPEN_CLOEXEC)
    })?;
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: a created fs context; returns a new mount fd.
    fd_result(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            ctx.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            0 as libc::c_uint,
        )
    })
}
