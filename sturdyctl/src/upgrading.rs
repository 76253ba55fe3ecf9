//! Upgrade windows: while `sturdyctl upgrade-shims` holds a shim's requests (a rehearsal
//! now; the exec of a real upgrade later), a probe of that shim goes unanswered for as long
//! as the pause lasts. The command marks the window in a file only root can write, and the
//! watchdog does not count a miss of a shim inside an open window, so the pause is never
//! taken for a hang (docs/upgrade.md).
//!
//! A window names the process by pid and start time (a marker cannot shield a process
//! that reused the pid), ends at a given time, and is never honoured for more than
//! [`MAX_WINDOW`] ahead, so a stale or mistaken marker shields a shim briefly at most.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::private;

/// Where windows are marked.
pub const DEFAULT_DIR: &str = "/run/sturdy/upgrading";
/// The longest a window is honoured ahead of now.
pub const MAX_WINDOW: Duration = Duration::from_secs(15);
/// Largest marker read.
const MAX_FILE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Window {
    pid: i32,
    /// Start time of the process, clock ticks since boot (/proc/PID/stat field 22).
    start_time: u64,
    /// When the window ends, ms since the Unix epoch.
    until_ms: u64,
}

/// An open window; closed (its marker removed) when dropped.
#[derive(Debug)]
pub struct Open {
    path: PathBuf,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("{}: removing the upgrade window: {e}", self.path.display());
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Opens a window of `len` (at most [`MAX_WINDOW`]) for the process `pid` started at
/// `start_time`, marked in `dir` (created 0700).
pub fn open(dir: &Path, pid: i32, start_time: u64, len: Duration) -> std::io::Result<Open> {
    private::directory(dir)?;
    let path = dir.join(pid.to_string());
    let window = Window {
        pid,
        start_time,
        until_ms: now_ms() + len.min(MAX_WINDOW).as_millis() as u64,
    };
    let mut file = private::open(
        &path,
        std::fs::OpenOptions::new().write(true).truncate(true),
        true,
    )?;
    file.write_all(&serde_json::to_vec(&window).map_err(std::io::Error::other)?)?;
    Ok(Open { path })
}

/// Whether an open window in `dir` covers the process `pid` started at `start_time` now.
/// Anything but root's own marker, in root's own directory, naming exactly this process,
/// ending within [`MAX_WINDOW`], covers nothing.
pub fn covers(dir: &Path, pid: i32, start_time: u64) -> bool {
    match read(dir, pid) {
        Ok(Some(w)) => {
            let now = now_ms();
            w.pid == pid
                && w.start_time == start_time
                && w.until_ms > now
                && w.until_ms <= now + MAX_WINDOW.as_millis() as u64
        }
        Ok(None) => false,
        Err(e) => {
            log::warn!("upgrade window of pid {pid} in {}: {e}", dir.display());
            false
        }
    }
}

fn read(dir: &Path, pid: i32) -> std::io::Result<Option<Window>> {
    if !dir.exists() {
        return Ok(None);
    }
    // Checks (and keeps) the directory root's: a marker elsewhere is nobody's word.
    private::directory(dir)?;
    let path = dir.join(pid.to_string());
    let file = match private::open(&path, std::fs::OpenOptions::new().read(true), false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other("marker too large"));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn dir() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("upgrading");
        (t, d)
    }

    #[test]
    fn a_window_covers_its_process_until_it_ends_or_closes() {
        let (_t, d) = dir();
        assert!(!covers(&d, 42, 7), "no directory, no window");
        let w = open(&d, 42, 7, Duration::from_secs(5)).unwrap();
        assert!(covers(&d, 42, 7));
        assert!(!covers(&d, 42, 8), "the pid reused by another process");
        assert!(!covers(&d, 43, 7));
        let mode = std::fs::metadata(d.join("42"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(w);
        assert!(!covers(&d, 42, 7), "closed");
        let _ended = open(&d, 42, 7, Duration::ZERO).unwrap();
        assert!(!covers(&d, 42, 7), "ended");
    }

    #[test]
    fn markers_beyond_the_limit_or_not_roots_cover_nothing() {
        let (_t, d) = dir();
        private::directory(&d).unwrap();
        let far = Window {
            pid: 42,
            start_time: 7,
            until_ms: now_ms() + 3_600_000,
        };
        std::fs::write(d.join("42"), serde_json::to_vec(&far).unwrap()).unwrap();
        assert!(!covers(&d, 42, 7), "an hour-long window was honoured");
        // Another user's marker.
        let _w = open(&d, 43, 7, Duration::from_secs(5)).unwrap();
        std::os::unix::fs::chown(d.join("43"), Some(65534), None).unwrap();
        assert!(!covers(&d, 43, 7), "a marker of uid 65534 was honoured");
        // A symlink to a valid marker.
        let _v = open(&d, 44, 7, Duration::from_secs(5)).unwrap();
        std::os::unix::fs::symlink(d.join("44"), d.join("45")).unwrap();
        assert!(!covers(&d, 45, 7), "a symlinked marker was honoured");
        std::fs::write(d.join("46"), "not json").unwrap();
        assert!(!covers(&d, 46, 7));
    }
}
