//! The exec of a live upgrade: the daemon replaces its image with another binary, keeping
//! its pid (so it stays the parent and subreaper of its containers) and the fds a handover
//! document names (docs/upgrade.md). Knows fds and binaries, nothing of what they hold.
//!
//! The next image learns of the handover from the environment: [`HANDOVER_FD_ENV`] names
//! the sealed memfd holding the document, [`OLD_BINARY_FD_ENV`] the binary to go back to
//! if it cannot resume (named apart from the document, so even a document it cannot read
//! can be handed back), and [`ROLLBACK_ENV`] tells an old binary that it was gone back to,
//! and why.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

/// The fd number of the document's sealed memfd.
pub const HANDOVER_FD_ENV: &str = "STURDY_HANDOVER_FD";
/// The fd number of the binary the next image goes back to if it cannot resume.
pub const OLD_BINARY_FD_ENV: &str = "STURDY_HANDOVER_OLD_BINARY_FD";
/// Why the next image went back to this binary (set only on that way back).
pub const ROLLBACK_ENV: &str = "STURDY_HANDOVER_ROLLBACK";
/// Longest rollback reason passed on.
const ROLLBACK_MAX: usize = 1024;

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: fcntl reads and sets the flags of an fd the caller holds.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let want = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if want != flags && unsafe { libc::fcntl(fd, libc::F_SETFD, want) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What the next image is handed: the document and the way back.
pub struct Handover<'a> {
    /// The sealed memfd holding the document.
    pub document: RawFd,
    /// The binary to go back to.
    pub old_binary: RawFd,
    /// Every other fd the document names.
    pub fds: &'a [RawFd],
    /// Set when going back to the old binary: why.
    pub rollback: Option<&'a str>,
}

impl Handover<'_> {
    fn all_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        [self.document, self.old_binary]
            .into_iter()
            .chain(self.fds.iter().copied())
    }

    /// Executes `binary` (an open, checked file) with this process's own arguments and
    /// environment plus the handover's variables. Returns only if the exec failed, with
    /// every fd close-on-exec again.
    pub fn exec(&self, binary: &File) -> std::io::Error {
        let err = match self.try_exec(binary) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        for fd in self.all_fds() {
            let _ = set_cloexec(fd, true);
        }
        err
    }

    fn try_exec(&self, binary: &File) -> std::io::Result<std::convert::Infallible> {
        let args: Vec<CString> = std::env::args_os()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(std::io::Error::other)?;
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| {
                ![HANDOVER_FD_ENV, OLD_BINARY_FD_ENV, ROLLBACK_ENV]
                    .iter()
                    .any(|ours| k.as_bytes() == ours.as_bytes())
            })
            .filter_map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                CString::new(kv.as_bytes()).ok()
            })
            .collect();
        let mut ours = vec![
            format!("{HANDOVER_FD_ENV}={}", self.document),
            format!("{OLD_BINARY_FD_ENV}={}", self.old_binary),
        ];
        if let Some(why) = self.rollback {
            let why: String = why
                .chars()
                .filter(|c| !c.is_control())
                .take(ROLLBACK_MAX)
                .collect();
            ours.push(format!("{ROLLBACK_ENV}={why}"));
        }
        for v in ours {
            env.push(CString::new(v).map_err(std::io::Error::other)?);
        }
        for fd in self.all_fds() {
            set_cloexec(fd, false)?;
        }
        nix::unistd::fexecve(binary, &args, &env).map_err(std::io::Error::from)
    }
}

/// The handover this image was started with, if any: the document's memfd and the old
/// binary's fd, from the environment (removed from it, so nothing this image starts
/// inherits them), and the rollback reason if this is the way back.
pub fn inherited() -> Option<(RawFd, RawFd, Option<String>)> {
    let fd = |name: &str| -> Option<RawFd> {
        let v = std::env::var(name).ok()?;
        v.parse().ok().filter(|fd: &RawFd| *fd > 2)
    };
    let doc = fd(HANDOVER_FD_ENV);
    let old = fd(OLD_BINARY_FD_ENV);
    let rollback = std::env::var(ROLLBACK_ENV).ok();
    for name in [HANDOVER_FD_ENV, OLD_BINARY_FD_ENV, ROLLBACK_ENV] {
        std::env::remove_var(name);
    }
    Some((doc?, old?, rollback))
}
