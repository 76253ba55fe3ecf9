//! Container stdio: the shim owns the pipes runc hands to the container and copies
//! them to and from containerd's FIFOs.
//!
//! Owning the pipes (instead of passing containerd's FIFOs straight to runc) is what
//! keeps a containerd restart harmless: our FIFO ends are opened read-write, so the FIFO
//! always has a reader and a writer, the container never sees EPIPE, and a restarted
//! containerd simply reopens the FIFO and carries on reading. FIFOs are opened with
//! O_NONBLOCK from `tokio::net::unix::pipe`, never through `tokio::fs`, so no runtime
//! thread ever blocks in open(2) or read(2) on them.
//!
//! Output is drained from the container's pipes whatever containerd's reader does: what its
//! FIFO cannot take waits in a [`spool::Spool`] (memory up to [`OUTPUT_MEMORY_BOUND`] per
//! stream, then an unlinked file in the bundle), see [`output`].
//!
//! A process with a terminal has a pty instead of pipes; [`console`] copies its master
//! through the same loops.
//!
//! Instead of FIFO paths containerd may pass `binary://` (a logging binary, [`logger`]) or
//! `file://` (a log file, [`file`]) URIs; [`outputs`] gives the copy loops a pipe end to
//! write to for each, so the container's side and the loops stay the same.

mod budget;
pub mod console;
mod fifo_eof;
mod file;
mod handover;
pub mod logger;
mod output;
mod outputs;
mod spool;
mod stdin;
mod uri;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::unistd::{fchown, Gid, Uid};
use runc_client::ProcessIo;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Where containerd wants a process's stdio.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// stdin FIFO path, empty for none.
    pub stdin: String,
    /// stdout FIFO path, empty for /dev/null.
    pub stdout: String,
    /// stderr FIFO path, empty for /dev/null.
    pub stderr: String,
    /// Whether a pty was requested.
    pub terminal: bool,
}

/// Whose stdio is set up: names the logs, and what a logging binary is told.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// Container id.
    pub container: &'a str,
    /// The process as containerd names it: the container id for init, the exec id for an
    /// exec (a logging binary's `CONTAINER_ID`, as the Go shim sets it).
    pub process: &'a str,
    /// containerd namespace (a logging binary's `CONTAINER_NAMESPACE`).
    pub namespace: &'a str,
}

/// How long output may make no progress before draining gives up on it.
pub const DRAIN_IDLE_LIMIT: Duration = Duration::from_secs(2);

/// Most bytes of one output stream held in the shim's memory while containerd does not
/// read; beyond it output spills to a file in the bundle (see docs/shim.md, Stdio).
pub const OUTPUT_MEMORY_BOUND: usize = 128 * 1024;

/// Most bytes one output stream's spill file may grow to; beyond it the process's output
/// waits (back-pressure), as it did before spilling existed.
pub const OUTPUT_SPILL_LIMIT: u64 = 32 * 1024 * 1024;

/// Most bytes all spill files of this shim may hold together (they are in the bundle,
/// usually tmpfs: RAM charged to the shim's cgroup, not to any pod). A stream that finds it
/// used up waits like one at [`OUTPUT_SPILL_LIMIT`] (docs/shim.md, Stdio).
pub const OUTPUT_SPILL_BUDGET: u64 = 128 * 1024 * 1024;

use budget::SpillBudget;
pub use handover::{HandedIo, HandedStdin, HandedStream, NotHandable};
use handover::{Running, Which};

/// The running copy loops of one process.
#[derive(Default)]
pub struct Copiers {
    stdin_close: Option<oneshot::Sender<()>>,
    stdin: Option<Running<stdin::StdinParts>>,
    outputs: Vec<(Which, Running<output::OutputParts>)>,
    /// The pty master, for a process with a terminal.
    console: Option<Arc<console::Console>>,
    /// Progress of the output loops, for draining.
    progress: Arc<Progress>,
    /// The logging binary the output goes to (`binary://`).
    logger: Option<logger::Logger>,
    /// What the output loops write into.
    sink: outputs::Sink,
}

