//! Two deletes of one bundle are serialised by the bundle's delete lock: the second waits
//! for the first and then finds the work done, so the runtime's delete runs exactly once.

use std::path::Path;
use std::time::Duration;

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;
use nix::fcntl::{Flock, FlockArg};

use super::common::{
    calls_of, delete_args, fake_runtime, has_open, run, spawn, wait_for, write_record,
};

const LOCK: &str = ".sturdy-delete.lock";
const LIMIT: Duration = Duration::from_secs(20);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Guaranteed: both succeed, the runtime's `delete` runs once (the second delete finds no
/// record and runs no runtime), and the lock file is gone afterwards.
#[test]
fn concurrent_deletes_both_succeed_and_the_runtime_deletes_once() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let release = dir.path().join("release");
    // A runtime whose delete holds on until the test lets it finish.
    let (runtime, calls) = fake_runtime(
        dir.path(),
        "slow-runc",
        &format!(
            "while [ ! -e '{}' ]; do sleep 0.01; done\nexit 0",
            release.display()
        ),
    );
    write_record(&bundle, "twice", &runtime, &dir.path().join("root"));
    std::fs::write(bundle.join("init.pid"), "4242").unwrap();
    let b = bundle.to_str().unwrap();
    let args = delete_args("twice", b);

    let first = spawn(dir.path(), &args, &[]);
    assert!(
        wait_for(LIMIT, || calls_of(&calls, "delete") == 1),
        "the first delete never reached the runtime"
    );
    let second = spawn(dir.path(), &args, &[]);
    let lock = bundle.join(LOCK);
    // The second is either waiting on the lock (serialised) or already in the runtime.
    let waiting = wait_for(LIMIT, || {
        has_open(second.id(), &lock) || calls_of(&calls, "delete") > 1
    });
    std::fs::write(&release, "").unwrap();
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(waiting, "the second delete neither waited nor ran");
    assert!(first.status.success(), "first: {}", stderr(&first));
    assert!(second.status.success(), "second: {}", stderr(&second));
    assert_eq!(
        calls_of(&calls, "delete"),
        1,
        "the runtime's delete ran more than once: {:?}",
        std::fs::read_to_string(&calls)
    );
    let pids: Vec<u32> = [&first, &second]
        .iter()
        .map(|o| DeleteResponse::parse_from_bytes(&o.stdout).unwrap().pid)
        .collect();
    assert!(pids.contains(&4242) && pids.contains(&0), "{pids:?}");
    for f in ["sturdy.json", "init.pid", LOCK] {
        assert!(!bundle.join(f).exists(), "{f} left behind");
    }
}

/// With the bundle directory gone nothing of ours can be in it: delete succeeds (and runs
/// no runtime), removing the stale socket a shim of this id would have had.
#[test]
fn delete_of_a_missing_bundle_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    let address = format!("{}/containerd.sock", dir.path().display());
    let args = [
        "-namespace",
        "sturdy-proto-test",
        "-id",
        "vanished",
        "-address",
        &address,
        "-bundle",
        gone.to_str().unwrap(),
        "delete",
    ];
    let socket = containerd_shim::socket_address(&address, "sturdy-proto-test", "vanished");
    let socket = Path::new(socket.strip_prefix("unix://").unwrap()).to_path_buf();
    // Only where containerd keeps its sockets already: the test creates no host directory.
    let stale = socket.parent().is_some_and(Path::is_dir);
    if stale {
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    } else {
        test_skip::skip(format!(
            "{} does not exist: the stale socket part is skipped",
            socket.parent().unwrap().display()
        ));
    }
    let out = run(dir.path(), &args, b"", &[]);
    let _ = std::fs::remove_file(&socket);
    assert!(out.status.success(), "{}", stderr(&out));
    let resp = DeleteResponse::parse_from_bytes(&out.stdout).expect("DeleteResponse");
    assert_eq!((resp.pid, resp.exit_status), (0, 137));
    assert!(!gone.exists(), "delete created the bundle");
    if stale {
        assert!(
            stderr(&out).contains("removed stale socket"),
            "{}",
            stderr(&out)
        );
    }
}

/// A lock someone holds for longer than the wait is a clear error, and nothing is done.
#[test]
fn a_lock_held_longer_than_the_wait_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, calls) = fake_runtime(dir.path(), "runc", "exit 0");
    write_record(dir.path(), "held", &runtime, &dir.path().join("root"));
    let lock_path = dir.path().join(LOCK);
    let file = std::fs::File::create(&lock_path).unwrap();
    let held = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let b = dir.path().to_str().unwrap();
    let out = run(
        dir.path(),
        &delete_args("held", b),
        b"",
        &[("STURDY_DELETE_LOCK_WAIT_MS", "300")],
    );
    drop(held);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "delete ran while another held the lock"
    );
    assert!(
        err.contains(LOCK) && err.contains("another delete"),
        "{err}"
    );
    assert!(err.contains("300ms"), "{err}");
    assert_eq!(calls_of(&calls, "delete"), 0, "the runtime ran");
    assert!(dir.path().join("sturdy.json").exists(), "record removed");
}
