//! `start` as each containerd generation speaks to it (docs/bootstrap.md): 2.3+ send
//! `BootstrapParams` on stdin and read a `BootstrapResult`; 1.6 – 2.2 send the runtime
//! options `Any` and read the bare address. What containerd would record in
//! `bootstrap.json` is derived from the reply the way containerd parses it. Stdin that is
//! neither, too large or never closed is refused before anything exists. Runs the real
//! binary; no containerd needed. Daemons are ended by the pid they wrote.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::start::{
    bundle_with, leftovers, processes_with_arg, start_args, unique_id, Daemons, NAMESPACE,
};
use common::{kill_and_wait, run, wait_for};
use containerd_shim::bootstrap::{BootstrapParams, BootstrapResult, Extension, LogLevel};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message};
use serde_json::json;

const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// What containerd's environment says; the params name another address, which must win.
const ENV_TTRPC: &str = "/nonexistent/env/containerd.sock.ttrpc";
const PARAMS_TTRPC: &str = "/nonexistent/params/containerd.sock.ttrpc";

/// The environment containerd 2.x sets for `start` besides the params (pkg/shim `Command`).
fn containerd_env(grpc: &str) -> [(&str, &str); 4] {
    [
        ("TTRPC_ADDRESS", ENV_TTRPC),
        ("GRPC_ADDRESS", grpc),
        ("NAMESPACE", NAMESPACE),
        ("MAX_SHIM_VERSION", "2"),
    ]
}

/// runc options as containerd's typeurl packs them: `binary_name = "runc"`.
fn runc_options() -> Any {
    Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: vec![0x12, 4, b'r', b'u', b'n', b'c'],
        ..Default::default()
    }
}

/// The `BootstrapParams` containerd 2.3.4 writes for task `id`.
fn params_2_3(id: &str, grpc: &str, socket_dir: &Path) -> BootstrapParams {
    BootstrapParams {
        instance_id: id.into(),
        namespace: NAMESPACE.into(),
        log_level: EnumOrUnknown::new(LogLevel::LOG_LEVEL_INFO),
        containerd_version: "v2.3.4".into(),
        containerd_ttrpc_address: PARAMS_TTRPC.into(),
        containerd_grpc_address: grpc.into(),
        containerd_binary: "/bin/true".into(),
        extensions: vec![Extension {
            value: Some(runc_options()).into(),
            ..Default::default()
        }],
        socket_dir: Some(socket_dir.display().to_string()),
        ..Default::default()
    }
}

/// The `bootstrap.json` containerd writes for a `start` reply (its `parseStartResponse`):
/// 2.3+ try a `BootstrapResult` first; all of 2.x then take JSON of version ≥ 2, else the
/// trimmed output as a version-2 ttrpc address. Empty fields are left out (omitempty).
fn bootstrap_json(reply: &[u8], daemon_2_3: bool) -> serde_json::Value {
    if daemon_2_3 {
        if let Ok(r) = BootstrapResult::parse_from_bytes(reply) {
            return json!({ "version": r.version, "address": r.address, "protocol": r.protocol });
        }
    }
    let text = String::from_utf8_lossy(reply).trim().to_string();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v["version"].as_i64().is_some_and(|n| n >= 2) => v,
        _ => json!({ "version": 2, "address": text, "protocol": "ttrpc" }),
    }
}

/// `unix://<dir>/<hash>`: the socket name containerd and the Go shim derive for `group`.
fn socket_in(dir: &Path, grpc: &str, group: &str) -> String {
    let default = containerd_shim::socket_address(grpc, NAMESPACE, group);
    let hash = default.rsplit('/').next().unwrap();
    format!("unix://{}/{hash}", dir.display())
}

fn shim_pid(bundle: &Path) -> i32 {
    std::fs::read_to_string(bundle.join("shim.pid"))
        .expect("shim.pid")
        .trim()
        .parse()
        .unwrap()
}

/// NUL-separated `/proc/<pid>/<file>` entries.
fn proc_list(pid: i32, file: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// A short private directory for the socket (`socket_dir` is at most 42 bytes).
fn socket_tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sbp")
        .tempdir_in("/tmp")
        .unwrap()
}

