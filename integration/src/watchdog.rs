//! `sturdyctl watchdog` as a child of a test, a benchmark or the demo: started against one
//! private containerd, read through its log and journal, and stopped by its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, IoContext, Result};
use crate::Containerd;

/// A running `sturdyctl watchdog`, SIGTERMed (then SIGKILLed) by PID on drop.
pub struct Watchdog {
    child: Child,
    bin: PathBuf,
    log: PathBuf,
    journal: PathBuf,
}

impl Watchdog {
    /// Starts `bin watchdog` for `fx`'s containerd with `args`, logging at `log_level`
    /// (tests want `debug`; a benchmark measures the default, `info`).
    ///
    /// Log and journal live in `<fx dir>/watchdog`; a watchdog started again for the same
    /// fixture gets a log of its own and shares the journal, as a restarted one would.
    pub fn spawn(bin: &Path, fx: &Containerd, args: &[&str], log_level: &str) -> Result<Watchdog> {
        Watchdog::spawn_in(&[], bin, fx, args, log_level)
    }

    /// [`Watchdog::spawn`] through `launcher`, a command prefix that execs it in place: a
    /// Kubernetes node's containerd lives in the node's mount namespace, and so do its shims'
    /// sockets (`crate::kube::KubeNode::enter`).
    pub fn spawn_in(
        launcher: &[String],
        bin: &Path,
        fx: &Containerd,
        args: &[&str],
        log_level: &str,
    ) -> Result<Watchdog> {
        if !bin.is_file() {
            return Err(Error::Io {
                context: format!("{} is missing: build the workspace first", bin.display()),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let dir = fx.dir().join("watchdog");
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let log = (0..)
            .map(|n| match n {
                0 => dir.join("watchdog.log"),
                n => dir.join(format!("watchdog.{n}.log")),
            })
            .find(|p| !p.exists())
            .unwrap_or_else(|| dir.join("watchdog.log"));
        let journal = dir.join("watchdog.journal");
        let stderr = std::fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
        let mut command = match launcher.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .arg("watchdog")
            .arg("--address")
            .arg(fx.socket())
            .arg("--state-dir")
            .arg(fx.state_dir())
            .arg("--journal")
            .arg(&journal)
            .args(args)
            .env("STURDYCTL_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .ctx(|| format!("starting {} watchdog", bin.display()))?;
        Ok(Watchdog {
            child,
            bin: bin.to_path_buf(),
            log,
            journal,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its journal file.
    pub fn journal_path(&self) -> &Path {
        &self.journal
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Journal entries (JSON lines).
    pub fn journal(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Whether its log has a line containing all of `needles`.
    pub fn logged(&self, needles: &[&str]) -> bool {
        self.log()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// Whether it watches the shim at `address` (any address: "") with pid `pid`.
    pub fn watching(&self, address: &str, pid: i32) -> bool {
        self.logged(&["watching shim", address, &format!("pid {pid} ")])
    }

    /// Entries of the incidents whose `started` entry concerns the shim at `address`.
    pub fn incident_entries(&self, address: &str) -> Vec<serde_json::Value> {
        let entries = self.journal();
        let ids: Vec<String> = entries
            .iter()
            .filter(|e| e["phase"] == "started" && e["shim"]["address"] == address)
            .filter_map(|e| e["incident"].as_str().map(String::from))
            .collect();
        entries
            .into_iter()
            .filter(|e| ids.iter().any(|id| e["incident"] == id.as_str()))
            .collect()
    }

    /// Whether an incident of the shim at `address` has finished.
    pub fn finished(&self, address: &str) -> bool {
        self.incident_entries(address)
            .iter()
            .any(|e| e["phase"] == "finished")
    }

    /// How many incidents have finished.
    pub fn finished_incidents(&self) -> usize {
        self.journal()
            .iter()
            .filter(|e| e["phase"] == "finished")
            .count()
    }

    /// Runs `sturdyctl status` about the same containerd and journal, with `extra` flags.
    pub fn status(&self, fx: &Containerd, extra: &[&str]) -> Result<std::process::Output> {
        Command::new(&self.bin)
            .arg("status")
            .arg("--address")
            .arg(fx.socket())
            .arg("--state-dir")
            .arg(fx.state_dir())
            .arg("--journal")
            .arg(&self.journal)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .ctx(|| format!("running {} status", self.bin.display()))
    }

    /// SIGKILL now (no chance to finish anything), and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after 25 s; how it exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        // Reaped already (stopped before): its pid may belong to another process by now.
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(25);
            while Instant::now() < end {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        self.child.wait().ok()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- watchdog log ---\n{}", self.log());
        }
    }
}
