//! Typed errors for every runc invocation.

use std::path::PathBuf;
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

    /// True when the call was killed at its deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// The runc subcommand the error belongs to, when there is one.
    pub fn command(&self) -> Option<&'static str> {
        match self {
            Error::Timeout { command, .. }
            | Error::Runc { command, .. }
            | Error::NotFound { command, .. }
            | Error::Spawn { command, .. }
            | Error::Parse { command, .. } => Some(command),
            Error::Io { .. } => None,
        }
    }

    /// The container id the failed call was about ("" for global commands).
    pub fn id(&self) -> Option<&str> {
        match self {
            Error::Timeout { id, .. }
            | Error::Runc { id, .. }
            | Error::NotFound { id, .. }
            | Error::Spawn { id, .. }
            | Error::Parse { id, .. } => Some(id),
            Error::Io { .. } => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: impl Into<std::io::Error>) -> Error {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Build the error for a non-zero exit, classifying "does not exist".
    pub(crate) fn from_exit(
        command: &'static str,
        id: &str,
        status: i32,
        message: String,
    ) -> Error {
        let lower = message.to_ascii_lowercase();
        // runc says "container does not exist"; crun says "container `x` does not exist" or
        // fails to open its state file.
        let not_found = lower.contains("does not exist")
            || lower.contains("container not found")
            || (lower.contains("status") && lower.contains("no such file or directory"));
        if not_found {
            Error::NotFound {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_not_found() {
        let e = Error::from_exit("state", "abc", 1, "container does not exist".into());
        assert!(e.is_not_found());
        assert_eq!(e.command(), Some("state"));
        assert_eq!(e.id(), Some("abc"));
        let e = Error::from_exit("start", "abc", 1, "cannot start a running container".into());
        assert!(!e.is_not_found());
        assert!(e.to_string().contains("cannot start a running container"));
        assert!(e.to_string().contains("start abc"));
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
