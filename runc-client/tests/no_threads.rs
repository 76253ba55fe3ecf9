//! A process that cannot get another thread (pids or memory used up): the call that needed
//! one fails, and nothing panics (the shim's production build aborts on a panic). Alone in
//! its test binary, because it squeezes the whole process's address space for a moment.

use std::path::Path;

/// Caps the address space just above what is mapped now, so that no new thread stack fits;
/// lifted again on drop.
struct Squeezed(libc::rlimit);

impl Squeezed {
    fn now() -> Squeezed {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit on valid structs we own.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut old), 0);
            let tight = libc::rlimit {
                rlim_cur: (kib << 10) + (256 << 10),
                rlim_max: old.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &tight), 0);
        }
        Squeezed(old)
    }
}

impl Drop for Squeezed {
    fn drop(&mut self) {
        // SAFETY: restores the soft limit we lowered; the hard limit never changed.
        unsafe { libc::setrlimit(libc::RLIMIT_AS, &self.0) };
    }
}

#[tokio::test]
async fn a_fifo_open_without_a_thread_to_spare_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let squeezed = Squeezed::now();
    let opened = runc_client::open_fifo_nonblocking(Path::new(&fifo), true, true).await;
    drop(squeezed);
    let err = opened.expect_err("a thread was started after all");
    assert!(err.to_string().contains("thread"), "{err}");
    // With room again it works.
    runc_client::open_fifo_nonblocking(&fifo, true, true)
        .await
        .unwrap();
}
