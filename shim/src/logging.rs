//! Shim logging into containerd's `log` FIFO in the bundle, without ever blocking.
//!
//! containerd reads that FIFO; while it is down (restart, upgrade) nobody does. A
//! blocking writer would then hang the whole shim once the pipe fills, so writes are
//! non-blocking and lines are dropped (and counted) when the pipe is full.
//!
//! When the FIFO cannot be opened the shim logs to [`FALLBACK_LOG`] in the bundle instead,
//! starting with a line that says why, so a silent shim can be explained.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

struct FifoLog {
    file: Mutex<Option<File>>,
    dropped: AtomicU64,
}

impl log::Log for FifoLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut line = format_line(record.level(), &record.args().to_string());
        if dropped > 0 {
            line.push_str(&format!(" dropped_lines={dropped}"));
        }
        line.push('\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = guard.as_mut() {
            if f.write_all(line.as_bytes()).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {}
}

/// One logfmt line as containerd writes its own, without the trailing newline.
fn format_line(level: log::Level, msg: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "time=\"{}\" level={} msg={msg:?} runtime=io.containerd.sturdy.v2 pid={}",
        rfc3339(now),
        level.as_str().to_lowercase(),
        std::process::id()
    )
}

/// Formats a time since the epoch as RFC 3339 UTC with nanoseconds, as containerd's logs do.
fn rfc3339(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        since_epoch.subsec_nanos()
    )
}

/// Name of containerd's log FIFO in the bundle.
pub const LOG_FIFO: &str = "log";
/// File in the bundle the shim logs to when the FIFO cannot be opened.
pub const FALLBACK_LOG: &str = "shim.log";

/// Opens `dir`'s log FIFO, or else the fallback file with a first line naming the FIFO
/// error. If even that fails the error goes to stderr, the last place left to say it.
fn open_sink(dir: &Path) -> Option<File> {
    let fifo = dir.join(LOG_FIFO);
    // Non-blocking: with no reader (containerd down) open fails with ENXIO instead of
    // waiting, and writes never stall the shim.
    let fifo_err = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&fifo)
    {
        Ok(f) => return Some(f),
        Err(e) => e,
    };
    let fallback: PathBuf = dir.join(FALLBACK_LOG);
    match OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&fallback)
    {
        Ok(mut f) => {
            let why = format_line(
                log::Level::Warn,
                &format!(
                    "cannot open the log FIFO {}: {fifo_err}; logging to {} instead",
                    fifo.display(),
                    fallback.display()
                ),
            );
            if let Err(e) = writeln!(f, "{why}") {
                eprintln!("{why} (and writing that failed: {e})");
            }
            Some(f)
        }
        Err(e) => {
            eprintln!(
                "containerd-shim-sturdy-v2: cannot open the log FIFO {}: {fifo_err}, nor {}: {e}; logs are lost",
                fifo.display(),
                fallback.display()
            );
            None
        }
    }
}

/// Installs the logger writing to `dir`'s log FIFO (Info, or Debug with `debug`), or to
/// [`FALLBACK_LOG`] in `dir` when the FIFO cannot be opened.
pub fn init(dir: &Path, debug: bool) {
    let logger = FifoLog {
        file: Mutex::new(open_sink(dir)),
        dropped: AtomicU64::new(0),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(if debug {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_fifo_with_a_reader_is_used_and_no_fallback_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(LOG_FIFO);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        assert!(open_sink(dir.path()).is_some());
        assert!(!dir.path().join(FALLBACK_LOG).exists());
        drop(reader);
    }

    #[test]
    fn missing_or_unread_fifo_falls_back_to_shim_log_saying_why() {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        // Missing FIFO.
        let dir = tempfile::tempdir().unwrap();
        let mut file = open_sink(dir.path()).unwrap();
        writeln!(file, "second line").unwrap();
        let log = dir.path().join(FALLBACK_LOG);
        let text = std::fs::read_to_string(&log).unwrap();
        let mut lines = text.lines();
        let first = lines.next().unwrap();
        assert!(first.contains("level=warn"), "{first}");
        assert!(first.contains("log FIFO"), "{first}");
        assert!(first.contains("No such file or directory"), "{first}");
        assert_eq!(lines.next(), Some("second line"));
        assert_eq!(
            std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // A FIFO nobody reads (containerd down): ENXIO, appended to the existing file.
        nix::unistd::mkfifo(
            &dir.path().join(LOG_FIFO),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        drop(open_sink(dir.path()));
        let mut text = String::new();
        File::open(&log).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .contains("No such device or address"),
            "{text}"
        );
    }

    #[test]
    fn init_logs_into_the_given_directory() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false);
        log::warn!("init-test-marker");
        let text = std::fs::read_to_string(dir.path().join(FALLBACK_LOG)).unwrap();
        assert!(text.lines().next().unwrap().contains("log FIFO"), "{text}");
        assert!(text.contains("init-test-marker"), "{text}");
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(Duration::new(951_782_400, 5)),
            "2000-02-29T00:00:00.000000005Z"
        );
        assert_eq!(
            rfc3339(Duration::new(1_795_441_805, 207_614_972)),
            "2026-11-23T13:50:05.207614972Z"
        );
    }
}
