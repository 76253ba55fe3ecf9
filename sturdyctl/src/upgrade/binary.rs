//! A shim binary opened once and run only through that open file (`/proc/self/fd/N`, the
//! equivalent of `fexecve`): what was checked is what runs, even if its path is replaced in
//! between. Each run has a deadline and bounded output, and may hand the child one fd.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::trust;

use super::UpgradeError;

/// How long `-v`, `-info`, `--handover-sample` and `--check-handover` may take.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Most stdout kept of one run: a handover document's limit.
pub const MAX_STDOUT: u64 = 16 << 20;
/// Most stderr kept of one run.
const MAX_STDERR: u64 = 64 << 10;
/// The name the binary is run under (its `-info` derives the runtime name from it).
const ARGV0: &str = "containerd-shim-sturdy-v2";

/// An opened, checked shim binary.
#[derive(Debug)]
pub struct Binary {
    /// What it was opened as (the installed path, or `/proc/PID/exe` of a running shim).
    pub path: PathBuf,
    /// The file it resolved to when checked (symlinks followed): what a shim is told to
    /// open for its exec, which refuses a symlink and a file of another build.
    pub resolved: PathBuf,
    /// GNU build-id of the open file, hex.
    pub build_id: Option<String>,
    file: File,
}

/// What a run printed.
#[derive(Debug)]
pub struct Output {
    /// Standard output (at most [`MAX_STDOUT`]).
    pub stdout: Vec<u8>,
    /// Standard error, trimmed.
    pub stderr: String,
}

impl Binary {
    /// Opens the binary at `path` after [`trust::executable`], and checks that the open
    /// file is the one that was checked.
    pub fn installed(path: &Path) -> Result<Binary, UpgradeError> {
        let resolved = trust::executable(path).map_err(|e| UpgradeError::Untrusted {
            binary: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let file = open(&resolved).map_err(|e| UpgradeError::Untrusted {
            binary: path.to_path_buf(),
            reason: format!("open: {e}"),
        })?;
        let checked = std::fs::metadata(&resolved).map_err(|e| UpgradeError::Untrusted {
            binary: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        same_file(&file, &checked).map_err(|reason| UpgradeError::Untrusted {
            binary: path.to_path_buf(),
            reason,
        })?;
        Binary::from_file(path.to_path_buf(), resolved, file)
    }

    /// Opens the image process `pid` runs, after [`trust::process`] (root, from a binary
    /// only root can change), and checks that the open file is the image checked.
    pub fn running(pid: i32) -> Result<Binary, UpgradeError> {
        let untrusted = |reason: String| UpgradeError::OldImage { pid, reason };
        trust::process(pid).map_err(|e| untrusted(e.to_string()))?;
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let file = open(&exe).map_err(|e| untrusted(format!("open {}: {e}", exe.display())))?;
        // Checked again after opening: a process that ended in between (its pid reused)
        // shows another image now, or none.
        trust::process(pid).map_err(|e| untrusted(e.to_string()))?;
        let now = std::fs::metadata(&exe).map_err(|e| untrusted(e.to_string()))?;
        same_file(&file, &now).map_err(untrusted)?;
        Binary::from_file(exe.clone(), exe, file)
    }

    fn from_file(path: PathBuf, resolved: PathBuf, file: File) -> Result<Binary, UpgradeError> {
        let build_id = build_id::of_file(&file)
            .map_err(|e| UpgradeError::Run {
                binary: path.clone(),
                what: "read build-id".into(),
                reason: e.to_string(),
            })?
            .map(|i| i.to_string());
        Ok(Binary {
            path,
            resolved,
            build_id,
            file,
        })
    }

    /// Runs the open file with `args`, `stdin` (or none), and `pass` as the child's fd
    /// `target`; fails unless it exits 0 within [`DEADLINE`].
    pub fn run(
        &self,
        args: &[&str],
        stdin_null: bool,
        pass: Option<(RawFd, RawFd)>,
    ) -> Result<Output, UpgradeError> {
        let what = args.join(" ");
        let fail = |reason: String| UpgradeError::Run {
            binary: self.path.clone(),
            what: what.clone(),
            reason,
        };
        if pass.is_some_and(|(_, target)| target == self.file.as_raw_fd()) {
            return Err(fail("the fd to hand down is the binary's own".into()));
        }
        let mut cmd = Command::new(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
        cmd.arg0(ARGV0)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if stdin_null {
            cmd.stdin(Stdio::null());
        }
        if let Some((fd, target)) = pass {
            // SAFETY: dup2 and fcntl only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if fd == target {
                        let flags = libc::fcntl(fd, libc::F_GETFD);
                        libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                    } else if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| fail(format!("cannot run: {e}")))?;
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(fail("no pipes".into()));
        };
        let pid = child.id() as libc::pid_t;
        // Both pipes drained on their own threads (a chatty child never blocks on a full
        // pipe, and what is beyond the bound is read and dropped); the deadline is kept here.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let err_reader = std::thread::spawn(move || drain(err, MAX_STDERR));
            let stdout = drain(out, MAX_STDOUT);
            let stderr = err_reader.join().unwrap_or_default();
            let status = child.wait();
            let _ = tx.send((status, stdout, stderr));
        });
        let (status, stdout, stderr) = match rx.recv_timeout(DEADLINE) {
            Ok(done) => done,
            Err(_) => {
                // Our own child, not yet waited for by the thread that owns it: its pid
                // cannot have been reused.
                // SAFETY: kill(2) of our child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return Err(fail(format!("no exit within {DEADLINE:?} (killed)")));
            }
        };
        let (stdout, over) = stdout;
        let stderr = String::from_utf8_lossy(&stderr.0).trim().to_string();
        let status = status.map_err(|e| fail(e.to_string()))?;
        if !status.success() {
            return Err(fail(format!("{status}: {stderr}")));
        }
        if over {
            return Err(fail(format!("printed more than {MAX_STDOUT} bytes")));
        }
        Ok(Output { stdout, stderr })
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
}

fn same_file(file: &File, checked: &std::fs::Metadata) -> Result<(), String> {
    let open = file.metadata().map_err(|e| e.to_string())?;
    if (open.dev(), open.ino()) != (checked.dev(), checked.ino()) || !open.is_file() {
        return Err("the file opened is not the one checked (replaced meanwhile?)".into());
    }
    Ok(())
}

/// Reads up to `limit` bytes, then discards the rest; says whether there was more.
fn drain(mut r: impl Read, limit: u64) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let _ = (&mut r).take(limit).read_to_end(&mut kept);
    let more = std::io::copy(&mut r, &mut std::io::sink()).unwrap_or(0) > 0;
    (kept, more)
}
