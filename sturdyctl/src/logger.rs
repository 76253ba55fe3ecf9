//! A minimal stderr logger: `<UTC time> <LEVEL> <message>`, one line per record.
//!
//! The watchdog runs in the foreground under a supervisor that collects stderr, so nothing
//! fancier (files, rotation, JSON) is needed; `STURDYCTL_LOG=debug` shows more.

use std::io::Write;

struct Stderr {
    level: log::LevelFilter,
}

impl log::Log for Stderr {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Dependencies' chatter (tonic, h2, hyper) only at trace.
        let ours =
            record.target().starts_with("sturdyctl") || record.target().starts_with("runc_client");
        if !ours && self.level < log::LevelFilter::Trace {
            return;
        }
        let line = format!(
            "{} {:<5} {}\n",
            crate::units::format_ms(crate::journal::now_ms()),
            record.level(),
            record.args()
        );
        // One write per line so concurrent records do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger at the level `STURDYCTL_LOG` names (default info).
pub fn init() {
    let level = std::env::var("STURDYCTL_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    if log::set_boxed_logger(Box::new(Stderr { level })).is_ok() {
        log::set_max_level(level);
    }
}
