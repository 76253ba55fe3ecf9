//! Processes as /proc shows them, and containerd taken down for a while: frozen
//! (SIGSTOP, its gRPC calls hang) or stopped (SIGTERM, its socket gone until a restart).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Fields of `/proc/PID/stat` after the command name (index 0 is field 3, the state).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// The state letter of `pid` (`R`, `S`, `T`, `Z`, …), `None` once it is gone from /proc.
pub fn proc_state(pid: i32) -> Option<String> {
    stat_fields(pid).and_then(|f| f.into_iter().next())
}

/// Whether `pid` still runs: exists, is no zombie and is not exiting.
///
/// A killed pid-namespace init (a sandbox's pause process) stays in the kernel's exit path
/// until every process of its namespace is reaped; the ones whose shim died are orphans of
/// PID 1, which on this host reaps only now and then (about once a second). Such a process
/// has taken its SIGKILL (PF_EXITING is set) and runs no code of its own any more.
pub fn running(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Some(fields) = stat_fields(pid) else {
        return false;
    };
    // fields[0] is field 3 (state); flags are field 9.
    let state = fields.first().map(String::as_str).unwrap_or("X");
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    !matches!(state, "Z" | "X") && flags & PF_EXITING == 0
}

/// Live children of `parent` (no zombies).
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Some(f) = stat_fields(pid) else {
            continue;
        };
        // fields[1] is field 4, the parent pid.
        if f.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) && f[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

pub fn procfs_cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Waits (blocking, polling) until `pid`'s state is one of `states` or it is gone.
fn wait_state(pid: i32, states: &[&str], limit: Duration) -> Option<String> {
    let end = Instant::now() + limit;
    loop {
        let s = proc_state(pid);
        match &s {
            Some(st) if states.contains(&st.as_str()) => return s,
            None => return None,
            _ if Instant::now() >= end => return s,
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// How containerd is taken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// SIGSTOP: alive with its sockets open, answering nothing (a hung containerd).
    Frozen,
    /// SIGTERM: exited, its socket gone (an operator's stop, before an upgrade).
    Stopped,
}

/// containerd (the fixture's daemon, by its pid) taken down; a frozen one is thawed on
/// drop so a failed test's teardown can talk to it.
pub struct ContainerdDown {
    pub pid: i32,
    pub how: Down,
    thawed: bool,
}

impl ContainerdDown {
    pub fn new(pid: i32, how: Down) -> ContainerdDown {
        match how {
            Down::Frozen => {
                kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP containerd");
                let st = wait_state(pid, &["T"], Duration::from_secs(5));
                assert_eq!(st.as_deref(), Some("T"), "containerd {pid} did not stop");
            }
            Down::Stopped => {
                kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM containerd");
                // The fixture's child: it stays a zombie until the fixture reaps it.
                let st = wait_state(pid, &["Z", "X"], Duration::from_secs(15));
                assert!(
                    st.is_none() || st.as_deref() == Some("Z") || st.as_deref() == Some("X"),
                    "containerd {pid} did not exit on SIGTERM (state {st:?})"
                );
            }
        }
        ContainerdDown {
            pid,
            how,
            thawed: false,
        }
    }

    /// A frozen containerd continues (a stopped one needs the fixture's `restart`).
    pub fn thaw(&mut self) {
        if self.how == Down::Frozen && !self.thawed {
            self.thawed = true;
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGCONT);
        }
    }
}

impl Drop for ContainerdDown {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// A shim `delete` run by `parent`, its process group stopped (SIGSTOP) until it is
/// killed or resumed. The watchdog starts each delete as a group leader, so a runtime the
/// delete runs stops with it.
pub struct HeldDelete {
    pub pgid: i32,
    pub args: Vec<String>,
    killed: bool,
}

impl HeldDelete {
    /// Polls `parent`'s children until one is a shim `delete`, and stops its group.
    pub async fn catch(parent: i32, limit: Duration) -> Option<HeldDelete> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            for pid in children_of(parent) {
                let args = procfs_cmdline(pid);
                if args
                    .iter()
                    .rev()
                    .find(|a| !a.is_empty())
                    .map(String::as_str)
                    != Some("delete")
                {
                    continue;
                }
                // Gone meanwhile (ESRCH): it finished before it could be held.
                if kill(Pid::from_raw(-pid), Signal::SIGSTOP).is_ok() {
                    return Some(HeldDelete {
                        pgid: pid,
                        args,
                        killed: false,
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }

    /// SIGCONT to the whole group: it carries on.
    pub fn resume(&mut self) {
        if !std::mem::replace(&mut self.killed, true) {
            let _ = kill(Pid::from_raw(-self.pgid), Signal::SIGCONT);
        }
    }

    /// SIGKILL to the whole group, as a service manager ends what its dead unit left.
    pub fn kill(&mut self) {
        if !std::mem::replace(&mut self.killed, true) {
            let _ = kill(Pid::from_raw(-self.pgid), Signal::SIGKILL);
        }
    }
}

impl Drop for HeldDelete {
    fn drop(&mut self) {
        // A failed test must not leave a stopped delete holding the bundle's lock.
        self.kill();
    }
}
