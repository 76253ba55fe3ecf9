//! CRIU, which runc runs for checkpoint and restore: finding its binary before runc is
//! started, and reading why it failed from its own log.
//!
//! runc only notices a missing CRIU deep into the call (after freezing the container for
//! a checkpoint); looking first turns that into a clear [`Error::CriuNotFound`]. When CRIU
//! itself fails, runc's message is a generic "criu failed: type DUMP errno 0" followed by
//! the log's path; the reason is in that log, so [`Error::Criu`] carries its last errors.
//!
//! The log is read only where the caller told runc to work (`--work-path`), never at the
//! path runc's message names: that message may quote text from the container, and a path
//! after its last "log file: " would otherwise be opened as root. It is opened without
//! following a symlink and without waiting (a FIFO never blocks), and only a regular file
//! is read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::RuncConfig;
use crate::error::{Error, Result};

/// The name runc looks CRIU up by on its PATH.
pub const DEFAULT_BINARY: &str = "criu";

/// How much of the end of a CRIU log is scanned for its errors.
const LOG_TAIL: u64 = 64 * 1024;
/// How many of CRIU's last error lines an error carries.
const MAX_ERRORS: usize = 4;
/// Longest error line kept (CRIU quotes paths, which can be long).
const MAX_LINE: usize = 300;

/// The CRIU binary runc would run for `cfg`: the configured `criu` path (or name on
/// PATH), else `criu` on PATH. `command` and `id` only label the error.
pub fn locate(cfg: &RuncConfig, command: &'static str, id: &str) -> Result<PathBuf> {
    let wanted = cfg
        .criu
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY));
    let missing = |reason: String| Error::CriuNotFound {
        command,
        id: id.to_string(),
        criu: wanted.clone(),
        reason,
    };
    if wanted.as_os_str().is_empty() {
        return Err(missing("the configured CRIU path is empty".into()));
    }
    if wanted.file_name() != Some(std::ffi::OsStr::new(DEFAULT_BINARY)) {
        return Err(missing(format!(
            "runc runs CRIU as `{DEFAULT_BINARY}` from its PATH (runc 1.2+ ignores --criu, \
             1.4 rejects it), so a configured CRIU must be a file named {DEFAULT_BINARY} \
             (sturdy puts its directory first on runc's PATH)"
        )));
    }
    // Like runc's own lookup: a name with a slash is a path, anything else is searched on
    // the PATH runc inherits from us.
    if wanted.as_os_str().as_bytes().contains(&b'/') {
        return executable(&wanted)
            .map(|()| wanted.clone())
            .map_err(|why| missing(format!("{}: {why}", wanted.display())));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let candidate = dir.join(&wanted);
        if executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(missing(format!(
        "no executable {:?} on PATH {:?} (install CRIU, or configure its path)",
        wanted.display().to_string(),
        path.to_string_lossy()
    )))
}

/// Ok if `p` is a regular file this process may execute; else why not.
fn executable(p: &Path) -> std::result::Result<(), String> {
    let meta = std::fs::metadata(p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => e.to_string(),
    })?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK)
        .map_err(|e| format!("is not executable: {e}"))
}

/// The file name CRIU's log has in the work directory for `command`.
pub(crate) fn log_name(command: &str) -> &'static str {
    if command == "restore" {
        "restore.log"
    } else {
        "dump.log"
    }
}

/// runc 1.1 reports a CRIU failure as "criu failed: ...\nlog file: PATH": its message
/// without the path, and the path (only reported, never opened: see the module docs).
pub(crate) fn log_named_in(message: &str) -> Option<(String, PathBuf)> {
    let (head, path) = message.rsplit_once("log file: ")?;
    let path = path.trim();
    if !path.starts_with('/') || path.contains('\n') {
        return None;
    }
    Some((head.trim_end().to_string(), PathBuf::from(path)))
}

/// Opens a CRIU log for reading: not through a symlink, never waiting (a FIFO's open
/// returns at once), and only a regular file.
pub fn open_log(log: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(log)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", log.display()),
        ));
    }
    Ok(file)
}

/// CRIU's last "Error" lines in `log`, oldest first, without their timestamps; empty when
/// the log cannot be read or is not a regular file ([`open_log`]).
pub fn errors_in_log(log: &Path) -> Vec<String> {
    let Ok(mut file) = open_log(log) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut text = Vec::new();
    if file.take(LOG_TAIL).read_to_end(&mut text).is_err() {
        return Vec::new();
    }
    errors_in(&String::from_utf8_lossy(&text))
}

