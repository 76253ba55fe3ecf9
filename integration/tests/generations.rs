//! How containerd generations differ in what they ask of a shim, pinned per generation.
//! Each behaviour here was found while making the suite run on 1.6, 1.7 and 2.1 (2.2 to 2.4:
//! read from their sources at the tags and the issue 17 measurements); a change in either
//! containerd or sturdy that alters one of them fails here first.

use std::path::Path;

use sturdy_integration::k8s_cri::v1::StopPodSandboxRequest;
use sturdy_integration::{generation_tests, Containerd, ExtraRuntime, Handler, CRI_NAMESPACE};
use tonic::Code;

/// The Task API version containerd recorded for a bundle's shim: 2.x writes
/// `bootstrap.json`, 1.x only an `address` file and always speaks `containerd.task.v2.Task`.
fn recorded_task_api(bundle: &Path) -> (Option<u64>, bool) {
    let bootstrap = std::fs::read(bundle.join("bootstrap.json"))
        .ok()
        .map(|raw| serde_json::from_slice::<serde_json::Value>(&raw).expect("bootstrap.json"));
    (
        bootstrap.map(|b| b["version"].as_u64().expect("bootstrap.json version")),
        bundle.join("address").exists(),
    )
}

/// The runc root sturdy recorded for a container (`root` in the bundle's sturdy.json).
fn sturdy_root(bundle: &Path) -> String {
    let raw = std::fs::read(bundle.join("sturdy.json")).expect("sturdy.json");
    let rec: serde_json::Value = serde_json::from_slice(&raw).expect("sturdy.json is JSON");
    rec["root"].as_str().expect("root").to_string()
}

/// Unix sockets under /run/containerd/s that `pid` listens on, as `ss` reports them.
fn listening_sockets(pid: i32) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-xlpn"])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("/run/containerd/s/"))
        })
        .map(String::from)
        .collect()
}

