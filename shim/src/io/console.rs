//! Terminal stdio. runc creates the pty inside the container and sends its master over a
//! console socket (`--console-socket`); the shim copies master → stdout FIFO with the same
//! output loop and spool as a pipe (a terminal has a single output stream: stderr stays
//! empty) and stdin FIFO → master.
//!
//! The master is one bidirectional fd. The output loop, the stdin loop and the
//! [`Console`] (resize, termios) each hold a dup of it, so the terminal hangs up only once
//! all three are gone, which is Delete. Exit handling drains it like a pipe: once every
//! process holding the slave has exited, reading the master fails with EIO, which the
//! output loop takes as EOF (the kernel hands over what is buffered first).
//!
//! CloseIO ends a terminal's input the way a user at its keyboard does: with the
//! terminal's EOF character (VEOF, normally ^D) after the buffered input, twice when that
//! input ended mid-line (the first one only ends the line). containerd's Go shim instead
//! closes the master once stdin ends, which hangs the terminal up: the process gets
//! SIGHUP, and output it writes after that point is lost. docs/shim.md, Terminals.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{tcgetattr, InputFlags, LocalFlags, SpecialCharacterIndices, Termios};
use runc_client::ConsoleSocket;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

use super::fifo_eof::FifoNode;
use super::logger::Logger;
use super::outputs::Outputs;
use super::{open_stdin_fifo, Copiers, StdioPaths, Which};
use crate::error::{Error, Result};

/// How long the pty master may take to arrive once runc returned; runc sends it before it
/// returns, so this only bounds a runtime that misbehaves.
pub const CONSOLE_LIMIT: Duration = Duration::from_secs(10);

/// The pty master of a process with a terminal.
pub struct Console {
    master: OwnedFd,
}

impl Console {
    /// Sets the terminal's size (TIOCSWINSZ); the kernel tells the process with SIGWINCH.
    pub fn resize(&self, width: u32, height: u32) -> io::Result<()> {
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Ends the terminal's input (CloseIO) after the last byte `last` it was given.
    pub(super) async fn end_input(&self, to: &mut pipe::Sender, last: Option<u8>) {
        // On a pty master, termios calls reach the slave's settings, which the process set.
        let termios = match tcgetattr(&self.master) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("terminal stdin close: cannot read its settings: {e}");
                return;
            }
        };
        let eof = eof_sequence(&termios, last);
        if eof.is_empty() {
            log::info!("terminal stdin close: the terminal has no EOF character");
            return;
        }
        if let Err(e) = to.write_all(&eof).await {
            log::debug!("terminal stdin close: {e}");
        }
    }
}

/// What ends the input of a terminal set up as `t` whose last input byte was `last`: its
/// EOF character, twice while a canonical line is open (the first one hands the partial
/// line to the reader, the second reads as end of file). Empty when EOF is disabled.
pub(super) fn eof_sequence(t: &Termios, last: Option<u8>) -> Vec<u8> {
    let cc = |i: SpecialCharacterIndices| t.control_chars[i as usize];
    let eof = cc(SpecialCharacterIndices::VEOF);
    // _POSIX_VDISABLE is 0 on Linux.
    if eof == 0 {
        return Vec::new();
    }
    if !t.local_flags.contains(LocalFlags::ICANON) {
        // Raw mode: the process reads the byte itself; line editors take it as EOF.
        return vec![eof];
    }
    let line_open = match last {
        None => false,
        Some(b) => {
            let enabled = |c: u8| c != 0 && c == b;
            let cr_ends_line = t.input_flags.contains(InputFlags::ICRNL)
                && !t.input_flags.contains(InputFlags::IGNCR);
            !(b == b'\n'
                || (b == b'\r' && cr_ends_line)
                || enabled(cc(SpecialCharacterIndices::VEOL))
                || enabled(cc(SpecialCharacterIndices::VEOL2))
                || b == eof)
        }
    };
    if line_open {
        vec![eof, eof]
    } else {
        vec![eof]
    }
}

