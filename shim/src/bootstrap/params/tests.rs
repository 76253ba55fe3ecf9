use super::*;
use containerd_shim::bootstrap::{Extension, LogLevel};
use containerd_shim_protos::protobuf::EnumOrUnknown;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

fn flags() -> Flags {
    Flags {
        id: "c1".into(),
        namespace: "k8s.io".into(),
        address: "/run/containerd/containerd.sock".into(),
        publish_binary: "/usr/bin/containerd".into(),
        ..Default::default()
    }
}

/// What containerd 2.3.4 writes for `flags()` (pkg/shim/util.go `Command`).
fn params() -> BootstrapParams {
    BootstrapParams {
        instance_id: "c1".into(),
        namespace: "k8s.io".into(),
        log_level: EnumOrUnknown::new(LogLevel::LOG_LEVEL_INFO),
        containerd_version: "v2.3.4".into(),
        containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
        containerd_grpc_address: "/run/containerd/containerd.sock".into(),
        containerd_binary: "/usr/bin/containerd".into(),
        socket_dir: Some("/run/containerd/s".into()),
        ..Default::default()
    }
}

fn runc_options() -> Any {
    Any {
        type_url: RUNC_OPTIONS_TYPE.into(),
        // binary_name = "crun" (field 2): valid UTF-8, so it also decodes as BootstrapParams.
        value: vec![0x12, 4, b'c', b'r', b'u', b'n'],
        ..Default::default()
    }
}

fn bytes(m: &impl Message) -> Vec<u8> {
    m.write_to_bytes().unwrap()
}

#[test]
fn nothing_or_options_is_the_legacy_protocol() {
    let empty = StartInput::parse(b"", &flags()).unwrap();
    assert_eq!(empty.protocol, Protocol::Legacy);
    assert!(empty.options().is_none());
    assert_eq!(empty.opts.address, "/run/containerd/containerd.sock");
    assert!(
        empty.opts.ttrpc_address.is_empty(),
        "the daemon inherits it"
    );

    // An options Any whose value is UTF-8 decodes as BootstrapParams {instance_id: type
    // URL, namespace: value}: still the legacy protocol.
    let any = runc_options();
    let as_params = BootstrapParams::parse_from_bytes(&bytes(&any)).unwrap();
    assert_eq!(as_params.instance_id, RUNC_OPTIONS_TYPE);
    let legacy = StartInput::parse(&bytes(&any), &flags()).unwrap();
    assert_eq!(legacy.protocol, Protocol::Legacy);
    assert_eq!(legacy.options(), Some(&any));
    assert_eq!(
        legacy.reply("unix:///run/containerd/s/ab"),
        b"unix:///run/containerd/s/ab",
        "1.6 - 2.2 read the bare address"
    );

    // runtimeoptions with a binary config body: only an Any decodes.
    let generic = Any {
        type_url: RUNTIME_OPTIONS_TYPE.into(),
        value: vec![0x1a, 2, 0xff, 0xfe],
        ..Default::default()
    };
    assert!(BootstrapParams::parse_from_bytes(&bytes(&generic)).is_err());
    let legacy = StartInput::parse(&bytes(&generic), &flags()).unwrap();
    assert_eq!(legacy.protocol, Protocol::Legacy);
    assert_eq!(legacy.options(), Some(&generic));
}

