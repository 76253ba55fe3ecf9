//! The node as `doctor` and `install` see it: files under a root directory, the output of
//! commands and which paths and processes only root can change, all replaceable so tests run
//! every check against a fixture tree, canned command output and scripted trust instead of
//! this machine.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::trust::Untrusted;

/// How long a probed command (`runc --version`, …) may take: a hung binary is a finding, not
/// a hung doctor (incident 002).
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(10);

/// A command that could not be run or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunError {
    /// It could not be started.
    #[error("{program}: cannot run: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// It did not finish in time and was killed.
    #[error("{program}: no exit within {deadline:?} (killed)")]
    Timeout {
        /// The program.
        program: String,
        /// The deadline.
        deadline: Duration,
    },
    /// It was not run: someone other than root can change it (security review 2026-12, H2).
    #[error("{program}: not run: {reason}")]
    Untrusted {
        /// The program.
        program: String,
        /// Why it is not trusted.
        reason: crate::trust::Untrusted,
    },
    /// It exited unsuccessfully.
    #[error("{program}: {status}: {output}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed (trimmed).
        output: String,
    },
}

/// Runs commands and returns what they printed (stdout, then stderr).
pub trait Runner: Send + Sync {
    /// Runs `program` with `args`.
    fn run(&self, program: &Path, args: &[&str]) -> Result<String, RunError>;
}

/// Runs real commands, each under a deadline.
#[derive(Debug, Clone)]
pub struct SystemRunner {
    /// Deadline per command.
    pub deadline: Duration,
}

impl Runner for SystemRunner {
    fn run(&self, program: &Path, args: &[&str]) -> Result<String, RunError> {
        let name = program.display().to_string();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RunError::Spawn {
                program: name.clone(),
                reason: e.to_string(),
            })?;
        let pid = child.id() as libc::pid_t;
        let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(RunError::Spawn {
                program: name,
                reason: "no pipes".into(),
            });
        };
        // Both pipes are drained on their own threads while the child runs, so a chatty
        // child never blocks on a full pipe; the deadline is kept on this thread.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stderr = Vec::new();
            let err_reader = std::thread::spawn(move || {
                let _ = err.read_to_end(&mut stderr);
                stderr
            });
            let mut stdout = Vec::new();
            let _ = out.read_to_end(&mut stdout);
            let stderr = err_reader.join().unwrap_or_default();
            let status = child.wait();
            let _ = tx.send((status, stdout, stderr));
        });
        match rx.recv_timeout(self.deadline) {
            Ok((status, stdout, stderr)) => {
                let mut text = String::from_utf8_lossy(&stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&stderr));
                let status = status.map_err(|e| RunError::Spawn {
                    program: name.clone(),
                    reason: e.to_string(),
                })?;
                if status.success() {
                    Ok(text)
                } else {
                    Err(RunError::Failed {
                        program: name,
                        status: status.to_string(),
                        output: text.trim().to_string(),
                    })
                }
            }
            Err(_) => {
                // The waiting thread still owns the child, so the pid cannot have been
                // reaped and reused yet.
                // SAFETY: kill(2) of our own unreaped child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                Err(RunError::Timeout {
                    program: name,
                    deadline: self.deadline,
                })
            }
        }
    }
}

/// Canned command output for tests: keyed by the program's full path or its file name.
/// Clones share the record of what was run.
#[derive(Debug, Clone, Default)]
pub struct ScriptedRunner {
    outputs: HashMap<String, Result<String, RunError>>,
    ran: Arc<Mutex<Vec<PathBuf>>>,
}

impl ScriptedRunner {
    /// No commands known: every run fails as if the program did not exist.
    pub fn new() -> Self {
        Self::default()
    }

    /// `program` (path or file name) prints `output` and succeeds.
    pub fn with(mut self, program: &str, output: &str) -> Self {
        self.outputs
            .insert(program.to_string(), Ok(output.to_string()));
        self
    }

    /// `program` fails with `error`.
    pub fn failing(mut self, program: &str, error: RunError) -> Self {
        self.outputs.insert(program.to_string(), Err(error));
        self
    }

