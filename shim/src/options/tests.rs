//! Tests of runtime option decoding and validation.

use super::*;
use containerd_shim_protos::protobuf::CodedOutputStream;

fn generic_any(body: &str) -> Any {
    let mut value = Vec::new();
    {
        let mut out = CodedOutputStream::vec(&mut value);
        out.write_string(1, "io.containerd.sturdy.v1.Options")
            .unwrap();
        out.write_bytes(3, body.as_bytes()).unwrap();
        out.flush().unwrap();
    }
    Any {
        type_url: RUNTIME_OPTIONS_TYPE.into(),
        value,
        ..Default::default()
    }
}

#[test]
fn none_is_default() {
    assert_eq!(
        RuntimeOptions::from_any(None).unwrap(),
        RuntimeOptions::default()
    );
    assert_eq!(RuntimeOptions::default().binary(), "runc");
}

#[test]
fn runc_options_decode() {
    let o = RuncOptions {
        binary_name: "crun".into(),
        root: "/run/x".into(),
        systemd_cgroup: true,
        shim_cgroup: "/shims".into(),
        io_uid: 7,
        ..Default::default()
    };
    let any = Any {
        type_url: format!("type.googleapis.com/{RUNC_OPTIONS_TYPE}"),
        value: o.write_to_bytes().unwrap(),
        ..Default::default()
    };
    let got = RuntimeOptions::from_any(Some(&any)).unwrap();
    assert_eq!(got.binary(), "crun");
    assert_eq!(got.root, "/run/x");
    assert!(got.systemd_cgroup);
    assert_eq!(got.shim_cgroup, "/shims");
    assert_eq!(got.io_uid, 7);
}

/// containerd 1.6 and 1.7 still send `criu_path` (field 8), which these protos dropped.
#[test]
fn runc_options_keep_the_criu_path_containerd_1_6_sends() {
    let mut value = RuncOptions {
        root: "/run/x".into(),
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap();
    {
        let mut out = CodedOutputStream::vec(&mut value);
        out.write_string(8, "/opt/criu/sbin/criu").unwrap();
        out.flush().unwrap();
    }
    let any = Any {
        type_url: RUNC_OPTIONS_TYPE.into(),
        value,
        ..Default::default()
    };
    let got = RuntimeOptions::from_any(Some(&any)).unwrap();
    assert_eq!(got.criu_path, "/opt/criu/sbin/criu");
    assert_eq!(got.root, "/run/x");
    let toml = RuntimeOptions::from_toml("CriuPath = \"criu-4\"").unwrap();
    assert_eq!(toml.criu_path, "criu-4");
    let err = RuntimeOptions::from_toml("CriuPath = \"sbin/criu\"").unwrap_err();
    assert!(
        matches!(&err, OptionsError::BadValue { key, .. } if key == "CriuPath"),
        "{err}"
    );
}

#[test]
fn generic_options_same_keys() {
    let any = generic_any(
        "BinaryName = \"crun\"\nRoot = \"/run/sturdy\"\nSystemdCgroup = false\nNoPivotRoot = true\nIoGid = 5\n",
    );
    let got = RuntimeOptions::from_any(Some(&any)).unwrap();
    assert_eq!(got.binary(), "crun");
    assert_eq!(got.root, "/run/sturdy");
    assert!(got.no_pivot_root);
    assert_eq!(got.io_gid, 5);
}

#[test]
fn unknown_key_is_an_error() {
    let err = RuntimeOptions::from_any(Some(&generic_any("BinaryNme = \"runc\"\n"))).unwrap_err();
    assert!(
        matches!(err, OptionsError::UnknownKey(ref k) if k == "BinaryNme"),
        "{err}"
    );
}

#[test]
fn wrong_types_are_errors() {
    for body in [
        "SystemdCgroup = \"yes\"",
        "ShimCgroup = true",
        "IoUid = -1",
        "Root = \"relative\"",
        "ShimCgroup = \"true\"",
    ] {
        let err = RuntimeOptions::from_toml(body).unwrap_err();
        assert!(
            matches!(err, OptionsError::BadValue { .. }),
            "{body}: {err}"
        );
    }
}

#[test]
fn unsupported_type_is_an_error() {
    let any = Any {
        type_url: "example.Other".into(),
        value: vec![1, 2, 3],
        ..Default::default()
    };
    assert!(matches!(
        RuntimeOptions::from_any(Some(&any)),
        Err(OptionsError::UnsupportedType(_))
    ));
}

fn runc_any(o: RuncOptions) -> Any {
    Any {
        type_url: RUNC_OPTIONS_TYPE.into(),
        value: o.write_to_bytes().unwrap(),
        ..Default::default()
    }
}

fn config_path_any(path: &std::path::Path) -> Any {
    let mut value = Vec::new();
    {
        let mut out = CodedOutputStream::vec(&mut value);
        out.write_string(2, path.to_str().unwrap()).unwrap();
        out.flush().unwrap();
    }
    Any {
        type_url: RUNTIME_OPTIONS_TYPE.into(),
        value,
        ..Default::default()
    }
}

#[test]
fn runc_encoding_is_validated_like_toml() {
    for (o, key) in [
        (
            RuncOptions {
                root: "relative/root".into(),
                ..Default::default()
            },
            "Root",
        ),
        (
            RuncOptions {
                binary_name: "bin/runc".into(),
                ..Default::default()
            },
            "BinaryName",
        ),
        (
            RuncOptions {
                shim_cgroup: "true".into(),
                ..Default::default()
            },
            "ShimCgroup",
        ),
    ] {
        let err = RuntimeOptions::from_any(Some(&runc_any(o))).unwrap_err();
        assert!(
            matches!(&err, OptionsError::BadValue { key: k, .. } if k == key),
            "{key}: {err}"
        );
    }
}

#[test]
fn relative_binary_paths_are_refused_bare_names_and_absolute_paths_are_not() {
    for bad in ["bin/runc", "./runc", "../runc", "runc/"] {
        let err = RuntimeOptions::from_toml(&format!("BinaryName = {bad:?}")).unwrap_err();
        assert!(
            matches!(&err, OptionsError::BadValue { key, .. } if key == "BinaryName"),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains(bad), "{err}");
    }
    for good in ["runc", "crun", "/usr/local/bin/runc"] {
        let o = RuntimeOptions::from_toml(&format!("BinaryName = {good:?}")).unwrap();
        assert_eq!(o.binary(), good);
    }
}

#[test]
fn bad_toml_reports_position_and_message() {
    let err = RuntimeOptions::from_toml("SystemdCgroup = true\nRoot = \n").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OptionsError::Toml(_)), "{text}");
    assert!(text.contains("line 2"), "{text}");
    assert!(text.contains("column"), "{text}");
    // The message itself, not only where it happened.
    assert!(text.contains("string"), "{text}");
}

