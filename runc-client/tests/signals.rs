//! Every process the client spawns starts with default signal dispositions and an empty
//! mask, whatever the calling process ignores or blocks (a shim started by a parent that
//! ignored signals 32 and 33 once passed that on to runc and to every container's init).
//!
//! A test binary of its own: ignoring signals is process-wide.

mod common;

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use common::fake::{next, Fake};
use common::{require_runc, unique_id, Bundle, ContainerGuard, Root};
use runc_client::{CreateOpts, Pipe, ProcessIo};

/// Ignored in this process: SIGHUP and SIGUSR1, glibc's internal 33, a real-time signal.
const IGNORED: [i32; 4] = [libc::SIGHUP, libc::SIGUSR1, 33, 40];
/// Blocked on the spawning thread.
const BLOCKED: [i32; 2] = [libc::SIGUSR2, 35];

fn ignore_signals() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in IGNORED {
            // glibc refuses to touch its internal signals (32, 33): ask the kernel directly.
            // Kernel sigaction: handler, flags, restorer, mask; SIG_IGN needs no restorer.
            let act: [u64; 4] = [libc::SIG_IGN as u64, 0, 0, 0];
            // SAFETY: a valid kernel sigaction and no old-action pointer.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    act.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                )
            };
            assert_eq!(r, 0, "ignoring {sig}: {}", std::io::Error::last_os_error());
        }
    });
}

/// Blocks `BLOCKED` on the current thread, which (in a current-thread runtime) spawns.
fn block_signals() {
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for sig in BLOCKED {
            libc::sigaddset(&mut set, sig);
        }
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
            0
        );
    }
}

/// The mask with one bit per signal, as /proc/<pid>/status prints it.
fn mask(signals: &[i32]) -> u64 {
    signals.iter().fold(0, |m, s| m | 1 << (s - 1))
}

/// SigIgn and SigBlk from a /proc/<pid>/status text.
fn ign_blk(status: &str) -> (u64, u64) {
    let field = |name: &str| {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status:?}"));
        u64::from_str_radix(line.trim(), 16).unwrap()
    };
    (field("SigIgn:"), field("SigBlk:"))
}

/// This process really ignores and this thread really blocks what the test claims.
fn assert_setup_took() {
    let me = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let (ign, blk) = ign_blk(&me);
    assert_eq!(
        ign & mask(&IGNORED),
        mask(&IGNORED),
        "setup: SigIgn {ign:x}"
    );
    assert_eq!(
        blk & mask(&BLOCKED),
        mask(&BLOCKED),
        "setup: SigBlk {blk:x}"
    );
}

/// Drained calls, create with preserved fds, and the events stream are three spawn paths.
#[tokio::test]
async fn runtime_starts_with_default_signals() {
    ignore_signals();
    block_signals();
    assert_setup_took();
    let fake = Fake::new(
        "for a; do case $a in probe|create|events) CMD=$a;; esac; done\n\
         # Builtins only: a shell waiting for a child blocks every signal meanwhile.\n\
         while IFS= read -r l; do echo \"$l\"; done < /proc/$$/status > \"$DIR/status-$CMD\"\n\
         [ \"$CMD\" = events ] && echo '{\"type\":\"oom\",\"id\":\"c1\"}'\n\
         exit 0",
    );
    fake.runc
        .raw("probe", "c1", &["probe"], Duration::from_secs(10))
        .await
        .unwrap();
    let opts = CreateOpts {
        extra_files: vec![Pipe::new().unwrap().write],
        ..Default::default()
    };
    fake.runc
        .create("c1", Path::new("/b"), &opts)
        .await
        .unwrap();
    let mut events = fake
        .runc
        .events("c1", Duration::from_secs(1))
        .await
        .unwrap();
    next(&mut events).await.unwrap().unwrap();
    assert!(next(&mut events).await.is_none());
    for cmd in ["probe", "create", "events"] {
        let status = std::fs::read_to_string(fake.path(&format!("status-{cmd}"))).unwrap();
        assert_eq!(ign_blk(&status), (0, 0), "{cmd}: (SigIgn, SigBlk)");
    }
}

/// What runc inherits, a container's init inherits too (runc's Go runtime leaves the
/// signals it never handles, such as 33 and an ignored SIGHUP, as it found them).
#[tokio::test]
async fn container_init_starts_with_default_signals() {
    require_runc!();
    ignore_signals();
    block_signals();
    assert_setup_took();
    let root = Root::new();
    let runc = root.client();
    let id = unique_id("sigs");
    let bundle = Bundle::new(&id, &["cat", "/proc/self/status"], |_| {});
    let _guard = ContainerGuard::new(&runc, &id);
    let out = Pipe::new().unwrap();
    let opts = CreateOpts {
        io: ProcessIo {
            stdout: Some(out.write.try_clone().unwrap()),
            ..Default::default()
        },
        ..Default::default()
    };
    runc.create(&id, bundle.path(), &opts).await.unwrap();
    drop(opts);
    drop(out.write);
    runc.start(&id).await.unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(out.read), &mut s).map(|_| s)
    });
    let status = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ign_blk(&status), (0, 0), "container init (SigIgn, SigBlk)");
    runc.delete(&id, true).await.unwrap();
}
