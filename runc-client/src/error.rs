//! Typed errors for every runc invocation.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while driving runc.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// runc did not exit before its deadline; its process group was killed.
    #[error("runc {command} {id}: no exit within {deadline:?}, process group killed")]
    Timeout {
        /// The runc subcommand.
        command: &'static str,
        /// The container id ("" for global commands).
        id: String,
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The caller ended the call before runc exited; runc and what it started were killed.
    #[error(
        "runc {command} {id}: aborted before it finished; runc and what it started were killed"
    )]
    Aborted {
        /// The runc subcommand.
        command: &'static str,
        /// The container id.
        id: String,
    },
    /// runc exited non-zero; `message` is runc's own error text.
    #[error("runc {command} {id}: exit status {status}: {message}")]
    Runc {
        /// The runc subcommand.
        command: &'static str,
        /// The container id ("" for global commands).
        id: String,
        /// runc's exit status (128 + signal if killed).
        status: i32,
        /// runc's own error message.
        message: String,
    },
    /// runc reported that the container does not exist.
    #[error("runc {command} {id}: container not found: {message}")]
    NotFound {
        /// The runc subcommand.
        command: &'static str,
        /// The container id.
        id: String,
        /// runc's exit status.
        status: i32,
        /// runc's own error message.
        message: String,
    },
    /// runc refused to create a container because its id is taken (by a container this
    /// call did not make).
    #[error("runc {command} {id}: container already exists: {message}")]
    Exists {
        /// The runc subcommand (create, run, restore).
        command: &'static str,
        /// The container id.
        id: String,
        /// runc's exit status.
        status: i32,
        /// runc's own error message.
        message: String,
    },
    /// The runc binary could not be started.
    #[error("runc {command} {id}: cannot spawn {binary:?}: {source}")]
    Spawn {
        /// The runc subcommand.
        command: &'static str,
        /// The container id ("" for global commands).
        id: String,
        /// The binary that could not be started.
        binary: PathBuf,
        /// Why exec failed.
        #[source]
        source: std::io::Error,
    },
    /// A system call made on runc's behalf failed (pipes, files, sockets).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the command and container when known.
        context: String,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// The container id is not a valid identifier; nothing was run.
    #[error("runc {command} {id:?}: invalid container id: {reason}")]
    InvalidId {
        /// The runc subcommand.
        command: &'static str,
        /// The refused id.
        id: String,
        /// Which rule it breaks.
        #[source]
        reason: crate::id::IdError,
    },
    /// The signal is outside 0..=64; nothing was run.
    #[error("runc {command} {id}: invalid signal {signal}, must be within 0..=64")]
    InvalidSignal {
        /// The runc subcommand.
        command: &'static str,
        /// The container id.
        id: String,
        /// The refused signal number.
        signal: i32,
    },
    /// CRIU failed under `runc checkpoint` or `runc restore`; its own log says why.
    #[error("runc {command} {id}: exit status {status}: {message} (CRIU log {}{})", log.display(), criu_errors(errors))]
    Criu {
        /// The runc subcommand.
        command: &'static str,
        /// The container id.
        id: String,
        /// runc's exit status.
        status: i32,
        /// runc's own message, without the log path.
        message: String,
        /// CRIU's log (dump.log, restore.log) in the work directory the call was given, or
        /// as runc named it when it had none (then not read); a caller that moves the log
        /// may update this.
        log: PathBuf,
        /// CRIU's last error lines, oldest first; empty when the log could not be read (or
        /// the call had no work directory).
        errors: Vec<String>,
    },
    /// The CRIU binary that checkpoint and restore need is not there; nothing was run.
    #[error("runc {command} {id}: CRIU not found: {reason}")]
    CriuNotFound {
        /// The runc subcommand.
        command: &'static str,
        /// The container id.
        id: String,
        /// The binary looked for: `criu`, or the configured path (`CriuPath`).
        criu: PathBuf,
        /// Where it was looked for and what was (not) found there.
        reason: String,
    },
    /// runc succeeded but its output could not be understood.
    #[error("runc {command} {id}: cannot parse output: {message}")]
    Parse {
        /// The runc subcommand.
        command: &'static str,
        /// The container id ("" for global commands).
        id: String,
        /// What did not parse.
        message: String,
    },
}

