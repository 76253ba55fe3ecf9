use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::discovery::Task;

fn shim(id: &str, tasks: &[&str]) -> Shim {
    Shim {
        id: id.into(),
        tasks: tasks
            .iter()
            .map(|t| Task {
                id: t.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn a_binary_others_can_change_is_refused_before_it_runs() {
    // Under /tmp (world-writable): never trusted, never run.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("containerd-shim-sturdy-v2");
    std::fs::write(&bin, "#!/bin/sh\ntouch ran\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = inspect(&bin).unwrap_err();
    assert!(matches!(err, UpgradeError::Untrusted { .. }), "{err}");
    assert!(!dir.path().join("ran").exists());
    let err = inspect(Path::new("relative/shim")).unwrap_err();
    assert!(matches!(err, UpgradeError::Untrusted { .. }), "{err}");
}

#[test]
fn a_binary_that_fails_or_is_no_shim_is_refused() {
    for (path, expect) in [
        ("/bin/false", "exit status: 1"),
        ("/bin/true", "no version"),
    ] {
        if !Path::new(path).is_file() {
            test_skip::skip!("{path} is missing");
        }
        let err = inspect(Path::new(path)).unwrap_err();
        assert!(err.to_string().contains(expect), "{path}: {err}");
    }
}

#[test]
fn runs_are_bounded_in_time_and_output() {
    let sh = Binary::installed(Path::new("/bin/sh")).unwrap();
    let out = sh
        .run(&["-c", "echo out; echo err >&2"], true, None)
        .unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_str()),
        (&b"out\n"[..], "err")
    );
    // The fd handed down is the child's CHECK_FD, whatever it was here.
    let doc = memfd::sealed(b"sealed bytes").unwrap();
    let out = sh
        .run(
            &["-c", "cat /dev/fd/100"],
            true,
            Some((doc.as_raw_fd(), CHECK_FD)),
        )
        .unwrap();
    assert_eq!(out.stdout, b"sealed bytes");
    let err = sh
        .run(&["-c", "head -c 17000000 /dev/zero"], true, None)
        .unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
}

#[test]
fn a_running_image_is_opened_only_for_a_trusted_process() {
    // This test runs as root from a binary under a root-owned target directory.
    let me = std::process::id() as i32;
    match Binary::running(me) {
        Ok(b) => assert_eq!(b.build_id, crate::builds::of_process(me).unwrap()),
        Err(e) => test_skip::skip!("this test binary is not trusted here: {e}"),
    }
    let err = Binary::running(i32::MAX).unwrap_err();
    assert!(matches!(err, UpgradeError::OldImage { .. }), "{err}");
}

#[test]
fn pods_select_shims_by_sandbox_or_task() {
    let s = shim("pod-a", &["pod-a", "ctr-1"]);
    assert!(selected(&s, &[]));
    assert!(selected(&s, &["pod-a".into()]));
    assert!(selected(&s, &["ctr-1".into()]));
    assert!(!selected(&s, &["pod-b".into()]));
}

#[test]
fn a_shim_without_a_process_is_refused_and_reported() {
    let sh = Binary::installed(Path::new("/bin/sh")).unwrap();
    let new = Candidate {
        binary: sh,
        info: VersionInfo {
            version: "9.9.9".into(),
            reads: vec![1],
            ..Default::default()
        },
    };
    let r = upgrade_shim(&shim("pod-a", &["pod-a"]), None, &new, Mode::default());
    assert_eq!(r.outcome, Outcome::Refused("no live shim process".into()));
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["result"], "refused");
    assert_eq!(v["detail"], "no live shim process");
    assert_eq!(v["new_version"], "9.9.9");
    assert!(v["pause_ms"].is_null());
}