#[test]
fn shim_cgroup_and_criu_paths_are_checked() {
    for (body, key) in [
        ("ShimCgroup = \"shims\"", "ShimCgroup"),
        ("ShimCgroup = \"/\"", "ShimCgroup"),
        ("ShimCgroup = \"/a/../b\"", "ShimCgroup"),
        ("CriuImagePath = \"images\"", "CriuImagePath"),
        ("CriuWorkPath = \"./work\"", "CriuWorkPath"),
        ("CriuWorkPath = \"/w\\u0001\"", "CriuWorkPath"),
    ] {
        let err = RuntimeOptions::from_toml(body).unwrap_err();
        assert!(
            matches!(&err, OptionsError::BadValue { key: k, .. } if k == key),
            "{body}: {err}"
        );
    }
    let o = RuntimeOptions::from_toml(
        "ShimCgroup = \"/system.slice/shims\"\nCriuImagePath = \"/var/criu/img\"\nCriuWorkPath = \"/var/criu/work\"",
    )
    .unwrap();
    assert_eq!(o.shim_cgroup, "/system.slice/shims");
}

#[test]
fn config_path_must_not_block_on_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("opts.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let any = config_path_any(&fifo);
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _ = tx.send(RuntimeOptions::from_any(Some(&any)).map_err(|e| e.to_string()));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(5));
    if got.is_err() {
        // Release the stuck reader (it waits for a writer) before failing.
        drop(std::fs::OpenOptions::new().write(true).open(&fifo));
    }
    reader.join().unwrap();
    let err = got
        .expect("reading ConfigPath blocked on a FIFO")
        .unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
    assert!(err.contains("opts.toml"), "{err}");
}

#[test]
fn config_path_refuses_directories_oversized_files_and_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let err = RuntimeOptions::from_any(Some(&config_path_any(dir.path()))).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");

    let big = dir.path().join("big.toml");
    let mut body = "BinaryName = \"runc\"\n".to_string();
    body.push_str(&"# padding\n".repeat(CONFIG_PATH_LIMIT as usize / 10 + 1));
    std::fs::write(&big, body).unwrap();
    let err = RuntimeOptions::from_any(Some(&config_path_any(&big))).unwrap_err();
    assert!(
        matches!(err, OptionsError::ConfigPathTooLarge { .. }),
        "{err}"
    );

    let err = RuntimeOptions::from_any(Some(&config_path_any(std::path::Path::new(
        "relative/opts.toml",
    ))))
    .unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");
}

#[test]
fn config_path_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opts.toml");
    std::fs::write(&path, "BinaryName = \"crun\"\n").unwrap();
    let mut value = Vec::new();
    {
        let mut out = CodedOutputStream::vec(&mut value);
        out.write_string(2, path.to_str().unwrap()).unwrap();
        out.flush().unwrap();
    }
    let any = Any {
        type_url: RUNTIME_OPTIONS_TYPE.into(),
        value,
        ..Default::default()
    };
    assert_eq!(
        RuntimeOptions::from_any(Some(&any)).unwrap().binary(),
        "crun"
    );
}

#[test]
fn sandbox_record_options() {
    let o = RuntimeOptions::from_toml(
        "SandboxRecordDir = \"/srv/sturdy/sandboxes\"\nNoSandboxRecord = false\n",
    )
    .unwrap();
    assert_eq!(o.sandbox_record_dir, "/srv/sturdy/sandboxes");
    assert!(!o.no_sandbox_record);
    assert!(
        RuntimeOptions::from_toml("NoSandboxRecord = true")
            .unwrap()
            .no_sandbox_record
    );
    for bad in [
        "SandboxRecordDir = \"records\"",
        "SandboxRecordDir = true",
        "NoSandboxRecord = \"yes\"",
    ] {
        assert!(RuntimeOptions::from_toml(bad).is_err(), "{bad}");
    }
}
