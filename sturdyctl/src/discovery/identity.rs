//! Whether a process is the shim serving a bundle.
//!
//! A shim is started by containerd (as root, from a binary only root can change) right
//! before containerd records its address in the bundle. So the process must pass
//! [`trust::process`] and must have been running when the bundle's address was recorded:
//! a look-alike started later, after reading the id off `ps`, is not the shim, even when
//! it runs as root. The socket is the last word: the watchdog also checks that the pid
//! the shim names in its `Connect` reply is the process it watches.

use crate::procfs;
use crate::trust::{self, Untrusted};

use super::Task;

/// How much later than its bundle's address file a shim may appear to have started: the
/// boot time /proc gives is rounded to whole seconds.
pub const START_SLACK: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a process is not taken for a shim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotTheShim {
    /// Not root, or its executable is not root's alone.
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    /// It started after its bundle's address was recorded.
    #[error(
        "pid {pid} started at {started_ms} ms, after the shim's address was recorded \
         ({announced_ms} ms)"
    )]
    StartedLate {
        /// The process.
        pid: i32,
        /// Its start, ms since the Unix epoch.
        started_ms: u64,
        /// When the address was recorded, ms since the Unix epoch.
        announced_ms: u64,
    },
}

/// Checks that `pid` (started at `start_time`, clock ticks since boot) can be the shim
/// serving `tasks`.
pub fn check_shim_process(pid: i32, start_time: u64, tasks: &[Task]) -> Result<(), NotTheShim> {
    trust::process(pid)?;
    let announced = tasks.iter().filter_map(|t| t.announced_ms).min();
    if let (Some(announced_ms), Some(started_ms)) = (announced, procfs::start_epoch_ms(start_time))
    {
        if started_ms > announced_ms.saturating_add(START_SLACK.as_millis() as u64) {
            return Err(NotTheShim::StartedLate {
                pid,
                started_ms,
                announced_ms,
            });
        }
    }
    Ok(())
}