/// The error lines of a CRIU log text; see [`errors_in_log`].
fn errors_in(text: &str) -> Vec<String> {
    let mut errors: Vec<String> = text
        .lines()
        .filter_map(|line| {
            // "(00.034716) Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds",
            // and in restore logs with the pid first: "pie: 65: Error (...)".
            let at = line.find("Error (")?;
            let mut e: String = line[at..].trim_end().to_string();
            if e.len() > MAX_LINE {
                let mut cut = MAX_LINE;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
                e.push('…');
            }
            Some(e)
        })
        .collect();
    let drop = errors.len().saturating_sub(MAX_ERRORS);
    errors.drain(..drop);
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(criu: Option<&Path>) -> RuncConfig {
        RuncConfig {
            criu: criu.map(Path::to_path_buf),
            ..Default::default()
        }
    }

    #[test]
    fn a_configured_path_must_be_an_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("criu");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            locate(&config(Some(&exe)), "checkpoint", "c1").unwrap(),
            exe
        );

        let plain = dir.path().join("plain").join("criu");
        std::fs::create_dir(plain.parent().unwrap()).unwrap();
        std::fs::write(&plain, "").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let gone = dir.path().join("gone").join("criu");
        let a_dir = dir.path().join("d").join("criu");
        std::fs::create_dir_all(&a_dir).unwrap();
        for (path, why) in [(&gone, "does not exist"), (&a_dir, "is not a regular file")] {
            let err = locate(&config(Some(path)), "restore", "c1").unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("restore c1") && text.contains(why) && text.contains("CRIU"),
                "{text}"
            );
            assert!(err.is_criu_missing());
            assert_eq!(err.command(), Some("restore"));
        }
        // access(X_OK) wants an x bit even for root, as exec does.
        let err = locate(&config(Some(&plain)), "checkpoint", "c1").unwrap_err();
        assert!(err.to_string().contains("not executable"), "{err}");
    }

    #[test]
    fn only_a_binary_named_criu_can_be_configured() {
        // runc looks for `criu` on PATH whatever it is told: any other name is refused
        // before runc runs, a bare name or a path alike.
        for name in ["criu-3.19", "sh", "/usr/bin/sh"] {
            let err = locate(&config(Some(Path::new(name))), "checkpoint", "c1").unwrap_err();
            assert!(err.is_criu_missing(), "{name}");
            assert!(err.to_string().contains("named criu"), "{name}: {err}");
        }
    }

    #[test]
    fn runcs_criu_message_names_the_log() {
        let (head, log) =
            log_named_in("criu failed: type DUMP errno 0\nlog file: /w/dump.log").unwrap();
        assert_eq!(head, "criu failed: type DUMP errno 0");
        assert_eq!(log, PathBuf::from("/w/dump.log"));
        assert!(log_named_in("container does not exist").is_none());
        assert!(log_named_in("log file: relative/dump.log").is_none());
    }

    #[test]
    fn only_the_last_errors_are_kept_without_timestamps() {
        let log = "(00.000001) Version: 3.17.1\n\
                   (00.034716) Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n\
                   (00.034718) Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable\n\
                   (00.034745) Adjust mmap_min_addr 0x1000 -> 0x10000\n\
                   (00.030170) pie: 65: Error (criu/pie/parasite-vdso.c:297): vdso: Can't find vDSO area in image\n\
                   (00.1) Error (a): 1\n(00.2) Error (b): 2\n";
        let errors = errors_in(log);
        assert_eq!(
            errors,
            [
                "Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable",
                "Error (criu/pie/parasite-vdso.c:297): vdso: Can't find vDSO area in image",
                "Error (a): 1",
                "Error (b): 2",
            ]
        );
        let long = format!("Error (x): {}", "é".repeat(400));
        assert!(errors_in(&long)[0].len() <= MAX_LINE + '…'.len_utf8());
        assert!(errors_in_log(Path::new("/nonexistent/dump.log")).is_empty());
    }

    /// A log that is a FIFO, a symlink or not a file is never read, and never waited on.
    #[test]
    fn only_a_regular_log_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.log");
        std::fs::write(&real, "(00.1) Error (a): 1\n").unwrap();
        assert_eq!(errors_in_log(&real), ["Error (a): 1"]);
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Without a writer a blocking open would wait forever: the thread tells.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(errors_in_log(&fifo)).unwrap());
        match rx.recv_timeout(std::time::Duration::from_secs(5)) {
            Ok(errors) => assert!(errors.is_empty()),
            Err(_) => {
                // Unblock the open, so the test process can end, then fail.
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(dir.path().join("fifo.log"));
                panic!("reading a FIFO as CRIU's log hung");
            }
        }
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(errors_in_log(&link).is_empty());
        assert!(errors_in_log(dir.path()).is_empty());
    }
}
