//! `sturdy-lookalike`: a stand-in that any local user could put on a node, for tests that
//! prove sturdyctl never runs or believes it (security review 2026-12, H1/H2/L18).
//!
//! Run with `LOOKALIKE_SERVE=1` it stays alive as the impostor process (under whatever
//! `argv[0]` it was given), holding an exclusive flock on `$LOOKALIKE_LOCK` first if that
//! is set. Run any other way, as sturdyctl would run a binary it found through the
//! impostor, it leaves `<its own path>.ran` (its arguments and uid) and prints a plausible
//! version line, so a test sees that it ran.

use std::io::Write;
use std::os::fd::AsRawFd;

fn main() {
    if std::env::var_os("LOOKALIKE_SERVE").is_some() {
        let _lock = std::env::var_os("LOOKALIKE_LOCK").map(|path| {
            let file = std::fs::File::open(&path).expect("open the lock file");
            // SAFETY: flock(2) on an fd this process owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
            file
        });
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    let me = std::env::current_exe().expect("own path");
    let mut marker = me.into_os_string();
    marker.push(".ran");
    let args: Vec<String> = std::env::args().collect();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&marker)
        .expect("write the marker");
    writeln!(f, "uid {uid}: {args:?}").expect("write the marker");
    println!("containerd github.com/containerd/containerd v9.9.9 lookalike");
}
