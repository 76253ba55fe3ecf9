//! Typed errors of the test harness.

use std::path::PathBuf;

/// Everything the harness can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// containerd exited or never answered while we waited for it.
    #[error("containerd did not come up: {reason}\n--- containerd log tail ({log}) ---\n{tail}")]
    ContainerdStart {
        /// Why we gave up.
        reason: String,
        /// Log file of the instance.
        log: PathBuf,
        /// Last lines of that log.
        tail: String,
    },
    /// A helper command (ctr, ip, runc) failed.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status description.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// A helper command did not finish in time.
    #[error("command `{command}` timed out after {secs}s")]
    Timeout {
        /// The command line.
        command: String,
        /// The limit that was exceeded.
        secs: u64,
    },
    /// Could not open a gRPC channel to containerd.
    #[error("connecting to {socket}: {source}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A gRPC call returned an error status.
    #[error("{call}: {status}")]
    Rpc {
        /// The RPC that failed.
        call: &'static str,
        /// The returned status.
        status: Box<tonic::Status>,
    },
    /// Every /28 slice of the pod network is held by another live fixture.
    #[error("all {0} pod subnet slots are in use")]
    NoSubnetSlot(usize),
    /// Something answered but not the way it should.
    #[error("unexpected: {0}")]
    Unexpected(String),
    /// A tool from `../shared/tools` is missing, corrupt or could not be unpacked.
    #[error("tools: {0}")]
    Tools(#[from] crate::tools::ToolsError),
    /// A Kubernetes node component failed or never became ready.
    #[error("kubernetes node: {0}")]
    Kube(String),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias of the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach context to io errors without boilerplate at each call site.
pub(crate) trait IoContext<T> {
    /// Wrap an io error with a description of what we were doing.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}

/// Turn a tonic status into our error, naming the call.
pub(crate) fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Rpc {
        call,
        status: Box::new(status),
    }
}
