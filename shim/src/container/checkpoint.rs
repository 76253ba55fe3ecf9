//! Checkpoint and restore through runc and CRIU.
//!
//! Checkpoint runs `runc checkpoint` under init's lifecycle lock. Without the `exit`
//! option the container goes on (`--leave-running`); with it CRIU kills the container
//! after the dump, and that exit is reaped and reported like any other, once the
//! checkpoint has answered.
//!
//! Restore is a Create that carries a checkpoint: it prepares the container like any
//! other (record, rootfs, stdio) but runs nothing, so init stays Created with pid 0; the
//! Start that follows runs `runc restore` instead of `runc start`. That is the split
//! containerd expects, and the one its Go shim makes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::CheckpointOptions;
use runc_client::{CheckpointOpts, ProcessIo, RestoreOpts};

use super::{read_pid, Container};
use crate::error::{Error, Result};
use crate::io::console;
use crate::process::State;
use crate::tasks::Shared;

/// Type name of the checkpoint options containerd sends with CheckpointTask.
pub const CHECKPOINT_OPTIONS_TYPE: &str = "containerd.runc.v1.CheckpointOptions";
/// Where CRIU's log of a failed checkpoint is kept, in the bundle (the work dir is removed).
pub const DUMP_LOG: &str = "criu-dump.log";
/// Where CRIU's log of a failed restore is kept, in the bundle.
pub const RESTORE_LOG: &str = "criu-restore.log";

/// The checkpoint a Create asked the container to be restored from.
#[derive(Debug, Clone)]
pub struct RestoreFrom {
    /// CRIU images, unpacked by containerd.
    pub image: PathBuf,
}

/// The stdio a restoring Create prepared, kept for the Start that runs `runc restore`.
pub(super) struct Parked {
    io: ProcessIo,
    console: Option<console::Pending>,
}

/// Parked stdio, if any; a slot of its own so that Create and Start need no other lock.
#[derive(Default)]
pub(super) struct ParkedSlot(Mutex<Option<Parked>>);

impl ParkedSlot {
    fn put(&self, parked: Parked) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(parked);
    }

    fn take(&self) -> Option<Parked> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Decodes the options of a CheckpointTaskRequest; none means all defaults.
pub fn checkpoint_options(id: &str, any: Option<&Any>) -> Result<CheckpointOptions> {
    let Some(any) = any.filter(|a| !(a.type_url.is_empty() && a.value.is_empty())) else {
        return Ok(CheckpointOptions::default());
    };
    // containerd's typeurl writes bare names; protobuf's Any::pack adds a host prefix.
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if name != CHECKPOINT_OPTIONS_TYPE {
        return Err(Error::InvalidArgument(format!(
            "checkpoint {id}: unsupported options type {:?} (expected {CHECKPOINT_OPTIONS_TYPE})",
            any.type_url
        )));
    }
    CheckpointOptions::parse_from_bytes(&any.value).map_err(|e| {
        Error::InvalidArgument(format!(
            "checkpoint {id}: malformed {CHECKPOINT_OPTIONS_TYPE}: {e}"
        ))
    })
}

/// What a CheckpointTaskRequest asks of runc: `path` (where containerd wants the images)
/// with the decoded options.
pub fn checkpoint_opts(id: &str, path: &str, o: &CheckpointOptions) -> Result<CheckpointOpts> {
    // containerd substitutes `image_path` for the path itself, and only for runtimes named
    // io.containerd.runc.*; the Go shim reads the path alone, and so does this one.
    if path.is_empty() || !path.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "checkpoint {id}: image path {path:?} is not an absolute path"
        )));
    }
    // runc would resolve a relative work path against its own working directory (the
    // bundle, or wherever it happens to run): CRIU's files must land where asked or fail.
    if !o.work_path.is_empty() && !o.work_path.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "checkpoint {id}: work path {:?} is not an absolute path",
            o.work_path
        )));
    }
    Ok(CheckpointOpts {
        image_path: PathBuf::from(path),
        work_path: (!o.work_path.is_empty()).then(|| PathBuf::from(&o.work_path)),
        leave_running: !o.exit,
        tcp_established: o.open_tcp,
        ext_unix_sk: o.external_unix_sockets,
        shell_job: o.terminal,
        file_locks: o.file_locks,
        empty_namespaces: o.empty_namespaces.clone(),
        cgroups_mode: (!o.cgroups_mode.is_empty()).then(|| o.cgroups_mode.clone()),
        ..Default::default()
    })
}

impl Container {
    /// Whether this container is restored from a checkpoint (by its Start).
    pub fn restores(&self) -> bool {
        self.restore.is_some()
    }

