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
    /// What it was started with, for a restart.
    command: Vec<String>,
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
        let mut command = enter.to_vec();
        command.push(program.to_string_lossy().into_owned());
        command.extend_from_slice(args);
        Daemon::spawn_command(name, command, logs)
    }

    fn spawn_command(name: &str, command: Vec<String>, logs: &Path) -> Result<Daemon> {
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .ctx(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().ctx(|| "cloning log fd".into())?;
        let (first, rest) = command.split_first().expect("a program to run");
        let mut cmd = Command::new(first);
        cmd.args(rest)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .ctx(|| format!("spawning {name} ({})", command.join(" ")))?;
        Ok(Daemon {
            name: name.into(),
            pid: child.id() as i32,
            child: Some(child),
            log,
            command,
        })
    }

    /// Stops it (SIGTERM, SIGKILL after `grace`) and starts it again the same way, logging
    /// to the same file.
    pub fn restart(&mut self, grace: Duration) -> Result<()> {
        self.stop(grace);
        let logs = self.log.parent().map(Path::to_path_buf).unwrap_or_default();
        let fresh = Daemon::spawn_command(&self.name, self.command.clone(), &logs)?;
        *self = fresh;
        Ok(())
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
