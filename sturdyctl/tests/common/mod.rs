//! What the watchdog tests without containerd share.

use std::path::Path;
use std::time::Duration;

use sturdyctl::journal::DEFAULT_MAX_BYTES;
use sturdyctl::watchdog::Config;

/// A watchdog on `dir`: containerd's socket does not exist there (as while containerd is
/// down), probes every 100 ms.
pub fn config(dir: &Path) -> Config {
    Config {
        address: dir.join("containerd.sock"),
        state_dir: dir.join("state"),
        runtimes: vec!["io.containerd.sturdy.v2".into()],
        interval: Duration::from_millis(100),
        misses: 3,
        journal: dir.join("watchdog.journal"),
        journal_max_bytes: DEFAULT_MAX_BYTES,
        containerd_grace: Duration::from_millis(100),
        delete_timeout: Duration::from_secs(5),
        sandboxes: None,
    }
}
