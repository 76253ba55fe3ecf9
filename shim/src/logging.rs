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
            "time=\"{}.{:09}\" level={} msg={:?} runtime=io.containerd.sturdy.v2 pid={}",
            now.as_secs(),
            now.subsec_nanos(),
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