#[test]
fn bootstrap_params_get_a_bootstrap_result() {
    let id = unique_id("boot");
    let grpc = format!("/tmp/sturdy-boot-{}.sock", std::process::id());
    let tmp = socket_tmp();
    let socket_dir = tmp.path().join("s");
    let env = containerd_env(&grpc);
    let mut daemons = Daemons(Vec::new());

    let pod = bundle_with(json!({ SANDBOX_ID: id }));
    let params = params_2_3(&id, &grpc, &socket_dir);
    let out = run(
        pod.path(),
        &start_args(&id, &grpc),
        &params.write_to_bytes().unwrap(),
        &env,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // containerd reads stderr together with stdout as the reply.
    assert!(out.stderr.is_empty(), "stderr: {err}");
    let reply = BootstrapResult::parse_from_bytes(&out.stdout).expect("a BootstrapResult");
    daemons.track(pod.path(), &reply.address);
    let expected = socket_in(&socket_dir, &grpc, &id);
    assert_eq!(reply.address, expected, "socket not in socket_dir");
    assert_eq!(
        bootstrap_json(&out.stdout, true),
        json!({ "version": 2, "address": expected, "protocol": "ttrpc" })
    );
    assert_eq!(
        std::fs::read_to_string(pod.path().join("address")).unwrap(),
        expected
    );

    let dir_mode = std::fs::metadata(&socket_dir).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700, "socket_dir made {dir_mode:o}");
    let sock = PathBuf::from(expected.strip_prefix("unix://").unwrap());
    let meta = std::fs::metadata(&sock).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());

    // The daemon was started from the params: their ttrpc address, the socket, no -debug.
    let pid = shim_pid(pod.path());
    let argv = proc_list(pid, "cmdline");
    let arg = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .map(|i| argv[i + 1].clone())
    };
    assert_eq!(
        arg("-socket").as_deref(),
        Some(expected.as_str()),
        "{argv:?}"
    );
    assert_eq!(arg("-id").as_deref(), Some(id.as_str()));
    assert_eq!(arg("-address").as_deref(), Some(grpc.as_str()));
    assert!(!argv.iter().any(|a| a == "-debug"), "{argv:?}");
    let environ = proc_list(pid, "environ");
    assert!(
        environ.contains(&format!("TTRPC_ADDRESS={PARAMS_TTRPC}")),
        "daemon environment: {environ:?}"
    );

    // A container of the pod (containerd runs `start` for it after an upgrade from 1.x):
    // the live daemon's address, in the same format, and no second daemon.
    let member_id = format!("{id}-app");
    let member = bundle_with(json!({ SANDBOX_ID: id }));
    let out = run(
        member.path(),
        &start_args(&member_id, &grpc),
        &params_2_3(&member_id, &grpc, &socket_dir)
            .write_to_bytes()
            .unwrap(),
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
    let again = BootstrapResult::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(
        (again.version, again.address.as_str()),
        (2, expected.as_str())
    );
    assert!(
        !member.path().join("shim.pid").exists(),
        "a second daemon was started"
    );
    assert!(processes_with_arg(&member_id).is_empty());
}

