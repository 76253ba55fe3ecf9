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

/// A stand-in shim socket answering one request with `answer` (Ok: the payload, Err: a
/// FAILED_PRECONDITION message), as the shim's upgrade service would.
fn stand_in(
    answer: Result<serde_json::Value, &'static str>,
) -> (tempfile::TempDir, String, std::thread::JoinHandle<()>) {
    use containerd_shim_protos::protobuf::Message;
    use containerd_shim_protos::ttrpc::{Code, Response, Status};
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut h = [0u8; 10];
        c.read_exact(&mut h).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize];
        c.read_exact(&mut body).unwrap();
        let mut resp = Response::new();
        match answer {
            Ok(v) => resp.payload = v.to_string().into_bytes(),
            Err(m) => {
                let mut st = Status::new();
                st.set_code(Code::FAILED_PRECONDITION);
                st.set_message(m.into());
                resp.status = Some(st).into();
            }
        }
        let body = resp.write_to_bytes().unwrap();
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&h[4..8]);
        f.extend_from_slice(&[2, 0]);
        f.extend_from_slice(&body);
        c.write_all(&f).unwrap();
    });
    (dir, format!("unix://{}", path.display()), t)
}

/// This test process as a shim at `address`, with `/bin/sh` as the new binary: sturdyctl
/// looks at this process after the call, so what it sees is this binary's build.
fn me_as_shim(address: String) -> Option<(Shim, Candidate, String)> {
    let me = std::process::id() as i32;
    if crate::trust::process(me).is_err() {
        return None;
    }
    let sh = Binary::installed(Path::new("/bin/sh")).ok()?;
    sh.build_id.as_ref()?;
    let mine = crate::builds::of_process(me).ok()??;
    let mut s = shim("pod-a", &["pod-a"]);
    s.address = address;
    s.process = Some(crate::procfs::identity(me).unwrap());
    let new = Candidate {
        binary: sh,
        info: VersionInfo {
            version: "9.9.9".into(),
            reads: vec![1],
            ..Default::default()
        },
    };
    Some((s, new, mine))
}

fn report_of(s: &Shim, new: &Candidate, old_build: &str) -> Report {
    Report {
        namespace: s.namespace.clone(),
        id: s.id.clone(),
        address: s.address.clone(),
        pid: s.process.as_ref().map(|p| p.pid),
        old_version: None,
        old_build: Some(old_build.into()),
        old_writes: Some(1),
        new_version: new.info.version.clone(),
        new_build: new.binary.build_id.clone(),
        pause_ms: None,
        rehearsal: None,
        upgrade: None,
        error: None,
        running_build: None,
        outcome: Outcome::Ready,
    }
}

#[test]
fn a_rollback_is_reported_only_after_seeing_the_old_build_run() {
    let (_d, addr, t) = stand_in(Err("rolled back: the new image did not resume"));
    let Some((s, new, mine)) = me_as_shim(addr) else {
        test_skip::skip!("this test process or /bin/sh is not trusted here");
    };
    let windows = tempfile::tempdir().unwrap();
    let mode = Mode {
        upgrade_dir: windows.path().join("upgrading"),
        ..Default::default()
    };
    let mut r = report_of(&s, &new, &mine);
    let o = live::apply(&s, &new, &mode, &mut r);
    t.join().unwrap();
    assert_eq!(
        o,
        Outcome::RolledBack("rolled back: the new image did not resume".into())
    );
    assert_eq!(r.running_build.as_deref(), Some(mine.as_str()));
    assert_eq!(
        r.error.as_deref(),
        Some("rolled back: the new image did not resume")
    );
    let pid = s.process.as_ref().unwrap().pid;
    assert!(
        !windows
            .path()
            .join("upgrading")
            .join(pid.to_string())
            .exists(),
        "the upgrade window was left open"
    );
    // The same rollback from a shim whose old build is not what runs: not believed.
    let (_d, addr, t) = stand_in(Err("rolled back: the new image did not resume"));
    let mut s2 = s.clone();
    s2.address = addr;
    let mut r = report_of(&s2, &new, "00ff");
    let o = live::apply(&s2, &new, &mode, &mut r);
    t.join().unwrap();
    assert!(
        matches!(&o, Outcome::Failed(m) if m.contains("not the old 00ff")),
        "{o:?}"
    );
}

#[test]
fn a_claimed_upgrade_that_does_not_show_in_proc_fails() {
    let me = std::process::id() as i32;
    let (_d, addr, t) = stand_in(Ok(serde_json::json!({
        "pid": me, "old_version": "0.1.0", "old_build_id": "aa",
        "new_version": "9.9.9", "new_build_id": "placeholder", "paused_us": 1500,
        "held": 1, "connections": 2, "waits": 1,
    })));
    let Some((s, new, mine)) = me_as_shim(addr) else {
        test_skip::skip!("this test process or /bin/sh is not trusted here");
    };
    let windows = tempfile::tempdir().unwrap();
    let mode = Mode {
        upgrade_dir: windows.path().join("upgrading"),
        ..Default::default()
    };
    let mut r = report_of(&s, &new, &mine);
    let o = live::apply(&s, &new, &mode, &mut r);
    t.join().unwrap();
    // This process still runs its own build, not /bin/sh's.
    assert!(
        matches!(&o, Outcome::Failed(m) if m.contains(&format!("runs build {mine}"))),
        "{o:?}"
    );
    assert_eq!(r.pause_ms, Some(1.5));
    r.outcome = o;
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["result"], "failed");
    assert_eq!(v["upgrade"]["paused_us"], 1500);
    assert_eq!(v["running_build"], mine.as_str());
}
