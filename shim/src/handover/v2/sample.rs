//! The sample document of format 2.

use super::*;

/// A document exercising every field: the fixture of this format
/// (`testdata/handover-v2.json`) and the sample `--handover-sample` prints, so a new binary
/// can be checked against what an old one writes.
pub fn sample() -> Document {
    let stdio = |stdin, stdout, stderr| Stdio {
        stdin_path: String::new(),
        stdout_path: String::new(),
        stderr_path: String::new(),
        terminal: false,
        stdin,
        stdout,
        stderr,
    };
    let exec = Process {
        exec_id: "exec-1".into(),
        pid: 4243,
        state: State::Running,
        exit: None,
        exit_published: false,
        exec_spec: Some(r#"{"args":["sh"],"cwd":"/"}"#.into()),
        stdio: stdio(
            None,
            Some(Stream {
                source: Some(20),
                sink: 21,
                pending: None,
                pending_len: 0,
            }),
            None,
        ),
    };
    let done = Process {
        exec_id: "exec-2".into(),
        pid: 4250,
        state: State::Stopped,
        exit: Some(ExitStatus {
            status: 137,
            at_ms: 1_796_000_000_500,
        }),
        exit_published: false,
        exec_spec: Some(r#"{"args":["true"],"cwd":"/"}"#.into()),
        stdio: stdio(
            None,
            Some(Stream {
                source: None,
                sink: 22,
                pending: Some(23),
                pending_len: 12,
            }),
            None,
        ),
    };
    let mut init_stdio = stdio(
        Some(Stdin {
            fifo: 11,
            pipe: 12,
            pending: Some(13),
            pending_len: 3,
            closing: false,
        }),
        Some(Stream {
            source: Some(14),
            sink: 15,
            pending: Some(16),
            pending_len: 4096,
        }),
        Some(Stream {
            source: Some(17),
            sink: 18,
            pending: None,
            pending_len: 0,
        }),
    );
    init_stdio.stdin_path = "/run/containerd/fifo/1/ctr-1-stdin".into();
    init_stdio.stdout_path = "/run/containerd/fifo/1/ctr-1-stdout".into();
    init_stdio.stderr_path = "/run/containerd/fifo/1/ctr-1-stderr".into();
    Document {
        version: 2,
        writer: Writer {
            version: "0.1.0".into(),
            build_id: Some("5b04cecdfd2875543d83780c023a9041bbe2e2a7".into()),
            paused_at_ms: 1_796_000_001_000,
        },
        shim: Shim {
            namespace: "k8s.io".into(),
            id: "pod-1".into(),
            socket: "unix:///run/containerd/s/0123abcd".into(),
            containerd_address: "/run/containerd/containerd.sock".into(),
            ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            publish_binary: "/usr/bin/containerd".into(),
            debug: false,
        },
        upgrade: Upgrade {
            target_build_id: "9e1c0aa3b5d2c4e6f8091a2b3c4d5e6f70819203".into(),
            paused_since_us: 1_796_000_000_999_000,
            held: 4,
            waits: 1,
        },
        listener: 3,
        old_binary: 4,
        connections: vec![
            Connection {
                fd: 5,
                peer_pid: Some(812),
                // A Wait on stream 7 (payload shortened to two bytes).
                pending: vec!["00000002000000070100abcd".into()],
            },
            Connection {
                fd: 6,
                peer_pid: None,
                pending: Vec::new(),
            },
        ],
        containers: vec![Container {
            id: "ctr-1".into(),
            bundle: "/run/containerd/io.containerd.runtime.v2.task/k8s.io/ctr-1".into(),
            options: Some(Options {
                type_url: "containerd.runc.v1.Options".into(),
                value_hex: "2a0472756e63".into(),
            }),
            rootfs: vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![
                    "lowerdir=/l".into(),
                    "upperdir=/u".into(),
                    "workdir=/w".into(),
                ],
            }],
            init: Process {
                exec_id: String::new(),
                pid: 4242,
                state: State::Running,
                exit: None,
                exit_published: false,
                exec_spec: None,
                stdio: init_stdio,
            },
            execs: vec![exec, done],
        }],
        unclaimed_exits: vec![Exit {
            pid: 4299,
            status: ExitStatus {
                status: 0,
                at_ms: 1_796_000_000_900,
            },
        }],
    }
}