impl Error {
    /// True when runc said the container does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True when runc refused a create because a container with that id exists already.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::Exists { .. })
    }

    /// True when the call was killed at its deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// True when the caller ended the call early ([`crate::Runc::exec_until`]).
    pub fn is_aborted(&self) -> bool {
        matches!(self, Error::Aborted { .. })
    }

    /// True when checkpoint or restore was refused because CRIU is not installed.
    pub fn is_criu_missing(&self) -> bool {
        matches!(self, Error::CriuNotFound { .. })
    }

    /// True when the call was refused before running anything (bad id or signal).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, Error::InvalidId { .. } | Error::InvalidSignal { .. })
    }

    /// The runc subcommand the error belongs to, when there is one.
    pub fn command(&self) -> Option<&'static str> {
        match self {
            Error::Timeout { command, .. }
            | Error::Aborted { command, .. }
            | Error::Runc { command, .. }
            | Error::NotFound { command, .. }
            | Error::Exists { command, .. }
            | Error::Spawn { command, .. }
            | Error::InvalidId { command, .. }
            | Error::InvalidSignal { command, .. }
            | Error::Criu { command, .. }
            | Error::CriuNotFound { command, .. }
            | Error::Parse { command, .. } => Some(command),
            Error::Io { .. } => None,
        }
    }

    /// The container id the failed call was about ("" for global commands).
    pub fn id(&self) -> Option<&str> {
        match self {
            Error::Timeout { id, .. }
            | Error::Aborted { id, .. }
            | Error::Runc { id, .. }
            | Error::NotFound { id, .. }
            | Error::Exists { id, .. }
            | Error::Spawn { id, .. }
            | Error::InvalidId { id, .. }
            | Error::InvalidSignal { id, .. }
            | Error::Criu { id, .. }
            | Error::CriuNotFound { id, .. }
            | Error::Parse { id, .. } => Some(id),
            Error::Io { .. } => None,
        }
    }

    /// For a CRIU failure of a call run with `--work-path work`: points the error at CRIU's
    /// log in `work` and reads its errors from there. Without a work path the error keeps
    /// the path runc named, unread.
    pub(crate) fn with_criu_work_dir(mut self, work: Option<&Path>) -> Error {
        if let (
            Error::Criu {
                command,
                log,
                errors,
                ..
            },
            Some(work),
        ) = (&mut self, work)
        {
            *log = work.join(crate::criu::log_name(command));
            *errors = crate::criu::errors_in_log(log);
        }
        self
    }

    pub(crate) fn io(context: impl Into<String>, source: impl Into<std::io::Error>) -> Error {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Build the error for a non-zero exit, classifying the runtime's own "no such container".
    ///
    /// `root` is the configured `--root`, which crun names in its message.
    pub(crate) fn from_exit(
        command: &'static str,
        id: &str,
        status: i32,
        message: String,
        root: Option<&Path>,
    ) -> Error {
        if matches!(command, "checkpoint" | "restore") {
            if let Some((head, log)) = crate::criu::log_named_in(&message) {
                // The log is read later, from the work directory the caller chose
                // (`Error::with_criu_work_dir`), not from the path in runc's message.
                return Error::Criu {
                    command,
                    id: id.to_string(),
                    status,
                    message: head,
                    errors: Vec::new(),
                    log,
                };
            }
        }
        if says_not_found(command, id, &message, root) {
            Error::NotFound {
                command,
                id: id.to_string(),
                status,
                message,
            }
        } else if says_exists(command, id, &message) {
            Error::Exists {
                command,
                id: id.to_string(),
                status,
                message,
            }
        } else {
            Error::Runc {
                command,
                id: id.to_string(),
                status,
                message,
            }
        }
    }
}

/// CRIU's errors appended to a message, when there are any.
fn criu_errors(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", errors.join("; "))
    }
}

/// runc 1.1's whole message for a container id it has no state for.
const RUNC_NOT_FOUND: &str = "container does not exist";

