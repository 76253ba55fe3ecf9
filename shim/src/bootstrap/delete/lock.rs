//! One `delete` per bundle at a time: containerd's dead-shim cleanup and sturdy's watchdog
//! may run `delete` for the same container at the same moment.
//!
//! The lock is an exclusive `flock` on [`LOCK_FILE`] in the bundle. The holder unlinks the
//! file before it lets go, so a finished delete leaves nothing behind; a waiter that was
//! blocked on the unlinked file notices (the path no longer names the inode it locked) and
//! starts over on a fresh file, so two deletes never both hold "the" lock. The kernel drops
//! the lock when its holder dies, so a killed delete (containerd kills a delete that
//! outlives its cleanup timeout) never blocks the next one.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Name of the lock file inside the bundle.
pub const LOCK_FILE: &str = ".sturdy-delete.lock";
/// How long a delete waits for another one of the same bundle by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// Environment variable overriding [`DEFAULT_WAIT`], in milliseconds.
pub const WAIT_ENV: &str = "STURDY_DELETE_LOCK_WAIT_MS";
/// How often a waiting delete tries the lock again.
const POLL: Duration = Duration::from_millis(10);

/// The outcome of [`acquire`].
pub enum Acquired {
    /// This delete holds the bundle's lock until [`DeleteLock::release`] or drop.
    Locked(DeleteLock),
    /// The bundle directory does not exist (any more): nothing of ours can be in it.
    BundleGone,
}

/// The exclusive right to clean one bundle up.
pub struct DeleteLock {
    path: PathBuf,
    lock: Flock<File>,
}

/// How long to wait for the lock: [`WAIT_ENV`] if set to a number, else [`DEFAULT_WAIT`].
pub fn wait_limit() -> Duration {
    std::env::var(WAIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_WAIT)
}

/// Takes the delete lock of `bundle`, waiting up to `wait` for another delete to finish.
pub fn acquire(bundle: &Path, wait: Duration) -> Result<Acquired, String> {
    let path = bundle.join(LOCK_FILE);
    let deadline = Instant::now() + wait;
    loop {
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            // Never through a symlink someone planted in the bundle.
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Acquired::BundleGone),
            Err(e) => return Err(format!("open {}: {e}", path.display())),
        };
        let lock = lock_until(file, &path, deadline, wait)?;
        // The previous holder unlinks the file before it unlocks: a lock on an inode the
        // path no longer names protects nothing, so start over on the current file.
        let held = lock
            .metadata()
            .map_err(|e| format!("fstat {}: {e}", path.display()))?;
        match std::fs::symlink_metadata(&path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                return Ok(Acquired::Locked(DeleteLock { path, lock }));
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(format!("stat {}: {e}", path.display())),
        }
        drop(lock);
        if Instant::now() >= deadline {
            return Err(timeout(&path, wait));
        }
    }
}

/// Polls a non-blocking `flock` until it succeeds or `deadline` passes: a blocking one
/// could not be bounded without signals.
fn lock_until(
    mut file: File,
    path: &Path,
    deadline: Instant,
    wait: Duration,
) -> Result<Flock<File>, String> {
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR)) => file = f,
            Err((_, e)) => return Err(format!("flock {}: {e}", path.display())),
        }
        if Instant::now() >= deadline {
            return Err(timeout(path, wait));
        }
        std::thread::sleep(POLL);
    }
}

fn timeout(path: &Path, wait: Duration) -> String {
    format!(
        "another delete of this container has held {} for more than {wait:?}; this one did \
         nothing (run delete again once the other has finished or died)",
        path.display()
    )
}

impl DeleteLock {
    /// Unlinks the lock file, then unlocks: waiters on it start over on a fresh file.
    pub fn release(self) -> Result<(), String> {
        let removed = match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(format!("remove {}: {e}", self.path.display()))
            }
            _ => Ok(()),
        };
        drop(self.lock);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(a: Acquired) -> DeleteLock {
        match a {
            Acquired::Locked(l) => l,
            Acquired::BundleGone => panic!("bundle reported gone"),
        }
    }

    #[test]
    fn second_waits_then_times_out_and_release_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let first = locked(acquire(dir.path(), Duration::ZERO).unwrap());
        let err = match acquire(dir.path(), Duration::from_millis(50)) {
            Err(e) => e,
            Ok(_) => panic!("a second holder got the lock"),
        };
        assert!(err.contains("more than 50ms"), "{err}");
        first.release().unwrap();
        assert!(!dir.path().join(LOCK_FILE).exists());
        locked(acquire(dir.path(), Duration::ZERO).unwrap())
            .release()
            .unwrap();
    }

    #[test]
    fn a_waiter_on_the_unlinked_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let first = locked(acquire(dir.path(), Duration::ZERO).unwrap());
        let bundle = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let l = locked(acquire(&bundle, Duration::from_secs(10)).unwrap());
            let path_ino = std::fs::metadata(bundle.join(LOCK_FILE)).unwrap().ino();
            (l.lock.metadata().unwrap().ino(), path_ino, l)
        });
        // Unlink only once the waiter has the first file open (and is polling its lock).
        let path = dir.path().join(LOCK_FILE);
        let end = Instant::now() + Duration::from_secs(10);
        while open_fds(&path) < 2 {
            assert!(
                Instant::now() < end,
                "the waiter never opened the lock file"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        first.release().unwrap();
        let (held, named, l) = waiter.join().unwrap();
        assert_eq!(held, named, "the waiter holds a lock on an unlinked file");
        l.release().unwrap();
    }

    /// How many of this process's fds are open on `path`.
    fn open_fds(path: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == path))
            .count()
    }

    #[test]
    fn gone_bundle_and_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            acquire(&dir.path().join("gone"), Duration::ZERO),
            Ok(Acquired::BundleGone)
        ));
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(LOCK_FILE)).unwrap();
        let err = match acquire(dir.path(), Duration::ZERO) {
            Err(e) => e,
            Ok(_) => panic!("locked through a symlink"),
        };
        assert!(err.contains(LOCK_FILE), "{err}");
    }
}