#[test]
fn debug_level_reaches_the_daemon() {
    let id = unique_id("bootdbg");
    let grpc = format!("/tmp/sturdy-bootdbg-{}.sock", std::process::id());
    let tmp = socket_tmp();
    let socket_dir = tmp.path().join("s");
    let mut daemons = Daemons(Vec::new());
    let bundle = bundle_with(json!({}));
    let mut params = params_2_3(&id, &grpc, &socket_dir);
    params.log_level = EnumOrUnknown::new(LogLevel::LOG_LEVEL_DEBUG);
    let out = run(
        bundle.path(),
        &start_args(&id, &grpc),
        &params.write_to_bytes().unwrap(),
        &containerd_env(&grpc),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = BootstrapResult::parse_from_bytes(&out.stdout).unwrap();
    daemons.track(bundle.path(), &reply.address);
    let argv = proc_list(shim_pid(bundle.path()), "cmdline");
    assert!(argv.iter().any(|a| a == "-debug"), "{argv:?}");
}

/// containerd 1.7 – 2.2: options `Any` on stdin, the flags, TTRPC_ADDRESS in the
/// environment; the reply is the bare address, as before.
#[test]
fn legacy_options_get_the_bare_address() {
    let id = unique_id("legacy");
    let grpc = format!("/tmp/sturdy-legacy-{}.sock", std::process::id());
    let mut daemons = Daemons(Vec::new());
    let bundle = bundle_with(json!({}));
    let out = run(
        bundle.path(),
        &start_args(&id, &grpc),
        &runc_options().write_to_bytes().unwrap(),
        &containerd_env(&grpc),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
    let addr = String::from_utf8(out.stdout.clone()).unwrap();
    daemons.track(bundle.path(), &addr);
    let expected = containerd_shim::socket_address(&grpc, NAMESPACE, &id);
    assert_eq!(addr, expected, "exactly the address, nothing around it");
    assert_eq!(
        bootstrap_json(&out.stdout, false),
        json!({ "version": 2, "address": expected, "protocol": "ttrpc" })
    );
    let environ = proc_list(shim_pid(bundle.path()), "environ");
    assert!(
        environ.contains(&format!("TTRPC_ADDRESS={ENV_TTRPC}")),
        "{environ:?}"
    );
}

/// Asserts that a refused `start` of `id` left nothing: no reply, no files in the bundle, no
/// daemon, no socket (in `socket_dir` or the default directory).
fn nothing_left(id: &str, grpc: &str, bundle: &Path, socket_dir: &Path, out_stdout: &[u8]) {
    assert!(out_stdout.is_empty(), "{id}: a reply was printed");
    for file in ["address", "shim.pid"] {
        assert!(!bundle.join(file).exists(), "{id}: {file} written");
    }
    assert!(
        processes_with_arg(id).is_empty(),
        "{id}: a daemon was started"
    );
    assert!(!socket_dir.exists(), "{id}: socket_dir created");
    let default = containerd_shim::socket_address(grpc, NAMESPACE, id);
    assert!(
        !Path::new(default.strip_prefix("unix://").unwrap()).exists(),
        "{id}: {default} created"
    );
}

#[test]
fn malformed_stdin_is_refused_before_anything_exists() {
    let grpc = format!("/tmp/sturdy-junk-{}.sock", std::process::id());
    let tmp = socket_tmp();
    let socket_dir = tmp.path().join("s");
    type Input<'a> = Box<dyn Fn(&str) -> Vec<u8> + 'a>;
    let cases: Vec<(&str, Input, &str)> = vec![
        (
            "json",
            Box::new(|_| br#"{"version":3,"address":"x"}"#.to_vec()),
            "neither containerd's BootstrapParams nor runtime options",
        ),
        (
            "bytes",
            Box::new(|_| vec![0xff; 16]),
            "neither containerd's BootstrapParams nor runtime options",
        ),
        (
            "other task",
            Box::new(|_| {
                let p = params_2_3("someone-else", &grpc, &socket_dir);
                p.write_to_bytes().unwrap()
            }),
            "bootstrap params are for sturdy-proto-test/someone-else",
        ),
        (
            "no ttrpc address",
            Box::new(|id| {
                let mut p = params_2_3(id, &grpc, &socket_dir);
                p.containerd_ttrpc_address.clear();
                p.write_to_bytes().unwrap()
            }),
            "carry no containerd_ttrpc_address",
        ),
        (
            "relative socket_dir",
            Box::new(|id| {
                let mut p = params_2_3(id, &grpc, &socket_dir);
                p.socket_dir = Some("run/s".into());
                p.write_to_bytes().unwrap()
            }),
            "not an absolute path",
        ),
    ];
    for (name, input, says) in &cases {
        let id = unique_id("junk");
        let _left = leftovers(&id, &grpc);
        let bundle = bundle_with(json!({}));
        let out = run(
            bundle.path(),
            &start_args(&id, &grpc),
            &input(&id),
            &containerd_env(&grpc),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: start succeeded");
        assert!(err.contains(says), "{name}: {err}");
        nothing_left(&id, &grpc, bundle.path(), &socket_dir, &out.stdout);
    }
}

#[test]
fn oversized_stdin_is_refused() {
    let id = unique_id("huge");
    let grpc = format!("/tmp/sturdy-huge-{}.sock", std::process::id());
    let _left = leftovers(&id, &grpc);
    let bundle = bundle_with(json!({}));
    let mut child = common::spawn_exe(
        Path::new(common::SHIM),
        bundle.path(),
        &start_args(&id, &grpc),
        &containerd_env(&grpc),
    );
    let mut stdin = child.stdin.take().unwrap();
    // The shim stops reading at the limit and exits: the rest of the write fails (EPIPE).
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&vec![0u8; (10 << 20) + 1]);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start succeeded");
    assert!(
        err.contains("stdin holds more than 10485760 bytes"),
        "{err}"
    );
    nothing_left(
        &id,
        &grpc,
        bundle.path(),
        Path::new("/nonexistent"),
        &out.stdout,
    );
}

#[test]
fn stdin_that_never_closes_is_refused_after_the_deadline() {
    let id = unique_id("stuck");
    let grpc = format!("/tmp/sturdy-stuck-{}.sock", std::process::id());
    let _left = leftovers(&id, &grpc);
    let tmp = socket_tmp();
    let socket_dir = tmp.path().join("s");
    let bundle = bundle_with(json!({}));
    let mut env = containerd_env(&grpc).to_vec();
    env.push(("STURDY_TEST_STDIN_DEADLINE_MS", "300"));
    let mut child = common::spawn_exe(
        Path::new(common::SHIM),
        bundle.path(),
        &start_args(&id, &grpc),
        &env,
    );
    // Half of valid params, and the pipe stays open.
    let bytes = params_2_3(&id, &grpc, &socket_dir)
        .write_to_bytes()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A slow test thread may write after the deadline ended `start` (EPIPE): same outcome.
    let _ = stdin.write_all(&bytes[..bytes.len() / 2]);
    let pid = child.id() as i32;
    let exited = wait_for(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        kill_and_wait(pid);
        let _ = child.wait();
        panic!("start still waits for its stdin");
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    drop(stdin);
    assert!(!status.success(), "start succeeded");
    assert!(
        err.contains("stdin was not complete and closed within"),
        "{err}"
    );
    nothing_left(&id, &grpc, bundle.path(), &socket_dir, &out);
}