    /// containerd's work directory for the task (`work` in the bundle links to it; kept
    /// across shim restarts), or the bundle when there is none.
    fn work_dir(&self) -> PathBuf {
        let work = self.bundle.join("work");
        if work.is_dir() {
            work
        } else {
            self.bundle.clone()
        }
    }

    /// Keeps the stdio a restoring Create prepared until its Start.
    pub(super) fn park(&self, io: ProcessIo, console: Option<console::Pending>) {
        self.parked.put(Parked { io, console });
    }

    /// `runc checkpoint` of a running or paused container into `opts.image_path`.
    pub async fn checkpoint(&self, mut opts: CheckpointOpts) -> Result<()> {
        let _lifecycle = self.init.lifecycle.lock().await;
        match self.init.state() {
            State::Running | State::Paused => {}
            State::Deleted => {
                return Err(Error::NotFound {
                    kind: "container",
                    id: self.id.clone(),
                })
            }
            state => {
                return Err(Error::FailedPrecondition {
                    id: self.id.clone(),
                    op: "checkpoint",
                    state: state.to_string(),
                })
            }
        }
        // Without a work path of containerd's choosing CRIU's files go to a directory of
        // our own, removed afterwards (its log is kept in the bundle on failure).
        let own_work = opts
            .work_path
            .is_none()
            .then(|| self.work_dir().join("criu-work"));
        if let Some(w) = &own_work {
            remove_dir(w);
            opts.work_path = Some(w.clone());
        }
        let work = opts.work_path.clone().unwrap_or_default();
        log::info!(
            "container {}: checkpoint to {} ({})",
            self.id,
            opts.image_path.display(),
            if opts.leave_running {
                "leave running"
            } else {
                "exit"
            }
        );
        let r = self.runc.checkpoint(&self.id, &opts).await;
        let r = r.map_err(|mut e| {
            self.keep_criu_log(&mut e, &work.join("dump.log"), DUMP_LOG);
            self.runc_error(e)
        });
        if let Some(w) = &own_work {
            remove_dir(w);
        }
        r
    }

    /// `runc restore`, in place of `runc start` for a container created from a
    /// checkpoint. The caller holds the lifecycle lock and moved init to Starting.
    /// Returns the restored init's pid, and whether it already exited (its exit is
    /// recorded and still needs handling).
    pub(super) async fn restore(&self, shared: &Shared) -> Result<(i32, bool)> {
        let from = self.restore.clone().ok_or_else(|| {
            Error::Internal(format!(
                "container {}: restore without a checkpoint",
                self.id
            ))
        })?;
        let parked = self.parked.take().ok_or_else(|| {
            Error::Internal(format!("container {}: restore without its stdio", self.id))
        })?;
        let work = if self.options.criu_work_path.is_empty() {
            self.work_dir()
        } else {
            PathBuf::from(&self.options.criu_work_path)
        };
        let pid_file = self.bundle.join("init.pid");
        let opts = RestoreOpts {
            checkpoint: CheckpointOpts {
                image_path: from.image.clone(),
                work_path: Some(work.clone()),
                ..Default::default()
            },
            pid_file: pid_file.clone(),
            console_socket: parked.console.as_ref().map(|c| c.socket_path().to_owned()),
            // runc returns once CRIU restored the tree, which it leaves to the nearest
            // subreaper: this shim, whose reaper collects init's exit.
            detach: true,
            no_subreaper: true,
            no_pivot: self.options.no_pivot_root,
            io: parked.io,
            ..Default::default()
        };
        log::info!(
            "container {}: restore from {}",
            self.id,
            from.image.display()
        );
        let since = SystemTime::now();
        if let Err(mut e) = self.runc.restore(&self.id, &self.bundle, &opts).await {
            self.keep_criu_log(&mut e, &work.join("restore.log"), RESTORE_LOG);
            // runc only borrowed the stdio: a later Start may try again.
            self.park(opts.io, parked.console);
            return Err(self.runc_error(e));
        }
        drop(opts);
        let pid = match read_pid(&self.id, &pid_file).await {
            Ok(pid) => pid,
            Err(e) => {
                self.kill_unknown_init().await;
                return Err(e);
            }
        };
        let early = match shared.router.register(pid, &self.init, since) {
            Some(exit) => self.init.reaped(exit.status as u32, exit.at).is_ok(),
            None => false,
        };
        if let Some(console) = parked.console {
            match console.start().await {
                Ok(copiers) => *self.init.copiers.lock().await = copiers,
                Err(e) => {
                    // Its exit is routed now, and reported once the Start failed.
                    self.kill_unknown_init().await;
                    return Err(e);
                }
            }
        }
        Ok((pid, early))
    }

