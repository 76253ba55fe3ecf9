//! Where a process's output goes: containerd's FIFOs, a logging binary (`binary://`) or a
//! log file (`file://`), chosen by the stdout path the way the Go shim chooses (its
//! stderr path only says whether stderr is wanted). Whatever the target, the output copy
//! loops get a pipe or FIFO end to write to, so every target has the same spool, drain and
//! never-block guarantees.

use tokio::net::unix::pipe;

use super::fifo_eof::FifoNode;
use super::logger::{self, Logger};
use super::uri::{self, Target};
use super::{file, open_output_fifo, Owner, StdioPaths};
use crate::error::Result;

/// The ends a process's output loops write into.
#[derive(Default)]
pub struct Outputs {
    /// For stdout (None: /dev/null).
    pub stdout: Option<pipe::Sender>,
    /// For stderr (None: /dev/null).
    pub stderr: Option<pipe::Sender>,
    /// The inodes of `stdout` and `stderr` when they are containerd's FIFOs.
    pub(super) stdout_node: Option<FifoNode>,
    pub(super) stderr_node: Option<FifoNode>,
    /// Whether the stdin FIFO feeds the process: not with a logging binary, whose
    /// processes get /dev/null as in the Go shim.
    pub stdin: bool,
    /// The logging binary, for `binary://`.
    pub logger: Option<Logger>,
    /// What `stdout` and `stderr` lead to.
    pub(super) sink: Sink,
}

/// What the output loops' ends lead to; decides whether the loops can be handed over
/// ([`super::handover`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sink {
    /// containerd's FIFOs (or nothing).
    #[default]
    Fifo,
    /// Pipes read by a logging binary (`binary://`).
    Logger,
    /// Pipes read by copy threads into a log file (`file://`).
    File,
}

/// Opens containerd's output FIFOs (plain paths only).
pub fn open_fifos(id: &str, paths: &StdioPaths) -> Result<Outputs> {
    let open = |path: &str| match path {
        "" => Ok(None),
        path => open_output_fifo(id, path).map(Some),
    };
    let (stdout, stdout_node) = open(&paths.stdout)?.unzip();
    let (stderr, stderr_node) = open(&paths.stderr)?.unzip();
    let (stdout_node, stderr_node) = (stdout_node.flatten(), stderr_node.flatten());
    Ok(Outputs {
        stdout,
        stderr,
        stdout_node,
        stderr_node,
        stdin: true,
        logger: None,
        sink: Sink::Fifo,
    })
}

/// Opens whatever `paths.stdout` names: FIFOs, a started and ready logging binary, or a
/// log file (created for `uid`:`gid`, IoUid/IoGid).
pub async fn open(owner: &Owner<'_>, paths: &StdioPaths, uid: u32, gid: u32) -> Result<Outputs> {
    match uri::parse(owner.container, &paths.stdout)? {
        Target::Fifo => open_fifos(owner.container, paths),
        Target::Binary { path, args } => {
            let started = logger::start(owner, &path, &args, logger::READY_LIMIT).await?;
            Ok(Outputs {
                stdout: Some(started.stdout),
                // The Go shim gives a logger both streams whatever the stderr path says.
                stderr: Some(started.stderr),
                stdin: false,
                logger: Some(started.logger),
                sink: Sink::Logger,
                ..Outputs::default()
            })
        }
        Target::File(path) => {
            let (stdout, stderr) = file::open(
                owner.container,
                &path,
                true,
                !paths.stderr.is_empty(),
                uid,
                gid,
            )
            .await?;
            Ok(Outputs {
                stdout,
                stderr,
                stdin: true,
                logger: None,
                sink: Sink::File,
                ..Outputs::default()
            })
        }
    }
}
