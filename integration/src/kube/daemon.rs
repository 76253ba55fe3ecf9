//! One long-running component of the node: started into the node's namespaces, logged to
//! `<dir>/logs/<name>.log`, stopped by its PID.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{IoContext, Result};

/// A started component.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    pid: i32,
    log: PathBuf,
}

/// Makes a component die with the thread that started it: a test driver that is killed
/// must not leave a control plane behind.
pub(super) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Daemon {
    /// Runs `program args` through `enter` (a prefix that execs in place) with its output
    /// in `<logs>/<name>.log`.
    pub fn spawn(
        name: &str,
        enter: &[String],
        program: &Path,
        args: &[String],
        logs: &Path,
    ) -> Result<Daemon> {
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .ctx(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().ctx(|| "cloning log fd".into())?;
        let (first, rest) = enter
            .split_first()
            .map(|(f, r)| (f.as_str(), r))
            .unwrap_or((program.to_str().unwrap_or_default(), &[]));
        let mut cmd = Command::new(first);
        cmd.args(rest);
        if !enter.is_empty() {
            cmd.arg(program);
        }
        cmd.args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .ctx(|| format!("spawning {name} ({})", program.display()))?;
        Ok(Daemon {
            name: name.into(),
            pid: child.id() as i32,
            child: Some(child),
            log,
        })
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its PID (the program's own: the launcher execs it).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::containerd::log_tail(&self.log, lines)
    }

    /// SIGTERM by PID, SIGKILL after `grace`; reaped either way. A blocking wait: it runs
    /// in teardown, inside or outside any async runtime.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}