/// Whether `message` is exactly what the runtime says when `id` has no state.
///
/// Matching whole messages, never fragments: "cgroup path ... does not exist" from a live
/// container once made a delete look successful while the container kept running.
fn says_not_found(command: &str, id: &str, message: &str, root: Option<&Path>) -> bool {
    let m = message.trim();
    // runc prefixes every exec failure with "exec failed: ".
    if m == RUNC_NOT_FOUND
        || (command == "exec" && m.strip_prefix("exec failed: ") == Some(RUNC_NOT_FOUND))
    {
        return true;
    }
    // crun 1.8 names the state it could not open: <root>/<id>/status, and for delete the
    // directory <root>/<id> (quoted differently from its other "cannot open directory").
    let xdg = std::env::var("XDG_RUNTIME_DIR").ok();
    let state = crun_join(&crun_state_root(root, xdg.as_deref()), id);
    m == format!("error opening file `{state}/status`: No such file or directory")
        || (command == "delete"
            && m == format!("cannot open directory '{state}': No such file or directory"))
}

/// runc's whole message (1.1 to 1.4) for an id that already has state.
const RUNC_EXISTS: &str = "container with given ID already exists";

/// Whether `message` is exactly what the runtime says when `command` would make a
/// container whose id is taken. Whole messages again: systemd's "Unit
/// cri-containerd-<id>.scope already exists." about our own half-made container must not
/// pass for someone else's container, or its rollback would skip `runc delete`.
fn says_exists(command: &str, id: &str, message: &str) -> bool {
    if !matches!(command, "create" | "run" | "restore") {
        return false;
    }
    let m = message.trim();
    // runc 1.1+ prefixes create's and run's errors with "runc <command> failed: ".
    let runc = m
        .strip_prefix("runc ")
        .and_then(|r| r.strip_prefix(command))
        .and_then(|r| r.strip_prefix(" failed: "))
        .unwrap_or(m);
    runc == RUNC_EXISTS || m == format!("container `{id}` already exists")
}

/// The state root crun uses: --root, else `$XDG_RUNTIME_DIR/crun` (crun inherits our
/// environment), else /run/crun.
fn crun_state_root(root: Option<&Path>, xdg_runtime_dir: Option<&str>) -> String {
    match (root, xdg_runtime_dir) {
        (Some(r), _) => r.to_string_lossy().into_owned(),
        (None, Some(dir)) if !dir.is_empty() => crun_join(dir, "crun"),
        (None, _) => "/run/crun".into(),
    }
}

