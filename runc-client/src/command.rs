//! Running one runc command to completion: spawn, drain, deadline, error extraction.
//!
//! The discipline here is what keeps a shim alive when runc misbehaves: output is always
//! read (so runc never blocks on a full pipe), a grandchild holding a pipe cannot keep a
//! call open, and a runc that never exits is killed with everything it started.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;

use crate::config::RuncConfig;
use crate::drain::{drain, Retained};
use crate::error::{Error, Result};
use crate::io::{async_reader, async_writer, set_pipe_capacity, Pipe, ProcessIo};
use crate::private::PrivateDir;
use crate::reaper::Reaper;

/// How long output is still read after runc exited, for a grandchild may hold the pipe forever.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_millis(100);

/// How much of a shared log file is scanned for runc's error.
const LOG_TAIL: u64 = 256 * 1024;

/// One invocation, as built by [`crate::Runc`].
pub(crate) struct Call<'a> {
    pub command: &'static str,
    pub id: &'a str,
    /// The subcommand and everything after it.
    pub args: Vec<OsString>,
    pub deadline: Duration,
    /// Bytes fed to runc's stdin (only when `io` is None).
    pub stdin: Option<Vec<u8>>,
    /// Some: runc's stdio is handed over and not drained (create/exec/restore).
    pub io: Option<ProcessIo>,
    pub extra_files: Vec<OwnedFd>,
    /// A private directory that lives as long as the call (exec's spec is in it); a
    /// per-call log goes there too.
    pub scratch: Option<PrivateDir>,
    /// Bytes of stdout to retain when the configured output limit is too small for what
    /// the call must parse whole.
    pub stdout_limit: Option<usize>,
    /// Ends the call early when it resolves (see [`crate::Runc::exec_until`]).
    pub abort: Option<Abort<'a>>,
}

/// What ends a call early.
pub(crate) type Abort<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// How long an aborted call waits for the killed runc's exit, to tell whether runc had
/// finished on its own first.
const ABORT_REAP_LIMIT: Duration = Duration::from_secs(5);

/// What a successful command printed, bounded to the configured output limit.
#[derive(Debug)]
pub struct Output {
    /// runc's exit status (always 0 for a returned Output).
    pub status: i32,
    /// What runc printed on stdout, bounded.
    pub stdout: Retained,
    /// What runc printed on stderr, bounded.
    pub stderr: Retained,
}

/// Where runc writes its JSON log for one call.
pub(crate) enum LogTarget {
    /// No --log: runc logs JSON to its stderr, which the client drains anyway. Cheapest,
    /// since runc then opens no file; only possible when stderr is not handed over.
    Stderr,
    /// A per-call 0600 file in a private directory: runc's errors may quote the process
    /// spec. `_own` is that directory when the call brought none; either way it is removed
    /// with the call.
    Temp {
        path: PathBuf,
        _own: Option<PrivateDir>,
    },
    /// The configured file; only what was appended after `offset` belongs to this call.
    Shared { path: PathBuf, offset: u64 },
}

impl LogTarget {
    /// `stderr_drained`: whether the client reads runc's stderr for this call; a per-call
    /// log goes into `scratch` when given, else into a private directory of its own.
    pub(crate) fn prepare(
        cfg: &RuncConfig,
        stderr_drained: bool,
        scratch: Option<&PrivateDir>,
    ) -> std::io::Result<LogTarget> {
        Ok(match &cfg.log {
            Some(path) => LogTarget::Shared {
                path: path.clone(),
                offset: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            },
            None if stderr_drained => LogTarget::Stderr,
            None => {
                let own = match scratch {
                    Some(_) => None,
                    None => Some(PrivateDir::new(&std::env::temp_dir(), "runc-log")?),
                };
                // runc appends to an existing log and keeps its mode.
                let dir = scratch.or(own.as_ref()).expect("one of them is set");
                let path = dir.create_file("log.json", b"")?;
                LogTarget::Temp { path, _own: own }
            }
        })
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            LogTarget::Stderr => None,
            LogTarget::Temp { path, .. } => Some(path),
            LogTarget::Shared { path, .. } => Some(path),
        }
    }

    /// The `msg` of the last "error" entry runc logged during this call.
    pub(crate) fn last_error(&self, stderr: &Retained) -> Option<String> {
        let (path, offset) = match self {
            LogTarget::Stderr => return last_error_in(&stderr.to_string_lossy()),
            LogTarget::Temp { path, .. } => (path, 0),
            LogTarget::Shared { path, offset } => (path, *offset),
        };
        let mut file = std::fs::File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        let start = offset.max(len.saturating_sub(LOG_TAIL));
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start)).ok()?;
        let mut text = Vec::new();
        file.take(len - start).read_to_end(&mut text).ok()?;
        last_error_in(&String::from_utf8_lossy(&text))
    }
}

