//! The shim binary's command-line protocol as containerd drives it: `-v`, `start`
//! (grouping, socket reuse, no daemon left behind on failure) and the daemon's log
//! fallback. What `start` reads and answers per containerd generation is in
//! bootstrap_protocol.rs, `delete` in delete_protocol.rs. Runs the real binary; no
//! containerd needed.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::start::{
    bundle_with, leftovers, processes_with_arg, start_args, unique_id, Daemons, Leftovers,
};
use common::{run, wait_for};
use containerd_shim::bootstrap::BootstrapParams;
use containerd_shim_protos::protobuf::Message;

#[test]
fn version_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["-v"], b"", &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("containerd-shim-sturdy-v2"), "{text}");
    assert!(
        text.contains("Version:") && text.contains("Revision:"),
        "{text}"
    );
}

#[test]
fn start_groups_pod_containers_into_one_daemon() {
    // A unique containerd address makes the socket names unique to this test run.
    let address = format!("/tmp/sturdy-proto-{}.sock", std::process::id());
    let env = [("TTRPC_ADDRESS", "/nonexistent/containerd.sock.ttrpc")];
    let mut daemons = Daemons(Vec::new());

    let sandbox = bundle_with(serde_json::json!({ "io.kubernetes.cri.sandbox-id": "pod-1" }));
    let out = run(sandbox.path(), &start_args("pod-1", &address), b"", &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = String::from_utf8(out.stdout).unwrap();
    daemons.track(sandbox.path(), &addr);
    // containerd 1.6/1.7 want exactly the address on stdout, nothing else.
    assert!(addr.starts_with("unix:///run/containerd/s/"), "{addr:?}");
    assert_eq!(addr.trim(), addr);
    let sock = PathBuf::from(addr.strip_prefix("unix://").unwrap());
    let meta = std::fs::metadata(&sock).expect("socket exists");
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(sandbox.path().join("address")).unwrap(),
        addr
    );

    // A container of the same pod reuses the live daemon: same address, no new daemon.
    let member = bundle_with(serde_json::json!({ "io.kubernetes.cri.sandbox-id": "pod-1" }));
    let out = run(member.path(), &start_args("ctr-a", &address), b"", &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), addr);
    assert!(
        !member.path().join("shim.pid").exists(),
        "a second daemon was started"
    );

    // A pod's container cannot leave its pod's shim by a group annotation (CRI may pass
    // one through from the pod)...
    let escaping = bundle_with(serde_json::json!({
        "io.kubernetes.cri.sandbox-id": "pod-1",
        "io.containerd.runc.v2.group": "group-x",
    }));
    let out = run(escaping.path(), &start_args("ctr-b", &address), b"", &env);
    assert!(out.status.success());
    let own = String::from_utf8(out.stdout).unwrap();
    daemons.track(escaping.path(), &own);
    assert_eq!(own, addr);
    assert!(!escaping.path().join("shim.pid").exists());

    // ...while outside CRI the group annotation groups.
    let grouped = bundle_with(serde_json::json!({ "io.containerd.runc.v2.group": "group-x" }));
    let out = run(grouped.path(), &start_args("ctr-c", &address), b"", &env);
    assert!(out.status.success());
    let other = String::from_utf8(out.stdout).unwrap();
    daemons.track(grouped.path(), &other);
    assert_ne!(other, addr);
    let joined = bundle_with(serde_json::json!({ "io.containerd.runc.v2.group": "group-x" }));
    let out = run(joined.path(), &start_args("ctr-d", &address), b"", &env);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), other);

    // A stale socket (daemon gone) is replaced by a fresh daemon.
    drop(daemons);
    assert!(!sock.exists() || std::os::unix::net::UnixStream::connect(&sock).is_err());
    let mut daemons = Daemons(Vec::new());
    std::fs::remove_file(sandbox.path().join("shim.pid")).ok();
    let out = run(sandbox.path(), &start_args("pod-1", &address), b"", &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), addr);
    daemons.track(sandbox.path(), &addr);
    assert!(sandbox.path().join("shim.pid").exists(), "no fresh daemon");
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
}

