//! `--check-handover <file|fd>` and `--handover-sample`: what `sturdyctl upgrade-shims`
//! asks of a binary before it lets any shim exec into it.
//!
//! `--check-handover` decodes and validates a handover document and prints its summary as
//! JSON; it touches nothing else (the fds a document names belong to another process and
//! are not looked at). A numeric argument is an inherited fd, which must be a sealed memfd;
//! anything else is a path to a regular file (a fixture or a dump), opened without
//! following a final symlink. `--handover-sample` prints a document of the format this
//! binary writes, so a new binary can be tried on what an old one writes.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::handover::{self, memfd, HandoverError};

/// The flags, in the two spellings the binary accepts for every flag.
pub(super) const CHECK: [&str; 2] = ["--check-handover", "-check-handover"];
pub(super) const SAMPLE: [&str; 2] = ["--handover-sample", "-handover-sample"];

/// Runs `--check-handover ARG`; returns the exit code.
pub(super) fn check(arg: Option<&str>) -> i32 {
    let Some(arg) = arg else {
        eprintln!("containerd-shim-sturdy-v2: --check-handover needs a file or an fd number");
        return 2;
    };
    match read(arg).and_then(|bytes| handover::decode(&bytes)) {
        Ok(doc) => match serde_json::to_string(&doc.summary()) {
            Ok(s) => {
                println!("{s}");
                0
            }
            Err(e) => {
                eprintln!("containerd-shim-sturdy-v2 --check-handover: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("containerd-shim-sturdy-v2 --check-handover {arg}: {e}");
            1
        }
    }
}

/// Prints a sample document of the format this binary writes; returns the exit code.
pub(super) fn sample() -> i32 {
    match handover::encode(&handover::v2::sample()) {
        Ok(bytes) => {
            println!("{}", String::from_utf8_lossy(&bytes));
            0
        }
        Err(e) => {
            eprintln!("containerd-shim-sturdy-v2 --handover-sample: {e}");
            1
        }
    }
}

fn read(arg: &str) -> Result<Vec<u8>, HandoverError> {
    if let Ok(fd) = arg.parse::<i32>() {
        if fd <= 2 || !fd_is_open(fd) {
            return Err(HandoverError::Io {
                what: format!("fd {fd}"),
                source: std::io::Error::from_raw_os_error(libc::EBADF),
            });
        }
        // SAFETY: an fd this process inherited for this purpose, open (checked above), and
        // used by nothing else in this short-lived run.
        let file = unsafe { File::from_raw_fd(fd) };
        return memfd::read_sealed(&file);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(arg)
        .map_err(|source| HandoverError::Io {
            what: format!("open {arg}"),
            source,
        })?;
    let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !is_file {
        return Err(HandoverError::Io {
            what: format!("open {arg}"),
            source: std::io::Error::other("not a regular file"),
        });
    }
    memfd::read_bounded(&file, arg)
}

fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}