    /// Every program run so far (by this runner or a clone), in order.
    pub fn ran(&self) -> Vec<PathBuf> {
        self.ran.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Runner for ScriptedRunner {
    fn run(&self, program: &Path, _args: &[&str]) -> Result<String, RunError> {
        self.ran
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(program.to_path_buf());
        let full = program.display().to_string();
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.outputs
            .get(&full)
            .or_else(|| self.outputs.get(&name))
            .cloned()
            .unwrap_or_else(|| {
                Err(RunError::Spawn {
                    program: full,
                    reason: "No such file or directory (scripted)".into(),
                })
            })
    }
}

/// Which paths and processes only root can change: [`crate::trust`] on a real node, a
/// script on a fixture tree. Paths are node paths.
pub trait Trust: Send + Sync {
    /// [`crate::trust::executable`].
    fn executable(&self, path: &Path) -> Result<PathBuf, Untrusted>;
    /// [`crate::trust::directory`].
    fn directory(&self, path: &Path) -> Result<PathBuf, Untrusted>;
    /// [`crate::trust::process`].
    fn process(&self, pid: i32) -> Result<(), Untrusted>;
}

/// This machine's trust: [`crate::trust`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemTrust;

impl Trust for SystemTrust {
    fn executable(&self, path: &Path) -> Result<PathBuf, Untrusted> {
        crate::trust::executable(path)
    }

    fn directory(&self, path: &Path) -> Result<PathBuf, Untrusted> {
        crate::trust::directory(path)
    }

    fn process(&self, pid: i32) -> Result<(), Untrusted> {
        crate::trust::process(pid)
    }
}

/// Trust in a fixture tree: every path is trusted except those under a prefix declared
/// writable by others; a process is trusted if its fixture `/proc/PID/status` says uid 0
/// and its `/proc/PID/exe` link names a trusted path.
#[derive(Debug, Clone, Default)]
pub struct ScriptedTrust {
    root: PathBuf,
    untrusted: Vec<PathBuf>,
}

impl ScriptedTrust {
    /// Everything under `root` trusted.
    pub fn new(root: &Path) -> Self {
        ScriptedTrust {
            root: root.to_path_buf(),
            untrusted: Vec::new(),
        }
    }

    /// Node paths under `prefix` are writable by others.
    pub fn untrusted(mut self, prefix: impl Into<PathBuf>) -> Self {
        self.untrusted.push(prefix.into());
        self
    }

    fn check(&self, path: &Path) -> Result<PathBuf, Untrusted> {
        if !path.is_absolute() {
            return Err(Untrusted::Relative(path.to_path_buf()));
        }
        match self.untrusted.iter().find(|p| path.starts_with(p)) {
            Some(p) => Err(Untrusted::Writable {
                path: p.clone(),
                mode: 0o777,
            }),
            None => Ok(path.to_path_buf()),
        }
    }
}

impl Trust for ScriptedTrust {
    fn executable(&self, path: &Path) -> Result<PathBuf, Untrusted> {
        self.check(path)
    }

    fn directory(&self, path: &Path) -> Result<PathBuf, Untrusted> {
        self.check(path)
    }

    fn process(&self, pid: i32) -> Result<(), Untrusted> {
        let base = self.root.join(format!("proc/{pid}"));
        let gone = |what: &str| Untrusted::Process {
            pid,
            error: format!("{what}: not in the fixture"),
        };
        let status = std::fs::read_to_string(base.join("status")).map_err(|_| gone("status"))?;
        let (real, effective) = crate::trust::parse_uids(&status).ok_or_else(|| gone("Uid"))?;
        if real != 0 || effective != 0 {
            return Err(Untrusted::NotRoot {
                pid,
                uid: real.max(effective),
            });
        }
        let exe = std::fs::read_link(base.join("exe")).map_err(|_| gone("exe"))?;
        self.check(&exe).map(|_| ())
    }
}

/// A process as /proc shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Its command line.
    pub cmdline: Vec<String>,
    /// Its executable (the /proc/PID/exe link; " (deleted)" when replaced or removed).
    pub exe: Option<PathBuf>,
    /// Its real and effective uid, when readable.
    pub uids: Option<(u32, u32)>,
}

/// The node: a root directory that absolute paths are resolved under, a command runner, the
/// trust in its paths and processes, and the PATH commands are looked up on.
pub struct Host {
    /// `/` on a real node; a fixture tree in tests.
    pub root: PathBuf,
    /// Runs commands.
    pub runner: Box<dyn Runner>,
    /// Decides what may be run and which process may be believed.
    pub trust: Box<dyn Trust>,
    /// The PATH used to find commands (sturdyctl's own).
    pub path_env: OsString,
}

impl Host {
    /// This machine.
    pub fn system() -> Host {
        Host {
            root: PathBuf::from("/"),
            runner: Box::new(SystemRunner {
                deadline: COMMAND_DEADLINE,
            }),
            trust: Box::new(SystemTrust),
            path_env: std::env::var_os("PATH").unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            }),
        }
    }

    /// A fixture tree with canned command output; everything in it is trusted.
    pub fn fixture(root: &Path, runner: impl Runner + 'static, path_env: &str) -> Host {
        Host {
            root: root.to_path_buf(),
            runner: Box::new(runner),
            trust: Box::new(ScriptedTrust::new(root)),
            path_env: path_env.into(),
        }
    }

    /// Replaces the trust (a fixture's script).
    pub fn with_trust(mut self, trust: impl Trust + 'static) -> Host {
        self.trust = Box::new(trust);
        self
    }

    /// Where the node's absolute path `p` is on this machine.
    pub fn path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        match p.strip_prefix("/") {
            Ok(rel) => self.root.join(rel),
            Err(_) => self.root.join(p),
        }
    }

    /// Reads a node file as text.
    pub fn read(&self, p: impl AsRef<Path>) -> std::io::Result<String> {
        std::fs::read_to_string(self.path(p))
    }

    /// The first executable file called `name` on `path_env` (or sturdyctl's PATH), as a
    /// node path: the one a lookup on that PATH would run, trusted or not (only
    /// [`Host::run`] decides that); an absolute `name` is taken as is if it exists.
    pub fn which(&self, name: &str, path_env: Option<&OsString>) -> Option<PathBuf> {
        let executable = |p: &Path| {
            std::fs::metadata(self.path(p))
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        };
        if name.starts_with('/') {
            let p = PathBuf::from(name);
            return executable(&p).then_some(p);
        }
        let paths = path_env.unwrap_or(&self.path_env);
        std::env::split_paths(paths)
            .filter(|d| d.is_absolute())
            .map(|d| d.join(name))
            .find(|p| executable(p))
    }

    /// Runs a node program through the runner, if only root can change it (checked now, at
    /// use: doctor runs as root, and a path found on a PATH or through a process is only a
    /// name until then).
    pub fn run(&self, program: &Path, args: &[&str]) -> Result<String, RunError> {
        self.trust
            .executable(program)
            .map_err(|reason| RunError::Untrusted {
                program: program.display().to_string(),
                reason,
            })?;
        // A fixture's programs are scripted by their node path; a real node's are the same.
        self.runner.run(program, args)
    }

    /// The PATH in the environment `pid` started with, when readable. Only a trusted
    /// process's environment means anything, and even then each directory on it is checked
    /// before anything found there is run.
    pub fn path_env_of(&self, pid: i32) -> Option<OsString> {
        let env = std::fs::read(self.path(format!("/proc/{pid}/environ"))).ok()?;
        env.split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"PATH="))
            .map(|v| OsString::from(String::from_utf8_lossy(v).into_owned()))
    }

    /// Every process /proc lists (those that vanish while read are skipped).
    pub fn processes(&self) -> Vec<Proc> {
        let Ok(dir) = std::fs::read_dir(self.path("/proc")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let base = entry.path();
            let Ok(raw) = std::fs::read(base.join("cmdline")) else {
                continue;
            };
            let uids = std::fs::read_to_string(base.join("status"))
                .ok()
                .and_then(|s| crate::trust::parse_uids(&s));
            out.push(Proc {
                pid,
                cmdline: crate::procfs::split_cmdline(&raw),
                exe: std::fs::read_link(base.join("exe")).ok(),
                uids,
            });
        }
        out.sort_by_key(|p| p.pid);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_runner_returns_output_and_kills_at_the_deadline() {
        let r = SystemRunner {
            deadline: Duration::from_secs(5),
        };
        assert_eq!(
            r.run(Path::new("/bin/sh"), &["-c", "echo out; echo err >&2"])
                .unwrap(),
            "out\nerr\n"
        );
        let e = r
            .run(Path::new("/bin/sh"), &["-c", "echo no; exit 3"])
            .unwrap_err();
        assert!(
            matches!(&e, RunError::Failed { output, .. } if output == "no"),
            "{e}"
        );
        let e = r.run(Path::new("/nonexistent/x"), &[]).unwrap_err();
        assert!(matches!(e, RunError::Spawn { .. }), "{e}");
        let r = SystemRunner {
            deadline: Duration::from_millis(200),
        };
        let e = r.run(Path::new("/bin/sleep"), &["30"]).unwrap_err();
        assert!(matches!(e, RunError::Timeout { .. }), "{e}");
    }

    #[test]
    fn run_checks_the_program_at_use() {
        let dir = tempfile::tempdir().unwrap();
        let runner = ScriptedRunner::new().with("runc", "runc version 1.2.8\n");
        let host = Host::fixture(dir.path(), runner.clone(), "/usr/bin")
            .with_trust(ScriptedTrust::new(dir.path()).untrusted("/home"));
        assert!(host.run(Path::new("/usr/bin/runc"), &[]).is_ok());
        let e = host.run(Path::new("/home/u/runc"), &[]).unwrap_err();
        assert!(
            matches!(&e, RunError::Untrusted { program, .. } if program == "/home/u/runc"),
            "{e}"
        );
        assert_eq!(runner.ran(), vec![PathBuf::from("/usr/bin/runc")]);
        // The real trust: /tmp is world-writable, so nothing under it runs.
        let e = Host::system().run(&dir.path().join("x"), &[]).unwrap_err();
        assert!(matches!(e, RunError::Untrusted { .. }), "{e}");
    }

    #[test]
    fn which_looks_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("runc"), "").unwrap();
        std::fs::write(bin.join("notexec"), "").unwrap();
        std::fs::set_permissions(bin.join("runc"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let host = Host::fixture(dir.path(), ScriptedRunner::new(), "/usr/local/bin:/usr/bin");
        assert_eq!(
            host.which("runc", None),
            Some(PathBuf::from("/usr/bin/runc"))
        );
        assert_eq!(host.which("notexec", None), None);
        assert_eq!(
            host.which("/usr/bin/runc", None),
            Some(PathBuf::from("/usr/bin/runc"))
        );
        assert_eq!(host.path("/etc/x"), dir.path().join("etc/x"));
    }
}