/// What the output copy loops of one process are doing; draining watches it without
/// holding the process's copier lock, so Delete can still stop the loops meanwhile.
#[derive(Default)]
pub struct Progress {
    /// Bytes moved so far: copied into FIFOs, or taken out of them by their reader.
    copied: AtomicU64,
    /// Loops holding data their FIFO's reader has not taken yet (the reader is slow or not
    /// there yet, not gone silent).
    writing: AtomicU64,
    /// Loops still running.
    active: AtomicU64,
    /// Largest memory one stream's spool has held (capacity, bytes).
    spool_peak: AtomicU64,
    /// Bytes written to spill files so far.
    spilled: AtomicU64,
    /// Spill files created so far.
    spill_created: AtomicU64,
    /// Spill files open right now.
    spill_open: AtomicU64,
    /// Times a spill file could not be created or written.
    spill_failures: AtomicU64,
}

/// Decrements the running-loop count however the loop ends (including abort).
struct ActiveGuard(Arc<Progress>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Progress {
    /// Waits until the output loops have copied everything, as long as they make
    /// progress or wait for their reader, at most `limit` in all.
    ///
    /// A slow reader (a busy containerd) only delays, never truncates, the output; a
    /// grandchild that inherited the pipe and stays silent is given up on after
    /// [`DRAIN_IDLE_LIMIT`], so it cannot hold the exit event back for long.
    pub async fn drain(&self, limit: Duration) {
        self.drain_while(limit, true).await
    }

    /// Like [`Progress::drain`], but data waiting for a reader that takes nothing counts
    /// as stalled: for callers that must answer soon (Delete), not wait for a stuck reader.
    pub async fn drain_moving(&self, limit: Duration) {
        self.drain_while(limit, false).await
    }

    async fn drain_while(&self, limit: Duration, blocked_write_is_progress: bool) {
        let start = Instant::now();
        let mut last = self.copied.load(Ordering::Relaxed);
        let mut last_progress = Instant::now();
        while self.active.load(Ordering::Relaxed) > 0 {
            let now = self.copied.load(Ordering::Relaxed);
            let waiting_on_reader =
                blocked_write_is_progress && self.writing.load(Ordering::Relaxed) > 0;
            if now != last || waiting_on_reader {
                last = now;
                last_progress = Instant::now();
            }
            if last_progress.elapsed() >= DRAIN_IDLE_LIMIT || start.elapsed() >= limit {
                log::warn!(
                    "stdio not drained after {:?} ({now} bytes copied)",
                    start.elapsed()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Copiers {
    /// Stops feeding stdin; the container sees EOF once buffered data is written (with a
    /// terminal: the terminal's EOF character, see [`console`]).
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.stdin_close.take() {
            let _ = tx.send(());
        }
    }

    /// Sets the size of the process's terminal; None when it has none.
    pub fn resize(&self, width: u32, height: u32) -> Option<std::io::Result<()>> {
        self.console.as_ref().map(|c| c.resize(width, height))
    }

    /// Starts feeding `fifo` (containerd's stdin) into `to` (the process's stdin pipe or
    /// pty master) until CloseIO.
    fn start_stdin(
        &mut self,
        fifo: pipe::Receiver,
        to: pipe::Sender,
        console: Option<Arc<console::Console>>,
    ) {
        self.spawn_stdin(fifo, to, console, Vec::new(), false);
    }

    /// [`Copiers::start_stdin`] for a loop that carries on from a handover: `carry` is
    /// written first, and `closed` says CloseIO came already.
    fn spawn_stdin(
        &mut self,
        fifo: pipe::Receiver,
        to: pipe::Sender,
        console: Option<Arc<console::Console>>,
        carry: Vec<u8>,
        closed: bool,
    ) {
        let (tx, rx) = oneshot::channel();
        if closed {
            let _ = tx.send(());
        } else {
            self.stdin_close = Some(tx);
        }
        self.stdin = Some(Running::spawn(|stop| {
            stdin::copy_stdin(fifo, to, rx, console, stop, carry)
        }));
    }

    /// Starts draining `from` (a process's stdout or stderr, or its pty master) into `fifo`;
    /// `node` is that FIFO's inode when it is one of containerd's (for a late reader's EOF).
    ///
    /// `carry` (bytes a handed-over loop read and did not write) is written first; `from`
    /// None is a pipe that reached EOF before the handover.
    #[allow(clippy::too_many_arguments)]
    fn start_output(
        &mut self,
        id: &str,
        which: Which,
        from: Option<pipe::Receiver>,
        fifo: pipe::Sender,
        node: Option<fifo_eof::FifoNode>,
        spill_dir: &Path,
        carry: Vec<u8>,
    ) {
        let progress = self.progress.clone();
        // Counted before spawning, released by the guard however the loop ends, even if
        // it is aborted before it ever ran.
        progress.active.fetch_add(1, Ordering::Relaxed);
        let active = ActiveGuard(progress.clone());
        let spool = spool::Spool::new(
            id,
            spill_dir,
            OUTPUT_MEMORY_BOUND,
            OUTPUT_SPILL_LIMIT,
            SpillBudget::shim(),
            progress.clone(),
        );
        self.outputs.push((
            which,
            Running::spawn(|stop| {
                output::copy_output(from, fifo, node, spool, progress, active, stop, carry)
            }),
        ));
    }

    /// The progress of the output loops, to drain without holding the copier lock.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Takes the logging binary out, for a caller that stops it itself (and waits).
    pub fn take_logger(&mut self) -> Option<logger::Logger> {
        self.logger.take()
    }

    /// Aborts every copy loop (used when the process is deleted); output still queued for
    /// the FIFOs is dropped and the spill files are closed, which frees them. A logging
    /// binary still here is stopped in the background (SIGTERM, later SIGKILL).
    pub fn abort(&mut self) {
        self.close_stdin();
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
        for (_, h) in self.outputs.drain(..) {
            h.abort();
        }
        // The loops held the other copies of the master: now the terminal hangs up.
        self.console = None;
        if let Some(logger) = self.logger.take() {
            logger.stop_detached();
        }
    }
}

impl Drop for Copiers {
    fn drop(&mut self) {
        self.abort();
    }
}

/// A new process's stdio, ready for runc.
pub struct Prepared {
    /// The fds runc gives the process (none with a terminal: the pty takes their place).
    pub io: ProcessIo,
    /// The running copy loops (none yet with a terminal).
    pub copiers: Copiers,
    /// With a terminal: the socket runc sends the pty master to, and the FIFOs waiting
    /// for it; [`console::Pending::start`] starts the loops once runc has run.
    pub console: Option<console::Pending>,
}

/// Prepares a new process's stdio: pipes with their copy loops running, or for a terminal
/// a console socket. Every FIFO, log file and logging binary is opened or started here,
/// before runc runs, so a bad path fails the request without a process to clean up.
pub async fn prepare_stdio(
    owner: &Owner<'_>,
    paths: &StdioPaths,
    uid: u32,
    gid: u32,
    spill_dir: &Path,
) -> Result<Prepared> {
    let outputs = outputs::open(owner, paths, uid, gid).await?;
    if paths.terminal {
        return Ok(Prepared {
            io: ProcessIo::default(),
            copiers: Copiers::default(),
            console: Some(console::Pending::new(
                owner.container,
                paths,
                outputs,
                spill_dir,
            )?),
        });
    }
    let (io, copiers) = prepare_pipes(owner.container, paths, outputs, uid, gid, spill_dir)?;
    Ok(Prepared {
        io,
        copiers,
        console: None,
    })
}

/// Builds the pipes for a new process without a terminal whose stdio are containerd's
/// FIFOs, and starts the copy loops (see [`prepare_pipes`]).
pub fn prepare(
    id: &str,
    paths: &StdioPaths,
    uid: u32,
    gid: u32,
    spill_dir: &Path,
) -> Result<(ProcessIo, Copiers)> {
    let outputs = outputs::open_fifos(id, paths)?;
    prepare_pipes(id, paths, outputs, uid, gid, spill_dir)
}

/// Builds the pipes for a new process without a terminal and starts the copy loops into
/// `outputs`.
///
/// Output the targets cannot take yet spills into unlinked files created in `spill_dir`
/// (the bundle). Returns the fds runc must give the container and the handle on the copiers.
fn prepare_pipes(
    id: &str,
    paths: &StdioPaths,
    outputs: outputs::Outputs,
    uid: u32,
    gid: u32,
    spill_dir: &Path,
) -> Result<(ProcessIo, Copiers)> {
    if paths.terminal {
        return Err(Error::Internal(format!(
            "{id}: terminal stdio has no pipes (see prepare_stdio)"
        )));
    }
    let mut io = ProcessIo::default();
    let mut copiers = Copiers::default();
    copiers.logger = outputs.logger;
    copiers.sink = outputs.sink;

    if outputs.stdin && !paths.stdin.is_empty() {
        let fifo = open_stdin_fifo(id, &paths.stdin)?;
        let (read, write) = make_pipe(id, uid, gid)?;
        let sender = pipe::Sender::from_owned_fd(write)
            .map_err(|e| Error::io(id, "register stdin pipe", e))?;
        copiers.start_stdin(fifo, sender, None);
        io.stdin = Some(read);
    }
    for (which, target, node, slot) in [
        (
            Which::Stdout,
            outputs.stdout,
            outputs.stdout_node,
            &mut io.stdout,
        ),
        (
            Which::Stderr,
            outputs.stderr,
            outputs.stderr_node,
            &mut io.stderr,
        ),
    ] {
        let Some(target) = target else { continue };
        let (read, write) = make_pipe(id, uid, gid)?;
        let receiver = pipe::Receiver::from_owned_fd(read)
            .map_err(|e| Error::io(id, "register output pipe", e))?;
        copiers.start_output(
            id,
            which,
            Some(receiver),
            target,
            node,
            spill_dir,
            Vec::new(),
        );
        *slot = Some(write);
    }
    Ok((io, copiers))
}

/// Opens containerd's stdin FIFO for reading.
fn open_stdin_fifo(id: &str, path: &str) -> Result<pipe::Receiver> {
    check_scheme(path)?;
    // Read-write so that the FIFO never reports EOF before the client opened it; the end
    // of stdin is signalled through CloseIO instead.
    pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(|e| Error::io(id, format!("open stdin fifo {path}"), e))
}

/// Opens one of containerd's output FIFOs for writing; also its inode, to hand a reader
/// that comes late its EOF ([`fifo_eof`]).
fn open_output_fifo(id: &str, path: &str) -> Result<(pipe::Sender, Option<fifo_eof::FifoNode>)> {
    check_scheme(path)?;
    // Read-write keeps an extra reader on the FIFO: a containerd restart closes its
    // reader, and without ours the container would get EPIPE.
    let sender = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|e| Error::io(id, format!("open output fifo {path}"), e))?;
    // Without it (no /proc) only a late reader's EOF is at stake, not the process.
    let node = fifo_eof::FifoNode::of(&sender)
        .map_err(|e| log::warn!("{id}: output fifo {path}: no O_PATH fd for a late reader: {e}"))
        .ok();
    Ok((sender, node))
}

/// A URI where a FIFO path belongs: a stdin URI, or a stderr URI under a plain stdout
/// (the stdout path alone decides where output goes, as in the Go shim).
fn check_scheme(path: &str) -> Result<()> {
    match uri::scheme(path) {
        Some(scheme) => Err(Error::InvalidArgument(format!(
            "stdio {path:?}: a {scheme}: URI is only honoured as stdout (stderr follows it)"
        ))),
        None => Ok(()),
    }
}

/// A close-on-exec pipe whose ends belong to the IO uid/gid.
fn make_pipe(id: &str, uid: u32, gid: u32) -> Result<(OwnedFd, OwnedFd)> {
    let (read, write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io(id, "pipe2", e.into()))?;
    if uid != 0 || gid != 0 {
        for fd in [&read, &write] {
            fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| Error::io(id, "chown stdio pipe", e.into()))?;
        }
    }
    debug_assert!(read.as_raw_fd() >= 0);
    Ok((read, write))
}

/// How long a FIFO's unread content may stay unchanged before we stop waiting for its reader.
const FIFO_IDLE_LIMIT: Duration = Duration::from_secs(1);

/// Waits (bounded) until the FIFO's reader has taken everything we wrote.
///
/// Our FIFO end is read-write, and containerd tears its reading side down soon after it
/// learns of the exit: data still sitting in the FIFO then would be lost. So the exit is
/// reported only once the FIFO is empty, or its reader has stopped taking anything
/// (gone, or never there, as with a detached `ctr run -d`).
async fn wait_until_read(fifo: &pipe::Sender, progress: &Progress) {
    let fd = fifo.as_raw_fd();
    let mut last = match unread(fd) {
        Some(n) => n,
        None => return,
    };
    let mut since = Instant::now();
    while last > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let Some(now) = unread(fd) else { return };
        if now < last {
            progress
                .copied
                .fetch_add((last - now) as u64, Ordering::Relaxed);
            since = Instant::now();
        } else if since.elapsed() >= FIFO_IDLE_LIMIT {
            log::info!("{now} bytes left unread in an output FIFO: its reader stopped reading");
            return;
        }
        last = now;
    }
}

/// Bytes sitting unread in the pipe or FIFO `fd` (FIONREAD).
fn unread(fd: std::os::fd::RawFd) -> Option<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    (rc == 0).then_some(n)
}

#[cfg(test)]
mod tests;
