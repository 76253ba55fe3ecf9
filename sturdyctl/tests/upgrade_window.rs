//! A shim that `upgrade-shims` pauses is not hung: while its upgrade window is open the
//! watchdog does not count its unanswered probes, and once the window closes the same
//! silence is a hang again. No containerd here: its socket does not exist.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sturdyctl::journal::Phase;
use sturdyctl::{upgrading, watchdog};

mod common;
use common::{config, journal, recording_shim, shim_bundle, trusted_tempdir, until};

/// A socket that accepts and reads, and never answers: a paused (or hung) shim. Counts
/// the connections it accepted (the prober opens a new one after every miss).
fn silent_socket(path: &std::path::Path) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    accepted
}

fn started(cfg: &watchdog::Config) -> bool {
    journal(cfg)
        .iter()
        .any(|e| matches!(e.phase, Phase::Started { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_shim_is_not_hung_while_its_upgrade_window_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let socket = dir.path().join("shim.sock");
    let probes = silent_socket(&socket);

    // A sturdy shim daemon look-alike of this containerd, run as root from a binary only
    // root can change; exits when its stdin closes.
    let bin_dir = trusted_tempdir();
    let bin = bin_dir.path().join("containerd-shim-sturdy-v2");
    std::fs::copy("/bin/sh", &bin).unwrap();
    let delete_dir = trusted_tempdir();
    let calls = dir.path().join("calls");
    let delete_bin = recording_shim(delete_dir.path(), &calls);
    let address = cfg.address.to_str().unwrap().to_string();
    let mut lookalike = Command::new(&bin)
        .args(["-c", "read x", "sh"])
        .args(["-namespace", "default", "-id", "c1", "-address", &address])
        .stdin(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = lookalike.id() as i32;
    shim_bundle(dir.path(), &cfg, &socket, pid, &delete_bin);
    let start_time = sturdyctl::procfs::identity(pid).unwrap().start_time;
    let window = upgrading::open(&cfg.upgrade_dir, pid, start_time, Duration::from_secs(10))
        .expect("open the upgrade window");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(watchdog::run(cfg.clone(), async {
        let _ = stopped.await;
    }));
    // Twice as many unanswered probes as make a hang (misses = 3), all inside the window.
    let enough = 2 * cfg.misses as usize + 1;
    assert!(
        until(Duration::from_secs(10), || probes.load(Ordering::SeqCst)
            >= enough)
        .await,
        "only {} probes within 10s",
        probes.load(Ordering::SeqCst)
    );
    assert!(
        !started(&cfg),
        "a shim paused inside its upgrade window was recovered: {:#?}",
        journal(&cfg)
    );
    assert!(upgrading::covers(&cfg.upgrade_dir, pid, start_time));

    // The window closes; the same silence is a hang now.
    drop(window);
    assert!(
        until(Duration::from_secs(10), || started(&cfg)).await,
        "still not taken for hung after the window closed: {:#?}",
        journal(&cfg)
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the watchdog did not stop")
        .unwrap()
        .unwrap();
    // The recovery SIGKILLs it; if it did not get that far, our own child ends here.
    let _ = lookalike.kill();
    let _ = lookalike.wait();
}