#[test]
fn daemon_without_a_log_fifo_says_why_in_shim_log() {
    let address = format!("/tmp/sturdy-proto-log-{}.sock", std::process::id());
    let env = [("TTRPC_ADDRESS", "/nonexistent/containerd.sock.ttrpc")];
    let mut daemons = Daemons(Vec::new());
    // No `log` FIFO in this bundle: containerd did not (or could not) create it.
    let bundle = bundle_with(serde_json::json!({}));
    let out = run(bundle.path(), &start_args("nolog", &address), b"", &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemons.track(bundle.path(), &String::from_utf8(out.stdout).unwrap());
    let log = bundle.path().join("shim.log");
    let said_why = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("serving on"))
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        said_why,
        "no fallback log with the daemon's lines: {text:?}"
    );
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains("log FIFO") && first.contains("No such file or directory"),
        "{first}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn start_kills_its_daemon_when_it_cannot_record_it() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let id = format!("pidfail-{}-{nanos}", std::process::id());
    let address = format!("/tmp/sturdy-proto-pf-{}.sock", std::process::id());
    let sock = PathBuf::from(
        containerd_shim::socket_address(&address, "sturdy-proto-test", &id)
            .strip_prefix("unix://")
            .unwrap(),
    );
    let _leftovers = Leftovers {
        id: id.clone(),
        sock: sock.clone(),
    };
    let bundle = bundle_with(serde_json::json!({}));
    // A directory where shim.pid belongs: writing the daemon's pid fails.
    std::fs::create_dir(bundle.path().join("shim.pid")).unwrap();
    let env = [("TTRPC_ADDRESS", "/nonexistent/containerd.sock.ttrpc")];
    let out = run(bundle.path(), &start_args(&id, &address), b"", &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start succeeded: {err}");
    assert!(err.contains("shim.pid"), "{err}");
    assert!(out.stdout.is_empty(), "an address was printed");
    assert_eq!(
        processes_with_arg(&id),
        Vec::<i32>::new(),
        "the daemon outlived the failed start"
    );
    assert!(!sock.exists(), "socket {} left behind", sock.display());
    assert!(
        !bundle.path().join("address").exists(),
        "address written for a daemon that is gone"
    );
}

/// The daemon's exec fails (its environment is over the kernel's limit for one string):
/// `start` must say so and leave nothing behind, not announce an address nobody serves.
#[test]
fn start_fails_when_the_daemon_cannot_be_executed() {
    let id = unique_id("execfail");
    let address = format!("/tmp/sturdy-proto-ef-{}.sock", std::process::id());
    let left = leftovers(&id, &address);
    let bundle = bundle_with(serde_json::json!({}));
    // containerd's TTRPC address goes into the daemon's environment; 200 KiB is more
    // than execve takes in one string (E2BIG), while `start` itself ran fine.
    let params = BootstrapParams {
        instance_id: id.clone(),
        namespace: "sturdy-proto-test".into(),
        containerd_ttrpc_address: format!("/{}", "a".repeat(200 << 10)),
        ..Default::default()
    };
    let out = run(
        bundle.path(),
        &start_args(&id, &address),
        &params.write_to_bytes().unwrap(),
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start succeeded: {err}");
    assert!(err.contains("spawn shim daemon"), "{err}");
    assert!(out.stdout.is_empty(), "an address was printed");
    assert!(
        !left.sock.exists(),
        "socket {} left behind",
        left.sock.display()
    );
    assert!(!bundle.path().join("address").exists());
}

/// An upgrade replaces the binary while `start` runs: the daemon still starts (the binary
/// of this `start`, by /proc/self/exe), with the installed path as its argv[0].
#[test]
fn start_runs_the_daemon_after_an_upgrade_replaced_its_binary() {
    use std::io::Write;
    let id = unique_id("upgraded");
    let address = format!("/tmp/sturdy-proto-up-{}.sock", std::process::id());
    let left = leftovers(&id, &address);
    let bin = tempfile::tempdir().unwrap();
    let shim = bin.path().join("containerd-shim-sturdy-v2");
    std::fs::copy(common::SHIM, &shim).unwrap();
    let bundle = bundle_with(serde_json::json!({}));
    let env = [("TTRPC_ADDRESS", "/nonexistent/containerd.sock.ttrpc")];
    let mut child = common::spawn_exe(&shim, bundle.path(), &start_args(&id, &address), &env);
    // `start` waits for its stdin: the upgrade lands now.
    let next = bin.path().join("next");
    std::fs::copy(common::SHIM, &next).unwrap();
    std::fs::rename(&next, &shim).unwrap();
    child.stdin.take().unwrap().write_all(b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&left.sock).is_ok(),
        "start announced a daemon that does not serve"
    );
    let pid: i32 = std::fs::read_to_string(bundle.path().join("shim.pid"))
        .unwrap()
        .parse()
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap();
    assert_eq!(argv0, shim.as_os_str().as_encoded_bytes());
}

/// An fd containerd leaked to `start` (not close-on-exec) never reaches the daemon.
#[test]
fn the_daemon_inherits_no_fd_of_start() {
    let id = unique_id("fds");
    let address = format!("/tmp/sturdy-proto-fd-{}.sock", std::process::id());
    let left = leftovers(&id, &address);
    let bundle = bundle_with(serde_json::json!({}));
    let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let leaked = {
        use std::os::fd::AsRawFd;
        r.as_raw_fd()
    };
    let pipe = std::fs::read_link(format!("/proc/self/fd/{leaked}")).unwrap();
    let env = [("TTRPC_ADDRESS", "/nonexistent/containerd.sock.ttrpc")];
    let out = common::run_with_fd(bundle.path(), &start_args(&id, &address), &env, leaked, 7);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u32 = std::fs::read_to_string(bundle.path().join("shim.pid"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(std::os::unix::net::UnixStream::connect(&left.sock).is_ok());
    assert!(!common::has_open(pid, &pipe), "the daemon holds {pipe:?}");
}
