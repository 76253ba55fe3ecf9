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

/// CRIU options for `runc checkpoint` (and, where runc restore knows them, `runc restore`).
#[derive(Clone, Debug, Default)]
pub struct CheckpointOpts {
    /// --image-path: where CRIU writes (or reads) the images; empty leaves runc's default
    /// (`checkpoint` in runc's working directory).
    pub image_path: PathBuf,
    /// --work-path: CRIU logs and work files (dump.log, restore.log); None puts them with
    /// the images.
    pub work_path: Option<PathBuf>,
    /// --parent-path: previous pre-dump images (checkpoint only: a restore follows the
    /// `parent` link CRIU left in the images).
    pub parent_path: Option<PathBuf>,
    /// --leave-running: the container goes on after the dump (else CRIU kills it).
    pub leave_running: bool,
    /// --tcp-established: dump (restore) established TCP connections.
    pub tcp_established: bool,
    /// --ext-unix-sk: allow unix sockets connected to the outside of the container.
    pub ext_unix_sk: bool,
    /// --shell-job: allow a process attached to a terminal (ptys).
    pub shell_job: bool,
    /// --file-locks: dump (restore) held file locks.
    pub file_locks: bool,
    /// --pre-dump: dump memory only and leave the container running (checkpoint only).
    pub pre_dump: bool,
    /// --auto-dedup.
    pub auto_dedup: bool,
    /// --lazy-pages: memory is served later by a page server (userfaultfd).
    pub lazy_pages: bool,
    /// --page-server ADDRESS:PORT: send the memory pages there (checkpoint only).
    pub page_server: Option<String>,
    /// --empty-ns, e.g. "network": create the namespace on restore but not its content.
    pub empty_namespaces: Vec<String>,
    /// --manage-cgroups-mode: "soft", "full", "strict" or "ignore".
    pub cgroups_mode: Option<String>,
}

impl CheckpointOpts {
    /// Flags shared by checkpoint and restore.
    pub(crate) fn common_args(&self, args: &mut Vec<std::ffi::OsString>) {
        if !self.image_path.as_os_str().is_empty() {
            args.push("--image-path".into());
            args.push(self.image_path.clone().into_os_string());
        }
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
        if let Some(server) = &self.page_server {
            args.push("--page-server".into());
            args.push(server.into());
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
    /// --no-subreaper: the restored init is reparented to the caller (when it is a child
    /// subreaper) instead of staying runc's.
    pub no_subreaper: bool,
    /// --lsm-profile TYPE:NAME for the restored processes.
    pub lsm_profile: Option<String>,
    /// --lsm-mount-context for the restored mounts.
    pub lsm_mount_context: Option<String>,
    /// Stdio for the restored init: runc hands these to CRIU for the pipes the
    /// checkpointed init had as stdio.
    pub io: ProcessIo,
}