/// Spawns `cmd` for the reaper to collect and returns its pid: the std `Child` is dropped
/// (which neither waits nor kills) and the reaper is told a child exists.
///
/// The child starts with default signal dispositions and an empty mask, whatever this
/// process ignores or blocks: without that, runc and through it every container's init
/// inherited signals 32 and 33 ignored (glibc's posix_spawn, which std uses when it can,
/// leaves its internal signals SIG_IGN in the child) and this thread's blocked signals.
pub(crate) fn spawn_reaped(
    cmd: std::process::Command,
    command: &'static str,
    id: &str,
    cfg: &RuncConfig,
    reaper: &Reaper,
) -> Result<i32> {
    let (child, _hold) = spawn_held(cmd, reaper).map_err(|source| Error::Spawn {
        command,
        id: id.to_string(),
        binary: cfg.binary.clone(),
        source,
    })?;
    Ok(child.id() as i32)
}

/// Spawns `cmd` with default signal dispositions (see [`spawn_reaped`]) and returns the
/// std `Child` (drop it: the reaper collects the exit) with the reaper still held, so the
/// caller can look at the fresh pid before its exit could be collected.
pub(crate) fn spawn_held(
    mut cmd: std::process::Command,
    reaper: &Reaper,
) -> std::io::Result<(std::process::Child, crate::reaper::ReapHold)> {
    // SAFETY: reset_signals only makes raw syscalls: async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(reset_signals);
    }
    // With pre_exec std forks, and if exec then fails it reaps the child itself and
    // panics when our reaper got there first: keep the reaper off during that window.
    let hold = reaper.hold();
    let spawned = cmd.spawn();
    // The Command holds the child's ends of the pipes: close them or EOF never comes.
    drop(cmd);
    let child = spawned?;
    Reaper::notify_spawned();
    Ok((child, hold))
}

/// Highest signal number on Linux (SIGRTMAX).
const LAST_SIGNAL: libc::c_long = 64;

/// In the forked child: every signal back to SIG_DFL and none blocked.
///
/// Raw syscalls, because glibc's sigaction refuses its internal signals 32 and 33, which
/// are exactly the ones found ignored.
fn reset_signals() -> std::io::Result<()> {
    // An all-zero kernel sigaction is SIG_DFL, no flags, empty mask, in any field order.
    let default = [0u64; 4];
    let sigset_size = std::mem::size_of::<u64>() as libc::c_long;
    for sig in 1..=LAST_SIGNAL {
        if sig == libc::SIGKILL as libc::c_long || sig == libc::SIGSTOP as libc::c_long {
            continue;
        }
        // SAFETY: a valid kernel sigaction, no old-action pointer.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                sigset_size,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let empty = 0u64;
    // SAFETY: a valid kernel sigset, no old-set pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            sigset_size,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Last `{"level":"error","msg":...}` entry of a JSON-lines log.
pub(crate) fn last_error_in(log: &str) -> Option<String> {
    log.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        if v.get("level")?.as_str()? != "error" {
            return None;
        }
        Some(v.get("msg")?.as_str()?.to_string())
    })
}

/// `binary <global flags> [--log <log>] --log-format json`, in its own process group.
pub(crate) fn base_command(
    cfg: &RuncConfig,
    global: &[OsString],
    log: &LogTarget,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(&cfg.binary);
    cmd.args(global);
    if let Some(path) = cfg.criu_search_path() {
        cmd.env("PATH", path);
    }
    if let Some(path) = log.path() {
        cmd.arg("--log").arg(path);
    }
    cmd.arg("--log-format").arg("json").process_group(0);
    cmd
}

