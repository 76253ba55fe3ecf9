//! `delete` as containerd runs it after a shim exited or died: it acts only on the
//! bundle's record (never guessing a runtime), confirms "not found" with `state`, keeps
//! the record whenever cleanup failed, and is idempotent. Runs the real binary with real
//! or fake runtimes; no containerd needed.

mod common;
#[path = "delete_protocol/lock.rs"]
mod lock;
#[path = "delete_protocol/sweep.rs"]
mod sweep;

use std::path::{Path, PathBuf};

use common::run;
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;

#[test]
fn delete_keeps_the_record_when_the_runtime_fails_and_clears_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let record = |runtime: &str| {
        serde_json::json!({
            "version": 1, "id": "stuck", "namespace": "sturdy-proto-test", "runtime": runtime,
            "root": dir.path().join("runc-root"), "systemd_cgroup": false, "mounted_rootfs": false
        })
        .to_string()
    };
    // A runtime whose delete fails for real (not "does not exist").
    std::fs::write(dir.path().join("sturdy.json"), record("/bin/false")).unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    std::fs::write(
        dir.path().join("address"),
        format!("unix://{}", stale.display()),
    )
    .unwrap();
    let args = [
        "-namespace",
        "sturdy-proto-test",
        "-id",
        "stuck",
        "-address",
        "/nonexistent",
        "delete",
    ];
    let out = run(dir.path(), &args, b"", &[]);
    assert!(!out.status.success(), "a failed runtime delete must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/bin/false delete --force stuck"), "{err}");
    assert!(
        dir.path().join("sturdy.json").exists(),
        "record removed although cleanup failed"
    );

    // Once the runtime works, delete finishes: record gone, stale socket removed.
    std::fs::write(dir.path().join("sturdy.json"), record("runc")).unwrap();
    let out = run(dir.path(), &args, b"", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("sturdy.json").exists());
    assert!(!stale.exists(), "stale socket left behind");
}

#[test]
fn delete_is_idempotent_on_a_half_removed_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let runc_root = dir.path().join("runc-root");
    // A record that points runc at an empty private root: nothing exists to delete.
    std::fs::write(
        dir.path().join("sturdy.json"),
        serde_json::json!({
            "version": 1, "id": "gone", "namespace": "sturdy-proto-test", "runtime": "runc",
            "root": runc_root, "systemd_cgroup": false, "mounted_rootfs": true
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(dir.path().join("init.pid"), "4242").unwrap();
    let args = [
        "-namespace",
        "sturdy-proto-test",
        "-id",
        "gone",
        "-address",
        "/nonexistent",
        "delete",
    ];
    for round in 0..2 {
        let out = run(dir.path(), &args, b"", &[]);
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let resp = DeleteResponse::parse_from_bytes(&out.stdout).expect("DeleteResponse");
        assert_eq!(resp.exit_status, 137);
        assert_eq!(resp.pid, if round == 0 { 4242 } else { 0 });
        assert!(resp.exited_at.seconds > 0);
        // The first round removed the record and pid file: the second finds neither.
        assert!(!dir.path().join("sturdy.json").exists());
        assert!(!dir.path().join("init.pid").exists());
        // One line per step that did something, and nothing when nothing was left to do.
        let err = String::from_utf8_lossy(&out.stderr);
        if round == 0 {
            assert!(err.contains("removed init.pid, sturdy.json"), "{err}");
        } else {
            assert_eq!(err, "", "a delete with nothing to do reported something");
        }
    }
}

/// A fake runtime in `dir/bin/runc` that appends each invocation to `dir/runc-calls` and
/// answers `delete` with `delete_msg` (exit 1) and `state` with a running container.
fn fake_runc(dir: &Path, delete_msg: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.join("runc-calls");
    let script = bin.join("runc");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
echo "$@" >> '{calls}'
for a in "$@"; do
  case "$a" in
    delete) echo '{{"level":"error","msg":"{delete_msg}","time":"2024-01-01T00:00:00Z"}}' >&2; exit 1;;
    state) echo '{{"id":"x","pid":1,"status":"running","bundle":"/","rootfs":"/"}}'; exit 0;;
  esac
done
exit 0
"#,
            calls = calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, calls)
}

fn delete_args(id: &str) -> Vec<&str> {
    vec![
        "-namespace",
        "sturdy-proto-test",
        "-id",
        id,
        "-address",
        "/nonexistent",
        "delete",
    ]
}

/// PATH with `bin` first, so a bare `runc` is the fake.
fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn delete_with_a_corrupt_record_fails_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (script, calls) = fake_runc(dir.path(), "container does not exist");
    std::fs::write(dir.path().join("sturdy.json"), b"{\"version\": 1, \"id\": ").unwrap();
    std::fs::write(dir.path().join("init.pid"), "4242").unwrap();
    let path = path_with(script.parent().unwrap());
    let out = run(dir.path(), &delete_args("torn"), b"", &[("PATH", &path)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "delete guessed its way to success");
    assert!(err.contains("sturdy.json"), "{err}");
    assert!(err.contains("EOF while parsing"), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        !calls.exists(),
        "a runtime ran with guessed settings: {:?}",
        std::fs::read_to_string(&calls)
    );
    // Everything stays as evidence.
    assert!(dir.path().join("sturdy.json").exists());
    assert!(dir.path().join("init.pid").exists());

    // A record that parses but belongs to another container is as bad.
    std::fs::write(
        dir.path().join("sturdy.json"),
        serde_json::json!({
            "version": 1, "id": "other", "namespace": "sturdy-proto-test", "runtime": "runc",
            "root": dir.path().join("root"), "systemd_cgroup": false, "mounted_rootfs": false
        })
        .to_string(),
    )
    .unwrap();
    let out = run(dir.path(), &delete_args("torn"), b"", &[("PATH", &path)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"other\""));
    assert!(!calls.exists());
}

