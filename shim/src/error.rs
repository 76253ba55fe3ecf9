//! Shim errors and their mapping onto ttrpc status codes containerd understands.

use containerd_shim_protos::ttrpc::{self, Code};

use crate::options::OptionsError;

/// Everything a Task RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container or exec with that id lives in this shim.
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// The id is already taken.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    /// The process is in a state that does not allow the operation.
    #[error("container {id}: cannot {op} while {state}")]
    FailedPrecondition {
        id: String,
        op: &'static str,
        state: String,
    },
    /// The request was malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Runtime options were rejected.
    #[error("container {id}: bad runtime options: {source}")]
    Options {
        id: String,
        #[source]
        source: OptionsError,
    },
    /// runc (or the runc-compatible `runtime`) failed, timed out or could not be started.
    #[error("container {id}: {source}{}", runtime_note(runtime))]
    Runc {
        id: String,
        runtime: String,
        #[source]
        source: Box<runc_client::Error>,
    },
    /// `runc exec` of an exec's Start failed, timed out or could not be started.
    #[error("container {id}: exec {exec_id}: {source}{}", runtime_note(runtime))]
    Exec {
        id: String,
        exec_id: String,
        runtime: String,
        #[source]
        source: Box<runc_client::Error>,
    },
    /// An exec's Start was ended by `by` (a Kill, a Delete, the container's end) while
    /// `runc exec` ran; runc and what it started were killed: the exec never ran.
    #[error("container {id}: exec {exec_id}: start ended by {by} while runc exec ran; runc and what it started were killed")]
    ExecAborted {
        id: String,
        exec_id: String,
        by: &'static str,
    },
    /// Host-side IO (mounts, FIFOs, files) failed.
    #[error("container {id}: {context}: {source}")]
    Io {
        id: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A failure inside the shim itself (a lost task, a broken invariant).
    #[error("internal error: {0}")]
    Internal(String),
    /// The shim cannot be handed over to a new binary right now (docs/upgrade.md).
    #[error("cannot hand over: {0}")]
    NotHandable(String),
}

/// runc-client speaks of "runc <command>"; say which binary really ran when it was not runc.
fn runtime_note(runtime: &str) -> String {
    if runtime.is_empty() || runtime == "runc" || runtime.ends_with("/runc") {
        String::new()
    } else {
        format!(" (runtime binary {runtime})")
    }
}

/// Result alias for shim operations.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps a runc-client error with the container id and the runtime binary.
    pub fn runc(id: &str, runtime: &str, source: runc_client::Error) -> Self {
        Error::Runc {
            id: id.to_string(),
            runtime: runtime.to_string(),
            source: Box::new(source),
        }
    }

    /// Wraps an IO error with the container id and what was being done.
    pub fn io(id: &str, context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            id: id.to_string(),
            context: context.into(),
            source,
        }
    }

    /// The ttrpc code containerd maps back onto its errdefs.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound { .. } => Code::NOT_FOUND,
            Error::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Error::FailedPrecondition { .. } | Error::NotHandable(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) | Error::Options { .. } => Code::INVALID_ARGUMENT,
            Error::Internal(_) => Code::INTERNAL,
            Error::Runc { source, .. } | Error::Exec { source, .. } => runc_code(source),
            // Not the caller's doing: another call ended it (gRPC's "aborted").
            Error::ExecAborted { .. } => Code::ABORTED,
            // containerd reads NOT_FOUND as "no such task": a missing FIFO or pid file is a
            // failed precondition of the request, not a missing task.
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => Code::FAILED_PRECONDITION,
                std::io::ErrorKind::InvalidInput => Code::INVALID_ARGUMENT,
                _ => Code::INTERNAL,
            },
        }
    }
}

/// The code of a runc-client error.
fn runc_code(source: &runc_client::Error) -> Code {
    if source.is_not_found() {
        Code::NOT_FOUND
    } else if source.is_already_exists() {
        Code::ALREADY_EXISTS
    } else if source.is_criu_missing() {
        // Checkpoint and restore cannot work on this host as it is.
        Code::FAILED_PRECONDITION
    } else if source.is_invalid_argument() {
        Code::INVALID_ARGUMENT
    } else if source.is_timeout() {
        Code::DEADLINE_EXCEEDED
    } else if source.is_aborted() {
        Code::ABORTED
    } else {
        Code::UNKNOWN
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let nf = Error::NotFound {
            kind: "container",
            id: "x".into(),
        };
        assert_eq!(nf.code(), Code::NOT_FOUND);
        let fp = Error::FailedPrecondition {
            id: "x".into(),
            op: "start",
            state: "stopped".into(),
        };
        assert_eq!(fp.code(), Code::FAILED_PRECONDITION);
        let crun = Error::runc(
            "x",
            "crun",
            runc_client::Error::Timeout {
                command: "create",
                id: "x".into(),
                deadline: std::time::Duration::from_secs(1),
            },
        );
        assert_eq!(crun.code(), Code::DEADLINE_EXCEEDED);
        assert!(
            crun.to_string().ends_with("(runtime binary crun)"),
            "{crun}"
        );
        let hung_exec = Error::Exec {
            id: "c1".into(),
            exec_id: "e1".into(),
            runtime: "runc".into(),
            source: Box::new(runc_client::Error::Timeout {
                command: "exec",
                id: "c1".into(),
                deadline: std::time::Duration::from_secs(5),
            }),
        };
        assert_eq!(hung_exec.code(), Code::DEADLINE_EXCEEDED);
        let text = hung_exec.to_string();
        assert!(
            text.contains("container c1")
                && text.contains("exec e1")
                && text.contains("runc exec c1"),
            "{text}"
        );
        let ended = Error::ExecAborted {
            id: "c1".into(),
            exec_id: "e1".into(),
            by: "a Kill",
        };
        assert_eq!(ended.code(), Code::ABORTED);
        assert!(
            ended.to_string().contains("exec e1: start ended by a Kill"),
            "{ended}"
        );
        let no_criu = Error::runc(
            "x",
            "runc",
            runc_client::Error::CriuNotFound {
                command: "checkpoint",
                id: "x".into(),
                criu: "criu".into(),
                reason: "no executable \"criu\" on PATH".into(),
            },
        );
        assert_eq!(no_criu.code(), Code::FAILED_PRECONDITION);
        assert!(no_criu.to_string().contains("CRIU not found"), "{no_criu}");
        let fifo = Error::io(
            "x",
            "open output fifo /gone",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(
            fifo.code(),
            Code::FAILED_PRECONDITION,
            "a missing file is not a missing task"
        );
        match ttrpc::Error::from(nf) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert!(s.message.contains("\"x\""));
            }
            other => panic!("{other:?}"),
        }
    }
}