pub(crate) fn stdio_or_null(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

/// A pipe for the client's side of runc's stdio, sized as configured.
pub(crate) fn client_pipe(cfg: &RuncConfig, ctx: &dyn Fn(&str) -> String) -> Result<Pipe> {
    let pipe =
        Pipe::new().map_err(|e| Error::io(ctx("creating pipe"), std::io::Error::other(e)))?;
    if let Some(size) = cfg.pipe_size {
        set_pipe_capacity(&pipe.write, size)?;
    }
    Ok(pipe)
}

/// Best-effort trimmed text of a stream for an error message.
pub(crate) fn text_of(r: &Retained) -> Option<String> {
    let t = r.to_string_lossy();
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Run `call` to completion under its deadline.
pub(crate) async fn run(
    cfg: &RuncConfig,
    global: &[OsString],
    reaper: &Reaper,
    call: Call<'_>,
) -> Result<Output> {
    let Call {
        command,
        id,
        args,
        deadline,
        stdin,
        io,
        extra_files,
        scratch,
        stdout_limit,
        abort,
    } = call;
    let mut abort = abort.unwrap_or_else(|| Box::pin(std::future::pending()));
    let ctx = |what: &str| format!("runc {command} {id}: {what}");
    let log = LogTarget::prepare(cfg, io.is_none(), scratch.as_ref())
        .map_err(|e| Error::io(ctx("creating a private log file"), e))?;
    let mut cmd = base_command(cfg, global, &log);
    cmd.args(&args);

    let mut stdout_r = None;
    let mut stderr_r = None;
    let mut feeder = None;
    match io {
        Some(pio) => {
            cmd.stdin(stdio_or_null(pio.stdin))
                .stdout(stdio_or_null(pio.stdout))
                .stderr(stdio_or_null(pio.stderr));
        }
        None => {
            let out = client_pipe(cfg, &ctx)?;
            let err = client_pipe(cfg, &ctx)?;
            cmd.stdout(Stdio::from(out.write))
                .stderr(Stdio::from(err.write));
            stdout_r = Some(async_reader(out.read)?);
            stderr_r = Some(async_reader(err.read)?);
            match stdin {
                Some(bytes) => {
                    let input = client_pipe(cfg, &ctx)?;
                    cmd.stdin(Stdio::from(input.read));
                    feeder = Some((async_writer(input.write)?, bytes));
                }
                None => {
                    cmd.stdin(Stdio::null());
                }
            }
        }
    }

    // Park the passed fds above their targets first, so the dup2s in the child never
    // overwrite a source that is still needed.
    let target_end = 3 + extra_files.len() as RawFd;
    let parked: Vec<OwnedFd> = extra_files
        .iter()
        .map(|fd| {
            let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(target_end))
                .map_err(|e| Error::io(ctx("parking preserved fd"), e))?;
            // SAFETY: F_DUPFD_CLOEXEC returned a fresh fd that nothing else owns.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
        })
        .collect::<Result<_>>()?;
    drop(extra_files);
    if !parked.is_empty() {
        let raws: Vec<RawFd> = parked.iter().map(|fd| fd.as_raw_fd()).collect();
        // SAFETY: the closure only calls dup2, which is async-signal-safe, and does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raws.iter().enumerate() {
                    // dup2 leaves the new fd without FD_CLOEXEC, which is what passes it on.
                    if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    let mut exits = reaper.subscribe();
    let spawned = spawn_reaped(cmd, command, id, cfg, reaper);
    drop(parked);
    let pid = spawned?;
    let mut cancel_guard = KillOnCancel { pid, armed: true };

    let mut out = Retained::new(stdout_limit.unwrap_or(cfg.output_limit));
    let mut err = Retained::new(cfg.output_limit);
    let waited = {
        let io_work = async {
            tokio::join!(
                async {
                    if let Some(r) = stdout_r {
                        let _ = drain(r, &mut out).await;
                    }
                },
                async {
                    if let Some(r) = stderr_r {
                        let _ = drain(r, &mut err).await;
                    }
                },
                async {
                    if let Some((mut w, bytes)) = feeder {
                        // runc may exit without reading; EPIPE is not our error to report.
                        let _ = w.write_all(&bytes).await;
                    }
                },
            )
        };
        tokio::pin!(io_work);
        let wait = tokio::time::timeout(deadline, exits.wait_for(pid));
        tokio::pin!(wait);
        let mut io_done = false;
        let waited = loop {
            tokio::select! {
                biased;
                r = &mut wait => break Some(r),
                _ = &mut abort => break None,
                _ = &mut io_work, if !io_done => io_done = true,
            }
        };
        let waited = match waited {
            Some(r) => r,
            None => {
                // Killed while it runs, runc takes what it started along (its children,
                // until it exits). Its exit then tells whether it had finished on its
                // own first: only a SIGKILL is the abort's.
                kill_process_tree(pid);
                match tokio::time::timeout(ABORT_REAP_LIMIT, &mut wait).await {
                    Ok(Ok(exit)) if exit.status != 128 + libc::SIGKILL => Ok(exit),
                    _ => {
                        cancel_guard.armed = false;
                        return Err(Error::Aborted {
                            command,
                            id: id.to_string(),
                        });
                    }
                }
            }
        };
        if waited.is_ok() && !io_done {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut io_work).await;
        }
        waited
    };

    let exit = match waited {
        Ok(exit) => {
            cancel_guard.armed = false;
            exit
        }
        Err(_) => {
            cancel_guard.armed = false;
            kill_process_tree(pid);
            // Let the reaper collect runc before reporting, so callers see no leftover pid.
            let _ = tokio::time::timeout(Duration::from_secs(1), exits.wait_for(pid)).await;
            return Err(Error::Timeout {
                command,
                id: id.to_string(),
                deadline,
            });
        }
    };

    if exit.status != 0 {
        let message = log
            .last_error(&err)
            .or_else(|| text_of(&err))
            .or_else(|| text_of(&out))
            .unwrap_or_else(|| format!("exited with status {}", exit.status));
        return Err(Error::from_exit(
            command,
            id,
            exit.status,
            message,
            cfg.root.as_deref(),
        ));
    }
    Ok(Output {
        status: exit.status,
        stdout: out,
        stderr: err,
    })
}

/// A call future dropped before runc exited (caller timeout, select!, aborted task) is
/// treated like an early deadline: runc and everything it started are killed.
struct KillOnCancel {
    pid: i32,
    armed: bool,
}

impl Drop for KillOnCancel {
    fn drop(&mut self) {
        if self.armed {
            kill_process_tree(self.pid);
        }
    }
}

/// SIGKILL runc's process group and every process it spawned, even ones that left the group.
pub(crate) fn kill_process_tree(pgid: i32) {
    let doomed = descendants_or_group(pgid);
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    for pid in doomed {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Processes descending from `root`, or in its process group, from one /proc snapshot.
fn descendants_or_group(root: i32) -> Vec<i32> {
    let mut table = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The command name may contain spaces and parens; fields resume after the last ')'.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let mut fields = rest.split_whitespace().skip(1);
            let ppid = fields.next().and_then(|f| f.parse::<i32>().ok());
            let pgrp = fields.next().and_then(|f| f.parse::<i32>().ok());
            if let (Some(ppid), Some(pgrp)) = (ppid, pgrp) {
                table.push((pid, ppid, pgrp));
            }
        }
    }
    let mut doomed = vec![root];
    loop {
        let before = doomed.len();
        for &(pid, ppid, pgrp) in &table {
            if !doomed.contains(&pid) && (pgrp == root || doomed.contains(&ppid)) {
                doomed.push(pid);
            }
        }
        if doomed.len() == before {
            return doomed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_last_error_entry() {
        let log = r#"{"level":"info","msg":"starting","time":"t"}
{"level":"error","msg":"first","time":"t"}
not json at all
{"level":"error","msg":"container does not exist","time":"t"}
{"level":"debug","msg":"bye","time":"t"}
"#;
        assert_eq!(
            last_error_in(log).as_deref(),
            Some("container does not exist")
        );
        assert_eq!(last_error_in("{\"level\":\"info\",\"msg\":\"x\"}"), None);
    }

    #[test]
    fn shared_log_only_reports_new_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        std::fs::write(&path, "{\"level\":\"error\",\"msg\":\"old\"}\n").unwrap();
        let cfg = RuncConfig {
            log: Some(path.clone()),
            ..Default::default()
        };
        let target = LogTarget::prepare(&cfg, true, None).unwrap();
        let none = Retained::new(0);
        assert_eq!(target.last_error(&none), None);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"level\":\"error\",\"msg\":\"new\"}\n").unwrap();
        assert_eq!(target.last_error(&none).as_deref(), Some("new"));
        drop(target);
        assert!(path.exists(), "a configured log must never be removed");
    }
}
