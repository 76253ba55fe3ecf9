//! `containerd-shim-sturdy-v2 -info` (issue 9): the RuntimeInfo containerd 2.x reads from
//! a shim before it relies on runtime features, checked against the Go shim of containerd
//! 2.1 run the same way, and through the introspection API of containerd 2.1 to 2.4.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use containerd_client::types::RuntimeInfo;
use prost::Message;
use prost_types::Any;
use sturdy_integration::containerd::default_shim_bin;
use sturdy_integration::handler::run_on;
use sturdy_integration::{Containerd, Generation, Handler};

/// The fields of `containerd.runc.v1.Options` these tests set.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "6")]
    binary_name: String,
    #[prost(string, tag = "7")]
    root: String,
}

fn runc_options(binary: &str) -> Any {
    Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: RuncOptions {
            binary_name: binary.into(),
            root: "/run/sturdy-info-test".into(),
        }
        .encode_to_vec(),
    }
}

/// Runs `shim -info` with `stdin`; its exit code, decoded stdout and stderr.
fn run_info(shim: &Path, stdin: &[u8]) -> (i32, RuntimeInfo, String) {
    let mut child = Command::new(shim)
        .arg("-info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", shim.display()));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let info = RuntimeInfo::decode(out.stdout.as_slice()).unwrap_or_else(|e| {
        panic!(
            "{}: stdout is no RuntimeInfo: {e}; stderr {stderr}",
            shim.display()
        )
    });
    (out.status.code().unwrap_or(-1), info, stderr)
}

/// The features document of `info`, parsed, with its type URL.
fn features(info: &RuntimeInfo) -> Option<(String, serde_json::Value)> {
    let f = info.features.as_ref()?;
    let json = serde_json::from_slice(&f.value).expect("features are JSON");
    Some((f.type_url.clone(), json))
}

/// Same stdin, same answer as the Go shim of containerd 2.1, except name and version:
/// the options echoed, runc's features under the same type URL. With crun 1.8, whose
/// `features` command does not exist, both still answer, without features.
#[test]
fn info_matches_the_go_shim() {
    let Ok(go) = Generation::V2_1.binaries() else {
        test_skip::skip!("no containerd 2.1 in ../shared/tools");
    };
    let ours = default_shim_bin();
    for (case, stdin) in [
        ("no options", Vec::new()),
        ("runc options", runc_options("runc").encode_to_vec()),
    ] {
        let (code, info, stderr) = run_info(&ours, &stdin);
        let (go_code, go_info, go_stderr) = run_info(&go.go_shim, &stdin);
        assert_eq!((code, go_code), (0, 0), "{case}: {stderr} / {go_stderr}");
        assert_eq!(info.name, "io.containerd.sturdy.v2");
        assert_eq!(go_info.name, "io.containerd.runc.v2");
        let version = info.version.as_ref().expect("version");
        assert!(!version.version.is_empty(), "{case}: {version:?}");
        assert_eq!(info.options, go_info.options, "{case}");
        let (f, go_f) = (features(&info), features(&go_info));
        assert!(f.is_some(), "{case}: no features: {stderr}");
        assert_eq!(f, go_f, "{case}");
        assert!(
            info.annotations.is_empty(),
            "{case}: {:?}",
            info.annotations
        );
    }

    let stdin = runc_options("crun").encode_to_vec();
    let (code, info, stderr) = run_info(&ours, &stdin);
    let (go_code, go_info, _) = run_info(&go.go_shim, &stdin);
    assert_eq!((code, go_code), (0, 0), "{stderr}");
    assert!(go_info.features.is_none());
    if info.features.is_some() {
        test_skip::skip!(
            "crun here has a features command: the no-features case cannot be exercised"
        );
    }
    assert_eq!(info.options, go_info.options);
    let why = info.annotations.get("io.containerd.sturdy.features-error");
    assert!(
        why.is_some_and(|w| w.contains("crun features")),
        "{:?}",
        info.annotations
    );
    assert!(stderr.contains("no runtime features"), "{stderr}");
}

/// Options that are not runtime options fail, with a message, as the Go shim's do.
#[test]
fn bad_options_fail() {
    let stdin = Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: vec![0xff, 0xff, 0xff],
    }
    .encode_to_vec();
    let out = Command::new(default_shim_bin())
        .arg("-info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(&stdin)?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(!out.stderr.is_empty());
}

/// containerd 2.x runs `-info` itself for its introspection API (and CRI at startup, for
/// each handler's features, and before it creates a container with idmapped mounts): it
/// accepts sturdy's answer, and the features match those of the generation's Go shim.
async fn containerd_reads_the_info(g: Generation) {
    let fx = Containerd::builder()
        .generation(g)
        .without_images()
        .start()
        .await
        .unwrap_or_else(|e| panic!("start containerd {g}: {e}"));
    let mut got = Vec::new();
    for h in Handler::ALL {
        let info = fx
            .runtime_info(h.runtime_type(), Some(runc_options("runc")))
            .await
            .unwrap_or_else(|e| panic!("{h}: {e}\n{}", fx.log_tail(20)));
        assert_eq!(info.name, h.runtime_type());
        assert_eq!(info.options, Some(runc_options("runc")), "{h}");
        got.push(features(&info).unwrap_or_else(|| panic!("{h}: no features")));
    }
    // sturdy passes runc's document on as runc printed it; an older Go shim re-encodes it
    // through the runtime-spec types it was built with and drops newer fields (2.1's, with
    // runc 1.4: intelRdt.monitoring, memoryPolicy). So: everything the Go shim says, and
    // the same type URL.
    let ((go_url, go), (url, ours)) = (&got[0], &got[1]);
    assert_eq!(url, go_url, "{g}");
    assert!(
        covers(ours, go),
        "{g}: features lack some of the Go shim's\nsturdy: {ours}\nGo shim: {go}"
    );
}

/// Whether `ours` says everything `theirs` says: each of its object keys, with a value
/// that covers theirs; anything else equal.
fn covers(ours: &serde_json::Value, theirs: &serde_json::Value) -> bool {
    match (ours, theirs) {
        (serde_json::Value::Object(o), serde_json::Value::Object(t)) => t
            .iter()
            .all(|(k, v)| o.get(k).is_some_and(|ov| covers(ov, v))),
        _ => ours == theirs,
    }
}

#[test]
fn covers_is_a_superset_check() {
    let a = serde_json::json!({"x": {"enabled": true, "more": 1}, "y": [1, 2]});
    assert!(covers(
        &a,
        &serde_json::json!({"x": {"enabled": true}, "y": [1, 2]})
    ));
    assert!(!covers(&a, &serde_json::json!({"x": {"enabled": false}})));
    assert!(!covers(&a, &serde_json::json!({"y": [1]})));
    assert!(!covers(&a, &serde_json::json!({"z": 1})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_1_reads_the_info() {
    run_on(Generation::V2_1, containerd_reads_the_info).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_2_reads_the_info() {
    run_on(Generation::V2_2, containerd_reads_the_info).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_3_reads_the_info() {
    run_on(Generation::V2_3, containerd_reads_the_info).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_2_4_reads_the_info() {
    run_on(Generation::V2_4, containerd_reads_the_info).await
}