    /// Kills a restored container this shim cannot manage (no pid, no terminal).
    async fn kill_unknown_init(&self) {
        if let Err(e) = self.runc.delete(&self.id, true).await {
            log::warn!("container {}: delete after a failed restore: {e}", self.id);
        }
    }

    /// Copies CRIU's log of a failed call into the bundle, where it outlives the work
    /// directory, and points the error at the copy. Only `log`, in the work directory this
    /// shim gave runc, is copied (never a path from runc's message), and only if it is a
    /// regular file; at most its last [`KEPT_LOG_LIMIT`] bytes.
    fn keep_criu_log(&self, e: &mut runc_client::Error, log: &Path, name: &str) {
        let kept = self.bundle.join(name);
        match copy_tail(log, &kept, KEPT_LOG_LIMIT) {
            Ok(true) => {
                if let runc_client::Error::Criu { log, .. } = e {
                    *log = kept;
                }
            }
            Ok(false) => {}
            Err(err) => log::warn!(
                "container {}: keep CRIU log {}: {err}",
                self.id,
                log.display()
            ),
        }
    }
}

/// Most bytes of a CRIU log kept in the bundle (its end, where the errors are): CRIU's logs
/// grow with the container's processes and mappings, and the bundle is usually tmpfs.
const KEPT_LOG_LIMIT: u64 = 4 * 1024 * 1024;

/// Copies the last `limit` bytes of the regular file `from` to a new private file `to`
/// (replacing it, never through a symlink); false if `from` does not exist.
fn copy_tail(from: &Path, to: &Path, limit: u64) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = match runc_client::criu::open_log(from) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = src.metadata()?.len();
    src.seek(SeekFrom::Start(len.saturating_sub(limit)))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(to)?;
    std::io::copy(&mut std::io::Read::take(src, limit), &mut dst)?;
    Ok(true)
}

/// Removes a CRIU work directory of ours; it may not exist.
fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("remove CRIU work dir {}: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(o: &CheckpointOptions, type_url: &str) -> Any {
        Any {
            type_url: type_url.into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn containerds_options_become_runc_flags() {
        let o = CheckpointOptions {
            exit: true,
            open_tcp: true,
            external_unix_sockets: true,
            terminal: true,
            file_locks: true,
            empty_namespaces: vec!["network".into()],
            cgroups_mode: "full".into(),
            image_path: "/ignored".into(),
            work_path: "/w".into(),
            ..Default::default()
        };
        let decoded = checkpoint_options(
            "c",
            Some(&any(
                &o,
                "type.googleapis.com/containerd.runc.v1.CheckpointOptions",
            )),
        )
        .unwrap();
        let opts = checkpoint_opts("c", "/img", &decoded).unwrap();
        assert_eq!(opts.image_path, PathBuf::from("/img"));
        assert_eq!(opts.work_path, Some(PathBuf::from("/w")));
        assert!(!opts.leave_running);
        assert!(opts.tcp_established && opts.ext_unix_sk && opts.shell_job && opts.file_locks);
        assert_eq!(opts.empty_namespaces, ["network"]);
        assert_eq!(opts.cgroups_mode.as_deref(), Some("full"));

        // No options: the container goes on, CRIU's files go where the shim decides.
        let none = checkpoint_options("c", None).unwrap();
        let opts = checkpoint_opts("c", "/img", &none).unwrap();
        assert!(opts.leave_running && opts.work_path.is_none() && opts.cgroups_mode.is_none());
        assert!(checkpoint_options("c", Some(&Any::default())).is_ok());
    }

    #[test]
    fn bad_options_and_paths_are_invalid_arguments() {
        let o = CheckpointOptions::default();
        let wrong = any(&o, "containerd.runc.v1.Options");
        let garbage = Any {
            type_url: CHECKPOINT_OPTIONS_TYPE.into(),
            value: vec![0xff, 0xff, 0xff],
            ..Default::default()
        };
        for a in [wrong, garbage] {
            let err = checkpoint_options("c", Some(&a)).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        }
        for path in ["", "img", "./img"] {
            let err = checkpoint_opts("c", path, &o).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{path}: {err}");
        }
        for work in ["work", "./w", "../../etc"] {
            let o = CheckpointOptions {
                work_path: work.into(),
                ..Default::default()
            };
            let err = checkpoint_opts("c", "/img", &o).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{work}: {err}");
        }
    }
}