#[test]
fn bootstrap_params_are_the_2_3_protocol() {
    let mut p = params();
    p.extensions.push(Extension {
        value: Some(runc_options()).into(),
        ..Default::default()
    });
    let input = StartInput::parse(&bytes(&p), &flags()).unwrap();
    assert_eq!(input.protocol, Protocol::Bootstrap);
    assert_eq!(
        input.opts.ttrpc_address,
        "/run/containerd/containerd.sock.ttrpc"
    );
    assert_eq!(input.opts.socket_dir.as_deref(), Some("/run/containerd/s"));
    assert!(!input.opts.debug);
    assert_eq!(input.options(), Some(&runc_options()));
    // Same socket as the legacy protocol computes for the same daemon and group.
    assert_eq!(
        input.opts.socket_address("pod"),
        containerd_shim::socket_address("/run/containerd/containerd.sock", "k8s.io", "pod")
    );

    let reply = BootstrapResult::parse_from_bytes(&input.reply("unix:///x/s/ab")).unwrap();
    assert_eq!(reply.version, 2);
    assert_eq!(reply.address, "unix:///x/s/ab");
    assert_eq!(reply.protocol, "ttrpc");
    assert!(reply.capabilities.is_empty() && reply.metadata.is_empty());

    // Debug from the level or from -debug; levels below debug count too.
    for (level, flag, debug) in [
        (LogLevel::LOG_LEVEL_DEBUG, false, true),
        (LogLevel::LOG_LEVEL_TRACE, false, true),
        (LogLevel::LOG_LEVEL_WARN, false, false),
        (LogLevel::LOG_LEVEL_INFO, true, true),
    ] {
        let mut p = params();
        p.log_level = EnumOrUnknown::new(level);
        let f = Flags {
            debug: flag,
            ..flags()
        };
        let input = StartInput::parse(&bytes(&p), &f).unwrap();
        assert_eq!(input.opts.debug, debug, "{level:?} with -debug={flag}");
    }

    // Identity alone, if it is the command line's, is bootstrap params missing the rest.
    let bare = BootstrapParams {
        instance_id: "c1".into(),
        namespace: "k8s.io".into(),
        ..Default::default()
    };
    assert!(matches!(
        StartInput::parse(&bytes(&bare), &flags()),
        Err(InputError::Missing("containerd_ttrpc_address"))
    ));
}

#[test]
fn a_later_containerd_without_flags_is_understood() {
    let f = Flags::default();
    let input = StartInput::parse(&bytes(&params()), &f).unwrap();
    assert_eq!(input.protocol, Protocol::Bootstrap);
    assert_eq!(input.opts.id, "c1");
    assert_eq!(input.opts.namespace, "k8s.io");
    assert_eq!(input.opts.address, "/run/containerd/containerd.sock");
    assert_eq!(input.opts.publish_binary, "/usr/bin/containerd");
}

#[test]
fn unusable_params_are_refused_by_name() {
    let mut other = params();
    other.instance_id = "c2".into();
    let err = StartInput::parse(&bytes(&other), &flags()).unwrap_err();
    assert!(matches!(err, InputError::NotOurs { .. }), "{err}");
    assert!(err.to_string().contains("k8s.io/c2"), "{err}");

    let mut no_ttrpc = params();
    no_ttrpc.containerd_ttrpc_address.clear();
    assert!(matches!(
        StartInput::parse(&bytes(&no_ttrpc), &flags()),
        Err(InputError::Missing("containerd_ttrpc_address"))
    ));

    for dir in ["relative/s", "/run/../tmp", &format!("/{}", "d".repeat(50))] {
        let mut p = params();
        p.socket_dir = Some(dir.to_string());
        let err = StartInput::parse(&bytes(&p), &flags()).unwrap_err();
        assert!(matches!(err, InputError::SocketDir(_)), "{dir}: {err}");
    }
    let mut empty_dir = params();
    empty_dir.socket_dir = Some(String::new());
    let input = StartInput::parse(&bytes(&empty_dir), &flags()).unwrap();
    assert_eq!(input.opts.socket_dir, None, "empty means the default");
}

#[test]
fn junk_is_an_error_not_a_guess() {
    for junk in [
        &br#"{"version":3,"address":"x"}"#[..],
        b"unix:///run/containerd/s/abc",
        &[0xff, 0xff, 0xff, 0xff][..],
        // An Any with a value but no type URL.
        &[0x12, 1, b'x'][..],
    ] {
        let err = StartInput::parse(junk, &flags()).unwrap_err();
        assert!(
            matches!(err, InputError::Malformed { .. }),
            "{junk:?}: {err}"
        );
    }
}

fn pipe() -> (OwnedFd, std::fs::File) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (r, std::fs::File::from(w))
}

#[test]
fn stdin_is_read_within_its_bounds() {
    let (r, mut w) = pipe();
    w.write_all(b"hello").unwrap();
    drop(w);
    let got = read_bounded(r.as_fd(), 5, Duration::from_secs(5)).unwrap();
    assert_eq!(got, b"hello");

    let (r, mut w) = pipe();
    w.write_all(b"hello!").unwrap();
    drop(w);
    assert!(matches!(
        read_bounded(r.as_fd(), 5, Duration::from_secs(5)),
        Err(InputError::TooLarge { limit: 5 })
    ));

    // A writer that never closes.
    let (r, mut w) = pipe();
    w.write_all(b"partial").unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        read_bounded(r.as_fd(), 1 << 20, Duration::from_millis(100)),
        Err(InputError::Deadline(_))
    ));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    drop(w);
}