/// `dir/name` as crun joins paths: one leading slash at most, no trailing ones.
fn crun_join(dir: &str, name: &str) -> String {
    let mut dir = dir;
    while dir.starts_with("//") {
        dir = &dir[1..];
    }
    while dir.len() > 1 && dir.ends_with('/') {
        dir = &dir[..dir.len() - 1];
    }
    let name = name.trim_matches('/');
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_not_found() {
        let e = Error::from_exit("state", "abc", 1, "container does not exist".into(), None);
        assert!(e.is_not_found());
        assert_eq!(e.command(), Some("state"));
        assert_eq!(e.id(), Some("abc"));
        let e = Error::from_exit(
            "start",
            "abc",
            1,
            "cannot start a running container".into(),
            None,
        );
        assert!(!e.is_not_found());
        assert!(e.to_string().contains("cannot start a running container"));
        assert!(e.to_string().contains("start abc"));
    }

    /// runc 1.1 to 1.4 and crun 1.8 refusing a taken id, verbatim (runc's measured with
    /// `create`, `run` and `restore` of an id that had state); nothing else counts.
    #[test]
    fn only_the_runtimes_own_already_exists_messages_count() {
        let exists = |command, message: &str| {
            Error::from_exit(command, "c1", 1, message.into(), None).is_already_exists()
        };
        let runc = "container with given ID already exists";
        assert!(exists("create", &format!("runc create failed: {runc}")));
        assert!(exists("run", &format!("runc run failed: {runc}")));
        assert!(exists("restore", runc));
        assert!(exists("create", "container `c1` already exists"));
        // systemd refusing the scope of our own, half-made container is not someone else's.
        assert!(!exists(
            "create",
            "runc create failed: unable to start container process: unable to apply cgroup \
             configuration: Unit cri-containerd-c1.scope already exists."
        ));
        assert!(!exists("create", "container `c2` already exists"));
        assert!(!exists("create", &format!("runc run failed: {runc}")));
        assert!(!exists("exec", runc), "only commands that make a container");
        let e = Error::from_exit("create", "c1", 1, runc.into(), None);
        assert!(e.to_string().contains(runc), "{e}");
        assert_eq!((e.command(), e.id()), (Some("create"), Some("c1")));
    }

    fn not_found(command: &'static str, id: &str, message: &str, root: Option<&str>) -> bool {
        Error::from_exit(command, id, 1, message.into(), root.map(Path::new)).is_not_found()
    }

    #[test]
    fn only_the_runtimes_own_not_found_messages_count() {
        // runc 1.1: the whole message, whatever the command (exec wraps it).
        for cmd in [
            "state", "delete", "kill", "start", "ps", "pause", "resume", "update",
        ] {
            assert!(
                not_found(cmd, "c1", "container does not exist", None),
                "{cmd}"
            );
        }
        assert!(not_found(
            "exec",
            "c1",
            "exec failed: container does not exist",
            None
        ));
        // The incident: a live container whose cgroup lookup failed.
        let cgroup =
            "unable to freeze container: cgroup path /sys/fs/cgroup/freezer/k8s/c1 does not exist";
        assert!(!not_found("delete", "c1", cgroup, None));
        for other in [
            "open /sys/fs/cgroup/pids/c1/pids.max: no such file or directory",
            "runc run failed: container does not exist in the expected cgroup",
            "hook failed: container does not exist",
            "container not found",
            "exec failed: container does not exist",
        ] {
            assert!(!not_found("kill", "c1", other, None), "{other}");
        }
    }

    #[test]
    fn crun_not_found_names_the_state_of_that_id() {
        let root = Some("/run/x");
        let status = "error opening file `/run/x/c1/status`: No such file or directory";
        let dir = "cannot open directory '/run/x/c1': No such file or directory";
        assert!(not_found("state", "c1", status, root));
        assert!(not_found("delete", "c1", dir, root));
        // Another id's state, another root's, or some other `status` file are not this container.
        assert!(!not_found("state", "c2", status, root));
        assert!(!not_found("state", "c1", status, Some("/run/y")));
        assert!(!not_found(
            "kill",
            "123",
            "error opening file `/proc/123/status`: No such file or directory",
            root
        ));
        assert!(!not_found(
            "delete",
            "c1",
            "cannot open directory `/sys/fs/cgroup/pids/c1`: No such file or directory",
            root
        ));
        // crun joins paths itself: extra slashes in --root do not change the file it names.
        assert!(not_found("state", "c1", status, Some("/run/x/")));
        // Without --root crun uses $XDG_RUNTIME_DIR/crun or /run/crun.
        let default = "error opening file `/run/crun/c1/status`: No such file or directory";
        assert!(!not_found("state", "c1", default, root));
        assert_eq!(crun_state_root(None, None), "/run/crun");
        assert_eq!(crun_state_root(None, Some("")), "/run/crun");
        assert_eq!(
            crun_state_root(None, Some("/run/user/7/")),
            "/run/user/7/crun"
        );
        assert_eq!(crun_state_root(Some(Path::new("/r")), Some("/x")), "/r");
        assert_eq!(crun_join("//a//", "b"), "/a/b");
        assert_eq!(crun_join("/", "b"), "/b");
    }

    #[test]
    fn a_criu_failure_carries_criu_s_own_errors() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        std::fs::write(
            &log,
            "(00.03) Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n",
        )
        .unwrap();
        let message = format!(
            "criu failed: type DUMP errno 0\nlog file: {}",
            log.display()
        );
        let e = Error::from_exit("checkpoint", "c1", 1, message.clone(), None)
            .with_criu_work_dir(Some(dir.path()));
        match &e {
            Error::Criu {
                message, errors, ..
            } => {
                assert_eq!(message, "criu failed: type DUMP errno 0");
                assert_eq!(
                    errors,
                    &["Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds"]
                );
            }
            other => panic!("{other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.contains("checkpoint c1") && text.contains("Unexpected rt vDSO area bounds"),
            "{text}"
        );
        assert!(text.contains(&log.display().to_string()), "{text}");
        // Only checkpoint and restore run CRIU.
        assert!(matches!(
            Error::from_exit("start", "c1", 1, message, None),
            Error::Runc { .. }
        ));
    }

    #[test]
    fn timeout_message_names_everything() {
        let e = Error::Timeout {
            command: "create",
            id: "c1".into(),
            deadline: Duration::from_secs(3),
        };
        let s = e.to_string();
        assert!(
            s.contains("create") && s.contains("c1") && s.contains("3s"),
            "{s}"
        );
        assert!(e.is_timeout());
    }
}
