//! Running one mount in a forked child that changes directory first.
//!
//! The daemon is multi-threaded and its working directory is shared by every thread, so
//! the chdir that lets shortened overlay paths resolve must happen in another process.
//! Between fork and `_exit` the child only makes async-signal-safe calls (chdir, mount,
//! write) on memory the [`Plan`] allocated before the fork, and reports a failure as
//! (step, errno) through a pipe. Its exit is collected by the process-wide reaper, which
//! owns `waitpid(-1)`: the subscription is made before forking so the exit cannot be missed.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{fork, ForkResult};
use runc_client::Reaper;

use super::plan::{Plan, Step};
use super::MountError;

/// Longest a helper may take; an overlay mount takes milliseconds.
const HELPER_DEADLINE: Duration = Duration::from_secs(60);
/// How long to wait for a killed helper's exit before giving up on collecting it.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Size of the child's failure report: step and errno, native-endian i32s.
const REPORT_LEN: usize = 8;
/// Exit status of a child that wrote a report.
const REPORTED: i32 = 1;

/// Makes the mount described by `plan` from a forked child and waits for it through `reaper`.
pub(super) async fn run(plan: &Plan, reaper: &Reaper) -> Result<(), MountError> {
    let helper_err = |reason: String| MountError::Helper {
        mount: plan.name().to_string(),
        reason,
    };
    let (report_r, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| helper_err(format!("pipe: {e}")))?;
    let mut exits = reaper.subscribe();
    // SAFETY: the child runs only `child`, which makes async-signal-safe calls on memory
    // allocated before the fork and never returns.
    let pid = match unsafe { fork() } {
        Ok(ForkResult::Child) => child(plan, report_w.as_raw_fd()),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(helper_err(format!("fork: {e}"))),
    };
    drop(report_w);
    Reaper::notify_spawned();

    let exit = match tokio::time::timeout(HELPER_DEADLINE, exits.wait_for(pid.as_raw())).await {
        Ok(exit) => exit,
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            let collected = tokio::time::timeout(KILL_GRACE, exits.wait_for(pid.as_raw()))
                .await
                .is_ok();
            return Err(helper_err(format!(
                "pid {pid} did not finish within {HELPER_DEADLINE:?}; killed{}",
                if collected {
                    ""
                } else {
                    " (exit not yet seen)"
                }
            )));
        }
    };
    match exit.status {
        0 => Ok(()),
        REPORTED => {
            let mut buf = [0u8; REPORT_LEN];
            // The child has exited: its report is in the pipe already, or never will be.
            match nix::unistd::read(&report_r, &mut buf) {
                Ok(REPORT_LEN) => {
                    let step = i32::from_ne_bytes(buf[..4].try_into().unwrap_or_default());
                    let errno = i32::from_ne_bytes(buf[4..].try_into().unwrap_or_default());
                    match Step::from_raw(step) {
                        Some(step) => Err(plan.failed(step, errno)),
                        None => Err(helper_err(format!("unknown failed step {step}"))),
                    }
                }
                other => Err(helper_err(format!(
                    "pid {pid} failed without a readable report ({other:?})"
                ))),
            }
        }
        status => Err(helper_err(format!("pid {pid} exited with status {status}"))),
    }
}

/// The forked child: mount, report, `_exit`. Never returns, never unwinds.
fn child(plan: &Plan, report: RawFd) -> ! {
    let code = match plan.syscalls() {
        Ok(()) => 0,
        Err((step, errno)) => {
            let mut buf = [0u8; REPORT_LEN];
            buf[..4].copy_from_slice(&(step as i32).to_ne_bytes());
            buf[4..].copy_from_slice(&errno.to_ne_bytes());
            // SAFETY: write(2) on a pipe we own, from a stack buffer; async-signal-safe.
            unsafe { libc::write(report, buf.as_ptr().cast(), REPORT_LEN) };
            REPORTED
        }
    };
    // SAFETY: _exit skips atexit handlers and destructors, which must not run in the child.
    unsafe { libc::_exit(code) }
}
