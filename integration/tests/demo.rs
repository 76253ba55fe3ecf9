//! `sturdy-demo` never passes off the Go shim as sturdy: without a working sturdy shim it
//! fails (before starting anything) instead of falling back to runc.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

fn demo(shim: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sturdy-demo"))
        .arg("--shim")
        .arg(shim)
        .env_remove("STURDY_SHIM_BIN")
        .output()
        .expect("run sturdy-demo")
}

fn assert_refused(out: &Output, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(what) && stderr.contains("--runtime runc"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("private containerd"),
        "it started containerd:\n{stdout}"
    );
}

#[test]
fn a_missing_sturdy_shim_fails_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let out = demo(&dir.path().join("containerd-shim-sturdy-v2"));
    assert_refused(&out, "no sturdy shim binary at");
}

#[test]
fn a_stub_sturdy_shim_fails_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("containerd-shim-sturdy-v2");
    std::fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = demo(&stub);
    assert_refused(&out, "is no working sturdy shim");
}