#[test]
fn delete_without_a_record_succeeds_without_running_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let (script, calls) = fake_runc(dir.path(), "container does not exist");
    std::fs::write(dir.path().join("init.pid"), "4242").unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    std::fs::write(
        dir.path().join("address"),
        format!("unix://{}", stale.display()),
    )
    .unwrap();
    let path = path_with(script.parent().unwrap());
    let out = run(
        dir.path(),
        &delete_args("never-ran"),
        b"",
        &[("PATH", &path)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !calls.exists(),
        "runc ran without a record: {:?}",
        std::fs::read_to_string(&calls)
    );
    assert!(err.contains("sturdy.json"), "no reason given: {err}");
    let resp = DeleteResponse::parse_from_bytes(&out.stdout).expect("DeleteResponse");
    assert_eq!(resp.pid, 4242);
    assert!(!stale.exists(), "stale socket left behind");
    assert!(!dir.path().join("init.pid").exists());
    // And again: idempotent.
    let out = run(
        dir.path(),
        &delete_args("never-ran"),
        b"",
        &[("PATH", &path)],
    );
    assert!(out.status.success());
}

fn record_for(dir: &Path, id: &str, runtime: &Path) {
    std::fs::write(
        dir.join("sturdy.json"),
        serde_json::json!({
            "version": 1, "id": id, "namespace": "sturdy-proto-test", "runtime": runtime,
            "root": dir.join("root"), "systemd_cgroup": false, "mounted_rootfs": false
        })
        .to_string(),
    )
    .unwrap();
}

/// A runtime error that merely says "does not exist" about something else (a cgroup
/// path) is a failed delete, not a container that is gone: the record stays.
#[test]
fn delete_does_not_take_another_not_found_for_the_container_being_gone() {
    let (err, log) =
        failed_delete_of_running("remove /sys/fs/cgroup/pids/k8s/busy: cgroup path does not exist");
    assert!(err.contains("cgroup path does not exist"), "{err}");
    assert!(log.contains("delete --force"), "{log}");
}

/// Even the runtime's own not-found message is confirmed with `state` before the record
/// goes: a runtime that says "does not exist" for a container it still runs fails delete.
#[test]
fn delete_confirms_not_found_with_state() {
    let (err, log) = failed_delete_of_running("container does not exist");
    assert!(err.contains("running"), "{err}");
    assert!(log.contains("state"), "{log}");
}

/// Deletes "busy" through a fake runtime that still runs it and whose delete fails with
/// `delete_msg`; the delete must fail and keep the record. Its stderr and the runtime's
/// call log.
fn failed_delete_of_running(delete_msg: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (script, calls) = fake_runc(dir.path(), delete_msg);
    record_for(dir.path(), "busy", &script);
    let out = run(dir.path(), &delete_args("busy"), b"", &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "a running container passed as deleted"
    );
    assert!(dir.path().join("sturdy.json").exists(), "record removed");
    let log = std::fs::read_to_string(&calls).unwrap();
    (err, log)
}

/// An unusable record is still an error that touches nothing, but it says where a runtime
/// state for the id exists (here under the root the Go shim's options.json names), so an
/// operator knows where to look.
#[test]
fn a_corrupt_record_error_names_runtime_state_found_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (script, calls) = fake_runc(dir.path(), "container does not exist");
    std::fs::write(dir.path().join("sturdy.json"), b"{\"version\": 1, \"id\": ").unwrap();
    let go_root = dir.path().join("go-root");
    let state = go_root.join("sturdy-proto-test").join("torn");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("state.json"), "{}").unwrap();
    std::fs::write(
        dir.path().join("options.json"),
        serde_json::json!({"root": go_root}).to_string(),
    )
    .unwrap();
    let path = path_with(script.parent().unwrap());
    let out = run(dir.path(), &delete_args("torn"), b"", &[("PATH", &path)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("EOF while parsing"), "{err}");
    assert!(
        err.contains(&format!("exists at {}", state.display())),
        "{err}"
    );
    assert!(!calls.exists(), "a runtime ran");
    assert!(
        state.join("state.json").exists(),
        "acted on the found state"
    );
    assert!(dir.path().join("sturdy.json").exists());
}

/// An id that is not a containerd identifier is refused up front, before delete joins it
/// into any path (runtime state, cgroups) or runs anything.
#[test]
fn delete_refuses_an_id_that_could_name_another_path() {
    let dir = tempfile::tempdir().unwrap();
    let (script, calls) = fake_runc(dir.path(), "container does not exist");
    record_for(dir.path(), "../escape", &script);
    let out = run(dir.path(), &delete_args("../escape"), b"", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("container id \"../escape\""), "{err}");
    assert!(!calls.exists(), "a runtime ran");
    assert!(dir.path().join("sturdy.json").exists());
}
