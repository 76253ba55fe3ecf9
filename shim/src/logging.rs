//! Shim logging into containerd's `log` FIFO in the bundle, without ever blocking.
//!
//! containerd reads that FIFO; while it is down (restart, upgrade) nobody does. A
//! blocking writer would then hang the whole shim once the pipe fills, so writes are
//! non-blocking and lines are dropped (and counted) when the pipe is full.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut line = format!(
            "time=\"{}\" level={} msg={:?} runtime=io.containerd.sturdy.v2 pid={}",
            rfc3339(now),
            record.level().as_str().to_lowercase(),
            record.args().to_string(),
            std::process::id()
        );
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

/// Installs the FIFO logger (Info, or Debug with `-debug`).
pub fn init(debug: bool) {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("log")
        .ok();
    let logger = FifoLog {
        file: Mutex::new(file),
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
