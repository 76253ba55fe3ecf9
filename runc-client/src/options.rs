//! Per-command options for create, exec, checkpoint and restore.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::io::ProcessIo;

/// Options for `runc create`.
#[derive(Debug, Default)]
pub struct CreateOpts {
    /// --pid-file; empty means not passed.
    pub pid_file: PathBuf,
    /// --console-socket, for containers with a terminal.
    pub console_socket: Option<PathBuf>,
    /// --no-pivot (needed on ramfs roots).
    pub no_pivot: bool,
    /// --no-new-keyring.
    pub no_new_keyring: bool,
    /// `runc create` always detaches; kept so callers can state intent symmetrically with exec.
    pub detach: bool,
    /// Stdio for the container init.
    pub io: ProcessIo,
    /// Passed to the container as fds 3.. with --preserve-fds.
    pub extra_files: Vec<OwnedFd>,
}

/// Options for `runc exec`.
#[derive(Debug, Default)]
pub struct ExecOpts {
    /// --pid-file; empty means not passed.
    pub pid_file: PathBuf,
    /// --console-socket, for processes with a terminal.
    pub console_socket: Option<PathBuf>,
    /// --detach: return once the process started.
    pub detach: bool,
    /// Stdio for the process.
    pub io: ProcessIo,
    /// Where the private directory holding the process spec (and runc's log for the call)
    /// is created, e.g. the bundle; None uses the temp dir.
    pub spec_dir: Option<PathBuf>,
}

/// CRIU options for `runc checkpoint`.
#[derive(Clone, Debug, Default)]
pub struct CheckpointOpts {
    /// --image-path: where CRIU writes (or reads) the images.
    pub image_path: PathBuf,
    /// --work-path: CRIU logs and work files.
    pub work_path: Option<PathBuf>,
    /// --parent-path: previous pre-dump images.
    pub parent_path: Option<PathBuf>,
    /// --leave-running.
    pub leave_running: bool,
    /// --tcp-established.
    pub tcp_established: bool,
    /// --ext-unix-sk.
    pub ext_unix_sk: bool,
    /// --shell-job.
    pub shell_job: bool,
    /// --file-locks.
    pub file_locks: bool,
    /// --pre-dump.
    pub pre_dump: bool,
    /// --auto-dedup.
    pub auto_dedup: bool,
    /// --lazy-pages.
    pub lazy_pages: bool,
    /// --empty-ns, e.g. "network".
    pub empty_namespaces: Vec<String>,
    /// --manage-cgroups-mode: "soft", "full", "strict" or "ignore".
    pub cgroups_mode: Option<String>,
}

impl CheckpointOpts {
    /// Flags shared by checkpoint and restore.
    pub(crate) fn common_args(&self, args: &mut Vec<std::ffi::OsString>) {
        args.push("--image-path".into());
        args.push(self.image_path.clone().into_os_string());
        if let Some(p) = &self.work_path {
            args.push("--work-path".into());
            args.push(p.clone().into_os_string());
        }
        for (on, flag) in [
            (self.tcp_established, "--tcp-established"),
            (self.ext_unix_sk, "--ext-unix-sk"),
            (self.shell_job, "--shell-job"),
            (self.file_locks, "--file-locks"),
            (self.auto_dedup, "--auto-dedup"),
            (self.lazy_pages, "--lazy-pages"),
        ] {
            if on {
                args.push(flag.into());
            }
        }
        for ns in &self.empty_namespaces {
            args.push("--empty-ns".into());
            args.push(ns.into());
        }
        if let Some(mode) = &self.cgroups_mode {
            args.push("--manage-cgroups-mode".into());
            args.push(mode.into());
        }
    }

    /// Flags only checkpoint understands.
    pub(crate) fn checkpoint_args(&self, args: &mut Vec<std::ffi::OsString>) {
        self.common_args(args);
        if let Some(p) = &self.parent_path {
            args.push("--parent-path".into());
            args.push(p.clone().into_os_string());
        }
        if self.leave_running {
            args.push("--leave-running".into());
        }
        if self.pre_dump {
            args.push("--pre-dump".into());
        }
    }
}

/// Options for `runc restore`.
#[derive(Debug, Default)]
pub struct RestoreOpts {
    /// Where the images are and the CRIU options they were taken with.
    pub checkpoint: CheckpointOpts,
    /// --pid-file; empty means not passed.
    pub pid_file: PathBuf,
    /// --console-socket.
    pub console_socket: Option<PathBuf>,
    /// --detach.
    pub detach: bool,
    /// --no-pivot.
    pub no_pivot: bool,
    /// --no-subreaper.
    pub no_subreaper: bool,
    /// Stdio for the restored init.
    pub io: ProcessIo,
}
