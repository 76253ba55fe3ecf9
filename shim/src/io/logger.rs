//! `binary://` logging drivers: a binary the shim starts per process, which gets the
//! process's stdout on fd 3 and its stderr on fd 4 (read ends of pipes) and says it is
//! ready by writing to or closing fd 5. This is containerd's protocol (its Go shim and
//! the logging binaries written for it); the arguments come from the URI's query, the
//! environment is only `CONTAINER_ID` (init: the container id, an exec: its exec id) and
//! `CONTAINER_NAMESPACE`, stdin/stdout/stderr are /dev/null.
//!
//! Unlike the Go shim, which hands the logger's pipes to the container itself, the shim
//! keeps its output loops in between: the container writes into the shim's pipes, the
//! loops drain them into the logger's (with the bounded spool of [`super::spool`]), so a
//! slow or stuck logger never blocks the container's writes.
//!
//! The logger is watched through a pidfd opened before its exit could be reaped, so the
//! signals that stop it never reach a process that reused its pid. Stopping it (Delete)
//! closes its pipes, sends SIGTERM, and SIGKILL after [`STOP_GRACE`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use runc_client::Reaper;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::io::Interest;
use tokio::net::unix::pipe;

use super::Owner;
use crate::error::{Error, Result};

/// How long a logging binary may take to say it is ready. The Go shim waits forever; a
/// logger that never answers then hangs the Create or exec Start for good.
pub const READY_LIMIT: Duration = Duration::from_secs(30);
/// How long a logger may take to exit after SIGTERM before it is killed (the Go shim's
/// grace period).
pub const STOP_GRACE: Duration = Duration::from_secs(12);
/// How long to wait for the exit of a logger that was sent SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Lowest fd number the child's fds are parked at before they are moved to 3, 4 and 5,
/// so moving one never overwrites another.
const PARK_FDS_AT: RawFd = 10;

/// A running logging binary.
pub struct Logger {
    /// The process (container or exec) it logs, for messages.
    name: String,
    binary: PathBuf,
    pid: i32,
    /// Present until the logger was stopped; dropping a logger still holding it kills it.
    pidfd: Option<OwnedFd>,
}

/// A started, ready logger and the write ends of its stdout and stderr pipes.
pub struct Started {
    /// The logger.
    pub logger: Logger,
    /// Write end of the pipe the logger reads on its fd 3.
    pub stdout: pipe::Sender,
    /// Write end of the pipe the logger reads on its fd 4.
    pub stderr: pipe::Sender,
}