generation_tests! {
    /// Every socket a shim of the fixture listens on is in its footprint and gone after
    /// Drop, even when teardown has to SIGKILL the shim: the Go shim of 2.x listens on a
    /// second socket that no bundle file names.
    async fn shim_sockets_go_with_the_fixture(g: Generation) {
        let fx = Containerd::builder().generation(g).start().await.expect("start containerd");
        let mut sockets = Vec::new();
        for h in Handler::ALL {
            let id = format!("sock-{h}");
            fx.ctr_run_detached(h, &id, &["/bin/sleep", "3600"]).await.expect("ctr run -d");
            let pid = fx.shim_pid(fx.namespace(), &id).expect("shim pid");
            let held = listening_sockets(pid);
            assert!(!held.is_empty(), "{g}/{h}: shim {pid} listens on nothing");
            sockets.extend(held);
        }
        let footprint = fx.footprint();
        for s in &sockets {
            assert!(
                footprint.shim_sockets.iter().any(|f| f == Path::new(s)),
                "{g}: {s} is not in the footprint {:?}",
                footprint.shim_sockets
            );
        }
        // The tasks still run: teardown kills their shims, which cannot remove their sockets.
        drop(fx);
        for s in &sockets {
            assert!(!Path::new(s).exists(), "{g}: {s} outlived the fixture");
        }
    }

    /// Which Task service containerd calls, and which OCI spec version it writes:
    /// 1.6 and 1.7 call `containerd.task.v2.Task` on every shim; 2.1 and 2.2 call
    /// `containerd.task.v3.Task` on their Go shim (which answers `start` with a version 3
    /// bootstrap) but `containerd.task.v2.Task` on sturdy, which answers with a bare address
    /// (sturdy serves both names, so either works). 2.3 and 2.4 send `start` a protobuf
    /// `BootstrapParams` on stdin, which sturdy answers with a `BootstrapResult` announcing
    /// version 2, so that containerd keeps running `delete` for each container.
    /// The spec: runtime-spec 1.2.1 in 2.1, 1.3.0 from 2.2 on.
    async fn task_api_and_spec_version(g: Generation) {
        let fx = Containerd::builder().generation(g).start().await.expect("start containerd");
        let mut cri = fx.cri().await.expect("cri client");
        for h in Handler::ALL {
            let cfg = fx.pod_config(&format!("api-{h}"));
            let pod = cri.run_pod(h, &cfg).await.expect("RunPodSandbox");
            let bundle = fx.bundle(CRI_NAMESPACE, &pod).expect("sandbox bundle").dir;
            let (version, address_file) = recorded_task_api(&bundle);
            let want = match (g, h) {
                (Generation::V1_6 | Generation::V1_7, _) => None,
                (_, Handler::Runc) => Some(3),
                // Announced as 2 on purpose (docs/bootstrap.md, "Why Task API 2").
                (_, Handler::Sturdy) => Some(2),
            };
            assert_eq!(version, want, "{g}/{h}: Task API version in bootstrap.json");
            // Only the shims write `address`: sturdy always, the Go shim before 2.x.
            let want_address = h == Handler::Sturdy || !g.is_v2();
            assert_eq!(address_file, want_address, "{g}/{h}: address file");

            let spec: serde_json::Value = serde_json::from_slice(
                &std::fs::read(bundle.join("config.json")).expect("config.json"),
            )
            .expect("config.json is JSON");
            let want_spec = match g {
                Generation::V1_6 => "1.0.2-dev",
                Generation::V1_7 => "1.1.0",
                Generation::V2_1 => "1.2.1",
                Generation::V2_2 | Generation::V2_3 | Generation::V2_4 => "1.3.0",
            };
            assert_eq!(spec["ociVersion"], want_spec, "{g}/{h}: OCI spec version");
            cri.stop_pod(&pod).await.expect("StopPodSandbox");
            cri.remove_pod(&pod).await.expect("RemovePodSandbox");
        }
    }

    /// A non-runc runtime type without `ConfigPath`: 1.7 and 2.x send the options table as
    /// `runtimeoptions.v1.Options.config_body`, 1.6 sends nothing at all, so the shim falls
    /// back to its default runc root. (That is why the fixture always sets `ConfigPath`.)
    async fn options_table_without_config_path(g: Generation) {
        // 1.6 lands in the host's default runc root: leave it as it was found.
        let default_ns = Path::new("/run/containerd/runc/k8s.io");
        let default_ns_existed = default_ns.exists();
        let root = tempfile::tempdir().expect("tempdir");
        let fx = Containerd::builder()
            .generation(g)
            .runtime(ExtraRuntime {
                name: "sturdy-body".into(),
                runtime_type: Handler::Sturdy.runtime_type().into(),
                runtime_path: None,
                options: format!("  Root = \"{}\"", root.path().display()),
            })
            .start()
            .await
            .expect("start containerd");
        let mut cri = fx.cri().await.expect("cri client");
        let pod = cri
            .run_pod_with("sturdy-body", &fx.pod_config("body"))
            .await
            .expect("RunPodSandbox");
        let bundle = fx.bundle(CRI_NAMESPACE, &pod).expect("sandbox bundle").dir;
        let got = sturdy_root(&bundle);
        cri.stop_pod(&pod).await.expect("StopPodSandbox");
        cri.remove_pod(&pod).await.expect("RemovePodSandbox");
        if !default_ns_existed {
            // Fails (and keeps it) unless empty: another user's state is never removed.
            let _ = std::fs::remove_dir(default_ns);
        }
        let want = match g {
            Generation::V1_6 => "/run/containerd/runc/k8s.io".to_string(),
            _ => format!("{}/k8s.io", root.path().display()),
        };
        assert_eq!(got, want, "{g}: runc root sturdy used");
    }

    /// StopPodSandbox of a pod containerd never had: NotFound on 1.6, success from 1.7 on.
    async fn stop_of_an_unknown_pod(g: Generation) {
        let fx = Containerd::builder()
            .generation(g)
            .without_images()
            .start()
            .await
            .expect("start containerd");
        let mut cri = fx.cri().await.expect("cri client");
        let got = cri
            .runtime
            .stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: "no-such-pod".into() })
            .await;
        match g {
            Generation::V1_6 => {
                let err = got.expect_err("1.6: stopping an unknown pod fails");
                assert_eq!(err.code(), Code::NotFound, "{g}: {err}");
            }
            _ => {
                got.unwrap_or_else(|e| panic!("{g}: stopping an unknown pod succeeds: {e}"));
            }
        }
    }
}
