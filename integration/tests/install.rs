//! `sturdyctl install` against real containerd: a config it edited loads in every generation
//! this host has, and a pod runs through the `sturdy` handler it added.
//!
//! Needs `cargo build -p sturdy-shim -p sturdyctl` first (target/debug binaries).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sturdy_integration::containerd::{sturdyctl_bin, workspace_dir};
use sturdy_integration::{cleanup, container_config, Containerd, Generation, Handler};

fn sturdyctl(args: &[&str]) -> String {
    let out = Command::new(sturdyctl_bin())
        .args(args)
        .output()
        .expect("run sturdyctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sturdyctl {args:?}: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn fixture(name: &str) -> PathBuf {
    workspace_dir()
        .join("sturdyctl/tests/fixtures/containerd")
        .join(name)
}

/// The generation's binaries, or None (a visible skip of that generation, `test_skip`)
/// when this host lacks them.
fn binaries(g: Generation) -> Option<PathBuf> {
    match g.binaries() {
        Ok(b) => Some(b.containerd.clone()),
        Err(e) => {
            test_skip::skip(format!("containerd {} part: {e}", g.name()));
            None
        }
    }
}

/// `containerd config dump` of each generation's own default config after install shows
/// the runtime; uninstall gives the file back byte for byte.
#[test]
fn every_generation_loads_the_config_install_wrote() {
    for (g, file) in [
        (Generation::V1_6, "1.6-default.toml"),
        (Generation::V1_7, "1.7-default.toml"),
        (Generation::V2_1, "2.1-default.toml"),
    ] {
        let Some(containerd) = binaries(g) else {
            continue;
        };
        // install writes only where only root can: not under the world-writable /tmp.
        let dir = tempfile::Builder::new()
            .prefix("sturdy-install-")
            .tempdir_in("/run")
            .unwrap();
        let config = dir.path().join("config.toml");
        let original = std::fs::read_to_string(fixture(file)).unwrap();
        std::fs::write(&config, &original).unwrap();
        let shim = workspace_dir().join("target/debug/containerd-shim-sturdy-v2");
        let bin_dir = dir.path().join("bin");
        let cfg = config.to_str().unwrap();
        let out = sturdyctl(&[
            "install",
            "--config",
            cfg,
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--shim",
            shim.to_str().unwrap(),
        ]);
        assert!(out.contains("RESTART NEEDED"), "{out}");
        let dump = Command::new(&containerd)
            .args(["--config", cfg, "config", "dump"])
            .output()
            .unwrap();
        let dump_text = String::from_utf8_lossy(&dump.stdout);
        assert!(
            dump.status.success(),
            "{g:?}: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        let table = if g.is_v2() {
            "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.sturdy]"
        } else {
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.sturdy]"
        };
        let at = dump_text
            .find(table)
            .unwrap_or_else(|| panic!("{g:?}: no {table} in\n{dump_text}"));
        assert!(
            dump_text[at..].contains("io.containerd.sturdy.v2"),
            "{g:?}: {}",
            &dump_text[at..at + 400.min(dump_text.len() - at)]
        );
        sturdyctl(&[
            "uninstall",
            "--config",
            cfg,
            "--bin-dir",
            bin_dir.to_str().unwrap(),
        ]);
        assert_eq!(std::fs::read_to_string(&config).unwrap(), original, "{g:?}");
    }
}

/// Deletes, by id, runc state the installed handler leaves in runc's default root (the
/// handler has no options, so no private root) if the test fails before removing its pod,
/// with the runtime (`.1`) that made it.
struct RuncIds(Vec<String>, PathBuf);

impl Drop for RuncIds {
    fn drop(&mut self) {
        let root = Path::new("/run/containerd/runc/k8s.io");
        for id in &self.0 {
            if root.join(id).exists() {
                cleanup::runc_force_delete(&self.1, root, id);
            }
        }
    }
}

/// On the generation the fixture runs (STURDY_CONTAINERD; CI runs it on each it tests): a
/// containerd whose config has no `sturdy` handler, `sturdyctl install` into that config and
/// its bin dir, a restart, and a pod through the new handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_through_the_installed_handler() {
    let g = Generation::from_env().expect("STURDY_CONTAINERD");
    if binaries(g).is_none() {
        return;
    }
    let mut fx = Containerd::builder()
        .generation(g)
        .without_sturdy_handler()
        .start()
        .await
        .expect("start containerd");
    let config = fx.config_path();
    let bin_dir = fx.dir().join("bin");
    let install = || {
        sturdyctl(&[
            "install",
            "--config",
            config.to_str().unwrap(),
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--shim",
            fx.shim_bin().to_str().unwrap(),
        ])
    };
    let out = install();
    assert!(out.contains("RESTART NEEDED"), "{out}");
    // A second install changes nothing.
    let again = install();
    assert!(again.contains("no restart needed"), "{again}");
    fx.restart().await.expect("restart containerd");

    let mut cri = fx.cri().await.expect("cri");
    let mut ids = RuncIds(Vec::new(), fx.oci_runtime_binary().to_path_buf());
    let pod_config = fx.pod_config("installed");
    let pod = cri
        .run_pod(Handler::Sturdy, &pod_config)
        .await
        .expect("RunPodSandbox via installed handler");
    ids.0.push(pod.clone());
    let exe = fx
        .shim_exe(sturdy_integration::CRI_NAMESPACE, &pod)
        .expect("sandbox shim process");
    assert_eq!(
        exe,
        bin_dir.join("containerd-shim-sturdy-v2"),
        "served by the installed shim"
    );
    let ctr = cri
        .create_container(
            &pod,
            container_config("main", &["/bin/sleep", "3600"]),
            &pod_config,
        )
        .await
        .expect("CreateContainer");
    ids.0.push(ctr.clone());
    cri.start_container(&ctr).await.expect("StartContainer");
    let out = cri
        .exec_sync(&ctr, &["/bin/echo", "hello"], Duration::from_secs(10))
        .await
        .expect("ExecSync");
    assert_eq!(out.stdout, "hello\n");
    cri.stop_pod(&pod).await.expect("StopPodSandbox");
    cri.remove_pod(&pod).await.expect("RemovePodSandbox");
}
