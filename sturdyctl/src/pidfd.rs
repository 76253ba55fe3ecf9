//! Process handles that cannot be redirected by pid reuse.
//!
//! Every signal the watchdog sends goes through a pidfd, opened only after /proc showed
//! the start time and executable discovery recorded, and checked again once open: a pidfd
//! keeps naming the process it was opened for, so once both checks agree it can never
//! reach a process that later takes the same pid. Exits are noticed through the pidfd's
//! readability instead of polling.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::procfs::{self, ProcIdentity};

/// Why a recorded process may not be signalled.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The pid no longer exists or has exited.
    #[error("pid {pid} is gone")]
    Gone {
        /// The recorded pid.
        pid: i32,
    },
    /// The pid now belongs to another process.
    #[error(
        "pid {pid} is another process now (start time {found_start}, exe {found_exe}; \
         recorded {expected_start}, {expected_exe})"
    )]
    Reused {
        /// The recorded pid.
        pid: i32,
        /// Recorded start time.
        expected_start: u64,
        /// Start time found now.
        found_start: u64,
        /// Recorded executable.
        expected_exe: String,
        /// Executable found now.
        found_exe: String,
    },
    /// A syscall failed.
    #[error("pid {pid}: {op}: {source}")]
    Os {
        /// The recorded pid.
        pid: i32,
        /// What was attempted.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// Compares what /proc says about `expected.pid` now with the recorded identity.
pub fn verify(expected: &ProcIdentity) -> Result<(), IdentityError> {
    let pid = expected.pid;
    let (state, start) = procfs::stat(pid).map_err(|_| IdentityError::Gone { pid })?;
    let exe = procfs::exe(pid).map_err(|_| IdentityError::Gone { pid })?;
    if start != expected.start_time || exe != expected.exe {
        return Err(IdentityError::Reused {
            pid,
            expected_start: expected.start_time,
            found_start: start,
            expected_exe: expected.exe.display().to_string(),
            found_exe: exe.display().to_string(),
        });
    }
    if state == 'Z' || state == 'X' {
        return Err(IdentityError::Gone { pid });
    }
    Ok(())
}

/// A pidfd of a verified process.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    identity: ProcIdentity,
}

impl Pidfd {
    /// Opens a pidfd for the process `expected` describes, refusing if the pid now names
    /// another process or none.
    pub fn open(expected: &ProcIdentity) -> Result<Self, IdentityError> {
        let pid = expected.pid;
        verify(expected)?;
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ESRCH) => IdentityError::Gone { pid },
                _ => IdentityError::Os {
                    pid,
                    op: "pidfd_open",
                    source: e,
                },
            });
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        // The pid could have been reaped and reused between the check and the open: if
        // /proc still shows the recorded process now, the fd names it (a pid is only
        // reused after its process is reaped, and the recorded start time is unique).
        verify(expected)?;
        Ok(Self {
            fd,
            identity: expected.clone(),
        })
    }

    /// The process this pidfd names.
    pub fn identity(&self) -> &ProcIdentity {
        &self.identity
    }

    /// Sends `signal` to the process; never to another process holding the pid later.
    pub fn signal(&self, signal: i32) -> Result<(), IdentityError> {
        // SAFETY: pidfd_send_signal(2) on our own pidfd with no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ESRCH) => IdentityError::Gone {
                    pid: self.identity.pid,
                },
                _ => IdentityError::Os {
                    pid: self.identity.pid,
                    op: "pidfd_send_signal",
                    source: e,
                },
            });
        }
        Ok(())
    }

    /// True once the process has exited (the pidfd is readable then).
    pub fn exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        rc > 0 && pfd.revents & libc::POLLIN != 0
    }

    /// Resolves when the process exits. Only one waiter per pidfd at a time.
    pub async fn wait_exit(&self) -> Result<(), IdentityError> {
        // SAFETY: the borrowed fd is ours and stays open for as long as `afd`, which
        // cannot outlive this call.
        let afd = unsafe { AsyncFd::register_with_interest(self.fd.as_fd(), Interest::READABLE) }
            .map_err(|e| IdentityError::Os {
            pid: self.identity.pid,
            op: "register pidfd",
            source: std::io::Error::other(e.to_string()),
        })?;
        loop {
            let mut guard = afd.readable().await.map_err(|e| IdentityError::Os {
                pid: self.identity.pid,
                op: "wait for pidfd",
                source: e,
            })?;
            if self.exited() {
                return Ok(());
            }
            guard.clear_ready();
        }
    }
}

/// Sends `signal` to the recorded process only if it is still that process.
pub fn signal_verified(expected: &ProcIdentity, signal: i32) -> Result<(), IdentityError> {
    Pidfd::open(expected)?.signal(signal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    fn sleeper() -> std::process::Child {
        Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep")
    }

    #[test]
    fn reused_pid_is_never_signalled() {
        let mut child = sleeper();
        let pid = child.id() as i32;
        let real = procfs::identity(pid).unwrap();
        // What discovery would have recorded for an earlier process with this pid.
        let earlier = ProcIdentity {
            start_time: real.start_time.saturating_sub(1),
            ..real.clone()
        };
        let err = signal_verified(&earlier, libc::SIGKILL).unwrap_err();
        assert!(matches!(err, IdentityError::Reused { .. }), "{err}");
        let other_exe = ProcIdentity {
            exe: "/usr/bin/containerd-shim-runc-v2".into(),
            ..real.clone()
        };
        assert!(matches!(
            signal_verified(&other_exe, libc::SIGKILL),
            Err(IdentityError::Reused { .. })
        ));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process holding the reused pid was signalled"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn verified_kill_and_exit_notice() {
        let mut child = sleeper();
        let pid = child.id() as i32;
        let fd = Pidfd::open(&procfs::identity(pid).unwrap()).unwrap();
        assert!(!fd.exited());
        fd.signal(libc::SIGKILL).unwrap();
        tokio::time::timeout(Duration::from_secs(5), fd.wait_exit())
            .await
            .expect("exit noticed")
            .unwrap();
        // Exited but not reaped: the pidfd still refuses to reach anything else.
        assert!(fd.exited());
        child.wait().unwrap();
        assert!(matches!(
            Pidfd::open(fd.identity()),
            Err(IdentityError::Gone { .. })
        ));
    }
}
