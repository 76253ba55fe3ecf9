//! The node as `doctor` and `install` see it: files under a root directory and the output of
//! commands, both replaceable so tests run every check against a fixture tree and canned
//! command output instead of this machine.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
#[derive(Debug, Clone, Default)]
pub struct ScriptedRunner {
    outputs: HashMap<String, Result<String, RunError>>,
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
}

impl Runner for ScriptedRunner {
    fn run(&self, program: &Path, _args: &[&str]) -> Result<String, RunError> {
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

/// A process as /proc shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Its command line.
    pub cmdline: Vec<String>,
    /// Its executable (the /proc/PID/exe link; " (deleted)" when replaced or removed).
    pub exe: Option<PathBuf>,
    /// Its environment's PATH, when readable.
    pub path_env: Option<OsString>,
}

/// The node: a root directory that absolute paths are resolved under, a command runner and
/// the PATH commands are looked up on.
pub struct Host {
    /// `/` on a real node; a fixture tree in tests.
    pub root: PathBuf,
    /// Runs commands.
    pub runner: Box<dyn Runner>,
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
            path_env: std::env::var_os("PATH").unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            }),
        }
    }

    /// A fixture tree with canned command output.
    pub fn fixture(root: &Path, runner: impl Runner + 'static, path_env: &str) -> Host {
        Host {
            root: root.to_path_buf(),
            runner: Box::new(runner),
            path_env: path_env.into(),
        }
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
    /// node path; an absolute `name` is taken as is if it exists.
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

    /// Runs a node program (a node path) through the runner.
    pub fn run(&self, program: &Path, args: &[&str]) -> Result<String, RunError> {
        // A fixture's programs are scripted by their node path; a real node's are the same.
        self.runner.run(program, args)
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
            let path_env = std::fs::read(base.join("environ")).ok().and_then(|env| {
                env.split(|b| *b == 0)
                    .find_map(|kv| kv.strip_prefix(b"PATH="))
                    .map(|v| OsString::from(String::from_utf8_lossy(v).into_owned()))
            });
            out.push(Proc {
                pid,
                cmdline: crate::procfs::split_cmdline(&raw),
                exe: std::fs::read_link(base.join("exe")).ok(),
                path_env,
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
