//! The journal and its lock are root's alone (security review 2026-12, M1 and L10): no
//! local user can read what the watchdog recorded, nor keep a watchdog from starting by
//! holding a lock on its lock file.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sturdyctl::journal::{lock_path, Entry, Journal, Phase, DEFAULT_MAX_BYTES};

mod common;
use common::until;

const NOBODY: u32 = 65534;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// `flock --shared LOCK sleep 300` as nobody; killed and reaped on drop.
struct UserLock(Child);

impl UserLock {
    async fn hold(lock: &Path) -> UserLock {
        let child = Command::new("flock")
            .arg("--shared")
            .arg(lock)
            .args(["sleep", "300"])
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("flock (util-linux)");
        let held = UserLock(child);
        // Held once an exclusive attempt of ours would block.
        let file = std::fs::File::open(lock).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let blocks = || {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return true;
            }
            // SAFETY: as above; drop the lock we just took.
            unsafe { libc::flock(fd, libc::LOCK_UN) };
            false
        };
        assert!(
            until(Duration::from_secs(10), blocks).await,
            "nobody's flock never took the lock"
        );
        held
    }
}

impl Drop for UserLock {
    fn drop(&mut self) {
        // SAFETY: kill of the process group our own child leads.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn entry() -> Entry {
    Entry {
        at_ms: 1,
        incident: "default/c1@1.1".into(),
        phase: Phase::Finished {
            ok: true,
            total_ms: 1,
            summary: "done".into(),
        },
    }
}

/// The layout an older sturdyctl left (a 0755 directory, a 0644 lock file), with a local
/// user holding a shared lock on that file: the watchdog still gets its lock, and from
/// then on nobody but root can open anything of it.
#[tokio::test]
async fn a_user_holding_the_old_lock_file_does_not_keep_the_watchdog_out() {
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = base.path().join("sturdy");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("watchdog.journal");
    let lock = lock_path(&path);
    std::fs::write(&lock, "").unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _held = UserLock::hold(&lock).await;

    let journal = Journal::new(&path, DEFAULT_MAX_BYTES);
    journal
        .lock_exclusive()
        .expect("a user's lock on the old lock file kept the watchdog from starting");
    journal.append(&entry()).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&lock), 0o600);
    assert_eq!(mode(&path), 0o600);

    // And the user cannot take the new one (nor even open it).
    let status = Command::new("flock")
        .args(["--shared", "--nonblock"])
        .arg(&lock)
        .arg("true")
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap();
    assert!(!status.success(), "nobody could lock the new lock file");
}

/// A fresh journal: 0600 files in a 0700 directory; a journal that is a symlink is
/// refused, never followed.
#[test]
fn journal_files_are_private_and_never_followed() {
    let base = tempfile::tempdir().unwrap();
    let path = base.path().join("sturdy").join("watchdog.journal");
    let journal = Journal::new(&path, DEFAULT_MAX_BYTES);
    journal.lock_exclusive().unwrap();
    journal.append(&entry()).unwrap();
    journal.trim().unwrap();
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&lock_path(&path)), 0o600);
    assert_eq!(journal.read().unwrap(), vec![entry()]);

    let target = base.path().join("elsewhere");
    std::fs::write(&target, "").unwrap();
    let linked = base.path().join("sturdy").join("linked.journal");
    std::os::unix::fs::symlink(&target, &linked).unwrap();
    let err = Journal::new(&linked, DEFAULT_MAX_BYTES)
        .append(&entry())
        .unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"",
        "written through the link"
    );
}