/// A terminal's stdio before runc ran: the console socket, containerd's stdin FIFO and
/// the output target, opened.
pub struct Pending {
    id: String,
    socket: ConsoleSocket,
    stdin: Option<pipe::Receiver>,
    stdout: pipe::Sender,
    stdout_node: Option<FifoNode>,
    logger: Option<Logger>,
    spill_dir: PathBuf,
}

impl Pending {
    /// Opens the stdin FIFO and binds the console socket. The terminal's one output
    /// stream goes to `outputs.stdout`; its stderr stays unused (a logging binary sees EOF
    /// on its fd 4 at once, as with the Go shim).
    pub(super) fn new(
        id: &str,
        paths: &StdioPaths,
        outputs: Outputs,
        spill_dir: &Path,
    ) -> Result<Pending> {
        let Some(stdout) = outputs.stdout else {
            // The master must be drained or the process blocks on its first full buffer.
            return Err(Error::InvalidArgument(format!(
                "{id}: a terminal needs a stdout FIFO"
            )));
        };
        // With a terminal the Go shim feeds stdin whatever the output target.
        let stdin = match paths.stdin.as_str() {
            "" => None,
            path => Some(open_stdin_fifo(id, path)?),
        };
        let socket = ConsoleSocket::new()
            .map_err(|e| Error::io(id, "create the console socket", io::Error::other(e)))?;
        Ok(Pending {
            id: id.to_string(),
            socket,
            stdin,
            stdout,
            stdout_node: outputs.stdout_node,
            logger: outputs.logger,
            spill_dir: spill_dir.to_path_buf(),
        })
    }

    /// The path to pass to runc as `--console-socket`.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Takes the pty master runc sent (bounded by [`CONSOLE_LIMIT`]) and starts the copy
    /// loops; the console socket is removed either way.
    pub async fn start(self) -> Result<Copiers> {
        let master = self
            .socket
            .receive_master_within(CONSOLE_LIMIT)
            .await
            .map_err(|e| {
                Error::io(
                    &self.id,
                    "receive the pty master from the runtime",
                    io::Error::other(e),
                )
            })?;
        self.start_with(master)
    }

    /// Starts the copy loops on `master`.
    fn start_with(self, master: OwnedFd) -> Result<Copiers> {
        let id = self.id.as_str();
        // O_NONBLOCK belongs to the open file, so every dup below shares it.
        let flags = fcntl(&master, FcntlArg::F_GETFL)
            .map_err(|e| Error::io(id, "F_GETFL on the pty master", e.into()))?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&master, FcntlArg::F_SETFL(flags))
            .map_err(|e| Error::io(id, "F_SETFL on the pty master", e.into()))?;
        let dup = |what: &str| {
            master
                .try_clone()
                .map_err(|e| Error::io(id, format!("dup the pty master for {what}"), e))
        };
        // tokio's pipe types only read(2)/write(2) a non-blocking fd under epoll, which a
        // pty master supports like a pipe; the checked constructors insist on a FIFO. That
        // it is a pty master runc-client checked when it received it.
        let reader = pipe::Receiver::from_owned_fd_unchecked(dup("output")?)
            .map_err(|e| Error::io(id, "register the pty master", e))?;
        let writer = match self.stdin {
            Some(_) => Some(
                pipe::Sender::from_owned_fd_unchecked(dup("stdin")?)
                    .map_err(|e| Error::io(id, "register the pty master", e))?,
            ),
            None => None,
        };
        let console = Arc::new(Console { master });
        let mut copiers = Copiers::default();
        copiers.logger = self.logger;
        copiers.start_output(
            id,
            Which::Stdout,
            Some(reader),
            self.stdout,
            self.stdout_node,
            &self.spill_dir,
            Vec::new(),
        );
        if let (Some(fifo), Some(writer)) = (self.stdin, writer) {
            copiers.start_stdin(fifo, writer, Some(console.clone()));
        }
        copiers.console = Some(console);
        Ok(copiers)
    }
}

#[cfg(test)]
mod tests;
