//! The OCI runtime as a fixture choice (issue 17): Debian's runc 1.1.5, runc 1.3.6 and 1.4.3
//! from `../shared/tools`, or crun, linked as `runc` into the fixture's `bin/`, first on
//! containerd's PATH. Neither handler's options name a binary, so each shim runs the `runc`
//! its PATH (containerd's) finds: the same runtime for both, found the same way.

use std::path::{Path, PathBuf};

use sturdy_integration::handler::run_with;
use sturdy_integration::{generation_tests, Containerd, Generation, Handler, OciRuntime};

/// The first `runc` on the PATH of process `pid`, as its `exec` would find it.
fn runc_on_path_of(pid: i32) -> Option<PathBuf> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let path = environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"PATH="))?;
    let path = String::from_utf8_lossy(path).into_owned();
    std::env::split_paths(&path)
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
}

/// The `features` document `runtime` prints itself (`None`: it has no such command).
fn own_features(runtime: &Path) -> Option<serde_json::Value> {
    let out = std::process::Command::new(runtime)
        .arg("features")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", runtime.display()));
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("features are JSON"))
}

generation_tests! {
    /// Both shims of every generation find the fixture's runtime as `runc`: their PATH
    /// leads to `bin/runc`, and that is the runtime the fixture was asked for
    /// (`STURDY_RUNC`; CI reruns the suite with it set).
    async fn shims_find_the_chosen_runtime_as_runc(g: Generation) {
        let fx = Containerd::builder().generation(g).start().await.expect("start containerd");
        let want = std::fs::canonicalize(fx.oci_runtime_binary()).expect("runtime binary");
        for h in Handler::ALL {
            let id = format!("rt-{h}");
            fx.ctr_run_detached(h, &id, &["/bin/sleep", "3600"]).await.expect("ctr run -d");
            let pid = fx.shim_pid(fx.namespace(), &id).expect("shim pid");
            let found = runc_on_path_of(pid)
                .unwrap_or_else(|| panic!("{g}/{h}: no runc on shim {pid}'s PATH"));
            assert_eq!(found, fx.runc_on_path(), "{g}/{h}: runc the shim finds");
            assert_eq!(
                std::fs::canonicalize(&found).expect("canonical runc"),
                want,
                "{g}/{h}: {found:?} is not {} ({})",
                fx.oci_runtime(),
                fx.oci_runtime_binary().display()
            );
        }
    }
}

/// What containerd's introspection API reports for `h` without options: the shim's
/// `-info`, which runs `runc features` with the `runc` its PATH finds.
async fn introspected_features(fx: &Containerd, h: Handler) -> Option<serde_json::Value> {
    let info = fx
        .runtime_info(h.runtime_type(), None)
        .await
        .unwrap_or_else(|e| panic!("{h}: {e}\n{}", fx.log_tail(20)));
    info.features
        .map(|f| serde_json::from_slice(&f.value).expect("features are JSON"))
}

/// On containerd 2.3 (the LTS line), both handlers report the features of the chosen
/// runtime through containerd, as that runtime prints them itself (runc 1.1.5, 1.3.6 and
/// 1.4.3 each name a different `ociVersionMax`, so the wrong runtime shows), and the same
/// features as each other.
async fn both_handlers_report_the_runtime_s_features(g: Generation, r: OciRuntime) {
    let fx = Containerd::builder()
        .generation(g)
        .oci_runtime(r)
        .without_images()
        .start()
        .await
        .unwrap_or_else(|e| panic!("start containerd {g} with {r}: {e}"));
    assert_eq!(fx.oci_runtime(), r);
    let own = own_features(fx.oci_runtime_binary());
    if r != OciRuntime::Crun {
        let max = own.as_ref().map(|f| f["ociVersionMax"].clone());
        let want = match r {
            OciRuntime::Runc1_1 => "1.0.2-dev",
            OciRuntime::Runc1_3 => "1.2.1",
            _ => "1.3.0",
        };
        assert_eq!(max, Some(want.into()), "{r}: its own ociVersionMax");
    }
    let max = |f: &Option<serde_json::Value>| f.as_ref().map(|f| f["ociVersionMax"].clone());
    let mut got = Vec::new();
    for h in Handler::ALL {
        let features = introspected_features(&fx, h).await;
        assert_eq!(max(&features), max(&own), "{g}/{h} with {r}: ociVersionMax");
        got.push(features);
    }
    // Parity: the Go shim re-encodes what runc prints; sturdy must say the same.
    assert_eq!(
        got[0], got[1],
        "{g} with {r}: sturdy's features differ from the Go shim's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_of_runc_1_1_on_2_3() {
    run_with(
        Generation::V2_3,
        OciRuntime::Runc1_1,
        both_handlers_report_the_runtime_s_features,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_of_runc_1_3_on_2_3() {
    run_with(
        Generation::V2_3,
        OciRuntime::Runc1_3,
        both_handlers_report_the_runtime_s_features,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_of_runc_1_4_on_2_3() {
    run_with(
        Generation::V2_3,
        OciRuntime::Runc1_4,
        both_handlers_report_the_runtime_s_features,
    )
    .await
}

/// crun 1.8 has no `features` command: neither shim reports features, and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_features_of_crun_on_2_3() {
    run_with(
        Generation::V2_3,
        OciRuntime::Crun,
        both_handlers_report_the_runtime_s_features,
    )
    .await
}