/// Starts `binary` with `args` for `owner`'s process and waits (at most `ready_limit`)
/// until it says it is ready.
pub async fn start(
    owner: &Owner<'_>,
    binary: &Path,
    args: &[String],
    ready_limit: Duration,
) -> Result<Started> {
    let id = owner.container;
    let what = |step: &str| format!("logging binary {}: {step}", binary.display());
    let pipe = |name: &str| {
        nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Error::io(id, what(&format!("{name} pipe")), e.into()))
    };
    let (out_r, out_w) = pipe("stdout")?;
    let (err_r, err_w) = pipe("stderr")?;
    let (ready_r, ready_w) = pipe("ready")?;
    let parked = [&out_r, &err_r, &ready_w]
        .map(|fd| fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(PARK_FDS_AT)))
        .into_iter()
        .collect::<nix::Result<Vec<RawFd>>>()
        .map_err(|e| Error::io(id, what("dup"), e.into()))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned these fds and nothing else owns them.
    let parked: Vec<OwnedFd> = parked
        .into_iter()
        .map(|fd| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
        .collect();
    let raw: [RawFd; 3] = [0, 1, 2].map(|i| parked[i].as_raw_fd());

    let mut cmd = Command::new(binary);
    cmd.args(args)
        .env_clear()
        .env("CONTAINER_ID", owner.process)
        .env("CONTAINER_NAMESPACE", owner.namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure only calls dup2 (async-signal-safe) on fds it copied by value.
    unsafe {
        cmd.pre_exec(move || {
            for (target, fd) in (3..).zip(raw) {
                // dup2 clears close-on-exec on the new fd; the parked copy closes at exec.
                if libc::dup2(fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (pid, pidfd) = Reaper::global()
        .spawn_with_pidfd(cmd)
        .map_err(|e| Error::io(id, what("start"), e))?;
    let logger = Logger {
        name: owner.process.to_string(),
        binary: binary.to_path_buf(),
        pid,
        pidfd: Some(pidfd.into()),
    };
    // Ours must go, or the logger closing its fd 5 is never seen as EOF.
    drop((parked, out_r, err_r, ready_w));
    log::info!(
        "{}: logging binary {} started as pid {pid}",
        logger.name,
        binary.display()
    );

    let mut ready =
        pipe::Receiver::from_owned_fd(ready_r).map_err(|e| Error::io(id, what("ready pipe"), e))?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(ready_limit, ready.read(&mut byte)).await {
        // A byte or EOF: ready (a logger that exited also closed fd 5, as in the Go shim).
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(Error::io(id, what("wait until ready"), e)),
        Err(_) => {
            // `logger` is dropped on return, which kills it.
            return Err(Error::io(
                id,
                what("wait until ready"),
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not ready (fd 5 neither written nor closed) within {ready_limit:?}"),
                ),
            ));
        }
    }
    let sender = |fd: OwnedFd, name: &str| {
        pipe::Sender::from_owned_fd(fd).map_err(|e| Error::io(id, what(name), e))
    };
    Ok(Started {
        stdout: sender(out_w, "stdout pipe")?,
        stderr: sender(err_w, "stderr pipe")?,
        logger,
    })
}

impl Logger {
    /// The logger's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Stops the logger: SIGTERM, then SIGKILL if it has not exited after `grace`. Its
    /// pipes should be closed first (the copy loops ended), so it has seen EOF and can
    /// flush and exit on its own.
    pub async fn stop(mut self, grace: Duration) {
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        // SAFETY: the AsyncFd owns the pidfd; nothing closes or replaces it while it lives.
        let pidfd = match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                let (pidfd, e) = e.into_parts();
                log::warn!(
                    "{}: cannot watch the logging binary: {e}; killing it",
                    self.name
                );
                // Dropping self now sends SIGKILL.
                self.pidfd = Some(pidfd);
                return;
            }
        };
        if exited(pidfd.get_ref()) {
            return;
        }
        if let Err(e) = send_signal(pidfd.get_ref(), libc::SIGTERM) {
            log::warn!("{}: SIGTERM to the logging binary: {e}", self.name);
        }
        if tokio::time::timeout(grace, pidfd.readable()).await.is_ok() {
            return;
        }
        log::warn!(
            "{}: logging binary {} (pid {}) still runs {grace:?} after SIGTERM; killing it",
            self.name,
            self.binary.display(),
            self.pid
        );
        if let Err(e) = send_signal(pidfd.get_ref(), libc::SIGKILL) {
            log::warn!("{}: SIGKILL to the logging binary: {e}", self.name);
        }
        if tokio::time::timeout(KILL_WAIT, pidfd.readable())
            .await
            .is_err()
        {
            log::warn!(
                "{}: logging binary pid {} survives SIGKILL",
                self.name,
                self.pid
            );
        }
    }

    /// [`Logger::stop`] for a caller that cannot wait: SIGTERM now, the rest in a task of
    /// its own (or SIGKILL at once outside a runtime).
    pub fn stop_detached(self) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(self.stop(STOP_GRACE));
            }
            Err(_) => drop(self),
        }
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        if let Some(pidfd) = &self.pidfd {
            if !exited(pidfd) {
                if let Err(e) = send_signal(pidfd, libc::SIGKILL) {
                    log::warn!("{}: SIGKILL to the logging binary: {e}", self.name);
                }
            }
        }
    }
}

/// Whether the process behind `pidfd` has exited (the pidfd polls readable).
fn exited(pidfd: &impl AsFd) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    matches!(
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
        Ok(n) if n > 0
    )
}

/// `pidfd_send_signal(2)`.
fn send_signal(pidfd: &impl AsFd, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid fd, a signal number, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_fd().as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests;
